//! The weekly report's arithmetic: success rates overall and per step kind,
//! p50/p95 step duration, failures by reason, alerts by name, cost against
//! budget and backup freshness, from plain rows. Pure, no I/O.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// One finished step: kind, terminal status, duration, error.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedStep {
    pub kind: String,
    pub status: String,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
}

/// Everything the weekly report is computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeeklyInput {
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// Missions finished in the period by status.
    pub missions: BTreeMap<String, i64>,
    pub steps: Vec<FinishedStep>,
    /// Alert names raised in the period.
    pub alerts: Vec<String>,
    pub cost_usd: f64,
    pub budget_usd: f64,
    pub last_backup_at: Option<DateTime<Utc>>,
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank.
pub fn percentile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn rate(ok: i64, total: i64) -> Value {
    if total == 0 {
        Value::Null
    } else {
        json!(ok as f64 / total as f64)
    }
}

/// The report body (stored in `reports` and sent as `OpsWeeklyReport`).
pub fn weekly_body(input: &WeeklyInput) -> Value {
    let m = |k: &str| input.missions.get(k).copied().unwrap_or(0);
    let finished = m("succeeded") + m("failed") + m("cancelled");
    let mut per_kind: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    let mut failures: BTreeMap<String, i64> = BTreeMap::new();
    let mut durations: Vec<i64> = Vec::new();
    for step in &input.steps {
        let entry = per_kind.entry(step.kind.as_str()).or_default();
        entry.1 += 1;
        if step.status == "succeeded" {
            entry.0 += 1;
        } else {
            let reason = step.error.clone().unwrap_or_else(|| "unknown".into());
            let reason: String = reason.chars().take(120).collect();
            *failures.entry(reason).or_default() += 1;
        }
        if let Some(d) = step.duration_ms {
            durations.push(d);
        }
    }
    durations.sort_unstable();
    let mut alerts: BTreeMap<&str, i64> = BTreeMap::new();
    for name in &input.alerts {
        *alerts.entry(name.as_str()).or_default() += 1;
    }
    json!({
        "periodStart": input.period_start,
        "periodEnd": input.period_end,
        "missions": {"finished": finished, "byStatus": input.missions,
                     "successRate": rate(m("succeeded"), finished)},
        "stepsByKind": per_kind.iter().map(|(k, (ok, total))| (k.to_string(),
            json!({"finished": total, "succeeded": ok, "successRate": rate(*ok, *total)})))
            .collect::<serde_json::Map<String, Value>>(),
        "stepDurationMs": {"p50": percentile(&durations, 0.5), "p95": percentile(&durations, 0.95),
                           "samples": durations.len()},
        "failuresByReason": failures,
        "alertsFired": {"total": input.alerts.len(), "byName": alerts},
        "cost": {"usd": input.cost_usd, "budgetUsd": input.budget_usd,
                 "ratio": if input.budget_usd > 0.0 { json!(input.cost_usd / input.budget_usd) } else { Value::Null }},
        "backup": {"lastCompletedAt": input.last_backup_at,
                   "ageHours": input.last_backup_at.map(|t| (input.period_end - t).num_minutes() as f64 / 60.0)},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.95), Some(95));
        assert_eq!(percentile(&[7], 0.95), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn weekly_body_figures() {
        let now = Utc::now();
        let step = |kind: &str, status: &str, d: i64, error: Option<&str>| FinishedStep {
            kind: kind.into(),
            status: status.into(),
            duration_ms: Some(d),
            error: error.map(str::to_owned),
        };
        let input = WeeklyInput {
            period_start: now - chrono::Duration::days(7),
            period_end: now,
            missions: [("succeeded".to_owned(), 3), ("failed".to_owned(), 1)].into(),
            steps: vec![
                step("draft", "succeeded", 100, None),
                step("draft", "failed", 300, Some("timeout")),
                step("post_x", "failed", 200, Some("timeout")),
                step("post_x", "succeeded", 400, None),
            ],
            alerts: vec!["OpsFailureSpike".into(), "OpsFailureSpike".into()],
            cost_usd: 105.0,
            budget_usd: 210.0,
            last_backup_at: Some(now - chrono::Duration::hours(6)),
        };
        let body = weekly_body(&input);
        assert_eq!(body["missions"]["successRate"], 0.75);
        assert_eq!(body["stepsByKind"]["draft"]["successRate"], 0.5);
        assert_eq!(body["stepDurationMs"]["p50"], 200);
        assert_eq!(body["stepDurationMs"]["p95"], 400);
        assert_eq!(body["failuresByReason"]["timeout"], 2);
        assert_eq!(body["alertsFired"]["byName"]["OpsFailureSpike"], 2);
        assert_eq!(body["cost"]["ratio"], 0.5);
        assert_eq!(body["backup"]["ageHours"], 6.0);
        let empty = weekly_body(&WeeklyInput::default());
        assert!(empty["missions"]["successRate"].is_null());
    }
}
