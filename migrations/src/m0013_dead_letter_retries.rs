//! Dead letters remember their retry: `step_dead_letters` gains the proposal
//! a retry created (`retried_proposal_id`), who asked (`retried_by`) and when
//! (`retried_at`), so a dead letter is retried once and `opsloop deadletter
//! list` shows only those still waiting.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum StepDeadLetters {
    Table,
    RetriedProposalId,
    RetriedBy,
    RetriedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [
            uuid_null(StepDeadLetters::RetriedProposalId),
            text_null(StepDeadLetters::RetriedBy),
            timestamp_with_time_zone_null(StepDeadLetters::RetriedAt),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(StepDeadLetters::Table)
                        .add_column(column)
                        .take(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            StepDeadLetters::RetriedAt,
            StepDeadLetters::RetriedBy,
            StepDeadLetters::RetriedProposalId,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(StepDeadLetters::Table)
                        .drop_column(column)
                        .take(),
                )
                .await?;
        }
        Ok(())
    }
}
