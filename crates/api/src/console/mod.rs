//! The operator console under `/console` on the api's HTTP port: the loop's
//! records in a browser and the decisions on them — approve or reject a
//! proposal, cancel a mission, retry a dead letter, engage or release the
//! emergency stop, edit a policy (with a diff before saving), enable or
//! disable a trigger rule — each one call into the same
//! `opsloop_core::workflow` function the gRPC services call, audited under
//! the signed-in token's name.
//!
//! Sign-in takes a token ([`session`]): the session cookie is HttpOnly,
//! `SameSite=Strict`, `Secure` when the HTTP port serves TLS, expires after
//! [`session::SESSION_TTL`] and ends when its token is revoked. The roles
//! come from the access table (`opsloop_core::access`: `viewer` reads,
//! `admin` acts), checked here against the session since the bearer guard
//! lets `/console` through; every action form carries a single-use CSRF
//! token bound to the session. Pages are server-rendered ([`views`]); the
//! only script is the events page's live tail (Server-Sent Events from the
//! event table, resuming from `Last-Event-ID`).

pub mod alerts;
pub mod backups;
pub mod filters;
pub mod incidents;
pub mod peer;
pub mod session;
pub mod views;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use axum::Router;
use axum::extract::{Form, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use maud::Markup;
use opsloop_core::access::{Role, http_access, http_route};
use opsloop_core::auth::Principal;
use opsloop_core::domain::input::{JsonDocument, bounded, text};
use opsloop_core::domain::policy::{CostBudget, PolicyKey, PolicyValue};
use opsloop_core::domain::status::{MissionStatus, ProposalStatus};
use opsloop_core::store::nonces;
use opsloop_core::workflow::{
    self, DeadLetterFilter, MissionFilter, PolicyChange, ProposalFilter, WorkflowError,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::services::Api;
use crate::status_page::StatusPage;
use filters::{EventQuery, FilterError, MissionQuery, ProposalQuery};
use session::{CsrfError, Keys, OPEN_HASH, Session};
use views::Ctx;

/// Scripts only from the console itself, forms only to it, no frames.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// How often the live tail looks for new events.
const TAIL_POLL: StdDuration = StdDuration::from_millis(250);

/// The secret whose value signs console sessions (optional; set the same
/// one on every replica behind one address).
pub const SESSION_KEY_SECRET: &str = "console_session_key";

/// The secret holding the bearer token the console calls the alerter with
/// (the `admin` role: it creates and expires silences).
pub const ALERTER_TOKEN_SECRET: &str = "console_alerter_token";

/// The secret holding the bearer token the console calls the backup-agent
/// with (the `admin` role: it verifies backups); unset: the
/// `console_alerter_token`.
pub const BACKUP_TOKEN_SECRET: &str = "console_backup_token";

/// The `[api.console]` config section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleSettings {
    /// Base URL of the alerter's HTTP port, whose Alertmanager v2 API the
    /// alerts page reads and writes; unset: the status page's alerter URL;
    /// empty: no alerts page.
    pub alerter_url: Option<String>,
    /// URL of the alerter's gRPC port (`http://` or `https://`), whose
    /// `IncidentService` the incidents pages read and act on; unset:
    /// `alerter.grpc_addr` of the same configuration (`https://` when this
    /// configuration serves gRPC over TLS); empty: no incidents pages.
    pub alerter_grpc_url: Option<String>,
    /// URL of the backup-agent's gRPC port, whose `BackupService` verifies
    /// a backup from its page; unset: `backup.grpc_addr` of the same
    /// configuration; empty: no verify button.
    pub backup_grpc_url: Option<String>,
}

/// Where the console calls a daemon's gRPC port: `configured` when set
/// (`""`: nowhere), else `grpc_addr` of that daemon's `section` in the same
/// configuration (`default_addr` when absent), `https://` when this
/// configuration serves gRPC over TLS.
pub fn peer_grpc_url(
    config: &opsloop_core::config::LoadedConfig,
    configured: Option<&str>,
    section: &str,
    default_addr: &str,
) -> Option<String> {
    #[derive(Default, Deserialize)]
    #[serde(default)]
    struct Peek {
        grpc_addr: Option<String>,
    }
    match configured.map(str::trim) {
        Some("") => None,
        Some(url) => Some(url.trim_end_matches('/').to_owned()),
        None => {
            let peek: Peek = config.section(section).unwrap_or_default();
            let tls = &config.settings.tls;
            let scheme = if tls.grpc && tls.cert_file.is_some() {
                "https"
            } else {
                "http"
            };
            peer::url_of(scheme, peek.grpc_addr.as_deref().unwrap_or(default_addr))
        }
    }
}

/// The name of a session opened while the daemon has no token (dev mode).
pub const OPEN_NAME: &str = "dev";

struct Inner {
    api: Api,
    status: Option<StatusPage>,
    keys: Keys,
    secure: bool,
    alerter: alerts::AlerterClient,
    incidents: incidents::IncidentClient,
    backups: backups::BackupClient,
}

/// The console of one api: cheap to clone.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

impl Console {
    /// `session_key`: the `console_session_key` secret (sessions valid on
    /// every replica that has it), else a random key of this process.
    /// `secure`: the HTTP port serves TLS (the cookie gets `Secure`).
    pub fn new(
        api: Api,
        status: Option<StatusPage>,
        session_key: Option<&str>,
        secure: bool,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                api,
                status,
                keys: Keys::new(session_key),
                secure,
                alerter: alerts::AlerterClient::new(reqwest::Client::new(), None, None),
                incidents: incidents::IncidentClient::disabled(),
                backups: backups::BackupClient::disabled(),
            }),
        }
    }

    /// Lists alerts and silences from this alerter (and creates and
    /// expires silences there). Call before [`Console::router`].
    pub fn with_alerter(mut self, alerter: alerts::AlerterClient) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.alerter = alerter;
        }
        self
    }

    /// Reads and acts on incidents at this alerter's `IncidentService`.
    /// Call before [`Console::router`].
    pub fn with_incidents(mut self, client: incidents::IncidentClient) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.incidents = client;
        }
        self
    }

    /// Verifies backups at this backup-agent's `BackupService`. Call before
    /// [`Console::router`].
    pub fn with_backups(mut self, client: backups::BackupClient) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.backups = client;
        }
        self
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.api.now()
    }

    /// The routes, to merge onto the api's HTTP router.
    pub fn router(self) -> Router {
        Router::new()
            .route("/console/login", get(login_page).post(login))
            .route("/console/logout", post(logout))
            .route("/console", get(overview))
            .route("/console/console.js", get(script))
            .route("/console/proposals", get(proposals))
            .route("/console/proposals/{id}", get(proposal))
            .route("/console/proposals/{id}/approve", post(approve))
            .route("/console/proposals/{id}/reject", post(reject))
            .route("/console/missions", get(missions))
            .route("/console/missions/{id}", get(mission))
            .route("/console/missions/{id}/cancel", post(cancel))
            .route("/console/dead-letters", get(dead_letters))
            .route("/console/dead-letters/{id}/retry", post(retry))
            .route("/console/events", get(events_page))
            .route("/console/events/stream", get(event_stream))
            .route("/console/policy", get(policies))
            .route("/console/policy/{key}", get(policy_page).post(policy_save))
            .route("/console/policy/{key}/preview", post(policy_preview))
            .route("/console/emergency-stop", post(emergency_stop))
            .route("/console/alerts", get(alerts_page))
            .route("/console/alerts/silence", post(silence))
            .route("/console/silences/{id}/expire", post(expire_silence))
            .route("/console/incidents", get(incidents_page))
            .route("/console/incidents/{id}", get(incident_page))
            .route("/console/incidents/{id}/postmortem", get(postmortem_page))
            .route(
                "/console/incidents/{id}/acknowledge",
                post(acknowledge_incident),
            )
            .route("/console/incidents/{id}/resolve", post(resolve_incident))
            .route("/console/incidents/{id}/note", post(note_incident))
            .route("/console/backups", get(backups_page))
            .route("/console/backups/{id}", get(backup_page))
            .route("/console/backups/{id}/verify", post(verify_backup))
            .route("/console/triggers", get(triggers))
            .route("/console/triggers/{id}/enabled", post(trigger_enabled))
            .with_state(self)
    }

    /// The session of a request, checked against the token table and the
    /// sessions signed out (on any replica) now.
    async fn signed_in(&self, headers: &HeaderMap) -> Option<(Session, Principal)> {
        let cookies = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok());
        let value = session::cookie_value(cookies)?;
        let session = self.inner.keys.open(value, self.now())?;
        match nonces::is_spent(&self.inner.api.db, &session.sign_out().key, self.now()).await {
            Ok(false) => {}
            Ok(true) => return None,
            Err(error) => {
                // Fail closed: a sign-out that cannot be read may have happened.
                tracing::warn!(%error, "console: cannot read the signed-out sessions");
                return None;
            }
        }
        let auth = &self.inner.api.auth;
        let principal = if session.token_hash == OPEN_HASH {
            auth.is_open().then(|| Principal {
                name: OPEN_NAME.into(),
                role: Role::Admin,
            })?
        } else {
            auth.authenticate_hash(&session.token_hash, Utc::now())
                .ok()?
        };
        (principal.name == session.name && principal.role == session.role)
            .then_some((session, principal))
    }

    fn ctx(&self, who: &Who) -> Ctx {
        Ctx {
            name: who.principal.name.clone(),
            role: who.principal.role.to_string(),
            can_act: who.can_act,
            csrf: self.inner.keys.csrf(&who.session, self.now()),
            done: who.done,
        }
    }

    /// Refuses a forged, tampered or replayed action (403, nothing done);
    /// spends the form's token on every replica otherwise.
    async fn check_csrf(&self, who: &Who, form: &ActionForm) -> Result<(), Box<Response>> {
        let refuse = |e: CsrfError| {
            tracing::warn!(token = %who.principal.name, reason = e.message(), "console: action refused (CSRF)");
            Box::new(page(
                StatusCode::FORBIDDEN,
                views::error(Some(&self.ctx(who)), "Refused", e.message()),
            ))
        };
        let spend = self
            .inner
            .keys
            .check_csrf(&who.session, form.csrf.as_deref(), self.now())
            .map_err(refuse)?;
        match nonces::spend(&self.inner.api.db, &spend.key, spend.until, self.now()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(refuse(CsrfError::Replayed)),
            Err(e) => Err(Box::new(failure(&self.ctx(who), &WorkflowError::Db(e)))),
        }
    }
}

/// The signed-in caller of a console route, allowed by the access table.
pub struct Who {
    session: Session,
    principal: Principal,
    /// The role may act (the table's admin-only console routes).
    can_act: bool,
    done: Option<&'static str>,
}

impl FromRequestParts<Console> for Who {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Response> {
        let method = parts.method.as_str().to_owned();
        let found = http_route(crate::SERVICE, &method, parts.uri.path());
        let pattern = found.map(|(p, _)| p).unwrap_or(parts.uri.path());
        let target = format!("{method} {pattern}");
        let auth = &console.inner.api.auth;
        let Some((_, access)) = found else {
            let denied = opsloop_core::auth::Denied::NotListed {
                target: target.clone(),
            };
            auth.record_failure(crate::SERVICE, &target, &denied);
            return Err(page(
                StatusCode::FORBIDDEN,
                views::error(None, "Refused", &denied.message()),
            ));
        };
        let Some((session, principal)) = console.signed_in(&parts.headers).await else {
            if method == "GET" {
                let next = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/console");
                return Err(redirect(&format!("/console/login?next={}", encode(next))));
            }
            return Err(page(
                StatusCode::UNAUTHORIZED,
                views::error(
                    None,
                    "Sign in first",
                    "This action needs a console session: sign in at /console/login.",
                ),
            ));
        };
        if !access.allows(principal.role) {
            let denied = opsloop_core::auth::Denied::WrongRole {
                name: principal.name.clone(),
                role: principal.role,
                target: target.clone(),
                needs: access.role_names(),
            };
            auth.record_failure(crate::SERVICE, &target, &denied);
            return Err(page(
                StatusCode::FORBIDDEN,
                views::error(None, "Refused", &denied.message()),
            ));
        }
        let can_act = http_access(crate::SERVICE, "POST", "/console/proposals/{id}/approve")
            .is_some_and(|a| a.allows(principal.role));
        let done = parts.uri.query().and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "done")
                .and_then(|(_, v)| views::done_message(v))
        });
        Ok(Who {
            session,
            principal,
            can_act,
            done,
        })
    }
}

/// The record a console page shows: the signed-in caller (allowed by the
/// access table) and the record's id from the path — an id that is not one
/// is a 404 page naming the record (from the path: `/console/missions/…` →
/// "mission").
pub struct Record {
    who: Who,
    ctx: Ctx,
    id: Uuid,
}

/// An action on one record: what [`Record`] holds, plus the form, whose
/// CSRF token has been checked and spent (403, nothing done, otherwise).
pub struct Act {
    who: Who,
    ctx: Ctx,
    id: Uuid,
    form: ActionForm,
}

/// What the record of a `/console/<records>/{id}…` path is called.
fn record_name(path: &str) -> String {
    let records = path
        .trim_start_matches("/console/")
        .split('/')
        .next()
        .unwrap_or("record");
    records.trim_end_matches('s').replace('-', " ")
}

impl FromRequestParts<Console> for Record {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Response> {
        let who = Who::from_request_parts(parts, console).await?;
        let ctx = console.ctx(&who);
        let Path(raw) = Path::<String>::from_request_parts(parts, console)
            .await
            .map_err(IntoResponse::into_response)?;
        let id = id(&ctx, &record_name(parts.uri.path()), &raw).map_err(|r| *r)?;
        Ok(Self { who, ctx, id })
    }
}

impl FromRequest<Console> for Act {
    type Rejection = Response;

    async fn from_request(request: Request, console: &Console) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let Record { who, ctx, id } = Record::from_request_parts(&mut parts, console).await?;
        let Form(form) =
            Form::<ActionForm>::from_request(Request::from_parts(parts, body), console)
                .await
                .map_err(IntoResponse::into_response)?;
        console.check_csrf(&who, &form).await.map_err(|r| *r)?;
        Ok(Self { who, ctx, id, form })
    }
}

/// Every field an action form may send (all optional: a missing one is
/// refused by the handler with its name, not by the extractor).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ActionForm {
    pub csrf: Option<String>,
    pub comment: Option<String>,
    pub reason: Option<String>,
    pub version: Option<String>,
    pub value: Option<String>,
    pub enabled: Option<String>,
    pub engage: Option<String>,
}

/// Percent-encodes a path for the `next` parameter.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Where to go after sign-in: a console path, nothing else (no open
/// redirect).
fn safe_next(next: Option<&str>) -> String {
    match next.map(str::trim) {
        Some(n)
            if (n == "/console" || n.starts_with("/console/") || n.starts_with("/console?"))
                && !n.contains("//")
                && !n.contains('\\') =>
        {
            n.to_owned()
        }
        _ => "/console".to_owned(),
    }
}

fn with_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

fn page(status: StatusCode, markup: Markup) -> Response {
    with_headers(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            markup.into_string(),
        )
            .into_response(),
    )
}

fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    with_headers(response)
}

/// A workflow error as a page: 404 unknown id, 400 bad input (naming the
/// field), 409 a state that forbids it, 503 the database.
fn failure(ctx: &Ctx, error: &WorkflowError) -> Response {
    let (status, title) = match error {
        WorkflowError::NotFound { .. } => (StatusCode::NOT_FOUND, "Not found"),
        WorkflowError::Invalid(_) => (StatusCode::BAD_REQUEST, "Invalid input"),
        WorkflowError::Illegal(_)
        | WorkflowError::LeaseLost { .. }
        | WorkflowError::Conflict(_)
        | WorkflowError::AlreadyExists(_) => (StatusCode::CONFLICT, "Not possible now"),
        WorkflowError::Corrupt(_) => (StatusCode::INTERNAL_SERVER_ERROR, "Stored data is invalid"),
        WorkflowError::Db(_) => (StatusCode::SERVICE_UNAVAILABLE, "Database unavailable"),
    };
    if status.is_server_error() {
        tracing::warn!(%error, "console: request failed");
    }
    page(status, views::error(Some(ctx), title, &error.to_string()))
}

fn bad_filter(ctx: &Ctx, error: &FilterError) -> Response {
    page(
        StatusCode::BAD_REQUEST,
        views::error(Some(ctx), "Invalid filter", &error.to_string()),
    )
}

fn not_found(ctx: &Ctx, what: &str, id: &str) -> Response {
    page(
        StatusCode::NOT_FOUND,
        views::error(Some(ctx), "Not found", &format!("{what} {id} not found")),
    )
}

fn invalid(ctx: &Ctx, error: opsloop_core::domain::ValidationError) -> Response {
    failure(ctx, &WorkflowError::Invalid(error))
}

fn id(ctx: &Ctx, what: &str, raw: &str) -> Result<Uuid, Box<Response>> {
    Uuid::parse_str(raw.trim()).map_err(|_| Box::new(not_found(ctx, what, raw)))
}

// ---- sign-in ----------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LoginQuery {
    next: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LoginForm {
    token: Option<String>,
    next: Option<String>,
}

async fn login_page(State(c): State<Console>, Query(q): Query<LoginQuery>) -> Response {
    let next = safe_next(q.next.as_deref());
    page(
        StatusCode::OK,
        views::login(None, c.inner.api.auth.is_open(), &next),
    )
}

async fn login(State(c): State<Console>, Form(form): Form<LoginForm>) -> Response {
    let next = safe_next(form.next.as_deref());
    let auth = &c.inner.api.auth;
    let open = auth.is_open();
    let refuse =
        |status: StatusCode, message: &str| page(status, views::login(Some(message), open, &next));
    let (hash, principal) = if open {
        (
            OPEN_HASH,
            Principal {
                name: OPEN_NAME.into(),
                role: Role::Admin,
            },
        )
    } else {
        let secret = form.token.as_deref().map(str::trim).unwrap_or("");
        if secret.is_empty() {
            return refuse(StatusCode::UNAUTHORIZED, "Give a token.");
        }
        let hash = opsloop_core::auth::hash_secret(secret);
        match auth.authenticate_hash(&hash, Utc::now()) {
            Ok(principal) => (hash, principal),
            Err(denied) => {
                auth.record_failure(crate::SERVICE, "POST /console/login", &denied);
                return refuse(StatusCode::UNAUTHORIZED, &denied.message());
            }
        }
    };
    let may_read =
        http_access(crate::SERVICE, "GET", "/console").is_some_and(|a| a.allows(principal.role));
    if !may_read {
        return refuse(
            StatusCode::FORBIDDEN,
            &format!(
                "token {} has the {} role; the console needs the viewer or admin role",
                principal.name, principal.role
            ),
        );
    }
    let cookie = c
        .inner
        .keys
        .issue(&hash, &principal.name, principal.role, c.now());
    tracing::info!(token = %principal.name, role = %principal.role, "console: signed in");
    let mut response = redirect(&next);
    if let Ok(value) = HeaderValue::from_str(&session::set_cookie(&cookie, c.inner.secure)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout(State(c): State<Console>, who: Who, Form(form): Form<ActionForm>) -> Response {
    if let Err(refused) = c.check_csrf(&who, &form).await {
        return *refused;
    }
    let out = who.session.sign_out();
    if let Err(e) = nonces::spend(&c.inner.api.db, &out.key, out.until, c.now()).await {
        return failure(&c.ctx(&who), &WorkflowError::Db(e));
    }
    let mut response = redirect("/console/login");
    if let Ok(value) = HeaderValue::from_str(&session::clear_cookie(c.inner.secure)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn script(_who: Who) -> Response {
    with_headers(
        (
            [(
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            )],
            views::SCRIPT,
        )
            .into_response(),
    )
}

// ---- pages ------------------------------------------------------------

async fn overview(State(c): State<Console>, who: Who) -> Response {
    let ctx = c.ctx(&who);
    let api = &c.inner.api;
    let now = c.now();
    let health = match workflow::health(&api.db, now).await {
        Ok(h) => h,
        Err(e) => return failure(&ctx, &e),
    };
    let budget = workflow::get_policy(&api.db, "cost_budget")
        .await
        .ok()
        .and_then(|row| serde_json::from_value::<CostBudget>(row.value).ok())
        .map(|b| (b.daily_usd, b.monthly_usd));
    let pending = workflow::list_proposals(
        &api.db,
        &ProposalFilter {
            status: Some(ProposalStatus::Pending),
            limit: 20,
            ..Default::default()
        },
    )
    .await;
    let running = workflow::list_missions(
        &api.db,
        &MissionFilter {
            status: Some(MissionStatus::Running),
            limit: 100,
            ..Default::default()
        },
    )
    .await;
    let (pending, running) = match (pending, running) {
        (Ok(p), Ok(r)) => (p, r),
        (Err(e), _) | (_, Err(e)) => return failure(&ctx, &e),
    };
    let newest_backup = match recent_backups(&api.db, 1).await {
        Ok(rows) => rows.into_iter().next(),
        Err(e) => return failure(&ctx, &e),
    };
    let snapshot = match &c.inner.status {
        Some(status) => Some(status.current().await),
        None => None,
    };
    let overview = views::Overview {
        health,
        budget,
        pending,
        running,
        snapshot,
        newest_backup,
    };
    page(StatusCode::OK, views::overview(&ctx, &overview))
}

async fn proposals(State(c): State<Console>, who: Who, Query(q): Query<ProposalQuery>) -> Response {
    let ctx = c.ctx(&who);
    let (filter, kind) = match q.parse() {
        Ok(parsed) => parsed,
        Err(e) => return bad_filter(&ctx, &e),
    };
    let db = &c.inner.api.db;
    let mut rows = Vec::new();
    if filter.status.is_none() {
        // Pending first, then the rest newest first.
        let pending = ProposalFilter {
            status: Some(ProposalStatus::Pending),
            ..filter.clone()
        };
        match workflow::list_proposals(db, &pending).await {
            Ok(p) => rows.extend(p),
            Err(e) => return failure(&ctx, &e),
        }
    }
    match workflow::list_proposals(db, &filter).await {
        Ok(all) => rows.extend(
            all.into_iter()
                .filter(|v| filter.status.is_some() || v.proposal.status != "pending"),
        ),
        Err(e) => return failure(&ctx, &e),
    }
    if let Some(kind) = &kind {
        rows.retain(|v| v.steps().iter().any(|s| s.kind.as_str() == kind));
    }
    page(StatusCode::OK, views::proposals(&ctx, &q, &rows))
}

async fn proposal(State(c): State<Console>, Record { ctx, id, .. }: Record) -> Response {
    match workflow::get_proposal(&c.inner.api.db, id).await {
        Ok(view) => page(StatusCode::OK, views::proposal(&ctx, &view)),
        Err(e) => failure(&ctx, &e),
    }
}

async fn approve(State(c): State<Console>, Act { who, ctx, id, form }: Act) -> Response {
    let comment = form.comment.as_deref().map(str::trim).unwrap_or("");
    let comment = match bounded("comment", comment, 1000) {
        Ok(c) => (!c.is_empty()).then_some(c),
        Err(e) => return invalid(&ctx, e),
    };
    let api = &c.inner.api;
    match workflow::approve_proposal(
        &api.db,
        id,
        &who.principal.name,
        comment.as_deref(),
        api.audit(),
        c.now(),
    )
    .await
    {
        Ok(view) => {
            api.wake_new_mission(&view);
            redirect(&format!("/console/proposals/{id}?done=approved"))
        }
        Err(e) => failure(&ctx, &e),
    }
}

async fn reject(State(c): State<Console>, Act { who, ctx, id, form }: Act) -> Response {
    let reason = match text("reason", form.reason.as_deref().unwrap_or(""), 1000) {
        Ok(r) => r,
        Err(e) => return invalid(&ctx, e),
    };
    let api = &c.inner.api;
    match workflow::reject_proposal(
        &api.db,
        id,
        &who.principal.name,
        &reason,
        api.audit(),
        c.now(),
    )
    .await
    {
        Ok(_) => redirect(&format!("/console/proposals/{id}?done=rejected")),
        Err(e) => failure(&ctx, &e),
    }
}

async fn missions(State(c): State<Console>, who: Who, Query(q): Query<MissionQuery>) -> Response {
    let ctx = c.ctx(&who);
    let filter = match q.parse() {
        Ok(f) => f,
        Err(e) => return bad_filter(&ctx, &e),
    };
    match workflow::list_missions(&c.inner.api.db, &filter).await {
        Ok(rows) => page(StatusCode::OK, views::missions(&ctx, &q, &rows)),
        Err(e) => failure(&ctx, &e),
    }
}

async fn mission(State(c): State<Console>, Record { ctx, id, .. }: Record) -> Response {
    let db = &c.inner.api.db;
    let view = match workflow::get_mission(db, id).await {
        Ok(v) => v,
        Err(e) => return failure(&ctx, &e),
    };
    let dead = if view.steps.iter().any(|s| s.status == "failed") {
        match workflow::list_dead_letters(
            db,
            &DeadLetterFilter {
                kind: None,
                include_retried: true,
                limit: 1000,
            },
        )
        .await
        {
            Ok(rows) => rows.into_iter().filter(|d| d.mission_id == id).collect(),
            Err(e) => return failure(&ctx, &e),
        }
    } else {
        Vec::new()
    };
    page(StatusCode::OK, views::mission(&ctx, &view, &dead))
}

async fn cancel(State(c): State<Console>, Act { who, ctx, id, form }: Act) -> Response {
    let reason = match text("reason", form.reason.as_deref().unwrap_or(""), 1000) {
        Ok(r) => r,
        Err(e) => return invalid(&ctx, e),
    };
    let api = &c.inner.api;
    match workflow::cancel_mission(
        &api.db,
        id,
        &who.principal.name,
        &reason,
        api.audit(),
        c.now(),
    )
    .await
    {
        Ok(_) => redirect(&format!("/console/missions/{id}?done=cancelled")),
        Err(e) => failure(&ctx, &e),
    }
}

async fn dead_letters(State(c): State<Console>, who: Who) -> Response {
    let ctx = c.ctx(&who);
    let filter = DeadLetterFilter {
        kind: None,
        include_retried: true,
        limit: filters::PAGE_ROWS,
    };
    match workflow::list_dead_letters(&c.inner.api.db, &filter).await {
        Ok(rows) => page(StatusCode::OK, views::dead_letters(&ctx, &rows)),
        Err(e) => failure(&ctx, &e),
    }
}

async fn retry(State(c): State<Console>, Act { who, ctx, id, .. }: Act) -> Response {
    let api = &c.inner.api;
    match workflow::retry_dead_letter(&api.db, id, &who.principal.name, api.audit(), c.now()).await
    {
        Ok(outcome) => {
            api.wake_new_mission(&outcome.submitted.proposal);
            redirect(&format!(
                "/console/proposals/{}?done=retried",
                outcome.submitted.proposal.proposal.id
            ))
        }
        Err(e) => failure(&ctx, &e),
    }
}

/// The newest seq in the event table (0 when empty).
async fn newest_seq(db: &sea_orm::DatabaseConnection) -> Result<i64, WorkflowError> {
    use opsloop_core::store::entities::events;
    use sea_orm::{EntityTrait, QueryOrder, QuerySelect};
    Ok(events::Entity::find()
        .order_by_desc(events::Column::Seq)
        .limit(1)
        .one(db)
        .await?
        .map(|e| e.seq)
        .unwrap_or(0))
}

async fn events_page(State(c): State<Console>, who: Who, Query(q): Query<EventQuery>) -> Response {
    let ctx = c.ctx(&who);
    let mut filter = match q.parse(None) {
        Ok(f) => f,
        Err(e) => return bad_filter(&ctx, &e),
    };
    let db = &c.inner.api.db;
    let newest = match newest_seq(db).await {
        Ok(n) => n,
        Err(e) => return failure(&ctx, &e),
    };
    // The matching events among the newest thousand, the last page of them.
    filter.after_seq = Some((newest - 1000).max(0));
    filter.limit = 1000;
    let mut rows = match workflow::list_events(db, &filter).await {
        Ok(rows) => rows,
        Err(e) => return failure(&ctx, &e),
    };
    let keep = filters::PAGE_ROWS as usize;
    if rows.len() > keep {
        rows.drain(..rows.len() - keep);
    }
    page(StatusCode::OK, views::events(&ctx, &q, &rows, newest))
}

/// `GET /console/events/stream`: Server-Sent Events, one `event` per row
/// (`id` = seq, so a reconnecting browser resumes by `Last-Event-ID`),
/// until shutdown or until the session's token is revoked.
async fn event_stream(
    State(c): State<Console>,
    who: Who,
    headers: HeaderMap,
    Query(q): Query<EventQuery>,
) -> Response {
    let ctx = c.ctx(&who);
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let mut filter = match q.parse(last) {
        Ok(f) => f,
        Err(e) => return bad_filter(&ctx, &e),
    };
    if filter.after_seq.is_none() {
        filter.after_seq = match newest_seq(&c.inner.api.db).await {
            Ok(n) => Some(n),
            Err(e) => return failure(&ctx, &e),
        };
    }
    let state = (c.clone(), who.session.token_hash, filter);
    let stream = futures::stream::unfold(state, |(c, hash, mut filter)| async move {
        let api = &c.inner.api;
        loop {
            if api.shutdown.is_cancelled() {
                return None;
            }
            let revoked = if hash == OPEN_HASH {
                !api.auth.is_open()
            } else {
                api.auth.authenticate_hash(&hash, Utc::now()).is_err()
            };
            if revoked {
                return None;
            }
            match workflow::list_events(&api.db, &filter).await {
                Ok(rows) if !rows.is_empty() => {
                    filter.after_seq = rows.last().map(|e| e.seq);
                    let events: Vec<Result<Event, Infallible>> = rows
                        .iter()
                        .map(|e| {
                            Ok(Event::default()
                                .event("event")
                                .id(e.seq.to_string())
                                .data(workflow::events::event_json(e).to_string()))
                        })
                        .collect();
                    return Some((futures::stream::iter(events), (c, hash, filter)));
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "console: live tail cannot read events"),
            }
            tokio::select! {
                _ = api.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(TAIL_POLL) => {}
            }
        }
    })
    .flatten();
    with_headers(
        Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response(),
    )
}

async fn policies(State(c): State<Console>, who: Who) -> Response {
    let ctx = c.ctx(&who);
    match workflow::list_policies(&c.inner.api.db, None, None, 1000).await {
        Ok(rows) => page(StatusCode::OK, views::policies(&ctx, &rows)),
        Err(e) => failure(&ctx, &e),
    }
}

/// The policy page, with the editor holding `form`'s value and its error.
async fn policy_view(
    c: &Console,
    ctx: &Ctx,
    key: &str,
    status: StatusCode,
    form: &views::PolicyForm<'_>,
) -> Response {
    let db = &c.inner.api.db;
    let row = match workflow::get_policy(db, key).await {
        Ok(row) => row,
        Err(e) => return failure(ctx, &e),
    };
    match workflow::policy_history(db, key, 50).await {
        Ok(history) => page(status, views::policy(ctx, &row, &history, form)),
        Err(e) => failure(ctx, &e),
    }
}

async fn policy_page(State(c): State<Console>, who: Who, Path(key): Path<String>) -> Response {
    let ctx = c.ctx(&who);
    policy_view(&c, &ctx, &key, StatusCode::OK, &Default::default()).await
}

/// A policy edit as submitted: the value (validated as `SetPolicy`
/// validates it), the version the page was loaded at and the reason.
struct PolicyEdit {
    value: serde_json::Value,
    version: i64,
    reason: Option<String>,
}

fn parse_edit(
    api: &Api,
    key: &str,
    form: &ActionForm,
) -> Result<PolicyEdit, opsloop_core::domain::ValidationError> {
    use opsloop_core::domain::ValidationError;
    let version = form
        .version
        .as_deref()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .ok_or_else(|| ValidationError::new("version", "missing; reload the page"))?;
    let raw = form.value.as_deref().unwrap_or("");
    if raw.trim().is_empty() {
        return Err(ValidationError::new("value", "must not be empty"));
    }
    let value = JsonDocument::parse("value", raw, &api.limits)?.into_value();
    let parsed_key = PolicyKey::parse(key)?;
    PolicyValue::parse(&parsed_key, &value)?;
    let reason = bounded("reason", form.reason.as_deref().unwrap_or("").trim(), 1000)?;
    Ok(PolicyEdit {
        value,
        version,
        reason: (!reason.is_empty()).then_some(reason),
    })
}

async fn policy_preview(
    State(c): State<Console>,
    who: Who,
    Path(key): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let ctx = c.ctx(&who);
    if let Err(refused) = c.check_csrf(&who, &form).await {
        return *refused;
    }
    let api = &c.inner.api;
    let row = match workflow::get_policy(&api.db, &key).await {
        Ok(row) => row,
        Err(e) => return failure(&ctx, &e),
    };
    let edit = match parse_edit(api, &key, &form) {
        Ok(edit) => edit,
        Err(e) => {
            let form = views::PolicyForm {
                value: form.value.as_deref(),
                reason: form.reason.as_deref(),
                error: Some(e.to_string()),
            };
            return policy_view(&c, &ctx, &key, StatusCode::BAD_REQUEST, &form).await;
        }
    };
    if edit.version != row.version {
        return stale(&c, &ctx, &key, edit.version, &form).await;
    }
    page(
        StatusCode::OK,
        views::policy_preview(
            &ctx,
            &row,
            &edit.value,
            edit.reason.as_deref().unwrap_or(""),
        ),
    )
}

/// The page refusing a form loaded at `version` (409), with the current
/// value shown.
async fn stale(c: &Console, ctx: &Ctx, key: &str, version: i64, form: &ActionForm) -> Response {
    let form = views::PolicyForm {
        value: form.value.as_deref(),
        reason: form.reason.as_deref(),
        error: Some(format!(
            "Not saved: policy {key} changed since the page was loaded at version {version}. \
             Its current value is shown below; edit it again."
        )),
    };
    policy_view(c, ctx, key, StatusCode::CONFLICT, &form).await
}

async fn policy_save(
    State(c): State<Console>,
    who: Who,
    Path(key): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let ctx = c.ctx(&who);
    if let Err(refused) = c.check_csrf(&who, &form).await {
        return *refused;
    }
    let api = &c.inner.api;
    let edit = match parse_edit(api, &key, &form) {
        Ok(edit) => edit,
        Err(e) => {
            let form = views::PolicyForm {
                value: form.value.as_deref(),
                reason: form.reason.as_deref(),
                error: Some(e.to_string()),
            };
            return policy_view(&c, &ctx, &key, StatusCode::BAD_REQUEST, &form).await;
        }
    };
    let change = PolicyChange {
        key: &key,
        value: edit.value,
        actor: &who.principal.name,
        reason: edit.reason.as_deref(),
        expected_version: Some(edit.version),
    };
    match workflow::set_policy(&api.db, change, api.audit(), c.now()).await {
        Ok(_) => redirect(&format!("/console/policy/{}?done=saved", encode(&key))),
        Err(WorkflowError::Conflict(_)) => stale(&c, &ctx, &key, edit.version, &form).await,
        Err(e) => failure(&ctx, &e),
    }
}

async fn emergency_stop(
    State(c): State<Console>,
    who: Who,
    Form(form): Form<ActionForm>,
) -> Response {
    let ctx = c.ctx(&who);
    if let Err(refused) = c.check_csrf(&who, &form).await {
        return *refused;
    }
    let engage = match form.engage.as_deref() {
        Some("true") => true,
        Some("false") => false,
        _ => {
            return invalid(
                &ctx,
                opsloop_core::domain::ValidationError::new("engage", "give true or false"),
            );
        }
    };
    let reason = match text("reason", form.reason.as_deref().unwrap_or(""), 1000) {
        Ok(r) => r,
        Err(e) => return invalid(&ctx, e),
    };
    let api = &c.inner.api;
    let actor = &who.principal.name;
    let outcome = if engage {
        workflow::engage_emergency_stop(&api.db, actor, &reason, api.audit(), c.now()).await
    } else {
        workflow::release_emergency_stop(&api.db, actor, &reason, api.audit(), c.now()).await
    };
    match outcome {
        Ok(_) => redirect(if engage {
            "/console?done=stop-engaged"
        } else {
            "/console?done=stop-released"
        }),
        Err(e) => failure(&ctx, &e),
    }
}

/// The newest backup runs, from the `backups` table the backup-agent
/// writes (read-only, as the status page reads incidents).
async fn recent_backups(
    db: &sea_orm::DatabaseConnection,
    limit: u64,
) -> Result<Vec<opsloop_core::store::entities::backups::Model>, WorkflowError> {
    use opsloop_core::store::entities::backups;
    use sea_orm::{EntityTrait, QueryOrder, QuerySelect};
    Ok(backups::Entity::find()
        .order_by_desc(backups::Column::StartedAt)
        .order_by_desc(backups::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

async fn backups_page(State(c): State<Console>, who: Who) -> Response {
    let ctx = c.ctx(&who);
    match recent_backups(&c.inner.api.db, filters::PAGE_ROWS).await {
        Ok(rows) => page(StatusCode::OK, views::backups(&ctx, &rows)),
        Err(e) => failure(&ctx, &e),
    }
}

async fn triggers(State(c): State<Console>, who: Who) -> Response {
    let ctx = c.ctx(&who);
    match workflow::triggers::list_triggers(&c.inner.api.db, None, None, 1000).await {
        Ok(rows) => page(StatusCode::OK, views::triggers(&ctx, &rows)),
        Err(e) => failure(&ctx, &e),
    }
}

async fn trigger_enabled(State(c): State<Console>, Act { who, ctx, id, form }: Act) -> Response {
    let enabled = match form.enabled.as_deref() {
        Some("true") => true,
        Some("false") => false,
        _ => {
            return invalid(
                &ctx,
                opsloop_core::domain::ValidationError::new("enabled", "give true or false"),
            );
        }
    };
    let expected_version = form
        .version
        .as_deref()
        .and_then(|v| v.trim().parse::<i64>().ok());
    let update = workflow::triggers::TriggerUpdate {
        enabled: Some(enabled),
        expected_version,
        ..Default::default()
    };
    let api = &c.inner.api;
    match workflow::triggers::update_trigger(
        &api.db,
        id,
        update,
        &who.principal.name,
        api.audit(),
        c.now(),
    )
    .await
    {
        Ok(_) => redirect(if enabled {
            "/console/triggers?done=enabled"
        } else {
            "/console/triggers?done=disabled"
        }),
        Err(e) => failure(&ctx, &e),
    }
}

fn alerter_failure(ctx: &Ctx, error: &alerts::AlerterError) -> Response {
    use alerts::AlerterError as E;
    let status = match error {
        E::NotConfigured | E::Unreachable(..) => StatusCode::SERVICE_UNAVAILABLE,
        E::NotFound(_) => StatusCode::NOT_FOUND,
        E::Refused(_) => StatusCode::BAD_GATEWAY,
    };
    page(
        status,
        views::error(Some(ctx), "Alerter", &error.to_string()),
    )
}

/// Appends the console's record of an action it made at another daemon
/// (which audits it under the console's token) under the session's token
/// name.
fn audit_peer(api: &Api, record: opsloop_core::audit::AuditRecord) {
    if let Some(audit) = api.audit()
        && let Err(error) = audit.append(&record)
    {
        tracing::warn!(%error, action = %record.action, "console: cannot write the audit line");
    }
}

async fn alerts_page(State(c): State<Console>, who: Who) -> Response {
    let ctx = c.ctx(&who);
    let alerter = &c.inner.alerter;
    let (alerts, silences) = tokio::join!(alerter.alerts(), alerter.silences());
    match (alerts, silences) {
        (Ok(alerts), Ok(silences)) => page(StatusCode::OK, views::alerts(&ctx, &alerts, &silences)),
        (Err(e), _) | (_, Err(e)) => alerter_failure(&ctx, &e),
    }
}

async fn silence(
    State(c): State<Console>,
    who: Who,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let ctx = c.ctx(&who);
    let form = ActionForm {
        csrf: fields
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.clone()),
        ..Default::default()
    };
    if let Err(refused) = c.check_csrf(&who, &form).await {
        return *refused;
    }
    let request = match alerts::silence_request(&fields) {
        Ok(r) => r,
        Err(e) => return invalid(&ctx, e),
    };
    let now = c.now();
    let body = alerts::silence_body(&request, &who.principal.name, now);
    match c.inner.alerter.create_silence(&body).await {
        Ok(id) => {
            audit_peer(
                &c.inner.api,
                opsloop_core::audit::AuditRecord {
                    at: now,
                    actor: who.principal.name.clone(),
                    action: "silence.create".into(),
                    subject: format!("silence/{id}"),
                    reason: Some(request.comment.clone()),
                    before: None,
                    after: Some(body),
                },
            );
            redirect("/console/alerts?done=silenced")
        }
        Err(e) => alerter_failure(&ctx, &e),
    }
}

async fn expire_silence(State(c): State<Console>, Act { who, ctx, id, .. }: Act) -> Response {
    match c.inner.alerter.expire_silence(&id.to_string()).await {
        Ok(()) => {
            audit_peer(
                &c.inner.api,
                opsloop_core::audit::AuditRecord {
                    at: c.now(),
                    actor: who.principal.name.clone(),
                    action: "silence.expire".into(),
                    subject: format!("silence/{id}"),
                    reason: None,
                    before: None,
                    after: None,
                },
            );
            redirect("/console/alerts?done=expired")
        }
        Err(e) => alerter_failure(&ctx, &e),
    }
}

// ---- backups -------------------------------------------------------------

async fn backup_preview(
    db: &sea_orm::DatabaseConnection,
    id: Uuid,
) -> Result<Option<backups::RestorePreview>, WorkflowError> {
    use opsloop_core::store::entities::backups as rows;
    use sea_orm::EntityTrait;
    let Some(row) = rows::Entity::find_by_id(id).one(db).await? else {
        return Ok(None);
    };
    let now = backups::live_rows(db).await?;
    Ok(Some(backups::preview(row, now.as_ref())))
}

async fn backup_page(State(c): State<Console>, Record { ctx, id, .. }: Record) -> Response {
    match backup_preview(&c.inner.api.db, id).await {
        Ok(Some(preview)) => page(StatusCode::OK, views::backup(&ctx, &preview, None)),
        Ok(None) => not_found(&ctx, "backup", &id.to_string()),
        Err(e) => failure(&ctx, &e),
    }
}

/// Verifies a backup at the backup-agent now and shows the outcome, stage
/// by stage, on the backup's page.
async fn verify_backup(State(c): State<Console>, Act { who, ctx, id, .. }: Act) -> Response {
    let outcome = match c.inner.backups.verify(&id.to_string()).await {
        Ok(outcome) => outcome,
        Err(e) => return peer_failure(&ctx, &e),
    };
    audit_peer(
        &c.inner.api,
        opsloop_core::audit::AuditRecord {
            at: c.now(),
            actor: who.principal.name.clone(),
            action: "backup.verify".into(),
            subject: format!("backup/{id}"),
            reason: None,
            before: None,
            after: Some(serde_json::json!({
                "passed": outcome.passed,
                "duration_ms": outcome.duration_ms,
                "error": outcome.error,
            })),
        },
    );
    match backup_preview(&c.inner.api.db, id).await {
        Ok(Some(preview)) => page(
            StatusCode::OK,
            views::backup(&ctx, &preview, Some(&outcome)),
        ),
        Ok(None) => not_found(&ctx, "backup", &id.to_string()),
        Err(e) => failure(&ctx, &e),
    }
}

// ---- incidents ----------------------------------------------------------

fn peer_failure(ctx: &Ctx, error: &peer::PeerCallError) -> Response {
    use peer::PeerCallError as E;
    let (status, title) = match error {
        E::NotConfigured { daemon, .. } | E::Unavailable { daemon, .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, *daemon)
        }
        E::NotFound(_) => (StatusCode::NOT_FOUND, "Not found"),
        E::Invalid(_) => (StatusCode::BAD_REQUEST, "Invalid input"),
        E::NotPossible(_) => (StatusCode::CONFLICT, "Not possible now"),
        E::Refused { daemon, .. } => (StatusCode::BAD_GATEWAY, *daemon),
    };
    if status.is_server_error() {
        tracing::warn!(%error, "console: call to another daemon failed");
    }
    page(status, views::error(Some(ctx), title, &error.to_string()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IncidentQuery {
    open: Option<String>,
}

async fn incidents_page(
    State(c): State<Console>,
    who: Who,
    Query(q): Query<IncidentQuery>,
) -> Response {
    let ctx = c.ctx(&who);
    let open_only = matches!(q.open.as_deref(), Some("1" | "true"));
    match c.inner.incidents.list(open_only).await {
        Ok(rows) => page(StatusCode::OK, views::incidents(&ctx, &rows, open_only)),
        Err(e) => peer_failure(&ctx, &e),
    }
}

async fn incident_page(State(c): State<Console>, Record { ctx, id, .. }: Record) -> Response {
    match c.inner.incidents.get(&id.to_string()).await {
        Ok(detail) => page(StatusCode::OK, views::incident(&ctx, &detail)),
        Err(e) => peer_failure(&ctx, &e),
    }
}

async fn postmortem_page(State(c): State<Console>, Record { who, ctx, id }: Record) -> Response {
    match c
        .inner
        .incidents
        .postmortem(&id.to_string(), &who.principal.name)
        .await
    {
        Ok(markdown) => page(
            StatusCode::OK,
            views::postmortem(&ctx, &id.to_string(), &markdown),
        ),
        Err(e) => peer_failure(&ctx, &e),
    }
}

async fn acknowledge_incident(c: State<Console>, act: Act) -> Response {
    incident_action(c, act, incidents::IncidentAction::Acknowledge).await
}

async fn resolve_incident(c: State<Console>, act: Act) -> Response {
    incident_action(c, act, incidents::IncidentAction::Resolve).await
}

async fn note_incident(c: State<Console>, act: Act) -> Response {
    incident_action(c, act, incidents::IncidentAction::Note).await
}

/// Acknowledges, resolves or notes an incident at the alerter as the
/// signed-in person, and audits it here under their name.
async fn incident_action(
    State(c): State<Console>,
    Act { who, ctx, id, form }: Act,
    action: incidents::IncidentAction,
) -> Response {
    let raw_text = match action {
        incidents::IncidentAction::Note => form.comment.as_deref(),
        _ => form.reason.as_deref(),
    };
    let text = match action.text(raw_text) {
        Ok(text) => text,
        Err(e) => return invalid(&ctx, e),
    };
    match c
        .inner
        .incidents
        .act(&id.to_string(), action, &who.principal.name, &text)
        .await
    {
        Ok(()) => {
            let (audit_action, done) = action.names();
            audit_peer(
                &c.inner.api,
                opsloop_core::audit::AuditRecord {
                    at: c.now(),
                    actor: who.principal.name.clone(),
                    action: audit_action.into(),
                    subject: format!("incident/{id}"),
                    reason: (!text.is_empty()).then_some(text),
                    before: None,
                    after: None,
                },
            );
            redirect(&format!("/console/incidents/{id}?done={done}"))
        }
        Err(e) => peer_failure(&ctx, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_a_console_path_only() {
        assert_eq!(
            safe_next(Some("/console/missions?status=running")),
            "/console/missions?status=running"
        );
        assert_eq!(safe_next(Some("/console")), "/console");
        for bad in [
            "https://evil.example/",
            "//evil.example/console",
            "/console//evil",
            "/consolex",
            "/status",
            "/console/\\evil",
        ] {
            assert_eq!(safe_next(Some(bad)), "/console", "{bad}");
        }
        assert_eq!(safe_next(None), "/console");
    }

    #[test]
    fn encoding() {
        assert_eq!(encode("/console/x?a=b&c"), "/console/x%3Fa%3Db%26c");
        assert_eq!(encode("cost_budget"), "cost_budget");
    }

    #[test]
    fn pages_carry_the_security_headers() {
        let response = page(StatusCode::OK, views::error(None, "t", "m"));
        let h = response.headers();
        assert!(
            h[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap_or("")
                .contains("script-src 'self'")
        );
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let r = redirect("/console");
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[header::LOCATION], "/console");
    }

    #[test]
    fn workflow_errors_become_pages() {
        let ctx = Ctx {
            name: "a".into(),
            role: "admin".into(),
            can_act: true,
            csrf: String::new(),
            done: None,
        };
        let cases = [
            (
                WorkflowError::NotFound {
                    entity: "mission",
                    id: "x".into(),
                },
                StatusCode::NOT_FOUND,
            ),
            (
                WorkflowError::Invalid(opsloop_core::domain::ValidationError::new(
                    "reason", "empty",
                )),
                StatusCode::BAD_REQUEST,
            ),
            (WorkflowError::Conflict("c".into()), StatusCode::CONFLICT),
            (
                WorkflowError::Corrupt("c".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(failure(&ctx, &error).status(), status, "{error}");
        }
        assert_eq!(
            not_found(&ctx, "mission", "x").status(),
            StatusCode::NOT_FOUND
        );
        assert!(id(&ctx, "mission", "not-a-uuid").is_err());
        assert!(id(&ctx, "mission", &Uuid::nil().to_string()).is_ok());
    }

    /// The console alone (no bearer guard) on SQLite, as `opsloop dev`
    /// runs it: sign-in, every page, and the actions through the workflow.
    #[tokio::test]
    async fn handlers_on_sqlite() {
        use opsloop_core::domain::input::{Limits, NewProposal, ProposalSource, StepSpec};
        let db = opsloop_core::store::testing::fresh_sqlite().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let secrets = opsloop_core::secrets::SecretStore::with_sources(
            None,
            dir.path(),
            vec![("OPSLOOP_ADMIN_TOKEN".to_owned(), "unit-admin".to_owned())],
        );
        let auth =
            opsloop_core::auth::Auth::from_secrets(&secrets, Some(db.db.clone())).expect("auth");
        let api = Api {
            db: db.db.clone(),
            auth,
            audit: None,
            limits: Limits::DEFAULT,
            clock: opsloop_core::clock::SystemClock::shared(),
            policy: workflow::PolicyCache::new(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            steps: workflow::notify::StepNotifier::new(),
        };
        let limits = Limits::DEFAULT;
        let proposal = NewProposal {
            title: "unit proposal".into(),
            source: ProposalSource::Api,
            agent: "unit".into(),
            dedupe_key: None,
            steps: vec![StepSpec::parse(0, "publish", "{}", None, &limits).expect("step")],
            parallel: false,
            metadata: serde_json::json!({}),
            trace_id: None,
        };
        let pending = workflow::submit_proposal(&api.db, proposal, Utc::now())
            .await
            .expect("submit")
            .proposal;
        assert_eq!(pending.proposal.status, "pending");
        let shutdown = api.shutdown.clone();
        let router = Console::new(api, None, Some("unit key"), false).router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, router).await });
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");

        let denied = http
            .post(format!("{base}/console/login"))
            .form(&[("token", "wrong")])
            .send()
            .await
            .expect("login");
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
        let login = http
            .post(format!("{base}/console/login"))
            .form(&[("token", "unit-admin"), ("next", "/console/proposals")])
            .send()
            .await
            .expect("login");
        assert_eq!(login.status(), StatusCode::SEE_OTHER);
        assert_eq!(login.headers()[header::LOCATION], "/console/proposals");
        let cookie = login.headers()[header::SET_COOKIE]
            .to_str()
            .expect("ascii")
            .split(';')
            .next()
            .expect("pair")
            .to_owned();
        let get = |path: String| {
            let request = http
                .get(format!("{base}{path}"))
                .header(header::COOKIE, cookie.clone());
            async move {
                let response = request.send().await.expect("GET");
                let status = response.status();
                (status, response.text().await.expect("body"))
            }
        };
        let post = |path: String, form: Vec<(&'static str, String)>| {
            let request = http
                .post(format!("{base}{path}"))
                .header(header::COOKIE, cookie.clone())
                .form(&form);
            async move {
                let response = request.send().await.expect("POST");
                let status = response.status();
                (status, response.text().await.expect("body"))
            }
        };
        let csrf_of = |body: &str| {
            let marker = "name=\"csrf\" value=\"";
            let start = body.find(marker).expect("csrf") + marker.len();
            body[start..start + body[start..].find('"').expect("end")].to_owned()
        };
        let id = pending.proposal.id;
        for path in [
            "/console".to_owned(),
            "/console/login".to_owned(),
            "/console/proposals?kind=publish".to_owned(),
            format!("/console/proposals/{id}"),
            "/console/missions".to_owned(),
            "/console/dead-letters".to_owned(),
            "/console/events".to_owned(),
            "/console/policy".to_owned(),
            "/console/policy/ops_health".to_owned(),
            "/console/triggers".to_owned(),
            "/console/backups".to_owned(),
            "/console/console.js".to_owned(),
        ] {
            assert_eq!(get(path.clone()).await.0, StatusCode::OK, "{path}");
        }
        assert_eq!(
            get("/console/alerts".into()).await.0,
            StatusCode::SERVICE_UNAVAILABLE,
            "no alerter configured"
        );
        assert_eq!(
            get("/console/proposals?after=x".into()).await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            get(format!("/console/missions/{}", Uuid::nil())).await.0,
            StatusCode::NOT_FOUND
        );
        let (_, page) = get(format!("/console/proposals/{id}")).await;
        let (status, body) = post(
            format!("/console/proposals/{id}/approve"),
            vec![("csrf", csrf_of(&page)), ("comment", "ok".into())],
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
        let view = workflow::get_proposal(&db.db, id).await.expect("proposal");
        assert_eq!(view.proposal.status, "approved");
        assert_eq!(view.proposal.decided_by.as_deref(), Some("bootstrap-admin"));
        let mission = view.mission_id.expect("mission");
        let (status, page) = get(format!("/console/missions/{mission}")).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = post(
            format!("/console/missions/{mission}/cancel"),
            vec![("csrf", csrf_of(&page)), ("reason", "unit".into())],
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let (_, page) = get("/console".into()).await;
        let (status, _) = post(
            "/console/emergency-stop".into(),
            vec![
                ("csrf", csrf_of(&page)),
                ("engage", "true".into()),
                ("reason", "unit".into()),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert!(get("/console".into()).await.1.contains("ENGAGED"));
        let (_, page) = get("/console/policy/ops_health".into()).await;
        let current = workflow::get_policy(&db.db, "ops_health")
            .await
            .expect("policy");
        let value = serde_json::json!({"failure_threshold": 7, "window_seconds": 3600, "cooldown_seconds": 3600});
        let form = |csrf: String| {
            vec![
                ("csrf", csrf),
                ("version", current.version.to_string()),
                ("value", value.to_string()),
                ("reason", "unit".into()),
            ]
        };
        let (status, preview) = post(
            "/console/policy/ops_health/preview".into(),
            form(csrf_of(&page)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{preview}");
        let (status, _) = post("/console/policy/ops_health".into(), form(csrf_of(&preview))).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let (_, page) = get("/console/policy/ops_health".into()).await;
        let (status, _) = post("/console/policy/ops_health".into(), form(csrf_of(&page))).await;
        assert_eq!(status, StatusCode::CONFLICT, "stale version");
        let (_, page) = get("/console".into()).await;
        let (status, _) = post("/console/logout".into(), vec![("csrf", csrf_of(&page))]).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(
            get("/console".into()).await.0,
            StatusCode::SEE_OTHER,
            "signed out"
        );
        shutdown.cancel();
        db.cleanup().await;
    }
}
