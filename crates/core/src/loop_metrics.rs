//! Loop-state gauges on the api's `/metrics`, sampled when Prometheus
//! scrapes (a [`ScrapeSampler`]): the proposals waiting for a decision, the
//! step backlog and its oldest claimable step, expired leases, consecutive
//! step failures, the emergency stop, today's and this month's cost by kind
//! against the `cost_budget` policy, and each capped step kind's use of its
//! daily quota.
//!
//! The cost of a scrape is bounded three ways: every count reads an index
//! and stops at [`COUNT_CAP`] rows (a gauge at the cap means "at least");
//! the queries run at most every [`LoopSampler::min_interval`] (other
//! scrapes reuse the values) and the cost sums, which range over the month's
//! costed events by `created_at`, at most every
//! [`LoopSampler::cost_interval`]; and on PostgreSQL every statement runs
//! under a `statement_timeout` (the scrape itself waits at most
//! [`crate::telemetry::SCRAPE_SAMPLE_BUDGET`]). A failed sample keeps the
//! previous values and counts `opsloop_loop_state_sample_failures_total`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, TimeZone, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, TransactionTrait};

use crate::domain::policy::{CostBudget, PolicyKey, PolicyValue};
use crate::store::stmt;
use crate::telemetry::ScrapeSampler;
use crate::workflow::{self, Result, WorkflowError};

/// The most rows any one count reads.
pub const COUNT_CAP: i64 = 100_000;

/// Distinct `kind` label values of the cost gauges; further kinds are
/// summed under `other`.
pub const MAX_COST_KINDS: usize = 20;

pub const PROPOSALS_PENDING: &str = "opsloop_proposals_pending";
pub const STEPS_QUEUED: &str = "opsloop_steps_queued";
pub const STEPS_RUNNING: &str = "opsloop_steps_running";
pub const LEASES_EXPIRED: &str = "opsloop_step_leases_expired";
pub const OLDEST_QUEUED_AGE: &str = "opsloop_steps_oldest_queued_age_seconds";
pub const CONSECUTIVE_FAILURES: &str = "opsloop_steps_consecutive_failures";
pub const EMERGENCY_STOP: &str = "opsloop_emergency_stop_engaged";
pub const COST: &str = "opsloop_cost_usd";
pub const COST_BUDGET: &str = "opsloop_cost_budget_usd";
pub const QUOTA_USED: &str = "opsloop_step_quota_used";
pub const QUOTA_LIMIT: &str = "opsloop_step_quota_limit";
pub const SAMPLE_FAILURES: &str = "opsloop_loop_state_sample_failures_total";

/// The loop's state at one instant.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoopState {
    pub pending_proposals: i64,
    pub queued_steps: i64,
    pub running_steps: i64,
    pub expired_leases: i64,
    /// Age of the oldest queued step whose backoff has passed (0 when none):
    /// the processing delay.
    pub oldest_queued_age_seconds: f64,
    /// Steps failed terminally since the last step that succeeded.
    pub consecutive_failures: i64,
    pub emergency_stop: bool,
    /// Per kind quota: `(kind, used today, daily cap)`.
    pub quotas: Vec<(String, i64, i64)>,
}

/// Cost since the start of the day and of the month (the `cost_budget`
/// policy's time zone), by event kind prefix, and the budget.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CostState {
    pub today: BTreeMap<String, f64>,
    pub month: BTreeMap<String, f64>,
    pub daily_budget: f64,
    pub monthly_budget: f64,
}

async fn count(
    db: &impl ConnectionTrait,
    filter: &str,
    values: Vec<sea_orm::Value>,
) -> Result<i64> {
    let sql = format!(
        "SELECT COUNT(*) AS n FROM (SELECT 1 AS one FROM {filter} LIMIT {COUNT_CAP}) AS capped"
    );
    let row = db
        .query_one_raw(stmt(db.get_database_backend(), &sql, values))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<Option<i64>>("", "n")?.unwrap_or(0),
        None => 0,
    })
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

/// Reads the loop's state: every statement an indexed, capped read.
pub async fn read_state(db: &impl ConnectionTrait, now: DateTime<Utc>) -> Result<LoopState> {
    let now = workflow::db_now(now);
    let policy = workflow::load_policy(db).await?;
    let pending = count(db, "proposals WHERE status = 'pending'", vec![]).await?;
    let queued = count(db, "mission_steps WHERE status = 'queued'", vec![]).await?;
    let running = count(db, "mission_steps WHERE status = 'running'", vec![]).await?;
    let expired = count(
        db,
        "mission_steps WHERE status = 'running' AND lease_expires_at < $1",
        vec![now.into()],
    )
    .await?;
    let oldest = instant(
        db,
        "SELECT MIN(created_at) AS t FROM mission_steps WHERE status = 'queued' \
         AND (next_attempt_at IS NULL OR next_attempt_at <= $1)",
        vec![now.into()],
    )
    .await?;
    let last_success = instant(
        db,
        "SELECT MAX(finished_at) AS t FROM mission_steps WHERE status = 'succeeded'",
        vec![],
    )
    .await?;
    let consecutive_failures = match last_success {
        Some(t) => {
            count(
                db,
                "mission_steps WHERE status = 'failed' AND finished_at > $1",
                vec![t.into()],
            )
            .await?
        }
        None => {
            count(
                db,
                "mission_steps WHERE status = 'failed' AND finished_at IS NOT NULL",
                vec![],
            )
            .await?
        }
    };
    let day = crate::domain::gate::day_key(now, &policy.step_gates);
    let mut quotas = Vec::new();
    for (kind, gate) in &policy.step_gates.kinds {
        let Some(cap) = gate.daily_cap else { continue };
        let row = db
            .query_one_raw(stmt(
                db.get_database_backend(),
                "SELECT count FROM daily_step_counts WHERE kind = $1 AND day = $2",
                vec![kind.as_str().into(), day.clone().into()],
            ))
            .await?;
        let used = match row {
            Some(row) => row.try_get::<i64>("", "count")?,
            None => 0,
        };
        quotas.push((kind.as_str().to_owned(), used, i64::from(cap)));
    }
    Ok(LoopState {
        pending_proposals: pending,
        queued_steps: queued,
        running_steps: running,
        expired_leases: expired,
        oldest_queued_age_seconds: oldest
            .map(|t| ((now - t).num_milliseconds() as f64 / 1000.0).max(0.0))
            .unwrap_or(0.0),
        consecutive_failures,
        emergency_stop: policy.emergency_stop.engaged,
        quotas,
    })
}

/// The `cost_budget` policy, when it is set and valid.
async fn cost_budget(db: &impl ConnectionTrait) -> Result<Option<CostBudget>> {
    let row = match workflow::get_policy(db, "cost_budget").await {
        Ok(row) => row,
        Err(WorkflowError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(
        match PolicyValue::parse(&PolicyKey::CostBudget, &row.value) {
            Ok(PolicyValue::CostBudget(budget)) => Some(budget),
            _ => None,
        },
    )
}

/// The kind label of an event kind: its prefix (`llm.call` → `llm`).
fn kind_prefix(kind: &str) -> &str {
    kind.split('.').next().unwrap_or(kind)
}

/// Folds per-kind sums into at most [`MAX_COST_KINDS`] labels (the largest
/// kept, the rest under `other`).
fn bounded(mut sums: Vec<(String, f64)>) -> BTreeMap<String, f64> {
    sums.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut out = BTreeMap::new();
    for (i, (kind, usd)) in sums.into_iter().enumerate() {
        let key = if i < MAX_COST_KINDS - 1 {
            kind
        } else {
            "other".to_owned()
        };
        *out.entry(key).or_insert(0.0) += usd;
    }
    out
}

async fn cost_since(
    db: &impl ConnectionTrait,
    since: DateTime<Utc>,
) -> Result<BTreeMap<String, f64>> {
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            "SELECT kind, SUM(cost_usd) AS total FROM events \
             WHERE created_at >= $1 AND cost_usd IS NOT NULL GROUP BY kind",
            vec![since.into()],
        ))
        .await?;
    let mut by_prefix: BTreeMap<String, f64> = BTreeMap::new();
    for row in rows {
        let kind: String = row.try_get("", "kind")?;
        let total: Option<f64> = row.try_get("", "total")?;
        *by_prefix
            .entry(kind_prefix(&kind).to_owned())
            .or_insert(0.0) += total.unwrap_or(0.0);
    }
    Ok(bounded(by_prefix.into_iter().collect()))
}

/// Today's and this month's cost (in the budget's time zone, UTC without a
/// budget) and the budget.
pub async fn read_cost(db: &impl ConnectionTrait, now: DateTime<Utc>) -> Result<CostState> {
    let now = workflow::db_now(now);
    let budget = cost_budget(db).await?;
    let tz: chrono_tz::Tz = budget
        .as_ref()
        .and_then(|b| b.timezone.parse().ok())
        .unwrap_or(chrono_tz::UTC);
    let local = now.with_timezone(&tz);
    let day_start = tz
        .with_ymd_and_hms(local.year(), local.month(), local.day(), 0, 0, 0)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now - chrono::Duration::hours(24));
    let month_start = tz
        .with_ymd_and_hms(local.year(), local.month(), 1, 0, 0, 0)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now - chrono::Duration::days(31));
    Ok(CostState {
        today: cost_since(db, day_start).await?,
        month: cost_since(db, month_start).await?,
        daily_budget: budget.as_ref().map(|b| b.daily_usd).unwrap_or(0.0),
        monthly_budget: budget.as_ref().map(|b| b.monthly_usd).unwrap_or(0.0),
    })
}

/// Sets the loop-state gauges.
pub fn publish_state(state: &LoopState) {
    metrics::gauge!(PROPOSALS_PENDING).set(state.pending_proposals as f64);
    metrics::gauge!(STEPS_QUEUED).set(state.queued_steps as f64);
    metrics::gauge!(STEPS_RUNNING).set(state.running_steps as f64);
    metrics::gauge!(LEASES_EXPIRED).set(state.expired_leases as f64);
    metrics::gauge!(OLDEST_QUEUED_AGE).set(state.oldest_queued_age_seconds);
    metrics::gauge!(CONSECUTIVE_FAILURES).set(state.consecutive_failures as f64);
    metrics::gauge!(EMERGENCY_STOP).set(if state.emergency_stop { 1.0 } else { 0.0 });
    for (kind, used, cap) in &state.quotas {
        metrics::gauge!(QUOTA_USED, "kind" => kind.clone()).set(*used as f64);
        metrics::gauge!(QUOTA_LIMIT, "kind" => kind.clone()).set(*cap as f64);
    }
}

/// Sets the cost gauges; kinds published before and absent now drop to 0.
fn publish_cost(cost: &CostState, published: &mut BTreeSet<String>) {
    let kinds: BTreeSet<String> = cost
        .today
        .keys()
        .chain(cost.month.keys())
        .cloned()
        .collect();
    for kind in kinds.union(published) {
        for (period, sums) in [("day", &cost.today), ("month", &cost.month)] {
            let usd = sums.get(kind).copied().unwrap_or(0.0);
            metrics::gauge!(COST, "period" => period, "kind" => kind.clone()).set(usd);
        }
    }
    published.extend(kinds);
    metrics::gauge!(COST_BUDGET, "period" => "day").set(cost.daily_budget);
    metrics::gauge!(COST_BUDGET, "period" => "month").set(cost.monthly_budget);
}

/// The api's sampler: [`read_state`] and [`read_cost`] on its database.
pub struct LoopSampler {
    db: DatabaseConnection,
    clock: crate::clock::SharedClock,
    /// Least time between two samples of the loop state.
    pub min_interval: Duration,
    /// Least time between two samples of the cost sums.
    pub cost_interval: Duration,
    last: tokio::sync::Mutex<Progress>,
    published_kinds: Mutex<BTreeSet<String>>,
}

#[derive(Default)]
struct Progress {
    state_at: Option<Instant>,
    cost_at: Option<Instant>,
}

impl LoopSampler {
    pub fn new(db: DatabaseConnection, clock: crate::clock::SharedClock) -> Self {
        Self {
            db,
            clock,
            min_interval: Duration::from_secs(10),
            cost_interval: Duration::from_secs(60),
            last: tokio::sync::Mutex::new(Progress::default()),
            published_kinds: Mutex::new(BTreeSet::new()),
        }
    }

    /// With other sampling intervals (tests use zero).
    pub fn with_intervals(mut self, state: Duration, cost: Duration) -> Self {
        self.min_interval = state;
        self.cost_interval = cost;
        self
    }

    /// Samples now when the intervals allow; `Err` when a query failed (the
    /// previous values stay).
    pub async fn sample_now(&self) -> Result<()> {
        // One sample at a time: concurrent scrapes wait for it and then
        // find it fresh.
        let mut last = self.last.lock().await;
        let due = |at: Option<Instant>, every: Duration| at.is_none_or(|t| t.elapsed() >= every);
        let state_due = due(last.state_at, self.min_interval);
        let cost_due = due(last.cost_at, self.cost_interval);
        if !state_due && !cost_due {
            return Ok(());
        }
        let now = self.clock.now();
        let tx = self.db.begin().await?;
        if tx.get_database_backend() == DbBackend::Postgres {
            let ms = crate::telemetry::SCRAPE_SAMPLE_BUDGET.as_millis();
            tx.execute_unprepared(&format!("SET LOCAL statement_timeout = {ms}"))
                .await?;
        }
        let state = if state_due {
            Some(read_state(&tx, now).await?)
        } else {
            None
        };
        let cost = if cost_due {
            Some(read_cost(&tx, now).await?)
        } else {
            None
        };
        tx.commit().await?;
        if let Some(state) = state {
            publish_state(&state);
            last.state_at = Some(Instant::now());
        }
        if let Some(cost) = cost {
            if let Ok(mut kinds) = self.published_kinds.lock() {
                publish_cost(&cost, &mut kinds);
            }
            last.cost_at = Some(Instant::now());
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ScrapeSampler for LoopSampler {
    async fn sample(&self) {
        if let Err(error) = self.sample_now().await {
            metrics::counter!(SAMPLE_FAILURES).increment(1);
            tracing::warn!(%error, "loop-state gauges not sampled; the previous values stay");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_kinds_are_bounded() {
        let sums: Vec<(String, f64)> = (0..30)
            .map(|i| (format!("k{i:02}"), f64::from(i)))
            .collect();
        let out = bounded(sums);
        assert_eq!(out.len(), MAX_COST_KINDS);
        // The 19 largest keep their names; the 11 smallest (0..=10) are summed.
        assert_eq!(out.get("k29"), Some(&29.0));
        assert_eq!(
            out.get("other"),
            Some(&(0..=10).map(f64::from).sum::<f64>())
        );
        assert!(!out.contains_key("k10"));
        assert_eq!(kind_prefix("llm.call"), "llm");
        assert_eq!(kind_prefix("deploy"), "deploy");
    }
}
