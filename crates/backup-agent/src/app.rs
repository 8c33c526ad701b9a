//! The daemon's wiring: reads `[backup]`, builds the [`Agent`] on the shared
//! infrastructure, serves `BackupService` (gRPC) and health/metrics (HTTP),
//! and runs its own loops — recovery at start, one schedule per target, and
//! the freshness check.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use opsloop_core::daemon::{Endpoints, Infra, bind, serve_until_stopped};
use opsloop_core::proto::v1::backup_service_server::BackupServiceServer;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::SERVICE;
use crate::agent::{Agent, AgentDeps, ScheduledBackup, ScheduledVerify};
use crate::config::{BackupConfig, BackupSettings, StoreKind};
use crate::s3::ObjectBackupStore;
use crate::schedule::{Clock, SystemClock, run_schedule};
use crate::service::BackupGrpc;
use crate::store::{BackupStore, LocalStore};

/// The daemon, built and bound, ready to run.
pub struct BackupApp {
    infra: Infra,
    agent: Arc<Agent>,
    grpc: TcpListener,
    http: TcpListener,
}

impl BackupApp {
    /// Reads the `[backup]` section, locates the tools and binds the
    /// listeners. A bad setting or a missing `pg_dump` fails here.
    pub async fn build(infra: Infra) -> anyhow::Result<Self> {
        Self::build_with_clock(infra, Arc::new(SystemClock)).await
    }

    /// [`BackupApp::build`] with an injected clock (tests).
    pub async fn build_with_clock(infra: Infra, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let settings: BackupSettings = infra.config.section("backup")?;
        let default_url = match infra.secrets.get("database_url")? {
            Some(secret) => secret.expose().to_owned(),
            None => infra.settings().database.url.clone(),
        };
        let config = BackupConfig::new(settings, &default_url)?;
        let grpc = bind("backup.grpc_addr", &config.settings.grpc_addr).await?;
        let http = bind("backup.http_addr", &config.settings.http_addr).await?;
        let store: Arc<dyn BackupStore> = match config.settings.store {
            StoreKind::Local => Arc::new(LocalStore::new(config.settings.store_dir.clone())),
            StoreKind::S3 => Arc::new(ObjectBackupStore::s3(&config.settings.s3, &infra.secrets)?),
        };
        let agent = Agent::new(AgentDeps {
            config,
            db: infra.db.clone(),
            bus: infra.bus.clone(),
            audit: infra.audit.clone(),
            secrets: infra.secrets.clone(),
            store,
            clock,
        })
        .context("backup-agent")?;
        Ok(Self {
            infra,
            agent,
            grpc,
            http,
        })
    }

    pub fn agent(&self) -> &Arc<Agent> {
        &self.agent
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
        let (routes, health) = opsloop_core::grpc::standard_routes()?;
        let service = BackupServiceServer::new(BackupGrpc::new(self.agent.clone()))
            .max_decoding_message_size(opsloop_core::grpc::MAX_DECODING_MESSAGE_SIZE);
        health
            .set_serving::<BackupServiceServer<BackupGrpc>>()
            .await;
        let routes = routes.add_service(service);
        let router = opsloop_core::http::base_router(SERVICE, self.infra.readiness());
        let endpoints = Endpoints {
            service: SERVICE,
            grpc: Some((self.grpc, routes)),
            http: (self.http, router),
            health: Some(health.clone()),
            ready: opsloop_core::daemon::ReadyWhen::Listening,
        };
        let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
        let shutdown = self.infra.shutdown.clone();
        {
            let agent = self.agent.clone();
            let shutdown = shutdown.clone();
            // The version check logs only; it must not hold up recovery.
            let checker = agent.clone();
            tokio::spawn(async move { checker.check_client_versions().await });
            tasks.spawn(async move {
                if let Err(error) = agent.recover().await {
                    tracing::error!(%error, "recovering interrupted backups failed");
                }
                let mut schedules = JoinSet::new();
                for target in agent.config().targets.clone() {
                    let agent = agent.clone();
                    let shutdown = shutdown.clone();
                    schedules.spawn(async move {
                        let job = ScheduledBackup::new(agent.clone(), &target.name);
                        let config = agent.config();
                        run_schedule(
                            &config.schedule,
                            agent.clock().as_ref(),
                            &job,
                            config.settings.catch_up_missed,
                            shutdown,
                        )
                        .await;
                    });
                }
                if let Some(verify_schedule) = agent.config().verify_schedule.clone() {
                    let agent = agent.clone();
                    let shutdown = shutdown.clone();
                    schedules.spawn(async move {
                        let job = ScheduledVerify::new(agent.clone());
                        run_schedule(
                            &verify_schedule,
                            agent.clock().as_ref(),
                            &job,
                            false,
                            shutdown,
                        )
                        .await;
                    });
                }
                while schedules.join_next().await.is_some() {}
                Ok(())
            });
        }
        {
            let agent = self.agent.clone();
            let shutdown = shutdown.clone();
            let every =
                Duration::from_secs(agent.config().settings.freshness.check_interval_secs.max(1));
            tasks.spawn(async move {
                loop {
                    if let Err(error) = agent.check_freshness().await {
                        tracing::warn!(%error, "freshness check failed");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(every) => {}
                    }
                }
            });
        }
        serve_until_stopped(&self.infra, endpoints, tasks).await
    }
}
