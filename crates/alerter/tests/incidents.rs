//! Incidents end to end over a real PostgreSQL database, real local HTTP
//! receivers (Slack-shaped, PagerDuty v2 and a webhook for the alert
//! notifications) and an injected clock: a critical alert opens an
//! incident, the primary is mentioned in Slack and paged in PagerDuty, no
//! acknowledgement within the wait pages the secondary, the signed link
//! acknowledges it and the escalation stops — every request counted at the
//! receivers. A second test restarts the manager between two steps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{LocalReceiver, alerter, posted, secrets, settings, start_time};
use opsloop_alerter::config::AlerterSettings;
use opsloop_alerter::delivery::Clock;
use opsloop_alerter::incident::{Action, Level, State};
use opsloop_alerter::incidents::{IncidentError, IncidentManager, incident_key};
use opsloop_core::clock::ManualClock;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store::testing::fresh_postgres;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

const LINK_KEY: &str = "test-link-key-0123456789";

struct Receivers {
    slack: LocalReceiver,
    pagerduty: LocalReceiver,
    alerts: LocalReceiver,
}

impl Receivers {
    async fn start() -> Self {
        Self {
            slack: LocalReceiver::start().await,
            pagerduty: LocalReceiver::start().await,
            alerts: LocalReceiver::start().await,
        }
    }

    fn secrets(&self) -> SecretStore {
        secrets(&[
            ("slack_webhook_url", &self.slack.url()),
            ("alerts_webhook_url", &self.alerts.url()),
            ("pagerduty_routing_key", "rk-test"),
            ("incident_link_secret", LINK_KEY),
        ])
    }

    fn settings(&self) -> AlerterSettings {
        settings(json!({
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
                {"name": "pagerduty", "kind": "pagerduty", "secret": "pagerduty_routing_key",
                 "api_url": self.pagerduty.url(), "min_interval_ms": 0},
            ],
            "local_output": "never",
            "incidents": {
                "page_receivers": ["slack", "pagerduty"],
                "people": [
                    {"name": "aiko", "slack": "U_AIKO", "pagerduty": "P_AIKO"},
                    {"name": "ben", "slack": "U_BEN", "pagerduty": "P_BEN"},
                ],
                // 2026-11-23 is a Monday; start_time() is 10:00 UTC that day.
                "rotation": {
                    "time_zone": "UTC", "handover_day": "mon", "handover_time": "09:00",
                    "start": "2026-11-23", "members": ["aiko", "ben"],
                },
            },
        }))
    }
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

/// The whole JSON body as text (mentions and links are inside blocks).
fn text(v: &Value) -> String {
    v.to_string()
}

/// The acknowledge link in a Slack page.
fn link_in(body: &Value, action: &str) -> String {
    let text = text(body);
    let prefix = format!("{}: ", action);
    let start = text.find(&prefix).expect("link in the page") + prefix.len();
    let rest = &text[start..];
    let end = rest
        .find(|c: char| c == '\\' || c == '"' || c.is_whitespace())
        .unwrap_or(rest.len());
    rest[..end].to_owned()
}

async fn count(db: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql.to_owned(),
        ))
        .await
        .expect("query")
        .expect("row");
    row.try_get::<i64>("", "n").expect("n")
}

/// Serves the signed-link route on a real local port.
async fn serve_links(manager: Arc<IncidentManager>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, opsloop_alerter::ack_link::router(manager))
            .await
            .expect("serves");
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_alert_pages_escalates_and_stops_at_the_signed_acknowledgement() {
    let db = fresh_postgres().await;
    let r = Receivers::start().await;
    let settings = r.settings();
    let secrets = r.secrets();
    let clock = Arc::new(ManualClock::new(start_time()));
    let a = alerter(&settings, db.db.clone(), &secrets, clock.clone()).await;
    let m = manager(&settings, db.db.clone(), &secrets, clock.clone()).await;
    a.attach_incidents(m.clone());
    let within = Duration::from_secs(10);

    // A critical alert: the group flushes, the incident opens.
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
    assert_eq!(r.alerts.wait_accepted(1, within).await.len(), 1);
    let open = m.list(true, 10).await.expect("list");
    assert_eq!(open.len(), 1, "{open:?}");
    let incident = open[0].clone();
    assert_eq!(incident.level, Level::P0);
    assert_eq!(incident.state, State::Triggered);
    assert_eq!(incident.title, "ApiDown (api)");

    // A second alert of the same group joins it (one open incident).
    clock.advance(Duration::from_secs(2));
    a.post_alerts(
        vec![posted(&[
            ("alertname", "ApiDown"),
            ("service", "api"),
            ("severity", "critical"),
            ("instance", "b"),
        ])],
        "test",
    )
    .await
    .expect("post");
    a.tick().await.expect("tick");
    a.settle().await;
    assert_eq!(r.alerts.wait_accepted(2, within).await.len(), 2);
    let open = m.list(true, 10).await.expect("list");
    assert_eq!(open.len(), 1, "joined, not a second incident");
    assert_eq!(open[0].alerts_firing, 2);

    // The first step is due at once: the primary (aiko) is mentioned in
    // Slack and paged in PagerDuty with the incident's key.
    assert_eq!(m.drive(clock.now()).await.expect("drive"), 1);
    let slack = r.slack.accepted();
    let pd = r.pagerduty.accepted();
    assert_eq!((slack.len(), pd.len()), (1, 1));
    assert!(text(&slack[0]).contains("<@U_AIKO>"), "{}", slack[0]);
    assert!(!text(&slack[0]).contains("<@U_BEN>"));
    assert_eq!(pd[0]["event_action"], "trigger");
    assert_eq!(pd[0]["routing_key"], "rk-test");
    assert_eq!(pd[0]["dedup_key"], incident_key(incident.id));
    assert_eq!(pd[0]["payload"]["severity"], "critical");
    assert!(text(&pd[0]).contains("P_AIKO"), "{}", pd[0]);
    let ack = link_in(&slack[0], "Acknowledge");
    assert!(
        ack.starts_with(&format!(
            "http://alerter.test/api/v1/incidents/{}/acknowledge?exp=",
            incident.id
        )),
        "{ack}"
    );

    // No acknowledgement within the wait (P0: 15 minutes): nothing before
    // it, the secondary (ben) at it.
    clock.advance(Duration::from_secs(15 * 60 - 3));
    assert_eq!(m.drive(clock.now()).await.expect("drive"), 0);
    assert_eq!(r.slack.accepted().len(), 1);
    clock.advance(Duration::from_secs(1));
    assert_eq!(m.drive(clock.now()).await.expect("drive"), 1);
    let slack = r.slack.accepted();
    let pd = r.pagerduty.accepted();
    assert_eq!((slack.len(), pd.len()), (2, 2));
    assert!(text(&slack[1]).contains("<@U_BEN>"), "{}", slack[1]);
    assert_eq!(pd[1]["dedup_key"], incident_key(incident.id));

    // Acknowledged through the signed link, over HTTP.
    let base = serve_links(m.clone()).await;
    let ack = link_in(&slack[1], "Acknowledge").replace("http://alerter.test", &base);
    clock.advance(Duration::from_secs(60));
    let http = reqwest::Client::new();
    let answer = http.get(&ack).send().await.expect("follow");
    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    let acked = m.get(incident.id).await.expect("get");
    assert_eq!(acked.state, State::Acknowledged);
    assert!(
        acked
            .acknowledged_by
            .as_deref()
            .is_some_and(|by| by.starts_with("signed-link:"))
    );
    assert_eq!(
        acked.time_to_acknowledge(),
        Some(chrono::Duration::seconds(2 + 15 * 60 - 3 + 1 + 60))
    );
    assert_eq!(acked.next_escalation_at, None);

    // Reused, forged and expired links: 403, an audit row each, unchanged.
    assert_eq!(http.get(&ack).send().await.expect("reuse").status(), 403);
    let forged = format!("{}0", &ack[..ack.len() - 1]);
    assert_eq!(
        http.get(&forged).send().await.expect("forged").status(),
        403
    );
    let resolve = link_in(&slack[1], "Resolve").replace("http://alerter.test", &base);
    clock.advance(Duration::from_secs(25 * 3600));
    assert_eq!(
        http.get(&resolve).send().await.expect("expired").status(),
        403
    );
    assert_eq!(
        count(
            &db.db,
            "SELECT COUNT(*) AS n FROM audit_events WHERE action = 'incident.link_refused'"
        )
        .await,
        3
    );
    assert_eq!(
        m.get(incident.id).await.expect("get").state,
        State::Acknowledged
    );

    // The escalation stopped: no more pages, however long we wait.
    clock.advance(Duration::from_secs(3600));
    assert_eq!(m.drive(clock.now()).await.expect("drive"), 0);
    assert_eq!(r.slack.accepted().len(), 2);
    assert_eq!(r.pagerduty.accepted().len(), 2);

    // The alerts resolve: shown, but the incident stays open.
    a.post_alerts(
        ["", "b"]
            .into_iter()
            .map(|instance| {
                let mut labels = vec![
                    ("alertname", "ApiDown"),
                    ("service", "api"),
                    ("severity", "critical"),
                ];
                if !instance.is_empty() {
                    labels.push(("instance", instance));
                }
                let mut p = posted(&labels);
                p.ends_at = Some(clock.now() - chrono::Duration::seconds(1));
                p
            })
            .collect(),
        "test",
    )
    .await
    .expect("resolve alerts");
    clock.advance(Duration::from_secs(2));
    a.tick().await.expect("tick");
    a.settle().await;
    let shown = m.get(incident.id).await.expect("get");
    assert!(shown.alerts_resolved, "{shown:?}");
    assert_eq!(shown.state, State::Acknowledged);

    // A person resolves it: PagerDuty hears resolve with the same key.
    let resolved = m
        .transition(incident.id, Action::Resolve, "admin", None)
        .await
        .expect("resolve");
    assert_eq!(resolved.state, State::Resolved);
    let pd = r.pagerduty.accepted();
    assert_eq!(pd.len(), 3);
    assert_eq!(pd[2]["event_action"], "resolve");
    assert_eq!(pd[2]["dedup_key"], incident_key(incident.id));
    let refused = m
        .transition(incident.id, Action::Acknowledge, "admin", None)
        .await
        .expect_err("resolved");
    assert!(
        matches!(refused, IncidentError::Transition(_)) && refused.to_string().contains("resolved"),
        "{refused}"
    );
    assert_eq!(r.slack.accepted().len(), 2, "Slack counted exactly");

    // Each change is an incident.* event with its outbox row, and an audit
    // row naming who did it.
    for (kind, n) in [
        ("incident.opened", 1),
        ("incident.alerts_joined", 1),
        ("incident.escalated", 2),
        ("incident.acknowledged", 1),
        ("incident.alerts_resolved", 1),
        ("incident.resolved", 1),
    ] {
        let sql = format!(
            "SELECT COUNT(*) AS n FROM events e JOIN outbox o ON o.event_id = e.id WHERE e.kind = '{kind}'"
        );
        assert_eq!(count(&db.db, &sql).await, n, "{kind}");
    }
    assert_eq!(
        count(
            &db.db,
            "SELECT COUNT(*) AS n FROM audit_events WHERE action = 'incident.resolve' AND actor = 'admin'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db.db,
            "SELECT COUNT(*) AS n FROM audit_events WHERE action = 'incident.acknowledge' AND actor LIKE 'signed-link:%'"
        )
        .await,
        1
    );
    let timeline = m.timeline(incident.id).await.expect("timeline");
    let kinds: Vec<&str> = timeline.iter().map(|t| t.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "opened",
            "alerts_joined",
            "escalated",
            "escalated",
            "acknowledged",
            "alerts_resolved",
            "resolved"
        ]
    );
    assert!(timeline.windows(2).all(|w| w[0].at <= w[1].at));
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_two_steps_runs_the_next_step_once_at_its_time() {
    let db = fresh_postgres().await;
    let r = Receivers::start().await;
    let settings = r.settings();
    let secrets = r.secrets();
    let clock = Arc::new(ManualClock::new(start_time()));
    let first = manager(&settings, db.db.clone(), &secrets, clock.clone()).await;
    let incident = first
        .open(Level::P1, "Checkout slow", "admin")
        .await
        .expect("open");
    assert_eq!(first.drive(clock.now()).await.expect("drive"), 1);
    assert_eq!(r.slack.accepted().len(), 1);
    drop(first);

    // A new process (same database), 59 minutes later: the P1 wait is an
    // hour from the first step, so nothing yet; at the hour, once.
    clock.advance(Duration::from_secs(59 * 60));
    let second = manager(&settings, db.db.clone(), &secrets, clock.clone()).await;
    assert_eq!(second.drive(clock.now()).await.expect("drive"), 0);
    clock.advance(Duration::from_secs(60));
    assert_eq!(second.drive(clock.now()).await.expect("drive"), 1);
    assert_eq!(second.drive(clock.now()).await.expect("drive"), 0);
    let slack = r.slack.accepted();
    assert_eq!(slack.len(), 2);
    assert!(text(&slack[1]).contains("<@U_BEN>"));
    let after = second.get(incident.id).await.expect("get");
    assert_eq!(
        after.next_escalation_at,
        Some(start_time() + chrono::Duration::hours(2)),
        "the next wait counts from the step's due time"
    );
    // Escalate by hand: the last step (everyone) runs at once.
    second
        .escalate(incident.id, "admin")
        .await
        .expect("escalate");
    assert_eq!(second.drive(clock.now()).await.expect("drive"), 1);
    let slack = r.slack.accepted();
    assert_eq!(slack.len(), 3);
    assert!(text(&slack[2]).contains("<@U_AIKO>") && text(&slack[2]).contains("<@U_BEN>"));
    let done = second
        .escalate(incident.id, "admin")
        .await
        .expect_err("chain done");
    assert!(done.to_string().contains("run to the end"), "{done}");
    db.cleanup().await;
}
