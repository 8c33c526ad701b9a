//! Console sessions and CSRF tokens, both stateless and signed with one
//! HMAC-SHA256 key (the `console_session_key` secret, else random per
//! process: sessions then end when the api restarts and are only valid on
//! the replica that issued them).
//!
//! A session cookie is `v1.<token hash>.<name>.<role>.<expiry>.<sid>.<mac>`:
//! the SHA-256 of the token's secret (as `api_tokens` stores it, never the
//! secret), the token's name (hex) and role, the expiry (Unix seconds), a
//! random session id, and the MAC over all of them. Every request re-checks
//! the hash against the token table ([`opsloop_core::auth::Auth::authenticate_hash`]),
//! so a session ends as soon as its token is revoked or expires.
//!
//! A CSRF token is `<nonce>.<issued>.<mac>` with the MAC over the session
//! id, nonce and issue time: bound to one session, and single use. What is
//! spent — a submitted token's nonce, a signed-out session — is kept in the
//! database (`opsloop_core::store::nonces`) until it could no longer be
//! valid, so every replica refuses it; this module only signs and checks.

use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use opsloop_core::access::Role;
use sha2::Sha256;

/// The session cookie's name.
pub const COOKIE: &str = "opsloop_console";

/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::hours(12);

/// The token hash of a session opened while the daemon has no token at all
/// (dev mode, every call allowed): valid only while it stays open.
pub const OPEN_HASH: [u8; 32] = [0; 32];

/// What a valid session cookie says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub token_hash: [u8; 32],
    pub name: String,
    pub role: Role,
    pub expires_at: DateTime<Utc>,
    /// Random; binds the CSRF tokens to this session.
    pub sid: String,
}

/// Why a CSRF token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrfError {
    Missing,
    Tampered,
    OtherSession,
    Expired,
    Replayed,
}

impl CsrfError {
    /// One sentence for the 403 page.
    pub fn message(self) -> &'static str {
        match self {
            CsrfError::Missing => "the form carried no CSRF token",
            CsrfError::Tampered => "the form's CSRF token is not one this console issued",
            CsrfError::OtherSession => "the form's CSRF token belongs to another session",
            CsrfError::Expired => "the form is too old; reload the page and try again",
            CsrfError::Replayed => {
                "the form was already submitted once; reload the page and try again"
            }
        }
    }
}

/// The signing key.
pub struct Keys {
    key: Vec<u8>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    hex::encode(buf)
}

impl Keys {
    /// Keys from a configured secret, or random when `None`.
    pub fn new(secret: Option<&str>) -> Self {
        let key = match secret.map(str::trim).filter(|s| !s.is_empty()) {
            Some(secret) => secret.as_bytes().to_vec(),
            None => {
                let mut key = vec![0u8; 32];
                rand::fill(&mut key[..]);
                key
            }
        };
        Self { key }
    }

    fn mac(&self, parts: &[&str]) -> String {
        // HMAC accepts keys of any length.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(b"\x1f");
        }
        hex::encode(mac.finalize().into_bytes())
    }

    fn verify(&self, parts: &[&str], mac_hex: &str) -> bool {
        let Ok(given) = hex::decode(mac_hex) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return false;
        };
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(b"\x1f");
        }
        mac.verify_slice(&given).is_ok()
    }

    /// A new session for a token, as its cookie value.
    pub fn issue(
        &self,
        token_hash: &[u8; 32],
        name: &str,
        role: Role,
        now: DateTime<Utc>,
    ) -> String {
        let hash = hex::encode(token_hash);
        let name = hex::encode(name.as_bytes());
        let expiry = (now + SESSION_TTL).timestamp().to_string();
        let sid = random_hex(16);
        let mac = self.mac(&["session", &hash, &name, role.as_str(), &expiry, &sid]);
        format!("v1.{hash}.{name}.{role}.{expiry}.{sid}.{mac}")
    }

    /// The session a cookie value carries, if signed by this key and not
    /// expired at `now` (the token itself is checked by the caller).
    pub fn open(&self, cookie: &str, now: DateTime<Utc>) -> Option<Session> {
        let parts: Vec<&str> = cookie.split('.').collect();
        let ["v1", hash, name, role, expiry, sid, mac] = parts[..] else {
            return None;
        };
        if !self.verify(&["session", hash, name, role, expiry, sid], mac) {
            return None;
        }
        let expires_at = DateTime::from_timestamp(expiry.parse().ok()?, 0)?;
        if expires_at <= now {
            return None;
        }
        let token_hash: [u8; 32] = hex::decode(hash).ok()?.try_into().ok()?;
        Some(Session {
            token_hash,
            name: String::from_utf8(hex::decode(name).ok()?).ok()?,
            role: Role::parse(role)?,
            expires_at,
            sid: sid.to_owned(),
        })
    }

    /// A CSRF token for one form of `session`.
    pub fn csrf(&self, session: &Session, now: DateTime<Utc>) -> String {
        let nonce = random_hex(12);
        let issued = now.timestamp().to_string();
        let mac = self.mac(&["csrf", &session.sid, &nonce, &issued]);
        format!("{nonce}.{issued}.{mac}")
    }

    /// Checks a submitted CSRF token: what to spend (once, in the
    /// database) when it is one this key issued for `session` and still
    /// valid at `now`.
    pub fn check_csrf(
        &self,
        session: &Session,
        token: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Spend, CsrfError> {
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        let token = token.ok_or(CsrfError::Missing)?;
        let parts: Vec<&str> = token.split('.').collect();
        let [nonce, issued, mac] = parts[..] else {
            return Err(CsrfError::Tampered);
        };
        if !self.verify(&["csrf", &session.sid, nonce, issued], mac) {
            // Issued for another session, or not issued here at all.
            return Err(
                if hex::decode(mac).is_ok_and(|m| m.len() == 32) && !nonce.is_empty() {
                    CsrfError::OtherSession
                } else {
                    CsrfError::Tampered
                },
            );
        }
        let issued = issued
            .parse::<i64>()
            .ok()
            .and_then(|s| DateTime::from_timestamp(s, 0))
            .ok_or(CsrfError::Tampered)?;
        let valid_until = issued + SESSION_TTL;
        if valid_until <= now {
            return Err(CsrfError::Expired);
        }
        Ok(Spend {
            key: format!("csrf:{nonce}"),
            until: valid_until,
        })
    }
}

/// A nonce to spend once across replicas: its key in `console_nonces`
/// and until when it must stay spent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spend {
    pub key: String,
    pub until: DateTime<Utc>,
}

impl Session {
    /// The nonce that signs this session out everywhere.
    pub fn sign_out(&self) -> Spend {
        Spend {
            key: format!("session:{}", self.sid),
            until: self.expires_at,
        }
    }
}

/// The `Set-Cookie` value of a session (`secure` when the listener is TLS).
pub fn set_cookie(value: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.num_seconds(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends the session in the browser.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The session cookie's value among a request's `Cookie` headers.
pub fn cookie_value<'a>(headers: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    headers
        .flat_map(|h| h.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("time")
    }

    #[test]
    fn a_session_round_trips_and_expires() {
        let keys = Keys::new(None);
        let cookie = keys.issue(&[7; 32], "alice", Role::Admin, at(0));
        let session = keys.open(&cookie, at(60)).expect("valid");
        assert_eq!(session.name, "alice");
        assert_eq!(session.role, Role::Admin);
        assert_eq!(session.token_hash, [7; 32]);
        assert_eq!(session.expires_at, at(0) + SESSION_TTL);
        assert!(keys.open(&cookie, at(0) + SESSION_TTL).is_none(), "expired");
        let out = session.sign_out();
        assert_eq!(out.key, format!("session:{}", session.sid));
        assert_eq!(out.until, session.expires_at);
    }

    #[test]
    fn a_tampered_or_foreign_session_is_refused() {
        let keys = Keys::new(Some("one key"));
        let cookie = keys.issue(&[7; 32], "viewer", Role::Viewer, at(0));
        let raised = cookie.replacen(
            &format!(".{}.", hex::encode("viewer")),
            &format!(".{}.", hex::encode("admin")),
            1,
        );
        assert!(keys.open(&raised, at(1)).is_none(), "name changed");
        let role_changed = cookie.replacen(".viewer.", ".admin.", 1);
        assert!(keys.open(&role_changed, at(1)).is_none(), "role changed");
        assert!(Keys::new(Some("other key")).open(&cookie, at(1)).is_none());
        assert!(keys.open("v1.garbage", at(1)).is_none());
        assert!(keys.open("", at(1)).is_none());
        // The same configured key on another replica accepts it.
        assert!(Keys::new(Some("one key")).open(&cookie, at(1)).is_some());
    }

    #[test]
    fn csrf_tokens_are_bound_and_expire() {
        let keys = Keys::new(None);
        let mine = keys
            .open(&keys.issue(&[1; 32], "a", Role::Admin, at(0)), at(0))
            .expect("session");
        let other = keys
            .open(&keys.issue(&[1; 32], "a", Role::Admin, at(0)), at(0))
            .expect("session");
        let token = keys.csrf(&mine, at(5));
        assert_eq!(
            keys.check_csrf(&other, Some(&token), at(6)),
            Err(CsrfError::OtherSession)
        );
        let spend = keys.check_csrf(&mine, Some(&token), at(6)).expect("valid");
        assert_eq!(
            spend.key,
            format!("csrf:{}", token.split('.').next().expect("nonce"))
        );
        assert_eq!(spend.until, at(5) + SESSION_TTL);
        assert_eq!(keys.check_csrf(&mine, None, at(7)), Err(CsrfError::Missing));
        assert_eq!(
            keys.check_csrf(&mine, Some("x.y"), at(7)),
            Err(CsrfError::Tampered)
        );
        let mut tampered = keys.csrf(&mine, at(5));
        tampered.replace_range(0..2, "zz");
        assert!(keys.check_csrf(&mine, Some(&tampered), at(7)).is_err());
        let old = keys.csrf(&mine, at(5));
        assert_eq!(
            keys.check_csrf(&mine, Some(&old), at(5) + SESSION_TTL),
            Err(CsrfError::Expired)
        );
        for e in [
            CsrfError::Missing,
            CsrfError::Tampered,
            CsrfError::OtherSession,
            CsrfError::Expired,
            CsrfError::Replayed,
        ] {
            assert!(!e.message().is_empty());
        }
    }

    #[test]
    fn cookies() {
        let set = set_cookie("abc", true);
        for part in [
            "opsloop_console=abc",
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Max-Age=43200",
        ] {
            assert!(set.contains(part), "{set}");
        }
        assert!(!set_cookie("abc", false).contains("Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
        let headers = ["theme=dark; opsloop_console=v1.x ", "other=1"];
        assert_eq!(cookie_value(headers.into_iter()), Some("v1.x"));
        assert_eq!(cookie_value(["a=b"].into_iter()), None);
    }
}
