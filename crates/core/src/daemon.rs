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
    /// The tokens every listener checks (bootstrap secrets and the
    /// `api_tokens` table, reloaded while serving).
    pub auth: crate::auth::Auth,
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
        let db = connect_database(&database_url, &settings.database, &shutdown)
            .await
            .context("database")?;
        if settings.database.migrate_on_start {
            store::migrate_up(&db)
                .await
                .context("applying migrations")?;
        }
        let auth = crate::auth::Auth::from_secrets(&secrets, Some(db.clone()))?;
        if let Err(error) = auth.refresh().await {
            tracing::warn!(%error, "cannot read the api_tokens table (run `opsloop migrate up`); only the admin_token/agent_token secrets are accepted until it can be read");
        }
        // Decided before the broker connection exists, so a refusal leaves
        // no connection task behind to be torn down mid-flight.
        if let Some(warning) = require_a_token(settings, &secrets, &auth)? {
            tracing::warn!("{warning}");
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
            auth,
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

/// A daemon's own config check: parses and validates its sections (e.g.
/// `[api]`) from the loaded config. [`run`] calls it before any I/O.
pub type ConfigCheck = fn(&LoadedConfig) -> anyhow::Result<()>;

/// Connects the database, waiting for an unreachable PostgreSQL (a host
/// booting, a database restarting, a server on another host coming up later)
/// for up to `database.start_wait_secs` with a capped backoff (1 s doubling to
/// 30 s), one warning per attempt; a shutdown request ends the wait. A
/// refused login, a bad URL or SQLite fail at once: waiting would not help.
pub async fn connect_database(
    url: &str,
    settings: &crate::config::DatabaseSettings,
    shutdown: &CancellationToken,
) -> Result<sea_orm::DatabaseConnection, store::StoreError> {
    let options = store::PoolOptions::from(settings);
    let budget = std::time::Duration::from_secs(settings.start_wait_secs);
    let started = tokio::time::Instant::now();
    let mut pause = crate::domain::Doubling::new(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(30),
    );
    loop {
        let error = match store::connect(url, &options).await {
            Ok(db) => return Ok(db),
            Err(error @ store::StoreError::Connect { .. }) => error,
            Err(error) => return Err(error),
        };
        let waited = started.elapsed();
        if waited + pause.peek() > budget {
            return Err(error);
        }
        tracing::warn!(
            %error,
            retry_in_secs = pause.peek().as_secs(),
            waited_secs = waited.as_secs(),
            "database unreachable at start; retrying (database.start_wait_secs = {})",
            settings.start_wait_secs
        );
        tokio::select! {
            _ = shutdown.cancelled() => return Err(error),
            _ = tokio::time::sleep(pause.next_delay()) => {}
        }
    }
}

/// Everything [`run`] checks before any I/O (no database connect, no
/// migration, no bind): the common sections, the daemon's own sections
/// (`check`), the TLS material, and — in production — that the embedded
/// defaults and a token-less deployment were asked for explicitly. `Ok`
/// carries the warnings to log once telemetry is up.
pub fn preflight(
    config: &LoadedConfig,
    secrets: &SecretStore,
    check: ConfigCheck,
) -> anyhow::Result<Vec<String>> {
    check(config)?;
    crate::tls::ServerTls::from_settings(&config.settings.tls, secrets)?;
    if let Some(path) = &config.settings.tls.ca_file {
        crate::tls::client_roots(Some(path))?;
    }
    let mut warnings = Vec::new();
    // Without a bootstrap token secret, named tokens may still exist in the
    // database: that part of the verdict waits for [`require_a_token`].
    let has_tokens = has_bootstrap_token(secrets)?
        || crate::config::insecure_production_defaults(&config.settings, true).is_none();
    if let Some(reason) = crate::config::insecure_production_defaults(&config.settings, has_tokens)
    {
        if !config.settings.allow_insecure_defaults {
            anyhow::bail!(
                "environment = \"production\" refuses to start with {reason}; or set allow_insecure_defaults = true to accept that"
            );
        }
        warnings.push(format!(
            "production with insecure defaults (allow_insecure_defaults = true): {reason}"
        ));
    }
    Ok(warnings)
}

/// Whether any bootstrap token secret (`admin_token`, `agent_token`,
/// `viewer_token`, `alert_sender_token`) is set.
fn has_bootstrap_token(secrets: &SecretStore) -> anyhow::Result<bool> {
    for (secret, _, _) in crate::auth::BOOTSTRAP {
        if secrets
            .get(secret)?
            .is_some_and(|value| !value.expose().trim().is_empty())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The second half of production's "no tokens" refusal, once the
/// `api_tokens` table has been read: with no bootstrap token secret, an
/// unrevoked, unexpired named token must exist (or
/// `allow_insecure_defaults` must say the open deployment is meant).
fn require_a_token(
    settings: &Settings,
    secrets: &SecretStore,
    auth: &crate::auth::Auth,
) -> anyhow::Result<Option<String>> {
    if settings.environment != "production"
        || has_bootstrap_token(secrets)?
        || auth.has_usable_named_token(chrono::Utc::now())
    {
        return Ok(None);
    }
    let reason = "no tokens (no admin_token, agent_token, viewer_token or alert_sender_token secret, and no unrevoked, unexpired `opsloop token` record)";
    if settings.allow_insecure_defaults {
        return Ok(Some(format!(
            "production with insecure defaults (allow_insecure_defaults = true): {reason}"
        )));
    }
    Err(StartRefused(format!(
        "environment = \"production\" refuses to start with {reason}; or set allow_insecure_defaults = true to accept that"
    ))
    .into())
}

/// A configuration refusal found only once the database is read (production
/// without tokens): `run` reports it like a config error, one line and exit
/// code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartRefused(String);

/// The whole `main` of a daemon binary: config (common sections and the
/// daemon's own, through `check`) → telemetry → runtime → infrastructure →
/// `body` until SIGTERM/SIGINT. A config error is one line on stderr and exit
/// code 2, before any I/O; a runtime error is logged and exit code 1.
pub fn run<F, Fut>(
    service: &'static str,
    config_path: Option<PathBuf>,
    check: ConfigCheck,
    body: F,
) -> ExitCode
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
    let secrets = SecretStore::from_process();
    let warnings = match preflight(&config, &secrets, check) {
        Ok(warnings) => warnings,
        Err(error) => {
            let line = format!("{error:#}").replace('\n', " ");
            eprintln!("{service}: {line}");
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
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        let shutdown = CancellationToken::new();
        crate::lifecycle::cancel_on_signals(shutdown.clone());
        let infra = match Infra::connect(config, secrets, shutdown.clone()).await {
            Ok(infra) => infra,
            Err(error) => {
                if let Some(refused) = error.downcast_ref::<StartRefused>() {
                    eprintln!("{service}: {refused}");
                    return ExitCode::from(2);
                }
                tracing::error!(error = format!("{error:#}"), "cannot start");
                return ExitCode::FAILURE;
            }
        };
        crate::lifecycle::spawn_watchdog(shutdown.clone());
        let bus = infra.bus.clone();
        let result = body(infra).await;
        crate::lifecycle::systemd::stopping();
        bus.close().await;
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

/// When a daemon tells systemd `READY=1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadyWhen {
    /// Once its listeners serve (the database is connected before that):
    /// the api, whose outbox keeps events while the broker is away.
    #[default]
    Listening,
    /// Once its listeners serve and the broker is connected: daemons whose
    /// work arrives over the bus (alerter, heartbeat-worker). With the
    /// in-process bus this is the same as `Listening`.
    BrokerConnected,
}

/// How often gRPC health re-runs the readiness checks.
const HEALTH_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// A daemon's listening sockets and what it serves on them.
pub struct Endpoints {
    pub service: &'static str,
    /// The gRPC port with the daemon's services (reflection and health are
    /// already in the routes from [`crate::grpc::standard_routes`]).
    pub grpc: Option<(TcpListener, tonic::service::Routes)>,
    /// The HTTP port: [`crate::http::base_router`] plus the daemon's routes.
    pub http: (TcpListener, axum::Router),
    /// The gRPC health reporter from [`crate::grpc::standard_routes`]: its
    /// overall status (service `""`) follows `/readyz` — NOT_SERVING while
    /// the database or the broker is down, and once draining.
    pub health: Option<tonic_health::server::HealthReporter>,
    /// When `READY=1` goes to systemd.
    pub ready: ReadyWhen,
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
    let tls_settings = &infra.settings().tls;
    let tls = crate::tls::ServerTls::from_settings(tls_settings, &infra.secrets)?;
    if let Some(tls) = &tls {
        tls.spawn_reloader(shutdown.clone());
    }
    let http_tls = tls.clone().filter(|_| tls_settings.http);
    let grpc_tls = tls.clone().filter(|_| tls_settings.grpc);
    let (http_listener, router) = endpoints.http;
    // One access check for every route and method of the daemon.
    let router = crate::http::secure(router, endpoints.service, infra.auth.clone());
    if infra.auth.is_open() {
        tracing::warn!(
            service = endpoints.service,
            "no token configured (no admin_token/agent_token secret, no `opsloop token`): every port is open to anyone who can reach it"
        );
    }
    tasks.spawn(infra.auth.clone().refresh_every(shutdown.clone()));
    let http_addr = http_listener.local_addr()?;
    let mut servers: tokio::task::JoinSet<anyhow::Result<()>> = tokio::task::JoinSet::new();
    {
        let shutdown = shutdown.clone();
        let http_tls = http_tls.clone();
        servers.spawn(async move {
            crate::http::serve_tls(http_listener, router, http_tls.as_ref(), shutdown)
                .await
                .context("HTTP server")
        });
    }
    let grpc_addr = match endpoints.grpc {
        Some((listener, routes)) => {
            let routes = crate::grpc::secure(routes, endpoints.service, infra.auth.clone());
            let addr = listener.local_addr()?;
            let shutdown = shutdown.clone();
            let grpc_tls = grpc_tls.clone();
            servers.spawn(async move {
                crate::grpc::serve_tls(listener, routes, grpc_tls.as_ref(), async move {
                    shutdown.cancelled().await
                })
                .await
                .context("gRPC server")
            });
            Some(addr)
        }
        None => None,
    };
    if let Some(health) = endpoints.health {
        tasks.spawn(health_follows_readiness(
            health,
            infra.readiness(),
            shutdown.clone(),
        ));
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        grpc = grpc_addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        http = %http_addr,
        grpc_tls = grpc_addr.is_some() && grpc_tls.is_some(),
        http_tls = http_tls.is_some(),
        mutual_tls = tls.is_some() && tls_settings.client_ca_file.is_some(),
        database = infra.db.get_database_backend().as_str(),
        bus = infra.bus.kind(),
        "{} started",
        endpoints.service
    );
    {
        let bus = infra.bus.clone();
        let ready = endpoints.ready;
        let shutdown = shutdown.clone();
        let service = endpoints.service;
        tokio::spawn(async move {
            if ready == ReadyWhen::BrokerConnected && !bus.is_connected() {
                tracing::info!("waiting for the broker before telling systemd READY=1");
                while !bus.is_connected() {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                    }
                }
            }
            tracing::info!(service, "ready");
            crate::lifecycle::systemd::ready();
        });
    }

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

/// Sets the overall gRPC health (service `""`) from the readiness checks
/// every [`HEALTH_POLL`], and NOT_SERVING once shutdown begins.
async fn health_follows_readiness(
    health: tonic_health::server::HealthReporter,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use tonic_health::ServingStatus;
    let mut last = None;
    loop {
        let (ok, body) = readiness.evaluate().await;
        if last != Some(ok) {
            if ok {
                health.set_service_status("", ServingStatus::Serving).await;
                if last.is_some() {
                    tracing::info!("ready again: gRPC health SERVING");
                }
            } else {
                health
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                tracing::warn!(checks = %body["checks"], "not ready: gRPC health NOT_SERVING");
            }
            last = Some(ok);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(HEALTH_POLL) => {}
        }
    }
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::testing::{TcpProxy, via};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    async fn overall(client: &mut HealthClient<tonic::transport::Channel>) -> i32 {
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status
    }

    async fn until(
        client: &mut HealthClient<tonic::transport::Channel>,
        want: ServingStatus,
    ) -> std::time::Duration {
        let started = std::time::Instant::now();
        while overall(client).await != want as i32 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "gRPC health never became {want:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        started.elapsed()
    }

    /// `grpc.health.v1` follows `/readyz`: the database cut through a
    /// severable proxy makes the overall status NOT_SERVING, its return
    /// SERVING again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grpc_health_follows_the_database() {
        let test_db = crate::store::testing::fresh_postgres().await;
        let upstream = {
            let rest = test_db.url.split_once('@').map_or("", |(_, r)| r);
            rest.split('/')
                .next()
                .unwrap_or("127.0.0.1:5432")
                .to_owned()
        };
        let proxy = TcpProxy::start(&upstream).await.expect("proxy");
        let url = via(&test_db.url, proxy.addr);
        let options = store::PoolOptions {
            max_connections: 2,
            min_connections: 0,
            connect_timeout: std::time::Duration::from_secs(1),
            acquire_timeout: std::time::Duration::from_secs(1),
        };
        let db = store::connect(&url, &options)
            .await
            .expect("connect via proxy");
        let readiness = Readiness::new().with(Arc::new(DatabaseReadiness(db)));

        let (routes, health) = crate::grpc::standard_routes().expect("routes");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        {
            let shutdown = shutdown.clone();
            tokio::spawn(crate::grpc::serve(listener, routes, async move {
                shutdown.cancelled().await
            }));
        }
        let poller = tokio::spawn(health_follows_readiness(
            health,
            readiness,
            shutdown.clone(),
        ));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = HealthClient::new(channel);

        until(&mut client, ServingStatus::Serving).await;
        proxy.sever();
        let took = until(&mut client, ServingStatus::NotServing).await;
        assert!(took < std::time::Duration::from_secs(10), "{took:?}");
        proxy.restore();
        until(&mut client, ServingStatus::Serving).await;

        shutdown.cancel();
        poller.await.expect("join").expect("poller");
        test_db.cleanup().await;
    }
}
