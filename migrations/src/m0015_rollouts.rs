//! Staged rollouts (`rollouts`): the phases as JSON, the current phase and
//! since when, the status (`active`, `completed`, `rolled_back`,
//! `aborted`) and the newest go/no-go report. At most one rollout is active:
//! `active_slot` is `'active'` on it and NULL on every other row, under a
//! unique index (NULLs never clash, on PostgreSQL and SQLite alike).

use sea_orm_migration::{prelude::*, schema::*};

use crate::{drop_tables, index, unique_index};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Rollouts {
    Table,
    Id,
    Name,
    Spec,
    Status,
    PhaseIndex,
    PhaseStartedAt,
    ActiveSlot,
    LastVerdict,
    LastReport,
    CreatedBy,
    CreatedAt,
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
                    .table(Rollouts::Table)
                    .col(pk_uuid(Rollouts::Id))
                    .col(text(Rollouts::Name))
                    .col(json_binary(Rollouts::Spec))
                    .col(text(Rollouts::Status))
                    .col(integer(Rollouts::PhaseIndex))
                    .col(timestamp_with_time_zone(Rollouts::PhaseStartedAt))
                    .col(text_null(Rollouts::ActiveSlot))
                    .col(text_null(Rollouts::LastVerdict))
                    .col(json_binary_null(Rollouts::LastReport))
                    .col(text(Rollouts::CreatedBy))
                    .col(timestamp_with_time_zone(Rollouts::CreatedAt))
                    .col(timestamp_with_time_zone(Rollouts::UpdatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(unique_index(
                "ux_rollouts_active_slot",
                Rollouts::Table,
                [Rollouts::ActiveSlot],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_rollouts_created_at",
                Rollouts::Table,
                [Rollouts::CreatedAt],
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(manager, [Rollouts::Table.into_iden()]).await
    }
}
