//! The loop's core tables: proposals, missions and their steps, the event log
//! and its outbox, policy with its history, and the audit trail.

use sea_orm_migration::{prelude::*, schema::*};

use crate::{drop_tables, index, unique_index};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
pub(crate) enum Proposals {
    Table,
    Id,
    DedupeKey,
    Source,
    Agent,
    Title,
    Status,
    RejectionReason,
    RejectionDetail,
    Steps,
    Parallel,
    Metadata,
    PolicyVersion,
    TraceId,
    DecidedBy,
    DecidedAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
pub(crate) enum Missions {
    Table,
    Id,
    ProposalId,
    Title,
    Status,
    Parallel,
    CreatedAt,
    UpdatedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
pub(crate) enum MissionSteps {
    Table,
    Id,
    MissionId,
    Seq,
    Kind,
    Payload,
    Status,
    Attempt,
    MaxAttempts,
    LeaseHolder,
    LeaseExpiresAt,
    NextAttemptAt,
    Result,
    Error,
    CostUsd,
    CreatedAt,
    StartedAt,
    FinishedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum StepDeadLetters {
    Table,
    Id,
    StepId,
    MissionId,
    Kind,
    Attempt,
    Error,
    Payload,
    CreatedAt,
}

#[derive(DeriveIden)]
enum DailyStepCounts {
    Table,
    Kind,
    Day,
    Count,
}

#[derive(DeriveIden)]
enum Events {
    Table,
    Seq,
    Id,
    Kind,
    Source,
    ProposalId,
    MissionId,
    StepId,
    Payload,
    Tags,
    CostUsd,
    TraceId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    EventId,
    RoutingKey,
    AggregateId,
    Payload,
    Headers,
    CreatedAt,
    PublishedAt,
    Attempts,
    LastError,
}

#[derive(DeriveIden)]
pub(crate) enum Policy {
    Table,
    Key,
    Value,
    Version,
    UpdatedAt,
    UpdatedBy,
}

#[derive(DeriveIden)]
pub(crate) enum PolicyHistory {
    Table,
    Id,
    Key,
    OldValue,
    NewValue,
    Actor,
    Reason,
    CreatedAt,
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Id,
    Actor,
    Action,
    Subject,
    Before,
    After,
    Reason,
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
                    .table(Proposals::Table)
                    .col(pk_uuid(Proposals::Id))
                    .col(text_null(Proposals::DedupeKey))
                    .col(text(Proposals::Source))
                    .col(text_null(Proposals::Agent))
                    .col(text(Proposals::Title))
                    .col(text(Proposals::Status))
                    .col(text_null(Proposals::RejectionReason))
                    .col(text_null(Proposals::RejectionDetail))
                    .col(json_binary(Proposals::Steps))
                    .col(boolean(Proposals::Parallel).default(false))
                    .col(json_binary(Proposals::Metadata))
                    .col(big_integer(Proposals::PolicyVersion))
                    .col(text_null(Proposals::TraceId))
                    .col(text_null(Proposals::DecidedBy))
                    .col(timestamp_with_time_zone_null(Proposals::DecidedAt))
                    .col(timestamp_with_time_zone(Proposals::CreatedAt))
                    .col(timestamp_with_time_zone(Proposals::UpdatedAt))
                    .take(),
            )
            .await?;
        // NULL keys are distinct on both backends: proposals without a key never collide.
        manager
            .create_index(unique_index(
                "uq_proposals_dedupe_key",
                Proposals::Table,
                [Proposals::DedupeKey],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_proposals_status_created_at",
                Proposals::Table,
                [Proposals::Status, Proposals::CreatedAt],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_proposals_source_created_at",
                Proposals::Table,
                [Proposals::Source, Proposals::CreatedAt],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Missions::Table)
                    .col(pk_uuid(Missions::Id))
                    .col(uuid(Missions::ProposalId))
                    .col(text(Missions::Title))
                    .col(text(Missions::Status))
                    .col(boolean(Missions::Parallel).default(false))
                    .col(timestamp_with_time_zone(Missions::CreatedAt))
                    .col(timestamp_with_time_zone(Missions::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Missions::FinishedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_missions_proposal_id")
                            .from(Missions::Table, Missions::ProposalId)
                            .to(Proposals::Table, Proposals::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .take(),
            )
            .await?;
        // One mission per proposal: approving twice can never create two.
        manager
            .create_index(unique_index(
                "uq_missions_proposal_id",
                Missions::Table,
                [Missions::ProposalId],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_missions_status_created_at",
                Missions::Table,
                [Missions::Status, Missions::CreatedAt],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(MissionSteps::Table)
                    .col(pk_uuid(MissionSteps::Id))
                    .col(uuid(MissionSteps::MissionId))
                    .col(integer(MissionSteps::Seq))
                    .col(text(MissionSteps::Kind))
                    .col(json_binary(MissionSteps::Payload))
                    .col(text(MissionSteps::Status))
                    .col(integer(MissionSteps::Attempt).default(0))
                    .col(integer(MissionSteps::MaxAttempts))
                    .col(text_null(MissionSteps::LeaseHolder))
                    .col(timestamp_with_time_zone_null(MissionSteps::LeaseExpiresAt))
                    .col(timestamp_with_time_zone_null(MissionSteps::NextAttemptAt))
                    .col(json_binary_null(MissionSteps::Result))
                    .col(text_null(MissionSteps::Error))
                    .col(double_null(MissionSteps::CostUsd))
                    .col(timestamp_with_time_zone(MissionSteps::CreatedAt))
                    .col(timestamp_with_time_zone_null(MissionSteps::StartedAt))
                    .col(timestamp_with_time_zone_null(MissionSteps::FinishedAt))
                    .col(timestamp_with_time_zone(MissionSteps::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_mission_steps_mission_id")
                            .from(MissionSteps::Table, MissionSteps::MissionId)
                            .to(Missions::Table, Missions::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_index(unique_index(
                "uq_mission_steps_mission_id_seq",
                MissionSteps::Table,
                [MissionSteps::MissionId, MissionSteps::Seq],
            ))
            .await?;
        // ClaimStep: oldest queued step of the worker's kinds whose backoff has passed.
        manager
            .create_index(index(
                "idx_mission_steps_claim",
                MissionSteps::Table,
                [
                    MissionSteps::Status,
                    MissionSteps::Kind,
                    MissionSteps::NextAttemptAt,
                    MissionSteps::CreatedAt,
                ],
            ))
            .await?;
        // Stale recovery: running steps whose lease expired.
        manager
            .create_index(index(
                "idx_mission_steps_status_lease_expires_at",
                MissionSteps::Table,
                [MissionSteps::Status, MissionSteps::LeaseExpiresAt],
            ))
            .await?;
        // Ops health: failures within the last window.
        manager
            .create_index(index(
                "idx_mission_steps_status_finished_at",
                MissionSteps::Table,
                [MissionSteps::Status, MissionSteps::FinishedAt],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(StepDeadLetters::Table)
                    .col(pk_uuid(StepDeadLetters::Id))
                    .col(uuid(StepDeadLetters::StepId))
                    .col(uuid(StepDeadLetters::MissionId))
                    .col(text(StepDeadLetters::Kind))
                    .col(integer(StepDeadLetters::Attempt))
                    .col(text(StepDeadLetters::Error))
                    .col(json_binary(StepDeadLetters::Payload))
                    .col(timestamp_with_time_zone(StepDeadLetters::CreatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_step_dead_letters_created_at",
                StepDeadLetters::Table,
                [StepDeadLetters::CreatedAt],
            ))
            .await?;

        // The O(1) daily-cap counter: one row per (kind, day in the policy's zone).
        manager
            .create_table(
                Table::create()
                    .table(DailyStepCounts::Table)
                    .col(text(DailyStepCounts::Kind))
                    .col(text(DailyStepCounts::Day))
                    .col(big_integer(DailyStepCounts::Count).default(0))
                    .primary_key(
                        Index::create()
                            .name("pk_daily_step_counts")
                            .col(DailyStepCounts::Kind)
                            .col(DailyStepCounts::Day),
                    )
                    .take(),
            )
            .await?;

        // `seq` is the cursor: identity on PostgreSQL, INTEGER PRIMARY KEY
        // AUTOINCREMENT on SQLite (never reuses a deleted row's number).
        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    .col(big_pk_auto(Events::Seq))
                    .col(uuid(Events::Id))
                    .col(text(Events::Kind))
                    .col(text(Events::Source))
                    .col(uuid_null(Events::ProposalId))
                    .col(uuid_null(Events::MissionId))
                    .col(uuid_null(Events::StepId))
                    .col(json_binary(Events::Payload))
                    .col(json_binary(Events::Tags))
                    .col(double_null(Events::CostUsd))
                    .col(text_null(Events::TraceId))
                    .col(timestamp_with_time_zone(Events::CreatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(unique_index("uq_events_id", Events::Table, [Events::Id]))
            .await?;
        manager
            .create_index(index(
                "idx_events_kind_seq",
                Events::Table,
                [Events::Kind, Events::Seq],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_events_created_at",
                Events::Table,
                [Events::CreatedAt],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_events_mission_id_seq",
                Events::Table,
                [Events::MissionId, Events::Seq],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .col(big_pk_auto(Outbox::Id))
                    .col(uuid(Outbox::EventId))
                    .col(text(Outbox::RoutingKey))
                    .col(text(Outbox::AggregateId))
                    .col(json_binary(Outbox::Payload))
                    .col(json_binary(Outbox::Headers))
                    .col(timestamp_with_time_zone(Outbox::CreatedAt))
                    .col(timestamp_with_time_zone_null(Outbox::PublishedAt))
                    .col(integer(Outbox::Attempts).default(0))
                    .col(text_null(Outbox::LastError))
                    .take(),
            )
            .await?;
        // The relay: `published_at IS NULL ORDER BY id`.
        manager
            .create_index(index(
                "idx_outbox_published_at_id",
                Outbox::Table,
                [Outbox::PublishedAt, Outbox::Id],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Policy::Table)
                    .col(text(Policy::Key).primary_key())
                    .col(json_binary(Policy::Value))
                    .col(big_integer(Policy::Version))
                    .col(timestamp_with_time_zone(Policy::UpdatedAt))
                    .col(text(Policy::UpdatedBy))
                    .take(),
            )
            .await?;

        // Its largest id is the global policy version a proposal is judged under.
        manager
            .create_table(
                Table::create()
                    .table(PolicyHistory::Table)
                    .col(big_pk_auto(PolicyHistory::Id))
                    .col(text(PolicyHistory::Key))
                    .col(json_binary_null(PolicyHistory::OldValue))
                    .col(json_binary(PolicyHistory::NewValue))
                    .col(text(PolicyHistory::Actor))
                    .col(text_null(PolicyHistory::Reason))
                    .col(timestamp_with_time_zone(PolicyHistory::CreatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_policy_history_key_id",
                PolicyHistory::Table,
                [PolicyHistory::Key, PolicyHistory::Id],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(big_pk_auto(AuditEvents::Id))
                    .col(text(AuditEvents::Actor))
                    .col(text(AuditEvents::Action))
                    .col(text(AuditEvents::Subject))
                    .col(json_binary_null(AuditEvents::Before))
                    .col(json_binary_null(AuditEvents::After))
                    .col(text_null(AuditEvents::Reason))
                    .col(timestamp_with_time_zone(AuditEvents::CreatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_audit_events_created_at",
                AuditEvents::Table,
                [AuditEvents::CreatedAt],
            ))
            .await?;

        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(
            manager,
            [
                AuditEvents::Table.into_iden(),
                PolicyHistory::Table.into_iden(),
                Policy::Table.into_iden(),
                Outbox::Table.into_iden(),
                Events::Table.into_iden(),
                DailyStepCounts::Table.into_iden(),
                StepDeadLetters::Table.into_iden(),
                MissionSteps::Table.into_iden(),
                Missions::Table.into_iden(),
                Proposals::Table.into_iden(),
            ],
        )
        .await
    }
}
