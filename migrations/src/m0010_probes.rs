//! Uptime probes: each probe's current state (`probe_state`: up/down,
//! consecutive failures, since when, the last error, the last push-heartbeat
//! ping, the certificate last seen, whether the down alert went out — not
//! during maintenance), the certificate-expiry notices already
//! sent (`probe_cert_notices`: one row per probe, certificate fingerprint and
//! threshold, so a notice goes out once) and the compact per-minute history
//! (`probe_history`: ok and latency per probe and minute, purged after the
//! retention).

use sea_orm_migration::{prelude::*, schema::*};

use crate::{drop_tables, index, unique_index};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum ProbeState {
    Table,
    Name,
    Status,
    ConsecutiveFailures,
    Since,
    LastCheckedAt,
    LastOkAt,
    LastError,
    Alerted,
    LastPingAt,
    CertFingerprint,
    CertNotAfter,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ProbeCertNotices {
    Table,
    Probe,
    Fingerprint,
    ThresholdDays,
    NotAfter,
    NotifiedAt,
}

#[derive(DeriveIden)]
enum ProbeHistory {
    Table,
    Probe,
    Minute,
    Ok,
    LatencyMs,
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
                    .table(ProbeState::Table)
                    .col(text(ProbeState::Name).primary_key())
                    .col(text(ProbeState::Status))
                    .col(integer(ProbeState::ConsecutiveFailures))
                    .col(timestamp_with_time_zone(ProbeState::Since))
                    .col(timestamp_with_time_zone_null(ProbeState::LastCheckedAt))
                    .col(timestamp_with_time_zone_null(ProbeState::LastOkAt))
                    .col(text_null(ProbeState::LastError))
                    .col(boolean(ProbeState::Alerted))
                    .col(timestamp_with_time_zone_null(ProbeState::LastPingAt))
                    .col(text_null(ProbeState::CertFingerprint))
                    .col(timestamp_with_time_zone_null(ProbeState::CertNotAfter))
                    .col(timestamp_with_time_zone(ProbeState::CreatedAt))
                    .col(timestamp_with_time_zone(ProbeState::UpdatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ProbeCertNotices::Table)
                    .col(text(ProbeCertNotices::Probe))
                    .col(text(ProbeCertNotices::Fingerprint))
                    .col(integer(ProbeCertNotices::ThresholdDays))
                    .col(timestamp_with_time_zone(ProbeCertNotices::NotAfter))
                    .col(timestamp_with_time_zone(ProbeCertNotices::NotifiedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(unique_index(
                "ux_probe_cert_notices",
                ProbeCertNotices::Table,
                [
                    ProbeCertNotices::Probe,
                    ProbeCertNotices::Fingerprint,
                    ProbeCertNotices::ThresholdDays,
                ],
            ))
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ProbeHistory::Table)
                    .col(text(ProbeHistory::Probe))
                    .col(timestamp_with_time_zone(ProbeHistory::Minute))
                    .col(boolean(ProbeHistory::Ok))
                    .col(big_integer(ProbeHistory::LatencyMs))
                    .take(),
            )
            .await?;
        manager
            .create_index(unique_index(
                "ux_probe_history_probe_minute",
                ProbeHistory::Table,
                [ProbeHistory::Probe, ProbeHistory::Minute],
            ))
            .await?;
        // Retention deletes by minute across every probe.
        manager
            .create_index(index(
                "idx_probe_history_minute",
                ProbeHistory::Table,
                [ProbeHistory::Minute],
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(
            manager,
            [
                ProbeHistory::Table.into_iden(),
                ProbeCertNotices::Table.into_iden(),
                ProbeState::Table.into_iden(),
            ],
        )
        .await
    }
}
