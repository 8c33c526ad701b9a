//! The daily roll-up of the per-minute `probe_history` into `probe_daily`
//! (per probe and UTC day: checks, checks that passed, average and maximum
//! latency) and the retention of both, run hourly by the heartbeat leader.
//! Every finished day not rolled up yet is rolled up (the last rolled day
//! again, so late rows count); raw history is purged after
//! `heartbeat.probe_history_days` only once its days are rolled up, and
//! roll-ups after [`DAILY_RETENTION_DAYS`]. Rows of every name are rolled
//! up: the probes' and the components the api's status page samples
//! (`opsloop:*`). Also the weekly report's availability per component
//! ([`availability_slis`]).

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, DurationRound, Utc};
use opsloop_core::store::stmt;
use opsloop_core::workflow::db_now;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::heartbeat::Heartbeat;

/// Days of daily roll-ups kept (the status page shows 90).
pub const DAILY_RETENTION_DAYS: i64 = 400;

/// How often the leader rolls up and purges.
const EVERY: Duration = Duration::hours(1);

/// Most days one run rolls up (a first run over a long history catches up
/// over several runs).
const MAX_DAYS_PER_RUN: i64 = 120;

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RollupReport {
    /// Days rolled up (or rolled up again).
    pub days: u32,
    /// `probe_daily` rows written.
    pub rows: u64,
    /// `probe_history` rows purged.
    pub raw_purged: u64,
    /// `probe_daily` rows purged.
    pub daily_purged: u64,
}

/// Midnight UTC of `at`'s day.
pub fn day_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(Duration::days(1)).unwrap_or(at)
}

async fn first_time(db: &DatabaseConnection, sql: &str) -> Result<Option<DateTime<Utc>>, DbErr> {
    let row = db
        .query_one_raw(stmt(db.get_database_backend(), sql, vec![]))
        .await?;
    match row {
        Some(row) => Ok(Some(row.try_get_by_index::<DateTime<Utc>>(0)?)),
        None => Ok(None),
    }
}

/// Rolls up every finished day since the last roll-up (or since the oldest
/// raw row) up to `now`'s day, then applies the retention: raw rows older
/// than `raw_days`, daily rows older than [`DAILY_RETENTION_DAYS`].
pub async fn roll_up(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
    raw_days: u32,
) -> Result<RollupReport, DbErr> {
    let backend = db.get_database_backend();
    let today = day_of(now);
    let last_rolled =
        first_time(db, "SELECT day FROM probe_daily ORDER BY day DESC LIMIT 1").await?;
    let start = match last_rolled {
        Some(day) => Some(day),
        None => first_time(
            db,
            "SELECT minute FROM probe_history ORDER BY minute LIMIT 1",
        )
        .await?
        .map(day_of),
    };
    let mut report = RollupReport::default();
    if let Some(start) = start {
        let start = start.max(today - Duration::days(MAX_DAYS_PER_RUN));
        let mut day = start;
        while day < today {
            let next = day + Duration::days(1);
            report.rows += db
                .execute_raw(stmt(
                    backend,
                    "INSERT INTO probe_daily (probe, day, checks, up_checks, avg_latency_ms, \
                     max_latency_ms, rolled_up_at) \
                     SELECT probe, $1, COUNT(*), SUM(CASE WHEN ok THEN 1 ELSE 0 END), \
                     CAST(AVG(latency_ms) AS DOUBLE PRECISION), MAX(latency_ms), $3 \
                     FROM probe_history WHERE minute >= $1 AND minute < $2 GROUP BY probe \
                     ON CONFLICT (day, probe) DO UPDATE SET checks = excluded.checks, \
                     up_checks = excluded.up_checks, avg_latency_ms = excluded.avg_latency_ms, \
                     max_latency_ms = excluded.max_latency_ms, rolled_up_at = excluded.rolled_up_at",
                    vec![day.into(), next.into(), db_now(now).into()],
                ))
                .await?
                .rows_affected();
            report.days += 1;
            day = next;
        }
    }
    // Every day before today is rolled up now (an error above returns
    // before this), so purging before `now - raw_days` loses nothing.
    let raw_cutoff = now - Duration::days(i64::from(raw_days.max(1)));
    report.raw_purged = purge_raw_history(db, raw_cutoff).await?;
    report.daily_purged = db
        .execute_raw(stmt(
            backend,
            "DELETE FROM probe_daily WHERE day < $1",
            vec![(today - Duration::days(DAILY_RETENTION_DAYS)).into()],
        ))
        .await?
        .rows_affected();
    Ok(report)
}

/// While this instance leads: rolls up and purges once an hour (at once
/// after taking the lead). Until `shutdown`.
pub async fn run_loop(hb: Heartbeat, shutdown: CancellationToken) -> anyhow::Result<()> {
    let raw_days = hb.settings().probe_history_days;
    let mut last_run: Option<DateTime<Utc>> = None;
    loop {
        let now = Utc::now();
        match hb.is_leader(now).await {
            Ok(true) if last_run.is_none_or(|at| now - at >= EVERY) => {
                match roll_up(hb.db(), now, raw_days).await {
                    Ok(report) => {
                        last_run = Some(now);
                        tracing::info!(
                            days = report.days,
                            rows = report.rows,
                            raw_purged = report.raw_purged,
                            daily_purged = report.daily_purged,
                            "probe history rolled up"
                        );
                    }
                    Err(error) => tracing::warn!(%error, "cannot roll up probe history"),
                }
            }
            Ok(true) => {}
            Ok(false) => last_run = None,
            Err(error) => tracing::warn!(%error, "cannot read the leader lease for the roll-up"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(StdDuration::from_secs(60)) => {}
        }
    }
}

/// The weekly report's availability per component against the objective
/// (99.9 %): one SLI per probe and per component the status page samples
/// (`opsloop:<component>`), counting the checks in `[start, end)` that
/// passed, from the raw history (kept longer than a week).
pub async fn availability_slis(
    db: &impl ConnectionTrait,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Vec<crate::report::SliInput>, DbErr> {
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            "SELECT probe, COUNT(*) AS checks, SUM(CASE WHEN ok THEN 1 ELSE 0 END) AS up_checks \
             FROM probe_history WHERE minute >= $1 AND minute < $2 GROUP BY probe ORDER BY probe",
            vec![start.into(), end.into()],
        ))
        .await?;
    rows.into_iter()
        .map(|row| {
            let probe: String = row.try_get("", "probe")?;
            let description = match probe.strip_prefix("opsloop:") {
                Some(component) => {
                    format!("{component}: status page checks that found it up (one per minute)")
                }
                None => format!("probe {probe}: checks that passed (one per minute)"),
            };
            Ok(crate::report::SliInput {
                name: format!("availability {probe}"),
                description,
                good: row.try_get("", "up_checks")?,
                total: row.try_get("", "checks")?,
                latencies_ms: None,
            })
        })
        .collect()
}

/// Deletes raw per-minute history before `cutoff`; the rows deleted. The
/// one retention delete of `probe_history`: the hourly roll-up calls it
/// after rolling every finished day up, so nothing unrolled is lost.
pub async fn purge_raw_history(
    db: &impl sea_orm::ConnectionTrait,
    cutoff: DateTime<Utc>,
) -> Result<u64, sea_orm::DbErr> {
    Ok(db
        .execute_raw(stmt(
            db.get_database_backend(),
            "DELETE FROM probe_history WHERE minute < $1",
            vec![db_now(cutoff).into()],
        ))
        .await?
        .rows_affected())
}
