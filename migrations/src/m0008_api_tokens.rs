//! Named API tokens: one row per token (name, role, SHA-256 of the secret —
//! never the secret itself — creation, expiry, last use, revocation and who
//! created it), so several tokens can be valid at once and each can be
//! revoked on its own.

use sea_orm_migration::{prelude::*, schema::*};

use crate::{drop_tables, unique_index};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ApiTokens {
    Table,
    Id,
    Name,
    Role,
    SecretSha256,
    CreatedAt,
    ExpiresAt,
    LastUsedAt,
    RevokedAt,
    CreatedBy,
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
                    .table(ApiTokens::Table)
                    .col(pk_uuid(ApiTokens::Id))
                    .col(text(ApiTokens::Name))
                    .col(text(ApiTokens::Role))
                    .col(text(ApiTokens::SecretSha256))
                    .col(timestamp_with_time_zone(ApiTokens::CreatedAt))
                    .col(timestamp_with_time_zone_null(ApiTokens::ExpiresAt))
                    .col(timestamp_with_time_zone_null(ApiTokens::LastUsedAt))
                    .col(timestamp_with_time_zone_null(ApiTokens::RevokedAt))
                    .col(text(ApiTokens::CreatedBy))
                    .take(),
            )
            .await?;
        manager
            .create_index(unique_index(
                "ux_api_tokens_name",
                ApiTokens::Table,
                [ApiTokens::Name],
            ))
            .await?;
        manager
            .create_index(unique_index(
                "ux_api_tokens_secret_sha256",
                ApiTokens::Table,
                [ApiTokens::SecretSha256],
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(manager, [ApiTokens::Table.into_iden()]).await
    }
}
