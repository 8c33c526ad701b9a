//! `opsloop token create|list|revoke` through the CLI binary against the real
//! api (in process, fresh PostgreSQL, the bootstrap admin token): the secret
//! is printed once and works, list never shows it, a wrong role gets one
//! sentence naming the call and the role, and a revoked token is refused.

mod common;
use common::{json_of, opsloop_command};

use std::process::Output;

use opsloop_core::config::{ConfigSources, load};
use opsloop_core::daemon::Infra;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store::testing::fresh_postgres;
use tokio_util::sync::CancellationToken;

const ADMIN: &str = "cli-token-test-admin";

async fn opsloop(endpoint: &str, token: &str, args: &[&str]) -> Output {
    opsloop_command()
        .args(["--endpoint", endpoint, "--token", token, "--output", "json"])
        .args(args)
        .output()
        .await
        .expect("running the opsloop binary")
}

fn stderr_of(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_list_revoke() {
    let db = fresh_postgres().await;
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
        vec![("OPSLOOP_ADMIN_TOKEN".to_owned(), ADMIN.to_owned())],
    );
    let shutdown = CancellationToken::new();
    let infra = Infra::connect(config, secrets, shutdown.clone())
        .await
        .expect("infra");
    let api = opsloop_api::ApiApp::build(infra).await.expect("api");
    let endpoint = format!("http://{}", api.grpc_addr().expect("addr"));
    let server = tokio::spawn(api.run_until_stopped());

    let created = json_of(
        &opsloop(
            &endpoint,
            ADMIN,
            &[
                "token",
                "create",
                "--name",
                "ci-worker",
                "--role",
                "agent",
                "--expires",
                "30d",
            ],
        )
        .await,
        "token create",
    );
    let secret = created["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("olp_"), "{created}");
    assert_eq!(created["token"]["role"], "agent");
    assert_eq!(created["token"]["state"], "active");
    assert_eq!(created["token"]["created_by"], "bootstrap-admin");
    assert!(created["token"]["expires_at"].is_string(), "{created}");

    let listed = opsloop(&endpoint, ADMIN, &["token", "list"]).await;
    let list = json_of(&listed, "token list");
    let names: Vec<&str> = list["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["bootstrap-admin", "ci-worker"]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&secret));

    // The new token works for its role…
    json_of(
        &opsloop(&endpoint, &secret, &["proposal", "list"]).await,
        "proposal list",
    );
    // …and a call it may not make is one sentence naming the call and the role.
    let denied = opsloop(&endpoint, &secret, &["token", "list"]).await;
    assert_eq!(
        stderr_of(&denied),
        "PERMISSION_DENIED: /opsloop.v1.TokenService/ListTokens needs the admin role, and token ci-worker has the agent role"
    );

    let revoked = json_of(
        &opsloop(&endpoint, ADMIN, &["token", "revoke", "ci-worker"]).await,
        "token revoke",
    );
    assert_eq!(revoked["token"]["state"], "revoked");
    let refused = opsloop(&endpoint, &secret, &["proposal", "list"]).await;
    let line = stderr_of(&refused);
    assert!(
        line.contains("UNAUTHENTICATED: token ci-worker was revoked"),
        "{line}"
    );
    assert!(!line.contains(&secret), "{line}");

    // Bad input: a role that does not exist.
    let bad = opsloop(
        &endpoint,
        ADMIN,
        &["token", "create", "--name", "x", "--role", "root"],
    )
    .await;
    assert!(stderr_of(&bad).contains("INVALID_ARGUMENT: role: \"root\" is not one of"));

    shutdown.cancel();
    server.await.expect("join").expect("clean stop");
    db.cleanup().await;
}
