//! The periodic reports the heartbeat-worker sends as alerts
//! (`OpsDailySummary` with its `figures` annotation, `OpsWeeklyReport` with
//! its `report` annotation, both JSON) read as a [`ReportView`]: a title,
//! the headline, sections of named figures, links and a footer. Slack and
//! Discord render the view in their own shapes (and limits); a notification
//! that is not a report, or whose JSON does not parse, is rendered as any
//! other alert.

use serde_json::Value;

use super::link;
use crate::group::Notification;
use crate::model::Alert;

pub const DAILY: &str = "OpsDailySummary";
pub const WEEKLY: &str = "OpsWeeklyReport";

/// One block of figures: a heading, free lines, and `(name, value)` fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Section {
    pub heading: String,
    pub lines: Vec<String>,
    pub fields: Vec<(String, String)>,
}

/// A report, ready to be laid out by a receiver.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportView {
    pub title: String,
    pub headline: String,
    pub sections: Vec<Section>,
    /// `(label, absolute URL)`.
    pub links: Vec<(String, String)>,
    pub footer: String,
}

/// The report in `n`, when it carries one: the newest firing report alert.
pub fn view(n: &Notification) -> Option<ReportView> {
    let reports: Vec<&Alert> = n
        .firing
        .iter()
        .filter(|a| matches!(a.name(), DAILY | WEEKLY))
        .collect();
    let newest = reports.iter().max_by_key(|a| a.starts_at)?;
    let mut view = match newest.name() {
        WEEKLY => weekly(newest)?,
        _ => daily(newest)?,
    };
    if let Some((label, url)) = link(newest) {
        view.links.push((label.to_owned(), url));
    }
    let mut footer = Vec::new();
    if let Some(command) = newest.annotations.get("command") {
        footer.push(format!("Full figures: `{command}`"));
    }
    if reports.len() > 1 {
        footer.push(format!(
            "{} earlier report(s) in this group not shown",
            reports.len() - 1
        ));
    }
    view.footer = footer.join(" · ");
    Some(view)
}

fn headline(alert: &Alert) -> String {
    alert
        .annotations
        .get("summary")
        .cloned()
        .unwrap_or_default()
}

fn json_annotation(alert: &Alert, key: &str) -> Option<Value> {
    let text = alert.annotations.get(key)?;
    serde_json::from_str::<Value>(text)
        .ok()
        .filter(Value::is_object)
}

/// `0.9995` → `99.95 %`.
pub fn percent(ratio: f64) -> String {
    let p = ratio * 100.0;
    if (99.0..100.0).contains(&p) {
        format!("{p:.2} %")
    } else {
        format!("{p:.1} %")
    }
}

/// Milliseconds for people: `480 ms`, `1.2 s`, `3 min`.
pub fn millis(ms: i64) -> String {
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{:.0} min", ms as f64 / 60_000.0)
    }
}

/// Seconds for people: `45 s`, `12 min`, `2.5 h`.
pub fn seconds(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.0} s")
    } else if s < 3600.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

fn usd(v: &Value) -> String {
    format!("${:.2}", v.as_f64().unwrap_or(0.0))
}

fn verdict(met: &Value) -> &'static str {
    match met.as_bool() {
        Some(true) => "✅ met",
        Some(false) => "❌ missed",
        None => "➖ no data",
    }
}

/// `{status: count}` as `status: count` pairs, largest first.
fn counts(map: &Value) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = map
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(0)))
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

fn daily(alert: &Alert) -> Option<ReportView> {
    let f = json_annotation(alert, "figures")?;
    let since = f["since"].as_str().unwrap_or_default();
    let mut sections = Vec::new();
    for (heading, key) in [
        ("Proposals", "proposals"),
        ("Missions", "missions"),
        ("Steps", "steps"),
    ] {
        let fields: Vec<(String, String)> = counts(&f[key])
            .into_iter()
            .map(|(status, n)| (status, n.to_string()))
            .collect();
        let total: i64 = counts(&f[key]).iter().map(|(_, n)| n).sum();
        sections.push(Section {
            heading: format!("{heading} ({total})"),
            lines: Vec::new(),
            fields,
        });
    }
    sections.push(Section {
        heading: "Events".into(),
        lines: vec![format!(
            "{} events recorded",
            f["totalEvents"].as_i64().unwrap_or(0)
        )],
        fields: Vec::new(),
    });
    // Calls and cost per upstream resource (its own annotation).
    let per_resource = alert
        .annotations
        .get("cost_by_resource")
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .map(|rows| resource_cost_lines(&rows, "cost_usd"))
        .unwrap_or_default();
    if !per_resource.is_empty() {
        sections.push(Section {
            heading: "Upstream calls and cost".into(),
            lines: per_resource,
            fields: Vec::new(),
        });
    }
    let mut links = Vec::new();
    let pending = &f["pendingApproval"];
    if let Some(total) = pending["total"].as_i64().filter(|n| *n > 0) {
        let lines = pending["oldest"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{} · {} · waiting {} · {}",
                    p["title"].as_str().unwrap_or("?"),
                    p["source"].as_str().unwrap_or("?"),
                    waited(p["waitedMinutes"].as_i64().unwrap_or(0)),
                    p["url"].as_str().unwrap_or_default()
                )
            })
            .collect();
        sections.push(Section {
            heading: format!("Waiting for approval ({total})"),
            lines,
            fields: Vec::new(),
        });
        if let Some(url) = pending["consoleUrl"].as_str() {
            links.push(("Pending proposals".to_owned(), url.to_owned()));
        }
    }
    Some(ReportView {
        title: format!("📋 Daily summary · since {}", short_time(since)),
        headline: headline(alert),
        sections,
        links,
        ..ReportView::default()
    })
}

/// Most resource × kind rows a report lists (the costliest).
const MAX_RESOURCE_ROWS: usize = 8;

/// Rows `{resource, kind, calls, <usd_key>}` as lines, costliest first:
/// `` `twitterapi` · post_x: 12000 calls, $1.80 ``.
fn resource_cost_lines(rows: &Value, usd_key: &str) -> Vec<String> {
    let mut rows: Vec<(String, String, i64, f64)> = rows
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["resource"].as_str().unwrap_or("?").to_owned(),
                r["kind"].as_str().unwrap_or("?").to_owned(),
                r["calls"].as_i64().unwrap_or(0),
                r[usd_key].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    rows.sort_by(|a, b| {
        b.3.total_cmp(&a.3)
            .then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1)))
    });
    let mut lines: Vec<String> = rows
        .iter()
        .take(MAX_RESOURCE_ROWS)
        .map(|(resource, kind, calls, usd)| {
            format!("`{resource}` · {kind}: {calls} calls, ${usd:.2}")
        })
        .collect();
    if rows.len() > MAX_RESOURCE_ROWS {
        lines.push(format!(
            "…and {} more resource and kind pairs",
            rows.len() - MAX_RESOURCE_ROWS
        ));
    }
    lines
}

/// Minutes as `45 min`, `5 h 20 min` or `3 d 4 h`.
fn waited(minutes: i64) -> String {
    match minutes {
        m if m < 60 => format!("{m} min"),
        m if m < 24 * 60 => format!("{} h {} min", m / 60, m % 60),
        m => format!("{} d {} h", m / (24 * 60), m % (24 * 60) / 60),
    }
}

/// `2026-11-23T06:00:00Z` → `2026-11-23 06:00 UTC` (as given when odd).
fn short_time(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%d %H:%M UTC")
                .to_string()
        })
        .unwrap_or_else(|_| rfc3339.to_owned())
}

fn short_date(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|_| rfc3339.to_owned())
}

fn weekly(alert: &Alert) -> Option<ReportView> {
    let b = json_annotation(alert, "report")?;
    let mut sections = Vec::new();

    // Service level objectives, one field per SLI and objective.
    let mut slo = Section {
        heading: "Service level objectives".into(),
        ..Section::default()
    };
    for sli in b["slis"].as_array().into_iter().flatten() {
        let name = sli["name"].as_str().unwrap_or("sli");
        let a = &sli["availability"];
        let value = a["value"]
            .as_f64()
            .map(percent)
            .unwrap_or_else(|| "no events".into());
        slo.fields.push((
            format!("{name} availability"),
            format!(
                "{value} of {} (objective {}) {}",
                sli["total"].as_i64().unwrap_or(0),
                percent(a["objective"].as_f64().unwrap_or(0.999)),
                verdict(&a["met"])
            ),
        ));
        let l = &sli["latencyP95Ms"];
        if l.is_object() {
            let value = l["value"]
                .as_i64()
                .map(millis)
                .unwrap_or_else(|| "no samples".into());
            slo.fields.push((
                format!("{name} p95 latency"),
                format!(
                    "{value} (objective {}) {}",
                    millis(l["objective"].as_i64().unwrap_or(500)),
                    verdict(&l["met"])
                ),
            ));
        } else {
            slo.lines
                .push(format!("{name}: no latency is recorded for this SLI"));
        }
    }
    if !slo.fields.is_empty() || !slo.lines.is_empty() {
        sections.push(slo);
    }

    // Missions and steps.
    let mut work = Section {
        heading: "Missions and steps".into(),
        ..Section::default()
    };
    let m = &b["missions"];
    work.fields.push((
        "Missions finished".into(),
        format!(
            "{} (success {})",
            m["finished"].as_i64().unwrap_or(0),
            m["successRate"]
                .as_f64()
                .map(percent)
                .unwrap_or_else(|| "n/a".into())
        ),
    ));
    let d = &b["stepDurationMs"];
    if let (Some(p50), Some(p95)) = (d["p50"].as_i64(), d["p95"].as_i64()) {
        work.fields.push((
            "Step duration".into(),
            format!("p50 {} · p95 {}", millis(p50), millis(p95)),
        ));
    }
    for (kind, stats) in b["stepsByKind"].as_object().into_iter().flatten() {
        work.lines.push(format!(
            "`{kind}`: {} of {} succeeded",
            stats["succeeded"].as_i64().unwrap_or(0),
            stats["finished"].as_i64().unwrap_or(0)
        ));
    }
    let failures = counts(&b["failuresByReason"]);
    for (reason, n) in failures.iter().take(5) {
        work.lines.push(format!("failed ×{n}: {reason}"));
    }
    if failures.len() > 5 {
        work.lines
            .push(format!("…and {} more failure reasons", failures.len() - 5));
    }
    sections.push(work);

    // Incidents: MTTA/MTTR only when there were any.
    let i = &b["incidents"];
    let opened = i["opened"].as_i64().unwrap_or(0);
    let mut incidents = Section {
        heading: "Incidents".into(),
        ..Section::default()
    };
    if opened > 0 {
        incidents.fields.push((
            "Opened".into(),
            format!(
                "{opened} ({} acknowledged, {} resolved)",
                i["acknowledged"].as_i64().unwrap_or(0),
                i["resolved"].as_i64().unwrap_or(0)
            ),
        ));
        for (name, key) in [("MTTA", "mttaSeconds"), ("MTTR", "mttrSeconds")] {
            let value = i[key]
                .as_f64()
                .map(seconds)
                .unwrap_or_else(|| "none yet".into());
            incidents.fields.push((name.into(), value));
        }
    } else {
        incidents.lines.push("No incident was opened.".into());
    }
    sections.push(incidents);

    // Cost against the pro-rated budget, then per kind.
    let c = &b["cost"];
    let mut cost = Section {
        heading: "Cost".into(),
        ..Section::default()
    };
    cost.fields.push((
        "Spent".into(),
        match c["ratio"].as_f64() {
            Some(r) => format!(
                "{} of {} ({})",
                usd(&c["usd"]),
                usd(&c["budgetUsd"]),
                percent(r)
            ),
            None => format!("{} (no budget)", usd(&c["usd"])),
        },
    ));
    let mut kinds: Vec<(String, f64)> = c["byKind"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0)))
        .collect();
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    for (kind, spent) in kinds {
        cost.fields.push((kind, format!("${spent:.2}")));
    }
    cost.lines
        .extend(resource_cost_lines(&c["byResource"], "usd"));
    if let Some(basis) = c["budgetBasis"].as_str().filter(|s| !s.is_empty()) {
        cost.lines.push(format!("Budget: {basis}"));
    }
    sections.push(cost);

    // Alerts and backups.
    let mut other = Section {
        heading: "Alerts and backups".into(),
        ..Section::default()
    };
    let fired = counts(&b["alertsFired"]["byName"]);
    other.fields.push((
        "Alerts fired".into(),
        format!("{}", b["alertsFired"]["total"].as_i64().unwrap_or(0)),
    ));
    other.fields.push((
        "Last good backup".into(),
        match b["backup"]["ageHours"].as_f64() {
            Some(h) => format!("{h:.1} h before the period's end"),
            None => "none".into(),
        },
    ));
    for (name, n) in fired.iter().take(5) {
        other.lines.push(format!("`{name}` ×{n}"));
    }
    if fired.len() > 5 {
        other
            .lines
            .push(format!("…and {} more alert names", fired.len() - 5));
    }
    sections.push(other);

    Some(ReportView {
        title: format!(
            "📊 Weekly report · {} → {}",
            short_date(b["periodStart"].as_str().unwrap_or_default()),
            short_date(b["periodEnd"].as_str().unwrap_or_default())
        ),
        headline: headline(alert),
        sections,
        ..ReportView::default()
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::LabelSet;
    use crate::model::tests::{alert, at};

    /// A weekly report body as the heartbeat-worker writes it (the
    /// heartbeat-worker's tests check its bodies have this file's shape).
    pub(crate) fn weekly_body() -> Value {
        serde_json::from_str(include_str!("testdata/weekly_report.json")).expect("fixture")
    }

    /// The same shape with everything oversized: 300 step kinds and cost
    /// kinds with long names, 300 long failure reasons, a long headline.
    pub(crate) fn oversized_weekly_body() -> Value {
        let mut b = weekly_body();
        let long = "k".repeat(900);
        let mut kinds = serde_json::Map::new();
        let mut cost = serde_json::Map::new();
        let mut reasons = serde_json::Map::new();
        let mut slis = Vec::new();
        for i in 0..300 {
            kinds.insert(
                format!("{long}{i}"),
                json!({"finished": 5, "succeeded": 4, "successRate": 0.8}),
            );
            cost.insert(format!("{long}{i}"), json!(i as f64));
            reasons.insert(format!("{} {i}", "r".repeat(3000)), json!(i));
            slis.push(json!({"name": format!("{long}{i}"), "good": 1, "total": 2,
                "availability": {"value": 0.5, "objective": 0.999, "met": false},
                "latencyP95Ms": {"value": 900, "objective": 500, "met": false}}));
        }
        b["stepsByKind"] = Value::Object(kinds);
        b["cost"]["byKind"] = Value::Object(cost);
        b["cost"]["byResource"] = Value::Array(
            (0..300)
                .map(|i| json!({"resource": format!("{long}{i}"), "kind": long, "calls": i, "usd": f64::from(i)}))
                .collect(),
        );
        b["cost"]["budgetBasis"] = json!("b".repeat(5000));
        b["failuresByReason"] = Value::Object(reasons);
        b["slis"] = Value::Array(slis);
        b
    }

    /// A notification holding the weekly report `body`.
    pub(crate) fn weekly_notification(body: &Value, summary: &str) -> Notification {
        let mut a = alert(
            &[
                ("alertname", WEEKLY),
                ("severity", "info"),
                ("service", "heartbeat-worker"),
                ("period", "2026-11-23"),
            ],
            0,
        );
        a.annotations.insert("summary".into(), summary.into());
        a.annotations.insert(
            "description".into(),
            "Weekly operations report 2026-11-16 to 2026-11-23".into(),
        );
        a.annotations.insert("report".into(), body.to_string());
        a.annotations.insert(
            "command".into(),
            "opsloop report weekly --week-of 2026-11-16".into(),
        );
        a.annotations.insert(
            "runbook_url".into(),
            "https://runbooks.example/opsloop/runbook.md#weekly-report".into(),
        );
        Notification::new(
            "summary",
            "{}:{alertname=\"OpsWeeklyReport\"}",
            LabelSet::new(),
            vec![a],
            Vec::new(),
            at(1),
        )
    }

    /// A notification holding a daily summary as the heartbeat writes it.
    pub(crate) fn daily_notification() -> Notification {
        let figures: Value =
            serde_json::from_str(include_str!("testdata/daily_summary.json")).expect("fixture");
        let mut a = alert(
            &[
                ("alertname", DAILY),
                ("severity", "info"),
                ("service", "heartbeat-worker"),
            ],
            0,
        );
        a.annotations.insert(
            "summary".into(),
            "last 24 h: 5 proposals, 3 missions succeeded, 1 failed, 57 events".into(),
        );
        a.annotations.insert("figures".into(), figures.to_string());
        // As the heartbeat writes it (ops::daily_summary).
        a.annotations.insert(
            "cost_by_resource".into(),
            r#"[{"resource": "twitterapi", "kind": "post_x", "calls": 400, "cost_usd": 0.06}]"#
                .into(),
        );
        a.annotations
            .insert("command".into(), "opsloop summary --period daily".into());
        Notification::new(
            "summary",
            "{}:{alertname=\"OpsDailySummary\"}",
            LabelSet::new(),
            vec![a],
            Vec::new(),
            at(1),
        )
    }

    #[test]
    fn the_weekly_view_marks_objectives_and_shows_mtta_mttr() {
        let v = view(&weekly_notification(&weekly_body(), "week to 2026-11-23")).expect("report");
        assert_eq!(v.title, "📊 Weekly report · 2026-11-16 → 2026-11-23");
        let field = |name: &str| {
            v.sections
                .iter()
                .flat_map(|s| &s.fields)
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no field {name}: {v:?}"))
        };
        assert_eq!(
            field("steps availability"),
            "95.2 % of 42 (objective 99.90 %) ❌ missed"
        );
        assert_eq!(
            field("heartbeat p95 latency"),
            "130 ms (objective 500 ms) ✅ met"
        );
        assert_eq!(field("MTTA"), "4 min");
        assert_eq!(field("MTTR"), "1.5 h");
        assert_eq!(field("Spent"), "$105.50 of $186.67 (56.5 %)");
        assert_eq!(field("analyze"), "$80.25");
        let cost = v
            .sections
            .iter()
            .find(|s| s.heading == "Cost")
            .expect("cost");
        assert_eq!(
            cost.lines[..2],
            [
                "`llm` · analyze: 310 calls, $80.25",
                "`twitterapi` · post_x: 12000 calls, $1.80"
            ]
        );
        let lines: Vec<&String> = v.sections.iter().flat_map(|s| &s.lines).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.as_str() == "alert_delivery: no latency is recorded for this SLI")
        );
        assert!(lines.iter().any(|l| l.contains("pro-rated over 7 days")));
        assert_eq!(
            v.footer,
            "Full figures: `opsloop report weekly --week-of 2026-11-16`"
        );
        assert_eq!(v.links[0].0, "Runbook");

        // No incidents: no MTTA/MTTR, a line saying so.
        let mut quiet = weekly_body();
        quiet["incidents"] = json!({"opened": 0, "acknowledged": 0, "resolved": 0,
                                    "mttaSeconds": null, "mttrSeconds": null});
        let v = view(&weekly_notification(&quiet, "s")).expect("report");
        let incidents = v
            .sections
            .iter()
            .find(|s| s.heading == "Incidents")
            .expect("incidents");
        assert!(incidents.fields.is_empty());
        assert_eq!(incidents.lines, ["No incident was opened."]);
    }

    #[test]
    fn what_is_not_a_report_is_not_viewed_as_one() {
        assert!(view(&crate::receivers::tests::small()).is_none());
        let mut n = weekly_notification(&weekly_body(), "s");
        n.firing[0]
            .annotations
            .insert("report".into(), "{not json".into());
        assert!(view(&n).is_none(), "unparsable: rendered as an alert");
        let daily = view(&daily_notification()).expect("daily");
        assert_eq!(daily.title, "📋 Daily summary · since 2026-11-22 06:00 UTC");
        assert_eq!(daily.sections[0].heading, "Proposals (5)");
        assert_eq!(daily.sections[0].fields[0], ("approved".into(), "4".into()));
        let upstream = daily
            .sections
            .iter()
            .find(|s| s.heading == "Upstream calls and cost")
            .expect("upstream section");
        assert_eq!(upstream.lines, ["`twitterapi` · post_x: 400 calls, $0.06"]);
        let waiting = daily.sections.last().expect("a section");
        assert_eq!(waiting.heading, "Waiting for approval (1)");
        assert_eq!(
            waiting.lines,
            ["post the weekly digest · agent · waiting 3 h 20 min · \
              https://ops.example/console/proposals/0193b2a4-0000-7000-8000-000000000001"]
        );
        assert_eq!(
            daily.links,
            [(
                "Pending proposals".to_owned(),
                "https://ops.example/console/proposals?status=pending".to_owned()
            )]
        );
        assert_eq!(waited(45), "45 min");
        assert_eq!(waited(3 * 24 * 60 + 4 * 60 + 5), "3 d 4 h");
    }

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(percent(0.9995), "99.95 %");
        assert_eq!(percent(0.5), "50.0 %");
        assert_eq!(percent(1.0), "100.0 %");
        assert_eq!(millis(480), "480 ms");
        assert_eq!(millis(1300), "1.3 s");
        assert_eq!(millis(180_000), "3 min");
        assert_eq!(seconds(45.0), "45 s");
        assert_eq!(seconds(720.0), "12 min");
        assert_eq!(seconds(9000.0), "2.5 h");
    }

    #[test]
    fn resource_cost_lines_list_the_costliest_first_and_cap() {
        let rows: Vec<Value> = (0..10)
            .map(|i| json!({"resource": format!("r{i}"), "kind": "k", "calls": i, "usd": f64::from(i)}))
            .collect();
        let lines = resource_cost_lines(&Value::Array(rows), "usd");
        assert_eq!(lines.len(), MAX_RESOURCE_ROWS + 1);
        assert_eq!(lines[0], "`r9` · k: 9 calls, $9.00");
        assert_eq!(
            lines[MAX_RESOURCE_ROWS],
            "…and 2 more resource and kind pairs"
        );
        assert!(resource_cost_lines(&Value::Null, "usd").is_empty());
    }
}
