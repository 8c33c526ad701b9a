//! The closed-loop design's starter trigger rules, seeded disabled so a new
//! installation has working examples to read and enable (`opsloop trigger
//! update "NAME" --enable`): a failure spike, stalled missions, a day
//! without `mission.succeeded` (a dead man's switch) and a reaction to
//! high-engagement posts. A rule whose name exists already is left as it is.

use sea_orm_migration::prelude::*;
use serde_json::{Value, json};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum TriggerRules {
    Table,
    Id,
    Name,
    Enabled,
    Condition,
    Action,
    CooldownSeconds,
    FireCount,
    CreatedAt,
    UpdatedAt,
}

/// The starter rules: name, condition, action, cooldown in seconds.
pub fn starter_trigger_rules() -> Vec<(&'static str, Value, Value, i64)> {
    vec![
        (
            "starter: failure spike",
            json!({"type": "failure_rate", "failure_kind": "step.failed",
                   "success_kind": "step.succeeded", "window_seconds": 3600,
                   "threshold": 0.5, "min_events": 10}),
            json!({"title": "Investigate the step failure spike",
                   "steps": [{"kind": "analyze",
                              "payload": {"question": "Why did more than half of the steps fail in the last hour?"}}]}),
            3600,
        ),
        (
            "starter: stalled missions",
            json!({"type": "stalled_missions", "older_than_seconds": 1800, "min_count": 1}),
            json!({"title": "Look into missions without progress for 30 minutes",
                   "steps": [{"kind": "analyze", "payload": {"question": "Which missions are stalled, and why?"}}]}),
            1800,
        ),
        (
            "starter: no mission succeeded for a day",
            json!({"type": "absence", "kind": "mission.succeeded", "window_seconds": 86400}),
            json!({"title": "No mission has succeeded for 24 hours",
                   "steps": [{"kind": "notify", "payload": {"message": "No mission succeeded in the last 24 hours: check workers and the emergency stop."}}]}),
            86400,
        ),
        (
            "starter: react to high engagement",
            json!({"type": "event_count", "kind": "post.published", "tags": ["engagement:high"],
                   "window_seconds": 3600, "min_count": 1}),
            json!({"title": "Follow up on a high-engagement post",
                   "steps": [{"kind": "draft", "payload": {"event": "{{event.id}}", "rule": "{{rule.name}}"}}]}),
            3600,
        ),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let now = chrono::Utc::now();
        let mut insert = Query::insert();
        insert
            .into_table(TriggerRules::Table)
            .columns([
                TriggerRules::Id,
                TriggerRules::Name,
                TriggerRules::Enabled,
                TriggerRules::Condition,
                TriggerRules::Action,
                TriggerRules::CooldownSeconds,
                TriggerRules::FireCount,
                TriggerRules::CreatedAt,
                TriggerRules::UpdatedAt,
            ])
            .on_conflict(
                OnConflict::column(TriggerRules::Name)
                    .do_nothing()
                    .to_owned(),
            );
        for (name, condition, action, cooldown) in starter_trigger_rules() {
            insert
                .values([
                    uuid::Uuid::now_v7().into(),
                    name.into(),
                    false.into(),
                    condition.into(),
                    action.into(),
                    cooldown.into(),
                    0i64.into(),
                    now.into(),
                    now.into(),
                ])
                .map_err(|e| DbErr::Custom(format!("building the starter trigger rules: {e}")))?;
        }
        manager.exec_stmt(insert).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let names: Vec<&str> = starter_trigger_rules()
            .into_iter()
            .map(|(n, ..)| n)
            .collect();
        manager
            .exec_stmt(
                Query::delete()
                    .from_table(TriggerRules::Table)
                    .and_where(Expr::col(TriggerRules::Name).is_in(names))
                    .and_where(Expr::col(TriggerRules::FireCount).eq(0))
                    .to_owned(),
            )
            .await
    }
}
