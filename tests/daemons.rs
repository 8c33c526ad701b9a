//! Each daemon binary as a process on PostgreSQL and RabbitMQ: healthy within
//! seconds, ready (database and broker checked), metrics served, and a clean
//! exit 0 on SIGTERM within the drain bound.

use std::time::Duration;

use opsloop_core::bus::testing::{amqp_url, isolated_settings, require_rabbitmq};
use opsloop_core::store::testing::fresh_postgres;
use opsloop_e2e::{DaemonProcess, get, wait_for_status};

const DRAIN_MS: u64 = 3_000;
const DB_PASSWORD: &str = "pw-7f3e9c1d-never-logged";
const ADMIN_TOKEN: &str = "admin-5b2a8e44-never-logged";
const AGENT_TOKEN: &str = "agent-91c0d7aa-never-logged";

async fn daemon_starts_serves_and_stops(binary: &str, section: &str, has_grpc: bool) {
    require_rabbitmq().await;
    let db = fresh_postgres().await;
    let bus = isolated_settings(&amqp_url());
    let section = section.to_ascii_uppercase();
    // Secrets come in through the environment (the last of the three
    // sources); none of their values may appear in any line the daemon logs.
    let database_url_with_password =
        db.url
            .replacen("postgres@", &format!("postgres:{DB_PASSWORD}@"), 1);
    assert_ne!(
        database_url_with_password, db.url,
        "test database URL shape"
    );
    let mut env = vec![
        ("OPSLOOP_DATABASE_URL", database_url_with_password),
        ("OPSLOOP_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ("OPSLOOP_AGENT_TOKEN", AGENT_TOKEN.to_owned()),
        ("RUST_LOG", "debug,h2=info,hyper=info,tower=info".to_owned()),
        ("OPSLOOP__BUS__KIND", "rabbitmq".to_owned()),
        ("OPSLOOP__BUS__URL", amqp_url()),
        ("OPSLOOP__BUS__EXCHANGE", bus.exchange.clone()),
        (
            "OPSLOOP__BUS__DEAD_LETTER_EXCHANGE",
            bus.dead_letter_exchange.clone(),
        ),
        ("OPSLOOP__BUS__QUEUE_TYPE", "classic".to_owned()),
        ("OPSLOOP__BUS__QUEUE_EXPIRES_MS", "60000".to_owned()),
        // Queue names too: a queue left by another test (or run) with other
        // arguments would be refused by the broker.
        (
            "OPSLOOP__ALERTER__QUEUE",
            format!("{}.alerter", bus.exchange),
        ),
        (
            "OPSLOOP__HEARTBEAT__REACTIONS_QUEUE",
            format!("{}.reactions", bus.exchange),
        ),
        ("OPSLOOP__SHUTDOWN__DRAIN_TIMEOUT_MS", DRAIN_MS.to_string()),
    ];
    let http_key = format!("OPSLOOP__{section}__HTTP_ADDR");
    let grpc_key = format!("OPSLOOP__{section}__GRPC_ADDR");
    let audit_dir =
        std::env::temp_dir().join(format!("opsloop-audit-{}", uuid::Uuid::new_v4().simple()));
    let audit_path = audit_dir.join("audit.jsonl").display().to_string();
    env.push((http_key.as_str(), "127.0.0.1:0".to_owned()));
    if has_grpc {
        env.push((grpc_key.as_str(), "127.0.0.1:0".to_owned()));
    }
    env.push(("OPSLOOP__AUDIT__LOG_PATH", audit_path));
    // Whatever a daemon writes to disk goes to the temporary directory, not
    // the repository (the backup-agent catches up its first backup at start).
    env.push((
        "OPSLOOP__BACKUP__STORE_DIR",
        audit_dir.join("backups").display().to_string(),
    ));

    let started = std::time::Instant::now();
    let mut daemon = DaemonProcess::start(binary, &env, Duration::from_secs(30));
    let base = format!("http://{}", daemon.http_addr());
    assert_eq!(daemon.start_line["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(daemon.start_line["level"], "INFO");
    assert!(daemon.start_line["service"].is_string());

    let (status, body) = get(&format!("{base}/healthz"), Duration::from_secs(10)).await;
    assert_eq!(status, 200, "{body}");
    let ready = wait_for_status(&format!("{base}/readyz"), 200, Duration::from_secs(20)).await;
    let ready: serde_json::Value = serde_json::from_str(&ready).expect("readyz json");
    assert_eq!(ready["checks"]["database"]["status"], "ok");
    assert_eq!(ready["checks"]["broker"]["status"], "ok");
    assert!(ready["checks"]["database"]["latency_ms"].is_number());
    let ready_after = started.elapsed();
    assert!(
        ready_after < Duration::from_secs(20),
        "ready after {ready_after:?}"
    );

    let (status, metrics) = get(&format!("{base}/metrics"), Duration::from_secs(5)).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("process_resident_memory_bytes"),
        "{metrics}"
    );

    let exit = daemon.terminate(Duration::from_millis(DRAIN_MS + 5_000));
    assert_eq!(
        exit.code(),
        Some(0),
        "exit status {exit:?}; output:\n{}",
        daemon.drain_output()
    );
    let _ = std::fs::remove_dir_all(audit_dir);
    db.cleanup().await;
}

#[tokio::test]
async fn api_process() {
    daemon_starts_serves_and_stops("opsloop-api", "api", true).await;
}

#[tokio::test]
async fn heartbeat_worker_process() {
    daemon_starts_serves_and_stops("opsloop-heartbeat-worker", "heartbeat", false).await;
}

#[tokio::test]
async fn alerter_process() {
    daemon_starts_serves_and_stops("opsloop-alerter", "alerter", true).await;
}

#[tokio::test]
async fn backup_agent_process() {
    daemon_starts_serves_and_stops("opsloop-backup-agent", "backup", true).await;
}

#[test]
fn a_bad_config_value_fails_with_one_line_naming_the_key() {
    let output = std::process::Command::new(opsloop_e2e::binary("opsloop-api"))
        .env_clear()
        .env("OPSLOOP__DATABASE__MAX_CONNECTIONS", "plenty")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("database.max_connections"), "{stderr}");
}

#[test]
fn help_and_version() {
    for binary in [
        "opsloop-api",
        "opsloop-heartbeat-worker",
        "opsloop-alerter",
        "opsloop-backup-agent",
        "opsloop",
    ] {
        let help = std::process::Command::new(opsloop_e2e::binary(binary))
            .arg("--help")
            .output()
            .expect("run");
        assert!(help.status.success(), "{binary} --help");
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("--config"),
            "{binary} --help names --config"
        );
        let version = std::process::Command::new(opsloop_e2e::binary(binary))
            .arg("--version")
            .output()
            .expect("run");
        assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
    }
}
