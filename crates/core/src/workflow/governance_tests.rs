//! Rate governance on a fresh PostgreSQL database and a fresh SQLite file:
//! the claim's token bucket (limited kinds wait, others do not, the answer
//! says when to ask again), usage reports (validated, recorded per window,
//! priced) and the pricing policy's cross-check.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use sea_orm::DatabaseConnection;

use super::{cost_by_resource, list_rates, set_rate, set_tripped, window_stats};
use serde_json::json;

use super::super::*;
use crate::domain::governance::ResourceUsage;
use crate::domain::input::{NewProposal, ProposalSource, StepKind, StepSpec};
use crate::store::testing::{TestDb, fresh_postgres, fresh_sqlite};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 1, 0, 0)
        .single()
        .expect("time")
}

fn kind(k: &str) -> StepKind {
    StepKind::parse("kind", k).expect("kind")
}

fn parallel(kinds: &[&str]) -> NewProposal {
    NewProposal {
        title: "governed".into(),
        source: ProposalSource::Api,
        agent: "tester".into(),
        dedupe_key: None,
        steps: kinds
            .iter()
            .map(|k| StepSpec {
                kind: kind(k),
                payload: json!({}),
                max_attempts: Some(3),
            })
            .collect(),
        parallel: true,
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

async fn governed(db: &DatabaseConnection) {
    set(
        db,
        "resources",
        json!({"api": {"kinds": ["summarize"], "initial_rate": 2, "min_rate": 1, "max_rate": 5}}),
    )
    .await;
    set(db, "pricing", json!({"api": {"cost_per_call_usd": 0.25}})).await;
}

#[tokio::test]
async fn a_bucket_limits_its_kinds_and_says_when_to_ask_again() {
    both(|t| async move {
        let db = &t.db;
        governed(db).await;
        submit_proposal(db, parallel(&["summarize"; 6]), t0())
            .await
            .expect("submit");
        submit_proposal(db, parallel(&["echo"]), t0())
            .await
            .expect("submit");
        let cache = PolicyCache::new();
        let claim = |worker: &'static str, kinds: Vec<StepKind>, at: DateTime<Utc>| {
            let cache = cache.clone();
            async move {
                claim_step_cached(db, &cache, worker, &kinds, Some(3600), at)
                    .await
                    .expect("claim")
            }
        };
        // The bucket starts full: 2 tokens (1 s at 2/s).
        for _ in 0..2 {
            assert!(matches!(
                claim("w", vec![kind("summarize")], t0()).await,
                ClaimOutcome::Claimed(_)
            ));
        }
        let limited = claim("w", vec![kind("summarize")], t0()).await;
        let ClaimOutcome::RateLimited(limit) = limited else {
            panic!("expected a rate limit, got {limited:?}");
        };
        assert_eq!(limit.resource, "api");
        assert_eq!(limit.retry_after, std::time::Duration::from_millis(500));
        // Other kinds are not held back by it.
        let other = claim("w", vec![kind("summarize"), kind("echo")], t0()).await;
        assert!(
            matches!(&other, ClaimOutcome::Claimed(s) if s.kind == "echo"),
            "{other:?}"
        );
        // Half a second later one token is back, and only one.
        let later = t0() + Duration::milliseconds(500);
        assert!(matches!(
            claim("w", vec![kind("summarize")], later).await,
            ClaimOutcome::Claimed(_)
        ));
        assert!(matches!(
            claim("w", vec![kind("summarize")], later).await,
            ClaimOutcome::RateLimited(_)
        ));
        // After a long idle spell the bucket holds its burst (2), not more.
        let idle = t0() + Duration::seconds(60);
        for _ in 0..2 {
            assert!(matches!(
                claim("w", vec![kind("summarize")], idle).await,
                ClaimOutcome::Claimed(_)
            ));
        }
        assert!(matches!(
            claim("w", vec![kind("summarize")], idle).await,
            ClaimOutcome::RateLimited(_)
        ));
        let batch = claim_steps_governed(
            db,
            &cache,
            "w",
            &[kind("summarize")],
            None,
            4,
            idle + Duration::seconds(1),
        )
        .await
        .expect("batch");
        assert_eq!(batch.steps.len(), 1, "one step left");
        assert!(batch.rate_limited.is_none());
        let rates = list_rates(db).await.expect("rates");
        assert_eq!(rates.len(), 1);
        assert_eq!(rates[0].rate, 2.0);
    })
    .await;
}

#[tokio::test]
async fn a_policy_without_resources_claims_as_before() {
    both(|t| async move {
        let db = &t.db;
        set(db, "resources", json!({})).await;
        submit_proposal(db, parallel(&["summarize"; 3]), t0())
            .await
            .expect("submit");
        let cache = PolicyCache::new();
        let batch = claim_steps_governed(db, &cache, "w", &[kind("summarize")], None, 5, t0())
            .await
            .expect("claim");
        assert_eq!(batch.steps.len(), 3);
        assert!(batch.rate_limited.is_none());
        assert!(list_rates(db).await.expect("rates").is_empty());
    })
    .await;
}

fn usage(resource: &str, calls: i64) -> ResourceUsage {
    ResourceUsage {
        resource: resource.into(),
        calls,
        latency_p50_ms: 120.0,
        latency_max_ms: 400.0,
        status_2xx: calls - 1,
        status_429: 1,
        ..ResourceUsage::default()
    }
}

#[tokio::test]
async fn usage_is_validated_recorded_per_window_and_priced() {
    both(|t| async move {
        let db = &t.db;
        governed(db).await;
        submit_proposal(db, parallel(&["summarize"; 2]), t0())
            .await
            .expect("submit");
        let step = match claim_step(db, "w", &[kind("summarize")], Some(60), t0())
            .await
            .expect("claim")
        {
            ClaimOutcome::Claimed(step) => *step,
            other => panic!("{other:?}"),
        };
        // A bad report changes nothing.
        let mut bad = usage("api", 4);
        bad.latency_max_ms = 3_600_001.0;
        let refused = complete_step_with_usage(db, step.id, "w", 1, json!({}), None, &[bad], t0())
            .await
            .expect_err("refused");
        assert!(
            matches!(&refused, WorkflowError::Invalid(v) if v.field == "usage[0].latency_max_ms"),
            "{refused:?}"
        );
        let unchanged = get_mission(db, step.mission_id).await.expect("mission");
        assert!(unchanged.steps.iter().all(|s| s.status != "succeeded"));
        let refused = fail_step_with_usage(
            db,
            step.id,
            "w",
            1,
            "boom",
            true,
            None,
            &[usage("api", -3)],
            t0(),
        )
        .await
        .expect_err("refused");
        assert!(matches!(refused, WorkflowError::Invalid(_)), "{refused:?}");
        // No cost reported: 4 calls at $0.25.
        let (done, _) = complete_step_with_usage(
            db,
            step.id,
            "w",
            1,
            json!({}),
            None,
            &[usage("api", 4)],
            t0(),
        )
        .await
        .expect("complete");
        assert_eq!(done.cost_usd, Some(1.0));
        // A failure's usage adds to the same window; a reported cost wins.
        let second = match claim_step(db, "w", &[kind("summarize")], Some(60), t0())
            .await
            .expect("claim")
        {
            ClaimOutcome::Claimed(step) => *step,
            other => panic!("{other:?}"),
        };
        let (failed, requeued, _) = fail_step_with_usage(
            db,
            second.id,
            "w",
            1,
            "upstream 500",
            true,
            Some(0.1),
            &[ResourceUsage {
                unreachable: 1,
                status_2xx: 0,
                ..usage("api", 2)
            }],
            t0(),
        )
        .await
        .expect("fail");
        assert!(requeued);
        assert_eq!(failed.cost_usd, Some(0.1));
        let stats = window_stats(
            db,
            "api",
            t0() - Duration::seconds(10),
            t0() + Duration::seconds(10),
        )
        .await
        .expect("stats");
        assert_eq!(stats.calls, 6);
        assert_eq!(stats.status_429, 2);
        assert_eq!((stats.unreachable, stats.status_2xx), (1, 3));
        assert_eq!(stats.latency_max_ms, 400.0);
        assert!((stats.latency_ms - 120.0).abs() < 1e-9, "{stats:?}");
        let costs = cost_by_resource(db, t0() - Duration::days(1), t0() + Duration::days(1))
            .await
            .expect("costs");
        assert_eq!(costs.len(), 1);
        let (resource, kind_name, calls, cost) = &costs[0];
        assert_eq!(
            (resource.as_str(), kind_name.as_str(), *calls),
            ("api", "summarize", 6)
        );
        assert!((cost - 1.1).abs() < 1e-9, "{cost}");
        // The controller's write and the trip mark.
        set_rate(db, "api", 3.0, t0(), t0()).await.expect("rate");
        set_tripped(db, "api", Some(t0())).await.expect("tripped");
        let rates = list_rates(db).await.expect("rates");
        assert_eq!(
            (rates[0].rate, rates[0].evaluated_until, rates[0].tripped_at),
            (3.0, Some(t0()), Some(t0()))
        );
    })
    .await;
}

#[tokio::test]
async fn pricing_must_name_a_known_resource() {
    let t = fresh_sqlite().await;
    let refused = set_policy(
        &t.db,
        PolicyChange {
            key: "pricing",
            value: json!({"nosuchapi": {"cost_per_call_usd": 0.1}}),
            actor: "test",
            reason: None,
            expected_version: None,
        },
        None,
        t0(),
    )
    .await
    .expect_err("unknown resource");
    assert!(
        matches!(&refused, WorkflowError::Invalid(v) if v.field == "value_json.nosuchapi"),
        "{refused:?}"
    );
    t.cleanup().await;
}
