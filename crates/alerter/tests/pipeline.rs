//! The pipeline over a real PostgreSQL database with an injected clock:
//! grouping (group_wait, group_interval, repeat_interval), restarts that
//! neither re-send nor drop, silences muting and their expiry un-muting.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{alerter, json_lines, posted, secrets, settings, start_time};
use opsloop_alerter::delivery::Clock;
use opsloop_alerter::matchers::Matcher;
use opsloop_alerter::service::Alerter;
use opsloop_alerter::silence::NewSilence;
use opsloop_core::clock::ManualClock;
use opsloop_core::store::testing::fresh_postgres;
use serde_json::json;

fn local_settings(path: &std::path::Path) -> opsloop_alerter::config::AlerterSettings {
    settings(json!({
        "resolve_timeout": "1d",
        "route": {
            "receiver": "local",
            "group_by": ["alertname"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
        },
        "inhibit_rules": [],
        "receivers": [{"name": "local", "kind": "console", "path": path}],
        "local_output": "always",
    }))
}

/// Moves the clock to `secs` after the start and runs one pass.
async fn tick_at(alerter: &Arc<Alerter>, clock: &ManualClock, secs: i64) {
    let target = start_time() + chrono::Duration::seconds(secs);
    let now = clock.now();
    if target > now {
        clock.advance((target - now).to_std().expect("forward"));
    }
    alerter.tick().await.expect("tick");
    alerter.settle().await;
}

fn firing_count(line: &serde_json::Value) -> usize {
    line["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter(|a| a["status"] == "firing")
        .count()
}

#[tokio::test]
async fn grouping_and_restart_without_duplicates() {
    let db = fresh_postgres().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alerts.jsonl");
    let settings = local_settings(&path);
    let clock = Arc::new(ManualClock::new(start_time()));
    let a = alerter(&settings, db.db.clone(), &secrets(&[]), clock.clone()).await;

    // 100 alerts of one group within group_wait → one notification.
    for i in 0..100 {
        let instance = format!("host-{i}");
        a.post_alerts(
            vec![posted(&[("alertname", "Down"), ("instance", &instance)])],
            "http",
        )
        .await
        .expect("post");
        clock.advance(Duration::from_millis(200));
    }
    tick_at(&a, &clock, 29).await;
    assert_eq!(json_lines(&path).len(), 0, "still within group_wait");
    tick_at(&a, &clock, 30).await;
    let lines = json_lines(&path);
    assert_eq!(lines.len(), 1);
    assert_eq!(firing_count(&lines[0]), 100);

    // A new alert in the group waits for group_interval (30 + 300).
    tick_at(&a, &clock, 60).await;
    a.post_alerts(
        vec![posted(&[("alertname", "Down"), ("instance", "late")])],
        "http",
    )
    .await
    .expect("post");
    tick_at(&a, &clock, 329).await;
    assert_eq!(json_lines(&path).len(), 1);
    tick_at(&a, &clock, 330).await;
    let lines = json_lines(&path);
    assert_eq!(lines.len(), 2);
    assert_eq!(firing_count(&lines[1]), 101);

    // Restart (the old instance simply vanishes): nothing is re-sent.
    drop(a);
    let a = alerter(&settings, db.db.clone(), &secrets(&[]), clock.clone()).await;
    assert_eq!(a.alerts().await.len(), 101, "alerts restored");
    tick_at(&a, &clock, 400).await;
    tick_at(&a, &clock, 430).await;
    assert_eq!(json_lines(&path).len(), 2, "no duplicate after restart");

    // A new alert after the restart arrives at the restarted group's next
    // tick (400 + 300).
    a.post_alerts(
        vec![posted(&[
            ("alertname", "Down"),
            ("instance", "after-restart"),
        ])],
        "http",
    )
    .await
    .expect("post");
    tick_at(&a, &clock, 699).await;
    assert_eq!(json_lines(&path).len(), 2);
    tick_at(&a, &clock, 700).await;
    let lines = json_lines(&path);
    assert_eq!(lines.len(), 3);
    assert_eq!(firing_count(&lines[2]), 102);

    // Unchanged: repeated once repeat_interval (4h) has passed.
    let repeat_due = 700 + 4 * 3600;
    let mut t = 1000;
    while t < repeat_due {
        tick_at(&a, &clock, t).await;
        t += 300;
    }
    assert_eq!(json_lines(&path).len(), 3, "quiet until repeat_interval");
    tick_at(&a, &clock, repeat_due).await;
    assert_eq!(json_lines(&path).len(), 4, "repeated after repeat_interval");

    let rows = a.store().log_rows("local").await.expect("log");
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r.status == "sent"));
    db.cleanup().await;
}

#[tokio::test]
async fn restart_before_the_first_flush_drops_nothing() {
    let db = fresh_postgres().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alerts.jsonl");
    let settings = local_settings(&path);
    let clock = Arc::new(ManualClock::new(start_time()));
    let a = alerter(&settings, db.db.clone(), &secrets(&[]), clock.clone()).await;
    a.post_alerts(
        vec![posted(&[("alertname", "Disk"), ("instance", "a")])],
        "http",
    )
    .await
    .expect("post");
    tick_at(&a, &clock, 10).await;
    drop(a); // gone mid-group, before group_wait ended

    let a = alerter(&settings, db.db.clone(), &secrets(&[]), clock.clone()).await;
    tick_at(&a, &clock, 39).await;
    assert_eq!(json_lines(&path).len(), 0);
    tick_at(&a, &clock, 40).await;
    let lines = json_lines(&path);
    assert_eq!(lines.len(), 1, "the alert is delivered after the restart");
    assert_eq!(lines[0]["alerts"][0]["labels"]["instance"], "a");
    db.cleanup().await;
}

#[tokio::test]
async fn a_silence_mutes_and_its_expiry_unmutes() {
    let db = fresh_postgres().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alerts.jsonl");
    let settings = local_settings(&path);
    let clock = Arc::new(ManualClock::new(start_time()));
    let a = alerter(&settings, db.db.clone(), &secrets(&[]), clock.clone()).await;

    let silence = a
        .create_silence(
            NewSilence {
                matchers: vec![Matcher::parse("service=db").expect("matcher")],
                starts_at: None,
                ends_at: start_time() + chrono::Duration::seconds(100),
                created_by: "ops".into(),
                comment: "db upgrade".into(),
            },
            None,
        )
        .await
        .expect("silence");
    a.post_alerts(
        vec![posted(&[
            ("alertname", "Slow"),
            ("service", "db"),
            ("severity", "warning"),
        ])],
        "http",
    )
    .await
    .expect("post");
    tick_at(&a, &clock, 30).await;
    assert_eq!(json_lines(&path).len(), 0, "silenced");
    let views = a.alerts().await;
    assert_eq!(views[0].silenced_by, vec![silence.id]);

    // The silence survives a restart.
    drop(a);
    let a = alerter(&settings, db.db.clone(), &secrets(&[]), clock.clone()).await;
    assert_eq!(a.silences().await.len(), 1);
    tick_at(&a, &clock, 90).await;
    assert_eq!(json_lines(&path).len(), 0, "still silenced");

    // Expired at 100: the restarted group flushed at 90 (quiet), so its
    // next tick, at 390, tells the receiver.
    tick_at(&a, &clock, 389).await;
    assert_eq!(json_lines(&path).len(), 0);
    tick_at(&a, &clock, 390).await;
    let lines = json_lines(&path);
    assert_eq!(lines.len(), 1, "un-muted after expiry");
    assert!(a.alerts().await[0].silenced_by.is_empty());

    // Expiring an expired silence is refused.
    let err = a
        .expire_silence(silence.id, "ops")
        .await
        .expect_err("expired");
    assert!(err.to_string().contains("already expired"), "{err}");

    // The change is audited in the database.
    use sea_orm::EntityTrait;
    let audit = opsloop_core::store::entities::audit_events::Entity::find()
        .all(&db.db)
        .await
        .expect("audit rows");
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "silence.create");
    assert_eq!(audit[0].actor, "ops");
    assert_eq!(audit[0].subject, format!("silence:{}", silence.id));
    db.cleanup().await;
}

#[tokio::test]
async fn bus_messages_are_taken_once_per_message_id() {
    let db = fresh_postgres().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alerts.jsonl");
    let settings = local_settings(&path);
    let clock = Arc::new(ManualClock::new(start_time()));
    let a = alerter(&settings, db.db.clone(), &secrets(&[]), clock.clone()).await;
    let body = json!({"labels": {"alertname": "BackupFailed", "severity": "high"}, "status": "firing",
        "annotations": {"summary": "nightly backup failed"}});
    let payload = serde_json::to_vec(&body).expect("json");
    assert!(a.receive_message("m-1", &payload).await.expect("first"));
    assert!(!a.receive_message("m-1", &payload).await.expect("duplicate"));
    let err = a
        .receive_message("m-2", b"{not json")
        .await
        .expect_err("malformed");
    assert!(err.to_string().contains("alerts[0]"), "{err}");
    tick_at(&a, &clock, 30).await;
    let lines = json_lines(&path);
    assert_eq!(lines.len(), 1);
    assert_eq!(
        lines[0]["alerts"][0]["annotations"]["summary"],
        "nightly backup failed"
    );

    // A restart remembers the message id.
    drop(a);
    let a = alerter(&settings, db.db.clone(), &secrets(&[]), clock.clone()).await;
    assert!(
        !a.receive_message("m-1", &payload)
            .await
            .expect("still a duplicate")
    );
    db.cleanup().await;
}

#[tokio::test]
async fn two_alerters_one_delivers_and_the_standby_takes_over() {
    let db = fresh_postgres().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alerts.jsonl");
    let settings = local_settings(&path);
    let clock_a = Arc::new(ManualClock::new(start_time()));
    let clock_b = Arc::new(ManualClock::new(start_time()));
    let a = alerter(&settings, db.db.clone(), &secrets(&[]), clock_a.clone()).await;
    let b = alerter(&settings, db.db.clone(), &secrets(&[]), clock_b.clone()).await;
    let at = |secs: i64| start_time() + chrono::Duration::seconds(secs);
    let move_to = |clock: &ManualClock, secs: i64| {
        let now = clock.now();
        if at(secs) > now {
            clock.advance((at(secs) - now).to_std().expect("forward"));
        }
    };

    // Prometheus sends to both.
    for alerter in [&a, &b] {
        alerter
            .post_alerts(
                vec![posted(&[("alertname", "Down"), ("instance", "x")])],
                "http",
            )
            .await
            .expect("post");
    }
    move_to(&clock_a, 30);
    move_to(&clock_b, 30);
    assert!(a.step().await.expect("a steps"), "a takes the lease");
    assert!(!b.step().await.expect("b steps"), "b stands by");
    a.settle().await;
    b.settle().await;
    assert_eq!(json_lines(&path).len(), 1, "delivered once, by the holder");

    // a dies; b takes over after the lease time (15 s) and sends nothing
    // a already sent.
    drop(a);
    move_to(&clock_b, 40);
    assert!(
        !b.step().await.expect("b steps"),
        "the lease has not run out yet"
    );
    move_to(&clock_b, 60);
    assert!(b.step().await.expect("b steps"), "b takes over");
    b.settle().await;
    assert_eq!(
        json_lines(&path).len(),
        1,
        "no duplicate after the takeover"
    );

    // And b delivers what is new.
    b.post_alerts(
        vec![posted(&[("alertname", "Down"), ("instance", "y")])],
        "http",
    )
    .await
    .expect("post");
    move_to(&clock_b, 360);
    assert!(b.step().await.expect("b steps"));
    b.settle().await;
    let lines = json_lines(&path);
    assert_eq!(lines.len(), 2);
    assert_eq!(firing_count(&lines[1]), 2);
    db.cleanup().await;
}

#[tokio::test]
async fn what_only_the_standby_received_is_delivered_by_the_holder() {
    let db = fresh_postgres().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alerts.jsonl");
    let settings = local_settings(&path);
    let clock_a = Arc::new(ManualClock::new(start_time()));
    let clock_b = Arc::new(ManualClock::new(start_time()));
    let a = alerter(&settings, db.db.clone(), &secrets(&[]), clock_a.clone()).await;
    let b = alerter(&settings, db.db.clone(), &secrets(&[]), clock_b.clone()).await;
    assert!(a.step().await.expect("a steps"));
    assert!(!b.step().await.expect("b steps"));
    assert!(*a.leadership().borrow() && !*b.leadership().borrow());

    // A silence and an alert reach only the standby.
    b.create_silence(
        NewSilence {
            matchers: vec![Matcher::parse("instance=muted").expect("matcher")],
            starts_at: None,
            ends_at: start_time() + chrono::Duration::hours(1),
            created_by: "ops".into(),
            comment: "via the standby".into(),
        },
        None,
    )
    .await
    .expect("silence");
    b.post_alerts(
        vec![
            posted(&[("alertname", "OnlyStandby"), ("instance", "seen")]),
            posted(&[("alertname", "OnlyStandby"), ("instance", "muted")]),
        ],
        "http",
    )
    .await
    .expect("post");
    clock_a.advance(Duration::from_secs(10));
    assert!(a.step().await.expect("a syncs"));
    clock_a.advance(Duration::from_secs(30));
    assert!(a.step().await.expect("a flushes"));
    a.settle().await;
    let lines = json_lines(&path);
    assert_eq!(
        lines.len(),
        1,
        "the holder delivered what the standby took in"
    );
    assert_eq!(firing_count(&lines[0]), 1, "the standby's silence applies");
    assert_eq!(lines[0]["alerts"][0]["labels"]["instance"], "seen");
    db.cleanup().await;
}

#[tokio::test]
async fn a_bad_config_fails_at_start_naming_the_key() {
    let db = opsloop_core::store::testing::fresh_sqlite().await;
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(start_time()));
    let cases = [
        (
            json!({"route": {"receiver": "nope"}, "receivers": []}),
            "alerter.route: receiver \"nope\" is not defined",
        ),
        (
            json!({"route": {"receiver": "local", "routes": [{"group_wait": "soon"}]},
                "receivers": [{"name": "local", "kind": "console"}]}),
            "alerter.route.routes[0].group_wait:",
        ),
        (
            json!({"route": {"receiver": "hook"},
                "receivers": [{"name": "hook", "kind": "webhook"}]}),
            "alerter.receivers.hook: needs `secret`",
        ),
        (
            json!({"resolve_timeout": "later"}),
            "alerter.resolve_timeout:",
        ),
        (
            json!({"inhibit_rules": [{"source_matchers": ["a=~("]}]}),
            "alerter.inhibit_rules[0]:",
        ),
    ];
    for (json, expected) in cases {
        let settings = settings(json);
        let err = match Alerter::start(
            &settings,
            db.db.clone(),
            &secrets(&[]),
            "test",
            clock.clone(),
            None,
        )
        .await
        {
            Ok(_) => panic!("{expected}: must fail"),
            Err(err) => err.to_string(),
        };
        assert!(
            err.starts_with(&format!("invalid configuration: {expected}")),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }
    db.cleanup().await;
}
