//! The daemon as `opsloop dev` runs it — its own SQLite database as the
//! target, defaults otherwise — started on port 0 and driven over gRPC:
//! RunBackup (verified after the backup), ListBackups, VerifyBackup,
//! PreviewRetention, Restore's input checks, and the bearer tokens.

use opsloop_backup_agent::BackupApp;
use opsloop_core::config::{ConfigSources, load};
use opsloop_core::daemon::Infra;
use opsloop_core::proto::v1::backup_service_client::BackupServiceClient;
use opsloop_core::proto::v1::{
    BackupKind, BackupStatus, ListBackupsRequest, PreviewRetentionRequest, RestoreRequest,
    RunBackupRequest, VerificationState, VerifyBackupRequest,
};
use opsloop_core::secrets::SecretStore;
use tokio_util::sync::CancellationToken;

struct Running {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts the daemon on port 0 with its own SQLite database under `dir`
/// and `secrets` as secret files.
async fn start(dir: &tempfile::TempDir, secrets: &[(&str, &str)]) -> Running {
    for (name, value) in secrets {
        std::fs::write(dir.path().join(name), value).expect("secret file");
    }
    let path = |p: &str| dir.path().join(p).display().to_string();
    let config = load(&ConfigSources::env_only([
        (
            "OPSLOOP__DATABASE__URL",
            format!("sqlite://{}?mode=rwc", path("opsloop.db")),
        ),
        ("OPSLOOP__AUDIT__LOG_PATH", path("audit.jsonl")),
        ("OPSLOOP__BACKUP__GRPC_ADDR", "127.0.0.1:0".into()),
        ("OPSLOOP__BACKUP__HTTP_ADDR", "127.0.0.1:0".into()),
        ("OPSLOOP__BACKUP__STORE_DIR", path("backups")),
        ("OPSLOOP__BACKUP__CATCH_UP_MISSED", "false".into()),
    ]))
    .expect("config");
    let shutdown = CancellationToken::new();
    let secrets = SecretStore::with_sources(None, dir.path(), Vec::new());
    let infra = Infra::connect(config, secrets, shutdown.clone())
        .await
        .expect("infra");
    let app = BackupApp::build(infra).await.expect("build");
    let addr = app.grpc_addr().expect("grpc addr");
    let server = tokio::spawn(app.run_until_stopped());
    Running {
        addr,
        shutdown,
        server,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.expect("join").expect("stops cleanly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_backs_up_its_own_sqlite_database_over_grpc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |p: &str| dir.path().join(p).display().to_string();
    let running = start(&dir, &[]).await;
    let addr = running.addr;

    let mut client = BackupServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let backup = client
        .run_backup(RunBackupRequest {
            target: None,
            wait: true,
        })
        .await
        .expect("run backup")
        .into_inner()
        .backup
        .expect("backup");
    assert_eq!(
        backup.status,
        BackupStatus::Completed as i32,
        "{:?}",
        backup.error
    );
    assert_eq!(backup.kind, BackupKind::Sqlite as i32);
    assert_eq!(backup.target, "opsloop");
    assert_eq!(backup.compression, "zstd:3");
    assert_eq!(
        backup.verification,
        VerificationState::Passed as i32,
        "verified after the backup"
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&backup.manifest_json).expect("manifest JSON");
    assert!(
        manifest["row_counts"]["main.policy"].as_i64().unwrap_or(0) > 0,
        "{manifest}"
    );
    assert!(
        std::path::Path::new(&path("backups"))
            .join(&backup.object_key)
            .is_file()
    );

    let listed = client
        .list_backups(ListBackupsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.backups.len(), 1);
    assert_eq!(listed.backups[0].id, backup.id);
    assert!(listed.next_page_token.is_empty());

    let verified = client
        .verify_backup(VerifyBackupRequest {
            id: backup.id.clone(),
        })
        .await
        .expect("verify")
        .into_inner();
    assert!(
        verified.passed && verified.checksum_ok,
        "{:?}",
        verified.error
    );
    assert!(verified.stages.iter().any(|s| s.stage == "checksum"));

    let preview = client
        .preview_retention(PreviewRetentionRequest { target: None })
        .await
        .expect("preview")
        .into_inner();
    assert_eq!(preview.keep.len(), 1);
    assert!(preview.refused_reason.is_none());
    assert!(preview.policy_json.contains("keep_daily"));

    let bad_id = client
        .verify_backup(VerifyBackupRequest {
            id: "not-a-uuid".into(),
        })
        .await
        .expect_err("invalid id");
    assert_eq!(bad_id.code(), tonic::Code::InvalidArgument);
    assert!(bad_id.message().contains("id"));
    let unknown = client
        .run_backup(RunBackupRequest {
            target: Some("nope".into()),
            wait: true,
        })
        .await
        .expect_err("unknown target");
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    let unconfirmed = client
        .restore(RestoreRequest {
            backup_id: backup.id.clone(),
            target_url: format!("sqlite://{}", path("restored.db")),
            confirm: false,
            force: false,
            actor: "test".into(),
        })
        .await
        .expect_err("needs confirm");
    assert_eq!(unconfirmed.code(), tonic::Code::InvalidArgument);
    assert!(unconfirmed.message().contains("confirm"));

    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_guard_the_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = start(
        &dir,
        &[
            ("agent_token", "agent-secret"),
            ("admin_token", "admin-secret"),
        ],
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let with = |token: Option<&'static str>| {
        BackupServiceClient::with_interceptor(
            channel.clone(),
            move |mut request: tonic::Request<()>| {
                if let Some(token) = token {
                    let value = format!("Bearer {token}")
                        .parse()
                        .map_err(|_| tonic::Status::internal("header"))?;
                    request.metadata_mut().insert("authorization", value);
                }
                Ok(request)
            },
        )
    };
    let anonymous = with(None)
        .list_backups(ListBackupsRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
    with(Some("agent-secret"))
        .list_backups(ListBackupsRequest::default())
        .await
        .expect("the agent token may read");
    let denied = with(Some("agent-secret"))
        .restore(RestoreRequest {
            backup_id: uuid::Uuid::new_v4().to_string(),
            target_url: "sqlite://x.db".into(),
            confirm: true,
            force: false,
            actor: "agent".into(),
        })
        .await
        .expect_err("restore needs admin");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let backup = with(Some("admin-secret"))
        .run_backup(RunBackupRequest {
            target: None,
            wait: true,
        })
        .await
        .expect("the admin token may act")
        .into_inner()
        .backup
        .expect("backup");
    assert_eq!(
        backup.status,
        BackupStatus::Completed as i32,
        "{:?}",
        backup.error
    );
    running.stop().await;
}
