//! The daily roll-up of `probe_history` (`probe_daily`: per probe and UTC
//! day, the checks, the checks that passed, average and maximum latency),
//! written by the heartbeat leader once a day is over, so uptime bars and
//! ratios outlive the raw per-minute history's retention and cost one row
//! per day to read.

use sea_orm_migration::{prelude::*, schema::*};

use crate::{drop_tables, unique_index};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ProbeDaily {
    Table,
    Probe,
    Day,
    Checks,
    UpChecks,
    AvgLatencyMs,
    MaxLatencyMs,
    RolledUpAt,
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
                    .table(ProbeDaily::Table)
                    .col(text(ProbeDaily::Probe))
                    // Midnight UTC of the day.
                    .col(timestamp_with_time_zone(ProbeDaily::Day))
                    .col(big_integer(ProbeDaily::Checks))
                    .col(big_integer(ProbeDaily::UpChecks))
                    .col(double(ProbeDaily::AvgLatencyMs))
                    .col(big_integer(ProbeDaily::MaxLatencyMs))
                    .col(timestamp_with_time_zone(ProbeDaily::RolledUpAt))
                    .take(),
            )
            .await?;
        // One row per probe and day; reads and retention go by day.
        manager
            .create_index(unique_index(
                "ux_probe_daily_day_probe",
                ProbeDaily::Table,
                [ProbeDaily::Day, ProbeDaily::Probe],
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(manager, [ProbeDaily::Table.into_iden()]).await
    }
}
