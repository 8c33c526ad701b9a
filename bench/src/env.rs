//! Where the bench runs: the daemon binaries, the bus, a scratch directory
//! (removed at the end), fresh databases, and starting the api.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use opsloop_core::store::testing::{TestDb, fresh_postgres};

use crate::daemon::{Daemon, Launch, free_addr};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BusChoice {
    Auto,
    Memory,
    Rabbitmq,
}

pub(crate) struct Env {
    pub smoke: bool,
    pub bin_dir: PathBuf,
    pub rabbitmq: bool,
    pub scratch: PathBuf,
    pub pgbench: Option<PathBuf>,
    pub require_baselines: bool,
}

impl Env {
    pub(crate) fn new(
        smoke: bool,
        bin_dir: Option<PathBuf>,
        bus: BusChoice,
        require_baselines: bool,
    ) -> anyhow::Result<Self> {
        let bin_dir = match bin_dir {
            Some(dir) => dir,
            None => std::env::current_exe()?
                .parent()
                .context("binary directory")?
                .to_path_buf(),
        };
        let rabbitmq = match bus {
            BusChoice::Memory => false,
            BusChoice::Rabbitmq => true,
            BusChoice::Auto => std::net::TcpStream::connect_timeout(
                &"127.0.0.1:5672".parse().expect("address"),
                Duration::from_millis(300),
            )
            .is_ok(),
        };
        let scratch =
            std::env::temp_dir().join(format!("opsloop-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&scratch)?;
        Ok(Self {
            smoke,
            bin_dir,
            rabbitmq,
            scratch,
            pgbench: crate::pgbench::locate(),
            require_baselines,
        })
    }

    pub(crate) fn bus_name(&self) -> &'static str {
        if self.rabbitmq { "rabbitmq" } else { "memory" }
    }

    pub(crate) fn binary(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A fresh, migrated PostgreSQL database (dropped by `TestDb::cleanup`).
    pub(crate) async fn database(&self) -> TestDb {
        fresh_postgres().await
    }

    /// The environment every daemon gets: the database, the bus, logs and
    /// audit under the scratch directory.
    pub(crate) fn daemon_env(&self, db_url: &str, pool: u32) -> Vec<(String, String)> {
        let mut env = vec![
            ("OPSLOOP__DATABASE__URL".to_owned(), db_url.to_owned()),
            (
                "OPSLOOP__DATABASE__MAX_CONNECTIONS".to_owned(),
                pool.to_string(),
            ),
            (
                "OPSLOOP__AUDIT__LOG_PATH".to_owned(),
                self.scratch.join("audit.jsonl").display().to_string(),
            ),
            ("OPSLOOP__ENVIRONMENT".to_owned(), "bench".to_owned()),
            ("OPSLOOP__BUS__KIND".to_owned(), self.bus_name().to_owned()),
        ];
        if self.rabbitmq {
            // Queues the bench's daemons declare disappear a minute after it
            // ends, and share no name (nor exchange) with another run's.
            env.push(("OPSLOOP__BUS__QUEUE_EXPIRES_MS".into(), "60000".into()));
            env.push(("OPSLOOP__BUS__QUEUE_TYPE".into(), "classic".into()));
            let run = uuid::Uuid::new_v4().simple().to_string();
            env.push((
                "OPSLOOP__BUS__EXCHANGE".into(),
                format!("bench.{run}.events"),
            ));
            env.push((
                "OPSLOOP__BUS__DEAD_LETTER_EXCHANGE".into(),
                format!("bench.{run}.dlx"),
            ));
            env.push((
                "OPSLOOP__ALERTER__QUEUE".into(),
                format!("bench.{run}.alerter"),
            ));
            env.push((
                "OPSLOOP__HEARTBEAT__REACTIONS_QUEUE".into(),
                format!("bench.{run}.reactions"),
            ));
        }
        env
    }

    /// The api daemon on free loopback ports.
    pub(crate) async fn start_api(&self, db_url: &str, pool: u32) -> anyhow::Result<Daemon> {
        let grpc = free_addr()?;
        let http = free_addr()?;
        let mut env = self.daemon_env(db_url, pool);
        env.push(("OPSLOOP__API__GRPC_ADDR".into(), grpc.to_string()));
        env.push(("OPSLOOP__API__HTTP_ADDR".into(), http.to_string()));
        let binary = self.binary("opsloop-api");
        Daemon::start(Launch {
            binary: &binary,
            name: "opsloop-api",
            env,
            config: None,
            http,
            grpc: Some(grpc),
            workdir: &self.scratch,
            args: Vec::new(),
            ready_path: "/readyz",
            ready_timeout: Duration::from_secs(30),
        })
        .await
    }

    /// A gRPC channel to `addr` (one HTTP/2 connection).
    pub(crate) async fn channel(
        addr: std::net::SocketAddr,
    ) -> anyhow::Result<tonic::transport::Channel> {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))
    }

    /// Says why a baseline is skipped; an error when baselines are required.
    pub(crate) fn missing_baseline(&self, tool: &str) -> anyhow::Result<String> {
        let line = format!("baseline skipped: `{tool}` is not installed");
        if self.require_baselines {
            anyhow::bail!("{line} (--require-baselines)");
        }
        eprintln!("opsloop-bench: {line}");
        Ok(line)
    }

    /// A lean reference script (`lean_submit.sql`, `lean_claim_complete.sql`):
    /// they live outside the project (`$OPSLOOP_BENCH_LEAN_DIR`, default
    /// `../shared/bench` beside the repository) so that they cannot drift
    /// toward the code, and run unchanged. `None` (with a line saying so)
    /// when absent, an error under `--require-baselines`.
    pub(crate) fn lean_script(&self, name: &str) -> anyhow::Result<Option<String>> {
        let dir = std::env::var_os("OPSLOOP_BENCH_LEAN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bench"));
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(script) => Ok(Some(script)),
            Err(error) => {
                let line = format!(
                    "lean baseline skipped: cannot read {} ({error}); set OPSLOOP_BENCH_LEAN_DIR",
                    path.display()
                );
                if self.require_baselines {
                    anyhow::bail!("{line} (--require-baselines)");
                }
                eprintln!("opsloop-bench: {line}");
                Ok(None)
            }
        }
    }

    pub(crate) fn scratch(&self) -> &Path {
        &self.scratch
    }

    pub(crate) fn cleanup(&self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// CPU count and load average, so a reader can tell a busy machine.
pub(crate) fn host_info() -> serde_json::Value {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg": load.trim(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}
