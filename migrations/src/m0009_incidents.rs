//! Incidents, on-call and escalation: the `incidents` (state, level, who
//! acknowledged and resolved, the escalation cursor the leader drives),
//! `incident_groups` (the alert group an open incident holds: at most one
//! open incident per group), `incident_log` (the timeline: opened, joined,
//! pages, escalation steps, acknowledgements, notes) and `incident_link_uses`
//! (the nonces of signed acknowledge/resolve links already used).

use sea_orm_migration::{prelude::*, schema::*};

use crate::{drop_tables, index};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Incidents {
    Table,
    Id,
    Title,
    Level,
    State,
    GroupKey,
    Labels,
    AlertsFiring,
    AlertsResolved,
    OpenedBy,
    OpenedAt,
    AcknowledgedAt,
    AcknowledgedBy,
    ResolvedAt,
    ResolvedBy,
    EscalationStep,
    NextEscalationAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum IncidentGroups {
    Table,
    GroupKey,
    IncidentId,
}

#[derive(DeriveIden)]
enum IncidentLog {
    Table,
    Id,
    IncidentId,
    At,
    Kind,
    Actor,
    Detail,
}

#[derive(DeriveIden)]
enum IncidentLinkUses {
    Table,
    Nonce,
    IncidentId,
    Action,
    UsedAt,
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
                    .table(Incidents::Table)
                    .col(pk_uuid(Incidents::Id))
                    .col(text(Incidents::Title))
                    .col(text(Incidents::Level))
                    .col(text(Incidents::State))
                    .col(text_null(Incidents::GroupKey))
                    .col(json_binary(Incidents::Labels))
                    .col(integer(Incidents::AlertsFiring).default(0))
                    .col(boolean(Incidents::AlertsResolved).default(false))
                    .col(text(Incidents::OpenedBy))
                    .col(timestamp_with_time_zone(Incidents::OpenedAt))
                    .col(timestamp_with_time_zone_null(Incidents::AcknowledgedAt))
                    .col(text_null(Incidents::AcknowledgedBy))
                    .col(timestamp_with_time_zone_null(Incidents::ResolvedAt))
                    .col(text_null(Incidents::ResolvedBy))
                    .col(integer(Incidents::EscalationStep).default(0))
                    .col(timestamp_with_time_zone_null(Incidents::NextEscalationAt))
                    .col(timestamp_with_time_zone(Incidents::UpdatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "ix_incidents_next_escalation_at",
                Incidents::Table,
                [Incidents::NextEscalationAt],
            ))
            .await?;
        manager
            .create_index(index(
                "ix_incidents_opened_at",
                Incidents::Table,
                [Incidents::OpenedAt],
            ))
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(IncidentGroups::Table)
                    .col(text(IncidentGroups::GroupKey).primary_key())
                    .col(uuid(IncidentGroups::IncidentId))
                    .take(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(IncidentLog::Table)
                    .col(big_pk_auto(IncidentLog::Id))
                    .col(uuid(IncidentLog::IncidentId))
                    .col(timestamp_with_time_zone(IncidentLog::At))
                    .col(text(IncidentLog::Kind))
                    .col(text(IncidentLog::Actor))
                    .col(json_binary(IncidentLog::Detail))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "ix_incident_log_incident",
                IncidentLog::Table,
                [IncidentLog::IncidentId, IncidentLog::Id],
            ))
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(IncidentLinkUses::Table)
                    .col(text(IncidentLinkUses::Nonce).primary_key())
                    .col(uuid(IncidentLinkUses::IncidentId))
                    .col(text(IncidentLinkUses::Action))
                    .col(timestamp_with_time_zone(IncidentLinkUses::UsedAt))
                    .take(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(
            manager,
            [
                IncidentLinkUses::Table.into_iden(),
                IncidentLog::Table.into_iden(),
                IncidentGroups::Table.into_iden(),
                Incidents::Table.into_iden(),
            ],
        )
        .await
    }
}
