//! What every daemon does before its own loop: load config, install
//! telemetry, connect the database and the bus, apply migrations when asked,
//! and hold one shutdown token. [`run`] is the whole `main` of a daemon
//! binary; tests call [`Infra::connect`] directly with their own settings.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::bus::{self, Bus, rabbit::BusReadiness};
use crate::config::{ConfigSources, LoadedConfig, Settings};
use crate::http::{Readiness, ReadinessCheck};
use crate::secrets::SecretStore;
use crate::store;

/// The shared infrastructure a daemon runs on.
#[derive(Clone)]
pub struct Infra {
    pub config: LoadedConfig,
    pub db: DatabaseConnection,
    pub bus: Arc<dyn Bus>,
    pub secrets: SecretStore,
    pub audit: Arc<AuditLog>,
    pub shutdown: CancellationToken,
}

impl Infra {
    /// Connects the database (migrating when `database.migrate_on_start`)
    /// and the bus. The secrets `database_url` and `amqp_url` override the
    /// configured URLs.
    pub async fn connect(
        config: LoadedConfig,
        secrets: SecretStore,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let settings = &config.settings;
        let database_url = match secrets.get("database_url")? {
            Some(secret) => secret.expose().to_owned(),
            None => settings.database.url.clone(),
        };
        let db = store::connect(&database_url, &store::PoolOptions::from(&settings.database))
            .await
            .context("database")?;
        if settings.database.migrate_on_start {
            store::migrate_up(&db)
                .await
                .context("applying migrations")?;
        }
        let amqp_url = secrets.get("amqp_url")?;
        let bus = bus::connect(&settings.bus, amqp_url.as_ref()).await?;
        let audit = Arc::new(AuditLog::new(&settings.audit));
        Ok(Self {
            config,
            db,
            bus,
            secrets,
            audit,
            shutdown,
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.config.settings
    }

    /// `/readyz` checks: the database and the broker.
    pub fn readiness(&self) -> Readiness {
        Readiness::new()
            .with(Arc::new(DatabaseReadiness(self.db.clone())))
            .with(Arc::new(BusReadiness(self.bus.clone())))
    }
}

/// Readiness of the database for `/readyz`.
pub struct DatabaseReadiness(pub DatabaseConnection);

#[async_trait]
impl ReadinessCheck for DatabaseReadiness {
    fn name(&self) -> &str {
        "database"
    }
    async fn check(&self) -> Result<(), String> {
        store::ping(&self.0)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Binds a listener, naming the config key on failure.
pub async fn bind(key: &str, addr: &str) -> anyhow::Result<TcpListener> {
    let parsed: SocketAddr = addr
        .parse()
        .with_context(|| format!("{key}: {addr:?} is not an address like 127.0.0.1:9754"))?;
    TcpListener::bind(parsed)
        .await
        .with_context(|| format!("{key}: cannot listen on {addr} (in use? set {key})"))
}

/// The whole `main` of a daemon binary: config → telemetry → runtime →
/// infrastructure → `body` until SIGTERM/SIGINT. A config error is one line
/// on stderr and exit code 2; a runtime error is logged and exit code 1.
pub fn run<F, Fut>(service: &'static str, config_path: Option<PathBuf>, body: F) -> ExitCode
where
    F: FnOnce(Infra) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = match crate::config::load(&ConfigSources::from_process(config_path.as_deref())) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{service}: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("{service}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let settings = config.settings.clone();
        let _telemetry =
            match crate::telemetry::init(service, &settings.environment, &settings.telemetry) {
                Ok(guard) => guard,
                Err(error) => {
                    eprintln!("{service}: {error}");
                    return ExitCode::from(2);
                }
            };
        let shutdown = CancellationToken::new();
        crate::lifecycle::cancel_on_signals(shutdown.clone());
        let infra =
            match Infra::connect(config, SecretStore::from_process(), shutdown.clone()).await {
                Ok(infra) => infra,
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "cannot start");
                    return ExitCode::FAILURE;
                }
            };
        crate::lifecycle::spawn_watchdog(shutdown.clone());
        let result = body(infra).await;
        crate::lifecycle::systemd::stopping();
        match result {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "stopped with an error");
                ExitCode::FAILURE
            }
        }
    })
}

/// A daemon's listening sockets and what it serves on them.
pub struct Endpoints {
    pub service: &'static str,
    /// The gRPC port with the daemon's services (reflection and health are
    /// already in the routes from [`crate::grpc::standard_routes`]).
    pub grpc: Option<(TcpListener, tonic::service::Routes)>,
    /// The HTTP port: [`crate::http::base_router`] plus the daemon's routes.
    pub http: (TcpListener, axum::Router),
}

/// Serves the endpoints and runs the daemon's own `tasks` until the shutdown
/// token is cancelled, then drains: servers stop accepting, in-flight work
/// gets `shutdown.drain_timeout_ms` to finish. Logs one start line with the
/// version and endpoints, and tells systemd `READY=1` once listening.
pub async fn serve_until_stopped(
    infra: &Infra,
    endpoints: Endpoints,
    mut tasks: tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let shutdown = infra.shutdown.clone();
    let (http_listener, router) = endpoints.http;
    let http_addr = http_listener.local_addr()?;
    let mut servers: tokio::task::JoinSet<anyhow::Result<()>> = tokio::task::JoinSet::new();
    {
        let shutdown = shutdown.clone();
        servers.spawn(async move {
            crate::http::serve(http_listener, router, shutdown)
                .await
                .context("HTTP server")
        });
    }
    let grpc_addr = match endpoints.grpc {
        Some((listener, routes)) => {
            let addr = listener.local_addr()?;
            let shutdown = shutdown.clone();
            servers.spawn(async move {
                crate::grpc::serve(listener, routes, async move { shutdown.cancelled().await })
                    .await
                    .context("gRPC server")
            });
            Some(addr)
        }
        None => None,
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        grpc = grpc_addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        http = %http_addr,
        database = infra.db.get_database_backend().as_str(),
        bus = infra.bus.kind(),
        "{} started",
        endpoints.service
    );
    crate::lifecycle::systemd::ready();

    // Run until asked to stop, or until a server or task fails.
    let mut failure = None;
    tokio::select! {
        _ = shutdown.cancelled() => {}
        Some(done) = servers.join_next() => {
            failure = finished_with_error(done);
            shutdown.cancel();
        }
        Some(done) = tasks.join_next(), if !tasks.is_empty() => {
            failure = finished_with_error(done);
            shutdown.cancel();
        }
    }
    crate::lifecycle::systemd::stopping();
    let drain = infra.settings().drain_timeout();
    let drained = tokio::time::timeout(drain, async {
        while let Some(done) = servers.join_next().await {
            if let Some(e) = finished_with_error(done) {
                tracing::warn!(error = format!("{e:#}"), "server stopped with an error");
            }
        }
        while let Some(done) = tasks.join_next().await {
            if let Some(e) = finished_with_error(done) {
                tracing::warn!(error = format!("{e:#}"), "task stopped with an error");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            drain_ms = drain.as_millis() as u64,
            "drain bound reached; abandoning in-flight work"
        );
        servers.abort_all();
        tasks.abort_all();
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn finished_with_error(
    done: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> Option<anyhow::Error> {
    match done {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(e) if e.is_cancelled() => None,
        Err(e) => Some(anyhow::anyhow!("task panicked: {e}")),
    }
}
