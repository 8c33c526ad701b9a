//! The heartbeat's tables: trigger rules and their fire ledger, event cursors
//! and quarantine, the reaction queue, insights, tick records, the leader
//! lease, persisted cooldowns and stored reports.

use sea_orm_migration::{prelude::*, schema::*};

use crate::{drop_tables, index, unique_index};

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
    LastFiredAt,
    FireCount,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum TriggerFires {
    Table,
    Id,
    RuleId,
    WindowKey,
    Outcome,
    ProposalId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum EventCursors {
    Table,
    Consumer,
    LastSeq,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum EventQuarantine {
    Table,
    Id,
    Consumer,
    EventSeq,
    Failures,
    LastError,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Reactions {
    Table,
    Id,
    EventId,
    PatternId,
    Target,
    Status,
    Probability,
    Roll,
    Template,
    ProposalId,
    CreatedAt,
    ProcessedAt,
}

#[derive(DeriveIden)]
enum Insights {
    Table,
    Id,
    Pattern,
    Summary,
    Fingerprint,
    SourceEventIds,
    CreatedAt,
}

#[derive(DeriveIden)]
enum InsightSources {
    Table,
    EventId,
    InsightId,
}

#[derive(DeriveIden)]
enum HeartbeatRuns {
    Table,
    Id,
    TickAt,
    StartedAt,
    FinishedAt,
    Status,
    Leader,
    Phases,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Leases {
    Table,
    Name,
    Holder,
    ExpiresAt,
    FencingToken,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Cooldowns {
    Table,
    Name,
    Until,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Reports {
    Table,
    Id,
    Kind,
    PeriodStart,
    PeriodEnd,
    Body,
    CreatedAt,
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
                    .table(TriggerRules::Table)
                    .col(pk_uuid(TriggerRules::Id))
                    .col(text(TriggerRules::Name))
                    .col(boolean(TriggerRules::Enabled).default(true))
                    .col(json_binary(TriggerRules::Condition))
                    .col(json_binary(TriggerRules::Action))
                    .col(big_integer(TriggerRules::CooldownSeconds))
                    .col(timestamp_with_time_zone_null(TriggerRules::LastFiredAt))
                    .col(big_integer(TriggerRules::FireCount).default(0))
                    .col(timestamp_with_time_zone(TriggerRules::CreatedAt))
                    .col(timestamp_with_time_zone(TriggerRules::UpdatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(unique_index(
                "uq_trigger_rules_name",
                TriggerRules::Table,
                [TriggerRules::Name],
            ))
            .await?;

        // The fire ledger: one row per (rule, fact window), so a window fires once
        // even with two heartbeats racing.
        manager
            .create_table(
                Table::create()
                    .table(TriggerFires::Table)
                    .col(pk_uuid(TriggerFires::Id))
                    .col(uuid(TriggerFires::RuleId))
                    .col(text(TriggerFires::WindowKey))
                    .col(text(TriggerFires::Outcome))
                    .col(uuid_null(TriggerFires::ProposalId))
                    .col(timestamp_with_time_zone(TriggerFires::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_trigger_fires_rule_id")
                            .from(TriggerFires::Table, TriggerFires::RuleId)
                            .to(TriggerRules::Table, TriggerRules::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_index(unique_index(
                "uq_trigger_fires_rule_id_window_key",
                TriggerFires::Table,
                [TriggerFires::RuleId, TriggerFires::WindowKey],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(EventCursors::Table)
                    .col(text(EventCursors::Consumer).primary_key())
                    .col(big_integer(EventCursors::LastSeq).default(0))
                    .col(timestamp_with_time_zone(EventCursors::UpdatedAt))
                    .take(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(EventQuarantine::Table)
                    .col(pk_uuid(EventQuarantine::Id))
                    .col(text(EventQuarantine::Consumer))
                    .col(big_integer(EventQuarantine::EventSeq))
                    .col(integer(EventQuarantine::Failures).default(0))
                    .col(text(EventQuarantine::LastError))
                    .col(timestamp_with_time_zone(EventQuarantine::CreatedAt))
                    .col(timestamp_with_time_zone(EventQuarantine::UpdatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(unique_index(
                "uq_event_quarantine_consumer_event_seq",
                EventQuarantine::Table,
                [EventQuarantine::Consumer, EventQuarantine::EventSeq],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Reactions::Table)
                    .col(pk_uuid(Reactions::Id))
                    .col(uuid(Reactions::EventId))
                    .col(text(Reactions::PatternId))
                    .col(text(Reactions::Target))
                    .col(text(Reactions::Status))
                    .col(double(Reactions::Probability))
                    .col(double(Reactions::Roll))
                    .col(json_binary(Reactions::Template))
                    .col(uuid_null(Reactions::ProposalId))
                    .col(timestamp_with_time_zone(Reactions::CreatedAt))
                    .col(timestamp_with_time_zone_null(Reactions::ProcessedAt))
                    .take(),
            )
            .await?;
        // Idempotent on a redelivered event: one reaction per (event, pattern).
        manager
            .create_index(unique_index(
                "uq_reactions_event_id_pattern_id",
                Reactions::Table,
                [Reactions::EventId, Reactions::PatternId],
            ))
            .await?;
        // The queue drain: oldest queued first.
        manager
            .create_index(index(
                "idx_reactions_status_created_at",
                Reactions::Table,
                [Reactions::Status, Reactions::CreatedAt],
            ))
            .await?;
        // The per-(pattern, target) cooldown check.
        manager
            .create_index(index(
                "idx_reactions_pattern_id_target_created_at",
                Reactions::Table,
                [
                    Reactions::PatternId,
                    Reactions::Target,
                    Reactions::CreatedAt,
                ],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Insights::Table)
                    .col(pk_uuid(Insights::Id))
                    .col(text(Insights::Pattern))
                    .col(text(Insights::Summary))
                    .col(text(Insights::Fingerprint))
                    .col(json_binary(Insights::SourceEventIds))
                    .col(timestamp_with_time_zone(Insights::CreatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(unique_index(
                "uq_insights_fingerprint",
                Insights::Table,
                [Insights::Fingerprint],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_insights_created_at",
                Insights::Table,
                [Insights::CreatedAt],
            ))
            .await?;

        // An event promotes at most one insight: its id is the primary key here.
        manager
            .create_table(
                Table::create()
                    .table(InsightSources::Table)
                    .col(pk_uuid(InsightSources::EventId))
                    .col(uuid(InsightSources::InsightId))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_insight_sources_insight_id")
                            .from(InsightSources::Table, InsightSources::InsightId)
                            .to(Insights::Table, Insights::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_insight_sources_insight_id",
                InsightSources::Table,
                [InsightSources::InsightId],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(HeartbeatRuns::Table)
                    .col(pk_uuid(HeartbeatRuns::Id))
                    .col(timestamp_with_time_zone(HeartbeatRuns::TickAt))
                    .col(timestamp_with_time_zone(HeartbeatRuns::StartedAt))
                    .col(timestamp_with_time_zone_null(HeartbeatRuns::FinishedAt))
                    .col(text(HeartbeatRuns::Status))
                    .col(text(HeartbeatRuns::Leader))
                    .col(json_binary(HeartbeatRuns::Phases))
                    .col(timestamp_with_time_zone(HeartbeatRuns::CreatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_heartbeat_runs_started_at",
                HeartbeatRuns::Table,
                [HeartbeatRuns::StartedAt],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Leases::Table)
                    .col(text(Leases::Name).primary_key())
                    .col(text(Leases::Holder))
                    .col(timestamp_with_time_zone(Leases::ExpiresAt))
                    .col(big_integer(Leases::FencingToken).default(0))
                    .col(timestamp_with_time_zone(Leases::UpdatedAt))
                    .take(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Cooldowns::Table)
                    .col(text(Cooldowns::Name).primary_key())
                    .col(timestamp_with_time_zone(Cooldowns::Until))
                    .col(timestamp_with_time_zone(Cooldowns::UpdatedAt))
                    .take(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Reports::Table)
                    .col(pk_uuid(Reports::Id))
                    .col(text(Reports::Kind))
                    .col(timestamp_with_time_zone(Reports::PeriodStart))
                    .col(timestamp_with_time_zone(Reports::PeriodEnd))
                    .col(json_binary(Reports::Body))
                    .col(timestamp_with_time_zone(Reports::CreatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_reports_kind_period_start",
                Reports::Table,
                [Reports::Kind, Reports::PeriodStart],
            ))
            .await?;

        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(
            manager,
            [
                Reports::Table.into_iden(),
                Cooldowns::Table.into_iden(),
                Leases::Table.into_iden(),
                HeartbeatRuns::Table.into_iden(),
                InsightSources::Table.into_iden(),
                Insights::Table.into_iden(),
                Reactions::Table.into_iden(),
                EventQuarantine::Table.into_iden(),
                EventCursors::Table.into_iden(),
                TriggerFires::Table.into_iden(),
                TriggerRules::Table.into_iden(),
            ],
        )
        .await
    }
}
