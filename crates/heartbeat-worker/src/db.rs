//! The heartbeat's own rows: write transactions, persisted cooldowns and
//! marks (`cooldowns`), the leader lease with its fencing token (`leases`),
//! per-consumer event cursors (`event_cursors`) with a retry set and
//! quarantine (`event_quarantine`: failed attempts, reason), reading events
//! as [`EventView`]s, and trigger window facts answered by the database. Same SQL on
//! PostgreSQL and SQLite (`$n` placeholders, `ON CONFLICT`, `RETURNING`).

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, EntityTrait, Value};
use uuid::Uuid;

use opsloop_core::store::entities::events;
use opsloop_core::workflow::db_now;

use crate::matching::{EventView, lookup};
use crate::rules::{WindowFact, WindowQuery};

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

/// The leader lease (`opsloop_core::lease`), under the names this crate
/// has always used.
pub use opsloop_core::lease::{
    LeaseGrant, acquire as acquire_lease, holder as lease_holder, release as release_lease,
};

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

/// Records a failed attempt of `consumer` at the event `seq`. Below
/// `max_failures` attempts the event stays in the consumer's retry set
/// ([`retry_set`]); at `max_failures` it is quarantined: the row (reason and
/// attempts) stays as the record and the event is never looked at again.
/// True when this attempt quarantined it.
pub async fn record_failure(
    db: &impl ConnectionTrait,
    consumer: &str,
    seq: i64,
    error: &str,
    max_failures: u32,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let now = db_now(now);
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "INSERT INTO event_quarantine (id, consumer, event_seq, failures, last_error, created_at, updated_at) \
             VALUES ($1, $2, $3, 1, $4, $5, $5) \
             ON CONFLICT (consumer, event_seq) DO UPDATE SET failures = event_quarantine.failures + 1, \
             last_error = excluded.last_error, updated_at = excluded.updated_at \
             RETURNING failures",
            vec![Uuid::now_v7().into(), consumer.into(), seq.into(), error.into(), now.into()],
        ))
        .await?;
    let failures = match row {
        Some(row) => row.try_get::<i32>("", "failures")?,
        None => 1,
    };
    let quarantined = i64::from(failures) >= i64::from(max_failures);
    if quarantined {
        metrics::counter!("opsloop_heartbeat_events_quarantined_total", "consumer" => consumer.to_owned())
            .increment(1);
        tracing::warn!(
            consumer,
            event_seq = seq,
            error,
            failures,
            "event quarantined"
        );
    } else {
        tracing::info!(
            consumer,
            event_seq = seq,
            error,
            failures,
            "event evaluation failed; will retry"
        );
    }
    Ok(quarantined)
}

/// Event seqs at or below the cursor `up_to` that `consumer` failed on
/// fewer than `max_failures` times: retried each tick until they pass or
/// are quarantined.
pub async fn retry_set(
    db: &impl ConnectionTrait,
    consumer: &str,
    up_to: i64,
    max_failures: u32,
    limit: u64,
) -> Result<Vec<i64>, DbErr> {
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            &format!(
                "SELECT event_seq FROM event_quarantine WHERE consumer = $1 AND failures < $2 \
                 AND event_seq <= $3 ORDER BY event_seq LIMIT {}",
                limit.max(1)
            ),
            vec![
                consumer.into(),
                i64::from(max_failures).into(),
                up_to.into(),
            ],
        ))
        .await?;
    rows.iter()
        .map(|r| r.try_get::<i64>("", "event_seq"))
        .collect()
}

/// Forgets a retried event that has now been evaluated.
pub async fn clear_failure(
    db: &impl ConnectionTrait,
    consumer: &str,
    seq: i64,
) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        db.get_database_backend(),
        "DELETE FROM event_quarantine WHERE consumer = $1 AND event_seq = $2",
        vec![consumer.into(), seq.into()],
    ))
    .await?;
    Ok(())
}

/// What one pass of a consumer over its events found.
#[derive(Debug, Clone, Default)]
pub struct Examined {
    /// Events of the retry set that now parse. Their retry record stays
    /// until the caller has acted on them ([`clear_failure`]) or records
    /// another failed attempt ([`record_failure`]).
    pub retried: Vec<EventView>,
    /// The new events after the cursor, in seq order; `None` for one whose
    /// evaluation failed (it went to the retry set or to quarantine).
    pub new: Vec<(i64, Option<EventView>)>,
    /// Failed attempts that left the event in the retry set.
    pub failed: usize,
    /// Events quarantined by this pass.
    pub quarantined: usize,
}

impl Examined {
    /// Every event that evaluated, retried ones first.
    pub fn views(&self) -> impl Iterator<Item = &EventView> {
        self.retried
            .iter()
            .chain(self.new.iter().filter_map(|(_, v)| v.as_ref()))
    }

    /// The seq the cursor may advance to: the last new event examined.
    pub fn last_seq(&self) -> Option<i64> {
        self.new.last().map(|(seq, _)| *seq)
    }
}

/// Reads `consumer`'s retry set and up to `batch` events after its cursor,
/// turning each into an [`EventView`]; one that does not parse is recorded
/// with [`record_failure`]. The cursor itself is not moved (the caller
/// advances it past every examined event once it has acted on them).
pub async fn examine(
    db: &impl ConnectionTrait,
    consumer: &str,
    batch: u64,
    max_failures: u32,
    now: DateTime<Utc>,
) -> Result<Examined, DbErr> {
    let cursor = read_cursor(db, consumer).await?;
    let mut out = Examined::default();
    for seq in retry_set(db, consumer, cursor, max_failures, batch).await? {
        let Some(row) = events::Entity::find_by_id(seq).one(db).await? else {
            clear_failure(db, consumer, seq).await?;
            continue;
        };
        match to_view(&row) {
            Ok(view) => out.retried.push(view),
            Err(reason) => {
                if record_failure(db, consumer, seq, &reason, max_failures, now).await? {
                    out.quarantined += 1;
                } else {
                    out.failed += 1;
                }
            }
        }
    }
    for row in events_after(db, cursor, batch).await? {
        match to_view(&row) {
            Ok(view) => out.new.push((row.seq, Some(view))),
            Err(reason) => {
                if record_failure(db, consumer, row.seq, &reason, max_failures, now).await? {
                    out.quarantined += 1;
                } else {
                    out.failed += 1;
                }
                out.new.push((row.seq, None));
            }
        }
    }
    Ok(out)
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

/// Most candidate rows read for a matcher with payload filters (those are
/// checked in Rust; everything else is counted by the database).
const PAYLOAD_CANDIDATE_LIMIT: u64 = 50_000;

/// A glob's SQL condition on `column`: equality when it has no wildcard
/// (index-friendly), else `GLOB` on SQLite (case-sensitive, `*`/`?` as
/// ours) or `LIKE` on PostgreSQL.
fn glob_condition(backend: DbBackend, column: &str, glob: &str, values: &mut Vec<Value>) -> String {
    if !glob.contains(['*', '?']) {
        values.push(glob.into());
        return format!("{column} = ${}", values.len());
    }
    let mut pattern = String::with_capacity(glob.len() + 4);
    if backend == DbBackend::Sqlite {
        for c in glob.chars() {
            match c {
                '[' => pattern.push_str("[[]"),
                c => pattern.push(c),
            }
        }
        values.push(pattern.into());
        format!("{column} GLOB ${}", values.len())
    } else {
        for c in glob.chars() {
            match c {
                '*' => pattern.push('%'),
                '?' => pattern.push('_'),
                '%' | '_' | '\\' => {
                    pattern.push('\\');
                    pattern.push(c);
                }
                c => pattern.push(c),
            }
        }
        values.push(pattern.into());
        format!("{column} LIKE ${} ESCAPE '\\'", values.len())
    }
}

/// The `WHERE` clause of a window query (all but payload filters).
fn window_where(
    backend: DbBackend,
    query: &WindowQuery,
    now: DateTime<Utc>,
) -> (String, Vec<Value>) {
    let mut values: Vec<Value> = vec![db_now(now - query.window).into(), db_now(now).into()];
    let mut sql = String::from("created_at >= $1 AND created_at <= $2");
    let matcher = &query.matcher;
    if let Some(kind) = &matcher.kind {
        let c = glob_condition(backend, "kind", kind, &mut values);
        sql.push_str(&format!(" AND {c}"));
    }
    if let Some(source) = &matcher.source {
        let c = glob_condition(backend, "source", source, &mut values);
        sql.push_str(&format!(" AND {c}"));
    }
    if !matcher.tags.is_empty() {
        if backend == DbBackend::Postgres {
            values.push(serde_json::json!(matcher.tags).into());
            sql.push_str(&format!(" AND tags @> ${}", values.len()));
        } else {
            for tag in &matcher.tags {
                values.push(tag.clone().into());
                sql.push_str(&format!(
                    " AND EXISTS (SELECT 1 FROM json_each(events.tags) WHERE json_each.value = ${})",
                    values.len()
                ));
            }
        }
    }
    (sql, values)
}

/// Answers one [`WindowQuery`] in the database: a `COUNT`/`MAX(seq)` (or a
/// `LIMIT 1` existence probe) over the `created_at` index range with the
/// kind, source and tag filters pushed down; only the newest matching row
/// is read. Matchers with payload filters read `(seq, payload)` of the
/// candidates and check the paths here.
pub async fn window_fact(
    db: &impl ConnectionTrait,
    query: &WindowQuery,
    now: DateTime<Utc>,
) -> Result<WindowFact, DbErr> {
    let backend = db.get_database_backend();
    let (filter, values) = window_where(backend, query, now);
    let (count, last_seq) = if query.matcher.payload.is_empty() {
        if query.exists_only {
            let row = db
                .query_one_raw(stmt(
                    backend,
                    &format!("SELECT seq FROM events WHERE {filter} LIMIT 1"),
                    values,
                ))
                .await?;
            return Ok(WindowFact {
                count: u64::from(row.is_some()),
                last: None,
            });
        }
        let row = db
            .query_one_raw(stmt(
                backend,
                &format!("SELECT COUNT(*) AS n, MAX(seq) AS last FROM events WHERE {filter}"),
                values,
            ))
            .await?;
        match row {
            Some(row) => (
                row.try_get::<i64>("", "n")?,
                row.try_get::<Option<i64>>("", "last")?,
            ),
            None => (0, None),
        }
    } else {
        let rows = db
            .query_all_raw(stmt(
                backend,
                &format!(
                    "SELECT seq, payload FROM events WHERE {filter} ORDER BY seq DESC LIMIT {PAYLOAD_CANDIDATE_LIMIT}"
                ),
                values,
            ))
            .await?;
        let (mut count, mut last) = (0i64, None);
        for row in rows {
            let payload: serde_json::Value = row.try_get("", "payload")?;
            let matches = query
                .matcher
                .payload
                .iter()
                .all(|(path, want)| lookup(&payload, path) == Some(want));
            if matches {
                count += 1;
                last = last.or(Some(row.try_get::<i64>("", "seq")?));
                if query.exists_only {
                    break;
                }
            }
        }
        if query.exists_only {
            return Ok(WindowFact {
                count: u64::from(count > 0),
                last: None,
            });
        }
        (count, last)
    };
    let last = match last_seq {
        Some(seq) => events::Entity::find_by_id(seq)
            .one(db)
            .await?
            .and_then(|row| to_view(&row).ok()),
        None => None,
    };
    Ok(WindowFact {
        count: u64::try_from(count).unwrap_or(0),
        last,
    })
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
