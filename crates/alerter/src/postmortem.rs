//! An incident after the fact: its full timeline (the incident's own log
//! merged with the loop's events a reviewer needs — emergency stop, policy
//! changes, failed and recovered missions, backups, deploy markers, alerts),
//! the Markdown postmortem draft written from it (docs/postmortem-template.md
//! with everything the system knows filled in), the P3 reminder for a P0/P1
//! left without a postmortem 5 business days after resolution, and the
//! figures (MTTA, MTTR, response-target breaches per level, pages per
//! person) for `/metrics`, reports and `opsloop incident stats`.
//!
//! The pure part — choosing events, summarising rows, merging, impact,
//! figures and rendering — takes plain data and is table-tested below; the
//! `impl IncidentManager` block at the end does the reads and writes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};
use opsloop_core::store::entities::{alerts, events};
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::incident::{Level, Levels, ResponseTime, State};
use crate::incidents::entities::{incident_log, incidents};
use crate::incidents::{Incident, IncidentError, IncidentManager, TimelineEntry};
use crate::model::LabelSet;

/// How far before the incident opened the timeline starts: what led up to
/// the first alert (a deploy, a policy change) is usually the story.
pub const DEFAULT_LEAD_IN: Duration = Duration::minutes(15);

/// How long after resolution a P0/P1 postmortem is due.
pub const POSTMORTEM_DUE: ResponseTime = ResponseTime::BusinessDays(5);

/// Incidents resolved longer ago than this are not reminded of (so a new
/// deployment does not raise a reminder for every incident in history).
pub const REMINDER_HORIZON: Duration = Duration::days(30);

/// The window of `/metrics`' incident figures.
pub const FIGURES_WINDOW: Duration = Duration::days(7);

/// How often (by the manager's clock) reminders and figures are refreshed
/// from the escalation loop.
pub const HOUSEKEEPING_EVERY: Duration = Duration::seconds(60);

/// `incident_log` kind of a written draft.
pub const LOG_POSTMORTEM: &str = "postmortem";
/// `incident_log` kind of a raised reminder.
pub const LOG_REMINDER: &str = "postmortem_reminder";

/// Event kinds (a `*` suffix is a prefix match) that go into a timeline.
/// `incident.*` is left out: the incident's own log holds those rows.
pub const REVIEWED_KINDS: &[&str] = &[
    "emergency_stop.*",
    "policy.changed",
    "mission.failed",
    "mission.succeeded",
    "backup.*",
    "deploy.*",
    "release.*",
    "rollback.*",
    "alert.*",
    "trigger.fired",
    "heartbeat.phase_error",
];

/// Whether an event of `kind` belongs in a timeline.
pub fn reviewed(kind: &str) -> bool {
    REVIEWED_KINDS.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => kind == *p,
    })
}

/// An event of the loop as the timeline reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemEvent {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub source: String,
    pub payload: Value,
    pub mission_id: Option<Uuid>,
    pub cost_usd: Option<f64>,
}

impl SystemEvent {
    fn from_row(row: events::Model) -> Self {
        SystemEvent {
            at: row.created_at,
            kind: row.kind,
            source: row.source,
            payload: row.payload,
            mission_id: row.mission_id,
            cost_usd: row.cost_usd,
        }
    }

    fn mission(&self) -> Option<String> {
        self.mission_id
            .map(|m| m.to_string())
            .or_else(|| text(&self.payload, "mission_id"))
    }
}

/// One line of a timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub at: DateTime<Utc>,
    /// `incident` for the incident's own log, else the event's source.
    pub source: String,
    pub kind: String,
    pub summary: String,
}

fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The first 8 characters of an id, as people quote them.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// `1h 05m`, `16m 40s`, `2d 03h`, `45s`.
pub fn human(d: Duration) -> String {
    let s = d.num_seconds().max(0);
    let (days, hours, minutes, seconds) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    if days > 0 {
        format!("{days}d {hours:02}h")
    } else if hours > 0 {
        format!("{hours}h {minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m {seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

/// One line for a row of the incident's own log.
pub fn log_entry(row: &TimelineEntry) -> Entry {
    let d = &row.detail;
    let count = |key: &str| d.get(key).and_then(Value::as_array).map_or(0, Vec::len);
    let summary = match row.kind.as_str() {
        "opened" if d.get("by_hand").is_some() => format!("incident opened by {}", row.actor),
        "opened" if d.get("postmortem_for").is_some() => format!(
            "incident opened by {}: postmortem reminder for {}",
            row.actor,
            text(d, "postmortem_for").unwrap_or_default()
        ),
        "opened" => format!(
            "incident opened by {} from alert group {} ({} alert(s) firing)",
            row.actor,
            text(d, "group_key").unwrap_or_default(),
            count("alerts")
        ),
        "alerts_joined" => format!("{} alert(s) firing in the group", count("alerts")),
        "alerts_resolved" => "every alert of the incident resolved".to_owned(),
        "escalated" => {
            let notify = d
                .get("notify")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let pages = page_reports(d);
            let people: BTreeSet<&str> = pages.iter().flat_map(|p| p.1.clone()).collect();
            let receivers: Vec<String> = pages
                .iter()
                .map(|(r, _, ok)| format!("{r} {}", if *ok { "delivered" } else { "FAILED" }))
                .collect();
            let step = text(d, "step").unwrap_or_default();
            let notify = if notify.is_empty() {
                "wait".to_owned()
            } else {
                notify
            };
            if people.is_empty() {
                format!("escalation step {step} ({notify}): nobody paged")
            } else {
                format!(
                    "escalation step {step} ({notify}): paged {} via {}",
                    people.into_iter().collect::<Vec<_>>().join(", "),
                    receivers.join(", ")
                )
            }
        }
        "acknowledged" => {
            let mut s = format!("acknowledged by {}", row.actor);
            if let Some(tta) = d.get("time_to_acknowledge_s").and_then(Value::as_i64) {
                let within = d.get("within_target").and_then(Value::as_bool);
                let verdict = match within {
                    Some(true) => ", within target",
                    Some(false) => ", TARGET BREACHED",
                    None => "",
                };
                write!(s, " after {}{verdict}", human(Duration::seconds(tta))).ok();
            }
            s
        }
        "resolved" => format!("resolved by {}", row.actor),
        "reopened" => format!("reopened by {}", row.actor),
        "note" => format!(
            "note by {}: {}",
            row.actor,
            text(d, "text").unwrap_or_default()
        ),
        "escalate_requested" => format!("escalation requested by {}", row.actor),
        LOG_POSTMORTEM => format!("postmortem draft written by {}", row.actor),
        LOG_REMINDER => format!(
            "postmortem overdue: P3 reminder incident {} opened",
            text(d, "reminder")
                .map(|r| short(&r).to_owned())
                .unwrap_or_default()
        ),
        other => format!("{other} by {}", row.actor),
    };
    let mut summary = summary;
    if let Some(reason) = text(d, "reason").filter(|_| row.kind != "note") {
        write!(summary, " ({reason})").ok();
    }
    Entry {
        at: row.at,
        source: "incident".into(),
        kind: row.kind.clone(),
        summary,
    }
}

/// `(receiver, people, delivered)` of an `escalated` row.
fn page_reports(detail: &Value) -> Vec<(String, Vec<&str>, bool)> {
    detail
        .get("pages")
        .and_then(Value::as_array)
        .map(|pages| {
            pages
                .iter()
                .map(|p| {
                    (
                        text(p, "receiver").unwrap_or_default(),
                        p.get("people")
                            .and_then(Value::as_array)
                            .map(|a| a.iter().filter_map(Value::as_str).collect())
                            .unwrap_or_default(),
                        p.get("delivered").and_then(Value::as_bool).unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One line for a loop event.
pub fn event_summary(e: &SystemEvent) -> String {
    let p = &e.payload;
    let by = |s: &mut String| {
        if let Some(actor) = text(p, "actor") {
            write!(s, " by {actor}").ok();
        }
        if let Some(reason) = text(p, "reason") {
            write!(s, ": {reason}").ok();
        }
    };
    let kind = e.kind.as_str();
    if let Some(what) = kind.strip_prefix("emergency_stop.") {
        let mut s = format!("emergency stop {what}");
        by(&mut s);
        return s;
    }
    if kind == "policy.changed" {
        let mut s = format!(
            "policy {} changed (version {})",
            text(p, "key").unwrap_or_else(|| "?".into()),
            text(p, "version").unwrap_or_else(|| "?".into())
        );
        by(&mut s);
        return s;
    }
    let mission = || {
        e.mission().map_or_else(
            || "a mission".to_owned(),
            |m| format!("mission {}", short(&m)),
        )
    };
    if kind == "mission.failed" {
        let mut s = format!("{} failed", mission());
        if let Some(error) = text(p, "error") {
            write!(s, ": {error}").ok();
        }
        return s;
    }
    if kind == "mission.succeeded" {
        return format!("{} succeeded: missions recovered", mission());
    }
    if let Some(outcome) = kind.strip_prefix("backup.") {
        let mut s = format!("backup {outcome}");
        if let Some(target) = text(p, "target") {
            write!(s, " (target {target})").ok();
        }
        if let Some(error) = text(p, "error") {
            write!(s, ": {error}").ok();
        }
        return s;
    }
    if let Some(severity) = kind.strip_prefix("alert.") {
        let labels = p.get("labels").unwrap_or(p);
        let name = text(labels, "alertname").unwrap_or_else(|| "alert".into());
        let mut s = format!("alert {name} ({severity})");
        let annotations = p.get("annotations").unwrap_or(p);
        if let Some(summary) = text(annotations, "summary") {
            write!(s, ": {summary}").ok();
        }
        return s;
    }
    // Deploy markers and the rest: the kind and the fields people put in.
    let mut s = if ["deploy.", "release.", "rollback."]
        .iter()
        .any(|p| kind.starts_with(p))
    {
        format!("deploy marker {kind}")
    } else {
        kind.to_owned()
    };
    let fields: Vec<String> = [
        "service",
        "version",
        "commit",
        "environment",
        "rule",
        "phase",
        "summary",
        "message",
        "description",
        "error",
    ]
    .iter()
    .filter_map(|k| text(p, k).map(|v| format!("{k}={v}")))
    .collect();
    if !fields.is_empty() {
        write!(s, " ({})", fields.join(", ")).ok();
    }
    by(&mut s);
    s
}

/// The events of a timeline: those of [`REVIEWED_KINDS`], `incident.*`
/// never, and of the successes only the first one after failures (the
/// loop recovered), not every mission that went through.
pub fn select_events(events: &[SystemEvent]) -> Vec<Entry> {
    let mut sorted: Vec<&SystemEvent> = events.iter().filter(|e| reviewed(&e.kind)).collect();
    sorted.sort_by_key(|e| e.at);
    let mut failing = false;
    let mut out = Vec::new();
    for e in sorted {
        // An emergency stop change is also a `policy.changed` of the key
        // `emergency_stop` in the same transaction: one line is enough.
        if e.kind == "policy.changed"
            && text(&e.payload, "key").as_deref() == Some("emergency_stop")
        {
            continue;
        }
        match e.kind.as_str() {
            "mission.failed" => failing = true,
            "mission.succeeded" if failing => failing = false,
            "mission.succeeded" => continue,
            _ => {}
        }
        out.push(Entry {
            at: e.at,
            source: e.source.clone(),
            kind: e.kind.clone(),
            summary: event_summary(e),
        });
    }
    out
}

/// An alert of the incident as the alerter stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSeen {
    pub name: String,
    pub severity: String,
    pub summary: Option<String>,
    /// Who sent it (`http`, `bus`, `grpc`).
    pub source: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
}

/// An alert's firing line, and its resolved line when it ended by `end`.
pub fn alert_entries(alerts: &[AlertSeen], end: DateTime<Utc>) -> Vec<Entry> {
    let mut out = Vec::new();
    for a in alerts {
        let mut what = format!("alert {} ({})", a.name, a.severity);
        if let Some(summary) = &a.summary {
            write!(what, ": {summary}").ok();
        }
        out.push(Entry {
            at: a.starts_at,
            source: a.source.clone(),
            kind: "alert.firing".into(),
            summary: format!("{what} firing"),
        });
        if let Some(ended) = a.ends_at.filter(|e| *e <= end && *e >= a.starts_at) {
            out.push(Entry {
                at: ended,
                source: a.source.clone(),
                kind: "alert.resolved".into(),
                summary: format!("alert {} resolved", a.name),
            });
        }
    }
    out
}

/// The incident's alerts, its log and the loop's events in one list, by
/// time; on the same instant an alert comes first, then the incident's own
/// row, then the loop's events.
pub fn merge(
    alerts: &[AlertSeen],
    log: &[TimelineEntry],
    events: &[SystemEvent],
    end: DateTime<Utc>,
) -> Vec<Entry> {
    let mut all = alert_entries(alerts, end);
    all.extend(log.iter().map(log_entry));
    all.extend(select_events(events));
    all.sort_by_key(|e| e.at);
    all
}

/// How long before the incident opened its first alert may have started
/// and still move the timeline's start (an alert firing for days at a
/// lower severity is not the incident's story).
pub const MAX_ALERT_LEAD: Duration = Duration::hours(24);

/// Where a timeline starts (`lead_in` before the first alert or the
/// opening, whichever is earlier) and ends (resolution, or `now`).
pub fn window(
    incident: &Incident,
    first_alert: Option<DateTime<Utc>>,
    lead_in: Duration,
    now: DateTime<Utc>,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let end = incident.resolved_at.unwrap_or(now).max(incident.opened_at);
    let first = first_alert
        .map(|at| at.max(incident.opened_at - MAX_ALERT_LEAD))
        .map_or(incident.opened_at, |at| at.min(incident.opened_at));
    (first - lead_in, end)
}

/// The alert fingerprints that opened or joined the incident.
pub fn alert_fingerprints(log: &[TimelineEntry]) -> BTreeSet<String> {
    log.iter()
        .filter(|r| matches!(r.kind.as_str(), "opened" | "alerts_joined"))
        .filter_map(|r| r.detail.get("alerts").and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// The figures of the Impact section.
#[derive(Debug, Clone, PartialEq)]
pub struct Impact {
    pub duration: Duration,
    /// False while the incident is open (`duration` runs to now).
    pub resolved: bool,
    pub time_to_acknowledge: Option<Duration>,
    pub response_target: ResponseTime,
    /// How much later than the target the first response came (or, with
    /// none yet, how far past it now is); `None` when within target.
    pub breached_by: Option<Duration>,
    /// Distinct alerts that opened or joined the incident.
    pub alerts: usize,
    /// Escalation steps that paged somebody, and who.
    pub pages: usize,
    pub people_paged: Vec<String>,
    /// `mission.failed` events between opening and resolution.
    pub failed_missions: usize,
    /// Sum of the events' `cost_usd` between opening and resolution.
    pub cost_usd: f64,
}

/// Impact of `incident` from its log, the loop's events of the window and
/// the cost summed over the incident (`cost_usd`).
pub fn impact(
    incident: &Incident,
    log: &[TimelineEntry],
    events: &[SystemEvent],
    response_target: ResponseTime,
    cost_usd: f64,
    now: DateTime<Utc>,
) -> Impact {
    let end = incident.resolved_at.unwrap_or(now).max(incident.opened_at);
    let alerts = alert_fingerprints(log);
    let mut pages = 0;
    let mut people = BTreeSet::new();
    for row in log.iter().filter(|r| r.kind == "escalated") {
        let paged: BTreeSet<String> = page_reports(&row.detail)
            .into_iter()
            .filter(|p| p.2)
            .flat_map(|p| p.1.into_iter().map(str::to_owned))
            .collect();
        if !paged.is_empty() {
            pages += 1;
            people.extend(paged);
        }
    }
    let failed_missions = events
        .iter()
        .filter(|e| e.kind == "mission.failed" && e.at >= incident.opened_at && e.at <= end)
        .count();
    let deadline = response_target.deadline(incident.opened_at);
    let first_response = first_response(incident);
    let breached_by = match first_response {
        Some(at) if at > deadline => Some(at - deadline),
        Some(_) => None,
        None if now > deadline => Some(now - deadline),
        None => None,
    };
    Impact {
        duration: end - incident.opened_at,
        resolved: incident.resolved_at.is_some(),
        time_to_acknowledge: incident.time_to_acknowledge(),
        response_target,
        breached_by,
        alerts: alerts.len(),
        pages,
        people_paged: people.into_iter().collect(),
        failed_missions,
        cost_usd,
    }
}

/// The first response: the acknowledgement, or the resolution when nobody
/// acknowledged first.
fn first_response(incident: &Incident) -> Option<DateTime<Utc>> {
    match (incident.acknowledged_at, incident.resolved_at) {
        (Some(a), Some(r)) => Some(a.min(r)),
        (a, r) => a.or(r),
    }
}

fn cell(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    let mut out = one_line.replace('|', "\\|");
    if out.chars().count() > 300 {
        out = out.chars().take(299).collect::<String>() + "…";
    }
    out
}

fn stamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The timeline as a Markdown table (times in UTC).
pub fn render_timeline(entries: &[Entry]) -> String {
    let mut out =
        String::from("| time (UTC) | source | event | what happened |\n|---|---|---|---|\n");
    for e in entries {
        writeln!(
            out,
            "| {} | {} | {} | {} |",
            stamp(e.at),
            cell(&e.source),
            cell(&e.kind),
            cell(&e.summary)
        )
        .ok();
    }
    out
}

/// The marker of a part only a person can write.
pub const PLACEHOLDER: &str = "TODO(author):";

/// The postmortem draft in Markdown (docs/postmortem-template.md's
/// sections), drafted by `author`: facts filled in, [`PLACEHOLDER`]s only
/// where a person must write (root cause, action items, lessons).
pub fn render_draft(
    incident: &Incident,
    impact: &Impact,
    entries: &[Entry],
    author: &str,
    now: DateTime<Utc>,
) -> String {
    let mut md = String::new();
    let w = &mut md;
    let resolution = match incident.resolved_at {
        Some(at) => format!("resolved {}", stamp(at)),
        None => "still open".to_owned(),
    };
    writeln!(w, "# Postmortem: {}\n", cell(&incident.title)).ok();
    writeln!(
        w,
        "Draft written by opsloop at {} UTC from incident {} and the loop's events. \
         Blameless: describe what the system and the people knew at each moment, not who was at fault.\n",
        stamp(now),
        incident.id
    )
    .ok();
    writeln!(w, "| | |\n|---|---|").ok();
    writeln!(w, "| Incident | `{}` |", incident.id).ok();
    writeln!(w, "| Incident level | {} |", incident.level).ok();
    writeln!(
        w,
        "| Date (UTC) | {} |",
        incident.opened_at.format("%Y-%m-%d")
    )
    .ok();
    writeln!(
        w,
        "| Duration | {} (opened {}, {}) |",
        human(impact.duration),
        stamp(incident.opened_at),
        resolution
    )
    .ok();
    writeln!(w, "| Authors | {} (draft) |", cell(author)).ok();
    writeln!(w, "| Status | draft |\n").ok();

    writeln!(w, "## Summary\n").ok();
    let ack = match (&incident.acknowledged_by, impact.time_to_acknowledge) {
        (Some(by), Some(tta)) => format!("acknowledged by {by} after {}", human(tta)),
        _ => "never acknowledged".to_owned(),
    };
    let end = match (&incident.resolved_by, incident.resolved_at) {
        (Some(by), Some(_)) => format!("resolved by {by} after {}", human(impact.duration)),
        _ => format!("open for {} so far", human(impact.duration)),
    };
    writeln!(
        w,
        "{} incident \"{}\" opened {} by {}, {}, {}; {} alert(s), {} failed mission(s), ${:.2} spent meanwhile.",
        incident.level,
        cell(&incident.title),
        stamp(incident.opened_at),
        incident.opened_by,
        ack,
        end,
        impact.alerts,
        impact.failed_missions,
        impact.cost_usd
    )
    .ok();
    writeln!(w).ok();

    writeln!(w, "## Impact\n").ok();
    writeln!(
        w,
        "- Duration: {}{}",
        human(impact.duration),
        if impact.resolved { "" } else { " (still open)" }
    )
    .ok();
    let target = impact.response_target.describe();
    let tta = match impact.time_to_acknowledge {
        Some(tta) => human(tta),
        None => "not acknowledged".to_owned(),
    };
    let verdict = match impact.breached_by {
        Some(late) => format!("target breached by {}", human(late)),
        None => "within target".to_owned(),
    };
    writeln!(
        w,
        "- Time to acknowledge: {tta} (target {target}: {verdict})"
    )
    .ok();
    writeln!(w, "- Alerts: {}", impact.alerts).ok();
    let people = if impact.people_paged.is_empty() {
        "nobody".to_owned()
    } else {
        impact.people_paged.join(", ")
    };
    writeln!(
        w,
        "- Pages: {} escalation step(s) paged {people}",
        impact.pages
    )
    .ok();
    writeln!(
        w,
        "- Failed missions during the incident: {}",
        impact.failed_missions
    )
    .ok();
    writeln!(w, "- Cost during the incident: ${:.2}", impact.cost_usd).ok();
    let stops = entries
        .iter()
        .filter(|e| e.kind.starts_with("emergency_stop."))
        .count();
    if stops > 0 {
        writeln!(w, "- Emergency stop changes: {stops} (see the timeline)").ok();
    }
    writeln!(w).ok();

    writeln!(w, "## Timeline (UTC)\n").ok();
    md.push_str(&render_timeline(entries));
    let w = &mut md;
    writeln!(w).ok();

    writeln!(w, "## Detection\n").ok();
    let opened = entries.iter().find(|e| e.kind == "opened");
    writeln!(
        w,
        "- {} {}",
        stamp(incident.opened_at),
        opened.map_or_else(
            || format!("incident opened by {}", incident.opened_by),
            |e| cell(&e.summary)
        )
    )
    .ok();
    let before = entries.iter().filter(|e| e.at < incident.opened_at).count();
    if before > 0 {
        writeln!(
            w,
            "- {before} event(s) of the loop in the {} before it opened (first: {})",
            human(incident.opened_at - entries[0].at),
            cell(&entries[0].summary)
        )
        .ok();
    }
    match entries
        .iter()
        .find(|e| e.kind == "escalated" && e.summary.contains(": paged "))
    {
        Some(page) => writeln!(
            w,
            "- first page {} after opening: {}",
            human(page.at - incident.opened_at),
            cell(&page.summary)
        ),
        None => writeln!(w, "- nobody was paged"),
    }
    .ok();
    writeln!(w).ok();

    writeln!(w, "## Root cause\n").ok();
    writeln!(
        w,
        "{PLACEHOLDER} the chain of causes (5 whys), with links to code, config, migrations, the release.\n"
    )
    .ok();

    writeln!(w, "## Resolution and recovery\n").ok();
    let mitigations: Vec<&Entry> = entries
        .iter()
        .filter(|e| {
            e.kind.starts_with("emergency_stop.")
                || e.kind == "policy.changed"
                || e.kind == "mission.succeeded"
                || e.kind.starts_with("deploy.")
                || e.kind.starts_with("rollback.")
                || e.kind.starts_with("release.")
                || e.kind.starts_with("backup.")
                || matches!(e.kind.as_str(), "resolved" | "alerts_resolved")
        })
        .filter(|e| e.at >= incident.opened_at)
        .collect();
    if mitigations.is_empty() {
        writeln!(w, "No mitigation recorded by the loop.").ok();
    }
    for e in mitigations {
        writeln!(w, "- {} {}", stamp(e.at), cell(&e.summary)).ok();
    }
    writeln!(w).ok();

    writeln!(w, "## Prevention: action items\n").ok();
    writeln!(
        w,
        "| action | kind (prevent / detect / mitigate / process) | owner | ticket | due |\n|---|---|---|---|---|\n| {PLACEHOLDER} | | | | |\n"
    )
    .ok();

    writeln!(
        w,
        "## Lessons: what went well / what went badly / where we were lucky\n"
    )
    .ok();
    writeln!(
        w,
        "- {PLACEHOLDER} went well\n- {PLACEHOLDER} went badly\n- {PLACEHOLDER} lucky\n"
    )
    .ok();

    writeln!(w, "## Supporting material\n").ok();
    writeln!(
        w,
        "- `opsloop incident show {}` (the incident's log)\n- events between {} and {} UTC (`opsloop event list`), audit rows with subject `incident:{}`",
        incident.id,
        entries.first().map_or_else(|| stamp(incident.opened_at), |e| stamp(e.at)),
        entries.last().map_or_else(|| stamp(now), |e| stamp(e.at)),
        incident.id
    )
    .ok();
    md
}

/// When a P0/P1 incident's postmortem reminder is due (`None` for levels
/// that need none, and for open incidents).
pub fn reminder_due(incident: &Incident) -> Option<DateTime<Utc>> {
    if !matches!(incident.level, Level::P0 | Level::P1) || incident.state != State::Resolved {
        return None;
    }
    incident.resolved_at.map(|at| POSTMORTEM_DUE.deadline(at))
}

/// Figures of one level over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelStats {
    pub level: Level,
    pub opened: u64,
    pub acknowledged: u64,
    pub resolved: u64,
    /// Mean time to acknowledge over the acknowledged incidents.
    pub mtta: Option<Duration>,
    /// Mean time to resolve over the resolved incidents.
    pub mttr: Option<Duration>,
    /// First response (acknowledgement, or resolution without one) after
    /// the level's target, or none yet with the target passed.
    pub breaches: u64,
}

/// Figures over the incidents opened in `[since, until)`.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentStats {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    /// P0..P3, each present.
    pub levels: Vec<LevelStats>,
    /// Person → escalation steps that paged them (delivered to at least
    /// one receiver) within the window.
    pub pages: BTreeMap<String, u64>,
}

impl IncidentStats {
    pub fn level(&self, level: Level) -> &LevelStats {
        &self.levels[level as usize]
    }
}

fn mean(values: &[Duration]) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    let total: i64 = values.iter().map(Duration::num_milliseconds).sum();
    Some(Duration::milliseconds(total / values.len() as i64))
}

/// The figures: `incidents` opened in the window, `escalations` the
/// `escalated` log rows of the window (`(at, detail)`).
pub fn compute_stats(
    incidents: &[Incident],
    escalations: &[(DateTime<Utc>, Value)],
    levels: &Levels,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> IncidentStats {
    let per_level = Level::ALL
        .iter()
        .map(|&level| {
            let of: Vec<&Incident> = incidents
                .iter()
                .filter(|i| i.level == level && i.opened_at >= since && i.opened_at < until)
                .collect();
            let ttas: Vec<Duration> = of
                .iter()
                .filter_map(|i| {
                    i.acknowledged_at
                        .filter(|at| *at <= until)
                        .map(|at| at - i.opened_at)
                })
                .collect();
            let ttrs: Vec<Duration> = of
                .iter()
                .filter_map(|i| {
                    i.resolved_at
                        .filter(|at| *at <= until)
                        .map(|at| at - i.opened_at)
                })
                .collect();
            let target = levels.get(level).response;
            let breaches = of
                .iter()
                .filter(|i| {
                    let deadline = target.deadline(i.opened_at);
                    match first_response(i).filter(|at| *at <= until) {
                        Some(at) => at > deadline,
                        None => until > deadline,
                    }
                })
                .count() as u64;
            LevelStats {
                level,
                opened: of.len() as u64,
                acknowledged: ttas.len() as u64,
                resolved: ttrs.len() as u64,
                mtta: mean(&ttas),
                mttr: mean(&ttrs),
                breaches,
            }
        })
        .collect();
    let mut pages = BTreeMap::new();
    for (at, detail) in escalations {
        if *at < since || *at >= until {
            continue;
        }
        let paged: BTreeSet<&str> = page_reports(detail)
            .into_iter()
            .filter(|p| p.2)
            .flat_map(|p| p.1)
            .collect();
        for person in paged {
            *pages.entry(person.to_owned()).or_insert(0) += 1;
        }
    }
    IncidentStats {
        since,
        until,
        levels: per_level,
        pages,
    }
}

/// Sets the `/metrics` gauges from figures (over [`FIGURES_WINDOW`]).
pub fn publish(stats: &IncidentStats, people: &[String]) {
    for s in &stats.levels {
        let level = s.level.as_str();
        let secs = |d: Option<Duration>| d.map_or(0.0, |d| d.num_milliseconds() as f64 / 1000.0);
        metrics::gauge!("opsloop_incident_mtta_seconds", "level" => level).set(secs(s.mtta));
        metrics::gauge!("opsloop_incident_mttr_seconds", "level" => level).set(secs(s.mttr));
        metrics::gauge!("opsloop_incident_response_breaches_week", "level" => level)
            .set(s.breaches as f64);
    }
    // Everyone in the rotation has a series (0 when not paged), so a
    // quiet week shows as 0, not as a missing series.
    let mut names: BTreeSet<&str> = people.iter().map(String::as_str).collect();
    names.extend(stats.pages.keys().map(String::as_str));
    for person in names {
        let n = stats.pages.get(person).copied().unwrap_or(0);
        metrics::gauge!("opsloop_incident_pages_week", "person" => person.to_owned()).set(n as f64);
    }
}

fn kind_condition() -> Condition {
    REVIEWED_KINDS
        .iter()
        .fold(Condition::any(), |c, p| match p.strip_suffix('*') {
            Some(prefix) => c.add(events::Column::Kind.like(format!("{prefix}%"))),
            None => c.add(events::Column::Kind.eq(*p)),
        })
}

struct Gathered {
    incident: Incident,
    log: Vec<TimelineEntry>,
    events: Vec<SystemEvent>,
    entries: Vec<Entry>,
    end: DateTime<Utc>,
}

/// Rows of one page of events at most (a timeline is for reading).
const EVENTS_LIMIT: u64 = 2000;

impl IncidentManager {
    /// The loop's reviewed events between `start` and `end` (at most
    /// 2,000, oldest first).
    pub async fn system_events(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<SystemEvent>, IncidentError> {
        let rows = events::Entity::find()
            .filter(events::Column::CreatedAt.gte(start))
            .filter(events::Column::CreatedAt.lte(end))
            .filter(kind_condition())
            .filter(events::Column::Kind.ne("mission.succeeded"))
            .order_by_asc(events::Column::Seq)
            .limit(EVENTS_LIMIT)
            .all(&self.db)
            .await?;
        if rows.len() as u64 == EVENTS_LIMIT {
            tracing::warn!(%start, %end, limit = EVENTS_LIMIT, "timeline window has more reviewed events than a timeline shows; the latest are left out");
        }
        let mut out: Vec<SystemEvent> = rows.into_iter().map(SystemEvent::from_row).collect();
        // Successes only matter after a failure (recovery): read them from
        // the first failure on, not the whole window's traffic.
        if let Some(first_failure) = out
            .iter()
            .filter(|e| e.kind == "mission.failed")
            .map(|e| e.at)
            .min()
        {
            let successes = events::Entity::find()
                .filter(events::Column::CreatedAt.gte(first_failure))
                .filter(events::Column::CreatedAt.lte(end))
                .filter(events::Column::Kind.eq("mission.succeeded"))
                .order_by_asc(events::Column::Seq)
                .limit(EVENTS_LIMIT)
                .all(&self.db)
                .await?;
            out.extend(successes.into_iter().map(SystemEvent::from_row));
        }
        out.sort_by_key(|e| e.at);
        Ok(out)
    }

    /// Sum of the events' `cost_usd` between `start` and `end`.
    pub async fn cost_between(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<f64, IncidentError> {
        let total: Option<Option<f64>> = events::Entity::find()
            .select_only()
            .column_as(
                Expr::expr(Func::sum(Expr::col(events::Column::CostUsd))),
                "total",
            )
            .filter(events::Column::CreatedAt.gte(start))
            .filter(events::Column::CreatedAt.lte(end))
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(total.flatten().unwrap_or(0.0))
    }

    /// The incident's alerts the alerter still stores (resolved alerts
    /// are dropped after `resolve_timeout`; the log keeps their count).
    pub async fn incident_alerts(
        &self,
        log: &[TimelineEntry],
    ) -> Result<Vec<AlertSeen>, IncidentError> {
        let fingerprints = alert_fingerprints(log);
        if fingerprints.is_empty() {
            return Ok(Vec::new());
        }
        let rows = alerts::Entity::find()
            .filter(alerts::Column::Fingerprint.is_in(fingerprints))
            .order_by_asc(alerts::Column::StartsAt)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| AlertSeen {
                name: text(&r.labels, crate::model::ALERTNAME).unwrap_or_else(|| "alert".into()),
                severity: text(&r.labels, "severity").unwrap_or_else(|| "none".into()),
                summary: text(&r.annotations, "summary"),
                source: r.source,
                starts_at: r.starts_at,
                ends_at: r.ends_at,
            })
            .collect())
    }

    /// Everything a timeline is made of.
    async fn gather(
        &self,
        id: Uuid,
        lead_in: Duration,
        now: DateTime<Utc>,
    ) -> Result<Gathered, IncidentError> {
        let incident = self.get(id).await?;
        let log = self.timeline(id).await?;
        let alerts = self.incident_alerts(&log).await?;
        let first_alert = alerts.iter().map(|a| a.starts_at).min();
        let (start, end) = window(&incident, first_alert, lead_in, now);
        let events = self.system_events(start, end).await?;
        let entries = merge(&alerts, &log, &events, end);
        Ok(Gathered {
            incident,
            log,
            events,
            entries,
            end,
        })
    }

    /// The incident's full timeline: its alerts, its log and the loop's
    /// reviewed events from `lead_in` before its first alert (or its
    /// opening) to its resolution (or `now`).
    pub async fn full_timeline(
        &self,
        id: Uuid,
        lead_in: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<Entry>, IncidentError> {
        Ok(self.gather(id, lead_in, now).await?.entries)
    }

    /// [`Self::postmortem_draft_with`] with [`DEFAULT_LEAD_IN`].
    pub async fn postmortem_draft(
        &self,
        id: Uuid,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<String, IncidentError> {
        self.postmortem_draft_with(id, actor, DEFAULT_LEAD_IN, now)
            .await
    }

    /// Writes the Markdown postmortem draft of an incident and records
    /// (an `incident_log` row `postmortem`, an `incident.postmortem`
    /// event) that `actor` drafted it — which settles the reminder.
    pub async fn postmortem_draft_with(
        &self,
        id: Uuid,
        actor: &str,
        lead_in: Duration,
        now: DateTime<Utc>,
    ) -> Result<String, IncidentError> {
        let Gathered {
            incident,
            log,
            events,
            entries,
            end,
        } = self.gather(id, lead_in, now).await?;
        let cost = self.cost_between(incident.opened_at, end).await?;
        let target = self.levels().get(incident.level).response;
        let figures = impact(&incident, &log, &events, target, cost, now);
        let draft = render_draft(&incident, &figures, &entries, actor, now);
        let txn = self.db.begin().await?;
        self.record(
            &txn,
            &incident,
            LOG_POSTMORTEM,
            actor,
            json!({
                "entries": entries.len(),
                "duration_s": figures.duration.num_seconds(),
                "alerts": figures.alerts,
                "failed_missions": figures.failed_missions,
                "cost_usd": figures.cost_usd,
            }),
            None,
            now,
        )
        .await?;
        txn.commit().await?;
        tracing::info!(incident = %id, actor, entries = entries.len(), "postmortem draft written");
        Ok(draft)
    }

    /// Raises a P3 reminder incident for every P0/P1 resolved more than 5
    /// business days ago (within [`REMINDER_HORIZON`]) with neither a
    /// postmortem draft nor a reminder yet. The reminder's `incident_log`
    /// row commits with the new incident, so it is raised once, restarts
    /// included. Returns the reminder incidents opened.
    pub async fn remind_postmortems(&self, now: DateTime<Utc>) -> Result<Vec<Uuid>, IncidentError> {
        let rows = incidents::Entity::find()
            .filter(incidents::Column::State.eq(State::Resolved.as_str()))
            .filter(incidents::Column::Level.is_in([Level::P0.as_str(), Level::P1.as_str()]))
            .filter(incidents::Column::ResolvedAt.gte(now - REMINDER_HORIZON))
            .filter(incidents::Column::ResolvedAt.lte(now - Duration::days(5)))
            .order_by_asc(incidents::Column::ResolvedAt)
            .limit(100)
            .all(&self.db)
            .await?;
        let mut raised = Vec::new();
        for row in rows {
            let incident = Incident::from_row(row)?;
            if reminder_due(&incident).is_none_or(|due| due > now) {
                continue;
            }
            if let Some(reminder) = self.remind(&incident, now).await? {
                raised.push(reminder);
            }
        }
        Ok(raised)
    }

    async fn remind(
        &self,
        incident: &Incident,
        now: DateTime<Utc>,
    ) -> Result<Option<Uuid>, IncidentError> {
        let txn = self.db.begin().await?;
        // Serialises two reminders of one incident (PostgreSQL; SQLite
        // writers are serial anyway).
        incidents::Entity::update_many()
            .col_expr(
                incidents::Column::UpdatedAt,
                Expr::col(incidents::Column::UpdatedAt),
            )
            .filter(incidents::Column::Id.eq(incident.id))
            .exec(&txn)
            .await?;
        let settled = incident_log::Entity::find()
            .filter(incident_log::Column::IncidentId.eq(incident.id))
            .filter(incident_log::Column::Kind.is_in([LOG_POSTMORTEM, LOG_REMINDER]))
            .one(&txn)
            .await?;
        if settled.is_some() {
            return Ok(None);
        }
        let title = format!(
            "Postmortem due: {} ({}, resolved {})",
            incident.title,
            incident.level,
            incident
                .resolved_at
                .map(|at| at.format("%Y-%m-%d").to_string())
                .unwrap_or_default()
        );
        let title: String = title.chars().take(200).collect();
        let mut labels = LabelSet::new();
        labels.insert("postmortem_for".into(), incident.id.to_string());
        let reminder = self.new_incident(Level::P3, &title, None, labels, 0, "alerter", now);
        self.insert_incident(&txn, &reminder).await?;
        let audit = Self::audit_record(
            "alerter",
            "incident.open",
            reminder.id,
            Some(format!("postmortem of incident {} overdue", incident.id)),
            None,
            Some(&reminder),
            now,
        );
        self.record(
            &txn,
            &reminder,
            "opened",
            "alerter",
            json!({"postmortem_for": incident.id}),
            Some(&audit),
            now,
        )
        .await?;
        self.record(
            &txn,
            incident,
            LOG_REMINDER,
            "alerter",
            json!({"reminder": reminder.id, "resolved_at": incident.resolved_at}),
            None,
            now,
        )
        .await?;
        txn.commit().await?;
        self.audit_file(&audit);
        metrics::counter!("opsloop_incidents_opened_total", "level" => Level::P3.as_str())
            .increment(1);
        tracing::info!(incident = %incident.id, reminder = %reminder.id, "postmortem overdue: reminder raised");
        Ok(Some(reminder.id))
    }

    /// MTTA, MTTR and breaches per level over the incidents opened in
    /// `[since, until)`, and pages per person within it.
    pub async fn stats(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<IncidentStats, IncidentError> {
        let rows = incidents::Entity::find()
            .filter(incidents::Column::OpenedAt.gte(since))
            .filter(incidents::Column::OpenedAt.lt(until))
            .all(&self.db)
            .await?;
        let incidents = rows
            .into_iter()
            .map(Incident::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let escalations: Vec<(DateTime<Utc>, Value)> = incident_log::Entity::find()
            .filter(incident_log::Column::Kind.eq("escalated"))
            .filter(incident_log::Column::At.gte(since))
            .filter(incident_log::Column::At.lt(until))
            .all(&self.db)
            .await?
            .into_iter()
            .map(|r| (r.at, r.detail))
            .collect();
        Ok(compute_stats(
            &incidents,
            &escalations,
            self.levels(),
            since,
            until,
        ))
    }

    /// Reminders and `/metrics` figures, at most every
    /// [`HOUSEKEEPING_EVERY`] (called from the escalation pass; failures are
    /// logged and retried next time).
    pub(crate) async fn housekeeping(&self, now: DateTime<Utc>) {
        {
            let mut last = self
                .housekeeping_at
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| now >= at && now - at < HOUSEKEEPING_EVERY) {
                return;
            }
            *last = Some(now);
        }
        if let Err(error) = self.remind_postmortems(now).await {
            tracing::warn!(%error, "postmortem reminders failed; retrying");
        }
        match self.stats(now - FIGURES_WINDOW, now).await {
            Ok(stats) => {
                let people: Vec<String> = self
                    .schedule()
                    .people()
                    .iter()
                    .map(|p| p.name.clone())
                    .collect();
                publish(&stats, &people);
            }
            Err(error) => tracing::warn!(%error, "incident figures failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::LevelsConfig;
    use chrono::TimeZone;

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        // 2026-11-23 is a Monday.
        Utc.with_ymd_and_hms(2026, 11, 23, h, m, 0)
            .single()
            .expect("time")
    }

    fn log(at: DateTime<Utc>, kind: &str, actor: &str, detail: Value) -> TimelineEntry {
        TimelineEntry {
            at,
            kind: kind.into(),
            actor: actor.into(),
            detail,
        }
    }

    fn event(at: DateTime<Utc>, kind: &str, payload: Value) -> SystemEvent {
        SystemEvent {
            at,
            kind: kind.into(),
            source: "api".into(),
            payload,
            mission_id: None,
            cost_usd: None,
        }
    }

    fn incident(level: Level, opened: DateTime<Utc>) -> Incident {
        Incident {
            id: Uuid::nil(),
            title: "ApiDown (api)".into(),
            level,
            state: State::Triggered,
            group_key: None,
            labels: LabelSet::new(),
            alerts_firing: 1,
            alerts_resolved: false,
            opened_by: "alerter".into(),
            opened_at: opened,
            acknowledged_at: None,
            acknowledged_by: None,
            resolved_at: None,
            resolved_by: None,
            escalation_step: 0,
            next_escalation_at: None,
        }
    }

    fn levels() -> Levels {
        Levels::compile(&LevelsConfig::default()).expect("default levels")
    }

    #[test]
    fn reviewed_kinds() {
        for (kind, yes) in [
            ("emergency_stop.engaged", true),
            ("emergency_stop.released", true),
            ("policy.changed", true),
            ("mission.failed", true),
            ("mission.succeeded", true),
            ("mission.started", false),
            ("step.failed", false),
            ("backup.succeeded", true),
            ("backup.verified", true),
            ("deploy.finished", true),
            ("deployment.x", false),
            ("alert.critical", true),
            ("incident.opened", false),
            ("heartbeat.tick", false),
            ("heartbeat.phase_error", true),
            ("trigger.fired", true),
        ] {
            assert_eq!(reviewed(kind), yes, "{kind}");
        }
    }

    #[test]
    fn event_summaries() {
        let mut failed = event(t(10, 0), "mission.failed", json!({"error": "HTTP 500"}));
        failed.mission_id =
            Some(Uuid::parse_str("0190f0a1-2222-7000-8000-000000000000").expect("uuid"));
        for (e, want) in [
            (
                event(
                    t(10, 0),
                    "emergency_stop.engaged",
                    json!({"actor": "admin", "reason": "runaway posts"}),
                ),
                "emergency stop engaged by admin: runaway posts",
            ),
            (
                event(
                    t(10, 0),
                    "policy.changed",
                    json!({"key": "x_autopost", "version": 7, "actor": "admin", "reason": null}),
                ),
                "policy x_autopost changed (version 7) by admin",
            ),
            (failed, "mission 0190f0a1 failed: HTTP 500"),
            (
                event(
                    t(10, 0),
                    "deploy.finished",
                    json!({"service": "api", "version": "1.4.2"}),
                ),
                "deploy marker deploy.finished (service=api, version=1.4.2)",
            ),
            (
                event(
                    t(10, 0),
                    "backup.failed",
                    json!({"target": "s3", "error": "403"}),
                ),
                "backup failed (target s3): 403",
            ),
            (
                event(
                    t(10, 0),
                    "alert.critical",
                    json!({"labels": {"alertname": "ApiDown"}, "annotations": {"summary": "api is down"}}),
                ),
                "alert ApiDown (critical): api is down",
            ),
        ] {
            assert_eq!(event_summary(&e), want);
        }
    }

    #[test]
    fn log_summaries() {
        for (row, want) in [
            (
                log(
                    t(10, 0),
                    "opened",
                    "alerter",
                    json!({"group_key": "{alertname=\"ApiDown\"}", "alerts": ["a", "b"]}),
                ),
                "incident opened by alerter from alert group {alertname=\"ApiDown\"} (2 alert(s) firing)",
            ),
            (
                log(t(10, 0), "opened", "admin", json!({"by_hand": true})),
                "incident opened by admin",
            ),
            (
                log(
                    t(10, 0),
                    "escalated",
                    "alerter",
                    json!({"step": 0, "notify": ["primary"], "pages": [
                    {"receiver": "slack", "people": ["aiko"], "delivered": true},
                    {"receiver": "pagerduty", "people": ["aiko"], "delivered": false}]}),
                ),
                "escalation step 0 (primary): paged aiko via slack delivered, pagerduty FAILED",
            ),
            (
                log(
                    t(10, 0),
                    "escalated",
                    "alerter",
                    json!({"step": 1, "notify": [], "pages": []}),
                ),
                "escalation step 1 (wait): nobody paged",
            ),
            (
                log(
                    t(10, 0),
                    "acknowledged",
                    "ben",
                    json!({"from": "triggered", "to": "acknowledged", "time_to_acknowledge_s": 1000, "within_target": false}),
                ),
                "acknowledged by ben after 16m 40s, TARGET BREACHED",
            ),
            (
                log(
                    t(10, 0),
                    "resolved",
                    "admin",
                    json!({"reason": "rolled back"}),
                ),
                "resolved by admin (rolled back)",
            ),
            (
                log(
                    t(10, 0),
                    "note",
                    "ben",
                    json!({"text": "rolling back | now"}),
                ),
                "note by ben: rolling back | now",
            ),
        ] {
            assert_eq!(log_entry(&row).summary, want);
        }
    }

    #[test]
    fn merge_orders_by_time_and_keeps_only_recoveries_of_successes() {
        let log_rows = vec![
            log(t(10, 0), "opened", "alerter", json!({"alerts": ["a"]})),
            log(t(10, 20), "acknowledged", "ben", json!({})),
            log(t(11, 0), "resolved", "ben", json!({})),
        ];
        let events = vec![
            event(t(10, 30), "mission.succeeded", json!({})), // after a failure: recovery
            event(t(9, 50), "deploy.finished", json!({"version": "2"})),
            event(t(10, 5), "mission.failed", json!({})),
            event(t(9, 55), "mission.succeeded", json!({})), // routine: left out
            event(t(10, 35), "mission.succeeded", json!({})), // routine again
            event(t(10, 0), "policy.changed", json!({"key": "emergency_stop"})), // said once
            event(t(10, 0), "emergency_stop.engaged", json!({})),
            event(t(10, 6), "policy.changed", json!({"key": "x_autopost"})),
            event(t(10, 10), "incident.acknowledged", json!({})),
            event(t(10, 11), "step.started", json!({})),
        ];
        let alerts = vec![AlertSeen {
            name: "ApiDown".into(),
            severity: "critical".into(),
            summary: Some("api is down".into()),
            source: "http".into(),
            starts_at: t(10, 0),
            ends_at: Some(t(10, 40)),
        }];
        let merged = merge(&alerts, &log_rows, &events, t(11, 0));
        let got: Vec<(DateTime<Utc>, &str)> =
            merged.iter().map(|e| (e.at, e.kind.as_str())).collect();
        assert_eq!(
            got,
            [
                (t(9, 50), "deploy.finished"),
                (t(10, 0), "alert.firing"),
                (t(10, 0), "opened"),
                (t(10, 0), "emergency_stop.engaged"),
                (t(10, 5), "mission.failed"),
                (t(10, 6), "policy.changed"),
                (t(10, 20), "acknowledged"),
                (t(10, 30), "mission.succeeded"),
                (t(10, 40), "alert.resolved"),
                (t(11, 0), "resolved"),
            ]
        );
        assert_eq!(
            merged[1].summary,
            "alert ApiDown (critical): api is down firing"
        );
        assert_eq!(merged[2].source, "incident");
        assert_eq!(merged[3].source, "api");
        // Not resolved by the end of the window: no resolved line.
        assert_eq!(alert_entries(&alerts, t(10, 39)).len(), 1);
    }

    #[test]
    fn the_window_starts_before_the_first_alert_within_a_day() {
        let mut i = incident(Level::P0, t(10, 0));
        let lead = Duration::minutes(15);
        assert_eq!(window(&i, None, lead, t(12, 0)), (t(9, 45), t(12, 0)));
        assert_eq!(
            window(&i, Some(t(9, 0)), lead, t(12, 0)),
            (t(8, 45), t(12, 0))
        );
        // An alert starting after the opening does not move it.
        assert_eq!(window(&i, Some(t(10, 5)), lead, t(12, 0)).0, t(9, 45));
        // Nor one firing for days: at most a day.
        let old = t(10, 0) - Duration::days(3);
        assert_eq!(
            window(&i, Some(old), lead, t(12, 0)).0,
            t(10, 0) - Duration::days(1) - lead
        );
        i.resolved_at = Some(t(11, 0));
        assert_eq!(window(&i, None, lead, t(12, 0)).1, t(11, 0));
    }

    #[test]
    fn impact_figures() {
        let mut i = incident(Level::P0, t(10, 0));
        i.acknowledged_at = Some(t(10, 20));
        i.acknowledged_by = Some("ben".into());
        i.resolved_at = Some(t(11, 30));
        i.state = State::Resolved;
        let log_rows = vec![
            log(t(10, 0), "opened", "alerter", json!({"alerts": ["a"]})),
            log(
                t(10, 1),
                "alerts_joined",
                "alerter",
                json!({"alerts": ["a", "b"]}),
            ),
            log(
                t(10, 0),
                "escalated",
                "alerter",
                json!({"pages": [{"receiver": "slack", "people": ["aiko"], "delivered": true}]}),
            ),
            log(
                t(10, 15),
                "escalated",
                "alerter",
                json!({"pages": [{"receiver": "slack", "people": ["ben"], "delivered": false}]}),
            ),
        ];
        let events = vec![
            event(t(9, 50), "mission.failed", json!({})), // before opening
            event(t(10, 5), "mission.failed", json!({})),
            event(t(11, 0), "mission.failed", json!({})),
            event(t(11, 31), "mission.failed", json!({})), // after resolution
        ];
        let target = levels().get(Level::P0).response;
        let got = impact(&i, &log_rows, &events, target, 12.5, t(12, 0));
        assert_eq!(got.duration, Duration::minutes(90));
        assert!(got.resolved);
        assert_eq!(got.time_to_acknowledge, Some(Duration::minutes(20)));
        assert_eq!(got.breached_by, Some(Duration::minutes(5)));
        assert_eq!(got.alerts, 2);
        assert_eq!(
            (got.pages, got.people_paged.clone()),
            (1, vec!["aiko".to_owned()])
        );
        assert_eq!(got.failed_missions, 2);
        assert_eq!(got.cost_usd, 12.5);

        // Open and unacknowledged: the duration and the breach run to now.
        let open = incident(Level::P1, t(10, 0));
        let target = levels().get(Level::P1).response;
        let got = impact(&open, &[], &[], target, 0.0, t(11, 30));
        assert_eq!(got.duration, Duration::minutes(90));
        assert!(!got.resolved);
        assert_eq!(got.breached_by, Some(Duration::minutes(30)));
        let got = impact(&open, &[], &[], target, 0.0, t(10, 59));
        assert_eq!(got.breached_by, None);
    }

    #[test]
    fn the_draft_has_every_section_facts_and_placeholders_only_for_people() {
        let mut i = incident(Level::P1, t(10, 0));
        i.acknowledged_at = Some(t(10, 10));
        i.acknowledged_by = Some("ben".into());
        i.resolved_at = Some(t(11, 0));
        i.resolved_by = Some("ben".into());
        i.state = State::Resolved;
        let log_rows = vec![
            log(t(10, 0), "opened", "alerter", json!({"alerts": ["a"]})),
            log(t(10, 10), "acknowledged", "ben", json!({})),
            log(t(11, 0), "resolved", "ben", json!({})),
        ];
        let events = vec![event(
            t(10, 30),
            "emergency_stop.engaged",
            json!({"actor": "ben", "reason": "a|b\nc"}),
        )];
        let target = levels().get(Level::P1).response;
        let figures = impact(&i, &log_rows, &events, target, 3.456, t(12, 0));
        let entries = merge(&[], &log_rows, &events, t(11, 0));
        let md = render_draft(&i, &figures, &entries, "ben", t(12, 0));
        let mut at = 0;
        for section in [
            "# Postmortem: ApiDown (api)",
            "## Summary",
            "## Impact",
            "## Timeline (UTC)",
            "## Detection",
            "## Root cause",
            "## Resolution and recovery",
            "## Prevention",
            "## Lessons",
            "## Supporting material",
        ] {
            let found = md[at..]
                .find(section)
                .unwrap_or_else(|| panic!("{section} in order:\n{md}"));
            at += found;
        }
        for fact in [
            "| Duration | 1h 00m (opened 2026-11-23 10:00:00, resolved 2026-11-23 11:00:00) |",
            "- Time to acknowledge: 10m 00s (target 1 h: within target)",
            "- Alerts: 1",
            "- Cost during the incident: $3.46",
            "| 2026-11-23 10:30:00 | api | emergency_stop.engaged | emergency stop engaged by ben: a\\|b c |",
            "- 2026-11-23 10:30:00 emergency stop engaged by ben: a\\|b c",
        ] {
            assert!(md.contains(fact), "{fact} in:\n{md}");
        }
        // Placeholders in root cause, action items and lessons only.
        let sections: Vec<&str> = md.split("\n## ").collect();
        let with: Vec<&str> = sections
            .iter()
            .filter(|s| s.contains(PLACEHOLDER))
            .map(|s| s.lines().next().unwrap_or_default())
            .collect();
        assert_eq!(
            with,
            [
                "Root cause",
                "Prevention: action items",
                "Lessons: what went well / what went badly / where we were lucky"
            ],
            "{md}"
        );
        assert!(md.contains("| Authors | ben (draft) |"), "{md}");
        assert!(md.contains("- nobody was paged"), "{md}");
        let timeline = &md[md.find("## Timeline").expect("t")..md.find("## Detection").expect("d")];
        assert_eq!(
            timeline.lines().filter(|l| l.starts_with("| 2026")).count(),
            4
        );
    }

    #[test]
    fn reminders_fall_due_five_business_days_after_resolution() {
        let mut i = incident(Level::P0, t(10, 0));
        assert_eq!(reminder_due(&i), None, "open");
        i.state = State::Resolved;
        // Friday 2026-11-27 16:00 → Friday 2026-12-04 16:00.
        let friday = Utc
            .with_ymd_and_hms(2026, 11, 27, 16, 0, 0)
            .single()
            .expect("t");
        i.resolved_at = Some(friday);
        assert_eq!(reminder_due(&i), Some(friday + Duration::days(7)));
        // Monday → Monday.
        i.resolved_at = Some(t(10, 0));
        assert_eq!(reminder_due(&i), Some(t(10, 0) + Duration::days(7)));
        i.level = Level::P2;
        assert_eq!(reminder_due(&i), None, "P2 needs none");
    }

    #[test]
    fn stats_per_level_and_person() {
        let mut a = incident(Level::P0, t(10, 0)); // acked late (20 min > 15)
        a.acknowledged_at = Some(t(10, 20));
        a.resolved_at = Some(t(11, 0));
        let mut b = incident(Level::P0, t(12, 0)); // acked in 10 min
        b.acknowledged_at = Some(t(12, 10));
        b.resolved_at = Some(t(12, 30));
        let c = incident(Level::P1, t(13, 0)); // never acked, target passed by until
        let mut d = incident(Level::P1, t(14, 0)); // resolved without ack in time
        d.resolved_at = Some(t(14, 30));
        let early = incident(Level::P0, t(8, 0)); // before the window
        let esc = |at, people: Value, delivered| {
            (
                at,
                json!({"pages": [{"receiver": "slack", "people": people, "delivered": delivered},
                                   {"receiver": "pagerduty", "people": people, "delivered": true}]}),
            )
        };
        let escalations = vec![
            esc(t(10, 0), json!(["aiko"]), true),
            esc(t(10, 15), json!(["ben"]), true),
            esc(t(12, 0), json!(["aiko", "ben"]), false),
            esc(t(8, 0), json!(["aiko"]), true), // before the window
        ];
        let s = compute_stats(
            &[a, b, c, d, early],
            &escalations,
            &levels(),
            t(9, 0),
            t(16, 0),
        );
        let p0 = s.level(Level::P0);
        assert_eq!(
            (p0.opened, p0.acknowledged, p0.resolved, p0.breaches),
            (2, 2, 2, 1)
        );
        assert_eq!(p0.mtta, Some(Duration::minutes(15)));
        assert_eq!(p0.mttr, Some(Duration::minutes(45)));
        let p1 = s.level(Level::P1);
        assert_eq!(
            (p1.opened, p1.acknowledged, p1.resolved, p1.breaches),
            (2, 0, 1, 1)
        );
        assert_eq!(p1.mtta, None);
        assert_eq!(p1.mttr, Some(Duration::minutes(30)));
        assert_eq!(s.level(Level::P3).opened, 0);
        assert_eq!(
            s.pages,
            BTreeMap::from([("aiko".into(), 2), ("ben".into(), 2)])
        );
    }

    #[test]
    fn durations_in_words() {
        for (secs, want) in [
            (45, "45s"),
            (1000, "16m 40s"),
            (3900, "1h 05m"),
            (183600, "2d 03h"),
            (-5, "0s"),
        ] {
            assert_eq!(human(Duration::seconds(secs)), want);
        }
    }
}
