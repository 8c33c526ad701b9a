//! The loop-state gauges (`opsloop_core::loop_metrics`) on a fresh
//! PostgreSQL database and a fresh SQLite file: the figures follow the loop
//! (a pending proposal, a queued step and its age, a claimed step whose
//! lease runs out, a failure after the last success, the emergency stop,
//! costed events against the seeded budget, a capped kind's quota), and the
//! sampler puts them on `/metrics` with HELP text.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use opsloop_core::clock::ManualClock;
use opsloop_core::domain::input::{
    Limits, NewEvent, NewProposal, ProposalSource, StepKind, StepSpec,
};
use opsloop_core::loop_metrics::{self, LoopSampler};
use opsloop_core::store::testing::{TestDb, fresh_postgres, fresh_sqlite};
use opsloop_core::workflow::{self, ClaimOutcome, PolicyChange};
use serde_json::json;

fn t0() -> DateTime<Utc> {
    // 10:00 in Tokyo (the seeded budget's and gates' zone).
    Utc.with_ymd_and_hms(2026, 11, 23, 1, 0, 0)
        .single()
        .expect("time")
}

fn proposal(kind: &str) -> NewProposal {
    NewProposal {
        title: "gauge test".into(),
        source: ProposalSource::Api,
        agent: "tester".into(),
        dedupe_key: None,
        steps: vec![StepSpec {
            kind: StepKind::parse("kind", kind).expect("kind"),
            payload: json!({}),
            max_attempts: Some(1),
        }],
        parallel: false,
        metadata: json!({}),
        trace_id: None,
    }
}

async fn scenario(db: &TestDb) {
    let conn = &db.db;
    let empty = loop_metrics::read_state(conn, t0()).await.expect("state");
    assert_eq!(empty.pending_proposals, 0);
    assert_eq!(empty.queued_steps, 0);
    assert_eq!(empty.oldest_queued_age_seconds, 0.0);
    assert!(!empty.emergency_stop);

    // `echo` is auto-approved by the seeded policy, `deploy` waits.
    workflow::set_policy(
        conn,
        PolicyChange {
            key: "step_gates",
            value: json!({"timezone": "Asia/Tokyo", "kinds": {"echo": {"daily_cap": 10}}}),
            actor: "test",
            reason: None,
            expected_version: None,
        },
        None,
        t0(),
    )
    .await
    .expect("gates");
    for _ in 0..3 {
        workflow::submit_proposal(conn, proposal("echo"), t0())
            .await
            .expect("echo");
    }
    workflow::submit_proposal(conn, proposal("deploy"), t0())
        .await
        .expect("deploy");

    let at = t0() + Duration::seconds(30);
    let state = loop_metrics::read_state(conn, at).await.expect("state");
    assert_eq!(state.pending_proposals, 1, "{state:?}");
    assert_eq!(state.queued_steps, 3, "{state:?}");
    assert_eq!(state.running_steps, 0);
    assert_eq!(state.oldest_queued_age_seconds, 30.0);
    assert_eq!(state.quotas, vec![("echo".to_owned(), 3, 10)]);

    // Claim all three with a 10 s lease: one succeeds, two fail after it.
    let kinds = [StepKind::parse("kind", "echo").expect("kind")];
    let mut claimed = Vec::new();
    for i in 0..3 {
        match workflow::claim_step(conn, "w1", &kinds, Some(10), t0() + Duration::seconds(i))
            .await
            .expect("claim")
        {
            ClaimOutcome::Claimed(step) => claimed.push(step),
            other => panic!("claim {i}: {other:?}"),
        }
    }
    workflow::complete_step(
        conn,
        claimed[0].id,
        "w1",
        1,
        json!({}),
        None,
        t0() + Duration::seconds(3),
    )
    .await
    .expect("complete");
    for (i, step) in claimed[1..].iter().enumerate() {
        workflow::fail_step(
            conn,
            step.id,
            "w1",
            1,
            "broken",
            false,
            None,
            t0() + Duration::seconds(4 + i as i64),
        )
        .await
        .expect("fail");
    }
    let state = loop_metrics::read_state(conn, t0() + Duration::seconds(5))
        .await
        .expect("state");
    assert_eq!(state.queued_steps, 0, "{state:?}");
    assert_eq!(state.consecutive_failures, 2, "{state:?}");

    // A running step past its lease.
    workflow::submit_proposal(conn, proposal("echo"), t0())
        .await
        .expect("echo");
    let ClaimOutcome::Claimed(_) = workflow::claim_step(conn, "w2", &kinds, Some(10), t0())
        .await
        .expect("claim")
    else {
        panic!("nothing claimed")
    };
    let state = loop_metrics::read_state(conn, t0() + Duration::seconds(5))
        .await
        .expect("state");
    assert_eq!((state.running_steps, state.expired_leases), (1, 0));
    let state = loop_metrics::read_state(conn, t0() + Duration::seconds(60))
        .await
        .expect("state");
    assert_eq!((state.running_steps, state.expired_leases), (1, 1));

    workflow::engage_emergency_stop(conn, "op", "drill", None, t0())
        .await
        .expect("stop");
    assert!(
        loop_metrics::read_state(conn, t0())
            .await
            .expect("state")
            .emergency_stop
    );

    // Costs: one yesterday (Tokyo), two today.
    for (kind, usd, when) in [
        ("llm.call", 4.0, t0() - Duration::days(1)),
        ("llm.call", 1.5, t0()),
        ("search.query", 0.25, t0()),
    ] {
        let event =
            NewEvent::parse(kind, "agent", "{}", &[], Some(usd), &Limits::DEFAULT).expect("event");
        workflow::append_event(conn, event, when)
            .await
            .expect("append");
    }
    let cost = loop_metrics::read_cost(conn, t0()).await.expect("cost");
    assert_eq!(cost.today.get("llm"), Some(&1.5), "{cost:?}");
    assert_eq!(cost.today.get("search"), Some(&0.25), "{cost:?}");
    assert_eq!(cost.month.get("llm"), Some(&5.5), "{cost:?}");
    assert_eq!((cost.daily_budget, cost.monthly_budget), (30.0, 800.0));

    // The sampler publishes them; the scrape carries HELP text.
    let _ = opsloop_core::telemetry::prometheus();
    let sampler = LoopSampler::new(
        conn.clone(),
        Arc::new(ManualClock::new(t0() + Duration::seconds(60))),
    )
    .with_intervals(std::time::Duration::ZERO, std::time::Duration::ZERO);
    sampler.sample_now().await.expect("sample");
    let text = opsloop_core::telemetry::render_metrics();
    for line in [
        "opsloop_emergency_stop_engaged 1",
        "opsloop_step_leases_expired 1",
        "opsloop_steps_consecutive_failures 2",
        "opsloop_cost_usd{period=\"day\",kind=\"llm\"} 1.5",
        "opsloop_cost_budget_usd{period=\"month\"} 800",
        "opsloop_step_quota_limit{kind=\"echo\"} 10",
        "# HELP opsloop_proposals_pending ",
        "# HELP opsloop_build_info ",
    ] {
        assert!(text.contains(line), "/metrics lacks {line:?}:\n{text}");
    }
}

#[tokio::test]
async fn loop_state_on_postgres() {
    let db = fresh_postgres().await;
    scenario(&db).await;
    db.cleanup().await;
}

#[tokio::test]
async fn loop_state_on_sqlite() {
    let db = fresh_sqlite().await;
    scenario(&db).await;
    db.cleanup().await;
}
