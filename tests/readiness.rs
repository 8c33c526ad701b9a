//! `/readyz` follows its dependencies: 503 naming the database or the broker
//! while it is unreachable (a severed TCP proxy in front of it), 200 once it
//! is back — with the api daemon running in-process.

use std::time::Duration;

use opsloop_core::bus::testing::{TcpProxy, amqp_url, isolated_settings, require_rabbitmq, via};
use opsloop_core::config::{ConfigSources, load};
use opsloop_core::daemon::Infra;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store::testing::fresh_postgres;
use opsloop_e2e::wait_for_status;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn readyz_follows_database_and_broker() {
    require_rabbitmq().await;
    let db = fresh_postgres().await;
    let pg_proxy = TcpProxy::start("127.0.0.1:5432").await.expect("pg proxy");
    let mq_proxy = TcpProxy::start("127.0.0.1:5672").await.expect("amqp proxy");
    let amqp = via(&amqp_url(), mq_proxy.addr);
    let bus = isolated_settings(&amqp);
    let config = load(&ConfigSources::env_only([
        ("OPSLOOP__DATABASE__URL", via(&db.url, pg_proxy.addr)),
        ("OPSLOOP__DATABASE__ACQUIRE_TIMEOUT_MS", "1000".to_owned()),
        ("OPSLOOP__DATABASE__CONNECT_TIMEOUT_MS", "1000".to_owned()),
        ("OPSLOOP__BUS__KIND", "rabbitmq".to_owned()),
        ("OPSLOOP__BUS__URL", amqp.clone()),
        ("OPSLOOP__BUS__EXCHANGE", bus.exchange.clone()),
        (
            "OPSLOOP__BUS__DEAD_LETTER_EXCHANGE",
            bus.dead_letter_exchange.clone(),
        ),
        ("OPSLOOP__BUS__QUEUE_TYPE", "classic".to_owned()),
        ("OPSLOOP__BUS__RECONNECT_MAX_BACKOFF_MS", "300".to_owned()),
        ("OPSLOOP__API__GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ("OPSLOOP__API__HTTP_ADDR", "127.0.0.1:0".to_owned()),
        (
            "OPSLOOP__AUDIT__LOG_PATH",
            std::env::temp_dir()
                .join(format!(
                    "opsloop-audit-{}.jsonl",
                    uuid::Uuid::new_v4().simple()
                ))
                .display()
                .to_string(),
        ),
    ]))
    .expect("config");
    let shutdown = CancellationToken::new();
    let infra = Infra::connect(
        config,
        SecretStore::with_sources(None, std::path::Path::new("/nonexistent"), vec![]),
        shutdown.clone(),
    )
    .await
    .expect("infra");
    let app = opsloop_api::ApiApp::build(infra).await.expect("build");
    let readyz = format!("http://{}/readyz", app.http_addr().expect("addr"));
    let server = tokio::spawn(app.run_until_stopped());

    wait_for_status(&readyz, 200, Duration::from_secs(20)).await;

    pg_proxy.sever();
    let body = wait_for_status(&readyz, 503, Duration::from_secs(20)).await;
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["checks"]["database"]["status"], "error", "{body}");
    pg_proxy.restore();
    wait_for_status(&readyz, 200, Duration::from_secs(30)).await;

    mq_proxy.sever();
    let body = wait_for_status(&readyz, 503, Duration::from_secs(20)).await;
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["checks"]["broker"]["status"], "error", "{body}");
    assert_eq!(body["checks"]["database"]["status"], "ok", "{body}");
    mq_proxy.restore();
    wait_for_status(&readyz, 200, Duration::from_secs(30)).await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("stops within the drain bound")
        .expect("join")
        .expect("clean stop");
    db.cleanup().await;
}
