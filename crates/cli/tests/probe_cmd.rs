//! `opsloop probe list|run` through the CLI binary against the real
//! heartbeat-worker (in process, fresh PostgreSQL, bootstrap admin and
//! viewer tokens) probing a real local HTTP server that answers 500: the
//! run reports the failure and the probe down with its dependent kind
//! paused, the list shows state, latency and the pause, the viewer may list
//! but not run, and an unknown name is NOT_FOUND (exit 4).

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use opsloop_core::config::{ConfigSources, load};
use opsloop_core::daemon::Infra;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store::testing::fresh_postgres;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "cli-probe-test-admin";
const VIEWER: &str = "cli-probe-test-viewer";

async fn opsloop(endpoint: &str, token: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_opsloop"))
        .args(["--endpoint", endpoint, "--token", token])
        .args(args)
        .env_remove("OPSLOOP_TOKEN")
        .env_remove("OPSLOOP_TOKEN_FILE")
        .output()
        .await
        .expect("running the opsloop binary")
}

fn json_of(out: &Output, what: &str) -> Value {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
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

    shutdown.cancel();
    daemon.await.expect("joins").expect("stops cleanly");
    db.cleanup().await;
}
