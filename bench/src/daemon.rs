//! Daemons under test, run as the release binaries on loopback ports the
//! bench picks, with their logs in a scratch directory; readiness polled on
//! `/readyz`; resident memory and CPU sampled from `/proc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use opsloop_core::telemetry::ProcessStats;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// A free loopback port (bound and released; the daemon binds it next).
pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?)
}

/// The status code of `GET path` on `addr`, if it answered.
pub(crate) async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await.ok()?;
        let text = String::from_utf8_lossy(&head[..n]);
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// One daemon process.
pub(crate) struct Daemon {
    pub name: String,
    pub pid: u32,
    pub grpc: Option<SocketAddr>,
    /// The HTTP address (health, `/metrics`).
    pub http: SocketAddr,
    /// Spawn to the first `200` from `/readyz`.
    pub ready_after: Duration,
    pub log: PathBuf,
    child: Child,
}

/// How to start a daemon.
pub(crate) struct Launch<'a> {
    pub binary: &'a Path,
    pub name: &'a str,
    pub env: Vec<(String, String)>,
    pub config: Option<&'a Path>,
    /// Further command-line arguments.
    pub args: Vec<String>,
    pub http: SocketAddr,
    pub grpc: Option<SocketAddr>,
    pub workdir: &'a Path,
    /// Polled until it answers 200 (`/readyz` for opsloop's daemons).
    pub ready_path: &'a str,
    pub ready_timeout: Duration,
}

impl Daemon {
    pub(crate) async fn start(launch: Launch<'_>) -> anyhow::Result<Self> {
        if !launch.binary.exists() {
            bail!(
                "{} not found (build it: cargo build --release --bins)",
                launch.binary.display()
            );
        }
        let log = launch.workdir.join(format!("{}.log", launch.name));
        let out = std::fs::File::create(&log).context("creating the daemon log")?;
        let err = out.try_clone()?;
        let mut command = Command::new(launch.binary);
        if let Some(config) = launch.config {
            command.arg("--config").arg(config);
        }
        command
            .args(&launch.args)
            .current_dir(launch.workdir)
            .envs(launch.env)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", launch.binary.display()))?;
        let pid = child.id().context("daemon pid")?;
        loop {
            if http_status(launch.http, launch.ready_path).await == Some(200) {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited with {status} before it was ready; log:\n{}",
                    launch.name,
                    tail(&log)
                );
            }
            if started.elapsed() > launch.ready_timeout {
                let _ = child.kill().await;
                bail!(
                    "{} not ready within {:?}; log:\n{}",
                    launch.name,
                    launch.ready_timeout,
                    tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Self {
            name: launch.name.to_owned(),
            pid,
            grpc: launch.grpc,
            http: launch.http,
            ready_after: started.elapsed(),
            log,
            child,
        })
    }

    pub(crate) fn stats(&self) -> Option<ProcessStats> {
        ProcessStats::read_pid(&self.pid.to_string())
    }

    pub(crate) fn sampler(&self) -> Sampler {
        Sampler::start(self.pid)
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                self.child.kill().await?;
                bail!("{} did not stop within 10 s of SIGTERM", self.name)
            }
        }
    }
}

/// The last lines of a log, for error messages.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Resident memory and CPU of one process over a phase.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ResourceUse {
    pub rss_start_mib: f64,
    pub rss_max_mib: f64,
    pub rss_end_mib: f64,
    /// CPU time over wall time (100 = one core busy).
    pub cpu_percent: f64,
}

/// Samples a process every 100 ms until [`Sampler::finish`].
pub(crate) struct Sampler {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<ResourceUse>,
}

const MIB: f64 = 1024.0 * 1024.0;

impl Sampler {
    pub(crate) fn start(pid: u32) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let pid = pid.to_string();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let first = ProcessStats::read_pid(&pid);
            let mut usage = ResourceUse::default();
            let mut last = first;
            if let Some(s) = first {
                usage.rss_start_mib = s.rss_bytes as f64 / MIB;
                usage.rss_max_mib = usage.rss_start_mib;
            }
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                if let Some(s) = ProcessStats::read_pid(&pid) {
                    usage.rss_max_mib = usage.rss_max_mib.max(s.rss_bytes as f64 / MIB);
                    last = Some(s);
                }
            }
            if let Some(s) = ProcessStats::read_pid(&pid).or(last) {
                usage.rss_end_mib = s.rss_bytes as f64 / MIB;
                usage.rss_max_mib = usage.rss_max_mib.max(usage.rss_end_mib);
                if let Some(f) = first {
                    let wall = started.elapsed().as_secs_f64();
                    if wall > 0.0 {
                        usage.cpu_percent = (s.cpu_seconds - f.cpu_seconds) / wall * 100.0;
                    }
                }
            }
            usage
        });
        Self { stop, task }
    }

    pub(crate) async fn finish(self) -> ResourceUse {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}
