//! The outbox relay: publishes unsent outbox rows to the bus in id order
//! with publisher confirms, and marks them sent. It stops a batch at the
//! first failure, so nothing overtakes an unpublished row (order per
//! aggregate — and globally — is kept), and retries with backoff until the
//! broker is back. Safe with several api replicas: on PostgreSQL a batch
//! runs under a transaction-scoped advisory lock, so one replica relays at a
//! time; on SQLite (the embedded, single-process mode) passes are
//! serialized by a process-wide lock, and the database's write lock is not
//! held while waiting for the broker. Delivery is at least once; the message id is the event
//! id, so consumers deduplicate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, TransactionTrait};
use tokio_util::sync::CancellationToken;

use super::{Result, db_now, stmt};
use crate::bus::{Bus, BusMessage};
use crate::domain::Doubling;
use crate::store::entities::outbox;

/// Serializes relay passes on SQLite within the process.
static SQLITE_RELAY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Advisory lock key of the relay ("outbox" in ASCII).
const RELAY_LOCK_KEY: i64 = 0x0000_6f75_7462_6f78;

/// How the relay paces itself.
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    pub batch: u64,
    /// Poll interval when there is nothing to send.
    pub idle: Duration,
    /// Longest wait between retries while the broker is down.
    pub max_backoff: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch: 200,
            idle: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayPass {
    pub published: usize,
    /// True when a publish failed (the rest of the batch waits).
    pub failed: bool,
    /// True when another replica holds the relay lock.
    pub busy: bool,
}

/// Publishes one batch.
pub async fn relay_once(db: &DatabaseConnection, bus: &dyn Bus, batch: u64) -> Result<RelayPass> {
    let backend = db.get_database_backend();
    let _serial = if backend == DbBackend::Sqlite {
        Some(SQLITE_RELAY.lock().await)
    } else {
        None
    };
    let tx = db.begin().await?;
    if backend == DbBackend::Postgres {
        let row = tx
            .query_one_raw(stmt(
                backend,
                "SELECT pg_try_advisory_xact_lock($1) AS locked",
                vec![RELAY_LOCK_KEY.into()],
            ))
            .await?;
        let locked = match row {
            Some(row) => row.try_get::<bool>("", "locked")?,
            None => false,
        };
        if !locked {
            tx.rollback().await?;
            return Ok(RelayPass {
                busy: true,
                ..Default::default()
            });
        }
    }
    let rows = outbox::Entity::find()
        .from_raw_sql(stmt(
            backend,
            &format!(
                "SELECT * FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT {}",
                batch.clamp(1, 10_000)
            ),
            vec![],
        ))
        .all(&tx)
        .await?;
    // SQLite: do not hold the write lock while waiting for the broker.
    let tx = if backend == DbBackend::Sqlite {
        tx.commit().await?;
        None
    } else {
        Some(tx)
    };
    let mut pass = RelayPass::default();
    let mut sent: Vec<i64> = Vec::new();
    let mut failure: Option<(i64, String)> = None;
    for row in &rows {
        let headers: BTreeMap<String, String> =
            serde_json::from_value(row.headers.clone()).unwrap_or_default();
        let message = BusMessage {
            id: row.event_id.to_string(),
            routing_key: row.routing_key.clone(),
            payload: serde_json::to_vec(&row.payload).unwrap_or_default(),
            headers,
        };
        match bus.publish(message).await {
            Ok(()) => sent.push(row.id),
            Err(error) => {
                failure = Some((row.id, error.to_string()));
                break;
            }
        }
    }
    let now = db_now(Utc::now());
    let tx = match tx {
        Some(tx) => tx,
        None => super::begin_write(db).await?,
    };
    if !sent.is_empty() {
        // By id list, not range: on PostgreSQL a row with an id inside the
        // range may have committed after our read and is still unsent.
        let mut values: Vec<sea_orm::Value> = vec![now.into()];
        let mut placeholders = Vec::with_capacity(sent.len());
        for id in &sent {
            values.push((*id).into());
            placeholders.push(format!("${}", values.len()));
        }
        tx.execute_raw(stmt(
            backend,
            &format!(
                "UPDATE outbox SET published_at = $1, attempts = attempts + 1 \
                 WHERE id IN ({}) AND published_at IS NULL",
                placeholders.join(", ")
            ),
            values,
        ))
        .await?;
    }
    if let Some((id, error)) = &failure {
        tx.execute_raw(stmt(
            backend,
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = $1",
            vec![(*id).into(), error.clone().into()],
        ))
        .await?;
    }
    tx.commit().await?;
    pass.published = sent.len();
    metrics::counter!("opsloop_outbox_published_total").increment(sent.len() as u64);
    if let Some((id, error)) = failure {
        pass.failed = true;
        metrics::counter!("opsloop_outbox_publish_failures_total").increment(1);
        tracing::warn!(outbox_id = id, error, "outbox publish failed; will retry");
    }
    Ok(pass)
}

/// Seconds since the oldest unpublished row was written (0 when none).
pub async fn lag_seconds(db: &DatabaseConnection) -> Result<f64> {
    let row = outbox::Entity::find()
        .from_raw_sql(stmt(
            db.get_database_backend(),
            "SELECT * FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 1",
            vec![],
        ))
        .one(db)
        .await?;
    Ok(row
        .map(|r| (Utc::now() - r.created_at).num_milliseconds().max(0) as f64 / 1000.0)
        .unwrap_or(0.0))
}

/// Runs the relay until `shutdown`: publishes as long as there is work,
/// polls when idle, backs off (exponentially, capped) while publishing or
/// the database fails.
pub async fn run_relay(
    db: DatabaseConnection,
    bus: Arc<dyn Bus>,
    settings: RelaySettings,
    shutdown: CancellationToken,
) {
    let mut backoff = Doubling::new(Duration::from_millis(100), settings.max_backoff);
    tracing::info!(batch = settings.batch, "outbox relay started");
    loop {
        let wait = match relay_once(&db, bus.as_ref(), settings.batch).await {
            Ok(pass) if pass.failed => backoff.next_delay(),
            Ok(pass) if pass.published as u64 >= settings.batch => {
                backoff.reset();
                Duration::ZERO
            }
            Ok(_) => {
                backoff.reset();
                settings.idle
            }
            Err(error) => {
                tracing::warn!(%error, "outbox relay pass failed");
                backoff.next_delay()
            }
        };
        if let Ok(lag) = lag_seconds(&db).await {
            metrics::gauge!("opsloop_outbox_lag_seconds").set(lag);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("outbox relay stopped");
}
