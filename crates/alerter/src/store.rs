//! The alerter's persistence: active alerts, silences, the notification log
//! and the bus message ids already consumed, in the `alerts`, `silences`,
//! `notification_log` and `alert_messages_seen` tables. A restart reloads
//! all of it, so nothing sent is re-sent and nothing due is dropped.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use opsloop_core::audit::AuditRecord;
use opsloop_core::store::entities::{
    alert_messages_seen, alerts, audit_events, notification_log, silences,
};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, TransactionTrait,
};
use uuid::Uuid;

use crate::dispatch::GroupId;
use crate::group::NotifiedState;
use crate::matchers::{ApiMatcher, Matcher};
use crate::model::{Alert, Fingerprint, LabelSet};
use crate::silence::Silence;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("stored {what} is unreadable: {reason}")]
    Corrupt { what: String, reason: String },
    /// A batched write failed (the message of the underlying error).
    #[error("database: {0}")]
    Batch(String),
    #[error("the alert writer has stopped")]
    WriterStopped,
}

/// How a notification log row ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStatus {
    Sent,
    Failed,
    DeadLetter,
}

impl LogStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::DeadLetter => "dead_letter",
        }
    }
}

/// One notification log row to write.
#[derive(Debug, Clone)]
pub struct LogEntry<'a> {
    pub receiver: &'a str,
    pub group_key: &'a str,
    pub state: &'a NotifiedState,
    pub status: LogStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub at: DateTime<Utc>,
}

/// A notification log row to write later (queued to the writer task).
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub receiver: String,
    pub group_key: String,
    pub state: NotifiedState,
    pub status: LogStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub at: DateTime<Utc>,
}

impl LogRecord {
    pub fn entry(&self) -> LogEntry<'_> {
        LogEntry {
            receiver: &self.receiver,
            group_key: &self.group_key,
            state: &self.state,
            status: self.status,
            attempts: self.attempts,
            last_error: self.last_error.clone(),
            at: self.at,
        }
    }
}

/// A notification log row as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub receiver: String,
    pub group_key: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub firing: Vec<String>,
}

#[derive(Clone)]
pub struct AlertStore {
    db: DatabaseConnection,
    /// Whether a batch's commit waits for the database's disk flush (see
    /// [`AlertStore::with_commit_fsync`]).
    commit_fsync: bool,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

fn fingerprints_json(set: &BTreeSet<Fingerprint>) -> serde_json::Value {
    serde_json::Value::Array(
        set.iter()
            .map(|fp| serde_json::Value::String(fp.to_string()))
            .collect(),
    )
}

fn fingerprints_from(value: &serde_json::Value) -> Result<BTreeSet<Fingerprint>, StoreError> {
    serde_json::from_value(value.clone()).map_err(|e| corrupt("notification_log fingerprints", e))
}

fn alert_model(alert: &Alert, now: DateTime<Utc>) -> alerts::ActiveModel {
    alerts::ActiveModel {
        fingerprint: Set(alert.fingerprint().to_string()),
        labels: Set(serde_json::to_value(&alert.labels).unwrap_or_default()),
        annotations: Set(serde_json::to_value(&alert.annotations).unwrap_or_default()),
        status: Set(alert.status(now).as_str().to_owned()),
        starts_at: Set(alert.starts_at),
        ends_at: Set(alert.ends_at),
        generator_url: Set(alert.generator_url.clone()),
        source: Set(alert.source.clone()),
        received_at: Set(now),
        updated_at: Set(alert.updated_at),
    }
}

fn log_model(entry: &LogEntry<'_>) -> notification_log::ActiveModel {
    notification_log::ActiveModel {
        receiver: Set(entry.receiver.to_owned()),
        group_key: Set(entry.group_key.to_owned()),
        state_hash: Set(entry.state.hash()),
        firing: Set(fingerprints_json(&entry.state.firing)),
        resolved: Set(fingerprints_json(&entry.state.resolved)),
        status: Set(entry.status.as_str().to_owned()),
        attempts: Set(i32::try_from(entry.attempts).unwrap_or(i32::MAX)),
        last_error: Set(entry.last_error.clone()),
        created_at: Set(entry.at),
        sent_at: Set((entry.status == LogStatus::Sent).then_some(entry.state.at)),
        ..Default::default()
    }
}

/// Rows per multi-row statement (PostgreSQL allows 65,535 parameters; an
/// alert row has 10).
const ROWS_PER_STATEMENT: usize = 1000;

fn alert_upsert() -> OnConflict {
    OnConflict::column(alerts::Column::Fingerprint)
        .update_columns([
            alerts::Column::Annotations,
            alerts::Column::Status,
            alerts::Column::StartsAt,
            alerts::Column::EndsAt,
            alerts::Column::GeneratorUrl,
            alerts::Column::Source,
            alerts::Column::UpdatedAt,
        ])
        .to_owned()
}

impl AlertStore {
    /// A store whose batches commit durably on disk (fsync) before
    /// [`AlertStore::write_batch`] returns.
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            commit_fsync: true,
        }
    }

    /// With `fsync` false, the writer's batches ([`AlertStore::write_batch`])
    /// return once committed, without waiting for PostgreSQL to flush the
    /// commit to disk (`synchronous_commit = off` for that transaction
    /// only). A committed row is visible and survives any crash of the
    /// alerter (kill -9 included); only a crash of the database host can
    /// lose the last commits (at most about three `wal_writer_delay`, 600 ms
    /// by default), never partly. Those are posts Prometheus re-sends (it
    /// re-posts firing alerts every `resend_delay`) and log rows whose loss
    /// means a notification is repeated, not lost. SQLite ignores it.
    pub fn with_commit_fsync(mut self, fsync: bool) -> Self {
        self.commit_fsync = fsync;
        self
    }

    /// Whether batches wait for the disk flush.
    pub fn commit_fsync(&self) -> bool {
        self.commit_fsync
    }

    /// Saves alerts, each stamped with its own instant, in one transaction
    /// and in the order given (a later state of an alert wins).
    pub async fn save_alerts_at(
        &self,
        batch: &[(&Alert, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        self.write_batch(batch, &[]).await
    }

    /// One transaction: upserts alerts (the last state of each given wins,
    /// in multi-row statements) and appends notification log rows. What
    /// the writer task commits for everything queued together.
    pub async fn write_batch(
        &self,
        batch: &[(&Alert, DateTime<Utc>)],
        log: &[LogEntry<'_>],
    ) -> Result<(), StoreError> {
        if batch.is_empty() && log.is_empty() {
            return Ok(());
        }
        // One row per fingerprint (a multi-row upsert may not touch a row
        // twice), keeping the last state, in first-seen order.
        let mut last: HashMap<Fingerprint, usize> = HashMap::new();
        let mut order = Vec::new();
        for (i, (alert, _)) in batch.iter().enumerate() {
            if last.insert(alert.fingerprint(), i).is_none() {
                order.push(alert.fingerprint());
            }
        }
        let rows: Vec<alerts::ActiveModel> = order
            .iter()
            .filter_map(|fp| last.get(fp))
            .map(|i| alert_model(batch[*i].0, batch[*i].1))
            .collect();
        let txn = self.db.begin().await?;
        if !self.commit_fsync && txn.get_database_backend() == DbBackend::Postgres {
            txn.execute_unprepared("SET LOCAL synchronous_commit TO OFF")
                .await?;
        }
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            alerts::Entity::insert_many(chunk.to_vec())
                .on_conflict(alert_upsert())
                .exec_without_returning(&txn)
                .await?;
        }
        let log_rows: Vec<notification_log::ActiveModel> = log.iter().map(log_model).collect();
        for chunk in log_rows.chunks(ROWS_PER_STATEMENT) {
            notification_log::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Saves the alerts of a bus message unless its id was seen before, in
    /// one transaction. Returns false for a duplicate message.
    pub async fn save_message_alerts(
        &self,
        message_id: &str,
        batch: &[Alert],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin().await?;
        let inserted = alert_messages_seen::Entity::insert(alert_messages_seen::ActiveModel {
            message_id: Set(message_id.to_owned()),
            created_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(alert_messages_seen::Column::MessageId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        if inserted == 0 {
            txn.rollback().await?;
            return Ok(false);
        }
        for alert in batch {
            alerts::Entity::insert(alert_model(alert, now))
                .on_conflict(alert_upsert())
                .exec_without_returning(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(true)
    }

    pub async fn delete_alerts(&self, fingerprints: &[Fingerprint]) -> Result<(), StoreError> {
        if fingerprints.is_empty() {
            return Ok(());
        }
        alerts::Entity::delete_many()
            .filter(alerts::Column::Fingerprint.is_in(fingerprints.iter().map(ToString::to_string)))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    pub async fn load_alerts(&self) -> Result<Vec<Alert>, StoreError> {
        self.load_alerts_updated_since(None).await
    }

    /// Alerts updated at or after `since` (all when `None`).
    pub async fn load_alerts_updated_since(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<Alert>, StoreError> {
        let mut query = alerts::Entity::find().order_by_asc(alerts::Column::StartsAt);
        if let Some(since) = since {
            query = query.filter(alerts::Column::UpdatedAt.gte(since));
        }
        let rows = query.all(&self.db).await?;
        rows.into_iter()
            .map(|row| {
                let labels: LabelSet =
                    serde_json::from_value(row.labels).map_err(|e| corrupt("alert labels", e))?;
                let annotations: LabelSet = serde_json::from_value(row.annotations)
                    .map_err(|e| corrupt("alert annotations", e))?;
                Ok(Alert {
                    labels,
                    annotations,
                    starts_at: row.starts_at,
                    ends_at: row.ends_at,
                    generator_url: row.generator_url,
                    source: row.source,
                    updated_at: row.updated_at,
                })
            })
            .collect()
    }

    /// Saves a silence and, in the same transaction, its audit row.
    pub async fn save_silence(
        &self,
        silence: &Silence,
        audit: Option<&AuditRecord>,
    ) -> Result<(), StoreError> {
        let matchers: Vec<ApiMatcher> = silence.matchers.iter().map(ApiMatcher::from).collect();
        let model = silences::ActiveModel {
            id: Set(silence.id),
            matchers: Set(serde_json::to_value(&matchers).unwrap_or_default()),
            starts_at: Set(silence.starts_at),
            ends_at: Set(silence.ends_at),
            created_by: Set(silence.created_by.clone()),
            comment: Set(silence.comment.clone()),
            created_at: Set(silence.updated_at),
            updated_at: Set(silence.updated_at),
        };
        let txn = self.db.begin().await?;
        silences::Entity::insert(model)
            .on_conflict(
                OnConflict::column(silences::Column::Id)
                    .update_columns([
                        silences::Column::Matchers,
                        silences::Column::StartsAt,
                        silences::Column::EndsAt,
                        silences::Column::CreatedBy,
                        silences::Column::Comment,
                        silences::Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
        if let Some(record) = audit {
            audit_events::Entity::insert(audit_events::ActiveModel {
                actor: Set(record.actor.clone()),
                action: Set(record.action.clone()),
                subject: Set(record.subject.clone()),
                before: Set(record.before.clone()),
                after: Set(record.after.clone()),
                reason: Set(record.reason.clone()),
                created_at: Set(record.at),
                ..Default::default()
            })
            .exec_without_returning(&txn)
            .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    pub async fn load_silences(&self) -> Result<Vec<Silence>, StoreError> {
        let rows = silences::Entity::find()
            .order_by_asc(silences::Column::CreatedAt)
            .all(&self.db)
            .await?;
        rows.into_iter()
            .map(|row| {
                let api: Vec<ApiMatcher> = serde_json::from_value(row.matchers)
                    .map_err(|e| corrupt("silence matchers", e))?;
                let matchers = api
                    .iter()
                    .map(Matcher::try_from)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| corrupt("silence matchers", e))?;
                Ok(Silence {
                    id: row.id,
                    matchers,
                    starts_at: row.starts_at,
                    ends_at: row.ends_at,
                    created_by: row.created_by,
                    comment: row.comment,
                    updated_at: row.updated_at,
                })
            })
            .collect()
    }

    pub async fn log_notification(&self, entry: LogEntry<'_>) -> Result<(), StoreError> {
        notification_log::Entity::insert(log_model(&entry))
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// The last state each receiver was told about each group since `since`.
    pub async fn last_sent(
        &self,
        since: DateTime<Utc>,
    ) -> Result<HashMap<GroupId, NotifiedState>, StoreError> {
        let rows = notification_log::Entity::find()
            .filter(notification_log::Column::Status.eq(LogStatus::Sent.as_str()))
            .filter(notification_log::Column::CreatedAt.gte(since))
            .order_by_asc(notification_log::Column::Id)
            .all(&self.db)
            .await?;
        let mut last = HashMap::new();
        for row in rows {
            let state = NotifiedState {
                firing: fingerprints_from(&row.firing)?,
                resolved: fingerprints_from(&row.resolved)?,
                at: row.sent_at.unwrap_or(row.created_at),
            };
            last.insert((row.receiver, row.group_key), state);
        }
        Ok(last)
    }

    /// Every log row of a receiver, oldest first (tests and operators).
    pub async fn log_rows(&self, receiver: &str) -> Result<Vec<LogRow>, StoreError> {
        let rows = notification_log::Entity::find()
            .filter(notification_log::Column::Receiver.eq(receiver))
            .order_by_asc(notification_log::Column::Id)
            .all(&self.db)
            .await?;
        rows.into_iter()
            .map(|row| {
                Ok(LogRow {
                    firing: serde_json::from_value(row.firing)
                        .map_err(|e| corrupt("notification_log firing", e))?,
                    receiver: row.receiver,
                    group_key: row.group_key,
                    status: row.status,
                    attempts: row.attempts,
                    last_error: row.last_error,
                })
            })
            .collect()
    }

    /// Forgets message ids older than `before`.
    pub async fn prune_seen(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let result = alert_messages_seen::Entity::delete_many()
            .filter(alert_messages_seen::Column::CreatedAt.lt(before))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }

    /// Forgets notification log rows older than `before`.
    pub async fn prune_log(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let result = notification_log::Entity::delete_many()
            .filter(notification_log::Column::CreatedAt.lt(before))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }

    pub async fn silence(&self, id: Uuid) -> Result<Option<Silence>, StoreError> {
        Ok(self.load_silences().await?.into_iter().find(|s| s.id == id))
    }
}
