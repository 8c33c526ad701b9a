//! Workflow tests on a fresh PostgreSQL database and a fresh SQLite file
//! each: the loop end to end, every gate, legal and illegal transitions,
//! retries, lease recovery, and the races that must stay consistent.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::domain::input::{DedupeKey, NewProposal, ProposalSource, StepKind, StepSpec};
use crate::domain::status::{MissionStatus, ProposalStatus};
use crate::store::testing::{TestDb, fresh_postgres, fresh_sqlite};

fn t0() -> DateTime<Utc> {
    // 10:00 in Tokyo.
    Utc.with_ymd_and_hms(2026, 11, 23, 1, 0, 0)
        .single()
        .expect("time")
}

fn kind(k: &str) -> StepKind {
    StepKind::parse("kind", k).expect("kind")
}

fn proposal(kinds: &[&str], key: Option<&str>) -> NewProposal {
    NewProposal {
        title: "test".into(),
        source: ProposalSource::Api,
        agent: "tester".into(),
        dedupe_key: key.map(|k| DedupeKey::parse("dedupe_key", k).expect("key")),
        steps: kinds
            .iter()
            .map(|k| StepSpec {
                kind: kind(k),
                payload: json!({"k": k}),
                max_attempts: None,
            })
            .collect(),
        parallel: false,
        metadata: json!({}),
        trace_id: None,
    }
}

async fn set(db: &DatabaseConnection, key: &str, value: serde_json::Value) {
    set_policy(
        db,
        PolicyChange {
            key,
            value,
            actor: "test",
            reason: None,
            expected_version: None,
        },
        None,
        t0(),
    )
    .await
    .expect("set policy");
}

async fn both<F, Fut>(body: F)
where
    F: Fn(Arc<TestDb>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for db in [fresh_postgres().await, fresh_sqlite().await] {
        let db = Arc::new(db);
        body(db.clone()).await;
        if let Ok(db) = Arc::try_unwrap(db) {
            db.cleanup().await;
        }
    }
}

async fn kinds_of_events(db: &DatabaseConnection, mission: Uuid) -> Vec<String> {
    list_events(
        db,
        &EventFilter {
            mission_id: Some(mission),
            limit: 1000,
            ..Default::default()
        },
    )
    .await
    .expect("events")
    .into_iter()
    .map(|e| e.kind)
    .collect()
}

fn claimed(outcome: ClaimOutcome) -> crate::store::entities::mission_steps::Model {
    match outcome {
        ClaimOutcome::Claimed(step) => *step,
        other => panic!("expected a claim, got {other:?}"),
    }
}

#[tokio::test]
async fn submit_approve_claim_complete_succeeds_with_events() {
    both(|t| async move {
        let db = &t.db;
        let out = submit_proposal(db, proposal(&["echo", "analyze"], None), t0())
            .await
            .expect("submit");
        assert!(!out.deduplicated);
        assert_eq!(
            out.proposal.status().expect("status"),
            ProposalStatus::Approved
        );
        assert!(out.proposal.proposal.policy_version > 0);
        let mission = out.proposal.mission_id.expect("mission");

        // Sequential: the second step waits for the first.
        let first = claimed(
            claim_step(db, "w1", &[kind("echo"), kind("analyze")], None, t0())
                .await
                .expect("claim"),
        );
        assert_eq!(first.seq, 0);
        assert_eq!(first.attempt, 1);
        assert_eq!(
            claim_step(db, "w2", &[kind("analyze")], None, t0())
                .await
                .expect("claim"),
            ClaimOutcome::Nothing
        );
        let (_, status) =
            complete_step(db, first.id, "w1", 1, json!({"ok": true}), Some(0.5), t0())
                .await
                .expect("complete");
        assert_eq!(status, MissionStatus::Running);
        let second = claimed(
            claim_step(db, "w2", &[kind("analyze")], Some(30), t0())
                .await
                .expect("claim"),
        );
        let (step, status) = complete_step(db, second.id, "w2", 1, json!({}), None, t0())
            .await
            .expect("complete");
        assert_eq!(step.status, "succeeded");
        assert_eq!(status, MissionStatus::Succeeded);

        let view = get_mission(db, mission).await.expect("mission");
        assert_eq!(view.mission.status, "succeeded");
        assert_eq!(view.step_count, 2);
        assert!((view.cost_usd - 0.5).abs() < 1e-9);
        let kinds = kinds_of_events(db, mission).await;
        assert_eq!(
            kinds,
            [
                "mission.started",
                "step.started",
                "step.succeeded",
                "step.started",
                "step.succeeded",
                "mission.succeeded"
            ]
        );
        // Completing again is an illegal transition / lost lease.
        let err = complete_step(db, second.id, "w2", 1, json!({}), None, t0())
            .await
            .expect_err("twice");
        assert!(matches!(err, WorkflowError::LeaseLost { .. }), "{err:?}");

        // Every event has one outbox row.
        let row = db
            .query_one_raw(stmt(
                db.get_database_backend(),
                "SELECT (SELECT COUNT(*) FROM events) - (SELECT COUNT(*) FROM outbox) AS n",
                vec![],
            ))
            .await
            .expect("q")
            .expect("row");
        assert_eq!(row.try_get::<i64>("", "n").expect("n"), 0);
    })
    .await;
}

#[tokio::test]
async fn gates_dedupe_stop_toggle_cap_and_auto_approve() {
    both(|t| async move {
        let db = &t.db;
        // dedupe: same key returns the first proposal.
        let a = submit_proposal(db, proposal(&["echo"], Some("k1")), t0())
            .await
            .expect("a");
        let b = submit_proposal(db, proposal(&["echo"], Some("k1")), t0())
            .await
            .expect("b");
        assert!(b.deduplicated);
        assert_eq!(a.proposal.proposal.id, b.proposal.proposal.id);

        // toggle off → rejected, and the key is not held.
        let r = submit_proposal(db, proposal(&["post_x"], Some("k2")), t0())
            .await
            .expect("r");
        assert_eq!(
            r.proposal.proposal.rejection_reason.as_deref(),
            Some("toggle_disabled")
        );
        assert_eq!(r.proposal.proposal.dedupe_key, None);
        set(db, "x_autopost", json!({"enabled": true})).await;
        let p = submit_proposal(db, proposal(&["post_x"], Some("k2")), t0())
            .await
            .expect("p");
        assert!(!p.deduplicated, "a rejected proposal must not hold its key");
        // post_x is not in auto_approve's allowed kinds → pending.
        assert_eq!(p.proposal.status().expect("s"), ProposalStatus::Pending);
        assert!(p.proposal.proposal.policy_version > r.proposal.proposal.policy_version);

        // emergency stop rejects before anything else, and stops claims.
        engage_emergency_stop(db, "op", "drill", None, t0())
            .await
            .expect("engage");
        let s = submit_proposal(db, proposal(&["echo"], None), t0())
            .await
            .expect("s");
        assert_eq!(
            s.proposal.proposal.rejection_reason.as_deref(),
            Some("emergency_stop")
        );
        assert_eq!(
            claim_step(db, "w", &[kind("echo")], None, t0())
                .await
                .expect("claim"),
            ClaimOutcome::EmergencyStop
        );
        let again = engage_emergency_stop(db, "op", "drill", None, t0())
            .await
            .expect("engage");
        assert!(!again.changed);
        release_emergency_stop(db, "op", "done", None, t0())
            .await
            .expect("release");
        let ok = submit_proposal(db, proposal(&["echo"], None), t0())
            .await
            .expect("ok");
        assert_eq!(ok.proposal.status().expect("s"), ProposalStatus::Approved);
    })
    .await;
}

#[tokio::test]
async fn submit_in_a_callers_transaction_commits_or_rolls_back_with_it() {
    both(|t| async move {
        let db = &t.db;
        let count = |sql: &'static str| async move {
            db.query_one_raw(stmt(db.get_database_backend(), sql, vec![]))
                .await
                .expect("count")
                .expect("row")
                .try_get::<i64>("", "n")
                .expect("n")
        };
        let events = "SELECT COUNT(*) AS n FROM events";
        let before = count(events).await;
        // Rolled back: the proposal, its mission, events and outbox rows
        // and the caller's own event vanish together.
        let tx = begin_write(db).await.expect("begin");
        let out = submit_proposal_in(&tx, proposal(&["echo"], Some("in-tx")), t0())
            .await
            .expect("submit in tx");
        assert_eq!(out.proposal.status().expect("s"), ProposalStatus::Approved);
        assert!(out.proposal.mission_id.is_some());
        append_event_in(
            &tx,
            crate::domain::input::NewEvent {
                kind: crate::domain::input::EventKind::parse("kind", "caller.row").expect("k"),
                source: "test".into(),
                payload: json!({}),
                tags: vec![],
                cost_usd: None,
                proposal_id: Some(out.proposal.proposal.id),
                mission_id: None,
                step_id: None,
            },
            t0(),
        )
        .await
        .expect("event in tx");
        tx.rollback().await.expect("rollback");
        assert_eq!(count("SELECT COUNT(*) AS n FROM proposals").await, 0);
        assert_eq!(count("SELECT COUNT(*) AS n FROM missions").await, 0);
        assert_eq!(count(events).await, before);
        // Committed: the same gates, and the key is held afterwards.
        let tx = begin_write(db).await.expect("begin");
        let first = submit_proposal_in(&tx, proposal(&["echo"], Some("in-tx")), t0())
            .await
            .expect("submit in tx");
        tx.commit().await.expect("commit");
        let again = submit_proposal(db, proposal(&["echo"], Some("in-tx")), t0())
            .await
            .expect("again");
        assert!(again.deduplicated);
        assert_eq!(again.proposal.proposal.id, first.proposal.proposal.id);
        // The gates run inside the transaction: the emergency stop rejects.
        engage_emergency_stop(db, "op", "drill", None, t0())
            .await
            .expect("engage");
        let tx = begin_write(db).await.expect("begin");
        let stopped = submit_proposal_in(&tx, proposal(&["echo"], Some("in-tx-2")), t0())
            .await
            .expect("submit in tx");
        tx.commit().await.expect("commit");
        assert_eq!(
            stopped.proposal.proposal.rejection_reason.as_deref(),
            Some("emergency_stop")
        );
    })
    .await;
}

#[tokio::test]
async fn daily_cap_at_the_boundary_and_across_the_policy_midnight() {
    both(|t| async move {
        let db = &t.db;
        set(
            db,
            "step_gates",
            json!({"timezone": "Asia/Tokyo",
            "kinds": {"echo": {"daily_cap": 3}}}),
        )
        .await;
        // 23:59:59 Tokyo.
        let late = Utc
            .with_ymd_and_hms(2026, 11, 23, 14, 59, 59)
            .single()
            .expect("t");
        let two = submit_proposal(db, proposal(&["echo", "echo"], None), late)
            .await
            .expect("2");
        assert_eq!(two.proposal.status().expect("s"), ProposalStatus::Approved);
        let over = submit_proposal(db, proposal(&["echo", "echo"], None), late)
            .await
            .expect("over");
        assert_eq!(
            over.proposal.proposal.rejection_reason.as_deref(),
            Some("daily_cap")
        );
        let one = submit_proposal(db, proposal(&["echo"], None), late)
            .await
            .expect("1");
        assert_eq!(
            one.proposal.status().expect("s"),
            ProposalStatus::Approved,
            "exactly at the cap"
        );
        let full = submit_proposal(db, proposal(&["echo"], None), late)
            .await
            .expect("full");
        assert_eq!(
            full.proposal.proposal.rejection_reason.as_deref(),
            Some("daily_cap")
        );
        // One second later it is a new day in Tokyo.
        let midnight = late + Duration::seconds(1);
        let fresh = submit_proposal(db, proposal(&["echo", "echo", "echo"], None), midnight)
            .await
            .expect("new day");
        assert_eq!(
            fresh.proposal.status().expect("s"),
            ProposalStatus::Approved
        );
        let too_many = submit_proposal(
            db,
            proposal(&["echo"; 4], None),
            midnight + Duration::days(1),
        )
        .await
        .expect("4 > cap");
        assert_eq!(
            too_many.proposal.proposal.rejection_reason.as_deref(),
            Some("daily_cap")
        );

        // Pending proposals count; rejecting one gives its count back.
        set(
            db,
            "step_gates",
            json!({"timezone": "UTC", "kinds": {"draft_x": {"daily_cap": 1}}}),
        )
        .await;
        let pending = submit_proposal(db, proposal(&["draft_x"], None), t0())
            .await
            .expect("p");
        assert_eq!(
            pending.proposal.status().expect("s"),
            ProposalStatus::Pending
        );
        let blocked = submit_proposal(db, proposal(&["draft_x"], None), t0())
            .await
            .expect("b");
        assert_eq!(
            blocked.proposal.proposal.rejection_reason.as_deref(),
            Some("daily_cap")
        );
        reject_proposal(db, pending.proposal.proposal.id, "op", "no", None, t0())
            .await
            .expect("reject");
        let freed = submit_proposal(db, proposal(&["draft_x"], None), t0())
            .await
            .expect("f");
        assert_eq!(freed.proposal.status().expect("s"), ProposalStatus::Pending);
    })
    .await;
}

#[tokio::test]
async fn approve_reject_expire_and_illegal_transitions() {
    both(|t| async move {
        let db = &t.db;
        let p = submit_proposal(db, proposal(&["publish"], None), t0())
            .await
            .expect("p");
        let id = p.proposal.proposal.id;
        assert_eq!(p.proposal.status().expect("s"), ProposalStatus::Pending);
        let approved = approve_proposal(db, id, "op", None, None, t0())
            .await
            .expect("approve");
        let mission = approved.mission_id.expect("mission");
        let twice = approve_proposal(db, id, "op2", None, None, t0())
            .await
            .expect("approve twice");
        assert_eq!(twice.mission_id, Some(mission));
        let err = reject_proposal(db, id, "op", "late", None, t0())
            .await
            .expect_err("reject approved");
        assert!(matches!(err, WorkflowError::Illegal(_)), "{err:?}");

        let q = submit_proposal(db, proposal(&["publish"], None), t0())
            .await
            .expect("q");
        let qid = q.proposal.proposal.id;
        let rejected = reject_proposal(db, qid, "op", "no", None, t0())
            .await
            .expect("reject");
        assert_eq!(
            rejected.proposal.rejection_reason.as_deref(),
            Some("manual")
        );
        let err = approve_proposal(db, qid, "op", None, None, t0())
            .await
            .expect_err("approve rejected");
        assert!(matches!(err, WorkflowError::Illegal(_)), "{err:?}");
        let err = reject_proposal(db, qid, "op", "again", None, t0())
            .await
            .expect_err("reject twice");
        assert!(matches!(err, WorkflowError::Illegal(_)), "{err:?}");

        let old = submit_proposal(db, proposal(&["publish"], None), t0())
            .await
            .expect("old");
        let expired = expire_stale_proposals(db, Duration::days(7), t0() + Duration::days(8))
            .await
            .expect("expire");
        assert_eq!(expired, vec![old.proposal.proposal.id]);
        let err = approve_proposal(db, old.proposal.proposal.id, "op", None, None, t0())
            .await
            .expect_err("expired");
        assert!(matches!(err, WorkflowError::Illegal(_)), "{err:?}");
        let err = approve_proposal(db, Uuid::now_v7(), "op", None, None, t0())
            .await
            .expect_err("unknown");
        assert!(matches!(err, WorkflowError::NotFound { .. }), "{err:?}");

        // Mission: cancel running; cancel again is illegal; claims stop.
        let view = cancel_mission(db, mission, "op", "not needed", None, t0())
            .await
            .expect("cancel");
        assert_eq!(view.mission.status, "cancelled");
        assert_eq!(view.outcome_detail.as_deref(), Some("not needed"));
        assert!(view.steps.iter().all(|s| s.status == "cancelled"));
        let err = cancel_mission(db, mission, "op", "again", None, t0())
            .await
            .expect_err("twice");
        assert!(matches!(err, WorkflowError::Illegal(_)), "{err:?}");
        assert_eq!(
            claim_step(db, "w", &[kind("publish")], None, t0())
                .await
                .expect("claim"),
            ClaimOutcome::Nothing
        );
    })
    .await;
}

#[tokio::test]
async fn retries_back_off_then_dead_letter_and_fail_the_mission() {
    both(|t| async move {
        let db = &t.db;
        let out = submit_proposal(db, proposal(&["echo", "draft"], None), t0())
            .await
            .expect("submit");
        let mission = out.proposal.mission_id.expect("mission");
        let step = claimed(
            claim_step(db, "w", &[kind("echo")], None, t0())
                .await
                .expect("claim"),
        );
        let err = fail_step(db, step.id, "other", 1, "boom", true, None, t0())
            .await
            .expect_err("not holder");
        assert!(matches!(err, WorkflowError::LeaseLost { .. }));
        let (step, requeued, status) = fail_step(db, step.id, "w", 1, "boom", true, None, t0())
            .await
            .expect("fail");
        assert!(requeued);
        assert_eq!(status, MissionStatus::Running);
        let next = step.next_attempt_at.expect("backoff");
        assert!(next > t0() && next <= t0() + Duration::seconds(5));
        assert_eq!(
            claim_step(db, "w", &[kind("echo")], None, t0())
                .await
                .expect("c"),
            ClaimOutcome::Nothing
        );
        let later = t0() + Duration::seconds(10);
        let step = claimed(
            claim_step(db, "w", &[kind("echo")], None, later)
                .await
                .expect("claim 2"),
        );
        assert_eq!(step.attempt, 2);
        fail_step(db, step.id, "w", 2, "boom", true, None, later)
            .await
            .expect("fail 2");
        let later = later + Duration::seconds(60);
        let step = claimed(
            claim_step(db, "w", &[kind("echo")], None, later)
                .await
                .expect("claim 3"),
        );
        assert_eq!(step.attempt, 3);
        let (step, requeued, status) =
            fail_step(db, step.id, "w", 3, "boom", true, Some(0.1), later)
                .await
                .expect("fail 3");
        assert!(!requeued, "attempts exhausted");
        assert_eq!(step.status, "failed");
        assert_eq!(status, MissionStatus::Failed);
        let view = get_mission(db, mission).await.expect("mission");
        assert_eq!(view.steps[1].status, "cancelled");
        assert_eq!(view.outcome_detail.as_deref(), Some("boom"));
        let dead = db
            .query_one_raw(stmt(
                db.get_database_backend(),
                "SELECT COUNT(*) AS n FROM step_dead_letters",
                vec![],
            ))
            .await
            .expect("q")
            .expect("row");
        assert_eq!(dead.try_get::<i64>("", "n").expect("n"), 1);
        let kinds = kinds_of_events(db, mission).await;
        assert_eq!(
            kinds
                .iter()
                .filter(|k| k.as_str() == "mission.failed")
                .count(),
            1
        );
    })
    .await;
}

#[tokio::test]
async fn expired_lease_is_recovered_and_the_late_worker_is_fenced() {
    both(|t| async move {
        let db = &t.db;
        let out = submit_proposal(db, proposal(&["echo"], None), t0())
            .await
            .expect("submit");
        let step = claimed(
            claim_step(db, "slow", &[kind("echo")], Some(60), t0())
                .await
                .expect("claim"),
        );
        let renewed = renew_lease(
            db,
            step.id,
            "slow",
            1,
            Some(60),
            t0() + Duration::seconds(30),
        )
        .await
        .expect("renew");
        assert_eq!(renewed, t0() + Duration::seconds(90));
        let report = recover_stale_steps(db, t0() + Duration::seconds(60))
            .await
            .expect("recover");
        assert!(report.requeued.is_empty(), "lease still valid");
        let report = recover_stale_steps(db, t0() + Duration::seconds(91))
            .await
            .expect("recover");
        assert_eq!(report.requeued, vec![step.id]);
        let again = claimed(
            claim_step(
                db,
                "fast",
                &[kind("echo")],
                None,
                t0() + Duration::seconds(92),
            )
            .await
            .expect("reclaim"),
        );
        assert_eq!(again.attempt, 2);
        let err = complete_step(
            db,
            step.id,
            "slow",
            1,
            json!({}),
            None,
            t0() + Duration::seconds(93),
        )
        .await
        .expect_err("late");
        assert!(matches!(err, WorkflowError::LeaseLost { .. }), "{err:?}");
        let err = renew_lease(db, step.id, "slow", 1, None, t0() + Duration::seconds(93))
            .await
            .expect_err("late renew");
        assert!(matches!(err, WorkflowError::LeaseLost { .. }), "{err:?}");
        let (_, status) = complete_step(
            db,
            step.id,
            "fast",
            2,
            json!({}),
            None,
            t0() + Duration::seconds(94),
        )
        .await
        .expect("complete");
        assert_eq!(status, MissionStatus::Succeeded);
        let _ = out;
    })
    .await;
}

#[tokio::test]
async fn races_stay_consistent() {
    both(|t| async move {
        let db = t.db.clone();
        // 50 concurrent submits with one key → one proposal.
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let db = db.clone();
            tasks.spawn(async move {
                submit_proposal(&db, proposal(&["echo"], Some("same")), t0()).await
            });
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut fresh = 0;
        while let Some(done) = tasks.join_next().await {
            let out = done.expect("join").expect("submit");
            ids.insert(out.proposal.proposal.id);
            if !out.deduplicated {
                fresh += 1;
            }
        }
        assert_eq!(ids.len(), 1);
        assert_eq!(fresh, 1);

        // 20 missions, 32 concurrent claimers: no step handed out twice.
        for _ in 0..20 {
            submit_proposal(&db, proposal(&["echo"], None), t0())
                .await
                .expect("submit");
        }
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..32 {
            let db = db.clone();
            tasks.spawn(async move {
                claim_step(&db, &format!("w{w}"), &[kind("echo")], None, t0()).await
            });
        }
        let mut claimed_ids = Vec::new();
        while let Some(done) = tasks.join_next().await {
            if let ClaimOutcome::Claimed(step) = done.expect("join").expect("claim") {
                claimed_ids.push(step.id);
            }
        }
        let unique: std::collections::BTreeSet<_> = claimed_ids.iter().collect();
        assert_eq!(
            unique.len(),
            claimed_ids.len(),
            "a step was handed out twice"
        );
        assert_eq!(claimed_ids.len(), 21);

        // approve racing approve → one mission.
        let p = submit_proposal(&db, proposal(&["publish"], None), t0())
            .await
            .expect("p");
        let id = p.proposal.proposal.id;
        let (a, b) = tokio::join!(
            approve_proposal(&db, id, "a", None, None, t0()),
            approve_proposal(&db, id, "b", None, None, t0())
        );
        assert_eq!(a.expect("a").mission_id, b.expect("b").mission_id);

        // cancel racing complete → one final mission event, consistent steps.
        let out = submit_proposal(&db, proposal(&["analyze"], None), t0())
            .await
            .expect("submit");
        let mission = out.proposal.mission_id.expect("mission");
        let step = claimed(
            claim_step(&db, "w", &[kind("analyze")], None, t0())
                .await
                .expect("claim"),
        );
        let (c, d) = tokio::join!(
            cancel_mission(&db, mission, "op", "race", None, t0()),
            complete_step(&db, step.id, "w", 1, json!({}), None, t0())
        );
        let view = get_mission(&db, mission).await.expect("mission");
        match (c.is_ok(), d.is_ok()) {
            (true, false) => {
                assert_eq!(view.mission.status, "cancelled");
                assert_eq!(view.steps[0].status, "cancelled");
            }
            (false, true) => {
                assert_eq!(view.mission.status, "succeeded");
                assert_eq!(view.steps[0].status, "succeeded");
            }
            other => panic!("exactly one of cancel/complete must win: {other:?}"),
        }
        let finals = kinds_of_events(&db, mission)
            .await
            .into_iter()
            .filter(|k| {
                matches!(
                    k.as_str(),
                    "mission.cancelled" | "mission.succeeded" | "mission.failed"
                )
            })
            .count();
        assert_eq!(finals, 1);
    })
    .await;
}

#[tokio::test]
async fn policy_set_validates_and_versions_and_summary_counts() {
    both(|t| async move {
        let db = &t.db;
        let before = get_policy(db, "worker_policy").await.expect("get");
        let err = set_policy(db, PolicyChange { key: "worker_policy", value: json!({"lease_seconds": 0}),
            actor: "op", reason: None, expected_version: None }, None, t0()).await.expect_err("invalid");
        assert!(matches!(err, WorkflowError::Invalid(_)));
        let err = set_policy(db, PolicyChange { key: "nope", value: json!({}),
            actor: "op", reason: None, expected_version: None }, None, t0()).await.expect_err("unknown");
        assert!(matches!(err, WorkflowError::Invalid(_)));
        let value = json!({"lease_seconds": 60, "max_attempts": 2, "backoff_base_seconds": 1, "backoff_max_seconds": 10});
        let err = set_policy(db, PolicyChange { key: "worker_policy", value: value.clone(),
            actor: "op", reason: None, expected_version: Some(before.version + 100) }, None, t0()).await.expect_err("cas");
        assert!(matches!(err, WorkflowError::Conflict(_)));
        let (after, previous) = set_policy(db, PolicyChange { key: "worker_policy", value,
            actor: "op", reason: Some("tune"), expected_version: Some(before.version) }, None, t0()).await.expect("set");
        assert_eq!(previous, Some(before.value));
        assert!(after.version > before.version);
        assert_eq!(load_policy(db).await.expect("load").version, after.version);
        let audits = db.query_one_raw(stmt(db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM audit_events WHERE action = 'policy.set'", vec![])).await.expect("q").expect("r");
        assert_eq!(audits.try_get::<i64>("", "n").expect("n"), 1);

        submit_proposal(db, proposal(&["echo"], None), t0()).await.expect("a");
        submit_proposal(db, proposal(&["publish"], None), t0()).await.expect("p");
        let s = summary(db, SummaryPeriod::Daily, t0() + Duration::hours(1)).await.expect("summary");
        assert_eq!(s.proposals["approved"], 1);
        assert_eq!(s.proposals["pending"], 1);
        assert_eq!(s.proposals["expired"], 0);
        assert_eq!(s.missions["running"], 1);
        assert_eq!(s.steps["queued"], 1);
        assert!(s.total_events >= 4);
        let h = health(db, t0()).await.expect("health");
        assert_eq!(h.pending_proposals, 1);
        assert_eq!(h.queued_steps, 1);
        assert!(!h.emergency_stop.engaged);
    })
    .await;
}

#[tokio::test]
async fn outbox_relay_publishes_in_order_once() {
    use crate::bus::{Bus, QueueSpec, memory::MemoryBus};
    both(|t| async move {
        let db = &t.db;
        let bus = MemoryBus::new();
        let mut sub = bus
            .subscribe(QueueSpec::new("q", &["event.#"]))
            .await
            .expect("subscribe");
        let out = submit_proposal(db, proposal(&["echo"], None), t0())
            .await
            .expect("submit");
        let mission = out.proposal.mission_id.expect("mission");
        let step = claimed(
            claim_step(db, "w", &[kind("echo")], None, t0())
                .await
                .expect("claim"),
        );
        complete_step(db, step.id, "w", 1, json!({}), None, t0())
            .await
            .expect("complete");
        let pass = outbox::relay_once(db, &bus, 100).await.expect("relay");
        assert_eq!(pass.published, 6);
        assert_eq!(
            outbox::relay_once(db, &bus, 100)
                .await
                .expect("relay")
                .published,
            0
        );
        let mut kinds = Vec::new();
        for _ in 0..6 {
            let d = sub.next().await.expect("delivery");
            let body: serde_json::Value = serde_json::from_slice(&d.message.payload).expect("json");
            if body["mission_id"] == json!(mission) {
                kinds.push(body["kind"].as_str().unwrap_or("").to_owned());
            }
            d.ack().await.expect("ack");
        }
        assert_eq!(
            kinds,
            [
                "mission.started",
                "step.started",
                "step.succeeded",
                "mission.succeeded"
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn two_relays_publish_each_event_once_in_order() {
    use crate::bus::{Bus, QueueSpec, memory::MemoryBus};
    both(|t| async move {
        let db = t.db.clone();
        let bus = MemoryBus::new();
        let mut sub = bus
            .subscribe(QueueSpec::new("q", &["event.#"]))
            .await
            .expect("subscribe");
        for _ in 0..10 {
            submit_proposal(&db, proposal(&["echo"], None), t0())
                .await
                .expect("submit");
        }
        let total = db
            .query_one_raw(stmt(
                db.get_database_backend(),
                "SELECT COUNT(*) AS n FROM outbox",
                vec![],
            ))
            .await
            .expect("q")
            .expect("row")
            .try_get::<i64>("", "n")
            .expect("n");
        // Two replicas' relays racing, small batches, until nothing is left.
        loop {
            let (a, b) = tokio::join!(
                outbox::relay_once(&db, &bus, 7),
                outbox::relay_once(&db, &bus, 7)
            );
            let (a, b) = (a.expect("relay a"), b.expect("relay b"));
            if a.published == 0 && b.published == 0 && !a.busy && !b.busy {
                break;
            }
        }
        let mut seqs = Vec::new();
        for _ in 0..total {
            let d = sub.next().await.expect("delivery");
            let body: serde_json::Value = serde_json::from_slice(&d.message.payload).expect("json");
            seqs.push(body["seq"].as_i64().expect("seq"));
            d.ack().await.expect("ack");
        }
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len() as i64, total, "each event exactly once");
        assert_eq!(seqs, sorted, "published in order");
        assert_eq!(bus.depth("q"), 0);
        let h = health(&db, t0()).await.expect("health");
        assert_eq!(h.last_heartbeat_at, None);
        assert_eq!(h.alert_cooldown_until, None);
    })
    .await;
}

#[tokio::test]
async fn a_policy_change_racing_submits_never_lets_one_through_a_closed_gate() {
    both(|t| async move {
        let db = t.db.clone();
        // One process's cache, warmed while every gate is open.
        let cache = PolicyCache::new();
        let warm = submit_proposal_cached(&db, &cache, proposal(&["echo"], None), t0())
            .await
            .expect("warm");
        assert_eq!(
            warm.proposal.status().expect("status"),
            ProposalStatus::Approved
        );

        // Submitters race an emergency stop engaged by another process (no
        // access to this cache). Every submit that started after the stop
        // committed must be rejected.
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let db = db.clone();
            let cache = cache.clone();
            tasks.spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..15 {
                    let started = std::time::Instant::now();
                    let out = submit_proposal_cached(&db, &cache, proposal(&["echo"], None), t0())
                        .await
                        .expect("submit");
                    seen.push((started, out.proposal.status().expect("status")));
                }
                seen
            });
        }
        tokio::task::yield_now().await;
        engage_emergency_stop(&db, "test", "race", None, t0())
            .await
            .expect("engage");
        let closed = std::time::Instant::now();
        // Submits certainly started after the stop, on this cache.
        for _ in 0..3 {
            let out = submit_proposal_cached(&db, &cache, proposal(&["echo"], None), t0())
                .await
                .expect("after stop");
            assert_eq!(
                out.proposal.status().expect("status"),
                ProposalStatus::Rejected
            );
            assert_eq!(
                out.proposal.proposal.rejection_reason.as_deref(),
                Some("emergency_stop")
            );
        }
        let mut after = 0;
        while let Some(done) = tasks.join_next().await {
            for (started, status) in done.expect("join") {
                if started > closed {
                    after += 1;
                    assert_eq!(status, ProposalStatus::Rejected, "passed a closed gate");
                }
            }
        }
        let _ = after;
        // Claims on the same cache see the stop too.
        let claim = claim_step_cached(&db, &cache, "w", &[kind("echo")], None, t0())
            .await
            .expect("claim");
        assert_eq!(claim, ClaimOutcome::EmergencyStop);

        // A toggle closed by another process with this cache stale (it last
        // saw the toggle open): the next submit is rejected by the toggle.
        release_emergency_stop(&db, "test", "over", None, t0())
            .await
            .expect("release");
        set(&db, "tiktok_autopost", json!({"enabled": true})).await;
        let open = submit_proposal_cached(&db, &cache, proposal(&["post_tiktok"], None), t0())
            .await
            .expect("open");
        assert_ne!(
            open.proposal.proposal.rejection_reason.as_deref(),
            Some("toggle_disabled")
        );
        set(&db, "tiktok_autopost", json!({"enabled": false})).await;
        let shut = submit_proposal_cached(&db, &cache, proposal(&["post_tiktok"], None), t0())
            .await
            .expect("shut");
        assert_eq!(
            shut.proposal.status().expect("status"),
            ProposalStatus::Rejected
        );
    })
    .await;
}

#[tokio::test]
async fn a_claim_takes_an_expired_lease_at_once_and_fences_the_late_worker() {
    both(|t| async move {
        let db = &t.db;
        let out = submit_proposal(db, proposal(&["echo"], None), t0())
            .await
            .expect("submit");
        let cache = PolicyCache::new();
        let slow = claimed(
            claim_step_cached(db, &cache, "slow", &[kind("echo")], Some(10), t0())
                .await
                .expect("claim"),
        );
        let early = claim_step_cached(
            db,
            &cache,
            "fast",
            &[kind("echo")],
            None,
            t0() + Duration::seconds(9),
        )
        .await
        .expect("early");
        assert_eq!(early, ClaimOutcome::Nothing, "the lease is still live");
        // No heartbeat tick in between: the claim itself takes the lease.
        let fast = claimed(
            claim_step_cached(
                db,
                &cache,
                "fast",
                &[kind("echo")],
                None,
                t0() + Duration::seconds(11),
            )
            .await
            .expect("take over"),
        );
        assert_eq!(fast.id, slow.id);
        assert_eq!(fast.attempt, 2);
        let err = complete_step(
            db,
            slow.id,
            "slow",
            1,
            json!({}),
            None,
            t0() + Duration::seconds(12),
        )
        .await
        .expect_err("the late worker is fenced");
        assert!(matches!(err, WorkflowError::LeaseLost { .. }), "{err:?}");
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::FailedPrecondition
        );
        let (_, status) = complete_step(
            db,
            fast.id,
            "fast",
            2,
            json!({}),
            None,
            t0() + Duration::seconds(13),
        )
        .await
        .expect("complete");
        assert_eq!(status, MissionStatus::Succeeded);
        let _ = out;
    })
    .await;
}

/// Issue 24 item 1: a worker finishes while the api cannot reach its
/// database for longer than the lease; the heartbeat requeues the step
/// meanwhile. The step must not run again: the api credits the outage to the
/// lease (no claim takes it) and the holder's late report is accepted.
#[tokio::test]
async fn a_database_outage_longer_than_the_lease_does_not_run_a_finished_step_twice() {
    use crate::bus::testing::{TcpProxy, via};
    let t = fresh_postgres().await;
    let upstream = t
        .url
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(authority, _)| authority.to_owned())
        .expect("host:port in the test URL");
    let proxy = TcpProxy::start(&upstream).await.expect("proxy");
    // The api's pool goes through the proxy; the heartbeat's does not.
    let api_db = crate::store::connect(
        &via(&t.url, proxy.addr),
        &crate::store::PoolOptions {
            max_connections: 2,
            min_connections: 0,
            connect_timeout: std::time::Duration::from_millis(500),
            acquire_timeout: std::time::Duration::from_millis(500),
        },
    )
    .await
    .expect("connect through the proxy");
    let cache = PolicyCache::new();
    submit_proposal(&t.db, proposal(&["echo"], None), t0())
        .await
        .expect("submit");
    let step = claimed(
        claim_step_cached(&api_db, &cache, "w1", &[kind("echo")], Some(20), t0())
            .await
            .expect("claim"),
    );
    let at = |s: i64| t0() + Duration::seconds(s);

    proxy.sever();
    let report = complete_step(&api_db, step.id, "w1", 1, json!({"ok": 1}), None, at(5)).await;
    assert!(matches!(report, Err(WorkflowError::Db(_))), "{report:?}");
    // An idle worker's claims fail too: the api sees the outage begin.
    for s in [5, 25] {
        let claim = claim_step_cached(&api_db, &cache, "w2", &[kind("echo")], None, at(s)).await;
        assert!(matches!(claim, Err(WorkflowError::Db(_))), "{claim:?}");
    }
    // The heartbeat (its own connection) sees the lease expired at t0+20.
    let recovered = recover_stale_steps(&t.db, at(30)).await.expect("recover");
    assert_eq!(recovered.requeued, vec![step.id]);
    proxy.restore();

    // Back after 30 s: the idle worker's claim does not take the step the
    // outage kept w1 from reporting…
    let claim = claim_step_cached(&api_db, &cache, "w2", &[kind("echo")], None, at(35))
        .await
        .expect("claim after the outage");
    assert_eq!(claim, ClaimOutcome::Nothing, "the step would run twice");
    // …and w1's retried report is accepted.
    let (done, status) = complete_step(&api_db, step.id, "w1", 1, json!({"ok": 1}), None, at(36))
        .await
        .expect("late report of the lease holder");
    assert_eq!(done.attempt, 1, "ran once");
    assert_eq!(status, MissionStatus::Succeeded);
    // Had w1 never come back, the step is taken once the outage's length
    // has passed after its lease's expiry (t0+20+30).
    drop(api_db);
    t.cleanup().await;
}

#[tokio::test]
async fn a_requeued_step_is_claimable_after_the_credited_outage() {
    let t = fresh_postgres().await;
    let db = &t.db;
    let cache = PolicyCache::new();
    submit_proposal(db, proposal(&["echo"], None), t0())
        .await
        .expect("submit");
    let at = |s: i64| t0() + Duration::seconds(s);
    let step = claimed(
        claim_step_cached(db, &cache, "w1", &[kind("echo")], Some(20), t0())
            .await
            .expect("claim"),
    );
    // An outage from t0+5 to t0+35, as the api saw it.
    cache.outages().failed(at(5));
    cache.outages().succeeded(at(35));
    let none = claim_step_cached(db, &cache, "w2", &[kind("echo")], None, at(49))
        .await
        .expect("claim");
    assert_eq!(none, ClaimOutcome::Nothing, "credited until t0+50");
    let taken = claimed(
        claim_step_cached(db, &cache, "w2", &[kind("echo")], None, at(51))
            .await
            .expect("claim"),
    );
    assert_eq!((taken.id, taken.attempt), (step.id, 2));
    t.cleanup().await;
}

/// Fails the first step of a new ["echo", "draft"] mission for good (one
/// attempt allowed) and returns the mission id.
async fn dead_lettered_mission(db: &DatabaseConnection) -> Uuid {
    let mut p = proposal(&["echo", "draft"], None);
    p.steps[0].max_attempts = Some(1);
    let out = submit_proposal(db, p, t0()).await.expect("submit");
    let mission = out.proposal.mission_id.expect("auto-approved");
    let step = claimed(
        claim_step(db, "w", &[kind("echo")], None, t0())
            .await
            .expect("claim"),
    );
    let (_, requeued, status) = fail_step(db, step.id, "w", 1, "boom", true, None, t0())
        .await
        .expect("fail");
    assert!(!requeued);
    assert_eq!(status, MissionStatus::Failed);
    mission
}

#[tokio::test]
async fn dead_letters_are_retried_once_as_a_new_proposal_through_the_gates() {
    both(|t| async move {
        let db = &t.db;
        let failed_mission = dead_lettered_mission(db).await;
        let waiting = list_dead_letters(
            db,
            &DeadLetterFilter {
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .expect("list");
        assert_eq!(waiting.len(), 1);
        let dead = &waiting[0];
        assert_eq!((dead.kind.as_str(), dead.error.as_str()), ("echo", "boom"));
        assert_eq!(dead.mission_id, failed_mission);

        // The emergency stop refuses the retry and writes nothing.
        engage_emergency_stop(db, "op", "drill", None, t0())
            .await
            .expect("engage");
        let err = retry_dead_letter(db, dead.id, "ana", None, t0())
            .await
            .expect_err("stopped");
        assert!(
            matches!(&err, WorkflowError::Conflict(m) if m.contains("emergency_stop")),
            "{err}"
        );
        assert!(
            get_dead_letter(db, dead.id)
                .await
                .expect("get")
                .retried_proposal_id
                .is_none()
        );
        release_emergency_stop(db, "op", "done", None, t0())
            .await
            .expect("release");

        let later = t0() + Duration::minutes(5);
        let retry = retry_dead_letter(db, dead.id, "ana", None, later)
            .await
            .expect("retry");
        let proposal = &retry.submitted.proposal;
        assert_eq!(proposal.proposal.source, "manual");
        assert_eq!(proposal.proposal.agent.as_deref(), Some("tester"));
        assert_eq!(
            proposal.proposal.dedupe_key.as_deref(),
            Some(format!("retry:{}", dead.id).as_str())
        );
        assert_eq!(
            proposal.proposal.metadata["retry_of"]["mission_id"],
            json!(failed_mission)
        );
        assert_eq!(proposal.proposal.metadata["requested_by"], json!("ana"));
        // The failed step and the one its failure cancelled, in order.
        let kinds: Vec<String> = proposal
            .steps()
            .iter()
            .map(|s| s.kind.to_string())
            .collect();
        assert_eq!(kinds, ["echo", "draft"]);
        let new_mission = proposal.mission_id.expect("auto-approved again");
        assert_ne!(new_mission, failed_mission);
        assert_eq!(
            get_mission(db, failed_mission)
                .await
                .expect("old")
                .mission
                .status,
            "failed",
            "the failed mission stays failed"
        );
        let step = claimed(
            claim_step(db, "w", &[kind("echo")], None, later)
                .await
                .expect("claim the retried step"),
        );
        assert_eq!(step.mission_id, new_mission);
        assert_eq!(step.payload, json!({"k": "echo"}));

        assert_eq!(retry.dead_letter.retried_by.as_deref(), Some("ana"));
        assert_eq!(retry.dead_letter.retried_at, Some(later));
        let err = retry_dead_letter(db, dead.id, "bo", None, later)
            .await
            .expect_err("once");
        assert!(
            matches!(&err, WorkflowError::Conflict(m) if m.contains("retried by ana")),
            "{err}"
        );
        assert!(
            list_dead_letters(
                db,
                &DeadLetterFilter {
                    limit: 10,
                    ..Default::default()
                }
            )
            .await
            .expect("list")
            .is_empty(),
            "a retried dead letter no longer waits"
        );
        let all = DeadLetterFilter {
            include_retried: true,
            limit: 10,
            ..Default::default()
        };
        assert_eq!(list_dead_letters(db, &all).await.expect("all").len(), 1);
        let audit = db
            .query_one_raw(stmt(
                db.get_database_backend(),
                "SELECT actor FROM audit_events WHERE action = 'dead_letter.retry'",
                vec![],
            ))
            .await
            .expect("q")
            .expect("one audit row");
        assert_eq!(audit.try_get::<String>("", "actor").expect("actor"), "ana");
        assert!(matches!(
            retry_dead_letter(db, Uuid::now_v7(), "ana", None, later).await,
            Err(WorkflowError::NotFound { .. })
        ));
    })
    .await;
}

#[tokio::test]
async fn quarantined_events_go_back_to_the_retry_set_and_policy_history_reads_back() {
    both(|t| async move {
        let db = &t.db;
        db.execute_raw(stmt(
            db.get_database_backend(),
            "INSERT INTO event_quarantine (id, consumer, event_seq, failures, last_error, \
             created_at, updated_at) VALUES ($1, 'triggers', 42, 3, 'bad condition', $2, $2)",
            vec![Uuid::now_v7().into(), t0().into()],
        ))
        .await
        .expect("seed");
        let rows = list_quarantined_events(db, Some("triggers"), 10)
            .await
            .expect("list");
        assert_eq!(rows.len(), 1);
        assert!(
            list_quarantined_events(db, Some("reactions"), 10)
                .await
                .expect("l")
                .is_empty()
        );
        let later = t0() + Duration::minutes(1);
        let row = retry_quarantined_event(db, "triggers", 42, "ana", None, later)
            .await
            .expect("retry");
        assert_eq!((row.failures, row.updated_at), (0, later));
        assert!(matches!(
            retry_quarantined_event(db, "triggers", 43, "ana", None, later).await,
            Err(WorkflowError::NotFound { .. })
        ));

        set(
            db,
            "auto_approve",
            json!({"enabled": false, "allowed_kinds": []}),
        )
        .await;
        let history = policy_history(db, "auto_approve", 10)
            .await
            .expect("history");
        assert_eq!(history[0].actor, "test");
        assert_eq!(history[0].new_value["enabled"], json!(false));
        assert!(history[0].old_value.is_some());
        assert!(matches!(
            policy_history(db, "no_such_key", 10).await,
            Err(WorkflowError::NotFound { .. })
        ));
    })
    .await;
}
