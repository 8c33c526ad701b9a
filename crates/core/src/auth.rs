//! Who is calling: named tokens and the checks every daemon runs before any
//! handler (through [`crate::grpc::secure`] and [`crate::http::secure`]).
//!
//! A token is a record — name, role ([`Role`]), SHA-256 of the secret (never
//! the secret), creation, expiry, last use, revocation — in the
//! `api_tokens` table, managed with `opsloop token create|list|revoke`. The
//! secrets `admin_token` and `agent_token` (and `viewer_token`,
//! `alert_sender_token`) stay valid as in-memory records named
//! `bootstrap-admin`, `bootstrap-agent` (`bootstrap-viewer`,
//! `bootstrap-alert-sender`): no database write; rotate them by changing the
//! secret. Each daemon keeps the table in
//! memory and reloads it every [`REFRESH_INTERVAL`], so a revocation takes
//! effect on every replica within seconds. With no token at all (no
//! bootstrap secret and no record) a daemon is open: dev mode, with a
//! warning at start.
//!
//! Credentials: `authorization: Bearer <secret>` on gRPC and HTTP, and on
//! HTTP also `authorization: Basic base64(<name>:<secret>)` for tools that
//! only speak basic auth (amtool's `--http.config.file`). Failures are
//! counted in `opsloop_auth_failures_total{daemon,reason}` and logged at
//! most once per [`LOG_EVERY`] per reason, never with the credential.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::http;
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, TransactionTrait,
};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use crate::access::{Access, Role};
use crate::audit::{AuditLog, AuditRecord};
use crate::secrets::{SecretError, SecretStore};
use crate::store::entities::{api_tokens, audit_events};

/// How often a daemon reloads the token table.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// At most one failure log line per reason this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// `last_used_at` is written at most this often per token.
const TOUCH_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Names of the in-memory records of the bootstrap secrets.
pub const BOOTSTRAP_ADMIN: &str = "bootstrap-admin";
pub const BOOTSTRAP_AGENT: &str = "bootstrap-agent";

/// The bootstrap secrets: secret name → token name and role. `admin_token`
/// and `agent_token` are the historical two; `viewer_token` and
/// `alert_sender_token` let a Prometheus scrape and send alerts before any
/// named token exists (compose, systemd).
pub const BOOTSTRAP: [(&str, &str, Role); 4] = [
    ("admin_token", BOOTSTRAP_ADMIN, Role::Admin),
    ("agent_token", BOOTSTRAP_AGENT, Role::Agent),
    ("viewer_token", "bootstrap-viewer", Role::Viewer),
    (
        "alert_sender_token",
        "bootstrap-alert-sender",
        Role::AlertSender,
    ),
];

/// An authenticated caller: the token's name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// The gRPC metadata key an `admin` service token (the api's console) sets
/// to the person it acts for; the daemon records `<person> via <token>`.
pub const ON_BEHALF_OF: &str = "x-opsloop-on-behalf-of";

tokio::task_local! {
    static CALLER: Principal;
}

/// The caller of the call being handled (set by the gRPC layer and the HTTP
/// middleware around the handler); `None` when the daemon is open or the
/// route public.
pub fn caller() -> Option<Principal> {
    CALLER.try_with(Clone::clone).ok()
}

/// Runs `work` with `principal` as [`caller`].
pub async fn with_caller<F: Future>(principal: Option<Principal>, work: F) -> F::Output {
    match principal {
        Some(p) => CALLER.scope(p, work).await,
        None => work.await,
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No `authorization` header.
    Missing,
    /// An `authorization` header that is not `Bearer <token>` (or, on HTTP,
    /// `Basic …`).
    Malformed,
    /// No token has this secret (or basic auth's name does not match it).
    Unknown,
    Revoked {
        name: String,
    },
    Expired {
        name: String,
    },
    /// A valid token whose role may not make the call.
    WrongRole {
        name: String,
        role: Role,
        target: String,
        needs: Vec<&'static str>,
    },
    /// The call is not in the access table.
    NotListed {
        target: String,
    },
}

impl Denied {
    /// The `reason` label of `opsloop_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Malformed => "malformed",
            Denied::Unknown => "unknown",
            Denied::Revoked { .. } => "revoked",
            Denied::Expired { .. } => "expired",
            Denied::WrongRole { .. } => "wrong_role",
            Denied::NotListed { .. } => "not_listed",
        }
    }

    /// 401/UNAUTHENTICATED (no valid credential) rather than
    /// 403/PERMISSION_DENIED (a valid one that may not make this call).
    pub fn is_unauthenticated(&self) -> bool {
        !matches!(self, Denied::WrongRole { .. } | Denied::NotListed { .. })
    }

    /// One sentence for the caller, never containing the credential.
    pub fn message(&self) -> String {
        match self {
            Denied::Missing => {
                "missing credentials: send `authorization: Bearer <token>`".into()
            }
            Denied::Malformed => {
                "malformed authorization header: expected `Bearer <token>` (or basic auth with the token's name and secret over HTTP)".into()
            }
            Denied::Unknown => "unknown token".into(),
            Denied::Revoked { name } => format!("token {name} was revoked"),
            Denied::Expired { name } => format!("token {name} has expired"),
            Denied::WrongRole {
                name,
                role,
                target,
                needs,
            } => format!(
                "{target} needs the {} role, and token {name} has the {role} role",
                needs.join(" or ")
            ),
            Denied::NotListed { target } => {
                format!("{target} is not in the access table, so nobody may call it")
            }
        }
    }

    /// As a gRPC status.
    pub fn to_status(&self) -> tonic::Status {
        if self.is_unauthenticated() {
            tonic::Status::unauthenticated(self.message())
        } else {
            tonic::Status::permission_denied(self.message())
        }
    }
}

/// One token as a daemon keeps it in memory.
#[derive(Debug, Clone)]
struct Record {
    id: Option<Uuid>,
    name: String,
    role: Role,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

type Hash = [u8; 32];

struct Inner {
    bootstrap: HashMap<Hash, Record>,
    db: Option<DatabaseConnection>,
    stored: RwLock<HashMap<Hash, Record>>,
    touched: Mutex<HashMap<Uuid, DateTime<Utc>>>,
    logged: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

/// The tokens a daemon accepts. Cheap to clone (shared).
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

impl Default for Auth {
    fn default() -> Self {
        Self::new(HashMap::new(), None)
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("bootstrap", &self.inner.bootstrap.len())
            .field("stored", &self.stored().len())
            .finish()
    }
}

impl Auth {
    fn new(bootstrap: HashMap<Hash, Record>, db: Option<DatabaseConnection>) -> Self {
        Self {
            inner: Arc::new(Inner {
                bootstrap,
                db,
                stored: RwLock::new(HashMap::new()),
                touched: Mutex::new(HashMap::new()),
                logged: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The bootstrap tokens (secrets `admin_token`, `agent_token`) and,
    /// with a database, the `api_tokens` records (call [`Auth::refresh`]
    /// once, then [`Auth::refresh_every`]).
    pub fn from_secrets(
        secrets: &SecretStore,
        db: Option<DatabaseConnection>,
    ) -> Result<Self, SecretError> {
        let mut bootstrap = HashMap::new();
        for (secret, name, role) in BOOTSTRAP {
            if let Some(value) = secrets.get(secret)?
                && !value.expose().trim().is_empty()
            {
                bootstrap.insert(
                    hash_secret(value.expose().trim()),
                    Record {
                        id: None,
                        name: name.to_owned(),
                        role,
                        expires_at: None,
                        revoked_at: None,
                    },
                );
            }
        }
        Ok(Self::new(bootstrap, db))
    }

    fn stored(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Hash, Record>> {
        self.inner
            .stored
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// No token at all: every call is let through (dev mode).
    pub fn is_open(&self) -> bool {
        self.inner.bootstrap.is_empty() && self.stored().is_empty()
    }

    /// Whether the `api_tokens` table (as last read) holds a token that is
    /// neither revoked nor expired at `now`.
    pub fn has_usable_named_token(&self, now: DateTime<Utc>) -> bool {
        self.stored().values().any(|record| {
            record.revoked_at.is_none() && record.expires_at.is_none_or(|at| at > now)
        })
    }

    /// Reloads the `api_tokens` table (revoked and expired records too, so
    /// their callers hear why they are refused).
    pub async fn refresh(&self) -> Result<(), DbErr> {
        let Some(db) = &self.inner.db else {
            return Ok(());
        };
        let rows = api_tokens::Entity::find().all(db).await?;
        let mut map = HashMap::with_capacity(rows.len());
        for row in rows {
            let (Some(role), Some(hash)) = (Role::parse(&row.role), decode_hex(&row.secret_sha256))
            else {
                tracing::warn!(token = %row.name, "api_tokens row with an unknown role or a bad hash: ignored");
                continue;
            };
            map.insert(
                hash,
                Record {
                    id: Some(row.id),
                    name: row.name,
                    role,
                    expires_at: row.expires_at,
                    revoked_at: row.revoked_at,
                },
            );
        }
        *self
            .inner
            .stored
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = map;
        Ok(())
    }

    /// Reloads the token table every [`REFRESH_INTERVAL`] until `shutdown`.
    pub async fn refresh_every(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(REFRESH_INTERVAL) => {}
            }
            if let Err(error) = self.refresh().await {
                tracing::warn!(%error, "cannot reload the api_tokens table; keeping the last copy");
            }
        }
    }

    /// Who presents `headers`' credential; `allow_basic` accepts HTTP basic
    /// auth (name and secret) besides bearer tokens.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        allow_basic: bool,
        now: DateTime<Utc>,
    ) -> Result<Principal, Denied> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(Denied::Missing)?
            .to_str()
            .map_err(|_| Denied::Malformed)?
            .trim();
        let (scheme, rest) = value.split_once(' ').ok_or(Denied::Malformed)?;
        let (secret, name) = if scheme.eq_ignore_ascii_case("bearer") {
            (rest.trim().to_owned(), None)
        } else if allow_basic && scheme.eq_ignore_ascii_case("basic") {
            let decoded = decode_base64(rest.trim()).ok_or(Denied::Malformed)?;
            let text = String::from_utf8(decoded).map_err(|_| Denied::Malformed)?;
            let (user, password) = text.split_once(':').ok_or(Denied::Malformed)?;
            (password.to_owned(), Some(user.to_owned()))
        } else {
            return Err(Denied::Malformed);
        };
        if secret.is_empty() {
            return Err(Denied::Malformed);
        }
        let principal = self.authenticate_hash(&hash_secret(&secret), now)?;
        if let Some(name) = name
            && name != principal.name
        {
            return Err(Denied::Unknown);
        }
        Ok(principal)
    }

    /// Who holds the token whose secret hashes ([`hash_secret`]) to `hash`,
    /// checked for revocation and expiry at `now` against the in-memory
    /// table: what the console re-checks on every request of a session, so
    /// a session ends with its token.
    pub fn authenticate_hash(
        &self,
        hash: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Principal, Denied> {
        let record = match self.inner.bootstrap.get(hash) {
            Some(record) => record.clone(),
            None => self.stored().get(hash).cloned().ok_or(Denied::Unknown)?,
        };
        if record.revoked_at.is_some_and(|at| at <= now) {
            return Err(Denied::Revoked { name: record.name });
        }
        if record.expires_at.is_some_and(|at| at <= now) {
            return Err(Denied::Expired { name: record.name });
        }
        if let Some(id) = record.id {
            self.touch(id, now);
        }
        Ok(Principal {
            name: record.name,
            role: record.role,
        })
    }

    /// The whole check of one call: `access` from the table (`None`: not
    /// listed, denied), then the credential and its role. `Ok(None)` when
    /// the call is public or the daemon open.
    pub fn authorize(
        &self,
        target: &str,
        access: Option<Access>,
        headers: &http::HeaderMap,
        allow_basic: bool,
    ) -> Result<Option<Principal>, Denied> {
        let access = access.ok_or_else(|| Denied::NotListed {
            target: target.to_owned(),
        })?;
        if access == Access::Public || self.is_open() {
            return Ok(None);
        }
        let principal = self.authenticate(headers, allow_basic, Utc::now())?;
        if !access.allows(principal.role) {
            return Err(Denied::WrongRole {
                name: principal.name,
                role: principal.role,
                target: target.to_owned(),
                needs: access.role_names(),
            });
        }
        Ok(Some(principal))
    }

    /// Counts a refusal and logs it (at most once per [`LOG_EVERY`] per
    /// reason, with how many were not logged), without the credential.
    pub fn record_failure(&self, daemon: &'static str, target: &str, denied: &Denied) {
        let reason = denied.reason();
        metrics::counter!("opsloop_auth_failures_total", "daemon" => daemon, "reason" => reason)
            .increment(1);
        let suppressed = {
            let mut logged = self
                .inner
                .logged
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = Instant::now();
            match logged.get_mut(reason) {
                Some((last, skipped)) if now.duration_since(*last) < LOG_EVERY => {
                    *skipped += 1;
                    return;
                }
                Some((last, skipped)) => {
                    *last = now;
                    std::mem::take(skipped)
                }
                None => {
                    logged.insert(reason, (now, 0));
                    0
                }
            }
        };
        tracing::warn!(
            daemon,
            reason,
            target,
            suppressed,
            message = %denied.message(),
            "call refused"
        );
    }

    /// Writes `last_used_at` at most once per [`TOUCH_EVERY`] per token, in
    /// the background.
    fn touch(&self, id: Uuid, now: DateTime<Utc>) {
        let Some(db) = self.inner.db.clone() else {
            return;
        };
        {
            let mut touched = self
                .inner
                .touched
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if touched
                .get(&id)
                .is_some_and(|last| now - *last < TOUCH_EVERY)
            {
                return;
            }
            touched.insert(id, now);
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let update = api_tokens::ActiveModel {
                    id: Set(id),
                    last_used_at: Set(Some(now)),
                    ..Default::default()
                };
                if let Err(error) = update.update(&db).await {
                    tracing::debug!(%error, "cannot record a token's last use");
                }
            });
        }
    }

    /// The bootstrap records, for `ListTokens`.
    pub fn bootstrap_names(&self) -> Vec<(String, Role)> {
        let mut names: Vec<_> = self
            .inner
            .bootstrap
            .values()
            .map(|r| (r.name.clone(), r.role))
            .collect();
        names.sort();
        names
    }
}

/// SHA-256 of a token secret.
pub fn hash_secret(secret: &str) -> Hash {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new token secret: `olp_` and 32 random bytes in hex.
pub fn generate_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("olp_{}", encode_hex(&bytes))
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Hash> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Standard base64 (with or without padding), as HTTP basic auth sends it.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// What went wrong managing tokens.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "token name {0:?} is not valid: use 1 to 64 of a-z, 0-9, '-', '_', '.' (names starting with `bootstrap-` are reserved)"
    )]
    InvalidName(String),
    #[error("a token named {0} already exists: pick another name or revoke that one first")]
    NameTaken(String),
    #[error("no token named {0}")]
    NotFound(String),
    #[error(
        "{0} comes from the {1} secret: change or remove that secret and restart the daemons to rotate it"
    )]
    Bootstrap(String, &'static str),
    #[error("database: {0}")]
    Db(#[from] DbErr),
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with("bootstrap-")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// Appends to the audit file after commit; a failure is logged, never
/// undoes the change (the database row is the record of truth).
fn audit_file(record: &AuditRecord, file: Option<&AuditLog>) {
    if let Some(log) = file
        && let Err(error) = log.append(record)
    {
        tracing::error!(%error, action = %record.action, "cannot append to the audit log file");
    }
}

async fn audit_row(tx: &impl sea_orm::ConnectionTrait, record: &AuditRecord) -> Result<(), DbErr> {
    audit_events::ActiveModel {
        id: sea_orm::ActiveValue::NotSet,
        actor: Set(record.actor.clone()),
        action: Set(record.action.clone()),
        subject: Set(record.subject.clone()),
        before: Set(record.before.clone()),
        after: Set(record.after.clone()),
        reason: Set(record.reason.clone()),
        created_at: Set(record.at),
    }
    .insert(tx)
    .await?;
    Ok(())
}

/// Creates a token; returns its record and its secret (shown once, stored
/// only as a hash). Audited as `token.create` by `actor`.
pub async fn create_token(
    db: &DatabaseConnection,
    name: &str,
    role: Role,
    expires_at: Option<DateTime<Utc>>,
    actor: &str,
    audit_log: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<(api_tokens::Model, String), TokenError> {
    if !valid_name(name) {
        return Err(TokenError::InvalidName(name.to_owned()));
    }
    let tx = db.begin().await?;
    if api_tokens::Entity::find()
        .filter(api_tokens::Column::Name.eq(name))
        .one(&tx)
        .await?
        .is_some()
    {
        return Err(TokenError::NameTaken(name.to_owned()));
    }
    let secret = generate_secret();
    let row = api_tokens::ActiveModel {
        id: Set(Uuid::new_v4()),
        name: Set(name.to_owned()),
        role: Set(role.as_str().to_owned()),
        secret_sha256: Set(encode_hex(&hash_secret(&secret))),
        created_at: Set(now),
        expires_at: Set(expires_at),
        last_used_at: Set(None),
        revoked_at: Set(None),
        created_by: Set(actor.to_owned()),
    }
    .insert(&tx)
    .await
    .map_err(|e| match e.sql_err() {
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => {
            TokenError::NameTaken(name.to_owned())
        }
        _ => TokenError::Db(e),
    })?;
    let record = AuditRecord {
        at: now,
        actor: actor.to_owned(),
        action: "token.create".into(),
        subject: name.to_owned(),
        reason: None,
        before: None,
        after: Some(serde_json::json!({
            "role": role.as_str(),
            "expires_at": expires_at,
        })),
    };
    audit_row(&tx, &record).await?;
    tx.commit().await?;
    audit_file(&record, audit_log);
    Ok((row, secret))
}

/// Every stored token, oldest first.
pub async fn list_tokens(db: &DatabaseConnection) -> Result<Vec<api_tokens::Model>, TokenError> {
    Ok(api_tokens::Entity::find()
        .order_by_asc(api_tokens::Column::CreatedAt)
        .order_by_asc(api_tokens::Column::Name)
        .all(db)
        .await?)
}

/// Revokes the token `name` (idempotent: a revoked token stays revoked at
/// its first revocation time). Audited as `token.revoke` by `actor`.
pub async fn revoke_token(
    db: &DatabaseConnection,
    name: &str,
    actor: &str,
    audit_log: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<api_tokens::Model, TokenError> {
    if let Some((secret, _, _)) = BOOTSTRAP.iter().find(|(_, token, _)| *token == name) {
        return Err(TokenError::Bootstrap(name.to_owned(), secret));
    }
    let tx = db.begin().await?;
    let row = api_tokens::Entity::find()
        .filter(api_tokens::Column::Name.eq(name))
        .one(&tx)
        .await?
        .ok_or_else(|| TokenError::NotFound(name.to_owned()))?;
    if row.revoked_at.is_some() {
        return Ok(row);
    }
    let row = api_tokens::ActiveModel {
        id: Set(row.id),
        revoked_at: Set(Some(now)),
        ..Default::default()
    }
    .update(&tx)
    .await?;
    let record = AuditRecord {
        at: now,
        actor: actor.to_owned(),
        action: "token.revoke".into(),
        subject: name.to_owned(),
        reason: None,
        before: None,
        after: None,
    };
    audit_row(&tx, &record).await?;
    tx.commit().await?;
    audit_file(&record, audit_log);
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: Option<&str>) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        if let Some(v) = value {
            map.insert(http::header::AUTHORIZATION, v.parse().expect("ascii"));
        }
        map
    }

    fn basic(user: &str, password: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let input = format!("{user}:{password}").into_bytes();
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        format!("Basic {out}")
    }

    fn bootstrap() -> Auth {
        let secrets = SecretStore::with_sources(
            None,
            std::path::Path::new("/nonexistent"),
            [
                ("OPSLOOP_AGENT_TOKEN".to_owned(), "ag".to_owned()),
                ("OPSLOOP_ADMIN_TOKEN".to_owned(), "ad".to_owned()),
            ],
        );
        Auth::from_secrets(&secrets, None).expect("secrets")
    }

    #[test]
    fn credentials_table() {
        let auth = bootstrap();
        let now = Utc::now();
        let table: [(Option<String>, bool, Result<&str, &str>); 9] = [
            (None, false, Err("missing")),
            (Some("Token ad".into()), false, Err("malformed")),
            (Some("Bearer".into()), false, Err("malformed")),
            (Some("Bearer nope".into()), false, Err("unknown")),
            (Some("Bearer ad".into()), false, Ok(BOOTSTRAP_ADMIN)),
            (Some("bearer ag".into()), false, Ok(BOOTSTRAP_AGENT)),
            (Some(basic(BOOTSTRAP_ADMIN, "ad")), false, Err("malformed")),
            (
                Some(basic(BOOTSTRAP_ADMIN, "ad")),
                true,
                Ok(BOOTSTRAP_ADMIN),
            ),
            // A secret given as the user name is refused.
            (Some(basic("ad", "")), true, Err("malformed")),
        ];
        for (header, allow_basic, expected) in table {
            let got = auth
                .authenticate(&headers(header.as_deref()), allow_basic, now)
                .map(|p| p.name)
                .map_err(|d| d.reason());
            assert_eq!(
                got.as_deref().map_err(|e| *e),
                expected,
                "{header:?} basic={allow_basic}"
            );
        }
        let got = auth.authenticate(&headers(Some(&basic("ad", "ad"))), true, now);
        assert_eq!(got.map_err(|d| d.reason()), Err("unknown"));
    }

    #[test]
    fn roles_are_checked_against_the_table() {
        let auth = bootstrap();
        let set_policy = "/opsloop.v1.PolicyService/SetPolicy";
        let access = crate::access::grpc_access(set_policy);
        let denied = auth
            .authorize(set_policy, access, &headers(Some("Bearer ag")), false)
            .expect_err("agent may not set policy");
        assert_eq!(
            denied.message(),
            "/opsloop.v1.PolicyService/SetPolicy needs the admin role, and token bootstrap-agent has the agent role"
        );
        assert_eq!(denied.to_status().code(), tonic::Code::PermissionDenied);
        let ok = auth
            .authorize(set_policy, access, &headers(Some("Bearer ad")), false)
            .expect("admin may");
        assert_eq!(ok.map(|p| p.role), Some(Role::Admin));
        let health = "/grpc.health.v1.Health/Check";
        assert_eq!(
            auth.authorize(
                health,
                crate::access::grpc_access(health),
                &headers(None),
                false
            ),
            Ok(None)
        );
        assert_eq!(
            auth.authorize("/x.Y/Z", None, &headers(Some("Bearer ad")), false)
                .map_err(|d| d.reason()),
            Err("not_listed")
        );
        // Open (no tokens): everything listed passes, unlisted is still denied.
        let open = Auth::default();
        assert!(open.is_open());
        assert_eq!(
            open.authorize(set_policy, access, &headers(None), false),
            Ok(None)
        );
        assert!(
            open.authorize("/x.Y/Z", None, &headers(None), false)
                .is_err()
        );
    }

    #[test]
    fn secrets_hash_and_encode() {
        let secret = generate_secret();
        assert!(secret.starts_with("olp_") && secret.len() == 4 + 64);
        let hash = hash_secret(&secret);
        assert_eq!(decode_hex(&encode_hex(&hash)), Some(hash));
        assert_eq!(
            decode_base64("YWxhZGRpbjpvcGVuc2VzYW1l").as_deref(),
            Some(&b"aladdin:opensesame"[..])
        );
        assert!(valid_name("ci-deploy.2026"));
        assert!(!valid_name("bootstrap-admin") && !valid_name("") && !valid_name("Bad Name"));
    }
}
