//! The real binary, killed with SIGKILL mid-group and right after a
//! delivery: the restarted alerter neither drops the pending notification
//! nor sends the delivered one again.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::LocalReceiver;
use opsloop_core::store::testing::fresh_postgres;
use sea_orm::ConnectionTrait;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

struct Daemon {
    child: Child,
    http: String,
}

async fn start(config: &std::path::Path, slack_url: &str) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_opsloop-alerter"))
        .arg("--config")
        .arg(config)
        .env("OPSLOOP_SLACK_WEBHOOK_URL", slack_url)
        .env_remove("OPSLOOP_ADMIN_TOKEN")
        .env_remove("OPSLOOP_AGENT_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the alerter binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let pattern = regex::Regex::new(r#""http":"([^"]+)""#).expect("regex");
    let http = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if line.contains("alerter started")
                && let Some(captures) = pattern.captures(&line)
            {
                return captures[1].to_owned();
            }
        }
        panic!("the alerter exited before its start line");
    })
    .await
    .expect("start line within 60 s");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Daemon {
        child,
        http: format!("http://{http}"),
    }
}

async fn kill9(mut daemon: Daemon) {
    daemon.child.kill().await.expect("SIGKILL");
}

#[tokio::test]
async fn kill_minus_nine_neither_drops_nor_duplicates() {
    let db = fresh_postgres().await;
    let slack = LocalReceiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("opsloop.toml");
    std::fs::write(
        &config,
        format!(
            r#"
environment = "kill9"
[database]
url = "{db}"
[telemetry]
log_format = "json"
log_level = "info"
[audit]
log_path = "{audit}"
[alerter]
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
tick_ms = 100
lease_ttl_ms = 2000
[alerter.route]
receiver = "slack"
group_wait = "3s"
group_interval = "1m"
[[alerter.receivers]]
name = "slack"
kind = "slack"
secret = "slack_webhook_url"
min_interval_ms = 0
"#,
            db = db.url,
            audit = dir.path().join("audit.jsonl").display(),
        ),
    )
    .expect("config");

    // 1. An alert arrives; the process dies before group_wait ends.
    let first = start(&config, &slack.url()).await;
    let posted = reqwest::Client::new()
        .post(format!("{}/api/v2/alerts", first.http))
        .json(
            &json!([{"labels": {"alertname": "KillNine", "severity": "critical"},
            "annotations": {"description": "survives SIGKILL"}}]),
        )
        .send()
        .await
        .expect("post");
    assert_eq!(posted.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill9(first).await;
    assert!(
        slack.received().is_empty(),
        "killed before group_wait ended"
    );

    // 2. The restarted alerter delivers it (after the dead holder's lease).
    let second = start(&config, &slack.url()).await;
    let accepted = slack.wait_accepted(1, Duration::from_secs(30)).await;
    assert_eq!(
        accepted.len(),
        1,
        "the pending notification was not dropped"
    );
    assert_eq!(
        accepted[0]["blocks"][0]["text"]["text"],
        "🔴 [FIRING:1] KillNine"
    );

    // 3. Killed right after delivering (once the notification log has the
    // send: between the receiver's answer and that row, delivery is at
    // least once by design): the next one does not send it again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let row = db
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                db.db.get_database_backend(),
                "SELECT COUNT(*) AS n FROM notification_log WHERE status = 'sent'",
            ))
            .await
            .expect("notification log");
        let sent: i64 = row.map_or(0, |r| r.try_get("", "n").expect("n"));
        if sent >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the send was never logged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill9(second).await;
    let third = start(&config, &slack.url()).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(slack.received().len(), 1, "no duplicate after SIGKILL");
    kill9(third).await;
    db.cleanup().await;
}
