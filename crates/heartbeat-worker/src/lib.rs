//! The heartbeat-worker daemon: the loop's clock. One leader at a time
//! (lease row with a fencing token) ticks on an interval or cron schedule and
//! on demand (`POST /run`), running the phases of DESIGN.md in order with
//! their own budgets: trigger rules, reactions, insight promotion, stale
//! recovery, ops health, budget, daily summary, weekly report. Every instance also consumes
//! `event.#` to queue reactions as events arrive. The leader also runs the
//! uptime probes ([`probes`]) on their own intervals; any instance takes
//! push-heartbeat pings (`POST /probes/{name}/ping`).
//!
//! Pure decision code (conditions, matrix, promotion, budget, schedules)
//! lives in [`rules`], [`matching`], [`reaction_matrix`], [`insight_rules`],
//! [`guards`], [`schedule`] and [`probe_rules`]; the database side in the
//! phase modules.

pub mod alerts;
pub mod config;
pub mod db;
pub mod governance;
pub mod guards;
pub mod heartbeat;
pub mod insight_rules;
pub mod insights;
pub mod matching;
pub mod ops;
pub mod probe_config;
pub mod probe_rollup;
pub mod probe_rules;
pub mod probes;
pub mod reaction_matrix;
pub mod reactions;
pub mod report;
pub mod rollout;
pub mod rules;
pub mod schedule;
pub mod template;
pub mod triggers;

use std::net::SocketAddr;
use std::time::Duration as StdDuration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use chrono::Utc;
use opsloop_core::daemon::{Endpoints, Infra, bind, serve_until_stopped};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::HeartbeatSettings;
pub use heartbeat::{
    Fault, Heartbeat, HeartbeatError, Phase, PhaseStatus, TickOutcome, TickReport,
};

/// The service name in logs, metrics and the start line.
pub const SERVICE: &str = "heartbeat-worker";

/// The daemon, built and bound, ready to run.
pub struct HeartbeatApp {
    infra: Infra,
    http: TcpListener,
    heartbeat: Heartbeat,
    probes: probes::ProbeRunner,
}

impl HeartbeatApp {
    /// Reads and validates the `[heartbeat]` section and binds the listener.
    pub async fn build(infra: Infra) -> anyhow::Result<Self> {
        let settings: HeartbeatSettings = infra.config.section("heartbeat")?;
        let summarizer: std::sync::Arc<dyn insights::Summarizer> = match &settings.summarizer_url {
            Some(url) => std::sync::Arc::new(
                insights::ChatSummarizer::new(
                    url,
                    &settings.summarizer_model,
                    infra.secrets.get("summarizer_api_key")?,
                    StdDuration::from_millis(settings.summarizer_timeout_ms),
                )
                .map_err(|e| anyhow::anyhow!("heartbeat.summarizer_url: {e}"))?,
            ),
            None => std::sync::Arc::new(insights::BuiltinSummarizer),
        };
        let heartbeat = Heartbeat::with_summarizer(
            infra.db.clone(),
            Some(infra.audit.clone()),
            settings.clone(),
            summarizer,
        )?;
        let probes =
            probes::ProbeRunner::with_secrets(infra.db.clone(), &settings, &infra.secrets)?
                .with_audit(Some(infra.audit.clone()));
        let http = bind("heartbeat.http_addr", &settings.http_addr).await?;
        Ok(Self {
            infra,
            http,
            heartbeat,
            probes,
        })
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The heartbeat this daemon runs (tests tick it with their own clock).
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// The probes this daemon runs while it leads.
    pub fn probes(&self) -> probes::ProbeRunner {
        self.probes.clone()
    }

    /// Serves HTTP and runs the tick loop and the reaction consumer until
    /// the infrastructure's shutdown token is cancelled.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let router = opsloop_core::http::base_router(SERVICE, self.infra.readiness()).merge(
            Router::new()
                .route("/run", post(run_now))
                .with_state(self.heartbeat.clone())
                .merge(
                    Router::new()
                        .route("/probes", get(list_probes).post(add_probe))
                        .route("/probes/{name}", delete(remove_probe))
                        .route("/probes/{name}/ping", post(ping))
                        .route("/probes/{name}/run", post(run_probe))
                        .with_state(self.probes.clone()),
                ),
        );
        let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
        {
            let hb = self.heartbeat.clone();
            let shutdown = self.infra.shutdown.clone();
            tasks.spawn(async move {
                run_loop(hb, shutdown).await;
                Ok(())
            });
        }
        // Runs until shutdown (a task that ends stops the daemon), also
        // without probes: one may be added at run time.
        {
            let probes = self.probes.clone();
            let hb = self.heartbeat.clone();
            let shutdown = self.infra.shutdown.clone();
            tasks.spawn(async move {
                probes.run_loop(hb, shutdown).await;
                Ok(())
            });
        }
        tasks.spawn(probe_rollup::run_loop(
            self.heartbeat.clone(),
            self.infra.shutdown.clone(),
        ));
        // The rate controller judges every window, not only on ticks.
        tasks.spawn(governance::run_loop(
            self.heartbeat.clone(),
            self.infra.shutdown.clone(),
        ));
        let settings = self.heartbeat.settings().clone();
        if settings.consume_events {
            let db = self.infra.db.clone();
            let bus = self.infra.bus.clone();
            let shutdown = self.infra.shutdown.clone();
            tasks.spawn(reactions::consume(
                db,
                bus,
                settings.reactions_queue,
                shutdown,
            ));
        }
        let endpoints = Endpoints {
            service: SERVICE,
            grpc: None,
            http: (self.http, router),
            health: None,
            // Reactions arrive over the bus: ready once the broker answers.
            ready: opsloop_core::daemon::ReadyWhen::BrokerConnected,
        };
        serve_until_stopped(&self.infra, endpoints, tasks).await
    }
}

/// `POST /run`: one tick now; 200 with the tick's result, 409 when this
/// instance is standing by or a tick is running. The admin role, by the
/// access table.
async fn run_now(State(hb): State<Heartbeat>) -> Response {
    match hb.tick(Utc::now()).await {
        Ok(outcome @ TickOutcome::Ran(_)) => (StatusCode::OK, axum::Json(outcome)).into_response(),
        Ok(outcome) => (StatusCode::CONFLICT, axum::Json(outcome)).into_response(),
        Err(error) => {
            tracing::error!(%error, "on-demand tick failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": error.to_string()})),
            )
                .into_response()
        }
    }
}

/// `POST /probes/{name}/ping`: a push heartbeat from an external job; 204,
/// or 404 when no `heartbeat` probe has that name. The agent role, by the
/// access table.
async fn ping(State(runner): State<probes::ProbeRunner>, Path(name): Path<String>) -> Response {
    if !matches!(
        runner.probe(&name).map(|p| p.kind),
        Some(probe_config::ProbeKind::Heartbeat { .. })
    ) {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": format!("no heartbeat probe named {name:?}")})),
        )
            .into_response();
    }
    match probes::record_ping(runner.db(), &name, Utc::now()).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => {
            tracing::error!(%error, probe = %name, "cannot record a ping");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": error.to_string()})),
            )
                .into_response()
        }
    }
}

/// `GET /probes`: every configured probe with its state, last check,
/// latency and certificate days (`opsloop probe list`). The viewer role.
async fn list_probes(State(runner): State<probes::ProbeRunner>) -> Response {
    match runner.list(Utc::now()).await {
        Ok(listings) => {
            axum::Json(json!({"probes": listings, "shadowed": runner.shadowed()})).into_response()
        }
        Err(error) => {
            tracing::error!(%error, "cannot list probes");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": error.to_string()})),
            )
                .into_response()
        }
    }
}

/// `POST /probes/{name}/run`: checks the probe now, whatever its schedule,
/// records the result like a scheduled check (state, history, events,
/// alerts, pauses) and answers it (`opsloop probe run NAME`); 404 for an
/// unknown probe. The admin role.
async fn run_probe(
    State(runner): State<probes::ProbeRunner>,
    Path(name): Path<String>,
) -> Response {
    if runner.probe(&name).is_none() {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": format!("no probe named {name:?} is configured")})),
        )
            .into_response();
    }
    match runner.check_now(&name, Utc::now()).await {
        Some(report) => axum::Json(report).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": "the check ran but could not be recorded (database)"})),
        )
            .into_response(),
    }
}

fn change_refused(error: probes::ProbeChangeError) -> Response {
    use probes::ProbeChangeError as E;
    let status = match &error {
        E::Invalid(_) | E::Setup(_) => StatusCode::BAD_REQUEST,
        E::Configured(_) | E::Exists(_) => StatusCode::CONFLICT,
        E::NotFound(_) => StatusCode::NOT_FOUND,
        E::Db(error) => {
            tracing::error!(%error, "cannot change the added probes");
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    (status, axum::Json(json!({"error": error.to_string()}))).into_response()
}

/// `POST /probes` with a `[[heartbeat.probes]]` entry as JSON: adds a probe
/// at run time (`opsloop probe add`), stored in the database and run by
/// the leader from its next refresh; 201, 400 naming the field, 409 when
/// the name is taken (the configuration file wins). The admin role.
async fn add_probe(
    State(runner): State<probes::ProbeRunner>,
    axum::Json(spec): axum::Json<probe_config::ProbeSpec>,
) -> Response {
    let by = opsloop_core::auth::caller()
        .map(|c| c.name)
        .unwrap_or_else(|| "anonymous".to_owned());
    match runner.add(&spec, &by, Utc::now()).await {
        Ok(probe) => (
            StatusCode::CREATED,
            axum::Json(json!({"probe": probe.name, "kind": probe.kind.as_str(), "created_by": by})),
        )
            .into_response(),
        Err(error) => change_refused(error),
    }
}

/// `DELETE /probes/{name}`: removes a probe added at run time (`opsloop
/// probe rm`); 204, 404, or 409 for a configured probe. The admin role.
async fn remove_probe(
    State(runner): State<probes::ProbeRunner>,
    Path(name): Path<String>,
) -> Response {
    match runner.remove(&name, Utc::now()).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => change_refused(error),
    }
}

/// Ticks on schedule while leader; renews the lease every third of its
/// length, and a standby that takes the lease over ticks at once.
pub async fn run_loop(hb: Heartbeat, shutdown: CancellationToken) {
    let renew_every = StdDuration::from_secs(hb.settings().lease_secs.div_ceil(3).max(1));
    let mut leader = false;
    let mut next_tick = Utc::now();
    loop {
        let now = Utc::now();
        if now >= next_tick {
            match hb.tick(now).await {
                Ok(TickOutcome::Ran(_)) => leader = true,
                Ok(TickOutcome::Skipped {
                    reason: heartbeat::SkipReason::NotLeader,
                    ..
                }) => leader = false,
                Ok(TickOutcome::Skipped { .. }) => {}
                Err(error) => tracing::warn!(%error, "tick failed"),
            }
            next_tick = hb.tick_schedule().next_after(now);
        } else {
            match hb.acquire_lease(now).await {
                Ok(Some(grant)) if !leader => {
                    leader = true;
                    tracing::info!(
                        instance = hb.instance_id(),
                        fencing_token = grant.fencing_token,
                        "took over as heartbeat leader"
                    );
                    next_tick = now;
                    continue;
                }
                Ok(Some(_)) => {}
                Ok(None) => leader = false,
                Err(error) => tracing::warn!(%error, "cannot renew the leader lease"),
            }
        }
        let until_tick = (next_tick - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(until_tick.min(renew_every)) => {}
        }
    }
    // Only our own row changes, so this is safe when standing by too.
    if let Err(error) = hb.release_lease(Utc::now()).await {
        tracing::warn!(%error, "cannot release the leader lease");
    }
}
