//! Proposals waiting for approval are seen: one `OpsProposalPendingApproval`
//! notice per proposal once it has waited longer than
//! `heartbeat.pending_notice_secs` (never one decided in time, never twice),
//! with its console link; and the daily summary lists what waits. On
//! PostgreSQL and SQLite, with an injected clock.

use chrono::{DateTime, Duration, DurationRound, Utc};
use opsloop_core::domain::input::{NewProposal, ProposalSource, StepKind, StepSpec};
use opsloop_core::store::testing::{TestDb, fresh_postgres, fresh_sqlite};
use opsloop_core::workflow::{self, PolicyChange};
use opsloop_heartbeat_worker::{Heartbeat, HeartbeatSettings, Phase};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::{Value, json};
use uuid::Uuid;

fn base() -> DateTime<Utc> {
    Utc::now()
        .duration_trunc(Duration::hours(1))
        .expect("trunc")
        - Duration::hours(3)
}

fn heartbeat(db: &TestDb) -> Heartbeat {
    let settings = HeartbeatSettings {
        instance_id: Some("a".into()),
        http_addr: "127.0.0.1:0".into(),
        console_url: "https://ops.example/console/".into(),
        ..Default::default()
    };
    Heartbeat::new(db.db.clone(), None, settings).expect("heartbeat")
}

async fn manual_approval(db: &DatabaseConnection) {
    workflow::set_policy(
        db,
        PolicyChange {
            key: "auto_approve",
            value: json!({"enabled": false, "allowed_kinds": []}),
            actor: "test",
            reason: None,
            expected_version: None,
        },
        None,
        base(),
    )
    .await
    .expect("auto_approve off");
}

async fn submit(db: &DatabaseConnection, title: &str, at: DateTime<Utc>) -> Uuid {
    let proposal = NewProposal {
        title: title.into(),
        source: ProposalSource::Api,
        agent: "writer".into(),
        dedupe_key: None,
        steps: vec![StepSpec {
            kind: StepKind::parse("kind", "draft").expect("kind"),
            payload: json!({}),
            max_attempts: None,
        }],
        parallel: false,
        metadata: json!({}),
        trace_id: None,
    };
    let view = workflow::submit_proposal(db, proposal, at)
        .await
        .expect("submit")
        .proposal;
    assert_eq!(view.proposal.status, "pending", "manual approval is on");
    view.proposal.id
}

async fn notices(db: &DatabaseConnection, alertname: &str) -> Vec<Value> {
    db.query_all_raw(Statement::from_string(
        db.get_database_backend(),
        "SELECT routing_key, payload FROM outbox WHERE routing_key LIKE 'alert.%' ORDER BY id",
    ))
    .await
    .expect("outbox")
    .into_iter()
    .map(|r| {
        let mut payload: Value = r.try_get("", "payload").expect("payload");
        payload["routing_key"] = json!(r.try_get::<String>("", "routing_key").expect("key"));
        payload
    })
    .filter(|p| p["labels"]["alertname"] == alertname)
    .collect()
}

async fn each_overdue_proposal_is_announced_once(t: TestDb) {
    let db = &t.db;
    let hb = heartbeat(&t);
    let t0 = base();
    manual_approval(db).await;
    let slow = submit(db, "post the weekly digest", t0).await;
    let decided = submit(db, "decided in time", t0 + Duration::minutes(1)).await;
    let later = submit(db, "came later", t0 + Duration::minutes(10)).await;

    // 14 minutes: nothing has waited 15 yet.
    let counts = hb
        .run_phase(Phase::OpsHealth, t0 + Duration::minutes(14), 0)
        .await
        .expect("ops health");
    assert_eq!(counts["pending_noticed"], 0, "{counts}");
    workflow::approve_proposal(db, decided, "alice", None, None, t0 + Duration::minutes(5))
        .await
        .expect("approve");

    // 20 minutes: the first has waited 20, the decided one is gone, the
    // last has waited 10.
    let counts = hb
        .run_phase(Phase::OpsHealth, t0 + Duration::minutes(20), 0)
        .await
        .expect("ops health");
    assert_eq!(counts["pending_noticed"], 1, "{counts}");
    let sent = notices(db, "OpsProposalPendingApproval").await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["routing_key"], "alert.info");
    assert_eq!(sent[0]["labels"]["proposal_id"], slow.to_string());
    assert_eq!(
        sent[0]["annotations"]["console_url"],
        format!("https://ops.example/console/proposals/{slow}")
    );
    assert!(
        sent[0]["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("post the weekly digest") && s.contains("20 min")),
        "{sent:?}"
    );

    // Later ticks: the last one once, nobody twice.
    for minutes in [26, 40, 90] {
        hb.run_phase(Phase::OpsHealth, t0 + Duration::minutes(minutes), 0)
            .await
            .expect("ops health");
    }
    let sent = notices(db, "OpsProposalPendingApproval").await;
    let ids: Vec<&str> = sent
        .iter()
        .map(|a| a["labels"]["proposal_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [slow.to_string(), later.to_string()]);

    // The daily summary lists what still waits, oldest first, with links.
    let summary_at = base() + Duration::hours(2);
    let hb_daily = {
        let settings = HeartbeatSettings {
            instance_id: Some("a".into()),
            http_addr: "127.0.0.1:0".into(),
            console_url: "https://ops.example/console".into(),
            summary_cron: "* * * * *".into(),
            ..Default::default()
        };
        Heartbeat::new(db.clone(), None, settings).expect("heartbeat")
    };
    let counts = hb_daily
        .run_phase(Phase::DailySummary, summary_at, 0)
        .await
        .expect("summary");
    assert_eq!(counts["sent"], true, "{counts}");
    let summary = notices(db, "OpsDailySummary").await;
    let figures: Value = serde_json::from_str(
        summary[0]["annotations"]["figures"]
            .as_str()
            .expect("figures"),
    )
    .expect("json");
    let pending = &figures["pendingApproval"];
    assert_eq!(pending["total"], 2, "{pending}");
    assert_eq!(pending["oldest"][0]["id"], slow.to_string());
    assert_eq!(pending["oldest"][0]["waitedMinutes"], 120);
    assert_eq!(
        pending["oldest"][1]["url"],
        format!("https://ops.example/console/proposals/{later}")
    );
    assert_eq!(
        pending["consoleUrl"],
        "https://ops.example/console/proposals?status=pending"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn overdue_proposals_are_announced_once_on_postgres() {
    each_overdue_proposal_is_announced_once(fresh_postgres().await).await;
}

#[tokio::test]
async fn overdue_proposals_are_announced_once_on_sqlite() {
    each_overdue_proposal_is_announced_once(fresh_sqlite().await).await;
}

#[test]
fn a_console_url_that_is_not_http_is_refused_naming_the_key() {
    let settings = HeartbeatSettings {
        console_url: "ops.example/console".into(),
        ..Default::default()
    };
    let err = settings.validate().expect_err("refused");
    assert!(err.to_string().contains("heartbeat.console_url"), "{err}");
}
