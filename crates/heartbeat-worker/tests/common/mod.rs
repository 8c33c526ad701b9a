//! What the heartbeat-worker's test binaries share: the real daemon, built
//! from a configuration file the way `main` builds it, on a database the
//! test made, listening on a port the OS chose.

use std::net::SocketAddr;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The admin token the started daemon accepts.
pub(crate) const ADMIN_TOKEN: &str = "s3cret";

/// A heartbeat daemon running in this process.
pub(crate) struct RunningHeartbeat {
    /// Its HTTP port.
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl RunningHeartbeat {
    /// Starts the daemon on `database_url` as `instance_id` with a one-hour
    /// tick (tests drive what they need); `extra` is appended to the TOML
    /// after the `[heartbeat]` section (e.g. `[[heartbeat.probes]]` tables).
    pub(crate) async fn start(database_url: &str, instance_id: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("opsloop.toml");
        std::fs::write(
            &path,
            format!(
                "environment = \"test\"\n[database]\nurl = \"{database_url}\"\n[audit]\nlog_path = \"{}\"\n\
                 [heartbeat]\nhttp_addr = \"127.0.0.1:0\"\ninstance_id = \"{instance_id}\"\ninterval_secs = 3600\n{extra}",
                dir.path().join("audit.jsonl").display()
            ),
        )
        .expect("config");
        let config = opsloop_core::config::load(&opsloop_core::config::ConfigSources {
            file: Some(path),
            use_default_file: false,
            env: Some(Default::default()),
        })
        .expect("config loads");
        let shutdown = CancellationToken::new();
        let secrets = opsloop_core::secrets::SecretStore::with_sources(
            None,
            &dir.path().join("none"),
            vec![("OPSLOOP_ADMIN_TOKEN".into(), ADMIN_TOKEN.into())],
        );
        let infra = opsloop_core::daemon::Infra::connect(config, secrets, shutdown.clone())
            .await
            .expect("infra");
        let app = opsloop_heartbeat_worker::HeartbeatApp::build(infra)
            .await
            .expect("app");
        let addr = app.http_addr().expect("addr");
        let task = tokio::spawn(app.run_until_stopped());
        Self {
            addr,
            shutdown,
            task,
            _dir: dir,
        }
    }

    /// Cancels the daemon and waits for a clean stop.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("joins").expect("stops cleanly");
    }
}
