//! Rate governance, run by the leader every window (its own loop, and as
//! the tick's `governance` phase): for each resource of the `resources`
//! policy, every window that ended since the last one evaluated (persisted
//! in `resource_rates.evaluated_until`) is judged from the usage workers
//! reported: the AIMD controller moves the shared bucket's rate (every
//! change a `resource.rate_changed` event with its evidence), and the
//! guards raise alerts (limit violation, error rate, slow responses,
//! consecutive failures, upstream outage) and trip (limit violation,
//! `failures_trip` consecutive failures, an upstream outage: a window of
//! only unavailable calls, or the resource's `outage_probe` down): the
//! emergency stop engaged once with the reason,
//! or, with `on_trip = pause_kinds`, only the resource's kinds paused for
//! `pause_seconds` (`step_kind_pauses`, source `resource:<name>`).
//!
//! The window's decision and its events are written with a compare-and-set
//! on `evaluated_until`, so a window is judged once even if two leaders
//! overlap during a handover.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use opsloop_core::domain::governance::{
    RateReason, ResourceLimits, TripAction, WindowStats, next_rate,
};
use opsloop_core::workflow::governance::{
    ResourceRate, ensure_rates, list_rates, window_length, window_start, window_stats,
};
use opsloop_core::workflow::{self, db_now};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::alerts::{self, Alert, Severity, enqueue_alert};
use crate::db::{self, begin_write, stmt};
use crate::heartbeat::{Heartbeat, HeartbeatError, emit_in};
use crate::ops::ACTOR;
use crate::probes::StoredState;

/// Most windows judged in one run after a pause (older ones are skipped).
pub const MAX_CATCH_UP_WINDOWS: i64 = 360;

/// How long an alert of one kind for one resource stays quiet after it is sent.
pub const ALERT_COOLDOWN_SECONDS: i64 = 300;

/// The alert of an upstream outage (window evidence or the linked probe).
pub const OUTAGE_ALERT: &str = "ResourceUpstreamOutage";

/// What the guards make of one window.
#[derive(Debug, Clone, PartialEq)]
pub enum WindowGuard {
    /// Observed calls per second above `violation_rate`: alert and trip.
    LimitViolation { observed: f64, limit: f64 },
    /// Share of non-2xx answers above `error_rate_alert`.
    ErrorRate { rate: f64, limit: f64 },
    /// Window latency above `slow_response_ms`.
    SlowResponse { latency_ms: f64, limit_ms: f64 },
    /// At least `outage_min_calls` calls failed as unavailable (5xx or no
    /// answer) and none was answered otherwise: alert and trip.
    UpstreamOutage { status_5xx: i64, unreachable: i64 },
}

/// The guards' verdict on one window (pure).
pub fn judge_window(limits: &ResourceLimits, stats: &WindowStats) -> Vec<WindowGuard> {
    let mut out = Vec::new();
    if stats.calls <= 0 && stats.unavailable() <= 0 {
        return out;
    }
    let observed = stats.calls as f64 / limits.window_seconds.max(1.0);
    if observed > limits.violation_rate {
        out.push(WindowGuard::LimitViolation {
            observed,
            limit: limits.violation_rate,
        });
    }
    let errors = stats.error_rate();
    if errors > limits.error_rate_alert {
        out.push(WindowGuard::ErrorRate {
            rate: errors,
            limit: limits.error_rate_alert,
        });
    }
    if stats.latency_ms > limits.slow_response_ms {
        out.push(WindowGuard::SlowResponse {
            latency_ms: stats.latency_ms,
            limit_ms: limits.slow_response_ms,
        });
    }
    if stats.is_outage(limits.outage_min_calls) {
        out.push(WindowGuard::UpstreamOutage {
            status_5xx: stats.status_5xx,
            unreachable: stats.unreachable,
        });
    }
    out
}

/// The evidence of a window's upstream outage, for the trip's reason.
fn window_outage_reason(
    resource: &str,
    status_5xx: i64,
    unreachable: i64,
    window_end: DateTime<Utc>,
) -> String {
    format!(
        "resource {resource}: upstream outage: {} calls in the window to {} failed as unavailable \
         ({status_5xx} answered 5xx, {unreachable} unreachable) and none was answered otherwise",
        status_5xx + unreachable,
        window_end.format("%H:%M:%S")
    )
}

/// Whether the probe linked to a resource shows an upstream outage to act
/// on (pure): it is down, and went down after `acted_at` (the resource's
/// last trip, or the emergency stop's last change), so an outage is acted
/// on once and a human's release of the stop is not undone.
pub fn probe_outage(
    probe: &str,
    state: Option<&StoredState>,
    acted_at: Option<DateTime<Utc>>,
) -> Option<String> {
    let state = state?;
    if state.status != "down" || acted_at.is_some_and(|at| state.since <= at) {
        return None;
    }
    Some(format!(
        "probe {probe} down since {} ({} consecutive failed checks{})",
        state.since.format("%Y-%m-%d %H:%M:%S UTC"),
        state.consecutive_failures,
        state
            .last_error
            .as_deref()
            .map(|e| format!(", last error: {e}"))
            .unwrap_or_default()
    ))
}

/// What consecutive failures call for (pure): `(alert, trip)`.
pub fn judge_failures(limits: &ResourceLimits, consecutive: u32) -> (bool, bool) {
    (
        consecutive >= limits.failures_alert,
        consecutive >= limits.failures_trip,
    )
}

/// The windows to judge at `now`: from the last evaluated end (or the last
/// complete window on the first run) to the start of the current window,
/// at most [`MAX_CATCH_UP_WINDOWS`].
pub fn pending_windows(
    limits: &ResourceLimits,
    evaluated_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let width = window_length(limits);
    let end = window_start(now, limits.window_seconds);
    let earliest = end - width * i32::try_from(MAX_CATCH_UP_WINDOWS).unwrap_or(360);
    let mut start = evaluated_until.unwrap_or(end - width).max(earliest);
    // Re-align a start the policy's new window no longer fits.
    start = window_start(start, limits.window_seconds);
    let mut out = Vec::new();
    while start + width <= end {
        out.push((start, start + width));
        start += width;
    }
    out
}

/// Terminal and retried outcomes of steps of `kinds` since `since`, newest
/// first, counted while they are failures.
async fn consecutive_failures(
    db: &impl ConnectionTrait,
    kinds: &[String],
    since: DateTime<Utc>,
    limit: u32,
) -> Result<u32, HeartbeatError> {
    if kinds.is_empty() {
        return Ok(0);
    }
    let marks: Vec<String> = (0..kinds.len()).map(|i| format!("${}", i + 2)).collect();
    let mut values: Vec<sea_orm::Value> = vec![db_now(since).into()];
    values.extend(kinds.iter().map(|k| k.as_str().into()));
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            &format!(
                "SELECT e.kind FROM events e JOIN mission_steps s ON s.id = e.step_id \
                 WHERE e.kind IN ('step.succeeded', 'step.failed', 'step.retrying') \
                 AND e.created_at > $1 AND s.kind IN ({}) ORDER BY e.seq DESC LIMIT {}",
                marks.join(", "),
                limit.max(1)
            ),
            values,
        ))
        .await?;
    let mut n = 0;
    for row in rows {
        if row.try_get::<String>("", "kind")? == "step.succeeded" {
            break;
        }
        n += 1;
    }
    Ok(n)
}

/// The alert names the guards raise.
fn guard_alert(
    resource: &str,
    guard: &WindowGuard,
    window: (DateTime<Utc>, DateTime<Utc>),
) -> Alert {
    let (name, severity, summary) = match guard {
        WindowGuard::LimitViolation { observed, limit } => (
            "ResourceLimitViolation",
            Severity::Critical,
            format!("{resource}: {observed:.1} calls/s observed, above the limit {limit:.1}/s"),
        ),
        WindowGuard::ErrorRate { rate, limit } => (
            "ResourceErrorRate",
            Severity::Warning,
            format!(
                "{resource}: {:.1} % of upstream answers were errors (alert above {:.1} %)",
                rate * 100.0,
                limit * 100.0
            ),
        ),
        WindowGuard::SlowResponse {
            latency_ms,
            limit_ms,
        } => (
            "ResourceSlowResponse",
            Severity::Warning,
            format!("{resource}: upstream latency {latency_ms:.0} ms, above {limit_ms:.0} ms"),
        ),
        WindowGuard::UpstreamOutage {
            status_5xx,
            unreachable,
        } => (
            OUTAGE_ALERT,
            Severity::Critical,
            format!(
                "{resource}: upstream outage, {} calls failed as unavailable ({status_5xx} × 5xx, \
                 {unreachable} unreachable), none answered otherwise",
                status_5xx + unreachable
            ),
        ),
    };
    alerts::alert(
        name,
        severity,
        summary,
        format!(
            "window {} to {}; see `opsloop policy get resources` and the resource.rate_changed events",
            window.0.format("%H:%M:%S"),
            window.1.format("%H:%M:%S")
        ),
    )
    .label("resource", resource)
}

/// Sends `alert` unless one of its name for `resource` went out within the
/// cooldown. In the caller's transaction.
async fn alert_once(
    tx: &impl ConnectionTrait,
    resource: &str,
    alert: &Alert,
    now: DateTime<Utc>,
) -> Result<bool, HeartbeatError> {
    let mark = format!("governance.{}:{resource}", alert.name);
    let until = now + Duration::seconds(ALERT_COOLDOWN_SECONDS);
    if db::claim_cooldown(tx, &mark, until, now).await? {
        enqueue_alert(tx, alert, now).await?;
        return Ok(true);
    }
    Ok(false)
}

/// What one resource's run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ResourceRun {
    pub resource: String,
    pub windows: usize,
    pub rate: f64,
    pub changes: usize,
    pub alerts: Vec<String>,
    pub tripped: Option<String>,
    /// The evidence of an upstream outage seen in this run.
    pub outage: Option<String>,
}

/// Judges every resource's pending windows at `now`.
pub async fn run(hb: &Heartbeat, now: DateTime<Utc>) -> Result<Value, HeartbeatError> {
    let runs = govern(hb.db(), hb.inner.audit.as_deref(), now).await?;
    Ok(json!({"resources": runs}))
}

/// [`run`] without a heartbeat (tests, tools).
pub async fn govern(
    db: &DatabaseConnection,
    audit: Option<&opsloop_core::audit::AuditLog>,
    now: DateTime<Utc>,
) -> Result<Vec<ResourceRun>, HeartbeatError> {
    let now = db_now(now);
    let policy = workflow::load_policy(db).await?;
    if policy.resources.0.is_empty() {
        return Ok(Vec::new());
    }
    ensure_rates(db, &policy.resources, now).await?;
    let rates = list_rates(db).await?;
    let mut runs = Vec::new();
    for (name, limits) in &policy.resources.0 {
        let Some(row) = rates.iter().find(|r| &r.resource == name) else {
            continue;
        };
        runs.push(govern_resource(db, audit, name, limits, row, now).await?);
    }
    Ok(runs)
}

async fn govern_resource(
    db: &DatabaseConnection,
    audit: Option<&opsloop_core::audit::AuditLog>,
    name: &str,
    limits: &ResourceLimits,
    row: &ResourceRate,
    now: DateTime<Utc>,
) -> Result<ResourceRun, HeartbeatError> {
    let mut run = ResourceRun {
        resource: name.to_owned(),
        rate: row.rate,
        ..ResourceRun::default()
    };
    let source = format!("resource:{name}");
    let kinds: Vec<String> = limits.kinds.iter().map(|k| k.as_str().to_owned()).collect();
    // A pause that has run its course is lifted.
    if limits.on_trip == TripAction::PauseKinds
        && row
            .tripped_at
            .is_some_and(|at| at + Duration::seconds(i64::from(limits.pause_seconds)) <= now)
    {
        let tx = begin_write(db).await?;
        let change = workflow::sync_source_pauses(&tx, &source, &[], "", now).await?;
        if !change.is_empty() {
            emit_in(
                &tx,
                "resource.resumed",
                json!({"resource": name, "kinds": change.resumed}),
                None,
                now,
            )
            .await?;
        }
        workflow::governance::set_tripped(&tx, name, None).await?;
        tx.commit().await?;
    }
    let windows = pending_windows(limits, row.evaluated_until, now);
    let mut trip: Option<String> = None;
    let mut window_alerts: Vec<Alert> = Vec::new();
    let mut changes: Vec<Value> = Vec::new();
    let mut outages: Vec<Value> = Vec::new();
    let mut rate = row.rate;
    for window in &windows {
        let stats = window_stats(db, name, window.0, window.1).await?;
        let (next, reason) = next_rate(limits, rate, &stats);
        if next != rate {
            changes.push(json!({
                "resource": name, "old_rate": rate, "new_rate": next, "reason": reason.as_str(),
                "window_start": window.0, "window_end": window.1,
                "calls": stats.calls, "latency_ms": stats.latency_ms,
                "latency_max_ms": stats.latency_max_ms,
                "errors": stats.status_4xx + stats.status_429 + stats.status_5xx,
                "status_429": stats.status_429, "status_5xx": stats.status_5xx,
                "error_rate": stats.error_rate(),
            }));
        } else if reason == RateReason::Throttled {
            tracing::debug!(resource = name, "throttled at the floor");
        }
        rate = next;
        for guard in judge_window(limits, &stats) {
            let reason = match &guard {
                WindowGuard::LimitViolation { observed, limit } => Some(format!(
                    "resource {name}: {observed:.1} calls/s observed in the window to {}, above the limit {limit:.1}/s",
                    window.1.format("%H:%M:%S")
                )),
                WindowGuard::UpstreamOutage {
                    status_5xx,
                    unreachable,
                } => {
                    let reason = window_outage_reason(name, *status_5xx, *unreachable, window.1);
                    outages.push(json!({
                        "resource": name, "source": "window", "reason": reason,
                        "window_start": window.0, "window_end": window.1,
                        "calls": stats.calls, "status_5xx": status_5xx,
                        "unreachable": unreachable, "min_calls": limits.outage_min_calls,
                    }));
                    Some(reason)
                }
                WindowGuard::ErrorRate { .. } | WindowGuard::SlowResponse { .. } => None,
            };
            if trip.is_none() {
                trip = reason;
            }
            window_alerts.push(guard_alert(name, &guard, *window));
        }
    }
    let (stop, stop_changed_at) = workflow::emergency_stop_state(db).await?;
    let since = row
        .tripped_at
        .map_or(stop_changed_at, |t| t.max(stop_changed_at));
    let failures = consecutive_failures(db, &kinds, since, limits.failures_trip).await?;
    let (failure_alert, failure_trip) = judge_failures(limits, failures);
    if failure_trip && trip.is_none() {
        trip = Some(format!(
            "resource {name}: {failures} consecutive failed steps of {} (limit {})",
            kinds.join(", "),
            limits.failures_trip
        ));
    }
    // The linked probe: an outage acted on once per trip (pause) or per
    // release of the stop (emergency stop, not while it is engaged).
    let mut probe_alert: Option<(Alert, Value)> = None;
    if let Some(probe) = &limits.outage_probe {
        let acted_at = match limits.on_trip {
            TripAction::PauseKinds => row.tripped_at,
            TripAction::EmergencyStop => Some(since),
        };
        let state = crate::probes::stored_state(db, probe).await?;
        if state.is_none() {
            tracing::debug!(resource = name, probe, "outage probe has no state yet");
        }
        let skip = limits.on_trip == TripAction::EmergencyStop && stop.engaged;
        if let Some(evidence) = probe_outage(probe, state.as_ref(), acted_at).filter(|_| !skip) {
            let reason = format!("resource {name}: upstream outage: {evidence}");
            let alert = alerts::alert(
                OUTAGE_ALERT,
                Severity::Critical,
                format!("{name}: upstream outage ({evidence})"),
                format!("on_trip {:?}; see `opsloop probe list`", limits.on_trip),
            )
            .label("resource", name)
            .annotation("reason", &reason);
            let event = json!({"resource": name, "source": "probe", "probe": probe,
                               "reason": reason});
            probe_alert = Some((alert, event));
            if trip.is_none() {
                trip = Some(reason);
            }
        }
    }
    run.outage = outages
        .first()
        .or(probe_alert.as_ref().map(|(_, e)| e))
        .and_then(|e| e["reason"].as_str())
        .map(str::to_owned);
    let last_end = windows.last().map(|w| w.1);
    let tx = begin_write(db).await?;
    if let Some(end) = last_end {
        // Compare-and-set: one judge per window.
        let changed = tx
            .execute_raw(stmt(
                tx.get_database_backend(),
                "UPDATE resource_rates SET rate = $2, evaluated_until = $3, updated_at = $4 \
                 WHERE resource = $1 AND (evaluated_until = $5 OR (evaluated_until IS NULL AND $5 IS NULL))",
                vec![
                    name.into(),
                    rate.into(),
                    db_now(end).into(),
                    now.into(),
                    row.evaluated_until.map(db_now).into(),
                ],
            ))
            .await?
            .rows_affected();
        if changed == 0 {
            tx.rollback().await?;
            return Ok(run);
        }
        for change in &changes {
            emit_in(&tx, "resource.rate_changed", change.clone(), None, now).await?;
            tracing::info!(resource = name, change = %change, "resource rate changed");
        }
        for outage in &outages {
            emit_in(&tx, "resource.upstream_outage", outage.clone(), None, now).await?;
        }
        for alert in &window_alerts {
            if alert_once(&tx, name, alert, now).await? {
                run.alerts.push(alert.name.clone());
            }
        }
    }
    if let Some((alert, event)) = &probe_alert {
        emit_in(&tx, "resource.upstream_outage", event.clone(), None, now).await?;
        if alert_once(&tx, name, alert, now).await? {
            run.alerts.push(alert.name.clone());
        }
    }
    if failure_alert && !stop.engaged {
        let alert = alerts::alert(
            "ResourceConsecutiveFailures",
            if failure_trip {
                Severity::Critical
            } else {
                Severity::Warning
            },
            format!(
                "{name}: {failures} consecutive failed steps of {}",
                kinds.join(", ")
            ),
            format!(
                "alert at {}, trip ({:?}) at {}",
                limits.failures_alert, limits.on_trip, limits.failures_trip
            ),
        )
        .label("resource", name);
        if alert_once(&tx, name, &alert, now).await? {
            run.alerts.push(alert.name.clone());
        }
    }
    tx.commit().await?;
    run.windows = windows.len();
    run.changes = changes.len();
    run.rate = rate;
    metrics::gauge!("opsloop_resource_rate", "resource" => name.to_owned()).set(rate);
    if let Some(reason) = trip {
        run.tripped =
            trip_resource(db, audit, name, limits, &kinds, &reason, stop.engaged, now).await?;
    }
    Ok(run)
}

/// Trips a resource's guard: the emergency stop (once: not when already
/// engaged), or its kinds paused. Returns what it did.
#[allow(clippy::too_many_arguments)]
async fn trip_resource(
    db: &DatabaseConnection,
    audit: Option<&opsloop_core::audit::AuditLog>,
    name: &str,
    limits: &ResourceLimits,
    kinds: &[String],
    reason: &str,
    stop_engaged: bool,
    now: DateTime<Utc>,
) -> Result<Option<String>, HeartbeatError> {
    match limits.on_trip {
        TripAction::EmergencyStop => {
            if stop_engaged {
                return Ok(None);
            }
            let change = workflow::engage_emergency_stop(db, ACTOR, reason, audit, now).await?;
            if !change.changed {
                return Ok(None);
            }
            let tx = begin_write(db).await?;
            workflow::governance::set_tripped(&tx, name, Some(now)).await?;
            let alert = alerts::alert(
                "OpsEmergencyStop",
                Severity::Critical,
                "emergency stop engaged by the heartbeat".into(),
                format!(
                    "{reason}; nothing is approved or handed to workers until a human releases it"
                ),
            )
            .label("resource", name)
            .annotation("reason", reason);
            enqueue_alert(&tx, &alert, now).await?;
            tx.commit().await?;
            tracing::warn!(
                resource = name,
                reason,
                "emergency stop engaged by rate governance"
            );
            Ok(Some("emergency_stop".into()))
        }
        TripAction::PauseKinds => {
            let tx = begin_write(db).await?;
            let source = format!("resource:{name}");
            let change = workflow::sync_source_pauses(&tx, &source, kinds, reason, now).await?;
            if change.paused.is_empty() {
                tx.rollback().await?;
                return Ok(None);
            }
            workflow::governance::set_tripped(&tx, name, Some(now)).await?;
            emit_in(
                &tx,
                "resource.paused",
                json!({"resource": name, "kinds": change.paused, "reason": reason,
                       "pause_seconds": limits.pause_seconds}),
                None,
                now,
            )
            .await?;
            let alert = alerts::alert(
                "ResourceKindsPaused",
                Severity::Critical,
                format!("{name}: kinds {} paused", change.paused.join(", ")),
                format!(
                    "{reason}; claims of these kinds resume after {} s",
                    limits.pause_seconds
                ),
            )
            .label("resource", name)
            .annotation("reason", reason);
            enqueue_alert(&tx, &alert, now).await?;
            tx.commit().await?;
            tracing::warn!(resource = name, reason, kinds = ?change.paused, "kinds paused by rate governance");
            Ok(Some("pause_kinds".into()))
        }
    }
}

/// The shortest window among the policy's resources (default 10 s): how
/// often the governance loop runs.
async fn loop_period(db: &DatabaseConnection) -> StdDuration {
    match workflow::load_policy(db).await {
        Ok(policy) => {
            let secs = policy
                .resources
                .0
                .values()
                .map(|r| r.window_seconds)
                .fold(f64::INFINITY, f64::min);
            StdDuration::from_secs_f64(if secs.is_finite() {
                secs.clamp(1.0, 3600.0)
            } else {
                10.0
            })
        }
        Err(_) => StdDuration::from_secs(10),
    }
}

/// Judges the windows every window while this instance leads, until
/// `shutdown`.
pub async fn run_loop(hb: Heartbeat, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        let now = Utc::now();
        match hb.is_leader(now).await {
            Ok(true) => {
                if let Err(error) = run(&hb, now).await {
                    tracing::warn!(%error, "rate governance run failed");
                }
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot read the leader lease for rate governance")
            }
        }
        let period = loop_period(hb.db()).await;
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(period) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use opsloop_core::domain::input::StepKind;

    use super::*;

    fn limits() -> ResourceLimits {
        ResourceLimits::with_kinds(vec![StepKind::parse("k", "post_x").expect("kind")])
    }

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0)
            .single()
            .expect("time")
    }

    #[test]
    fn guards_table() {
        let l = limits();
        let w = |calls: i64, latency: f64, s2: i64, s5: i64| WindowStats {
            calls,
            latency_ms: latency,
            status_2xx: s2,
            status_5xx: s5,
            ..WindowStats::default()
        };
        let kinds = |g: Vec<WindowGuard>| -> Vec<&'static str> {
            g.iter()
                .map(|g| match g {
                    WindowGuard::LimitViolation { .. } => "violation",
                    WindowGuard::ErrorRate { .. } => "errors",
                    WindowGuard::SlowResponse { .. } => "slow",
                    WindowGuard::UpstreamOutage { .. } => "outage",
                })
                .collect()
        };
        assert!(judge_window(&l, &WindowStats::default()).is_empty());
        assert!(judge_window(&l, &w(2100, 300.0, 2100, 0)).is_empty());
        assert_eq!(
            kinds(judge_window(&l, &w(2101, 300.0, 2101, 0))),
            vec!["violation"]
        );
        assert_eq!(
            kinds(judge_window(&l, &w(100, 300.0, 89, 11))),
            vec!["errors"]
        );
        assert!(judge_window(&l, &w(100, 300.0, 90, 10)).is_empty());
        assert_eq!(
            kinds(judge_window(&l, &w(100, 1001.0, 100, 0))),
            vec!["slow"]
        );
        let outage = WindowStats {
            calls: 5,
            status_5xx: 3,
            unreachable: 2,
            ..WindowStats::default()
        };
        assert_eq!(
            judge_window(&l, &outage).last(),
            Some(&WindowGuard::UpstreamOutage {
                status_5xx: 3,
                unreachable: 2
            })
        );
        assert_eq!(judge_failures(&l, 2), (false, false));
        assert_eq!(judge_failures(&l, 3), (true, false));
        assert_eq!(judge_failures(&l, 5), (true, true));
    }

    #[test]
    fn probe_outage_is_acted_on_once() {
        let down = StoredState {
            status: "down".into(),
            consecutive_failures: 3,
            since: at(10),
            last_error: Some("timeout".into()),
            cert_fingerprint: None,
        };
        let up = StoredState {
            status: "up".into(),
            ..down.clone()
        };
        assert_eq!(probe_outage("p", None, None), None);
        assert_eq!(probe_outage("p", Some(&up), None), None);
        let evidence = probe_outage("p", Some(&down), None).expect("outage");
        assert!(
            evidence.starts_with("probe p down since ")
                && evidence.ends_with("(3 consecutive failed checks, last error: timeout)"),
            "{evidence}"
        );
        assert!(probe_outage("p", Some(&down), Some(at(9))).is_some());
        // Acted on (or released by a human) since it went down: no.
        assert_eq!(probe_outage("p", Some(&down), Some(at(10))), None);
        assert_eq!(probe_outage("p", Some(&down), Some(at(11))), None);
    }

    #[test]
    fn pending_windows_catch_up_and_align() {
        let l = limits();
        // First run: only the last complete window.
        let first = pending_windows(&l, None, at(25));
        assert_eq!(first, vec![(at(10), at(20))]);
        // Then every window since, none twice.
        assert_eq!(
            pending_windows(&l, Some(at(20)), at(45)),
            vec![(at(20), at(30)), (at(30), at(40))]
        );
        assert!(pending_windows(&l, Some(at(40)), at(45)).is_empty());
        // A long pause: at most MAX_CATCH_UP_WINDOWS.
        let long = pending_windows(&l, Some(at(0)), at(100_000));
        assert_eq!(long.len() as i64, MAX_CATCH_UP_WINDOWS);
    }

    mod db {
        //! The controller and guards on a fresh PostgreSQL database and a
        //! fresh SQLite file, on an injected clock.

        use opsloop_core::domain::governance::ResourceUsage;
        use opsloop_core::domain::input::{NewProposal, ProposalSource, StepSpec};
        use opsloop_core::store::testing::{fresh_postgres, fresh_sqlite};
        use opsloop_core::workflow::{ClaimOutcome, PolicyChange};

        use super::*;

        /// A window boundary an hour ahead (after the seeded policy rows).
        fn base() -> DateTime<Utc> {
            window_start(Utc::now() + Duration::hours(1), 10.0)
        }

        async fn set(db: &DatabaseConnection, key: &str, value: Value) {
            workflow::set_policy(
                db,
                PolicyChange {
                    key,
                    value,
                    actor: "test",
                    reason: None,
                    expected_version: None,
                },
                None,
                base() - Duration::minutes(30),
            )
            .await
            .expect("policy");
        }

        async fn count(db: &DatabaseConnection, sql: &str) -> i64 {
            db.query_one_raw(stmt(db.get_database_backend(), sql, vec![]))
                .await
                .expect("query")
                .expect("row")
                .try_get::<i64>("", "n")
                .expect("n")
        }

        /// Records one step's usage of the `api` resource by `summarize`.
        async fn record(db: &DatabaseConnection, usage: ResourceUsage, at: DateTime<Utc>) {
            let policy = workflow::load_policy(db).await.expect("policy");
            let usage = [ResourceUsage {
                resource: "api".into(),
                ..usage
            }];
            workflow::governance::record_usage(
                db,
                "summarize",
                &usage,
                &[0.0],
                &policy.resources,
                at,
            )
            .await
            .expect("usage");
        }

        async fn report(
            db: &DatabaseConnection,
            calls: i64,
            latency: f64,
            s429: i64,
            at: DateTime<Utc>,
        ) {
            let usage = ResourceUsage {
                calls,
                latency_p50_ms: latency,
                latency_max_ms: latency,
                status_2xx: calls - s429,
                status_429: s429,
                ..ResourceUsage::default()
            };
            record(db, usage, at).await;
        }

        #[tokio::test]
        async fn the_controller_moves_the_rate_and_a_violation_stops_once() {
            for t in [fresh_postgres().await, fresh_sqlite().await] {
                let db = &t.db;
                set(db, "resources", json!({"api": {"kinds": ["summarize"]}})).await;
                let t0 = base();
                // First run: nothing reported, the bucket starts at 150.
                let runs = govern(db, None, t0 + Duration::seconds(1))
                    .await
                    .expect("run");
                assert_eq!((runs[0].rate, runs[0].changes), (150.0, 0));
                // A fast window raises it, a 429 burst halves it (to the floor).
                report(db, 100, 200.0, 0, t0 + Duration::seconds(2)).await;
                report(db, 100, 200.0, 3, t0 + Duration::seconds(12)).await;
                let runs = govern(db, None, t0 + Duration::seconds(21))
                    .await
                    .expect("run");
                assert_eq!(
                    (runs[0].windows, runs[0].changes, runs[0].rate),
                    (2, 2, 100.0)
                );
                // The same windows are never judged twice.
                let again = govern(db, None, t0 + Duration::seconds(22))
                    .await
                    .expect("run");
                assert_eq!((again[0].windows, again[0].changes), (0, 0));
                let events = count(
                    db,
                    "SELECT COUNT(*) AS n FROM events WHERE kind = 'resource.rate_changed'",
                )
                .await;
                assert_eq!(events, 2);
                let evidence = db
                    .query_one_raw(stmt(db.get_database_backend(),
                        "SELECT payload FROM events WHERE kind = 'resource.rate_changed' ORDER BY seq DESC LIMIT 1", vec![]))
                    .await.expect("q").expect("row").try_get::<Value>("", "payload").expect("payload");
                assert_eq!(evidence["old_rate"], json!(155.0));
                assert_eq!(evidence["new_rate"], json!(100.0));
                assert_eq!(evidence["reason"], json!("throttled"));
                assert_eq!(evidence["status_429"], json!(3));
                // 2500 calls in a 10 s window: 250/s, above 210/s.
                report(db, 2500, 300.0, 0, t0 + Duration::seconds(25)).await;
                let runs = govern(db, None, t0 + Duration::seconds(31))
                    .await
                    .expect("run");
                assert_eq!(runs[0].tripped.as_deref(), Some("emergency_stop"));
                assert!(
                    runs[0]
                        .alerts
                        .contains(&"ResourceLimitViolation".to_owned()),
                    "{runs:?}"
                );
                let (stop, _) = workflow::emergency_stop_state(db).await.expect("stop");
                assert!(stop.engaged);
                let reason = stop.reason.expect("reason");
                assert!(
                    reason.contains("resource api") && reason.contains("250.0 calls/s"),
                    "{reason}"
                );
                // Another violating window while engaged: not engaged again.
                report(db, 2500, 300.0, 0, t0 + Duration::seconds(35)).await;
                let runs = govern(db, None, t0 + Duration::seconds(41))
                    .await
                    .expect("run");
                assert_eq!(runs[0].tripped, None);
                let engaged = count(
                    db,
                    "SELECT COUNT(*) AS n FROM events WHERE kind = 'emergency_stop.engaged'",
                )
                .await;
                assert_eq!(engaged, 1);
                t.cleanup().await;
            }
        }

        async fn report_failures(
            db: &DatabaseConnection,
            s2: i64,
            s5: i64,
            unreachable: i64,
            at: DateTime<Utc>,
        ) {
            let usage = ResourceUsage {
                calls: s2 + s5 + unreachable,
                latency_p50_ms: 300.0,
                latency_max_ms: 30_000.0,
                status_2xx: s2,
                status_5xx: s5,
                unreachable,
                ..ResourceUsage::default()
            };
            record(db, usage, at).await;
        }

        #[tokio::test]
        async fn a_window_of_unavailable_calls_is_an_outage_that_stops_once() {
            for t in [fresh_postgres().await, fresh_sqlite().await] {
                let db = &t.db;
                set(
                    db,
                    "resources",
                    json!({"api": {"kinds": ["summarize"], "outage_min_calls": 5}}),
                )
                .await;
                let t0 = base();
                govern(db, None, t0 + Duration::seconds(1))
                    .await
                    .expect("run");
                // One success among the failures: the upstream answers.
                report_failures(db, 1, 4, 4, t0 + Duration::seconds(2)).await;
                // Four unavailable calls: below outage_min_calls.
                report_failures(db, 0, 2, 2, t0 + Duration::seconds(12)).await;
                let runs = govern(db, None, t0 + Duration::seconds(21))
                    .await
                    .expect("run");
                assert_eq!((runs[0].windows, runs[0].tripped.as_deref()), (2, None));
                assert_eq!(runs[0].outage, None);
                // Three 5xx and two unreachable, nothing else: an outage.
                report_failures(db, 0, 3, 2, t0 + Duration::seconds(22)).await;
                let runs = govern(db, None, t0 + Duration::seconds(31))
                    .await
                    .expect("run");
                assert_eq!(runs[0].tripped.as_deref(), Some("emergency_stop"));
                assert!(
                    runs[0].alerts.contains(&OUTAGE_ALERT.to_owned()),
                    "{runs:?}"
                );
                let (stop, _) = workflow::emergency_stop_state(db).await.expect("stop");
                let reason = stop.reason.expect("reason");
                assert!(
                    reason.contains("resource api: upstream outage: 5 calls")
                        && reason.contains("(3 answered 5xx, 2 unreachable)"),
                    "{reason}"
                );
                assert_eq!(runs[0].outage.as_deref(), Some(reason.as_str()));
                let evidence = db
                    .query_one_raw(stmt(
                        db.get_database_backend(),
                        "SELECT payload FROM events WHERE kind = 'resource.upstream_outage'",
                        vec![],
                    ))
                    .await
                    .expect("q")
                    .expect("row")
                    .try_get::<Value>("", "payload")
                    .expect("payload");
                assert_eq!(
                    (
                        &evidence["status_5xx"],
                        &evidence["unreachable"],
                        &evidence["source"]
                    ),
                    (&json!(3), &json!(2), &json!("window"))
                );
                // Still down in the next window: the stop is not engaged again.
                report_failures(db, 0, 5, 0, t0 + Duration::seconds(32)).await;
                let runs = govern(db, None, t0 + Duration::seconds(41))
                    .await
                    .expect("run");
                assert_eq!(runs[0].tripped, None);
                let engaged = count(
                    db,
                    "SELECT COUNT(*) AS n FROM events WHERE kind = 'emergency_stop.engaged'",
                )
                .await;
                assert_eq!(engaged, 1);
                t.cleanup().await;
            }
        }

        async fn set_probe(db: &DatabaseConnection, status: &str, since: DateTime<Utc>) {
            let since = db_now(since);
            db.execute_raw(stmt(
                db.get_database_backend(),
                "INSERT INTO probe_state (name, status, consecutive_failures, since, last_error, \
                 alerted, created_at, updated_at) VALUES ('provider', $1, 3, $2, 'connection refused', \
                 $3, $2, $2) ON CONFLICT (name) DO UPDATE SET status = excluded.status, \
                 since = excluded.since, updated_at = excluded.updated_at",
                vec![status.into(), since.into(), false.into()],
            ))
            .await
            .expect("probe state");
        }

        #[tokio::test]
        async fn a_down_outage_probe_stops_once_and_a_release_holds() {
            for t in [fresh_postgres().await, fresh_sqlite().await] {
                let db = &t.db;
                set(
                    db,
                    "resources",
                    json!({"api": {"kinds": ["summarize"], "outage_probe": "provider"}}),
                )
                .await;
                let t0 = base();
                // No state yet, then up: nothing.
                let runs = govern(db, None, t0).await.expect("run");
                assert_eq!(runs[0].tripped, None);
                set_probe(db, "up", t0).await;
                let runs = govern(db, None, t0 + Duration::seconds(1))
                    .await
                    .expect("run");
                assert_eq!(runs[0].tripped, None);
                set_probe(db, "down", t0 + Duration::seconds(2)).await;
                let runs = govern(db, None, t0 + Duration::seconds(3))
                    .await
                    .expect("run");
                assert_eq!(runs[0].tripped.as_deref(), Some("emergency_stop"));
                assert!(runs[0].alerts.contains(&OUTAGE_ALERT.to_owned()));
                let (stop, _) = workflow::emergency_stop_state(db).await.expect("stop");
                let reason = stop.reason.expect("reason");
                assert!(
                    reason.contains("resource api: upstream outage: probe provider down since")
                        && reason.contains(
                            "3 consecutive failed checks, last error: connection refused"
                        ),
                    "{reason}"
                );
                // Engaged: not again, no second alert.
                let runs = govern(db, None, t0 + Duration::seconds(4))
                    .await
                    .expect("run");
                assert_eq!(
                    (runs[0].tripped.as_deref(), runs[0].alerts.len()),
                    (None, 0)
                );
                // A human releases it while the probe is still down: it holds.
                workflow::release_emergency_stop(
                    db,
                    "oncall",
                    "provider degraded, proceeding",
                    None,
                    t0 + Duration::seconds(5),
                )
                .await
                .expect("release");
                let runs = govern(db, None, t0 + Duration::seconds(6))
                    .await
                    .expect("run");
                assert_eq!(runs[0].tripped, None);
                // A new outage after the release engages it again.
                set_probe(db, "up", t0 + Duration::seconds(7)).await;
                set_probe(db, "down", t0 + Duration::seconds(8)).await;
                let runs = govern(db, None, t0 + Duration::seconds(9))
                    .await
                    .expect("run");
                assert_eq!(runs[0].tripped.as_deref(), Some("emergency_stop"));
                let engaged = count(
                    db,
                    "SELECT COUNT(*) AS n FROM events WHERE kind = 'emergency_stop.engaged'",
                )
                .await;
                assert_eq!(engaged, 2);
                t.cleanup().await;
            }
        }

        #[tokio::test]
        async fn a_down_outage_probe_pauses_only_its_kinds_while_down() {
            for t in [fresh_postgres().await, fresh_sqlite().await] {
                let db = &t.db;
                set(
                    db,
                    "resources",
                    json!({"api": {"kinds": ["summarize"], "outage_probe": "provider",
                                   "on_trip": "pause_kinds", "pause_seconds": 60}}),
                )
                .await;
                let t0 = base();
                set_probe(db, "down", t0).await;
                let runs = govern(db, None, t0 + Duration::seconds(1))
                    .await
                    .expect("run");
                assert_eq!(runs[0].tripped.as_deref(), Some("pause_kinds"));
                let (stop, _) = workflow::emergency_stop_state(db).await.expect("stop");
                assert!(!stop.engaged);
                let pauses = workflow::paused_kinds(db).await.expect("pauses");
                assert_eq!(
                    pauses
                        .iter()
                        .map(|p| (p.kind.as_str(), p.source.as_str()))
                        .collect::<Vec<_>>(),
                    vec![("summarize", "resource:api")]
                );
                let runs = govern(db, None, t0 + Duration::seconds(2))
                    .await
                    .expect("run");
                assert_eq!(runs[0].tripped, None);
                // The pause runs its course; still down: paused again.
                govern(db, None, t0 + Duration::seconds(62))
                    .await
                    .expect("run");
                let runs = govern(db, None, t0 + Duration::seconds(63))
                    .await
                    .expect("run");
                assert_eq!(runs[0].tripped.as_deref(), Some("pause_kinds"));
                // Up again: the pause lifts after its course and stays lifted.
                set_probe(db, "up", t0 + Duration::seconds(64)).await;
                govern(db, None, t0 + Duration::seconds(124))
                    .await
                    .expect("run");
                let runs = govern(db, None, t0 + Duration::seconds(125))
                    .await
                    .expect("run");
                assert_eq!(runs[0].tripped, None);
                assert!(workflow::paused_kinds(db).await.expect("pauses").is_empty());
                t.cleanup().await;
            }
        }

        fn steps(n: usize) -> NewProposal {
            NewProposal {
                title: "calls api".into(),
                source: ProposalSource::Api,
                agent: "tester".into(),
                dedupe_key: None,
                steps: (0..n)
                    .map(|_| StepSpec {
                        kind: StepKind::parse("kind", "summarize").expect("kind"),
                        payload: json!({}),
                        max_attempts: Some(1),
                    })
                    .collect(),
                parallel: true,
                metadata: json!({}),
                trace_id: None,
            }
        }

        async fn fail_steps(db: &DatabaseConnection, n: usize, at: DateTime<Utc>) {
            // One mission each: a failed step fails its mission.
            for _ in 0..n {
                workflow::submit_proposal(db, steps(1), at)
                    .await
                    .expect("submit");
            }
            for i in 0..n {
                let kinds = [StepKind::parse("kind", "summarize").expect("kind")];
                let at = at + Duration::milliseconds(i as i64 * 10);
                let step = match workflow::claim_step(db, "w", &kinds, Some(60), at)
                    .await
                    .expect("claim")
                {
                    ClaimOutcome::Claimed(step) => step,
                    other => panic!("{other:?}"),
                };
                workflow::fail_step(db, step.id, "w", 1, "upstream 503", false, None, at)
                    .await
                    .expect("fail");
            }
        }

        #[tokio::test]
        async fn five_consecutive_failures_stop_once_and_three_alert() {
            for t in [fresh_postgres().await, fresh_sqlite().await] {
                let db = &t.db;
                set(db, "resources", json!({"api": {"kinds": ["summarize"]}})).await;
                let t0 = base();
                fail_steps(db, 3, t0).await;
                let runs = govern(db, None, t0 + Duration::seconds(1))
                    .await
                    .expect("run");
                assert_eq!(
                    runs[0].alerts,
                    vec!["ResourceConsecutiveFailures".to_owned()]
                );
                assert_eq!(runs[0].tripped, None);
                fail_steps(db, 2, t0 + Duration::seconds(2)).await;
                let runs = govern(db, None, t0 + Duration::seconds(3))
                    .await
                    .expect("run");
                assert_eq!(runs[0].tripped.as_deref(), Some("emergency_stop"));
                let (stop, _) = workflow::emergency_stop_state(db).await.expect("stop");
                let reason = stop.reason.expect("reason");
                assert!(
                    reason.contains("5 consecutive failed steps of summarize"),
                    "{reason}"
                );
                let runs = govern(db, None, t0 + Duration::seconds(4))
                    .await
                    .expect("run");
                assert_eq!(runs[0].tripped, None);
                let engaged = count(
                    db,
                    "SELECT COUNT(*) AS n FROM events WHERE kind = 'emergency_stop.engaged'",
                )
                .await;
                assert_eq!(engaged, 1);
                t.cleanup().await;
            }
        }

        #[tokio::test]
        async fn pause_kinds_pauses_only_the_resource_kinds_then_lifts() {
            let t = fresh_postgres().await;
            let db = &t.db;
            set(
                db,
                "resources",
                json!({"api": {"kinds": ["summarize"], "on_trip": "pause_kinds", "pause_seconds": 60}}),
            )
            .await;
            let t0 = base();
            fail_steps(db, 5, t0).await;
            let runs = govern(db, None, t0 + Duration::seconds(1))
                .await
                .expect("run");
            assert_eq!(runs[0].tripped.as_deref(), Some("pause_kinds"));
            let (stop, _) = workflow::emergency_stop_state(db).await.expect("stop");
            assert!(!stop.engaged);
            let pauses = workflow::paused_kinds(db).await.expect("pauses");
            assert_eq!(pauses.len(), 1);
            assert_eq!(
                (pauses[0].kind.as_str(), pauses[0].source.as_str()),
                ("summarize", "resource:api")
            );
            // Failures before the trip do not trip it again.
            let runs = govern(db, None, t0 + Duration::seconds(2))
                .await
                .expect("run");
            assert_eq!(runs[0].tripped, None);
            govern(db, None, t0 + Duration::seconds(62))
                .await
                .expect("run");
            assert!(workflow::paused_kinds(db).await.expect("pauses").is_empty());
            t.cleanup().await;
        }
    }
}
