//! The one write of `probe_history`: a probe's (or a status-page
//! component's) result for one minute. A failed sample in a minute wins
//! over a passing one, and the slowest latency is kept, so several checks
//! or several api replicas in one minute leave one honest row.

use chrono::{DateTime, Duration, DurationRound, Utc};
use sea_orm::{ConnectionTrait, DbErr};

/// Records `ok` and `latency_ms` for `name` in `now`'s minute.
pub async fn record_minute(
    db: &impl ConnectionTrait,
    name: &str,
    now: DateTime<Utc>,
    ok: bool,
    latency_ms: i64,
) -> Result<(), DbErr> {
    let minute = now.duration_trunc(Duration::minutes(1)).unwrap_or(now);
    db.execute_raw(super::stmt(
        db.get_database_backend(),
        "INSERT INTO probe_history (probe, minute, ok, latency_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (probe, minute) DO UPDATE SET \
         ok = CASE WHEN probe_history.ok AND excluded.ok THEN excluded.ok ELSE $5 END, \
         latency_ms = CASE WHEN excluded.latency_ms > probe_history.latency_ms \
         THEN excluded.latency_ms ELSE probe_history.latency_ms END",
        vec![
            name.into(),
            minute.into(),
            ok.into(),
            latency_ms.into(),
            false.into(),
        ],
    ))
    .await?;
    Ok(())
}
