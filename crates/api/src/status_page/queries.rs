//! The status page's reads (probe state, daily roll-ups and raw history,
//! incidents with their log) and its one write: the per-minute samples of
//! its own components into `probe_history`, under `opsloop:<component>`
//! names no probe can take (probe names have no `:`). Raw statements with
//! `$n` placeholders, the same on PostgreSQL and SQLite.

use std::collections::HashMap;

use chrono::{DateTime, Duration, DurationRound, NaiveDate, Utc};
use opsloop_core::store::stmt;
use opsloop_core::workflow::db_now;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Value};
use uuid::Uuid;

use super::model::{DAYS, Incident, IncidentUpdate, RECENT_INCIDENT_DAYS, public_update};

/// The history name of a component the api samples itself.
pub fn sample_name(component: &str) -> String {
    format!("opsloop:{component}")
}

/// Midnight UTC of `at`'s day.
pub fn day_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(Duration::days(1)).unwrap_or(at)
}

/// One row of `probe_state`.
#[derive(Debug, Clone)]
pub struct ProbeRow {
    pub name: String,
    pub status: String,
    pub since: DateTime<Utc>,
    pub last_error: Option<String>,
}

pub async fn probe_states(db: &DatabaseConnection) -> Result<Vec<ProbeRow>, DbErr> {
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            "SELECT name, status, since, last_error FROM probe_state ORDER BY name",
            vec![],
        ))
        .await?;
    rows.into_iter()
        .map(|row| {
            Ok(ProbeRow {
                name: row.try_get("", "name")?,
                status: row.try_get("", "status")?,
                since: row.try_get("", "since")?,
                last_error: row.try_get("", "last_error")?,
            })
        })
        .collect()
}

/// Records one sample per component for `now`'s minute (a failed sample in
/// a minute wins over a passing one, as for probes).
pub async fn record_samples(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    samples: &[(String, bool, i64)],
) -> Result<(), DbErr> {
    for (name, ok, latency_ms) in samples {
        opsloop_core::store::probe_history::record_minute(db, name, now, *ok, *latency_ms).await?;
    }
    Ok(())
}

/// `(day, checks, up_checks)` per history name for the [`DAYS`] days
/// ending with `now`'s: from `probe_daily` where rolled up, from the raw
/// history for the days after the last roll-up (today, and more when the
/// heartbeat leader has not rolled up lately).
pub async fn day_counts(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
) -> Result<HashMap<String, Vec<(NaiveDate, i64, i64)>>, DbErr> {
    let backend = db.get_database_backend();
    let today = day_of(now);
    let from = today - Duration::days(DAYS as i64 - 1);
    let mut out: HashMap<String, Vec<(NaiveDate, i64, i64)>> = HashMap::new();
    let rows = db
        .query_all_raw(stmt(
            backend,
            "SELECT probe, day, checks, up_checks FROM probe_daily WHERE day >= $1",
            vec![from.into()],
        ))
        .await?;
    let mut last_rolled: Option<DateTime<Utc>> = None;
    for row in rows {
        let day: DateTime<Utc> = row.try_get("", "day")?;
        last_rolled = last_rolled.max(Some(day));
        out.entry(row.try_get("", "probe")?).or_default().push((
            day.date_naive(),
            row.try_get("", "checks")?,
            row.try_get("", "up_checks")?,
        ));
    }
    let oldest_raw = db
        .query_one_raw(stmt(
            backend,
            "SELECT minute FROM probe_history WHERE minute >= $1 ORDER BY minute LIMIT 1",
            vec![from.into()],
        ))
        .await?
        .map(|row| row.try_get_by_index::<DateTime<Utc>>(0))
        .transpose()?;
    let Some(oldest_raw) = oldest_raw else {
        return Ok(out);
    };
    let mut day = match last_rolled {
        Some(last) => last + Duration::days(1),
        None => day_of(oldest_raw),
    }
    .max(day_of(oldest_raw));
    while day <= today {
        let next = day + Duration::days(1);
        for (name, checks, up) in counts_between(db, day, next).await? {
            out.entry(name)
                .or_default()
                .push((day.date_naive(), checks, up));
        }
        day = next;
    }
    Ok(out)
}

/// `(name, checks, up_checks)` of the raw history in `[from, to)`.
async fn counts_between(
    db: &DatabaseConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(String, i64, i64)>, DbErr> {
    db.query_all_raw(stmt(
        db.get_database_backend(),
        "SELECT probe, COUNT(*) AS checks, SUM(CASE WHEN ok THEN 1 ELSE 0 END) AS up_checks \
         FROM probe_history WHERE minute >= $1 AND minute < $2 GROUP BY probe",
        vec![from.into(), to.into()],
    ))
    .await?
    .into_iter()
    .map(|row| {
        Ok((
            row.try_get("", "probe")?,
            row.try_get("", "checks")?,
            row.try_get("", "up_checks")?,
        ))
    })
    .collect()
}

/// `(checks, up_checks)` per history name over the 24 hours before `now`.
pub async fn last_24h(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
) -> Result<HashMap<String, (i64, i64)>, DbErr> {
    Ok(
        counts_between(db, now - Duration::hours(24), now + Duration::minutes(1))
            .await?
            .into_iter()
            .map(|(name, checks, up)| (name, (checks, up)))
            .collect(),
    )
}

/// Most incidents listed.
const MAX_INCIDENTS: u64 = 50;
/// Most updates listed per incident.
const MAX_UPDATES: u64 = 20;

/// Open incidents and those resolved in the last
/// [`RECENT_INCIDENT_DAYS`] days, newest first, with their public updates.
pub async fn incidents(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
) -> Result<Vec<Incident>, DbErr> {
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(stmt(
            backend,
            "SELECT id, title, level, state, opened_at, updated_at, resolved_at FROM incidents \
             WHERE state <> 'resolved' OR resolved_at >= $1 ORDER BY opened_at DESC LIMIT $2",
            vec![
                db_now(now - Duration::days(RECENT_INCIDENT_DAYS)).into(),
                Value::from(MAX_INCIDENTS as i64),
            ],
        ))
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: Uuid = row.try_get("", "id")?;
        let log = db
            .query_all_raw(stmt(
                backend,
                "SELECT at, kind, detail FROM incident_log WHERE incident_id = $1 \
                 ORDER BY id DESC LIMIT $2",
                vec![id.into(), Value::from(MAX_UPDATES as i64)],
            ))
            .await?;
        let mut updates = Vec::new();
        for entry in log {
            let kind: String = entry.try_get("", "kind")?;
            let detail: serde_json::Value = entry.try_get("", "detail")?;
            if let Some(text) = public_update(&kind, &detail) {
                updates.push(IncidentUpdate {
                    at: entry.try_get("", "at")?,
                    kind,
                    text,
                });
            }
        }
        out.push(Incident {
            id,
            title: row.try_get("", "title")?,
            level: row.try_get("", "level")?,
            state: row.try_get("", "state")?,
            opened_at: row.try_get("", "opened_at")?,
            updated_at: row.try_get("", "updated_at")?,
            resolved_at: row.try_get("", "resolved_at")?,
            updates,
        });
    }
    Ok(out)
}
