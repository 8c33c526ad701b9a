//! Bearer-token authorization of `BackupService` calls, the same rule as
//! the api's: with no token configured the service is open (a warning says
//! so at start); otherwise reads (`ListBackups`, `PreviewRetention`) take
//! any valid token and everything that acts (`RunBackup`, `VerifyBackup`,
//! `Restore`) takes the `admin` token. Compared in constant time.

use opsloop_core::secrets::{Secret, SecretError, SecretStore};
use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Reader,
    Admin,
}

/// The configured tokens (secrets `agent_token` and `admin_token`).
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

    pub fn from_secrets(secrets: &SecretStore) -> Result<Self, SecretError> {
        let auth = Self::new(secrets.get("agent_token")?, secrets.get("admin_token")?);
        if auth.agent.is_none() && auth.admin.is_none() {
            tracing::warn!(
                "no agent_token or admin_token secret configured: BackupService (including Restore) is open to anyone who can reach it"
            );
        }
        Ok(auth)
    }

    /// Checks `authorization: Bearer <token>` against `role`.
    pub fn check(&self, metadata: &MetadataMap, role: Role) -> Result<(), Status> {
        if self.agent.is_none() && self.admin.is_none() {
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
        match (role, is_admin, is_agent) {
            (_, false, false) => Err(Status::unauthenticated("unknown token")),
            (Role::Admin, false, true) => {
                Err(Status::permission_denied("this call needs the admin token"))
            }
            _ => Ok(()),
        }
    }
}

fn matches(expected: Option<&Secret>, presented: &str) -> bool {
    expected
        .is_some_and(|secret| bool::from(secret.expose().as_bytes().ct_eq(presented.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(token: Option<&str>) -> MetadataMap {
        let mut map = MetadataMap::new();
        if let Some(token) = token {
            map.insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
        }
        map
    }

    #[test]
    fn roles_and_tokens() {
        let open = Auth::default();
        assert!(open.check(&metadata(None), Role::Admin).is_ok());

        let auth = Auth::new(Some(Secret::new("agent-t")), Some(Secret::new("admin-t")));
        let table = [
            (None, Role::Reader, Some(tonic::Code::Unauthenticated)),
            (
                Some("wrong"),
                Role::Reader,
                Some(tonic::Code::Unauthenticated),
            ),
            (Some("agent-t"), Role::Reader, None),
            (
                Some("agent-t"),
                Role::Admin,
                Some(tonic::Code::PermissionDenied),
            ),
            (Some("admin-t"), Role::Admin, None),
            (Some("admin-t"), Role::Reader, None),
        ];
        for (token, role, expected) in table {
            let got = auth.check(&metadata(token), role).err().map(|s| s.code());
            assert_eq!(got, expected, "{token:?} {role:?}");
        }
    }
}
