//! Staged rollouts on a fresh PostgreSQL database and a fresh SQLite file:
//! a rollout through A → B advances only on `go` (the report lists each
//! criterion's measured value), a criterion failing in B rolls back to A
//! with A's toggles, one rollout is active at a time, and a forced advance
//! needs a reason. Time is injected.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use sea_orm::DatabaseConnection;
use serde_json::json;

use super::rollouts::{
    RolloutTick, advance_rollout, create_rollout, current_rollout, evaluate_active,
    rollback_rollout,
};
use super::*;
use crate::domain::input::StepKind;
use crate::domain::rollout::{Criterion, CriterionState, PhaseSpec, RolloutSpec, Verdict};
use crate::store::testing::{TestDb, fresh_postgres, fresh_sqlite, run_one_step_mission};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 1, 0, 0)
        .single()
        .expect("time")
}

fn kind(k: &str) -> StepKind {
    StepKind::parse("kind", k).expect("kind")
}

fn spec() -> RolloutSpec {
    let criteria = || {
        vec![
            Criterion::MissionSuccessRate {
                kinds: vec![kind("echo")],
                min: 0.9,
                min_missions: 2,
            },
            Criterion::Incidents {
                level: "P1".into(),
                max: 0,
            },
        ]
    };
    RolloutSpec {
        name: "launch".into(),
        phases: vec![
            PhaseSpec {
                name: "A".into(),
                description: "analysis only".into(),
                toggles: BTreeMap::from([("x_autopost".into(), false)]),
                caps: BTreeMap::new(),
                min_duration_secs: 3600,
                criteria: criteria(),
            },
            PhaseSpec {
                name: "B".into(),
                description: "x".into(),
                toggles: BTreeMap::from([("x_autopost".into(), true)]),
                caps: BTreeMap::from([(kind("post_x"), 5)]),
                min_duration_secs: 3600,
                criteria: criteria(),
            },
        ],
        auto_advance: false,
    }
}

async fn run_mission(db: &DatabaseConnection, succeed: bool, at: DateTime<Utc>) {
    run_one_step_mission(db, "echo", succeed, at).await;
}

async fn toggle(db: &DatabaseConnection, key: &str) -> serde_json::Value {
    get_policy(db, key).await.expect("toggle").value
}

async fn flows(t: Arc<TestDb>) {
    let db = &t.db;
    let started = create_rollout(db, spec(), "alice", None, t0())
        .await
        .expect("create");
    assert_eq!(started.row.status, "active");
    assert_eq!(toggle(db, "x_autopost").await, json!({"enabled": false}));
    let err = create_rollout(db, spec(), "bob", None, t0())
        .await
        .expect_err("one active");
    assert!(matches!(err, WorkflowError::AlreadyExists(_)), "{err}");

    // Too early, and no mission yet: refused, naming what is open.
    let err = advance_rollout(db, "alice", None, None, t0() + Duration::minutes(1))
        .await
        .expect_err("wait");
    let text = err.to_string();
    assert!(matches!(err, WorkflowError::Conflict(_)), "{text}");
    assert!(
        text.contains("phase A is wait") && text.contains("no mission finished yet"),
        "{text}"
    );
    let err = advance_rollout(db, "alice", Some(" "), None, t0())
        .await
        .expect_err("force needs a reason");
    assert!(matches!(err, WorkflowError::Invalid(_)), "{err}");

    run_mission(db, true, t0() + Duration::minutes(5)).await;
    run_mission(db, true, t0() + Duration::minutes(6)).await;
    // Criteria met but the minimum duration is not over.
    let view = current_rollout(db, t0() + Duration::minutes(30))
        .await
        .expect("read")
        .expect("a rollout");
    let report = view.report.expect("active: a report");
    assert_eq!(report.verdict, Verdict::Wait);
    assert_eq!(report.criteria[0].measured, "100.0 % of 2 missions");
    assert_eq!(report.criteria[1].measured, "0 opened");
    assert!(
        report
            .criteria
            .iter()
            .all(|c| c.state == CriterionState::Met)
    );

    let moved = advance_rollout(db, "alice", None, None, t0() + Duration::minutes(61))
        .await
        .expect("go: advances");
    assert_eq!(
        (moved.from_phase.as_str(), moved.to_phase.as_deref()),
        ("A", Some("B"))
    );
    assert_eq!(moved.report.verdict, Verdict::Go);
    assert_eq!(toggle(db, "x_autopost").await, json!({"enabled": true}));
    let gates = get_policy(db, "step_gates").await.expect("gates").value;
    assert_eq!(gates["kinds"]["post_x"]["daily_cap"], 5);
    assert_eq!(
        gates["kinds"]["post_x"]["toggle"], "x_autopost",
        "other fields kept"
    );
    let history = policy_history(db, "x_autopost", 10).await.expect("history");
    assert!(
        history.iter().any(|h| h.actor == "alice"
            && h.reason
                .as_deref()
                .is_some_and(|r| r.contains("advanced to phase B"))),
        "{history:?}"
    );

    // In B the missions of A no longer count; two failures break the rate.
    let b = t0() + Duration::minutes(61);
    assert_eq!(
        match evaluate_active(db, b + Duration::minutes(1))
            .await
            .expect("tick")
        {
            RolloutTick::Evaluated {
                report, changed, ..
            } => (report.verdict, changed),
            RolloutTick::Idle => panic!("active"),
        },
        (Verdict::Wait, true)
    );
    run_mission(db, false, b + Duration::minutes(2)).await;
    run_mission(db, true, b + Duration::minutes(3)).await;
    let RolloutTick::Evaluated {
        report, changed, ..
    } = evaluate_active(db, b + Duration::minutes(4))
        .await
        .expect("tick")
    else {
        panic!("active");
    };
    assert!(changed);
    assert_eq!(report.verdict, Verdict::NoGo);
    assert_eq!(report.criteria[0].state, CriterionState::Failed);
    assert_eq!(report.criteria[0].measured, "50.0 % of 2 missions");
    // Unchanged verdict: no second event.
    let RolloutTick::Evaluated { changed, .. } = evaluate_active(db, b + Duration::minutes(5))
        .await
        .expect("tick")
    else {
        panic!("active");
    };
    assert!(!changed);

    let back = rollback_rollout(
        db,
        "heartbeat",
        "mission success rate failed",
        None,
        b + Duration::minutes(6),
    )
    .await
    .expect("rollback");
    assert_eq!(
        (back.from_phase.as_str(), back.to_phase.as_deref()),
        ("B", Some("A"))
    );
    assert_eq!(toggle(db, "x_autopost").await, json!({"enabled": false}));

    let events = list_events(
        db,
        &EventFilter {
            kind_pattern: Some("rollout.*".into()),
            limit: 100,
            ..Default::default()
        },
    )
    .await
    .expect("events");
    let mut kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "rollout.advanced",
            "rollout.evaluated",
            "rollout.evaluated",
            "rollout.rolled_back",
            "rollout.started"
        ]
    );
    let advanced = events
        .iter()
        .find(|e| e.kind == "rollout.advanced")
        .expect("advanced");
    assert_eq!(
        advanced.payload["report"]["criteria"][0]["measured"],
        "100.0 % of 2 missions"
    );

    // Rolling back from the first phase ends it; a new one may start.
    let ended = rollback_rollout(db, "alice", "abandon", None, b + Duration::minutes(7))
        .await
        .expect("rollback from A");
    assert_eq!(ended.to_phase, None);
    assert_eq!(ended.view.row.status, "rolled_back");
    let err = advance_rollout(db, "alice", None, None, b + Duration::minutes(8))
        .await
        .expect_err("none active");
    assert!(matches!(err, WorkflowError::NotFound { .. }), "{err}");
    create_rollout(db, spec(), "alice", None, b + Duration::minutes(9))
        .await
        .expect("a new rollout");

    // A forced advance with a reason moves on a wait verdict.
    let forced = advance_rollout(
        db,
        "alice",
        Some("launch day"),
        None,
        b + Duration::minutes(10),
    )
    .await
    .expect("forced");
    assert_eq!(forced.report.verdict, Verdict::Wait);
    assert_eq!(forced.to_phase.as_deref(), Some("B"));
}

#[tokio::test]
async fn rollouts_advance_on_go_and_roll_back_on_a_failed_criterion() {
    for db in [fresh_postgres().await, fresh_sqlite().await] {
        let db = Arc::new(db);
        flows(db.clone()).await;
        if let Ok(db) = Arc::try_unwrap(db) {
            db.cleanup().await;
        }
    }
}
