//! Step kinds paused for claiming (`step_kind_pauses`): one row per kind
//! and source (e.g. `probe:payments-api`, a probe the kind depends on that
//! is down). The claim statement skips a kind with any row, so several
//! sources may hold one kind paused and each releases only its own row.
//! Also the probes added at run time (`probe_definitions`, `opsloop probe
//! add`): the `[[heartbeat.probes]]` entry as JSON, merged with the
//! configured probes (the configuration wins on a name clash).

use sea_orm_migration::{prelude::*, schema::*};

use crate::{drop_tables, index, unique_index};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum StepKindPauses {
    Table,
    Kind,
    Source,
    Reason,
    Since,
}

#[derive(DeriveIden)]
enum ProbeDefinitions {
    Table,
    Name,
    Spec,
    CreatedBy,
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
                    .table(StepKindPauses::Table)
                    .col(text(StepKindPauses::Kind))
                    .col(text(StepKindPauses::Source))
                    .col(text(StepKindPauses::Reason))
                    .col(timestamp_with_time_zone(StepKindPauses::Since))
                    .take(),
            )
            .await?;
        // The claim looks rows up by kind (its anti-join).
        manager
            .create_index(unique_index(
                "ux_step_kind_pauses_kind_source",
                StepKindPauses::Table,
                [StepKindPauses::Kind, StepKindPauses::Source],
            ))
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ProbeDefinitions::Table)
                    .col(text(ProbeDefinitions::Name).primary_key())
                    .col(json_binary(ProbeDefinitions::Spec))
                    .col(text(ProbeDefinitions::CreatedBy))
                    .col(timestamp_with_time_zone(ProbeDefinitions::CreatedAt))
                    .take(),
            )
            .await?;
        // A source releases its rows.
        manager
            .create_index(index(
                "idx_step_kind_pauses_source",
                StepKindPauses::Table,
                [StepKindPauses::Source],
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(
            manager,
            [
                ProbeDefinitions::Table.into_iden(),
                StepKindPauses::Table.into_iden(),
            ],
        )
        .await
    }
}
