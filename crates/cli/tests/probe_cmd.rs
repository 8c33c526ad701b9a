//! `opsloop probe list|run|add|rm` through the CLI binary against the real
//! heartbeat-worker (in process, fresh PostgreSQL, bootstrap admin and
//! viewer tokens) probing a real local HTTP server that answers 500: the
//! run reports the failure and the probe down with its dependent kind
//! paused, the list shows state, latency and the pause, the viewer may list
//! but not run or add, an unknown name is NOT_FOUND (exit 4); a probe added
//! at run time is listed and run, a configured name is refused (the file
//! wins), bad fields are refused naming them, and rm removes it.

mod common;
use common::{json_of, opsloop_command};

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use opsloop_core::config::{ConfigSources, load};
use opsloop_core::daemon::Infra;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store::testing::fresh_postgres;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "cli-probe-test-admin";
const VIEWER: &str = "cli-probe-test-viewer";

async fn opsloop(endpoint: &str, token: &str, args: &[&str]) -> Output {
    opsloop_command()
        .args(["--endpoint", endpoint, "--token", token])
        .args(args)
        .output()
        .await
        .expect("running the opsloop binary")
}

/// An HTTP server answering every request with the status in `status`.
async fn upstream(status: Arc<AtomicU16>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let code = status.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = [0u8; 2048];
                let _ = stream.read(&mut request).await;
                let answer = format!(
                    "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_list_and_run() {
    let db = fresh_postgres().await;
    let scratch = tempfile::tempdir().expect("tempdir");
    let target = upstream(Arc::new(AtomicU16::new(500))).await;
    let path = scratch.path().join("opsloop.toml");
    std::fs::write(
        &path,
        format!(
            "environment = \"test\"\n[database]\nurl = \"{}\"\n[bus]\nkind = \"memory\"\n\
             [audit]\nlog_path = \"{}\"\n[heartbeat]\nhttp_addr = \"127.0.0.1:0\"\n\
             instance_id = \"cli-probe\"\ninterval_secs = 3600\nconsume_events = false\n\
             [[heartbeat.probes]]\nname = \"payments\"\nkind = \"http\"\n\
             target = \"http://{target}/health\"\nretries = 1\ninterval_secs = 600\n\
             depends_kinds = [\"notify\"]\n",
            db.url,
            scratch.path().join("audit.jsonl").display()
        ),
    )
    .expect("config");
    let config = load(&ConfigSources {
        file: Some(path),
        use_default_file: false,
        env: Some(Default::default()),
    })
    .expect("config loads");
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
    let app = opsloop_heartbeat_worker::HeartbeatApp::build(infra)
        .await
        .expect("heartbeat");
    let endpoint = format!("http://{}", app.http_addr().expect("addr"));
    let daemon = tokio::spawn(app.run_until_stopped());

    let ran = json_of(
        &opsloop(
            &endpoint,
            ADMIN,
            &["-o", "json", "probe", "run", "payments"],
        )
        .await,
        "probe run",
    );
    assert_eq!(ran["probe"], "payments");
    assert_eq!(ran["ok"], false);
    assert!(
        ran["error"]
            .as_str()
            .is_some_and(|e| e.contains("status 500")),
        "{ran}"
    );
    assert_eq!(ran["status"], "down", "one retry: down");

    let listed = json_of(
        &opsloop(&endpoint, VIEWER, &["-o", "json", "probe", "list"]).await,
        "probe list",
    );
    let probes = listed["probes"].as_array().expect("probes");
    assert_eq!(probes.len(), 1, "{listed}");
    let payments = &probes[0];
    assert_eq!(payments["name"], "payments");
    assert_eq!(payments["kind"], "http");
    assert_eq!(payments["status"], "down");
    assert!(payments["latency_ms"].is_i64(), "{payments}");
    assert!(payments["last_checked_at"].is_string(), "{payments}");
    assert_eq!(payments["paused_kinds"], serde_json::json!(["notify"]));
    assert_eq!(payments["on_down"], "pause_kinds");

    let table = opsloop(&endpoint, VIEWER, &["probe", "list"]).await;
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("NAME") && text.contains("LATENCY"), "{text}");
    assert!(text.contains("payments") && text.contains("DOWN"), "{text}");
    assert!(text.contains("paused: notify"), "{text}");

    let denied = opsloop(&endpoint, VIEWER, &["probe", "run", "payments"]).await;
    assert_eq!(denied.status.code(), Some(5), "viewer may not run checks");
    let unknown = opsloop(&endpoint, ADMIN, &["probe", "run", "nope"]).await;
    assert_eq!(unknown.status.code(), Some(4));
    let line = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        line.starts_with("NOT_FOUND: HTTP 404 from POST ")
            && line.contains("no probe named \"nope\" is configured"),
        "{line}"
    );

    // Added at run time: stored, listed, run; the file wins on a clash.
    let crm_target = format!("http://{target}/status");
    let added = json_of(
        &opsloop(
            &endpoint,
            ADMIN,
            &[
                "-o",
                "json",
                "probe",
                "add",
                "crm",
                "--kind",
                "http",
                "--target",
                &crm_target,
                "--json-path",
                "checks[0].state",
                "--json-equals",
                "up",
                "--depends-kind",
                "draft",
                "--header",
                "Accept=application/json",
            ],
        )
        .await,
        "probe add",
    );
    assert_eq!(added["probe"], "crm");
    assert_eq!(
        added["created_by"], "bootstrap-admin",
        "the admin token's name"
    );
    let listed = json_of(
        &opsloop(&endpoint, VIEWER, &["-o", "json", "probe", "list"]).await,
        "probe list",
    );
    let sources: Vec<(String, String)> = listed["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_owned(),
                p["source"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        sources,
        [
            ("crm".to_owned(), "added".to_owned()),
            ("payments".to_owned(), "config".to_owned())
        ]
    );
    let crm = json_of(
        &opsloop(&endpoint, ADMIN, &["-o", "json", "probe", "run", "crm"]).await,
        "probe run crm",
    );
    assert_eq!(
        (crm["probe"].as_str(), crm["ok"].as_bool()),
        (Some("crm"), Some(false))
    );

    let clash = opsloop(
        &endpoint,
        ADMIN,
        &[
            "probe", "add", "payments", "--kind", "tcp", "--target", "db:5432",
        ],
    )
    .await;
    assert_eq!(clash.status.code(), Some(7), "the configuration file wins");
    assert!(
        String::from_utf8_lossy(&clash.stderr).contains("defined in the configuration file"),
        "{}",
        String::from_utf8_lossy(&clash.stderr)
    );
    let again = opsloop(
        &endpoint,
        ADMIN,
        &[
            "probe", "add", "crm", "--kind", "tcp", "--target", "db:5432",
        ],
    )
    .await;
    assert_eq!(again.status.code(), Some(7));
    let bad = opsloop(
        &endpoint,
        ADMIN,
        &[
            "probe",
            "add",
            "bad",
            "--kind",
            "http",
            "--target",
            &crm_target,
            "--json-path",
            "checks[x]",
            "--json-equals",
            "1",
        ],
    )
    .await;
    assert_eq!(bad.status.code(), Some(3), "INVALID_ARGUMENT");
    let bad_line = String::from_utf8_lossy(&bad.stderr);
    assert!(
        bad_line.contains("heartbeat.probes[bad].json_path") && bad_line.contains("position 6"),
        "{bad_line}"
    );
    let interval = opsloop(
        &endpoint,
        ADMIN,
        &[
            "probe",
            "add",
            "fast",
            "--kind",
            "tcp",
            "--target",
            "db:5432",
            "--interval-secs",
            "5",
        ],
    )
    .await;
    assert_eq!(interval.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&interval.stderr).contains("heartbeat.probes[fast].interval_secs")
    );
    let viewer_add = opsloop(
        &endpoint,
        VIEWER,
        &["probe", "add", "v", "--kind", "tcp", "--target", "db:5432"],
    )
    .await;
    assert_eq!(viewer_add.status.code(), Some(5));

    let configured = opsloop(&endpoint, ADMIN, &["probe", "rm", "payments"]).await;
    assert_eq!(configured.status.code(), Some(7));
    let removed = opsloop(&endpoint, ADMIN, &["probe", "rm", "crm"]).await;
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let gone = opsloop(&endpoint, ADMIN, &["probe", "rm", "crm"]).await;
    assert_eq!(gone.status.code(), Some(4));
    let listed = json_of(
        &opsloop(&endpoint, VIEWER, &["-o", "json", "probe", "list"]).await,
        "probe list",
    );
    assert_eq!(listed["probes"].as_array().map(Vec::len), Some(1));

    shutdown.cancel();
    daemon.await.expect("joins").expect("stops cleanly");
    db.cleanup().await;
}
