//! The database side of rate governance: the shared token buckets in
//! `resource_rates` (one row per resource, created at the policy's
//! initial rate and clamped when the policy's limits change), the usage
//! workers report aggregated per resource, window and kind in
//! `resource_usage` (with the cost the `pricing` policy gives it), and the
//! reads and writes of the heartbeat's AIMD controller.
//!
//! The claim takes tokens inside its one statement (see
//! `missions::claim_statement`); everything here is off the hot path.

use chrono::{DateTime, Duration, TimeZone, Utc};
use sea_orm::{ConnectionTrait, DbBackend};

use super::{Result, db_now, stmt};
use crate::domain::governance::{Pricing, ResourceLimits, ResourceUsage, Resources, WindowStats};

/// A step the claim did not hand out because a resource it calls had no
/// token: which resource, and when a token is due.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub resource: String,
    pub retry_after: std::time::Duration,
}

impl RateLimit {
    /// A limit on `resource` lifting after `seconds` (at least 5 ms, at
    /// most 10 s, so a client neither spins nor sleeps through a refill).
    pub fn after_seconds(resource: impl Into<String>, seconds: f64) -> Self {
        let seconds = if seconds.is_finite() { seconds } else { 1.0 };
        Self {
            resource: resource.into(),
            retry_after: std::time::Duration::from_secs_f64(seconds.clamp(0.005, 10.0)),
        }
    }
}

/// One row of `resource_rates`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRate {
    pub resource: String,
    pub rate: f64,
    pub tokens: f64,
    pub refilled_at: DateTime<Utc>,
    /// End of the last controller window evaluated.
    pub evaluated_until: Option<DateTime<Utc>>,
    /// When a guard last tripped (pause or stop) for this resource.
    pub tripped_at: Option<DateTime<Utc>>,
}

/// Tokens in a bucket at `now`: refilled at `rate` since `refilled_at`,
/// capped at `burst_seconds` of the rate (at least one token).
pub fn refill(
    rate: f64,
    tokens: f64,
    refilled_at: DateTime<Utc>,
    burst: f64,
    now: DateTime<Utc>,
) -> f64 {
    let elapsed = (now - refilled_at).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
    (tokens + rate * elapsed).min((rate * burst).max(1.0))
}

/// Creates the bucket of every resource the policy names (full, at its
/// initial rate) and clamps existing rates into the policy's `[min, max]`.
/// Idempotent; the claim runs it once per policy fingerprint.
pub async fn ensure_rates(
    db: &impl ConnectionTrait,
    resources: &Resources,
    now: DateTime<Utc>,
) -> Result<()> {
    let backend = db.get_database_backend();
    let now = db_now(now);
    for (name, limits) in &resources.0 {
        let full = (limits.initial_rate * limits.burst_seconds).max(1.0);
        db.execute_raw(stmt(
            backend,
            "INSERT INTO resource_rates (resource, rate, tokens, refilled_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) ON CONFLICT (resource) DO NOTHING",
            vec![
                name.as_str().into(),
                limits.initial_rate.into(),
                full.into(),
                now.into(),
            ],
        ))
        .await?;
        db.execute_raw(stmt(
            backend,
            "UPDATE resource_rates SET rate = CASE WHEN rate < $2 THEN $2 WHEN rate > $3 THEN $3 \
             ELSE rate END, updated_at = $4 WHERE resource = $1 AND (rate < $2 OR rate > $3)",
            vec![
                name.as_str().into(),
                limits.min_rate.into(),
                limits.max_rate.into(),
                now.into(),
            ],
        ))
        .await?;
    }
    Ok(())
}

fn rate_from_row(row: &sea_orm::QueryResult) -> Result<ResourceRate> {
    Ok(ResourceRate {
        resource: row.try_get("", "resource")?,
        rate: row.try_get("", "rate")?,
        tokens: row.try_get("", "tokens")?,
        refilled_at: row.try_get("", "refilled_at")?,
        evaluated_until: row.try_get("", "evaluated_until")?,
        tripped_at: row.try_get("", "tripped_at")?,
    })
}

/// Every bucket, by resource.
pub async fn list_rates(db: &impl ConnectionTrait) -> Result<Vec<ResourceRate>> {
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            "SELECT resource, rate, tokens, refilled_at, evaluated_until, tripped_at \
             FROM resource_rates ORDER BY resource",
            vec![],
        ))
        .await?;
    rows.iter().map(rate_from_row).collect()
}

/// The buckets of `resources`, locked on PostgreSQL (in name order, so two
/// claims never wait on each other crosswise).
pub(crate) async fn lock_rates(
    db: &impl ConnectionTrait,
    resources: &[&str],
) -> Result<Vec<ResourceRate>> {
    if resources.is_empty() {
        return Ok(Vec::new());
    }
    let backend = db.get_database_backend();
    let placeholders: Vec<String> = (1..=resources.len()).map(|i| format!("${i}")).collect();
    let lock = if backend == DbBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    };
    let rows = db
        .query_all_raw(stmt(
            backend,
            &format!(
                "SELECT resource, rate, tokens, refilled_at, evaluated_until, tripped_at \
                 FROM resource_rates WHERE resource IN ({}) ORDER BY resource{lock}",
                placeholders.join(", ")
            ),
            resources.iter().map(|r| (*r).into()).collect(),
        ))
        .await?;
    rows.iter().map(rate_from_row).collect()
}

/// Stores a bucket's tokens after a grant.
pub(crate) async fn store_tokens(
    db: &impl ConnectionTrait,
    resource: &str,
    tokens: f64,
    refilled_at: DateTime<Utc>,
) -> Result<()> {
    db.execute_raw(stmt(
        db.get_database_backend(),
        "UPDATE resource_rates SET tokens = $2, refilled_at = $3, updated_at = $3 WHERE resource = $1",
        vec![resource.into(), tokens.into(), refilled_at.into()],
    ))
    .await?;
    Ok(())
}

/// The controller's write: the new rate and the window evaluated.
pub async fn set_rate(
    db: &impl ConnectionTrait,
    resource: &str,
    rate: f64,
    evaluated_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<()> {
    db.execute_raw(stmt(
        db.get_database_backend(),
        "UPDATE resource_rates SET rate = $2, evaluated_until = $3, updated_at = $4 WHERE resource = $1",
        vec![
            resource.into(),
            rate.into(),
            db_now(evaluated_until).into(),
            db_now(now).into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Records when a guard tripped for `resource`.
pub async fn set_tripped(
    db: &impl ConnectionTrait,
    resource: &str,
    at: Option<DateTime<Utc>>,
) -> Result<()> {
    db.execute_raw(stmt(
        db.get_database_backend(),
        "UPDATE resource_rates SET tripped_at = $2 WHERE resource = $1",
        vec![resource.into(), at.map(db_now).into()],
    ))
    .await?;
    Ok(())
}

/// The start of the window of `window_seconds` that `now` falls in
/// (windows are aligned on the Unix epoch, so every replica agrees).
pub fn window_start(now: DateTime<Utc>, window_seconds: f64) -> DateTime<Utc> {
    let width = (window_seconds.max(1.0) * 1e6) as i64;
    let micros = now.timestamp_micros();
    let start = micros - micros.rem_euclid(width);
    Utc.timestamp_micros(start).single().unwrap_or(now)
}

/// The window length of a resource as a duration.
pub fn window_length(limits: &ResourceLimits) -> Duration {
    Duration::microseconds((limits.window_seconds.max(1.0) * 1e6) as i64)
}

/// The cost of each usage entry: the worker's `reported` cost shared in
/// proportion to calls when it reported one, else each resource's price.
pub fn attribute_cost(
    usage: &[ResourceUsage],
    pricing: &Pricing,
    reported: Option<f64>,
) -> Vec<f64> {
    match reported {
        None => usage.iter().map(|u| pricing.cost_of_one(u)).collect(),
        Some(total) => {
            let calls: i64 = usage.iter().map(|u| u.calls).sum();
            usage
                .iter()
                .enumerate()
                .map(|(i, u)| match calls {
                    0 if i == 0 => total,
                    0 => 0.0,
                    _ => total * u.calls as f64 / calls as f64,
                })
                .collect()
        }
    }
}

/// Adds one step's usage to its windows (per resource and kind), each with
/// its cost (see [`attribute_cost`]). Runs in the caller's transaction (the
/// step's completion or failure).
pub async fn record_usage(
    db: &impl ConnectionTrait,
    kind: &str,
    usage: &[ResourceUsage],
    costs: &[f64],
    resources: &Resources,
    now: DateTime<Utc>,
) -> Result<()> {
    let backend = db.get_database_backend();
    let now = db_now(now);
    for (i, u) in usage.iter().enumerate() {
        let window = resources
            .0
            .get(&u.resource)
            .map_or(10.0, |r| r.window_seconds);
        let start = window_start(now, window);
        let cost = costs.get(i).copied().unwrap_or(0.0);
        db.execute_raw(stmt(
            backend,
            "INSERT INTO resource_usage (resource, window_start, kind, reports, calls, \
             latency_weighted_ms, latency_max_ms, status_2xx, status_4xx, status_429, status_5xx, \
             unreachable, units, cost_usd, updated_at) \
             VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8, $9, $10, $14, $11, $12, $13) \
             ON CONFLICT (resource, window_start, kind) DO UPDATE SET \
             reports = resource_usage.reports + 1, calls = resource_usage.calls + excluded.calls, \
             latency_weighted_ms = resource_usage.latency_weighted_ms + excluded.latency_weighted_ms, \
             latency_max_ms = CASE WHEN excluded.latency_max_ms > resource_usage.latency_max_ms \
               THEN excluded.latency_max_ms ELSE resource_usage.latency_max_ms END, \
             status_2xx = resource_usage.status_2xx + excluded.status_2xx, \
             status_4xx = resource_usage.status_4xx + excluded.status_4xx, \
             status_429 = resource_usage.status_429 + excluded.status_429, \
             status_5xx = resource_usage.status_5xx + excluded.status_5xx, \
             unreachable = resource_usage.unreachable + excluded.unreachable, \
             units = resource_usage.units + excluded.units, \
             cost_usd = resource_usage.cost_usd + excluded.cost_usd, updated_at = excluded.updated_at",
            vec![
                u.resource.as_str().into(),
                start.into(),
                kind.into(),
                u.calls.into(),
                (u.latency_p50_ms * u.calls.max(1) as f64).into(),
                u.latency_max_ms.into(),
                u.status_2xx.into(),
                u.status_4xx.into(),
                u.status_429.into(),
                u.status_5xx.into(),
                u.units.into(),
                cost.into(),
                now.into(),
                u.unreachable.into(),
            ],
        ))
        .await?;
        metrics::counter!("opsloop_resource_calls_total", "resource" => u.resource.clone())
            .increment(u64::try_from(u.calls).unwrap_or(0));
        // Dollars are fractional: a gauge that only ever grows.
        metrics::gauge!("opsloop_resource_cost_usd", "kind" => kind.to_owned(),
            "resource" => u.resource.clone())
        .increment(cost);
    }
    Ok(())
}

/// The usage of `resource` in `[start, end)`, summed over kinds.
pub async fn window_stats(
    db: &impl ConnectionTrait,
    resource: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<WindowStats> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT) AS calls, \
             CAST(COALESCE(SUM(reports), 0) AS BIGINT) AS reports, \
             COALESCE(SUM(latency_weighted_ms), 0.0) AS weighted, \
             COALESCE(MAX(latency_max_ms), 0.0) AS max_ms, \
             CAST(COALESCE(SUM(status_2xx), 0) AS BIGINT) AS s2, \
             CAST(COALESCE(SUM(status_4xx), 0) AS BIGINT) AS s4, \
             CAST(COALESCE(SUM(status_429), 0) AS BIGINT) AS s429, \
             CAST(COALESCE(SUM(status_5xx), 0) AS BIGINT) AS s5, \
             CAST(COALESCE(SUM(unreachable), 0) AS BIGINT) AS unreachable \
             FROM resource_usage WHERE resource = $1 AND window_start >= $2 AND window_start < $3",
            vec![resource.into(), db_now(start).into(), db_now(end).into()],
        ))
        .await?;
    let Some(row) = row else {
        return Ok(WindowStats::default());
    };
    let calls: i64 = row.try_get("", "calls")?;
    let reports: i64 = row.try_get("", "reports")?;
    let weighted: f64 = row.try_get("", "weighted")?;
    // Reports of zero calls still weigh their latency once.
    let weight = calls.max(reports).max(1) as f64;
    Ok(WindowStats {
        calls,
        latency_ms: weighted / weight,
        latency_max_ms: row.try_get("", "max_ms")?,
        status_2xx: row.try_get("", "s2")?,
        status_4xx: row.try_get("", "s4")?,
        status_429: row.try_get("", "s429")?,
        status_5xx: row.try_get("", "s5")?,
        unreachable: row.try_get("", "unreachable")?,
    })
}

/// Cost per resource (and kind) in `[start, end)`: the daily summary's and
/// the weekly report's cost-per-resource section.
pub async fn cost_by_resource(
    db: &impl ConnectionTrait,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Vec<(String, String, i64, f64)>> {
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            "SELECT resource, kind, CAST(SUM(calls) AS BIGINT) AS calls, SUM(cost_usd) AS cost \
             FROM resource_usage WHERE window_start >= $1 AND window_start < $2 \
             GROUP BY resource, kind ORDER BY resource, kind",
            vec![db_now(start).into(), db_now(end).into()],
        ))
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("", "resource")?,
                r.try_get("", "kind")?,
                r.try_get("", "calls")?,
                r.try_get::<Option<f64>>("", "cost")?.unwrap_or(0.0),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0)
            .single()
            .expect("time")
    }

    #[test]
    fn refill_is_capped_by_the_burst() {
        assert_eq!(refill(50.0, 0.0, at(0), 1.0, at(0)), 0.0);
        assert!(
            (refill(50.0, 0.0, at(0), 1.0, at(0) + Duration::milliseconds(100)) - 5.0).abs() < 1e-9
        );
        assert_eq!(refill(50.0, 0.0, at(0), 1.0, at(10)), 50.0);
        // A clock behind the last refill adds nothing.
        assert_eq!(refill(50.0, 3.0, at(5), 1.0, at(0)), 3.0);
        // At least one token fits, however slow the rate.
        assert_eq!(refill(0.1, 0.0, at(0), 1.0, at(100)), 1.0);
    }

    #[test]
    fn cost_is_priced_or_shared_by_calls() {
        let pricing: Pricing = serde_json::from_value(serde_json::json!({
            "a": {"cost_per_call_usd": 0.5}, "b": {"cost_per_call_usd": 1.0}
        }))
        .expect("pricing");
        let use_ = |r: &str, calls| ResourceUsage {
            resource: r.into(),
            calls,
            ..ResourceUsage::default()
        };
        let usage = vec![use_("a", 2), use_("b", 6)];
        assert_eq!(attribute_cost(&usage, &pricing, None), vec![1.0, 6.0]);
        assert_eq!(attribute_cost(&usage, &pricing, Some(4.0)), vec![1.0, 3.0]);
        let idle = vec![use_("a", 0), use_("b", 0)];
        assert_eq!(attribute_cost(&idle, &pricing, Some(2.0)), vec![2.0, 0.0]);
    }

    #[test]
    fn windows_align_on_the_epoch() {
        let start = window_start(at(7), 10.0);
        assert_eq!(start.timestamp() % 10, 0);
        assert!(start <= at(7) && at(7) < start + Duration::seconds(10));
        assert_eq!(window_start(start, 10.0), start);
        let limits = ResourceLimits::with_kinds(vec![]);
        assert_eq!(window_length(&limits), Duration::seconds(10));
    }

    #[test]
    fn rate_limits_clamp_their_wait() {
        assert_eq!(
            RateLimit::after_seconds("a", 0.0).retry_after,
            std::time::Duration::from_millis(5)
        );
        assert_eq!(
            RateLimit::after_seconds("a", f64::NAN).retry_after,
            std::time::Duration::from_secs(1)
        );
        assert_eq!(
            RateLimit::after_seconds("a", 99.0).retry_after,
            std::time::Duration::from_secs(10)
        );
    }
}

#[cfg(test)]
#[path = "governance_tests.rs"]
mod db_tests;
