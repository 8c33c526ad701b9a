//! The api daemon: the system of record of the loop. Serves the gRPC services of
//! `opsloop.v1` (proposals, missions, events, policy, triggers, ops), the HTTP
//! health, metrics and summary endpoints and the status page
//! ([`status_page`]) and the operator console ([`console`]), and runs the outbox relay that publishes every event
//! to the bus.

pub mod console;
pub mod convert;
pub mod services;
pub mod status_page;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use opsloop_core::daemon::{Endpoints, Infra, bind, serve_until_stopped};
use opsloop_core::domain::input::Limits;
use opsloop_core::grpc::MAX_DECODING_MESSAGE_SIZE;
use opsloop_core::proto::v1::event_service_server::EventServiceServer;
use opsloop_core::proto::v1::mission_service_server::MissionServiceServer;
use opsloop_core::proto::v1::ops_service_server::OpsServiceServer;
use opsloop_core::proto::v1::policy_service_server::PolicyServiceServer;
use opsloop_core::proto::v1::proposal_service_server::ProposalServiceServer;
use opsloop_core::proto::v1::rollout_service_server::RolloutServiceServer;
use opsloop_core::proto::v1::token_service_server::TokenServiceServer;
use opsloop_core::proto::v1::trigger_service_server::TriggerServiceServer;
use opsloop_core::workflow::outbox::{RelaySettings, run_relay};
use opsloop_core::workflow::{self, SummaryPeriod};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use services::{Api, Clock};

/// The service name in logs, metrics and the start line.
pub const SERVICE: &str = "api";

/// The `[api]` config section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// gRPC listen address.
    pub grpc_addr: String,
    /// HTTP listen address (health, readiness, metrics, summary).
    pub http_addr: String,
    /// Run the outbox relay in this process (every replica may).
    pub outbox_relay: bool,
    /// Outbox rows published per batch.
    pub outbox_batch: u64,
    /// Poll interval of the relay when idle, in milliseconds.
    pub outbox_idle_ms: u64,
    /// The status page (`/status`).
    pub status: status_page::StatusSettings,
    /// The operator console (`/console`).
    pub console: console::ConsoleSettings,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:50051".into(),
            http_addr: "127.0.0.1:9754".into(),
            outbox_relay: true,
            outbox_batch: 200,
            outbox_idle_ms: 200,
            status: status_page::StatusSettings::default(),
            console: console::ConsoleSettings::default(),
        }
    }
}

/// Parses and validates `[api]` before any I/O; what
/// `opsloop_core::daemon::run` calls.
pub fn check_config(config: &opsloop_core::config::LoadedConfig) -> anyhow::Result<()> {
    config.section::<ApiSettings>("api")?;
    Ok(())
}

/// The daemon, built and bound, ready to run.
pub struct ApiApp {
    infra: Infra,
    settings: ApiSettings,
    api: Api,
    grpc: TcpListener,
    http: TcpListener,
    status_peers: Vec<status_page::Peer>,
    /// The alerter's gRPC address the console's incidents pages call
    /// (`api.console.alerter_grpc_url`, else `alerter.grpc_addr`).
    alerter_grpc: Option<String>,
    /// The backup-agent's gRPC address the console's backup pages call.
    backup_grpc: Option<String>,
    maintenance: Vec<status_page::model::Maintenance>,
}

impl ApiApp {
    /// Reads the `[api]` section and the auth tokens, and binds the listeners.
    pub async fn build(infra: Infra) -> anyhow::Result<Self> {
        let settings: ApiSettings = infra.config.section("api")?;
        let grpc = bind("api.grpc_addr", &settings.grpc_addr).await?;
        let http = bind("api.http_addr", &settings.http_addr).await?;
        let auth = infra.auth.clone();
        let api = Api {
            db: infra.db.clone(),
            auth,
            audit: Some(infra.audit.clone()),
            limits: Limits::DEFAULT,
            clock: opsloop_core::clock::SystemClock::shared(),
            policy: opsloop_core::workflow::PolicyCache::new(),
            shutdown: infra.shutdown.clone(),
            steps: opsloop_core::workflow::notify::StepNotifier::new(),
        };
        let (status_peers, maintenance) = status_page::from_config(&infra.config, &settings.status);
        let alerter_grpc = console::peer_grpc_url(
            &infra.config,
            settings.console.alerter_grpc_url.as_deref(),
            "alerter",
            "127.0.0.1:50052",
        );
        let backup_grpc = console::peer_grpc_url(
            &infra.config,
            settings.console.backup_grpc_url.as_deref(),
            "backup",
            "127.0.0.1:50053",
        );
        Ok(Self {
            infra,
            settings,
            api,
            grpc,
            http,
            status_peers,
            alerter_grpc,
            backup_grpc,
            maintenance,
        })
    }

    /// Replaces the clock (tests pin time this way).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.api.clock = clock;
        self
    }

    /// Checks the other daemons of the status page at these HTTP addresses
    /// (`opsloop dev`, which binds them in the same process); a peer whose
    /// URL is set in `[api.status]` keeps it.
    pub fn with_status_peers(
        mut self,
        heartbeat: SocketAddr,
        alerter: SocketAddr,
        backup: SocketAddr,
    ) -> Self {
        let status = &self.settings.status;
        for peer in &mut self.status_peers {
            let (configured, addr) = match peer.id {
                "heartbeat-worker" => (&status.heartbeat_url, heartbeat),
                "alerter" => (&status.alerter_url, alerter),
                _ => (&status.backup_url, backup),
            };
            if configured.is_none() {
                peer.url = Some(format!("http://{addr}"));
            }
        }
        self
    }

    /// Calls the alerter's and the backup-agent's gRPC ports at these
    /// addresses (`opsloop dev`, which binds them in the same process)
    /// unless `api.console.alerter_grpc_url` / `backup_grpc_url` are set.
    pub fn with_peer_grpc(mut self, alerter: SocketAddr, backup: SocketAddr) -> Self {
        if self.settings.console.alerter_grpc_url.is_none() {
            self.alerter_grpc = Some(format!("http://{alerter}"));
        }
        if self.settings.console.backup_grpc_url.is_none() {
            self.backup_grpc = Some(format!("http://{backup}"));
        }
        self
    }

    /// The bound gRPC address (port 0 in the config picks a free one).
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// Serves until the infrastructure's shutdown token is cancelled.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let (mut routes, health) = opsloop_core::grpc::standard_routes()?;
        let api = self.api.clone();
        routes = routes
            .add_service(
                ProposalServiceServer::new(api.clone())
                    .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            )
            .add_service(
                MissionServiceServer::new(api.clone())
                    .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            )
            .add_service(
                EventServiceServer::new(api.clone())
                    .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            )
            .add_service(
                PolicyServiceServer::new(api.clone())
                    .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            )
            .add_service(
                RolloutServiceServer::new(api.clone())
                    .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            )
            .add_service(
                TriggerServiceServer::new(api.clone())
                    .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            )
            .add_service(
                OpsServiceServer::new(api.clone())
                    .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            )
            .add_service(
                TokenServiceServer::new(api.clone())
                    .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            );
        health.set_serving::<ProposalServiceServer<Api>>().await;
        health.set_serving::<MissionServiceServer<Api>>().await;
        health.set_serving::<EventServiceServer<Api>>().await;
        health.set_serving::<PolicyServiceServer<Api>>().await;
        health.set_serving::<RolloutServiceServer<Api>>().await;
        health.set_serving::<TriggerServiceServer<Api>>().await;
        health.set_serving::<OpsServiceServer<Api>>().await;
        health.set_serving::<TokenServiceServer<Api>>().await;

        let status = status_page::StatusPage::new(
            self.infra.db.clone(),
            api.clock.clone(),
            self.infra.readiness(),
            self.infra.auth.clone(),
            self.settings.status.clone(),
            self.status_peers.clone(),
            self.maintenance.clone(),
            self.infra.config.settings.tls.ca_file.as_deref(),
        )?;
        let console = {
            let tls = &self.infra.config.settings.tls;
            let key = self
                .infra
                .secrets
                .get(console::SESSION_KEY_SECRET)?
                .map(|s| s.expose().to_owned());
            let alerter_url = match self.settings.console.alerter_url.as_deref().map(str::trim) {
                Some("") => None,
                Some(url) => Some(url.to_owned()),
                None => self
                    .status_peers
                    .iter()
                    .find(|p| p.id == "alerter")
                    .and_then(|p| p.url.clone()),
            };
            let alerter_token = self
                .infra
                .secrets
                .get(console::ALERTER_TOKEN_SECRET)?
                .map(|s| s.expose().trim().to_owned());
            let backup_token = self
                .infra
                .secrets
                .get(console::BACKUP_TOKEN_SECRET)?
                .map(|s| s.expose().trim().to_owned());
            let mut http = reqwest::Client::builder().user_agent("opsloop-console");
            if let Some(ca) = tls.ca_file.as_deref() {
                http = http.use_preconfigured_tls(opsloop_core::tls::client_config(Some(ca))?);
            }
            let http = http
                .build()
                .map_err(|e| anyhow::anyhow!("api.console: cannot build the HTTP client: {e}"))?;
            console::Console::new(
                api.clone(),
                Some(status.clone()),
                key.as_deref(),
                tls.http && tls.cert_file.is_some(),
            )
            .with_alerter(console::alerts::AlerterClient::new(
                http,
                alerter_url,
                alerter_token.clone(),
            ))
            .with_incidents(match self.alerter_grpc.as_deref() {
                Some(url) => console::incidents::IncidentClient::new(console::peer::GrpcPeer::new(
                    console::incidents::ALERTER,
                    url,
                    alerter_token.as_deref(),
                    tls.ca_file.as_deref(),
                )?),
                None => console::incidents::IncidentClient::disabled(),
            })
            .with_backups(match self.backup_grpc.as_deref() {
                Some(url) => console::backups::BackupClient::new(console::peer::GrpcPeer::new(
                    console::backups::BACKUP_AGENT,
                    url,
                    backup_token.as_deref().or(alerter_token.as_deref()),
                    tls.ca_file.as_deref(),
                )?),
                None => console::backups::BackupClient::disabled(),
            })
        };
        let router = opsloop_core::http::base_router(SERVICE, self.infra.readiness())
            .merge(
                axum::Router::new()
                    .route("/api/ops/summary/daily", get(daily_summary))
                    .with_state(api.clone()),
            )
            .merge(status.clone().router())
            .merge(console.router());

        // The loop-state gauges, sampled at each scrape of /metrics for as
        // long as the daemon runs (opsloop_core::loop_metrics).
        let loop_sampler: Arc<dyn opsloop_core::telemetry::ScrapeSampler> = Arc::new(
            opsloop_core::loop_metrics::LoopSampler::new(self.infra.db.clone(), api.clock.clone()),
        );
        opsloop_core::telemetry::register_scrape_sampler(&loop_sampler);

        let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
        {
            let shutdown = self.infra.shutdown.clone();
            tasks.spawn(async move {
                status.run(shutdown).await;
                Ok(())
            });
        }
        // Wake-ups of long-polling claims (LISTEN on PostgreSQL); ends the
        // open long polls on shutdown.
        {
            let listener = opsloop_core::workflow::notify::listen(
                self.infra.db.clone(),
                api.steps.clone(),
                self.infra.shutdown.clone(),
            );
            tasks.spawn(async move {
                listener.await;
                Ok(())
            });
        }
        if self.settings.outbox_relay {
            let db = self.infra.db.clone();
            let bus = self.infra.bus.clone();
            let shutdown = self.infra.shutdown.clone();
            let relay = RelaySettings {
                batch: self.settings.outbox_batch.max(1),
                idle: Duration::from_millis(self.settings.outbox_idle_ms.max(10)),
                ..RelaySettings::default()
            };
            tasks.spawn(async move {
                run_relay(db, bus, relay, shutdown).await;
                Ok(())
            });
        }
        // Mark every service not serving once shutdown begins.
        {
            let shutdown = self.infra.shutdown.clone();
            let health = health.clone();
            tasks.spawn(async move {
                shutdown.cancelled().await;
                health.set_not_serving::<ProposalServiceServer<Api>>().await;
                health.set_not_serving::<MissionServiceServer<Api>>().await;
                health.set_not_serving::<EventServiceServer<Api>>().await;
                health.set_not_serving::<PolicyServiceServer<Api>>().await;
                health.set_not_serving::<RolloutServiceServer<Api>>().await;
                health.set_not_serving::<TriggerServiceServer<Api>>().await;
                health.set_not_serving::<OpsServiceServer<Api>>().await;
                health.set_not_serving::<TokenServiceServer<Api>>().await;
                Ok(())
            });
        }

        let endpoints = Endpoints {
            service: SERVICE,
            grpc: Some((self.grpc, routes)),
            http: (self.http, router),
            health: Some(health),
            // The outbox keeps events while the broker is away.
            ready: opsloop_core::daemon::ReadyWhen::Listening,
        };
        serve_until_stopped(&self.infra, endpoints, tasks).await
    }
}

/// `GET /api/ops/summary/daily`: the same figures as gRPC `GetSummary`.
async fn daily_summary(State(api): State<Api>) -> Response {
    match workflow::summary(&api.db, SummaryPeriod::Daily, api.now()).await {
        Ok(figures) => axum::Json(figures).into_response(),
        Err(error) => {
            tracing::warn!(%error, "summary failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"error": error.to_string()})),
            )
                .into_response()
        }
    }
}
