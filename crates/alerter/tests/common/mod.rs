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
use opsloop_alerter::delivery::{Clock, ManualClock};
use opsloop_alerter::service::Alerter;
use opsloop_core::config::{BusSettings, ConfigSources};
use opsloop_core::daemon::Infra;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store::testing::TestDb;
use tokio_util::sync::CancellationToken;

/// One scripted answer: status, headers, body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Answer {
    pub fn ok() -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: "ok".into(),
        }
    }
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: format!("status {status}"),
        }
    }
    pub fn too_many(retry_after: &str) -> Self {
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
pub struct LocalReceiver {
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
    pub async fn start() -> Self {
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

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn script(&self, answers: Vec<Answer>) {
        self.state.lock().expect("state").script = answers.into();
    }

    pub fn always(&self, answer: Answer) {
        self.state.lock().expect("state").fallback = Some(answer);
    }

    pub fn received(&self) -> Vec<serde_json::Value> {
        self.state.lock().expect("state").received.clone()
    }

    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.state.lock().expect("state").accepted.clone()
    }

    /// Waits (bounded) until `n` requests were accepted.
    pub async fn wait_accepted(
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

pub fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
        .expect("time")
        .with_timezone(&Utc)
}

/// Secrets from an explicit environment only.
pub fn secrets(pairs: &[(&str, &str)]) -> SecretStore {
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
pub fn settings(json: serde_json::Value) -> AlerterSettings {
    serde_json::from_value(json).expect("alerter settings")
}

pub async fn alerter(
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
pub fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

pub fn posted(labels: &[(&str, &str)]) -> opsloop_alerter::model::PostableAlert {
    opsloop_alerter::model::PostableAlert {
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

/// A running `AlerterApp` and how to reach and stop it.
pub struct Running {
    pub http: String,
    pub grpc: String,
    pub infra: Infra,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

/// Starts the daemon on port 0 with `db`, `bus`, the given receivers (TOML)
/// and secrets, a route to `slack` with group_wait 0s.
pub async fn spawn_app(
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

pub async fn stop(app: Running) {
    app.shutdown.cancel();
    app.task.await.expect("joins").expect("stops cleanly");
}
