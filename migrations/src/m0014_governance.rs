//! Rate governance of upstream resources: `resource_rates` holds each
//! resource's token bucket shared by every api replica (current rate set by
//! the heartbeat's AIMD controller, tokens, when they were last refilled,
//! the last controller window evaluated and when a guard last tripped);
//! `resource_usage` aggregates what workers report per resource, window and
//! step kind (calls, latency, status counts, cost). Seeds the `resources`
//! and `pricing` policies with the ops plan's example (`twitterapi`, used by
//! `post_x`, $0.00015 per call).

use sea_orm_migration::{prelude::*, schema::*};
use serde_json::{Value, json};

use crate::m0001_loop::{Policy, PolicyHistory};
use crate::m0005_seed_policy::insert_seeds;
use crate::{drop_tables, index, unique_index};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// The policy keys this migration seeds.
pub(crate) fn governance_policies() -> Vec<(&'static str, Value)> {
    vec![
        ("resources", json!({"twitterapi": {"kinds": ["post_x"]}})),
        (
            "pricing",
            json!({"twitterapi": {"cost_per_call_usd": 0.00015}}),
        ),
    ]
}

#[derive(DeriveIden)]
enum ResourceRates {
    Table,
    Resource,
    Rate,
    Tokens,
    RefilledAt,
    EvaluatedUntil,
    TrippedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ResourceUsage {
    Table,
    Resource,
    WindowStart,
    Kind,
    Reports,
    Calls,
    LatencyWeightedMs,
    LatencyMaxMs,
    #[sea_orm(iden = "status_2xx")]
    Status2xx,
    #[sea_orm(iden = "status_4xx")]
    Status4xx,
    #[sea_orm(iden = "status_429")]
    Status429,
    #[sea_orm(iden = "status_5xx")]
    Status5xx,
    Units,
    CostUsd,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ResourceRates::Table)
                    .col(text(ResourceRates::Resource).primary_key())
                    .col(double(ResourceRates::Rate))
                    .col(double(ResourceRates::Tokens))
                    .col(timestamp_with_time_zone(ResourceRates::RefilledAt))
                    .col(timestamp_with_time_zone_null(ResourceRates::EvaluatedUntil))
                    .col(timestamp_with_time_zone_null(ResourceRates::TrippedAt))
                    .col(timestamp_with_time_zone(ResourceRates::UpdatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ResourceUsage::Table)
                    .col(text(ResourceUsage::Resource))
                    .col(timestamp_with_time_zone(ResourceUsage::WindowStart))
                    .col(text(ResourceUsage::Kind))
                    .col(big_integer(ResourceUsage::Reports))
                    .col(big_integer(ResourceUsage::Calls))
                    .col(double(ResourceUsage::LatencyWeightedMs))
                    .col(double(ResourceUsage::LatencyMaxMs))
                    .col(big_integer(ResourceUsage::Status2xx))
                    .col(big_integer(ResourceUsage::Status4xx))
                    .col(big_integer(ResourceUsage::Status429))
                    .col(big_integer(ResourceUsage::Status5xx))
                    .col(double(ResourceUsage::Units))
                    .col(double(ResourceUsage::CostUsd))
                    .col(timestamp_with_time_zone(ResourceUsage::UpdatedAt))
                    .take(),
            )
            .await?;
        // Reports add to their window's row (ON CONFLICT on this index).
        manager
            .create_index(unique_index(
                "ux_resource_usage_window",
                ResourceUsage::Table,
                [
                    ResourceUsage::Resource,
                    ResourceUsage::WindowStart,
                    ResourceUsage::Kind,
                ],
            ))
            .await?;
        // Reports and retention read by time.
        manager
            .create_index(index(
                "idx_resource_usage_window_start",
                ResourceUsage::Table,
                [ResourceUsage::WindowStart],
            ))
            .await?;
        insert_seeds(manager, governance_policies()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let keys: Vec<&str> = governance_policies().into_iter().map(|(k, _)| k).collect();
        manager
            .exec_stmt(
                Query::delete()
                    .from_table(PolicyHistory::Table)
                    .and_where(Expr::col(PolicyHistory::Key).is_in(keys.clone()))
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
        drop_tables(
            manager,
            [
                ResourceUsage::Table.into_iden(),
                ResourceRates::Table.into_iden(),
            ],
        )
        .await
    }
}
