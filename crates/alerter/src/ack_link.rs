//! Signed acknowledge/resolve links: HMAC-SHA256 over the incident id, the
//! action, the expiry and a nonce, with a key from the secrets store. The
//! signature is the credential (the route is public in the access table);
//! the nonce makes a link single-use (recorded in `incident_link_uses` with
//! the transition). Forged, expired and reused links are refused with 403
//! and an audit row; the incident is left as it was.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::incident::Action;
use crate::incidents::{IncidentError, IncidentManager};

const BLOCK: usize = 64;

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// The signed parts of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkClaims {
    pub incident: Uuid,
    pub action: Action,
    pub expires: i64,
    pub nonce: String,
}

impl LinkClaims {
    fn message(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}",
            self.incident,
            self.action.as_str(),
            self.expires,
            self.nonce
        )
    }

    pub fn sign(&self, key: &[u8]) -> String {
        hex::encode(hmac_sha256(key, self.message().as_bytes()))
    }

    /// The link under `external_url`.
    pub fn url(&self, external_url: &str, key: &[u8]) -> String {
        format!(
            "{}/api/v1/incidents/{}/{}?exp={}&nonce={}&sig={}",
            external_url.trim_end_matches('/'),
            self.incident,
            self.action.as_str(),
            self.expires,
            self.nonce,
            self.sign(key)
        )
    }
}

/// Why a link is refused (each answered 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefusal {
    BadSignature,
    Expired,
    Reused,
}

impl LinkRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkRefusal::BadSignature => "bad signature",
            LinkRefusal::Expired => "expired",
            LinkRefusal::Reused => "already used",
        }
    }
}

/// Checks signature and expiry (single use is the store's part).
pub fn verify(
    claims: &LinkClaims,
    signature: &str,
    key: &[u8],
    now: DateTime<Utc>,
) -> Result<(), LinkRefusal> {
    let expected = claims.sign(key);
    if expected.as_bytes().ct_eq(signature.as_bytes()).unwrap_u8() != 1 {
        return Err(LinkRefusal::BadSignature);
    }
    if now.timestamp() >= claims.expires {
        return Err(LinkRefusal::Expired);
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct LinkQuery {
    #[serde(default)]
    exp: i64,
    #[serde(default)]
    nonce: String,
    #[serde(default)]
    sig: String,
}

async fn follow(
    State(manager): State<Arc<IncidentManager>>,
    Path((id, action)): Path<(String, String)>,
    Query(query): Query<LinkQuery>,
) -> Response {
    let now = manager.now();
    let parsed = Uuid::parse_str(&id).ok().zip(Action::parse(&action));
    let (incident, action) = match parsed {
        Some((incident, action))
            if action != Action::Reopen && !query.sig.is_empty() && !query.nonce.is_empty() =>
        {
            (incident, action)
        }
        // Not a link this alerter makes (no credential was even offered).
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "Not an incident link: expected /api/v1/incidents/ID/acknowledge|resolve?exp=…&nonce=…&sig=…\n",
            )
                .into_response();
        }
    };
    let claims = LinkClaims {
        incident,
        action,
        expires: query.exp,
        nonce: query.nonce,
    };
    let result = manager.follow_link(&claims, &query.sig, now).await;
    match result {
        Ok(incident) => (
            StatusCode::OK,
            format!(
                "Incident {} ({}) is now {}.\n",
                incident.id, incident.title, incident.state
            ),
        )
            .into_response(),
        Err(IncidentError::Link { refusal }) => (
            StatusCode::FORBIDDEN,
            format!("This link cannot be used: {}.\n", refusal.as_str()),
        )
            .into_response(),
        Err(IncidentError::Transition(e)) => {
            (StatusCode::CONFLICT, format!("{e}.\n")).into_response()
        }
        Err(IncidentError::NotFound(id)) => {
            (StatusCode::NOT_FOUND, format!("incident {id} not found.\n")).into_response()
        }
        Err(error) => {
            tracing::error!(%error, "acknowledge link failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "The alerter could not record this; try again.\n",
            )
                .into_response()
        }
    }
}

/// The link route (merged into the alerter's HTTP router).
pub fn router(manager: Arc<IncidentManager>) -> Router {
    Router::new()
        .route("/api/v1/incidents/{id}/{action}", get(follow))
        .with_state(manager)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn forged_and_expired_links_are_refused() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).expect("now");
        let claims = LinkClaims {
            incident: Uuid::nil(),
            action: Action::Acknowledge,
            expires: now.timestamp() + 60,
            nonce: "n1".into(),
        };
        let sig = claims.sign(b"key");
        assert_eq!(verify(&claims, &sig, b"key", now), Ok(()));
        assert_eq!(
            verify(&claims, &sig, b"other key", now),
            Err(LinkRefusal::BadSignature)
        );
        let resolve = LinkClaims {
            action: Action::Resolve,
            ..claims.clone()
        };
        assert_eq!(
            verify(&resolve, &sig, b"key", now),
            Err(LinkRefusal::BadSignature),
            "bound to the action"
        );
        assert_eq!(
            verify(&claims, &sig, b"key", now + chrono::Duration::seconds(60)),
            Err(LinkRefusal::Expired)
        );
        assert!(claims.url("http://h:1/", b"key").starts_with(
            "http://h:1/api/v1/incidents/00000000-0000-0000-0000-000000000000/acknowledge?exp="
        ));
    }
}
