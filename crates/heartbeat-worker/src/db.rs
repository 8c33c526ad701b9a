//! The heartbeat's own rows: write transactions, persisted cooldowns and
//! marks (`cooldowns`), the leader lease with its fencing token (`leases`),
//! per-consumer event cursors (`event_cursors`) with quarantine
//! (`event_quarantine`), and reading events as [`EventView`]s. Same SQL on
//! PostgreSQL and SQLite (`$n` placeholders, `ON CONFLICT`, `RETURNING`).

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbErr, EntityTrait, Value};
use uuid::Uuid;

use opsloop_core::store::entities::events;
use opsloop_core::workflow::db_now;

use crate::matching::EventView;

pub use opsloop_core::store::{begin_write, for_update, stmt};

/// Claims the cooldown `name` until `until` if it has passed (or never
/// existed) at `now`. True when claimed: a compare-and-set, so two racing
/// callers never both claim.
pub async fn claim_cooldown(
    tx: &impl ConnectionTrait,
    name: &str,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let now = db_now(now);
    let changed = tx
        .execute_raw(stmt(
            tx.get_database_backend(),
            "INSERT INTO cooldowns (name, until, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET until = excluded.until, updated_at = excluded.updated_at \
             WHERE cooldowns.until <= $3",
            vec![name.into(), db_now(until).into(), now.into()],
        ))
        .await?
        .rows_affected();
    Ok(changed == 1)
}

/// Moves the mark `name` forward to `to` if it is behind. True when moved.
pub async fn advance_mark(
    tx: &impl ConnectionTrait,
    name: &str,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let changed = tx
        .execute_raw(stmt(
            tx.get_database_backend(),
            "INSERT INTO cooldowns (name, until, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET until = excluded.until, updated_at = excluded.updated_at \
             WHERE cooldowns.until < excluded.until",
            vec![name.into(), db_now(to).into(), db_now(now).into()],
        ))
        .await?
        .rows_affected();
    Ok(changed == 1)
}

/// Sets (`true`) or clears (`false`) a flag row in `cooldowns`.
pub async fn set_flag(
    db: &impl ConnectionTrait,
    name: &str,
    on: bool,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let now = db_now(now);
    let statement = if on {
        stmt(
            db.get_database_backend(),
            "INSERT INTO cooldowns (name, until, updated_at) VALUES ($1, $2, $2) \
             ON CONFLICT (name) DO UPDATE SET until = excluded.until, updated_at = excluded.updated_at",
            vec![name.into(), now.into()],
        )
    } else {
        stmt(
            db.get_database_backend(),
            "DELETE FROM cooldowns WHERE name = $1",
            vec![name.into()],
        )
    };
    db.execute_raw(statement).await?;
    Ok(())
}

/// Names of the flag rows starting with `prefix`.
pub async fn flags_with_prefix(
    db: &impl ConnectionTrait,
    prefix: &str,
) -> Result<Vec<String>, DbErr> {
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            "SELECT name FROM cooldowns WHERE name LIKE $1",
            vec![format!("{prefix}%").into()],
        ))
        .await?;
    rows.iter()
        .map(|r| r.try_get::<String>("", "name"))
        .collect()
}

/// The stored `until` of a cooldown or mark.
pub async fn cooldown_until(
    db: &impl ConnectionTrait,
    name: &str,
) -> Result<Option<DateTime<Utc>>, DbErr> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT until FROM cooldowns WHERE name = $1",
            vec![name.into()],
        ))
        .await?;
    row.map(|r| r.try_get::<DateTime<Utc>>("", "until"))
        .transpose()
}

/// A held lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Grows each time the lease changes hands.
    pub fencing_token: i64,
    pub expires_at: DateTime<Utc>,
}

/// Takes or renews the lease `name` for `holder` until `now + ttl`. Granted
/// when free, expired or already ours; `None` while another holder's lease
/// runs.
pub async fn acquire_lease(
    db: &impl ConnectionTrait,
    name: &str,
    holder: &str,
    ttl: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<Option<LeaseGrant>, DbErr> {
    let now = db_now(now);
    let expires = now + ttl;
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "INSERT INTO leases (name, holder, expires_at, fencing_token, updated_at) \
             VALUES ($1, $2, $3, 1, $4) \
             ON CONFLICT (name) DO UPDATE SET \
               fencing_token = CASE WHEN leases.holder = excluded.holder \
                 THEN leases.fencing_token ELSE leases.fencing_token + 1 END, \
               holder = excluded.holder, expires_at = excluded.expires_at, \
               updated_at = excluded.updated_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at <= excluded.updated_at \
             RETURNING fencing_token",
            vec![name.into(), holder.into(), expires.into(), now.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => Some(LeaseGrant {
            fencing_token: row.try_get::<i64>("", "fencing_token")?,
            expires_at: expires,
        }),
        None => None,
    })
}

/// Gives the lease up (on shutdown) so a standby takes over at once.
pub async fn release_lease(
    db: &impl ConnectionTrait,
    name: &str,
    holder: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        db.get_database_backend(),
        "UPDATE leases SET expires_at = $3, updated_at = $3 WHERE name = $1 AND holder = $2",
        vec![name.into(), holder.into(), db_now(now).into()],
    ))
    .await?;
    Ok(())
}

/// The current holder of a lease and its expiry.
pub async fn lease_holder(
    db: &impl ConnectionTrait,
    name: &str,
) -> Result<Option<(String, DateTime<Utc>)>, DbErr> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT holder, expires_at FROM leases WHERE name = $1",
            vec![name.into()],
        ))
        .await?;
    row.map(|r| Ok((r.try_get("", "holder")?, r.try_get("", "expires_at")?)))
        .transpose()
}

/// The last event seq `consumer` has examined (0 before the first).
pub async fn read_cursor(db: &impl ConnectionTrait, consumer: &str) -> Result<i64, DbErr> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT last_seq FROM event_cursors WHERE consumer = $1",
            vec![consumer.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<i64>("", "last_seq")?,
        None => 0,
    })
}

/// Moves `consumer`'s cursor forward to `seq` (never back).
pub async fn advance_cursor(
    db: &impl ConnectionTrait,
    consumer: &str,
    seq: i64,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        db.get_database_backend(),
        "INSERT INTO event_cursors (consumer, last_seq, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (consumer) DO UPDATE SET last_seq = excluded.last_seq, updated_at = excluded.updated_at \
         WHERE event_cursors.last_seq < excluded.last_seq",
        vec![consumer.into(), seq.into(), db_now(now).into()],
    ))
    .await?;
    Ok(())
}

/// Records an event `consumer` could not evaluate; it is skipped from now on.
pub async fn quarantine(
    db: &impl ConnectionTrait,
    consumer: &str,
    seq: i64,
    error: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let now = db_now(now);
    db.execute_raw(stmt(
        db.get_database_backend(),
        "INSERT INTO event_quarantine (id, consumer, event_seq, failures, last_error, created_at, updated_at) \
         VALUES ($1, $2, $3, 1, $4, $5, $5) \
         ON CONFLICT (consumer, event_seq) DO UPDATE SET failures = event_quarantine.failures + 1, \
         last_error = excluded.last_error, updated_at = excluded.updated_at",
        vec![Uuid::now_v7().into(), consumer.into(), seq.into(), error.into(), now.into()],
    ))
    .await?;
    metrics::counter!("opsloop_heartbeat_events_quarantined_total", "consumer" => consumer.to_owned())
        .increment(1);
    tracing::warn!(consumer, event_seq = seq, error, "event quarantined");
    Ok(())
}

/// An event row as the heartbeat sees it; `Err` names what is malformed.
pub fn to_view(row: &events::Model) -> Result<EventView, String> {
    let tags = match &row.tags {
        serde_json::Value::Array(items) => items
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| "tags must be strings".to_owned())
            })
            .collect::<Result<Vec<_>, _>>()?,
        serde_json::Value::Null => Vec::new(),
        _ => return Err("tags must be an array".into()),
    };
    Ok(EventView {
        seq: row.seq,
        id: row.id,
        kind: row.kind.clone(),
        source: row.source.clone(),
        tags,
        payload: row.payload.clone(),
        mission_id: row.mission_id,
        created_at: row.created_at,
    })
}

/// Events after `seq`, ascending, at most `limit`.
pub async fn events_after(
    db: &impl ConnectionTrait,
    seq: i64,
    limit: u64,
) -> Result<Vec<events::Model>, DbErr> {
    events::Entity::find()
        .from_raw_sql(stmt(
            db.get_database_backend(),
            &format!(
                "SELECT * FROM events WHERE seq > $1 ORDER BY seq LIMIT {}",
                limit.max(1)
            ),
            vec![seq.into()],
        ))
        .all(db)
        .await
}

/// Events created in `[since, until]`, ascending seq, at most `limit`
/// (the newest are kept when there are more).
pub async fn events_between(
    db: &impl ConnectionTrait,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<EventView>, DbErr> {
    let mut rows = events::Entity::find()
        .from_raw_sql(stmt(
            db.get_database_backend(),
            &format!(
                "SELECT * FROM events WHERE created_at >= $1 AND created_at <= $2 \
                 ORDER BY seq DESC LIMIT {}",
                limit.max(1)
            ),
            vec![db_now(since).into(), db_now(until).into()],
        ))
        .all(db)
        .await?;
    rows.reverse();
    Ok(rows.iter().filter_map(|r| to_view(r).ok()).collect())
}

/// `SELECT COUNT(*) AS n …` as a number.
pub async fn count(db: &impl ConnectionTrait, sql: &str, values: Vec<Value>) -> Result<i64, DbErr> {
    let row = db
        .query_one_raw(stmt(db.get_database_backend(), sql, values))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<Option<i64>>("", "n")?.unwrap_or(0),
        None => 0,
    })
}
