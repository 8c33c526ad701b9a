//! The real binary, killed with SIGKILL mid-group and right after a
//! delivery: the restarted alerter neither drops the pending notification
//! nor sends the delivered one again.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{CountingReceiver, LocalReceiver, kill9, logged_groups, start_daemon, storm_config};
use opsloop_core::store::testing::fresh_postgres;
use sea_orm::ConnectionTrait;
use serde_json::json;

async fn start(config: &std::path::Path, slack_url: &str) -> common::Daemon {
    start_daemon(config, &[("OPSLOOP_SLACK_WEBHOOK_URL", slack_url)]).await
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

/// Alerts in the storm, each its own group, and their rate.
const STORM_ALERTS: u64 = 1_500;
const STORM_RATE: u64 = 300;
/// The delivery bound of the storm (`alerter.max_in_flight_per_receiver`).
const BOUND: usize = 8;

/// kill -9 in the middle of a storm of distinct groups, with deliveries
/// waiting for a slot and `BOUND` of them unconfirmed: after a restart
/// every group reaches the receiver, and the groups it hears twice are
/// exactly those the receiver had seen and the notification log had not
/// recorded when the process died: the deliveries holding a slot (on the
/// wire, or answered with their log row not yet committed). That is the
/// at-least-once window, at most `BOUND` groups; a waiting notification is
/// never sent before the kill, so the restart sends it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_minus_nine_mid_storm_repeats_only_unconfirmed_deliveries() {
    let db = fresh_postgres().await;
    let hook = CountingReceiver::start(Duration::from_millis(50)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = storm_config(dir.path(), &db.url, 10_000, BOUND);
    let env = [("OPSLOOP_STORM_WEBHOOK_URL", hook.url.as_str())];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    let first = start_daemon(&config, &env).await;
    let storm = common::Storm::start(
        http.clone(),
        format!("{}/api/v2/alerts", first.http),
        STORM_ALERTS,
        STORM_RATE,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while hook.distinct() < 100 || storm.posted() < STORM_ALERTS / 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the storm reached the receiver"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kill9(first).await;
    // Bytes the dead process wrote before it died may still be read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = hook.arrived();
    assert!(
        before.values().all(|n| *n == 1),
        "nothing repeated before the kill: {:?}",
        hook.repeated()
    );
    let name = regex::Regex::new(r"Storm\d+").expect("regex");
    let logged: BTreeSet<String> = logged_groups(&db.db)
        .await
        .iter()
        .filter_map(|key| name.find(key).map(|m| m.as_str().to_owned()))
        .collect();
    // Heard by the receiver, not recorded: these alone may come again.
    let unconfirmed: BTreeSet<String> = before
        .keys()
        .filter(|k| !logged.contains(*k))
        .cloned()
        .collect();
    assert!(
        logged.iter().all(|k| before.contains_key(k)),
        "the log records only what the receiver heard"
    );
    assert!(
        unconfirmed.len() <= BOUND,
        "{} deliveries unconfirmed at the kill, more than the bound {BOUND}",
        unconfirmed.len()
    );
    let refused = storm.refused().await;
    let heard_before = before.len();

    let second = start_daemon(&config, &env).await;
    let url = format!("{}/api/v2/alerts", second.http);
    common::repost(&http, &url, &refused).await;
    let distinct = hook
        .wait_distinct(STORM_ALERTS as usize, Duration::from_secs(120))
        .await;
    assert_eq!(
        distinct, STORM_ALERTS as usize,
        "every group after the restart"
    );
    hook.repeats_stay_within(&unconfirmed).await;
    let repeated: BTreeSet<String> = hook.repeated().into_iter().collect();
    assert_eq!(
        repeated, unconfirmed,
        "the groups heard twice are exactly the unconfirmed ones"
    );
    assert!(hook.arrived().values().all(|n| *n <= 2), "none thrice");
    assert!(
        hook.peak_requests() <= BOUND,
        "{} requests at once, bound {BOUND}",
        hook.peak_requests()
    );
    eprintln!(
        "kill -9 after {heard_before} groups heard ({} logged, {} unconfirmed), {} posts refused; \
         after restart {distinct} groups, {} heard twice; peak {} requests, {} connections at once ({} opened)",
        logged.len(),
        unconfirmed.len(),
        refused.len(),
        repeated.len(),
        hook.peak_requests(),
        hook.peak_connections(),
        hook.connections(),
    );
    kill9(second).await;
    db.cleanup().await;
}
