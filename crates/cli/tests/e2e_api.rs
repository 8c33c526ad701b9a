//! The loop through the CLI binary against the real api, started in process
//! on port 0 with a fresh SQLite database and the in-process bus:
//! `proposal submit` → `worker --once` → `mission show`.

use std::collections::HashMap;
use std::process::Output;

use opsloop_core::config::{ConfigSources, load};
use opsloop_core::daemon::Infra;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store::testing::fresh_sqlite;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

async fn opsloop(endpoint: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_opsloop"))
        .args(["--endpoint", endpoint, "--actor", "e2e", "--output", "json"])
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_then_worker_then_mission_show() {
    let db = fresh_sqlite().await;
    let scratch = tempfile::tempdir().unwrap();
    let audit = scratch.path().join("audit.jsonl");
    let env: HashMap<String, String> = [
        ("OPSLOOP__DATABASE__URL", db.url.as_str()),
        ("OPSLOOP__BUS__KIND", "memory"),
        ("OPSLOOP__API__GRPC_ADDR", "127.0.0.1:0"),
        ("OPSLOOP__API__HTTP_ADDR", "127.0.0.1:0"),
        ("OPSLOOP__AUDIT__LOG_PATH", audit.to_str().unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = load(&ConfigSources {
        file: None,
        use_default_file: false,
        env: Some(env),
    })
    .unwrap();
    let secrets = SecretStore::with_sources(None, scratch.path(), Vec::new());
    let shutdown = CancellationToken::new();
    let infra = Infra::connect(config, secrets, shutdown.clone())
        .await
        .unwrap();
    let api = opsloop_api::ApiApp::build(infra).await.unwrap();
    let endpoint = format!("http://{}", api.grpc_addr().unwrap());
    let server = tokio::spawn(api.run_until_stopped());

    // Submit one step; a pending proposal (auto_approve not covering the
    // kind) is approved by hand, as an operator would.
    let submitted = json_of(
        &opsloop(
            &endpoint,
            &[
                "proposal",
                "submit",
                "--title",
                "e2e",
                "--kind",
                "analyze",
                "--payload",
                r#"{"text": "hello"}"#,
            ],
        )
        .await,
        "proposal submit",
    );
    let mut proposal = submitted["proposal"].clone();
    if proposal["status"] == "pending" {
        let id = proposal["id"].as_str().unwrap().to_owned();
        proposal = json_of(
            &opsloop(&endpoint, &["proposal", "approve", &id]).await,
            "proposal approve",
        );
    }
    assert_eq!(proposal["status"], "approved", "{proposal}");
    let mission_id = proposal["mission_id"]
        .as_str()
        .expect("an approved proposal names its mission")
        .to_owned();

    // The worker runs the step: payload on stdin, a JSON result with a cost.
    let exec = r#"payload=$(cat); printf '{"echo": %s, "cost_usd": 0.25}' "$payload""#;
    let worked = opsloop(
        &endpoint,
        &["worker", "--kinds", "analyze", "--exec", exec, "--once"],
    )
    .await;
    assert!(
        worked.status.success(),
        "worker failed: {}",
        String::from_utf8_lossy(&worked.stderr)
    );
    let line: Value =
        serde_json::from_slice(&worked.stdout).expect("the worker prints one JSON line per step");
    assert_eq!(line["outcome"], "succeeded", "{line}");
    assert_eq!(line["mission_status"], "succeeded", "{line}");

    let mission = json_of(
        &opsloop(&endpoint, &["mission", "show", &mission_id]).await,
        "mission show",
    );
    assert_eq!(mission["status"], "succeeded", "{mission}");
    assert_eq!(mission["steps"][0]["status"], "succeeded");
    assert_eq!(
        mission["steps"][0]["result"]["echo"],
        serde_json::json!({"text": "hello"})
    );
    assert_eq!(mission["steps"][0]["cost_usd"], 0.25);

    // Nothing is left to claim.
    let idle = opsloop(
        &endpoint,
        &["worker", "--kinds", "analyze", "--exec", "cat", "--once"],
    )
    .await;
    assert!(idle.status.success());
    assert!(
        idle.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&idle.stdout)
    );
    assert!(String::from_utf8_lossy(&idle.stderr).contains(r#""claimed":0"#));

    shutdown.cancel();
    server.await.unwrap().unwrap();
    db.cleanup().await;
}
