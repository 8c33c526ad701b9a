//! Console nonces spent across api replicas (`console_nonces`): a signed-out
//! session (`session:<sid>`) and a submitted CSRF token (`csrf:<nonce>`),
//! each kept until it could no longer be valid. Inserting a key that is
//! already there tells a replica the nonce was spent on another one.

use sea_orm_migration::{prelude::*, schema::*};

use crate::{drop_tables, index};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ConsoleNonces {
    Table,
    Key,
    ExpiresAt,
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
                    .table(ConsoleNonces::Table)
                    .col(text(ConsoleNonces::Key).primary_key())
                    .col(timestamp_with_time_zone(ConsoleNonces::ExpiresAt))
                    .take(),
            )
            .await?;
        // Expired nonces are swept by time.
        manager
            .create_index(index(
                "idx_console_nonces_expires_at",
                ConsoleNonces::Table,
                [ConsoleNonces::ExpiresAt],
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(manager, [ConsoleNonces::Table.into_iden()]).await
    }
}
