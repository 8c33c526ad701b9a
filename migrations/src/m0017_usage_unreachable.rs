//! Usage reports count the upstream calls that got no answer (connection
//! refused, DNS failure, timeout): `resource_usage.unreachable`, summed per
//! window like the status classes. With the 5xx answers it is the evidence
//! of an upstream outage (the heartbeat's `outage_min_calls` guard).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ResourceUsage {
    Table,
    Unreachable,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ResourceUsage::Table)
                    .add_column(big_integer(ResourceUsage::Unreachable).default(0))
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ResourceUsage::Table)
                    .drop_column(ResourceUsage::Unreachable)
                    .take(),
            )
            .await
    }
}
