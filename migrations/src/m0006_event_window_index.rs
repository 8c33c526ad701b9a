//! Trigger window facts are `COUNT`/`EXISTS` queries on `events` filtered by
//! kind and a time window; `(kind, created_at)` lets a count of one frequent
//! kind read only that kind's rows in the window. Also drops `claimed` fire
//! ledger rows left by the three-transaction firing of earlier versions (a
//! firing is now one transaction, so nothing resumes them and they would
//! hold their window for good).

use sea_orm_migration::prelude::*;

use crate::index;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Events {
    Table,
    Kind,
    CreatedAt,
}

#[derive(DeriveIden)]
enum TriggerFires {
    Table,
    Outcome,
}

const INDEX: &str = "idx_events_kind_created_at";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(index(
                INDEX,
                Events::Table,
                [Events::Kind, Events::CreatedAt],
            ))
            .await?;
        manager
            .exec_stmt(
                Query::delete()
                    .from_table(TriggerFires::Table)
                    .and_where(Expr::col(TriggerFires::Outcome).eq("claimed"))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(INDEX).table(Events::Table).to_owned())
            .await
    }
}
