//! Postmortems and incident figures over a real PostgreSQL database, a real
//! local Slack-shaped receiver and an injected clock: a scripted incident (a
//! deploy marker, a critical alert opening it, an emergency stop, a failed
//! mission, a policy change, an acknowledgement, a note, the recovery, the
//! release, the resolution) leaves a draft whose timeline has each of those
//! in order with its time and whose impact figures are exact; a P1 left
//! without a postmortem raises one P3 reminder 5 business days after its
//! resolution, never a second (restart included); `stats` is exact.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{LocalReceiver, alerter, posted, secrets, settings, start_time};
use opsloop_alerter::config::AlerterSettings;
use opsloop_alerter::delivery::Clock;
use opsloop_alerter::incident::{Action, Level, State};
use opsloop_alerter::incidents::IncidentManager;
use opsloop_alerter::postmortem::{LOG_POSTMORTEM, LOG_REMINDER, PLACEHOLDER};
use opsloop_core::clock::ManualClock;
use opsloop_core::domain::input::{EventKind, NewEvent};
use opsloop_core::secrets::SecretStore;
use opsloop_core::store::testing::fresh_postgres;
use opsloop_core::workflow;
use serde_json::{Value, json};

fn setup(slack: &LocalReceiver, alerts: &LocalReceiver) -> (AlerterSettings, SecretStore) {
    let secrets = secrets(&[
        ("slack_webhook_url", &slack.url()),
        ("alerts_webhook_url", &alerts.url()),
    ]);
    let settings = settings(json!({
        "resolve_timeout": "1d",
        "lease_ttl_ms": 0,
        "external_url": "http://alerter.test",
        "route": {
            "receiver": "alerts",
            "group_by": ["alertname", "service"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "4h",
        },
        "inhibit_rules": [],
        "receivers": [
            {"name": "alerts", "kind": "webhook", "secret": "alerts_webhook_url", "min_interval_ms": 0},
            {"name": "slack", "kind": "slack", "secret": "slack_webhook_url", "min_interval_ms": 0},
        ],
        "local_output": "never",
        "incidents": {
            "page_receivers": ["slack"],
            "people": [
                {"name": "aiko", "slack": "U_AIKO"},
                {"name": "ben", "slack": "U_BEN"},
            ],
            // 2026-11-23 is a Monday; start_time() is 10:00 UTC that day.
            "rotation": {
                "time_zone": "UTC", "handover_day": "mon", "handover_time": "09:00",
                "start": "2026-11-23", "members": ["aiko", "ben"],
            },
        },
    }));
    (settings, secrets)
}

async fn manager(
    settings: &AlerterSettings,
    db: sea_orm::DatabaseConnection,
    secrets: &SecretStore,
    clock: Arc<ManualClock>,
) -> Arc<IncidentManager> {
    let clock: Arc<dyn Clock> = clock;
    IncidentManager::start(settings, db, secrets, "test", clock, None)
        .await
        .expect("incident manager starts")
}

async fn emit(
    db: &sea_orm::DatabaseConnection,
    kind: &str,
    payload: Value,
    cost_usd: Option<f64>,
    at: DateTime<Utc>,
) {
    let event = NewEvent {
        kind: EventKind::parse("kind", kind).expect("kind"),
        source: "ci".into(),
        payload,
        tags: Vec::new(),
        cost_usd,
        proposal_id: None,
        mission_id: None,
        step_id: None,
    };
    workflow::append_event(db, event, at).await.expect("event");
}

fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

fn at(offset_minutes: i64) -> DateTime<Utc> {
    start_time() + chrono::Duration::minutes(offset_minutes)
}

/// `(time, source, kind)` of every row of the draft's timeline table.
fn timeline_rows(md: &str) -> Vec<(String, String, String)> {
    let start = md.find("## Timeline (UTC)").expect("timeline section");
    let end = md[start..].find("## Detection").expect("next section") + start;
    md[start..end]
        .lines()
        .filter(|l| l.starts_with("| 2026"))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            (
                cells[0].trim_start_matches("| ").to_owned(),
                cells[1].to_owned(),
                cells[2].to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_incident_leaves_a_draft_a_reminder_once_and_exact_figures() {
    // The process's recorder, installed before any figure is set.
    opsloop_core::telemetry::prometheus();
    let db = fresh_postgres().await;
    let slack = LocalReceiver::start().await;
    let alerts = LocalReceiver::start().await;
    let (settings, secrets) = setup(&slack, &alerts);
    let clock = Arc::new(ManualClock::new(start_time()));
    let a = alerter(&settings, db.db.clone(), &secrets, clock.clone()).await;
    let m = manager(&settings, db.db.clone(), &secrets, clock.clone()).await;
    a.attach_incidents(m.clone());
    let conn = &db.db;

    // Before the lead-in (left out) and within it (the deploy that started it).
    emit(
        conn,
        "deploy.started",
        json!({"service": "api"}),
        None,
        at(-20),
    )
    .await;
    emit(
        conn,
        "deploy.finished",
        json!({"service": "api", "version": "1.4.2"}),
        None,
        at(-10),
    )
    .await;

    // t0: a critical alert opens the incident; the primary is paged.
    a.post_alerts(
        vec![posted(&[
            ("alertname", "ApiDown"),
            ("service", "api"),
            ("severity", "critical"),
        ])],
        "test",
    )
    .await
    .expect("post");
    a.tick().await.expect("tick");
    a.settle().await;
    let incident = m.list(true, 10).await.expect("list").remove(0);
    assert_eq!(incident.opened_at, at(0));
    assert_eq!(m.drive(clock.now()).await.expect("drive"), 1);

    // The loop's side of the story, at its times.
    workflow::engage_emergency_stop(conn, "ben", "runaway retries", None, at(1))
        .await
        .expect("engage");
    emit(
        conn,
        "mission.failed",
        json!({"mission_id": "0190f0a1-2222-7000-8000-000000000000", "error": "HTTP 500 from x"}),
        Some(1.25),
        at(2),
    )
    .await;
    emit(conn, "step.failed", json!({}), Some(0.5), at(2)).await;
    workflow::set_policy(
        conn,
        workflow::PolicyChange {
            key: "x_autopost",
            value: json!({"enabled": false}),
            actor: "ben",
            reason: Some("stop posting while the api is down"),
            expected_version: None,
        },
        None,
        at(3),
    )
    .await
    .expect("policy");
    clock.advance(minutes(5));
    m.transition(incident.id, Action::Acknowledge, "ben", None)
        .await
        .expect("ack");
    clock.advance(minutes(1));
    m.note(incident.id, "ben", "rolled back to 1.4.1")
        .await
        .expect("note");
    emit(conn, "mission.succeeded", json!({}), Some(0.75), at(8)).await;
    emit(
        conn,
        "mission.succeeded",
        json!({}),
        Some(100.0),
        at(8) + chrono::Duration::seconds(30),
    )
    .await;
    workflow::release_emergency_stop(conn, "ben", "api healthy", None, at(9))
        .await
        .expect("release");
    clock.advance(minutes(4));
    m.transition(incident.id, Action::Resolve, "ben", Some("rollback".into()))
        .await
        .expect("resolve");
    // After the resolution: neither in the timeline nor in the figures.
    emit(conn, "mission.failed", json!({}), Some(9.0), at(20)).await;

    // The draft.
    clock.advance(minutes(20));
    let md = m
        .postmortem_draft(incident.id, "ben", clock.now())
        .await
        .expect("draft");
    let rows = timeline_rows(&md);
    let got: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|(t, s, k)| (t.as_str(), s.as_str(), k.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("2026-11-23 09:50:00", "ci", "deploy.finished"),
            ("2026-11-23 10:00:00", "test", "alert.firing"),
            ("2026-11-23 10:00:00", "incident", "opened"),
            ("2026-11-23 10:00:00", "incident", "escalated"),
            ("2026-11-23 10:01:00", "api", "emergency_stop.engaged"),
            ("2026-11-23 10:02:00", "ci", "mission.failed"),
            ("2026-11-23 10:03:00", "api", "policy.changed"),
            ("2026-11-23 10:05:00", "incident", "acknowledged"),
            ("2026-11-23 10:06:00", "incident", "note"),
            ("2026-11-23 10:08:00", "ci", "mission.succeeded"),
            ("2026-11-23 10:09:00", "api", "emergency_stop.released"),
            ("2026-11-23 10:10:00", "incident", "resolved"),
        ],
        "{md}"
    );
    for line in [
        "emergency stop engaged by ben: runaway retries |",
        "mission 0190f0a1 failed: HTTP 500 from x |",
        "policy x_autopost changed (version",
        "deploy marker deploy.finished (service=api, version=1.4.2) |",
        "escalation step 0 (primary): paged aiko via slack delivered |",
        "acknowledged by ben after 5m 00s, within target |",
        "note by ben: rolled back to 1.4.1 |",
        "a mission succeeded: missions recovered |",
        "emergency stop released by ben: api healthy |",
        "resolved by ben (rollback) |",
        // Impact.
        "| Incident level | P0 |",
        "- Duration: 10m 00s\n",
        "- Time to acknowledge: 5m 00s (target 15 min: within target)",
        "- Alerts: 1\n",
        "- Pages: 1 escalation step(s) paged aiko",
        "- Failed missions during the incident: 1\n",
        "- Cost during the incident: $102.50\n",
        "- Emergency stop changes: 2",
        // Detection.
        "- 1 event(s) of the loop in the 10m 00s before it opened (first: deploy marker deploy.finished",
        "- first page 0s after opening: escalation step 0 (primary): paged aiko",
        "| Authors | ben (draft) |",
    ] {
        assert!(md.contains(line), "{line:?} in:\n{md}");
    }
    let root = &md[md.find("## Root cause").expect("root")..md.find("## Resolution").expect("res")];
    assert!(root.contains(PLACEHOLDER), "{root}");
    let log = m.timeline(incident.id).await.expect("log");
    assert_eq!(log.last().map(|e| e.kind.as_str()), Some(LOG_POSTMORTEM));
    assert_eq!(log.last().map(|e| e.actor.as_str()), Some("ben"));

    // A P1 by hand, acknowledged late (61 min > 1 h), resolved, no draft.
    clock.advance(minutes(10)); // t0 + 40 min
    let p1 = m
        .open(Level::P1, "Checkout slow", "admin")
        .await
        .expect("open");
    assert_eq!(m.drive(clock.now()).await.expect("drive"), 1); // aiko
    clock.advance(minutes(60));
    assert_eq!(m.drive(clock.now()).await.expect("drive"), 1); // ben
    clock.advance(minutes(1));
    m.transition(p1.id, Action::Acknowledge, "ben", None)
        .await
        .expect("ack");
    clock.advance(minutes(9));
    m.transition(p1.id, Action::Resolve, "ben", None)
        .await
        .expect("resolve");
    assert_eq!(m.get(p1.id).await.expect("p1").resolved_at, Some(at(110)));
    // The escalation pass refreshes the week's figures on /metrics.
    assert_eq!(m.drive(clock.now()).await.expect("drive"), 0);
    let metrics = opsloop_core::telemetry::render_metrics();
    for line in [
        "# HELP opsloop_incident_mtta_seconds ",
        "opsloop_incident_mtta_seconds{level=\"P0\"} 300\n",
        "opsloop_incident_mtta_seconds{level=\"P1\"} 3660\n",
        "opsloop_incident_mttr_seconds{level=\"P1\"} 4200\n",
        "opsloop_incident_mttr_seconds{level=\"P2\"} 0\n",
        "opsloop_incident_response_breaches_week{level=\"P0\"} 0\n",
        "opsloop_incident_response_breaches_week{level=\"P1\"} 1\n",
        "opsloop_incident_pages_week{person=\"aiko\"} 2\n",
        "opsloop_incident_pages_week{person=\"ben\"} 1\n",
    ] {
        assert!(metrics.contains(line), "{line:?} in:\n{metrics}");
    }

    // Figures over the morning, exact.
    let stats = m.stats(at(-60), at(180)).await.expect("stats");
    let p0 = stats.level(Level::P0);
    assert_eq!(
        (p0.opened, p0.acknowledged, p0.resolved, p0.breaches),
        (1, 1, 1, 0)
    );
    assert_eq!(p0.mtta, Some(chrono::Duration::minutes(5)));
    assert_eq!(p0.mttr, Some(chrono::Duration::minutes(10)));
    let s1 = stats.level(Level::P1);
    assert_eq!(
        (s1.opened, s1.acknowledged, s1.resolved, s1.breaches),
        (1, 1, 1, 1)
    );
    assert_eq!(s1.mtta, Some(chrono::Duration::minutes(61)));
    assert_eq!(s1.mttr, Some(chrono::Duration::minutes(70)));
    assert_eq!(stats.level(Level::P2).opened, 0);
    assert_eq!(
        stats.pages,
        [("aiko".to_owned(), 2), ("ben".to_owned(), 1)].into()
    );

    // Reminders: the P1 resolved Monday 11:50 is due the next Monday 11:50
    // (5 business days); the P0 has its draft and never is.
    let reminders = |m: Arc<IncidentManager>| async move {
        m.list(false, 100)
            .await
            .expect("list")
            .into_iter()
            .filter(|i| i.level == Level::P3)
            .collect::<Vec<_>>()
    };
    clock.advance(Duration::from_secs(7 * 86400 - 60)); // next Monday 11:49
    m.drive(clock.now()).await.expect("drive");
    assert!(reminders(m.clone()).await.is_empty());
    clock.advance(minutes(2));
    m.drive(clock.now()).await.expect("drive");
    let raised = reminders(m.clone()).await;
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert!(
        raised[0]
            .title
            .starts_with("Postmortem due: Checkout slow (P1"),
        "{}",
        raised[0].title
    );
    assert_eq!(raised[0].state, State::Triggered);
    assert_eq!(
        raised[0].labels.get("postmortem_for"),
        Some(&p1.id.to_string())
    );
    assert!(
        m.timeline(p1.id)
            .await
            .expect("log")
            .iter()
            .any(|e| e.kind == LOG_REMINDER)
    );
    // Not again: on the next passes, directly, or after a restart.
    clock.advance(minutes(5));
    m.drive(clock.now()).await.expect("drive");
    assert!(
        m.remind_postmortems(clock.now())
            .await
            .expect("remind")
            .is_empty()
    );
    drop(m);
    let restarted = manager(&settings, db.db.clone(), &secrets, clock.clone()).await;
    clock.advance(Duration::from_secs(86400));
    restarted.drive(clock.now()).await.expect("drive");
    assert_eq!(reminders(restarted.clone()).await.len(), 1);
    drop(a);
    db.cleanup().await;
}
