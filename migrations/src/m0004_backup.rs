//! The backup-agent's catalogue of backups and their verification state.

use sea_orm_migration::{prelude::*, schema::*};

use crate::{drop_tables, index};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Backups {
    Table,
    Id,
    Target,
    Kind,
    Status,
    ObjectKey,
    SizeBytes,
    Sha256,
    Compression,
    Manifest,
    StartedAt,
    FinishedAt,
    VerifyStatus,
    VerifiedAt,
    VerifyDurationMs,
    Error,
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
                    .table(Backups::Table)
                    .col(pk_uuid(Backups::Id))
                    .col(text(Backups::Target))
                    .col(text(Backups::Kind))
                    .col(text(Backups::Status))
                    .col(text_null(Backups::ObjectKey))
                    .col(big_integer_null(Backups::SizeBytes))
                    .col(text_null(Backups::Sha256))
                    .col(text(Backups::Compression))
                    .col(json_binary_null(Backups::Manifest))
                    .col(timestamp_with_time_zone(Backups::StartedAt))
                    .col(timestamp_with_time_zone_null(Backups::FinishedAt))
                    .col(text_null(Backups::VerifyStatus))
                    .col(timestamp_with_time_zone_null(Backups::VerifiedAt))
                    .col(big_integer_null(Backups::VerifyDurationMs))
                    .col(text_null(Backups::Error))
                    .take(),
            )
            .await?;
        // Newest backup per target, retention buckets, freshness.
        manager
            .create_index(index(
                "idx_backups_target_started_at",
                Backups::Table,
                [Backups::Target, Backups::StartedAt],
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(manager, [Backups::Table.into_iden()]).await
    }
}
