//! Support for the end-to-end tests: locating the daemon binaries, starting
//! them as processes with an isolated database and exchange, reading their
//! start line, a small HTTP client, [`stack::Stack`]: the four daemons
//! as processes with the compose file's settings, and [`webdriver`]: a
//! headless Chromium for page tests.

pub mod stack;
pub mod webdriver;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// `target/<profile>/<name>`, next to the test executable's `deps/` folder.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A daemon started as a child process; killed when dropped.
pub struct DaemonProcess {
    pub child: Child,
    /// The parsed JSON start line.
    pub start_line: serde_json::Value,
    /// Every stdout line, as it arrives.
    pub lines: mpsc::Receiver<String>,
    /// The lines printed before the start line.
    pub early_lines: Vec<String>,
    /// Lines read by [`DaemonProcess::wait_for_line`], kept for
    /// [`DaemonProcess::drain_output`].
    read: std::sync::Mutex<Vec<String>>,
}

impl DaemonProcess {
    /// Starts `binary` with `env` and waits (up to `timeout`) for its
    /// "started" log line.
    pub fn start(binary: &str, env: &[(&str, String)], timeout: Duration) -> Self {
        Self::start_with_args(binary, &[], env, timeout)
    }

    /// [`DaemonProcess::start`] with command-line arguments (e.g. `--config`).
    pub fn start_with_args(
        binary: &str,
        args: &[String],
        env: &[(&str, String)],
        timeout: Duration,
    ) -> Self {
        Self::try_start_with_args(binary, args, env, timeout).unwrap_or_else(|output| {
            panic!("{binary} did not log its start line within {timeout:?}; output:\n{output}")
        })
    }

    /// [`DaemonProcess::start_with_args`], answering the process's output
    /// instead of panicking when it exits (or stays silent) before its start
    /// line.
    pub fn try_start_with_args(
        binary: &str,
        args: &[String],
        env: &[(&str, String)],
        timeout: Duration,
    ) -> Result<Self, String> {
        let mut command = Command::new(self::binary(binary));
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn daemon");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let tx_err = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx_err.send(format!("stderr: {line}")).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + timeout;
        let start_message = format!("{} started", binary.trim_start_matches("opsloop-"));
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                        && json["message"].as_str() == Some(start_message.as_str())
                    {
                        return Ok(Self {
                            child,
                            start_line: json,
                            lines: rx,
                            early_lines: seen,
                            read: std::sync::Mutex::new(Vec::new()),
                        });
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(seen.join("\n"));
                }
            }
        }
    }

    /// Every line the process printed since its start line; after the
    /// process has exited this reads until its output is closed.
    pub fn drain_output(&self) -> String {
        let mut lines = std::mem::take(&mut *self.read.lock().expect("lines lock"));
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            lines.push(line);
        }
        lines.join("\n")
    }

    /// Reads the output until a line satisfies `wanted` and returns it;
    /// panics after `timeout` naming `what`. Blocking: call it from
    /// `tokio::task::block_in_place` in async tests. The lines read stay in
    /// [`DaemonProcess::drain_output`]'s answer.
    pub fn wait_for_line(
        &self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = std::time::Instant::now() + timeout;
        let mut read = self.read.lock().expect("lines lock");
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = wanted(&line);
                    read.push(line.clone());
                    if found {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line showed {what} within {timeout:?}; output since the start line:\n{}",
                    read.join("\n")
                ),
            }
        }
    }

    /// The `http` address from the start line.
    pub fn http_addr(&self) -> String {
        self.start_line["http"]
            .as_str()
            .expect("start line has http")
            .to_owned()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM failed");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("process did not exit within {timeout:?} of SIGTERM");
            }
            // A synchronous wait for a child process (also called from Drop),
            // outside any runtime.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `url`, returning status and body; retries connection errors until
/// `timeout`.
pub async fn get(url: &str, timeout: Duration) -> (u16, String) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match client.get(url).timeout(Duration::from_secs(5)).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                return (status, body);
            }
            Err(error) if tokio::time::Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("GET {url}: {error}"),
        }
    }
}

/// Polls `url` until it answers `want`, up to `timeout`; the last body.
pub async fn wait_for_status(url: &str, want: u16, timeout: Duration) -> String {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (status, body) = get(url, timeout).await;
        if status == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} answered {status}, not {want}, for {timeout:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The infrastructure of one daemon run inside the test's process on the
/// in-process bus: its configuration from `env` (`OPSLOOP__…` pairs) over
/// the defaults, plus an audit log under `dir`; `secrets` as `OPSLOOP_<NAME>`
/// variables (the token table read once). Stops when `shutdown` is
/// cancelled.
pub async fn in_process_infra(
    env: Vec<(&str, String)>,
    secrets: Vec<(String, String)>,
    dir: &std::path::Path,
    audit_name: &str,
    shutdown: tokio_util::sync::CancellationToken,
) -> opsloop_core::daemon::Infra {
    use opsloop_core::config::{ConfigSources, load};
    let mut env = env;
    env.push((
        "OPSLOOP__AUDIT__LOG_PATH",
        dir.join(audit_name).display().to_string(),
    ));
    let config = load(&ConfigSources::env_only(env)).expect("the test's configuration");
    let secrets = opsloop_core::secrets::SecretStore::with_sources(None, dir, secrets);
    let mut infra = opsloop_core::daemon::Infra::connect(config, secrets, shutdown)
        .await
        .expect("the daemon's infrastructure (database up?)");
    infra.bus = std::sync::Arc::new(opsloop_core::bus::memory::MemoryBus::new());
    infra
}
