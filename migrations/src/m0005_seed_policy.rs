//! The initial policy: every key DESIGN.md names, at version 1, written by
//! `migration`, each with its `policy_history` row so the audit trail starts
//! at the very first value.

use sea_orm_migration::prelude::*;
use serde_json::{Value, json};

use crate::m0001_loop::{Policy, PolicyHistory};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// The actor recorded for seeded values.
pub(crate) const SEED_ACTOR: &str = "migration";

/// Every seeded policy key and its initial value: this migration's and the
/// keys later migrations add (`m0014_governance`), in seeding order.
pub fn seed_policies() -> Vec<(&'static str, Value)> {
    let mut all = initial_policies();
    all.extend(crate::m0014_governance::governance_policies());
    all
}

/// The keys this migration seeds, in the order they are seeded.
fn initial_policies() -> Vec<(&'static str, Value)> {
    vec![
        (
            "auto_approve",
            json!({
                "enabled": true,
                "allowed_kinds": ["analyze", "draft", "summarize", "notify", "echo"],
            }),
        ),
        (
            "step_gates",
            json!({
                "timezone": "Asia/Tokyo",
                "kinds": {
                    "post_x": {"toggle": "x_autopost", "daily_cap": 10},
                    "post_tiktok": {"toggle": "tiktok_autopost", "daily_cap": 3},
                },
            }),
        ),
        ("x_autopost", json!({"enabled": false})),
        ("tiktok_autopost", json!({"enabled": false})),
        (
            "worker_policy",
            json!({
                "lease_seconds": 300,
                "max_attempts": 3,
                "backoff_base_seconds": 5,
                "backoff_max_seconds": 300,
            }),
        ),
        ("reaction_matrix", json!({"patterns": []})),
        (
            "ops_health",
            json!({
                "failure_threshold": 5,
                "window_seconds": 3600,
                "cooldown_seconds": 3600,
            }),
        ),
        (
            "cost_budget",
            json!({
                "timezone": "Asia/Tokyo",
                "daily_usd": 30,
                "monthly_usd": 800,
                "daily_warn_ratio": 0.8,
                "monthly_warn_ratio": 0.9,
                "hard_daily_usd": 100,
                "max_consecutive_failures": 5,
            }),
        ),
        (
            "insight_promotion",
            json!({"tag": "engagement:high", "min_citations": 3, "window_days": 7}),
        ),
        (
            "emergency_stop",
            json!({"engaged": false, "reason": null, "actor": null, "engaged_at": null}),
        ),
    ]
}

pub(crate) fn query_error(error: sea_query::error::Error) -> DbErr {
    DbErr::Custom(format!("building the policy seed: {error}"))
}

/// Inserts `seeds` at version 1 with their first `policy_history` rows,
/// written by `migration` (this migration's keys and later ones').
pub(crate) async fn insert_seeds(
    manager: &SchemaManager<'_>,
    seeds: Vec<(&'static str, Value)>,
) -> Result<(), DbErr> {
    let now = chrono::Utc::now();
    let mut policy = Query::insert();
    policy.into_table(Policy::Table).columns([
        Policy::Key,
        Policy::Value,
        Policy::Version,
        Policy::UpdatedAt,
        Policy::UpdatedBy,
    ]);
    let mut history = Query::insert();
    history.into_table(PolicyHistory::Table).columns([
        PolicyHistory::Key,
        PolicyHistory::OldValue,
        PolicyHistory::NewValue,
        PolicyHistory::Actor,
        PolicyHistory::Reason,
        PolicyHistory::CreatedAt,
    ]);
    for (key, value) in seeds {
        policy
            .values([
                key.into(),
                value.clone().into(),
                1i64.into(),
                now.into(),
                SEED_ACTOR.into(),
            ])
            .map_err(query_error)?;
        history
            .values([
                key.into(),
                Option::<Value>::None.into(),
                value.into(),
                SEED_ACTOR.into(),
                "initial value".into(),
                now.into(),
            ])
            .map_err(query_error)?;
    }
    manager.exec_stmt(policy).await?;
    manager.exec_stmt(history).await?;
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        insert_seeds(manager, initial_policies()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let keys: Vec<&str> = initial_policies().into_iter().map(|(key, _)| key).collect();
        manager
            .exec_stmt(
                Query::delete()
                    .from_table(PolicyHistory::Table)
                    .and_where(Expr::col(PolicyHistory::Key).is_in(keys.clone()))
                    .and_where(Expr::col(PolicyHistory::Actor).eq(SEED_ACTOR))
                    .take(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::delete()
                    .from_table(Policy::Table)
                    .and_where(Expr::col(Policy::Key).is_in(keys))
                    .take(),
            )
            .await?;
        Ok(())
    }
}
