//! The daily summary's body ([`daily_body`]: counts and the proposals
//! waiting for approval) and the weekly report's arithmetic: success rates overall and per step kind,
//! p50/p95 step duration, failures by reason, alerts by name, the SLIs
//! against their objectives (availability 99.9 %, p95 latency 500 ms, each
//! met or missed), MTTA/MTTR of the period's incidents, cost per kind
//! against the month's budget pro-rated over the period, calls and cost per
//! upstream resource and kind, and backup freshness, from plain rows. Pure,
//! no I/O.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};

/// The availability objective of every SLI.
pub const AVAILABILITY_OBJECTIVE: f64 = 0.999;
/// The p95 latency objective of every SLI with a latency, in milliseconds.
pub const LATENCY_P95_OBJECTIVE_MS: i64 = 500;

/// One SLI's raw figures over the period: good and total events, and the
/// latency samples when the records carry durations (`None`: the source
/// records no duration, so the report shows no latency for it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SliInput {
    pub name: String,
    /// What is counted, for readers: "mission steps finished", ….
    pub description: String,
    pub good: i64,
    pub total: i64,
    pub latencies_ms: Option<Vec<i64>>,
}

/// The period's incidents: when each opened, was acknowledged, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentTimes {
    pub opened_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// How the period's budget was derived.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub usd: f64,
    /// One line for readers, e.g. `monthly budget $800.00 pro-rated over 7
    /// days (30-day month)`.
    pub basis: String,
}

/// The month's budget pro-rated over `[start, end)`: each day (in `tz`)
/// counts `monthly_usd / days in its month`, weighted by the share of that
/// day inside the period, so 7 days from Monday 09:00 to Monday 09:00 are 7
/// days' worth, and a period spanning two months takes its share of each.
pub fn prorated_budget(
    monthly_usd: f64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    tz: Tz,
) -> Budget {
    use chrono::TimeZone;
    let midnight = |day: NaiveDate| {
        let local = day.and_hms_opt(0, 0, 0).unwrap_or_default();
        tz.from_local_datetime(&local)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            // A zone whose midnight does not exist that day: an hour later.
            .or_else(|| {
                tz.from_local_datetime(&(local + chrono::Duration::hours(1)))
                    .earliest()
                    .map(|t| t.with_timezone(&Utc))
            })
    };
    let mut usd = 0.0;
    let mut months: Vec<(i32, u32, u32)> = Vec::new();
    let mut cursor = start;
    let mut guard = 0;
    while cursor < end && guard < 400 {
        guard += 1;
        let day = cursor.with_timezone(&tz).date_naive();
        let next = day.succ_opt().unwrap_or(day);
        let (Some(day_start), Some(day_end)) = (midnight(day), midnight(next)) else {
            break;
        };
        let seg_end = day_end.min(end);
        let day_len = (day_end - day_start).num_milliseconds().max(1) as f64;
        let share = (seg_end - cursor).num_milliseconds() as f64 / day_len;
        let in_month = days_in_month(day.year(), day.month());
        usd += share * monthly_usd / f64::from(in_month);
        if !months
            .iter()
            .any(|(y, m, _)| (*y, *m) == (day.year(), day.month()))
        {
            months.push((day.year(), day.month(), in_month));
        }
        cursor = seg_end;
    }
    let days = (end - start).num_minutes() as f64 / 1440.0;
    let lengths: Vec<String> = months.iter().map(|(_, _, n)| format!("{n}-day")).collect();
    Budget {
        usd,
        basis: format!(
            "monthly budget ${monthly_usd:.2} pro-rated over {} days ({} {})",
            if days.fract() == 0.0 {
                format!("{days:.0}")
            } else {
                format!("{days:.1}")
            },
            lengths.join(" and "),
            if months.len() > 1 { "months" } else { "month" }
        ),
    }
}

/// Days in the month `month` of `year`.
pub fn days_in_month(year: i32, month: u32) -> u32 {
    let first = NaiveDate::from_ymd_opt(year, month, 1);
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    };
    match (first, next) {
        (Some(a), Some(b)) => (b - a).num_days() as u32,
        _ => 30,
    }
}

/// One finished step: kind, terminal status, duration, error.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedStep {
    pub kind: String,
    pub status: String,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
}

/// One upstream resource's calls and cost for one step kind over the
/// period (from `resource_usage`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceCost {
    pub resource: String,
    pub kind: String,
    pub calls: i64,
    pub cost_usd: f64,
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
    /// Cost per step kind (or event kind when no step), in USD.
    pub cost_by_kind: BTreeMap<String, f64>,
    /// Calls and cost per upstream resource and kind, by resource then kind.
    pub cost_by_resource: Vec<ResourceCost>,
    pub budget_usd: f64,
    /// How `budget_usd` was derived (empty: not stated).
    pub budget_basis: String,
    pub last_backup_at: Option<DateTime<Utc>>,
    pub slis: Vec<SliInput>,
    /// Incidents opened in the period.
    pub incidents: Vec<IncidentTimes>,
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

/// One SLI against the objectives: `{name, description, good, total,
/// availability: {value, objective, met}, latencyP95Ms: {value, objective,
/// met, samples} | null}`; `met` is null when there were no events.
pub fn sli_body(sli: &SliInput) -> Value {
    let availability = (sli.total > 0).then(|| sli.good as f64 / sli.total as f64);
    let latency = sli.latencies_ms.as_ref().map(|samples| {
        let mut sorted = samples.clone();
        sorted.sort_unstable();
        let p95 = percentile(&sorted, 0.95);
        json!({"value": p95, "objective": LATENCY_P95_OBJECTIVE_MS,
               "met": p95.map(|v| v <= LATENCY_P95_OBJECTIVE_MS), "samples": sorted.len()})
    });
    json!({
        "name": sli.name,
        "description": sli.description,
        "good": sli.good,
        "total": sli.total,
        "availability": {"value": availability, "objective": AVAILABILITY_OBJECTIVE,
                         "met": availability.map(|a| a >= AVAILABILITY_OBJECTIVE)},
        "latencyP95Ms": latency,
    })
}

fn mean_seconds(spans: impl Iterator<Item = chrono::Duration>) -> Option<f64> {
    let spans: Vec<f64> = spans
        .map(|d| d.num_milliseconds() as f64 / 1000.0)
        .collect();
    (!spans.is_empty()).then(|| spans.iter().sum::<f64>() / spans.len() as f64)
}

/// The period's incidents: counts, and MTTA/MTTR (mean seconds from open to
/// acknowledgement / resolution) over those acknowledged / resolved.
pub fn incidents_body(incidents: &[IncidentTimes]) -> Value {
    let acknowledged = incidents
        .iter()
        .filter_map(|i| i.acknowledged_at.map(|a| a - i.opened_at));
    let resolved = incidents
        .iter()
        .filter_map(|i| i.resolved_at.map(|r| r - i.opened_at));
    json!({
        "opened": incidents.len(),
        "acknowledged": incidents.iter().filter(|i| i.acknowledged_at.is_some()).count(),
        "resolved": incidents.iter().filter(|i| i.resolved_at.is_some()).count(),
        "mttaSeconds": mean_seconds(acknowledged),
        "mttrSeconds": mean_seconds(resolved),
    })
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
                 "budgetBasis": input.budget_basis, "byKind": input.cost_by_kind,
                 "byResource": input.cost_by_resource.iter().map(|r| json!({
                     "resource": r.resource, "kind": r.kind, "calls": r.calls, "usd": r.cost_usd,
                 })).collect::<Vec<_>>(),
                 "ratio": if input.budget_usd > 0.0 { json!(input.cost_usd / input.budget_usd) } else { Value::Null }},
        "slis": input.slis.iter().map(sli_body).collect::<Vec<_>>(),
        "incidents": incidents_body(&input.incidents),
        "backup": {"lastCompletedAt": input.last_backup_at,
                   "ageHours": input.last_backup_at.map(|t| (input.period_end - t).num_minutes() as f64 / 60.0)},
    })
}

/// A proposal waiting for approval, for the daily summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub id: uuid::Uuid,
    pub title: String,
    pub source: String,
    pub agent: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The daily summary's body (the `figures` annotation the alerter renders):
/// the counts of the period and `pendingApproval` — how many proposals wait
/// for a decision and the oldest of them with their console links.
pub fn daily_body(
    figures: &opsloop_core::workflow::SummaryFigures,
    pending_total: i64,
    oldest: &[Waiting],
    console_url: &str,
    now: DateTime<Utc>,
) -> Value {
    let console = console_url.trim_end_matches('/');
    let mut body = serde_json::to_value(figures).unwrap_or(Value::Null);
    body["pendingApproval"] = json!({
        "total": pending_total,
        "oldest": oldest.iter().map(|p| json!({
            "id": p.id, "title": p.title, "source": p.source, "agent": p.agent,
            "createdAt": p.created_at, "waitedMinutes": (now - p.created_at).num_minutes(),
            "url": format!("{console}/proposals/{}", p.id),
        })).collect::<Vec<_>>(),
        "consoleUrl": format!("{console}/proposals?status=pending"),
    });
    body
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
            cost_by_kind: [("draft".to_owned(), 100.0), ("post_x".to_owned(), 5.0)].into(),
            cost_by_resource: vec![ResourceCost {
                resource: "twitterapi".into(),
                kind: "post_x".into(),
                calls: 12_000,
                cost_usd: 1.8,
            }],
            budget_usd: 210.0,
            budget_basis: "monthly budget $900.00 pro-rated over 7 days (30-day month)".into(),
            last_backup_at: Some(now - chrono::Duration::hours(6)),
            slis: vec![SliInput {
                name: "steps".into(),
                description: "mission steps".into(),
                good: 2,
                total: 4,
                latencies_ms: Some(vec![100, 300, 200, 400]),
            }],
            incidents: Vec::new(),
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
        assert_eq!(body["cost"]["byKind"]["draft"], 100.0);
        assert_eq!(
            body["cost"]["byResource"],
            json!([{"resource": "twitterapi", "kind": "post_x", "calls": 12_000, "usd": 1.8}])
        );
        assert_eq!(body["slis"][0]["availability"]["value"], 0.5);
        assert_eq!(body["slis"][0]["availability"]["met"], false);
        assert_eq!(body["slis"][0]["latencyP95Ms"]["value"], 400);
        assert_eq!(body["slis"][0]["latencyP95Ms"]["met"], true);
        assert_eq!(body["incidents"]["opened"], 0);
        let empty = weekly_body(&WeeklyInput::default());
        assert!(empty["missions"]["successRate"].is_null());
        assert_eq!(empty["slis"], json!([]));
        assert_eq!(empty["incidents"]["opened"], 0);
        assert!(empty["incidents"]["mttaSeconds"].is_null());
        assert_eq!(empty["cost"]["byResource"], json!([]));
    }

    fn utc(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        use chrono::TimeZone;
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0)
            .single()
            .expect("valid")
    }

    #[test]
    fn the_budget_is_the_month_pro_rated_over_the_days() {
        // 7 days of a 30-day month: 800 × 7 / 30.
        let b = prorated_budget(
            800.0,
            utc(2026, 11, 9, 0),
            utc(2026, 11, 16, 0),
            chrono_tz::UTC,
        );
        assert!((b.usd - 800.0 * 7.0 / 30.0).abs() < 1e-9, "{}", b.usd);
        assert_eq!(
            b.basis,
            "monthly budget $800.00 pro-rated over 7 days (30-day month)"
        );
        // Across a month end: 3 November days (of 30) and 4 December days (of 31).
        let b = prorated_budget(
            800.0,
            utc(2026, 11, 28, 0),
            utc(2026, 12, 5, 0),
            chrono_tz::UTC,
        );
        let expected = 800.0 * 3.0 / 30.0 + 800.0 * 4.0 / 31.0;
        assert!((b.usd - expected).abs() < 1e-9, "{} vs {expected}", b.usd);
        assert!(
            b.basis.contains("7 days (30-day and 31-day months)"),
            "{}",
            b.basis
        );
        // February, and the period's days taken in the budget's zone:
        // 2027-02-28 15:00 UTC is already 2027-03-01 in Tokyo.
        let b = prorated_budget(
            280.0,
            utc(2027, 2, 21, 15),
            utc(2027, 2, 28, 15),
            chrono_tz::Asia::Tokyo,
        );
        assert!((b.usd - 70.0).abs() < 1e-9, "7 of 28 days: {}", b.usd);
        // Not aligned to midnight: Monday 09:00 to Monday 09:00 in Tokyo is
        // 7 days' worth, not 8 calendar days'.
        let b = prorated_budget(
            800.0,
            utc(2026, 11, 9, 0),
            utc(2026, 11, 16, 0),
            chrono_tz::Asia::Tokyo,
        );
        assert!((b.usd - 800.0 * 7.0 / 30.0).abs() < 1e-9, "{}", b.usd);
        // Across a month end at 09:00 Tokyo (00:00 UTC): 3.625 November
        // days, 3.375 December days.
        let b = prorated_budget(
            800.0,
            utc(2026, 11, 27, 0),
            utc(2026, 12, 4, 0),
            chrono_tz::Asia::Tokyo,
        );
        let expected = 800.0 * (4.0 - 9.0 / 24.0) / 30.0 + 800.0 * (3.0 + 9.0 / 24.0) / 31.0;
        assert!((b.usd - expected).abs() < 1e-9, "{} vs {expected}", b.usd);
        // A day with a DST change counts as one day: 2026-11-01 in New York
        // has 25 hours.
        let b = prorated_budget(
            300.0,
            utc(2026, 10, 29, 4),
            utc(2026, 11, 5, 5),
            chrono_tz::America::New_York,
        );
        let expected = 300.0 * 3.0 / 31.0 + 300.0 * 4.0 / 30.0;
        assert!((b.usd - expected).abs() < 1e-9, "{} vs {expected}", b.usd);
        assert_eq!(days_in_month(2028, 2), 29);
        assert_eq!(days_in_month(2026, 12), 31);
    }

    #[test]
    fn slis_are_met_or_missed_at_the_objective() {
        let sli = |good: i64, total: i64, latencies: Option<Vec<i64>>| {
            sli_body(&SliInput {
                name: "steps".into(),
                description: "d".into(),
                good,
                total,
                latencies_ms: latencies,
            })
        };
        assert_eq!(sli(999, 1000, None)["availability"]["met"], true);
        assert_eq!(sli(998, 1000, None)["availability"]["met"], false);
        assert!(
            sli(0, 0, None)["availability"]["met"].is_null(),
            "no events: no verdict"
        );
        assert!(
            sli(1, 1, None)["latencyP95Ms"].is_null(),
            "no latency source"
        );
        let at_objective: Vec<i64> = (0..100).map(|i| if i < 95 { 500 } else { 9000 }).collect();
        let body = sli(1, 1, Some(at_objective));
        assert_eq!(body["latencyP95Ms"]["value"], 500);
        assert_eq!(body["latencyP95Ms"]["met"], true);
        let over: Vec<i64> = (0..100).map(|i| if i < 94 { 10 } else { 501 }).collect();
        assert_eq!(sli(1, 1, Some(over))["latencyP95Ms"]["met"], false);
        assert!(sli(1, 1, Some(Vec::new()))["latencyP95Ms"]["met"].is_null());
    }

    #[test]
    fn mtta_and_mttr_average_the_acknowledged_and_resolved() {
        let t = utc(2026, 11, 20, 0);
        let m = chrono::Duration::minutes;
        let body = incidents_body(&[
            IncidentTimes {
                opened_at: t,
                acknowledged_at: Some(t + m(2)),
                resolved_at: Some(t + m(30)),
            },
            IncidentTimes {
                opened_at: t,
                acknowledged_at: Some(t + m(4)),
                resolved_at: None,
            },
            IncidentTimes {
                opened_at: t,
                acknowledged_at: None,
                resolved_at: None,
            },
        ]);
        assert_eq!(body["opened"], 3);
        assert_eq!(body["acknowledged"], 2);
        assert_eq!(body["resolved"], 1);
        assert_eq!(body["mttaSeconds"], 180.0);
        assert_eq!(body["mttrSeconds"], 1800.0);
    }

    /// Where a body's keys are data (kinds, statuses, reasons, names), not
    /// fields: only the value's type is compared there.
    const DATA_KEYED: [&str; 6] = [
        "stepsByKind",
        "byStatus",
        "failuresByReason",
        "byName",
        "byKind",
        "proposals",
    ];

    /// `actual` has the keys and value types of `expected`, recursively.
    fn assert_same_shape(expected: &Value, actual: &Value, path: &str) {
        match (expected, actual) {
            (Value::Object(e), Value::Object(a)) => {
                let ek: std::collections::BTreeSet<_> = e.keys().collect();
                let ak: std::collections::BTreeSet<_> = a.keys().collect();
                assert_eq!(ek, ak, "keys of {path}");
                for (k, v) in e {
                    if !DATA_KEYED.contains(&k.as_str()) {
                        assert_same_shape(v, &a[k], &format!("{path}.{k}"));
                    }
                }
            }
            (Value::Array(e), Value::Array(a)) => {
                assert_eq!(e.len(), a.len(), "length of {path}");
                for (i, (e, a)) in e.iter().zip(a).enumerate() {
                    assert_same_shape(e, a, &format!("{path}[{i}]"));
                }
            }
            (Value::Number(_), Value::Number(_))
            | (Value::String(_), Value::String(_))
            | (Value::Bool(_), Value::Bool(_))
            | (Value::Null, Value::Null) => {}
            (e, a) => panic!("{path}: expected the type of {e}, got {a}"),
        }
    }

    /// The alerter renders reports from a fixture of this body: the body
    /// the heartbeat writes must keep that fixture's shape (and the daily
    /// figures theirs), so the rendering tests test real bodies.
    #[test]
    fn bodies_keep_the_shape_the_alerter_renders() {
        let fixture: Value = serde_json::from_str(include_str!(
            "../../alerter/src/receivers/testdata/weekly_report.json"
        ))
        .expect("fixture");
        let t = utc(2026, 11, 16, 0);
        let step = |kind: &str, status: &str| FinishedStep {
            kind: kind.into(),
            status: status.into(),
            duration_ms: Some(820),
            error: (status == "failed").then(|| "timeout".to_owned()),
        };
        let sli = |name: &str, latency: bool| SliInput {
            name: name.into(),
            description: "d".into(),
            good: 9,
            total: 9,
            latencies_ms: latency.then(|| vec![130]),
        };
        let input = WeeklyInput {
            period_start: t,
            period_end: t + chrono::Duration::days(7),
            missions: [("succeeded".to_owned(), 38), ("failed".to_owned(), 2)].into(),
            steps: vec![step("analyze", "succeeded"), step("draft", "failed")],
            alerts: vec!["OpsFailureSpike".into()],
            cost_usd: 105.5,
            cost_by_kind: [("analyze".to_owned(), 80.25)].into(),
            cost_by_resource: vec![
                ResourceCost {
                    resource: "llm".into(),
                    kind: "analyze".into(),
                    calls: 310,
                    cost_usd: 80.25,
                },
                ResourceCost {
                    resource: "twitterapi".into(),
                    kind: "post_x".into(),
                    calls: 12_000,
                    cost_usd: 1.8,
                },
            ],
            budget_usd: 186.67,
            budget_basis: "b".into(),
            last_backup_at: Some(t),
            slis: vec![
                sli("steps", true),
                sli("heartbeat", true),
                sli("alert_delivery", false),
            ],
            incidents: vec![IncidentTimes {
                opened_at: t,
                acknowledged_at: Some(t + chrono::Duration::minutes(4)),
                resolved_at: Some(t + chrono::Duration::minutes(90)),
            }],
        };
        assert_same_shape(&fixture, &weekly_body(&input), "weekly");

        let daily: Value = serde_json::from_str(include_str!(
            "../../alerter/src/receivers/testdata/daily_summary.json"
        ))
        .expect("fixture");
        let figures = opsloop_core::workflow::SummaryFigures {
            period: opsloop_core::workflow::SummaryPeriod::Daily,
            since: t,
            proposals: [("approved".to_owned(), 4)].into(),
            missions: [("succeeded".to_owned(), 3)].into(),
            steps: [("succeeded".to_owned(), 9)].into(),
            total_events: 57,
            generated_at: t,
        };
        let waiting = Waiting {
            id: uuid::Uuid::nil(),
            title: "post the weekly digest".into(),
            source: "agent".into(),
            agent: Some("writer".into()),
            created_at: t - chrono::Duration::minutes(200),
        };
        let figures = daily_body(&figures, 1, &[waiting], "https://ops.example/console/", t);
        assert_eq!(
            figures["pendingApproval"]["oldest"][0]["waitedMinutes"],
            200
        );
        assert_eq!(
            figures["pendingApproval"]["consoleUrl"],
            "https://ops.example/console/proposals?status=pending"
        );
        let mut expected = daily.clone();
        for key in ["missions", "steps"] {
            // Data-keyed too (statuses).
            expected[key] = figures[key].clone();
        }
        assert_same_shape(&expected, &figures, "daily");
    }
}
