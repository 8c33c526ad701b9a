//! The status page the api serves on its HTTP port: `/status` (HTML),
//! `/status.json`, `/status/feed.atom` (open and recent incidents) and
//! `/status/badge/{component}.svg`. Public by the access table; with
//! `[api.status] require_viewer = true` they ask for a token with the
//! `viewer` role (or `admin`), bearer or HTTP basic.
//!
//! Components: the api itself, the other three daemons by their `/readyz`
//! (URLs from `[api.status]`, else their own sections' `http_addr`), the
//! database and the bus by the api's own readiness checks, and every probe
//! by `probe_state`. Every `refresh_secs` the api checks its components,
//! records one sample per component and minute in `probe_history` (as
//! `opsloop:<component>`, see [`queries`]) and rebuilds the snapshot the
//! handlers serve; the heartbeat leader rolls the history up per day
//! (`probe_daily`), which gives the 90 daily bars and the uptime ratios.

pub mod model;
pub mod queries;
pub mod render;

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use opsloop_core::access::{Access, Role};
use opsloop_core::auth::Auth;
use opsloop_core::http::Readiness;
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::services::Clock;
use model::{Component, ComponentState, Group, Maintenance, Overall, Snapshot};

/// The gauge of uptime ratios, labelled `probe` (a probe's name or
/// `opsloop:<component>`) and `window` (`1d`, `7d`, `30d`, `90d`).
pub const UPTIME_RATIO: &str = "opsloop_probe_uptime_ratio";

/// The `[api.status]` config section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StatusSettings {
    /// Ask for a token with the `viewer` role (or `admin`) on `/status`,
    /// `/status.json`, the feed and the badges; public when false.
    pub require_viewer: bool,
    /// The page's heading and the feed's title.
    pub title: String,
    /// Seconds between two checks of the components (each also recorded
    /// as the minute's sample in `probe_history`).
    pub refresh_secs: u64,
    /// Base URL of the heartbeat-worker's HTTP port, whose `/readyz` is
    /// checked; unset: `http://` + `heartbeat.http_addr`; empty: not listed.
    pub heartbeat_url: Option<String>,
    /// Base URL of the alerter's HTTP port; unset: from `alerter.http_addr`.
    pub alerter_url: Option<String>,
    /// Base URL of the backup-agent's HTTP port; unset: from `backup.http_addr`.
    pub backup_url: Option<String>,
}

impl Default for StatusSettings {
    fn default() -> Self {
        Self {
            require_viewer: false,
            title: "opsloop status".into(),
            refresh_secs: 30,
            heartbeat_url: None,
            alerter_url: None,
            backup_url: None,
        }
    }
}

/// Another daemon the page lists, checked by its `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: &'static str,
    pub name: &'static str,
    /// Base URL (`http://host:port`); `None`: its address is unknown.
    pub url: Option<String>,
}

/// The daemons besides the api: id, display name, config section and its
/// default `http_addr`.
pub const PEERS: [(&str, &str, &str, &str); 3] = [
    (
        "heartbeat-worker",
        "Heartbeat worker",
        "heartbeat",
        "127.0.0.1:9755",
    ),
    ("alerter", "Alerter", "alerter", "127.0.0.1:9756"),
    ("backup-agent", "Backup agent", "backup", "127.0.0.1:9757"),
];

/// The base URL for a peer: `configured` when set (`""`: not listed), else
/// `http://` + its listen address with a wildcard host as loopback
/// (unknown when it binds port 0).
pub fn peer_url(configured: Option<&str>, http_addr: &str) -> PeerUrl {
    match configured.map(str::trim) {
        Some("") => PeerUrl::NotListed,
        Some(url) => PeerUrl::At(Some(url.trim_end_matches('/').to_owned())),
        None => PeerUrl::At(crate::console::peer::url_of("http", http_addr)),
    }
}

/// Where the page checks a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerUrl {
    /// Left off the page (`""` configured).
    NotListed,
    /// Listed; `None`: its address is unknown.
    At(Option<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SectionPeek {
    http_addr: Option<String>,
    maintenance: Vec<MaintenancePeek>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MaintenancePeek {
    start: String,
    end: String,
    probes: Vec<String>,
    reason: String,
}

/// The peers and the maintenance windows as the shared config file gives
/// them (the heartbeat-worker validates the windows; a window the api
/// cannot read is skipped with a warning).
pub fn from_config(
    config: &opsloop_core::config::LoadedConfig,
    settings: &StatusSettings,
) -> (Vec<Peer>, Vec<Maintenance>) {
    let mut peers = Vec::new();
    let mut maintenance = Vec::new();
    for (id, name, section, default_addr) in PEERS {
        let peek: SectionPeek = config.section(section).unwrap_or_default();
        if section == "heartbeat" {
            for (i, m) in peek.maintenance.iter().enumerate() {
                let parse =
                    |v: &str| DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc));
                match (parse(&m.start), parse(&m.end)) {
                    (Ok(start), Ok(end)) => maintenance.push(Maintenance {
                        start,
                        end,
                        reason: m.reason.clone(),
                        probes: m.probes.clone(),
                    }),
                    _ => tracing::warn!(
                        window = i,
                        "heartbeat.maintenance window with unreadable times: not on the status page"
                    ),
                }
            }
        }
        let configured = match id {
            "heartbeat-worker" => settings.heartbeat_url.as_deref(),
            "alerter" => settings.alerter_url.as_deref(),
            _ => settings.backup_url.as_deref(),
        };
        let addr = peek.http_addr.unwrap_or_else(|| default_addr.to_owned());
        if let PeerUrl::At(url) = peer_url(configured, &addr) {
            peers.push(Peer { id, name, url });
        }
    }
    maintenance.sort_by_key(|m| m.start);
    (peers, maintenance)
}

struct Inner {
    db: DatabaseConnection,
    clock: Clock,
    readiness: Readiness,
    auth: Auth,
    settings: StatusSettings,
    peers: Vec<Peer>,
    maintenance: Vec<Maintenance>,
    http: reqwest::Client,
    snapshot: tokio::sync::Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

/// The status page of one api: cheap to clone.
#[derive(Clone)]
pub struct StatusPage {
    inner: Arc<Inner>,
}

/// A live check's outcome: state, why when not operational, latency (ms).
type Check = (ComponentState, Option<String>, i64);

/// The longest a snapshot with an unhealthy own component is served.
const RECHECK_UNHEALTHY: StdDuration = StdDuration::from_secs(2);

/// How long a peer's `/readyz` may take.
const PEER_TIMEOUT: StdDuration = StdDuration::from_secs(2);

impl StatusPage {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: DatabaseConnection,
        clock: Clock,
        readiness: Readiness,
        auth: Auth,
        settings: StatusSettings,
        peers: Vec<Peer>,
        maintenance: Vec<Maintenance>,
        ca_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(PEER_TIMEOUT)
            .user_agent("opsloop-status");
        if ca_file.is_some() {
            builder = builder.use_preconfigured_tls(opsloop_core::tls::client_config(ca_file)?);
        }
        let http = builder
            .build()
            .map_err(|e| anyhow::anyhow!("api.status: cannot build the HTTP client: {e}"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                clock,
                readiness,
                auth,
                settings,
                peers,
                maintenance,
                http,
                snapshot: tokio::sync::Mutex::new(None),
            }),
        })
    }

    fn refresh_every(&self) -> StdDuration {
        StdDuration::from_secs(self.inner.settings.refresh_secs.max(1))
    }

    /// How long `snapshot` is served: `refresh_secs`, or at most
    /// [`RECHECK_UNHEALTHY`] while one of opsloop's own components is not
    /// operational (so a recovery shows soon after start or an outage).
    fn max_age(&self, snapshot: &Snapshot) -> StdDuration {
        let healthy = snapshot
            .components
            .iter()
            .filter(|c| c.group == Group::Opsloop)
            .all(|c| c.state == ComponentState::Operational);
        if healthy {
            self.refresh_every()
        } else {
            self.refresh_every().min(RECHECK_UNHEALTHY)
        }
    }

    /// The snapshot, rebuilt when older than its `max_age`.
    pub async fn current(&self) -> Arc<Snapshot> {
        let mut slot = self.inner.snapshot.lock().await;
        if let Some((at, snapshot)) = &*slot
            && at.elapsed() < self.max_age(snapshot)
        {
            return snapshot.clone();
        }
        let snapshot = Arc::new(self.build().await);
        *slot = Some((Instant::now(), snapshot.clone()));
        snapshot
    }

    /// Rebuilds the snapshot every `refresh_secs` (so every component is
    /// sampled each minute whether or not anyone looks) until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            {
                let snapshot = Arc::new(self.build().await);
                *self.inner.snapshot.lock().await = Some((Instant::now(), snapshot));
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.refresh_every()) => {}
            }
        }
    }

    async fn check_peer(&self, peer: &Peer) -> Check {
        let Some(url) = &peer.url else {
            return (
                ComponentState::Unknown,
                Some("its HTTP address is not known to the api (set api.status URLs)".into()),
                0,
            );
        };
        let started = Instant::now();
        let outcome = self.inner.http.get(format!("{url}/readyz")).send().await;
        let latency = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        match outcome {
            Ok(response) if response.status().is_success() => {
                (ComponentState::Operational, None, latency)
            }
            Ok(response) => (
                ComponentState::Down,
                Some(format!("/readyz answered {}", response.status())),
                latency,
            ),
            Err(error) => (
                ComponentState::Down,
                Some(format!(
                    "/readyz not reachable: {}",
                    if error.is_timeout() {
                        "no answer in time".to_owned()
                    } else {
                        "connection failed".to_owned()
                    }
                )),
                latency,
            ),
        }
    }

    /// Checks the components, records their samples and reads the rest.
    async fn build(&self) -> Snapshot {
        let inner = &self.inner;
        let now = inner.clock.now();
        let (_, ready) = inner.readiness.evaluate().await;
        let check = |name: &str| -> Check {
            let entry = &ready["checks"][name];
            let latency = entry["latency_ms"].as_f64().unwrap_or(0.0) as i64;
            match entry["status"].as_str() {
                Some("ok") => (ComponentState::Operational, None, latency),
                Some(_) => (
                    ComponentState::Down,
                    entry["error"].as_str().map(str::to_owned),
                    latency,
                ),
                None => (ComponentState::Unknown, None, 0),
            }
        };
        let mut live: Vec<(&str, &str, Check)> =
            vec![("api", "API", (ComponentState::Operational, None, 0))];
        // Checked together: one slow peer's timeout does not add up.
        let peers =
            futures::future::join_all(inner.peers.iter().map(|peer| self.check_peer(peer))).await;
        for (peer, outcome) in inner.peers.iter().zip(peers) {
            live.push((peer.id, peer.name, outcome));
        }
        live.push(("database", "Database", check("database")));
        live.push(("bus", "Message bus", check("broker")));

        let samples: Vec<(String, bool, i64)> = live
            .iter()
            .filter(|(_, _, (state, _, _))| *state != ComponentState::Unknown)
            .map(|(id, _, (state, _, latency))| {
                (
                    queries::sample_name(id),
                    *state == ComponentState::Operational,
                    *latency,
                )
            })
            .collect();
        if let Err(error) = queries::record_samples(&inner.db, now, &samples).await {
            tracing::warn!(%error, "status page: cannot record the components' samples");
        }
        let warn = |what: &str, error: &sea_orm::DbErr| {
            tracing::warn!(%error, what, "status page: cannot read from the database");
        };
        let probes = queries::probe_states(&inner.db)
            .await
            .inspect_err(|e| warn("probe_state", e))
            .unwrap_or_default();
        let days = queries::day_counts(&inner.db, now)
            .await
            .inspect_err(|e| warn("probe history", e))
            .unwrap_or_default();
        let last_24h = queries::last_24h(&inner.db, now)
            .await
            .inspect_err(|e| warn("probe history", e))
            .unwrap_or_default();
        let incidents = queries::incidents(&inner.db, now)
            .await
            .inspect_err(|e| warn("incidents", e))
            .unwrap_or_default();

        let today = now.date_naive();
        let history = |name: &str| {
            let bars = model::bars(today, days.get(name).map(Vec::as_slice).unwrap_or(&[]));
            let uptime = model::uptime(&bars, last_24h.get(name).copied().unwrap_or((0, 0)));
            (bars, uptime)
        };
        let mut components = Vec::new();
        for (id, name, (state, detail, _)) in live {
            let (days, uptime) = history(&queries::sample_name(id));
            components.push(Component {
                id: id.to_owned(),
                name: name.to_owned(),
                group: Group::Opsloop,
                state,
                detail,
                since: None,
                uptime,
                days,
            });
        }
        let active: Vec<&Maintenance> =
            inner.maintenance.iter().filter(|m| m.active(now)).collect();
        for probe in probes {
            let (days, uptime) = history(&probe.name);
            let (state, detail) = if active.iter().any(|m| m.covers(&probe.name)) {
                (ComponentState::Maintenance, None)
            } else {
                match probe.status.as_str() {
                    "up" => (ComponentState::Operational, None),
                    "down" => (ComponentState::Down, probe.last_error.clone()),
                    _ => (ComponentState::Unknown, None),
                }
            };
            components.push(Component {
                id: format!("probe-{}", probe.name),
                name: probe.name.clone(),
                group: Group::Probes,
                state,
                detail,
                since: Some(probe.since),
                uptime,
                days,
            });
        }
        for c in &components {
            let label = match c.group {
                Group::Opsloop => queries::sample_name(&c.id),
                Group::Probes => c.name.clone(),
            };
            for (window, ratio) in c.uptime.windows() {
                if let Some(ratio) = ratio {
                    metrics::gauge!(UPTIME_RATIO, "probe" => label.clone(), "window" => window)
                        .set(ratio);
                }
            }
        }
        Snapshot {
            title: inner.settings.title.clone(),
            generated_at: now,
            overall: Overall::of(&components),
            components,
            incidents,
            maintenance: inner
                .maintenance
                .iter()
                .filter(|m| m.end > now)
                .cloned()
                .collect(),
        }
    }

    /// The refusal when the page requires the viewer role and the caller
    /// does not have it.
    fn refusal(&self, target: &str, headers: &HeaderMap) -> Option<Response> {
        if !self.inner.settings.require_viewer {
            return None;
        }
        const VIEWER: Access = Access::Roles(&[Role::Viewer]);
        let auth = &self.inner.auth;
        match auth.authorize(target, Some(VIEWER), headers, true) {
            Ok(_) => None,
            Err(denied) => {
                auth.record_failure(crate::SERVICE, target, &denied);
                let body = axum::Json(serde_json::json!({"error": denied.message()}));
                Some(if denied.is_unauthenticated() {
                    (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, "Basic realm=\"opsloop status\"")],
                        body,
                    )
                        .into_response()
                } else {
                    (StatusCode::FORBIDDEN, body).into_response()
                })
            }
        }
    }

    /// The routes, to merge onto the api's HTTP router.
    pub fn router(self) -> Router {
        Router::new()
            .route("/status", get(page))
            .route("/status.json", get(json))
            .route("/status/feed.atom", get(feed))
            .route("/status/badge/{component}", get(badge))
            .with_state(self)
    }
}

/// No script, no request outside the page's origin (the favicon is an
/// empty `data:` URL, so the browser asks for none).
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn with_headers(content_type: &'static str, body: String) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn page(State(page): State<StatusPage>, headers: HeaderMap) -> Response {
    if let Some(denied) = page.refusal("GET /status", &headers) {
        return denied;
    }
    let snapshot = page.current().await;
    with_headers("text/html; charset=utf-8", render::html(&snapshot))
}

async fn json(State(page): State<StatusPage>, headers: HeaderMap) -> Response {
    if let Some(denied) = page.refusal("GET /status.json", &headers) {
        return denied;
    }
    let snapshot = page.current().await;
    match serde_json::to_string(&*snapshot) {
        Ok(body) => with_headers("application/json", body),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

async fn feed(State(page): State<StatusPage>, headers: HeaderMap) -> Response {
    if let Some(denied) = page.refusal("GET /status/feed.atom", &headers) {
        return denied;
    }
    let snapshot = page.current().await;
    with_headers(
        "application/atom+xml; charset=utf-8",
        render::atom(&snapshot),
    )
}

async fn badge(
    State(page): State<StatusPage>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = page.refusal("GET /status/badge/{component}", &headers) {
        return denied;
    }
    let snapshot = page.current().await;
    let found = file
        .strip_suffix(".svg")
        .and_then(|id| snapshot.components.iter().find(|c| c.id == id));
    match found {
        Some(c) => with_headers("image/svg+xml", render::badge(&c.name, c.state)),
        None => {
            let known: Vec<&str> = snapshot.components.iter().map(|c| c.id.as_str()).collect();
            (
                StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({
                    "error": format!("no component {file:?}; badges are /status/badge/<id>.svg for: {}", known.join(", "))
                })),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls() {
        let at = |url: &str| PeerUrl::At(Some(url.to_owned()));
        for (configured, addr, want) in [
            (None, "127.0.0.1:9755", at("http://127.0.0.1:9755")),
            (None, "0.0.0.0:9756", at("http://127.0.0.1:9756")),
            (None, "[::]:9757", at("http://[::1]:9757")),
            (None, "127.0.0.1:0", PeerUrl::At(None)),
            (
                Some("http://alerter:9756/"),
                "0.0.0.0:9756",
                at("http://alerter:9756"),
            ),
            (Some(" "), "127.0.0.1:9757", PeerUrl::NotListed),
        ] {
            assert_eq!(peer_url(configured, addr), want, "{configured:?} {addr}");
        }
    }
}
