//! Test support: a real local HTTP receiver that records what it gets and
//! answers from a script, and an alerter pipeline over a fresh database.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use opsloop_alerter::AlerterApp;
use opsloop_alerter::config::AlerterSettings;
use opsloop_alerter::delivery::Clock;
use opsloop_alerter::service::Alerter;
use opsloop_core::clock::ManualClock;
use opsloop_core::config::{BusSettings, ConfigSources};
use opsloop_core::daemon::Infra;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store::testing::TestDb;
use tokio_util::sync::CancellationToken;

/// One scripted answer: status, headers, body.
#[derive(Clone, Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Answer {
    pub(crate) fn ok() -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: "ok".into(),
        }
    }
    pub(crate) fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: format!("status {status}"),
        }
    }
    pub(crate) fn too_many(retry_after: &str) -> Self {
        Self {
            status: 429,
            headers: vec![("retry-after", retry_after.to_owned())],
            body: "rate limited".into(),
        }
    }
}

#[derive(Default)]
struct ReceiverState {
    script: VecDeque<Answer>,
    /// Answer when the script is exhausted.
    fallback: Option<Answer>,
    received: Vec<serde_json::Value>,
    /// Bodies of requests answered with 2xx.
    accepted: Vec<serde_json::Value>,
}

/// A Slack-shaped (or any JSON) webhook on 127.0.0.1:0.
#[derive(Clone)]
pub(crate) struct LocalReceiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
    stop: CancellationToken,
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    _headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let answer = {
        let mut s = state.lock().expect("receiver state");
        s.received.push(json.clone());
        let answer = s
            .script
            .pop_front()
            .or_else(|| s.fallback.clone())
            .unwrap_or_else(Answer::ok);
        if answer.status < 300 {
            s.accepted.push(json);
        }
        answer
    };
    let mut response = (
        StatusCode::from_u16(answer.status).expect("status"),
        answer.body.clone(),
    )
        .into_response();
    for (name, value) in answer.headers {
        response
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    response
}

impl LocalReceiver {
    pub(crate) async fn start() -> Self {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state.clone());
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .expect("receiver serves");
        });
        Self { addr, state, stop }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub(crate) fn script(&self, answers: Vec<Answer>) {
        self.state.lock().expect("state").script = answers.into();
    }

    pub(crate) fn always(&self, answer: Answer) {
        self.state.lock().expect("state").fallback = Some(answer);
    }

    pub(crate) fn received(&self) -> Vec<serde_json::Value> {
        self.state.lock().expect("state").received.clone()
    }

    pub(crate) fn accepted(&self) -> Vec<serde_json::Value> {
        self.state.lock().expect("state").accepted.clone()
    }

    /// Waits (bounded) until `n` requests were accepted.
    pub(crate) async fn wait_accepted(
        &self,
        n: usize,
        within: std::time::Duration,
    ) -> Vec<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let accepted = self.accepted();
            if accepted.len() >= n || tokio::time::Instant::now() >= deadline {
                return accepted;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for LocalReceiver {
    fn drop(&mut self) {
        if Arc::strong_count(&self.state) <= 2 {
            self.stop.cancel();
        }
    }
}

pub(crate) fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
        .expect("time")
        .with_timezone(&Utc)
}

/// Secrets from an explicit environment only.
pub(crate) fn secrets(pairs: &[(&str, &str)]) -> SecretStore {
    let empty = std::env::temp_dir().join(format!("opsloop-no-secrets-{}", uuid::Uuid::new_v4()));
    SecretStore::with_sources(
        None,
        &empty,
        pairs
            .iter()
            .map(|(k, v)| (SecretStore::env_name(k), (*v).to_owned()))
            .collect::<Vec<_>>(),
    )
}

/// Settings from a JSON object (the `[alerter]` section's shape).
pub(crate) fn settings(json: serde_json::Value) -> AlerterSettings {
    serde_json::from_value(json).expect("alerter settings")
}

pub(crate) async fn alerter(
    settings: &AlerterSettings,
    db: sea_orm::DatabaseConnection,
    secrets: &SecretStore,
    clock: Arc<ManualClock>,
) -> Arc<Alerter> {
    let clock: Arc<dyn Clock> = clock;
    Alerter::start(settings, db, secrets, "test", clock, None)
        .await
        .expect("alerter starts")
}

/// Lines of a JSON-lines file (empty when absent).
pub(crate) fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

pub(crate) fn posted(labels: &[(&str, &str)]) -> opsloop_alerter::model::PostableAlert {
    opsloop_alerter::model::PostableAlert {
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

/// A running `AlerterApp` and how to reach and stop it.
pub(crate) struct Running {
    pub http: String,
    pub grpc: String,
    pub infra: Infra,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

/// Starts the daemon on port 0 with `db`, `bus`, the given receivers (TOML)
/// and secrets, a route to `slack` with group_wait 0s.
pub(crate) async fn spawn_app(
    db: &TestDb,
    bus: BusSettings,
    receivers_toml: &str,
    secrets: Vec<(String, String)>,
) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("opsloop.toml");
    let toml = format!(
        r#"
environment = "test"
[database]
url = "{db_url}"
[audit]
log_path = "{audit}"
[alerter]
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
tick_ms = 50
queue = "{queue}"
[alerter.route]
receiver = "slack"
group_wait = "0s"
group_interval = "1s"
{receivers_toml}
"#,
        db_url = db.url,
        audit = dir.path().join("audit.jsonl").display(),
        queue = opsloop_core::bus::testing::queue_name("alerter"),
    );
    std::fs::write(&path, toml).expect("write config");
    let mut config = opsloop_core::config::load(&ConfigSources {
        file: Some(path),
        use_default_file: false,
        env: Some(Default::default()),
    })
    .expect("config");
    config.settings.bus = bus;
    let shutdown = CancellationToken::new();
    let secrets = SecretStore::with_sources(None, &dir.path().join("no-secrets"), secrets);
    let infra = Infra::connect(config, secrets, shutdown.clone())
        .await
        .expect("infra");
    let app = AlerterApp::build(infra.clone()).await.expect("app builds");
    let http = format!("http://{}", app.http_addr().expect("http addr"));
    let grpc = format!("http://{}", app.grpc_addr().expect("grpc addr"));
    let task = tokio::spawn(app.run_until_stopped());
    Running {
        http,
        grpc,
        infra,
        shutdown,
        task,
        _dir: dir,
    }
}

pub(crate) async fn stop(app: Running) {
    app.shutdown.cancel();
    app.task.await.expect("joins").expect("stops cleanly");
}

/// The real `opsloop-alerter` binary, started with a config file.
pub(crate) struct Daemon {
    pub child: tokio::process::Child,
    /// `http://addr` of its HTTP listener.
    pub http: String,
}

/// Starts the binary with `config` and extra environment (secrets), and
/// waits (bounded) for its start line.
pub(crate) async fn start_daemon(config: &std::path::Path, env: &[(&str, &str)]) -> Daemon {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_opsloop-alerter"));
    command
        .arg("--config")
        .arg(config)
        .env_remove("OPSLOOP_ADMIN_TOKEN")
        .env_remove("OPSLOOP_AGENT_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("the alerter binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let pattern = regex::Regex::new(r#""http":"([^"]+)""#).expect("regex");
    let http = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if line.contains("alerter started")
                && let Some(captures) = pattern.captures(&line)
            {
                return captures[1].to_owned();
            }
        }
        panic!("the alerter exited before its start line");
    })
    .await
    .expect("start line within 60 s");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Daemon {
        child,
        http: format!("http://{http}"),
    }
}

/// SIGKILL, and waits until the process is gone.
pub(crate) async fn kill9(mut daemon: Daemon) {
    daemon.child.kill().await.expect("SIGKILL");
}

/// SIGTERM; returns how long the process took to exit (bounded by
/// `within`), and its status.
pub(crate) async fn terminate(
    daemon: &mut Daemon,
    within: std::time::Duration,
) -> (std::time::Duration, std::process::ExitStatus) {
    let pid = daemon.child.id().expect("pid");
    let sent = std::time::Instant::now();
    let status = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await
        .expect("kill -TERM");
    assert!(status.success(), "kill -TERM {pid}");
    let exited = tokio::time::timeout(within, daemon.child.wait())
        .await
        .expect("the alerter exits after SIGTERM")
        .expect("wait");
    (sent.elapsed(), exited)
}

/// The config of a storm: one webhook receiver `hook` (secret
/// `storm_webhook_url`), one group per alertname, group_wait 0s,
/// group_interval 1s, at most `max_in_flight` deliveries unconfirmed.
pub(crate) fn storm_config(
    dir: &std::path::Path,
    db_url: &str,
    drain_ms: u128,
    max_in_flight: usize,
) -> std::path::PathBuf {
    let config = dir.join("opsloop.toml");
    std::fs::write(
        &config,
        format!(
            r#"
environment = "storm"
[database]
url = "{db_url}"
[telemetry]
log_format = "json"
log_level = "info"
[audit]
log_path = "{audit}"
[shutdown]
drain_timeout_ms = {drain_ms}
[alerter]
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
tick_ms = 100
lease_ttl_ms = 2000
max_in_flight_per_receiver = {max_in_flight}
[alerter.route]
receiver = "hook"
group_by = ["alertname"]
group_wait = "0s"
group_interval = "1s"
repeat_interval = "4h"
[[alerter.receivers]]
name = "hook"
kind = "webhook"
secret = "storm_webhook_url"
min_interval_ms = 0
"#,
            audit = dir.join("audit.jsonl").display(),
        ),
    )
    .expect("config");
    config
}

/// The storm's alert `i`: its own group.
pub(crate) fn storm_alert(i: u64) -> serde_json::Value {
    serde_json::json!({"labels": {"alertname": format!("Storm{i}"), "service": "storm"},
           "annotations": {"summary": "storm"}})
}

/// What a [`CountingReceiver`] saw.
#[derive(Default)]
struct Counting {
    delay: std::time::Duration,
    open: std::sync::atomic::AtomicUsize,
    peak_open: std::sync::atomic::AtomicUsize,
    connections: std::sync::atomic::AtomicUsize,
    active: std::sync::atomic::AtomicUsize,
    peak_active: std::sync::atomic::AtomicUsize,
    /// Per alertname, requests that arrived naming it (counted on arrival,
    /// before the answer: a request whose sender dies waiting counts).
    arrived: Mutex<std::collections::HashMap<String, u32>>,
}

fn raise_peak(peak: &std::sync::atomic::AtomicUsize, now: usize) {
    peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
}

/// A TCP stream that counts itself open until dropped.
struct CountedStream {
    stream: tokio::net::TcpStream,
    counting: Arc<Counting>,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.counting
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl tokio::io::AsyncRead for CountedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

struct CountingListener {
    inner: tokio::net::TcpListener,
    counting: Arc<Counting>,
}

impl axum::serve::Listener for CountingListener {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let c = &self.counting;
                    c.connections
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let open = c.open.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    raise_peak(&c.peak_open, open);
                    return (
                        CountedStream {
                            stream,
                            counting: c.clone(),
                        },
                        addr,
                    );
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

async fn count_request(
    State(counting): State<Arc<Counting>>,
    body: axum::body::Bytes,
) -> &'static str {
    use std::sync::atomic::Ordering::SeqCst;
    let active = counting.active.fetch_add(1, SeqCst) + 1;
    raise_peak(&counting.peak_active, active);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    {
        let mut arrived = counting.arrived.lock().expect("arrived");
        for alert in json["alerts"].as_array().into_iter().flatten() {
            if let Some(name) = alert["labels"]["alertname"].as_str() {
                *arrived.entry(name.to_owned()).or_default() += 1;
            }
        }
    }
    // Decremented even when the sender goes away mid-answer.
    struct Leave(Arc<Counting>);
    impl Drop for Leave {
        fn drop(&mut self) {
            self.0
                .active
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let _leave = Leave(counting.clone());
    tokio::time::sleep(counting.delay).await;
    "ok"
}

/// A webhook on 127.0.0.1:0 that answers after `delay` and counts its
/// concurrently open connections and requests (and their peaks) and, per
/// alertname, the requests that named it.
#[derive(Clone)]
pub(crate) struct CountingReceiver {
    pub url: String,
    counting: Arc<Counting>,
}

impl CountingReceiver {
    pub(crate) async fn start(delay: std::time::Duration) -> Self {
        let counting = Arc::new(Counting {
            delay,
            ..Counting::default()
        });
        let inner = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = inner.local_addr().expect("addr");
        let app = Router::new()
            .route("/hook", post(count_request))
            .with_state(counting.clone());
        let listener = CountingListener {
            inner,
            counting: counting.clone(),
        };
        tokio::spawn(async move { axum::serve(listener, app).await.expect("receiver serves") });
        Self {
            url: format!("http://{addr}/hook"),
            counting,
        }
    }

    /// Per alertname, the requests that named it.
    pub(crate) fn arrived(&self) -> std::collections::HashMap<String, u32> {
        self.counting.arrived.lock().expect("arrived").clone()
    }

    /// Distinct alertnames that arrived.
    pub(crate) fn distinct(&self) -> usize {
        self.counting.arrived.lock().expect("arrived").len()
    }

    /// Alertnames that arrived more than once, sorted.
    pub(crate) fn repeated(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .arrived()
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(name, _)| name)
            .collect();
        names.sort();
        names
    }

    /// Most connections open at once.
    pub(crate) fn peak_connections(&self) -> usize {
        self.counting
            .peak_open
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections accepted in all.
    pub(crate) fn connections(&self) -> usize {
        self.counting
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Most requests being answered at once.
    pub(crate) fn peak_requests(&self) -> usize {
        self.counting
            .peak_active
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Two more group intervals (the storm tests' is 1 s) in which the
    /// alertnames heard more than once stay within `allowed`: a repeat would
    /// show up by then.
    pub(crate) async fn repeats_stay_within(&self, allowed: &std::collections::BTreeSet<String>) {
        opsloop_core::testing::stays(
            "no repeats beyond the allowed ones",
            std::time::Duration::from_millis(2_500),
            || async {
                let repeated = self.repeated();
                opsloop_core::testing::holds(
                    repeated.iter().all(|name| allowed.contains(name)),
                    || format!("repeated {repeated:?}, allowed {allowed:?}"),
                )
            },
        )
        .await;
    }

    /// Waits (bounded) until `n` distinct alertnames arrived; returns how
    /// many did.
    pub(crate) async fn wait_distinct(&self, n: usize, within: std::time::Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        while self.distinct() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.distinct()
    }
}

/// Group keys of the groups the notification log records as sent.
pub(crate) async fn logged_groups(db: &sea_orm::DatabaseConnection) -> Vec<String> {
    use sea_orm::ConnectionTrait;
    db.query_all_raw(sea_orm::Statement::from_string(
        db.get_database_backend(),
        "SELECT group_key FROM notification_log WHERE status = 'sent'",
    ))
    .await
    .expect("notification log")
    .iter()
    .map(|row| row.try_get::<String>("", "group_key").expect("group_key"))
    .collect()
}

/// An open-loop storm: alert `i` posted alone at `rate` per second, as
/// Prometheus would, each post's 200 recorded.
pub(crate) struct Storm {
    accepted: Arc<Mutex<Vec<bool>>>,
    posted: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Storm {
    pub(crate) fn start(http: reqwest::Client, url: String, alerts: u64, rate: u64) -> Self {
        let accepted = Arc::new(Mutex::new(vec![false; alerts as usize]));
        let posted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = {
            let (accepted, posted) = (accepted.clone(), posted.clone());
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let mut posts = tokio::task::JoinSet::new();
                for i in 0..alerts {
                    tokio::time::sleep_until(
                        started + std::time::Duration::from_millis(i * 1000 / rate),
                    )
                    .await;
                    posted.store(i + 1, std::sync::atomic::Ordering::Relaxed);
                    let (http, url, accepted) = (http.clone(), url.clone(), accepted.clone());
                    posts.spawn(async move {
                        let ok = matches!(
                            http.post(&url).json(&serde_json::json!([storm_alert(i)])).send().await,
                            Ok(r) if r.status() == 200
                        );
                        accepted.lock().expect("accepted")[i as usize] = ok;
                    });
                    while posts.try_join_next().is_some() {}
                }
                while posts.join_next().await.is_some() {}
            })
        };
        Self {
            accepted,
            posted,
            task,
        }
    }

    /// Alerts posted so far.
    pub(crate) fn posted(&self) -> u64 {
        self.posted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits for the last post; returns the alerts not answered with 200.
    pub(crate) async fn refused(self) -> Vec<u64> {
        self.task.await.expect("storm sender");
        let accepted = self.accepted.lock().expect("accepted");
        (0..accepted.len() as u64)
            .filter(|i| !accepted[*i as usize])
            .collect()
    }
}

/// Posts the given storm alerts again, 200 at a time (what Prometheus does
/// with alerts a stopped alerter did not take).
pub(crate) async fn repost(http: &reqwest::Client, url: &str, alerts: &[u64]) {
    for chunk in alerts.chunks(200) {
        let body: Vec<serde_json::Value> = chunk.iter().map(|i| storm_alert(*i)).collect();
        let response = http.post(url).json(&body).send().await.expect("re-post");
        assert_eq!(response.status(), 200, "re-post to the restarted alerter");
    }
}
