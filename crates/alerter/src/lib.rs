//! The alerter daemon: grouped, deduplicated, silenced, routed alerts to Slack,
//! Discord, generic webhooks and PagerDuty. Serves `AlertService` and
//! `IncidentService` over gRPC and the Alertmanager v2 API, health and
//! metrics over HTTP.
//!
//! The pipeline is a chain of small pure stages — [`model`], [`matchers`],
//! [`route`], [`inhibit`], [`silence`], [`group`], [`dispatch`] — and the
//! receivers render payloads ([`receivers`]) that one delivery engine
//! ([`delivery`]) sends with pacing, retries and dead-lettering. [`service`]
//! is the I/O shell; [`api`], [`grpc`] and [`consumer`] are its inputs.
//! Incidents: [`incident`] and [`oncall`] decide, [`incidents`] persists and
//! drives, [`incident_grpc`] and [`ack_link`] are their inputs.

pub mod ack_link;
pub mod api;
pub mod config;
pub mod consumer;
pub mod delivery;
pub mod dispatch;
pub mod group;
pub mod grpc;
pub mod incident;
pub mod incident_grpc;
pub mod incidents;
pub mod inhibit;
pub mod leader;
pub mod matchers;
pub mod model;
pub mod oncall;
pub mod persist;
pub mod postmortem;
pub mod receivers;
pub mod route;
pub mod service;
pub mod silence;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use opsloop_core::daemon::{Endpoints, Infra, bind, serve_until_stopped};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use config::AlerterSettings;
use delivery::{Clock, SystemClock};
use service::Alerter;

/// The service name in logs, metrics and the start line.
pub const SERVICE: &str = "alerter";

/// The daemon, built and bound, ready to run.
pub struct AlerterApp {
    infra: Infra,
    grpc: TcpListener,
    http: TcpListener,
    alerter: Arc<Alerter>,
    queue: String,
    incidents: Option<Arc<incidents::IncidentManager>>,
    tick: std::time::Duration,
}

impl AlerterApp {
    /// Reads the `[alerter]` section, binds the listeners and restores the
    /// pipeline's state from the database.
    pub async fn build(infra: Infra) -> anyhow::Result<Self> {
        Self::build_with_clock(infra, Arc::new(SystemClock)).await
    }

    /// [`AlerterApp::build`] with a chosen clock.
    pub async fn build_with_clock(infra: Infra, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let settings: AlerterSettings = infra.config.section("alerter")?;
        let grpc = bind("alerter.grpc_addr", &settings.grpc_addr).await?;
        let http = bind("alerter.http_addr", &settings.http_addr).await?;
        let alerter = Alerter::start(
            &settings,
            infra.db.clone(),
            &infra.secrets,
            &infra.settings().environment,
            clock.clone(),
            Some(infra.audit.clone()),
        )
        .await?;
        let incidents = if settings.incidents.enabled {
            let manager = incidents::IncidentManager::start(
                &settings,
                infra.db.clone(),
                &infra.secrets,
                &infra.settings().environment,
                clock,
                Some(infra.audit.clone()),
            )
            .await?;
            alerter.attach_incidents(manager.clone());
            Some(manager)
        } else {
            None
        };
        if infra.bus.kind() == "memory" {
            // The in-process bus drops what no queue is bound for: declare
            // the queue now, so alerts published by the other roles of
            // `opsloop dev` before this alerter leads are kept for it.
            // (RabbitMQ's queue is durable: declared by the first run.)
            drop(
                infra
                    .bus
                    .subscribe(
                        opsloop_core::bus::QueueSpec::new(
                            settings.queue.clone(),
                            &[consumer::BINDING],
                        )
                        .single_active(),
                    )
                    .await?,
            );
        }
        Ok(Self {
            infra,
            grpc,
            http,
            alerter,
            queue: settings.queue,
            incidents,
            tick: std::time::Duration::from_millis(settings.tick_ms.max(10)),
        })
    }

    /// The bound gRPC address (port 0 in the config picks a free one).
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The pipeline, for tests and embedding (`opsloop dev`).
    pub fn alerter(&self) -> Arc<Alerter> {
        self.alerter.clone()
    }

    /// The incident manager (None when `alerter.incidents.enabled` is off).
    pub fn incidents(&self) -> Option<Arc<incidents::IncidentManager>> {
        self.incidents.clone()
    }

    /// Serves until the infrastructure's shutdown token is cancelled.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let (routes, health) = opsloop_core::grpc::standard_routes()?;
        health
            .set_serving::<opsloop_core::proto::v1::alert_service_server::AlertServiceServer<grpc::AlertGrpc>>()
            .await;
        if self.incidents.is_some() {
            health
                .set_serving::<opsloop_core::proto::v1::incident_service_server::IncidentServiceServer<incident_grpc::IncidentGrpc>>()
                .await;
        }
        let routes = routes
            .add_service(grpc::server(self.alerter.clone()))
            .add_service(incident_grpc::server(self.incidents.clone()));
        let mut router = opsloop_core::http::base_router(SERVICE, self.infra.readiness())
            .merge(api::router(self.alerter.clone(), self.infra.readiness()));
        let mut tasks = JoinSet::new();
        if let Some(manager) = &self.incidents {
            router = router.merge(ack_link::router(manager.clone()));
            tasks.spawn(manager.clone().run(
                self.alerter.leadership(),
                self.infra.shutdown.clone(),
                self.tick,
            ));
        }
        tasks.spawn(self.alerter.clone().run(self.infra.shutdown.clone()));
        tasks.spawn(consumer::consume(
            self.infra.bus.clone(),
            self.queue,
            self.alerter.clone(),
            self.infra.shutdown.clone(),
        ));
        // Never dropped: what the alerter holds (every active alert, group
        // and log entry) would otherwise be freed one allocation at a time
        // in the runtime's teardown after the drain (3.1 s for 31,500
        // alerts at load 6, 12.5 s with 100,000 in the issue 22 bench:
        // past the drain bound). Everything it owes is in the database;
        // the process exits next and the kernel takes the memory back.
        std::mem::forget(self.alerter.clone());
        let endpoints = Endpoints {
            service: SERVICE,
            grpc: Some((self.grpc, routes)),
            http: (self.http, router),
            health: Some(health),
            // Its work arrives over the bus: ready once the broker answers.
            ready: opsloop_core::daemon::ReadyWhen::BrokerConnected,
        };
        serve_until_stopped(&self.infra, endpoints, tasks).await
    }
}
