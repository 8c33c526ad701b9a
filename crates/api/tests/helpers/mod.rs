//! Starts the real `ApiApp` on port 0 against a fresh database and a bus,
//! and hands tests gRPC clients generated from the proto.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opsloop_api::ApiApp;
use opsloop_core::audit::AuditLog;
use opsloop_core::bus::Bus;
use opsloop_core::bus::memory::MemoryBus;
use opsloop_core::config::{ConfigSources, load};
use opsloop_core::daemon::Infra;
use opsloop_core::proto::v1 as pb;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store::testing::{TestDb, fresh_postgres, fresh_sqlite};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Postgres,
    Sqlite,
}

pub(crate) struct TestApp {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub db: TestDb,
    pub channel: Channel,
    pub shutdown: CancellationToken,
    pub audit_dir: tempfile::TempDir,
    /// The tokens this api accepts (tests call `refresh` instead of waiting).
    pub auth: opsloop_core::auth::Auth,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub(crate) struct Options {
    pub backend: Backend,
    pub bus: Option<Arc<dyn Bus>>,
    pub agent_token: Option<String>,
    pub admin_token: Option<String>,
    /// More config, as `OPSLOOP__…` variables.
    pub extra_config: Vec<(&'static str, String)>,
    /// More secrets, as `OPSLOOP_<NAME>` variables.
    pub extra_secrets: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            backend: Backend::Postgres,
            bus: None,
            agent_token: None,
            admin_token: None,
            extra_config: Vec::new(),
            extra_secrets: Vec::new(),
        }
    }
}

pub(crate) async fn spawn(backend: Backend) -> TestApp {
    spawn_with(Options {
        backend,
        ..Default::default()
    })
    .await
}

pub(crate) async fn spawn_with(options: Options) -> TestApp {
    let db = match options.backend {
        Backend::Postgres => fresh_postgres().await,
        Backend::Sqlite => fresh_sqlite().await,
    };
    let audit_dir = tempfile::tempdir().expect("tempdir");
    let mut env = vec![
        ("OPSLOOP__API__GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__API__HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__API__OUTBOX_IDLE_MS", "50".to_owned()),
        ("OPSLOOP__DATABASE__URL", db.url.clone()),
        (
            "OPSLOOP__AUDIT__LOG_PATH",
            audit_dir.path().join("audit.jsonl").display().to_string(),
        ),
    ];
    env.extend(options.extra_config.iter().cloned());
    let config = load(&ConfigSources::env_only(env)).expect("config");
    let mut secrets_env = Vec::new();
    if let Some(t) = &options.agent_token {
        secrets_env.push(("OPSLOOP_AGENT_TOKEN".to_owned(), t.clone()));
    }
    if let Some(t) = &options.admin_token {
        secrets_env.push(("OPSLOOP_ADMIN_TOKEN".to_owned(), t.clone()));
    }
    secrets_env.extend(options.extra_secrets.iter().cloned());
    let shutdown = CancellationToken::new();
    let audit = Arc::new(AuditLog::new(&config.settings.audit));
    let secrets = SecretStore::with_sources(None, audit_dir.path(), secrets_env);
    let auth = opsloop_core::auth::Auth::from_secrets(&secrets, Some(db.db.clone()))
        .expect("token secrets");
    auth.refresh().await.expect("api_tokens readable");
    let infra = Infra {
        config,
        db: db.db.clone(),
        bus: options.bus.unwrap_or_else(|| Arc::new(MemoryBus::new())),
        secrets,
        audit,
        auth: auth.clone(),
        shutdown: shutdown.clone(),
    };
    let app = ApiApp::build(infra).await.expect("build");
    let grpc = app.grpc_addr().expect("grpc addr");
    let http = app.http_addr().expect("http addr");
    let task = tokio::spawn(app.run_until_stopped());
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect");
    TestApp {
        grpc,
        http,
        db,
        channel,
        shutdown,
        audit_dir,
        auth,
        task,
    }
}

impl TestApp {
    pub(crate) fn proposals(&self) -> pb::proposal_service_client::ProposalServiceClient<Channel> {
        pb::proposal_service_client::ProposalServiceClient::new(self.channel.clone())
    }
    pub(crate) fn missions(&self) -> pb::mission_service_client::MissionServiceClient<Channel> {
        pb::mission_service_client::MissionServiceClient::new(self.channel.clone())
    }
    pub(crate) fn events(&self) -> pb::event_service_client::EventServiceClient<Channel> {
        pb::event_service_client::EventServiceClient::new(self.channel.clone())
    }
    pub(crate) fn policy(&self) -> pb::policy_service_client::PolicyServiceClient<Channel> {
        pb::policy_service_client::PolicyServiceClient::new(self.channel.clone())
    }
    pub(crate) fn ops(&self) -> pb::ops_service_client::OpsServiceClient<Channel> {
        pb::ops_service_client::OpsServiceClient::new(self.channel.clone())
    }
    pub(crate) fn tokens(&self) -> pb::token_service_client::TokenServiceClient<Channel> {
        pb::token_service_client::TokenServiceClient::new(self.channel.clone())
    }
    pub(crate) fn triggers(&self) -> pb::trigger_service_client::TriggerServiceClient<Channel> {
        pb::trigger_service_client::TriggerServiceClient::new(self.channel.clone())
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
        self.db.cleanup().await;
    }
}

pub(crate) fn step(kind: &str) -> pb::StepSpec {
    pb::StepSpec {
        kind: kind.into(),
        payload_json: r#"{"text":"hi"}"#.into(),
        max_attempts: None,
    }
}

pub(crate) fn submit(kinds: &[&str], dedupe_key: Option<&str>) -> pb::SubmitProposalRequest {
    pb::SubmitProposalRequest {
        title: "test proposal".into(),
        source: pb::ProposalSource::Api as i32,
        agent: "tester".into(),
        dedupe_key: dedupe_key.map(str::to_owned),
        steps: kinds.iter().map(|k| step(k)).collect(),
        parallel: false,
        metadata_json: String::new(),
    }
}

pub(crate) fn claim(worker: &str, kinds: &[&str]) -> pb::ClaimStepRequest {
    pb::ClaimStepRequest {
        worker_id: worker.into(),
        kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
        lease_seconds: 0,
        ..Default::default()
    }
}

pub(crate) fn complete(step: &pb::Step, worker: &str) -> pb::CompleteStepRequest {
    pb::CompleteStepRequest {
        step_id: step.id.clone(),
        worker_id: worker.into(),
        attempt: step.attempt,
        result_json: r#"{"done":true}"#.into(),
        cost_usd: Some(0.25),
        usage: Vec::new(),
    }
}

pub(crate) fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    request
}
