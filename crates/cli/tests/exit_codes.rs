//! The exit-code table (`opsloop --help`) against the real api, started in
//! process on port 0 with a fresh SQLite database, the in-process bus and
//! bootstrap admin and viewer tokens: each outcome exits with its own code.

use std::process::Output;

use opsloop_cli::exit;
use opsloop_core::config::{ConfigSources, load};
use opsloop_core::daemon::Infra;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store::testing::fresh_sqlite;
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "exit-codes-admin";
const VIEWER: &str = "exit-codes-viewer";

async fn opsloop(endpoint: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_opsloop"));
    command
        .args(["--endpoint", endpoint, "--actor", "exit-codes"])
        .env_remove("OPSLOOP_TOKEN")
        .env_remove("OPSLOOP_TOKEN_FILE");
    if let Some(token) = token {
        command.args(["--token", token]);
    }
    command
        .args(args)
        .output()
        .await
        .expect("running the opsloop binary")
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn assert_exit(out: &Output, expected: u8, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(i32::from(expected)),
        "{what}: stderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_outcome_has_its_exit_code() {
    let db = fresh_sqlite().await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let audit = scratch.path().join("audit.jsonl");
    let config = load(&ConfigSources::env_only([
        ("OPSLOOP__DATABASE__URL", db.url.clone()),
        ("OPSLOOP__BUS__KIND", "memory".to_owned()),
        ("OPSLOOP__API__GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__API__HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__AUDIT__LOG_PATH", audit.display().to_string()),
    ]))
    .expect("config");
    let secrets = SecretStore::with_sources(
        None,
        scratch.path(),
        vec![
            ("OPSLOOP_ADMIN_TOKEN".to_owned(), ADMIN.to_owned()),
            ("OPSLOOP_VIEWER_TOKEN".to_owned(), VIEWER.to_owned()),
        ],
    );
    let shutdown = CancellationToken::new();
    let infra = Infra::connect(config, secrets, shutdown.clone())
        .await
        .expect("infra");
    let api = opsloop_api::ApiApp::build(infra).await.expect("api");
    let endpoint = format!("http://{}", api.grpc_addr().expect("addr"));
    let api_http = format!("http://{}", api.http_addr().expect("http addr"));
    let server = tokio::spawn(api.run_until_stopped());

    let ok = opsloop(&endpoint, Some(ADMIN), &["policy", "list"]).await;
    assert_exit(&ok, exit::SUCCESS, "policy list");

    let usage = opsloop(
        &endpoint,
        Some(ADMIN),
        &["policy", "list", "--no-such-flag"],
    )
    .await;
    assert_exit(&usage, exit::USAGE, "unknown flag");

    let missing = opsloop(
        &endpoint,
        Some(ADMIN),
        &["proposal", "show", "018f0000-0000-7000-8000-000000000000"],
    )
    .await;
    assert_exit(&missing, exit::NOT_FOUND, "show of an unknown proposal");
    assert!(String::from_utf8_lossy(&missing.stderr).starts_with("NOT_FOUND: "));

    let invalid = opsloop(
        &endpoint,
        Some(ADMIN),
        &["proposal", "submit", "--title", "t", "--kind", "NOT A KIND"],
    )
    .await;
    assert_exit(
        &invalid,
        exit::INVALID_ARGUMENT,
        "submit with a bad step kind",
    );

    let anonymous = opsloop(&endpoint, None, &["policy", "list"]).await;
    assert_exit(&anonymous, exit::PERMISSION_DENIED, "no token");
    let viewer = opsloop(
        &endpoint,
        Some(VIEWER),
        &["emergency-stop", "engage", "--reason", "test"],
    )
    .await;
    assert_exit(&viewer, exit::PERMISSION_DENIED, "viewer engaging the stop");

    let stale = opsloop(
        &endpoint,
        Some(ADMIN),
        &[
            "policy",
            "set",
            "auto_approve",
            r#"{"enabled": false, "allowed_kinds": []}"#,
            "--reason",
            "test",
            "--expected-version",
            "999",
        ],
    )
    .await;
    assert_exit(
        &stale,
        exit::FAILED_PRECONDITION,
        "compare-and-set on a stale version",
    );

    // `trigger update`: a compare-and-set on the current version applies;
    // the same version again is stale.
    let added = opsloop(
        &endpoint,
        Some(ADMIN),
        &[
            "-o",
            "json",
            "trigger",
            "add",
            "--name",
            "quiet-6h",
            "--condition",
            r#"{"type": "absence", "kind": "post.published", "window_seconds": 21600}"#,
            "--action",
            r#"{"title": "check posting", "agent": "ops", "steps": [{"kind": "analyze", "payload": {}}]}"#,
        ],
    )
    .await;
    assert_exit(&added, exit::SUCCESS, "trigger add");
    let added: serde_json::Value = serde_json::from_slice(&added.stdout).expect("json");
    let version = added["version"].to_string();
    let updated = opsloop(
        &endpoint,
        Some(ADMIN),
        &[
            "-o",
            "json",
            "trigger",
            "update",
            "quiet-6h",
            "--disable",
            "--cooldown",
            "2h",
            "--expected-version",
            &version,
        ],
    )
    .await;
    assert_exit(&updated, exit::SUCCESS, "trigger update");
    let updated: serde_json::Value = serde_json::from_slice(&updated.stdout).expect("json");
    assert_eq!(updated["enabled"], false);
    assert_eq!(updated["cooldown_seconds"], 7200);
    let again = opsloop(
        &endpoint,
        Some(ADMIN),
        &[
            "trigger",
            "update",
            "quiet-6h",
            "--enable",
            "--expected-version",
            &version,
        ],
    )
    .await;
    assert_exit(
        &again,
        exit::FAILED_PRECONDITION,
        "trigger update on a stale version",
    );
    let unknown = opsloop(
        &endpoint,
        Some(ADMIN),
        &["trigger", "update", "no-such", "--enable"],
    )
    .await;
    assert_exit(
        &unknown,
        exit::NOT_FOUND,
        "trigger update of an unknown name",
    );

    // `opsloop status` with only the api up: the api ready with its version
    // and checks, the others down, the stop, backlog and leaders from the
    // api; exit 6.
    {
        use sea_orm::ConnectionTrait;
        let until = chrono::Utc::now() + chrono::Duration::hours(1);
        db.db
            .execute_raw(sea_orm::Statement::from_sql_and_values(
                db.db.get_database_backend(),
                "INSERT INTO leases (name, holder, expires_at, fencing_token, updated_at) \
                 VALUES ('heartbeat.leader', 'hb-1', $1, 7, $1)",
                vec![until.into()],
            ))
            .await
            .expect("a heartbeat leader");
    }
    let closed = closed_port();
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_opsloop"))
        .args([
            "--endpoint",
            &endpoint,
            "--token",
            ADMIN,
            "-o",
            "json",
            "status",
        ])
        .args(["--api-http", &api_http])
        .args(["--alerter-http", &format!("http://127.0.0.1:{closed}")])
        .args(["--backup-http", &format!("http://127.0.0.1:{closed}")])
        .env(
            "OPSLOOP_HEARTBEAT_ENDPOINT",
            format!("http://127.0.0.1:{closed}"),
        )
        .env(
            "OPSLOOP_BACKUP_ENDPOINT",
            format!("http://127.0.0.1:{closed}"),
        )
        .env_remove("OPSLOOP_TOKEN")
        .env_remove("OPSLOOP_TOKEN_FILE")
        .output()
        .await
        .expect("running the opsloop binary");
    assert_exit(&status, exit::UNAVAILABLE, "status with only the api up");
    let doc: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    let daemons = doc["daemons"].as_array().expect("daemons");
    assert_eq!(daemons.len(), 4);
    assert_eq!(daemons[0]["daemon"], "api");
    assert_eq!(daemons[0]["ready"], true, "{doc}");
    assert_eq!(daemons[0]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(daemons[0]["checks"]["database"]["status"], "ok", "{doc}");
    for down in &daemons[1..] {
        assert_eq!(down["ready"], false, "{down}");
        assert!(down["error"].is_string(), "{down}");
    }
    assert_eq!(doc["emergency_stop"]["engaged"], false, "{doc}");
    assert_eq!(doc["backlog"]["pending_proposals"], 0, "{doc}");
    assert_eq!(doc["leaders"][0]["name"], "heartbeat.leader", "{doc}");
    assert_eq!(doc["leaders"][0]["holder"], "hb-1");
    assert_eq!(doc["leaders"][0]["held"], true);
    assert!(
        doc["newest_backup"].is_null() && doc["backup_error"].is_string(),
        "{doc}"
    );

    shutdown.cancel();
    server.await.expect("join").expect("api stopped cleanly");

    // The same endpoint, nobody listening any more.
    let gone = opsloop(&endpoint, Some(ADMIN), &["policy", "list"]).await;
    assert_exit(&gone, exit::UNAVAILABLE, "api stopped");
    db.cleanup().await;
}
