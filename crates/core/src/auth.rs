//! Bearer-token authorization of every daemon's gRPC calls: the `agent`
//! token may read and use the worker/agent protocol (submit, claim, renew,
//! complete, fail, emit); the `admin` token may do everything. Tokens come
//! from the secrets `agent_token` and `admin_token` and are compared in
//! constant time. With no token configured a daemon is open (a warning says
//! so at start).

use crate::secrets::{Secret, SecretError, SecretStore};
use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads: any valid token.
    Reader,
    /// The worker/agent protocol.
    Agent,
    /// Policy, approvals, cancellation, triggers, the emergency stop.
    Admin,
}

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Auth {
    agent: Option<Secret>,
    admin: Option<Secret>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("agent", &self.agent.is_some())
            .field("admin", &self.admin.is_some())
            .finish()
    }
}

impl Auth {
    pub fn new(agent: Option<Secret>, admin: Option<Secret>) -> Self {
        Self { agent, admin }
    }

    /// Reads `agent_token` and `admin_token` from the secret store; warns
    /// when neither is set (`service` names the daemon in that warning).
    pub fn from_secrets(service: &str, secrets: &SecretStore) -> Result<Self, SecretError> {
        let auth = Self::new(secrets.get("agent_token")?, secrets.get("admin_token")?);
        if auth.is_open() {
            tracing::warn!(
                service,
                "no agent_token or admin_token secret configured: this gRPC port is open to anyone who can reach it"
            );
        }
        Ok(auth)
    }

    pub fn is_open(&self) -> bool {
        self.agent.is_none() && self.admin.is_none()
    }

    /// Checks the `authorization: Bearer <token>` metadata against `role`.
    pub fn check(&self, metadata: &MetadataMap, role: Role) -> Result<(), Status> {
        if self.is_open() {
            return Ok(());
        }
        let presented = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
            })?;
        let is_admin = matches(self.admin.as_ref(), presented);
        let is_agent = matches(self.agent.as_ref(), presented);
        if !is_admin && !is_agent {
            return Err(Status::unauthenticated("unknown token"));
        }
        match role {
            Role::Admin if !is_admin => {
                Err(Status::permission_denied("this call needs the admin token"))
            }
            _ => Ok(()),
        }
    }
}

fn matches(expected: Option<&Secret>, presented: &str) -> bool {
    expected.is_some_and(|secret| {
        let expected = secret.expose().as_bytes();
        !expected.is_empty() && bool::from(expected.ct_eq(presented.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    fn md(token: Option<&str>) -> MetadataMap {
        let mut map = MetadataMap::new();
        if let Some(t) = token {
            map.insert(
                "authorization",
                MetadataValue::try_from(format!("Bearer {t}")).expect("ascii"),
            );
        }
        map
    }

    #[test]
    fn roles_table() {
        let auth = Auth::new(Some(Secret::new("ag")), Some(Secret::new("ad")));
        let table = [
            (None, Role::Reader, Some(tonic::Code::Unauthenticated)),
            (
                Some("nope"),
                Role::Agent,
                Some(tonic::Code::Unauthenticated),
            ),
            (Some("ag"), Role::Agent, None),
            (Some("ag"), Role::Reader, None),
            (Some("ag"), Role::Admin, Some(tonic::Code::PermissionDenied)),
            (Some("ad"), Role::Admin, None),
            (Some("ad"), Role::Agent, None),
        ];
        for (token, role, expected) in table {
            let got = auth.check(&md(token), role).err().map(|s| s.code());
            assert_eq!(got, expected, "{token:?} {role:?}");
        }
        assert!(Auth::default().check(&md(None), Role::Admin).is_ok());
    }
}
