//! The whole stack as four processes, configured the way the compose stack
//! is: `deploy/compose/opsloop.toml` as the config file (compose mounts it at
//! `/etc/opsloop/opsloop.toml`), the compose file's `environment:` entries,
//! and the secrets (`/run/secrets/<name>` in compose) through their
//! environment fallback `OPSLOOP_<NAME>`. The test's own overrides come on
//! top: loopback addresses on ports picked once (so a daemon restarted after
//! `kill -9` comes back on the same address), an isolated exchange and
//! queue names, short intervals and leases, and a scratch directory for
//! everything written to disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use opsloop_core::config::BusSettings;

use crate::DaemonProcess;

/// The four daemons: binary, config section, whether it serves gRPC.
pub const DAEMONS: [(&str, &str, bool); 4] = [
    ("opsloop-api", "API", true),
    ("opsloop-heartbeat-worker", "HEARTBEAT", false),
    ("opsloop-alerter", "ALERTER", true),
    ("opsloop-backup-agent", "BACKUP", true),
];

pub const ADMIN_TOKEN: &str = "e2e-admin-3c9d1f7a";
/// The bootstrap `viewer_token` (Prometheus scraping `/metrics`).
pub const VIEWER_TOKEN: &str = "e2e-viewer-5b1e8c2d";
pub const AGENT_TOKEN: &str = "e2e-agent-8b2e4a61";

/// A free loopback port (bound, read and released: the daemon binds it
/// next; a collision makes the daemon fail its start loudly).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The compose file's `environment:` for an opsloop service: the shared
/// `x-opsloop-env` anchor plus the service's own `OPSLOOP__…` entries, with
/// `${VAR:-default}` resolved to the default. A small line reader, enough
/// for the file's flat `KEY: value` mappings.
pub fn compose_environment(service: &str) -> Vec<(String, String)> {
    let path = repo_root().join("deploy/compose/docker-compose.yml");
    let text = std::fs::read_to_string(&path).expect("docker-compose.yml");
    let resolve = |v: &str| -> String {
        let v = v.trim().trim_matches('"').to_owned();
        match v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            Some(inner) => inner
                .split_once(":-")
                .map(|(_, d)| d.to_owned())
                .unwrap_or_default(),
            None => v,
        }
    };
    let mut out = Vec::new();
    let mut top = "";
    let mut in_service = false;
    let mut in_env = false;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let entry = match indent {
            0 => {
                top = trimmed.split(':').next().unwrap_or_default();
                in_service = false;
                in_env = false;
                false
            }
            2 if top == "x-opsloop-env" => true,
            2 => {
                in_service = top == "services" && trimmed == format!("{service}:");
                in_env = false;
                false
            }
            4 if in_service => {
                in_env = trimmed == "environment:";
                false
            }
            6 => in_service && in_env,
            _ => false,
        };
        if entry
            && let Some((k, v)) = trimmed.split_once(':')
            && k.starts_with("OPSLOOP")
        {
            out.push((k.trim().to_owned(), resolve(v)));
        }
    }
    assert!(
        out.iter().any(|(k, _)| k == "OPSLOOP__BUS__KIND"),
        "read no environment for {service} from {}",
        path.display()
    );
    out
}

/// One stack: its settings and the running processes.
pub struct Stack {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub http: BTreeMap<&'static str, u16>,
    pub grpc: BTreeMap<&'static str, u16>,
    pub env: Vec<(String, String)>,
    pub daemons: BTreeMap<&'static str, DaemonProcess>,
}

impl Stack {
    /// Settings for a stack on `db_url` and `bus`; `extra_toml` is appended
    /// to the compose config file (e.g. an `[alerter.route]`), `extra_env`
    /// comes last (wins).
    pub fn new(
        db_url: &str,
        bus: &BusSettings,
        extra_toml: &str,
        extra_env: &[(&str, String)],
    ) -> Self {
        let dir =
            std::env::temp_dir().join(format!("opsloop-stack-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("stack dir");
        let mut toml = std::fs::read_to_string(repo_root().join("deploy/compose/opsloop.toml"))
            .expect("deploy/compose/opsloop.toml");
        toml.push('\n');
        toml.push_str(extra_toml);
        let config = dir.join("opsloop.toml");
        std::fs::write(&config, toml).expect("write config");

        let mut http = BTreeMap::new();
        let mut grpc = BTreeMap::new();
        for (binary, _, has_grpc) in DAEMONS {
            http.insert(binary, free_port());
            if has_grpc {
                grpc.insert(binary, free_port());
            }
        }
        let s = |v: &str| v.to_owned();
        let mut env: Vec<(String, String)> = vec![
            // Secrets (compose: /run/secrets/<name>).
            (s("OPSLOOP_DATABASE_URL"), s(db_url)),
            (s("OPSLOOP_AMQP_URL"), bus.url.clone()),
            (s("OPSLOOP_ADMIN_TOKEN"), s(ADMIN_TOKEN)),
            (s("OPSLOOP_AGENT_TOKEN"), s(AGENT_TOKEN)),
            (s("OPSLOOP_VIEWER_TOKEN"), s(VIEWER_TOKEN)),
            // An exchange, dead-letter exchange and queues of this run only
            // (classic queues that expire: nothing piles up on the broker).
            (s("OPSLOOP__BUS__EXCHANGE"), bus.exchange.clone()),
            (
                s("OPSLOOP__BUS__DEAD_LETTER_EXCHANGE"),
                bus.dead_letter_exchange.clone(),
            ),
            (s("OPSLOOP__BUS__QUEUE_TYPE"), s("classic")),
            (s("OPSLOOP__BUS__QUEUE_EXPIRES_MS"), s("60000")),
            (s("OPSLOOP__BUS__RECONNECT_MAX_BACKOFF_MS"), s("500")),
            (
                s("OPSLOOP__ALERTER__QUEUE"),
                format!("{}.alerter", bus.exchange),
            ),
            (
                s("OPSLOOP__HEARTBEAT__REACTIONS_QUEUE"),
                format!("{}.reactions", bus.exchange),
            ),
            // Paths into the scratch directory.
            (
                s("OPSLOOP__AUDIT__LOG_PATH"),
                dir.join("audit_events.jsonl").display().to_string(),
            ),
            (
                s("OPSLOOP__BACKUP__STORE_DIR"),
                dir.join("backups").display().to_string(),
            ),
            // Short clocks.
            (s("OPSLOOP__HEARTBEAT__INTERVAL_SECS"), s("1")),
            (s("OPSLOOP__HEARTBEAT__LEASE_SECS"), s("2")),
            (s("OPSLOOP__ALERTER__LEASE_TTL_MS"), s("2000")),
            (s("OPSLOOP__ALERTER__TICK_MS"), s("200")),
            (s("OPSLOOP__SHUTDOWN__DRAIN_TIMEOUT_MS"), s("3000")),
        ];
        for (k, v) in extra_env {
            env.push(((*k).to_owned(), v.clone()));
        }
        Self {
            dir,
            config,
            http,
            grpc,
            env,
            daemons: BTreeMap::new(),
        }
    }

    fn service(binary: &str) -> &str {
        binary.trim_start_matches("opsloop-")
    }

    /// Everything `binary` is started with: compose environment, the
    /// stack's settings, its addresses.
    pub fn env_for(&self, binary: &'static str) -> Vec<(String, String)> {
        let (_, section, has_grpc) = DAEMONS
            .iter()
            .find(|(b, _, _)| *b == binary)
            .copied()
            .expect("a daemon");
        let mut env = compose_environment(Self::service(binary));
        env.retain(|(k, _)| !k.ends_with("_ADDR") && k != "OPSLOOP__AUDIT__LOG_PATH");
        env.retain(|(k, _)| k != "OPSLOOP__BACKUP__STORE_DIR");
        env.extend(self.env.iter().cloned());
        env.push((
            format!("OPSLOOP__{section}__HTTP_ADDR"),
            format!("127.0.0.1:{}", self.http[binary]),
        ));
        if binary == "opsloop-api" {
            // The status page reaches the other daemons on loopback (the
            // compose file's service names do not resolve here).
            for (key, peer) in [
                ("HEARTBEAT_URL", "opsloop-heartbeat-worker"),
                ("ALERTER_URL", "opsloop-alerter"),
                ("BACKUP_URL", "opsloop-backup-agent"),
            ] {
                env.push((
                    format!("OPSLOOP__API__STATUS__{key}"),
                    format!("http://127.0.0.1:{}", self.http[peer]),
                ));
            }
        }
        if has_grpc {
            env.push((
                format!("OPSLOOP__{section}__GRPC_ADDR"),
                format!("127.0.0.1:{}", self.grpc[binary]),
            ));
        }
        env
    }

    /// Starts (or restarts) `binary` and waits for its start line.
    /// Starts `binary`. Its ports were picked free when the stack was made;
    /// when another process took one since (tests run in parallel), the
    /// daemon is started again on newly picked ports, up to three times.
    pub fn start(&mut self, binary: &'static str) {
        let args = vec!["--config".to_owned(), self.config.display().to_string()];
        for attempt in 1..=3 {
            let env = self.env_for(binary);
            let refs: Vec<(&str, String)> =
                env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            match DaemonProcess::try_start_with_args(binary, &args, &refs, Duration::from_secs(30))
            {
                Ok(process) => {
                    self.daemons.insert(binary, process);
                    return;
                }
                Err(output) if attempt < 3 && output.contains("Address already in use") => {
                    self.http.insert(binary, free_port());
                    if let Some(port) = self.grpc.get_mut(binary) {
                        *port = free_port();
                    }
                }
                Err(output) => {
                    panic!("{binary} did not log its start line within 30s; output:\n{output}")
                }
            }
        }
    }

    pub fn start_all(&mut self) {
        for (binary, _, _) in DAEMONS {
            self.start(binary);
        }
    }

    /// `kill -9`, and waits for the process to be gone.
    pub fn kill9(&mut self, binary: &'static str) {
        let mut process = self.daemons.remove(binary).expect("running");
        process.child.kill().expect("SIGKILL");
        let _ = process.child.wait();
    }

    pub fn http_url(&self, binary: &str) -> String {
        format!("http://127.0.0.1:{}", self.http[binary])
    }

    pub fn grpc_url(&self, binary: &str) -> String {
        format!("http://127.0.0.1:{}", self.grpc[binary])
    }

    /// Waits until every running daemon answers `/readyz` 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        for binary in self.daemons.keys() {
            crate::wait_for_status(&format!("{}/readyz", self.http_url(binary)), 200, timeout)
                .await;
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.daemons.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
