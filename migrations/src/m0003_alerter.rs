//! The alerter's tables: active alerts, silences, the notification log and
//! the ids of bus messages already consumed.

use sea_orm_migration::{prelude::*, schema::*};

use crate::{drop_tables, index};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Alerts {
    Table,
    Fingerprint,
    Labels,
    Annotations,
    Status,
    StartsAt,
    EndsAt,
    GeneratorUrl,
    Source,
    ReceivedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Silences {
    Table,
    Id,
    Matchers,
    StartsAt,
    EndsAt,
    CreatedBy,
    Comment,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum NotificationLog {
    Table,
    Id,
    Receiver,
    GroupKey,
    StateHash,
    Firing,
    Resolved,
    Status,
    Attempts,
    LastError,
    CreatedAt,
    SentAt,
}

#[derive(DeriveIden)]
enum AlertMessagesSeen {
    Table,
    MessageId,
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
                    .table(Alerts::Table)
                    .col(text(Alerts::Fingerprint).primary_key())
                    .col(json_binary(Alerts::Labels))
                    .col(json_binary(Alerts::Annotations))
                    .col(text(Alerts::Status))
                    .col(timestamp_with_time_zone(Alerts::StartsAt))
                    .col(timestamp_with_time_zone_null(Alerts::EndsAt))
                    .col(text_null(Alerts::GeneratorUrl))
                    .col(text(Alerts::Source))
                    .col(timestamp_with_time_zone(Alerts::ReceivedAt))
                    .col(timestamp_with_time_zone(Alerts::UpdatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_alerts_status_updated_at",
                Alerts::Table,
                [Alerts::Status, Alerts::UpdatedAt],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Silences::Table)
                    .col(pk_uuid(Silences::Id))
                    .col(json_binary(Silences::Matchers))
                    .col(timestamp_with_time_zone(Silences::StartsAt))
                    .col(timestamp_with_time_zone(Silences::EndsAt))
                    .col(text(Silences::CreatedBy))
                    .col(text(Silences::Comment))
                    .col(timestamp_with_time_zone(Silences::CreatedAt))
                    .col(timestamp_with_time_zone(Silences::UpdatedAt))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_silences_ends_at",
                Silences::Table,
                [Silences::EndsAt],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(NotificationLog::Table)
                    .col(big_pk_auto(NotificationLog::Id))
                    .col(text(NotificationLog::Receiver))
                    .col(text(NotificationLog::GroupKey))
                    .col(text(NotificationLog::StateHash))
                    .col(json_binary(NotificationLog::Firing))
                    .col(json_binary(NotificationLog::Resolved))
                    .col(text(NotificationLog::Status))
                    .col(integer(NotificationLog::Attempts).default(0))
                    .col(text_null(NotificationLog::LastError))
                    .col(timestamp_with_time_zone(NotificationLog::CreatedAt))
                    .col(timestamp_with_time_zone_null(NotificationLog::SentAt))
                    .take(),
            )
            .await?;
        // "What did this receiver last send for this group?"
        manager
            .create_index(index(
                "idx_notification_log_receiver_group_key_created_at",
                NotificationLog::Table,
                [
                    NotificationLog::Receiver,
                    NotificationLog::GroupKey,
                    NotificationLog::CreatedAt,
                ],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AlertMessagesSeen::Table)
                    .col(text(AlertMessagesSeen::MessageId).primary_key())
                    .col(timestamp_with_time_zone(AlertMessagesSeen::CreatedAt))
                    .take(),
            )
            .await?;
        // Pruning old message ids.
        manager
            .create_index(index(
                "idx_alert_messages_seen_created_at",
                AlertMessagesSeen::Table,
                [AlertMessagesSeen::CreatedAt],
            ))
            .await?;

        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(
            manager,
            [
                AlertMessagesSeen::Table.into_iden(),
                NotificationLog::Table.into_iden(),
                Silences::Table.into_iden(),
                Alerts::Table.into_iden(),
            ],
        )
        .await
    }
}
