//! The operator's figures: the summary (one function for gRPC GetSummary and
//! `GET /api/ops/summary/daily`, so both show the same numbers) and the
//! ops-health figures.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use sea_orm::ConnectionTrait;
use serde::Serialize;

use super::policy::emergency_stop_state;
use super::{Result, db_now, load_policy, stmt};
use crate::domain::policy::EmergencyStop;
use crate::domain::status::{MissionStatus, ProposalStatus, StepStatus};

/// The window of a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SummaryPeriod {
    Daily,
    Weekly,
}

impl SummaryPeriod {
    pub fn span(self) -> Duration {
        match self {
            Self::Daily => Duration::hours(24),
            Self::Weekly => Duration::days(7),
        }
    }
}

/// Counts over a window; the HTTP JSON shape of `/api/ops/summary/daily`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryFigures {
    pub period: SummaryPeriod,
    pub since: DateTime<Utc>,
    pub proposals: BTreeMap<String, i64>,
    pub missions: BTreeMap<String, i64>,
    pub steps: BTreeMap<String, i64>,
    pub total_events: i64,
    pub generated_at: DateTime<Utc>,
}

async fn counts_by_status(
    db: &impl ConnectionTrait,
    table: &str,
    since: DateTime<Utc>,
    statuses: &[&str],
) -> Result<BTreeMap<String, i64>> {
    let mut counts: BTreeMap<String, i64> = statuses.iter().map(|s| ((*s).to_owned(), 0)).collect();
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            &format!(
                "SELECT status, COUNT(*) AS n FROM {table} WHERE created_at >= $1 GROUP BY status"
            ),
            vec![since.into()],
        ))
        .await?;
    for row in rows {
        let status: String = row.try_get("", "status")?;
        let n: i64 = row.try_get("", "n")?;
        counts.insert(status, n);
    }
    Ok(counts)
}

/// The integer column `n` of the one row `sql` returns (0 without a row).
pub(super) async fn scalar(
    db: &impl ConnectionTrait,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> Result<i64> {
    let row = db
        .query_one_raw(stmt(db.get_database_backend(), sql, values))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<Option<i64>>("", "n")?.unwrap_or(0),
        None => 0,
    })
}

/// The cost of the events written since `since`.
pub(super) async fn sum_cost(db: &impl ConnectionTrait, since: DateTime<Utc>) -> Result<f64> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT SUM(cost_usd) AS total FROM events WHERE created_at >= $1 AND cost_usd IS NOT NULL",
            vec![since.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<Option<f64>>("", "total")?.unwrap_or(0.0),
        None => 0.0,
    })
}

/// Objects created in the window, by status, and the events written in it.
pub async fn summary(
    db: &impl ConnectionTrait,
    period: SummaryPeriod,
    now: DateTime<Utc>,
) -> Result<SummaryFigures> {
    let now = db_now(now);
    let since = now - period.span();
    let names = |all: &[&'static str]| all.to_vec();
    let proposals = counts_by_status(
        db,
        "proposals",
        since,
        &names(
            &ProposalStatus::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
        ),
    )
    .await?;
    let missions = counts_by_status(
        db,
        "missions",
        since,
        &MissionStatus::ALL
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    )
    .await?;
    let steps = counts_by_status(
        db,
        "mission_steps",
        since,
        &StepStatus::ALL
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    )
    .await?;
    let total_events = scalar(
        db,
        "SELECT COUNT(*) AS n FROM events WHERE created_at >= $1",
        vec![since.into()],
    )
    .await?;
    Ok(SummaryFigures {
        period,
        since,
        proposals,
        missions,
        steps,
        total_events,
        generated_at: now,
    })
}

/// Every named lease (heartbeat leader, alerter deliveries, backup runs),
/// in name order: who leads, and until when.
pub async fn leases(
    db: &impl ConnectionTrait,
) -> Result<Vec<crate::store::entities::leases::Model>> {
    use crate::store::entities::leases;
    use sea_orm::{EntityTrait, QueryOrder};
    Ok(leases::Entity::find()
        .order_by_asc(leases::Column::Name)
        .all(db)
        .await?)
}

/// The ops-health figures.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthFigures {
    pub step_failures_last_window: i64,
    pub failure_threshold: i64,
    pub failure_spike: bool,
    pub pending_proposals: i64,
    pub queued_steps: i64,
    pub running_steps: i64,
    pub expired_leases: i64,
    pub emergency_stop: EmergencyStop,
    pub emergency_stop_changed_at: DateTime<Utc>,
    pub cost_today_usd: f64,
    pub cost_month_usd: f64,
    /// When the heartbeat last finished a tick.
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Until when the heartbeat holds back a new failure-spike alert (its
    /// cooldown rows named `ops_health…`).
    pub alert_cooldown_until: Option<DateTime<Utc>>,
    /// Step kinds paused for claiming, and by what (e.g. a probe that is down).
    pub paused_kinds: Vec<super::pauses::KindPause>,
    pub generated_at: DateTime<Utc>,
}

async fn instant(
    db: &impl ConnectionTrait,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> Result<Option<DateTime<Utc>>> {
    let row = db
        .query_one_raw(stmt(db.get_database_backend(), sql, values))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<Option<DateTime<Utc>>>("", "t")?,
        None => None,
    })
}

/// Failed attempts in the `ops_health` window (failures and retries),
/// backlog and lease figures, the stop, and today's / this month's cost in
/// the step gates' time zone.
pub async fn health(db: &impl ConnectionTrait, now: DateTime<Utc>) -> Result<HealthFigures> {
    let now = db_now(now);
    let policy = load_policy(db).await?;
    let window = Duration::seconds(i64::from(policy.ops_health.window_seconds));
    let failures = scalar(
        db,
        "SELECT COUNT(*) AS n FROM events WHERE kind IN ('step.failed', 'step.retrying', 'step.lease_expired') \
         AND created_at >= $1",
        vec![(now - window).into()],
    )
    .await?;
    let pending = scalar(
        db,
        "SELECT COUNT(*) AS n FROM proposals WHERE status = 'pending'",
        vec![],
    )
    .await?;
    let queued = scalar(
        db,
        "SELECT COUNT(*) AS n FROM mission_steps WHERE status = 'queued'",
        vec![],
    )
    .await?;
    let running = scalar(
        db,
        "SELECT COUNT(*) AS n FROM mission_steps WHERE status = 'running'",
        vec![],
    )
    .await?;
    let expired = scalar(
        db,
        "SELECT COUNT(*) AS n FROM mission_steps WHERE status = 'running' AND lease_expires_at < $1",
        vec![now.into()],
    )
    .await?;
    let tz = policy.step_gates.tz();
    let local = now.with_timezone(&tz);
    let day_start = tz
        .with_ymd_and_hms(local.year(), local.month(), local.day(), 0, 0, 0)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now - Duration::hours(24));
    let month_start = tz
        .with_ymd_and_hms(local.year(), local.month(), 1, 0, 0, 0)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now - Duration::days(31));
    let (stop, stop_changed_at) = emergency_stop_state(db).await?;
    let threshold = i64::from(policy.ops_health.failure_threshold);
    Ok(HealthFigures {
        step_failures_last_window: failures,
        failure_threshold: threshold,
        failure_spike: failures >= threshold,
        pending_proposals: pending,
        queued_steps: queued,
        running_steps: running,
        expired_leases: expired,
        emergency_stop: stop,
        emergency_stop_changed_at: stop_changed_at,
        cost_today_usd: sum_cost(db, day_start).await?,
        cost_month_usd: sum_cost(db, month_start).await?,
        last_heartbeat_at: instant(
            db,
            "SELECT finished_at AS t FROM heartbeat_runs WHERE finished_at IS NOT NULL \
             ORDER BY finished_at DESC LIMIT 1",
            vec![],
        )
        .await?,
        alert_cooldown_until: instant(
            db,
            "SELECT until AS t FROM cooldowns WHERE name LIKE 'ops_health%' AND until > $1 \
             ORDER BY until DESC LIMIT 1",
            vec![now.into()],
        )
        .await?,
        paused_kinds: super::pauses::paused_kinds(db).await?,
        generated_at: now,
    })
}
