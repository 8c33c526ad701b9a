//! `opsloop incident list|show|open|ack|resolve|note|escalate` and
//! `opsloop oncall now|show`: the alerter's `IncidentService` (default
//! endpoint http://127.0.0.1:50052, or $OPSLOOP_ALERTER_ENDPOINT).

use std::collections::BTreeMap;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use opsloop_core::proto::v1::{
    AcknowledgeIncidentRequest, AddIncidentNoteRequest, DraftPostmortemRequest,
    EscalateIncidentRequest, GetIncidentRequest, GetIncidentStatsRequest, GetIncidentStatsResponse,
    Incident, IncidentTimelineEntry, ListIncidentsRequest, OnCallNowRequest, OnCallPerson,
    OnCallWeekRequest, OpenIncidentRequest, ResolveIncidentRequest,
};
use serde_json::{Value, json};

use crate::client::{Connection, Daemon, Globals};
use crate::output::{self, OutputFormat, Table, fields, json_doc, opt, opt_json, ts, ts_json};

/// `opsloop incident …`
#[derive(Subcommand)]
pub enum IncidentCommand {
    /// List incidents, newest first (open ones unless --all).
    List(ListArgs),
    /// Show one incident and its timeline.
    Show {
        /// Incident id.
        id: String,
    },
    /// Open an incident by hand; its escalation chain starts at once (admin token).
    Open(OpenArgs),
    /// Acknowledge an incident: its escalation stops (admin token).
    Ack {
        /// Incident id.
        id: String,
        /// Why, recorded in the timeline and the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resolve an incident (admin token).
    Resolve {
        /// Incident id.
        id: String,
        /// Why, recorded in the timeline and the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Add a note to an incident's timeline (admin token).
    Note {
        /// Incident id.
        id: String,
        /// The note, 1 to 4000 characters.
        text: String,
    },
    /// Run the next escalation step now instead of at its time (admin token).
    Escalate {
        /// Incident id.
        id: String,
    },
    /// Write the incident's postmortem draft (Markdown: timeline, impact
    /// figures, placeholders where a person must write) and record that you
    /// drafted it (admin token).
    Postmortem {
        /// Incident id.
        id: String,
        /// Write the draft to this file instead of standard output.
        #[arg(long, value_name = "PATH")]
        file: Option<std::path::PathBuf>,
    },
    /// MTTA, MTTR and response-target breaches per level, pages per person.
    Stats {
        /// Incidents opened from this time (RFC 3339, a date, or 7d for that
        /// long ago; default: 7 days before --until).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Incidents opened before this time (default: now).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
    },
}

/// `opsloop incident list`
#[derive(Args)]
pub struct ListArgs {
    /// Also list resolved incidents.
    #[arg(long)]
    all: bool,
    /// Only this level: P0, P1, P2 or P3.
    #[arg(long, value_name = "LEVEL")]
    level: Option<String>,
    /// Most incidents to show (at most 1000).
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

/// `opsloop incident open`
#[derive(Args)]
pub struct OpenArgs {
    /// P0 (critical), P1 (high), P2 (medium) or P3 (low).
    #[arg(long, value_name = "LEVEL")]
    level: String,
    /// What is wrong, 1 to 200 characters.
    #[arg(long)]
    title: String,
    /// A label to attach, `name=value` (e.g. service=api); repeatable.
    #[arg(long = "label", value_name = "NAME=VALUE")]
    labels: Vec<String>,
}

/// `opsloop oncall …`
#[derive(Subcommand)]
pub enum OncallCommand {
    /// Who is primary and secondary now (rotation and overrides applied).
    Now {
        /// Answer for this time instead (RFC 3339, a date, or 2h for that long ago).
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
    /// The hand-overs and who is on call each day: today, or a week with --week.
    Show {
        /// Seven days instead of one.
        #[arg(long)]
        week: bool,
        /// First day, YYYY-MM-DD in the rotation's time zone (default: today there).
        #[arg(long, value_name = "DATE")]
        from: Option<String>,
    },
}

/// Runs an `incident` command.
pub async fn incident(command: IncidentCommand, globals: &Globals) -> anyhow::Result<()> {
    // Bad input is refused before any call.
    let labels = match &command {
        IncidentCommand::Open(args) => args
            .labels
            .iter()
            .map(|l| label(l))
            .collect::<anyhow::Result<_>>()?,
        _ => Default::default(),
    };
    let instant = |flag: &str, text: &Option<String>| {
        text.as_deref()
            .map(|text| {
                crate::parse::instant(text, chrono::Utc::now())
                    .map(output::to_timestamp)
                    .map_err(|e| crate::exit::usage(format!("--{flag}: {e}")))
            })
            .transpose()
    };
    let window = match &command {
        IncidentCommand::Stats { since, until } => {
            Some((instant("since", since)?, instant("until", until)?))
        }
        _ => None,
    };
    let conn = Connection::open(globals, Daemon::Alerter).await?;
    let mut client = conn.incidents();
    let actor = globals.actor.clone();
    let changed = match command {
        IncidentCommand::Postmortem { id, file } => {
            let draft = client
                .draft_postmortem(DraftPostmortemRequest {
                    id: id.clone(),
                    actor,
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .markdown;
            if let Some(path) = &file {
                std::fs::write(path, &draft)
                    .map_err(|e| anyhow!("cannot write the draft to {}: {e}", path.display()))?;
            }
            return match (globals.output, &file) {
                (OutputFormat::Json, _) => output::print_json(&json!({
                    "id": id,
                    "file": file.as_ref().map(|p| p.display().to_string()),
                    "markdown": draft,
                })),
                (OutputFormat::Table, Some(path)) => {
                    outln!(
                        "postmortem draft of incident {id} written to {}",
                        path.display()
                    );
                    Ok(())
                }
                (OutputFormat::Table, None) => {
                    out!("{draft}");
                    Ok(())
                }
            };
        }
        IncidentCommand::Stats { .. } => {
            let (since, until) = window.unwrap_or_default();
            let r = client
                .get_incident_stats(GetIncidentStatsRequest { since, until })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            return print_stats(&r, globals.output);
        }
        IncidentCommand::List(args) => {
            let response = client
                .list_incidents(ListIncidentsRequest {
                    open_only: !args.all,
                    level: args.level.unwrap_or_default(),
                    limit: args.limit,
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            return print_list(&response.incidents, args.all, globals.output);
        }
        IncidentCommand::Show { id } => {
            let response = client
                .get_incident(GetIncidentRequest { id })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            let incident = response
                .incident
                .ok_or_else(|| anyhow!("the alerter answered without an incident"))?;
            return print_show(&incident, &response.timeline, globals.output);
        }
        IncidentCommand::Open(args) => {
            client
                .open_incident(OpenIncidentRequest {
                    level: args.level,
                    title: args.title,
                    labels,
                    actor,
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .incident
        }
        IncidentCommand::Ack { id, reason } => {
            client
                .acknowledge_incident(AcknowledgeIncidentRequest {
                    id,
                    actor,
                    reason: reason.unwrap_or_default(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .incident
        }
        IncidentCommand::Resolve { id, reason } => {
            client
                .resolve_incident(ResolveIncidentRequest {
                    id,
                    actor,
                    reason: reason.unwrap_or_default(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .incident
        }
        IncidentCommand::Note { id, text } => {
            client
                .add_incident_note(AddIncidentNoteRequest { id, text, actor })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .incident
        }
        IncidentCommand::Escalate { id } => {
            client
                .escalate_incident(EscalateIncidentRequest { id, actor })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .incident
        }
    };
    let incident = changed.ok_or_else(|| anyhow!("the alerter answered without an incident"))?;
    match globals.output {
        OutputFormat::Json => output::print_json(&incident_json(&incident)),
        OutputFormat::Table => {
            out!("{}", incident_fields(&incident));
            Ok(())
        }
    }
}

/// Runs an `oncall` command.
pub async fn oncall(command: OncallCommand, globals: &Globals) -> anyhow::Result<()> {
    let at = match &command {
        OncallCommand::Now { at: Some(text) } => Some(output::to_timestamp(
            crate::parse::instant(text, chrono::Utc::now())
                .map_err(|e| crate::exit::usage(format!("--at: {e}")))?,
        )),
        _ => None,
    };
    let conn = Connection::open(globals, Daemon::Alerter).await?;
    let mut client = conn.incidents();
    match command {
        OncallCommand::Now { .. } => {
            let r = client
                .on_call_now(OnCallNowRequest { at })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "at": ts_json(r.at.as_ref()),
                    "primary": r.primary.as_ref().map(person_json),
                    "secondary": r.secondary.as_ref().map(person_json),
                    "until": ts_json(r.until.as_ref()),
                    "time_zone": r.time_zone,
                })),
                OutputFormat::Table => {
                    out!(
                        "{}",
                        fields(&[
                            ("at", ts(r.at.as_ref())),
                            ("primary", person_text(r.primary.as_ref())),
                            ("secondary", person_text(r.secondary.as_ref())),
                            ("until", ts(r.until.as_ref())),
                            ("time zone", r.time_zone.clone()),
                        ])
                    );
                    Ok(())
                }
            }
        }
        OncallCommand::Show { week, from } => {
            let r = client
                .on_call_week(OnCallWeekRequest {
                    from: from.unwrap_or_default(),
                    days: if week { 7 } else { 1 },
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "time_zone": r.time_zone,
                    "from": r.from,
                    "shifts": r.shifts.iter().map(|s| json!({
                        "start": ts_json(s.start.as_ref()),
                        "end": ts_json(s.end.as_ref()),
                        "primary": non_empty(&s.primary),
                        "secondary": non_empty(&s.secondary),
                    })).collect::<Vec<_>>(),
                    "days": r.days.iter().map(|d| json!({
                        "date": d.date,
                        "primary": d.primary,
                        "secondary": d.secondary,
                    })).collect::<Vec<_>>(),
                })),
                OutputFormat::Table => {
                    outln!("time zone: {}", r.time_zone);
                    let mut days = Table::new(&["DATE", "PRIMARY", "SECONDARY"]);
                    for d in &r.days {
                        days.row(vec![d.date.clone(), names(&d.primary), names(&d.secondary)]);
                    }
                    days.print_or("no days");
                    outln!();
                    let mut shifts = Table::new(&["FROM", "UNTIL", "PRIMARY", "SECONDARY"]);
                    for s in &r.shifts {
                        shifts.row(vec![
                            ts(s.start.as_ref()),
                            ts(s.end.as_ref()),
                            dash(&s.primary),
                            dash(&s.secondary),
                        ]);
                    }
                    shifts.print_or("no shifts");
                    Ok(())
                }
            }
        }
    }
}

/// `opsloop incident stats`: one row per level, then pages per person.
fn print_stats(r: &GetIncidentStatsResponse, format: OutputFormat) -> anyhow::Result<()> {
    let minutes = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{:.1} min", s / 60.0));
    match format {
        OutputFormat::Json => output::print_json(&json!({
            "since": ts_json(r.since.as_ref()),
            "until": ts_json(r.until.as_ref()),
            "levels": r.levels.iter().map(|l| json!({
                "level": l.level,
                "opened": l.opened,
                "acknowledged": l.acknowledged,
                "resolved": l.resolved,
                "mtta_seconds": l.mtta_seconds,
                "mttr_seconds": l.mttr_seconds,
                "breaches": l.breaches,
            })).collect::<Vec<_>>(),
            "pages": r.pages,
        })),
        OutputFormat::Table => {
            outln!(
                "incidents opened {} .. {}",
                ts(r.since.as_ref()),
                ts(r.until.as_ref())
            );
            let mut levels = Table::new(&[
                "LEVEL", "OPENED", "ACKED", "RESOLVED", "MTTA", "MTTR", "BREACHES",
            ]);
            for l in &r.levels {
                levels.row(vec![
                    l.level.clone(),
                    l.opened.to_string(),
                    l.acknowledged.to_string(),
                    l.resolved.to_string(),
                    minutes(l.mtta_seconds),
                    minutes(l.mttr_seconds),
                    l.breaches.to_string(),
                ]);
            }
            levels.print_or("no levels");
            outln!();
            let mut pages = Table::new(&["PERSON", "PAGES"]);
            for (person, n) in &r.pages {
                pages.row(vec![person.clone(), n.to_string()]);
            }
            pages.print_or("nobody was paged");
            Ok(())
        }
    }
}

/// `name=value` as a label.
fn label(text: &str) -> anyhow::Result<(String, String)> {
    match text.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(crate::exit::usage(format!(
            "--label {text:?}: expected name=value, e.g. service=api"
        ))),
    }
}

fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_owned()
    }
}

fn non_empty(text: &str) -> Value {
    opt_json(Some(text).filter(|t| !t.is_empty()))
}

fn names(list: &[String]) -> String {
    if list.is_empty() {
        "-".into()
    } else {
        list.join(" → ")
    }
}

fn person_text(p: Option<&OnCallPerson>) -> String {
    let Some(p) = p else {
        return "nobody".into();
    };
    let contacts: Vec<String> = [
        ("slack", &p.slack),
        ("discord", &p.discord),
        ("pagerduty", &p.pagerduty),
        ("email", &p.email),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| format!("{k} {v}"))
    .collect();
    if contacts.is_empty() {
        p.name.clone()
    } else {
        format!("{} ({})", p.name, contacts.join(", "))
    }
}

fn person_json(p: &OnCallPerson) -> Value {
    json!({
        "name": p.name,
        "slack": non_empty(&p.slack),
        "discord": non_empty(&p.discord),
        "pagerduty": non_empty(&p.pagerduty),
        "email": non_empty(&p.email),
    })
}

fn print_list(incidents: &[Incident], all: bool, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => output::print_json(&json!({
            "incidents": incidents.iter().map(incident_json).collect::<Vec<_>>(),
        })),
        OutputFormat::Table => {
            let mut table = Table::new(&[
                "ID", "LEVEL", "STATE", "OPENED", "ALERTS", "ACK BY", "TITLE",
            ]);
            for i in incidents {
                table.row(vec![
                    i.id.clone(),
                    i.level.clone(),
                    i.state.clone(),
                    ts(i.opened_at.as_ref()),
                    alerts_text(i),
                    opt(i.acknowledged_by.as_deref()),
                    i.title.clone(),
                ]);
            }
            table.print_or(if all {
                "no incidents"
            } else {
                "no open incidents (--all lists resolved ones too)"
            });
            Ok(())
        }
    }
}

fn print_show(
    incident: &Incident,
    timeline: &[IncidentTimelineEntry],
    format: OutputFormat,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => {
            let mut doc = incident_json(incident);
            doc["timeline"] = timeline.iter().map(timeline_json).collect();
            output::print_json(&doc)
        }
        OutputFormat::Table => {
            out!("{}", incident_fields(incident));
            outln!();
            let mut table = Table::new(&["AT", "KIND", "ACTOR", "DETAIL"]).max_cell(100);
            for e in timeline {
                table.row(vec![
                    ts(e.at.as_ref()),
                    e.kind.clone(),
                    e.actor.clone(),
                    e.detail_json.clone(),
                ]);
            }
            table.print_or("no timeline");
            Ok(())
        }
    }
}

fn alerts_text(i: &Incident) -> String {
    if i.alerts_resolved {
        "resolved".into()
    } else if i.group_key.is_none() {
        "-".into()
    } else {
        format!("{} firing", i.alerts_firing)
    }
}

fn incident_fields(i: &Incident) -> String {
    let labels = i
        .labels
        .iter()
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    fields(&[
        ("id", i.id.clone()),
        ("title", i.title.clone()),
        ("level", i.level.clone()),
        ("state", i.state.clone()),
        (
            "labels",
            if labels.is_empty() {
                "-".into()
            } else {
                labels
            },
        ),
        ("alerts", alerts_text(i)),
        (
            "opened",
            format!("{} by {}", ts(i.opened_at.as_ref()), i.opened_by),
        ),
        ("response due", ts(i.response_due_at.as_ref())),
        (
            "acknowledged",
            match &i.acknowledged_by {
                Some(by) => format!("{} by {by}", ts(i.acknowledged_at.as_ref())),
                None => "-".into(),
            },
        ),
        (
            "resolved",
            match &i.resolved_by {
                Some(by) => format!("{} by {by}", ts(i.resolved_at.as_ref())),
                None => "-".into(),
            },
        ),
        ("next escalation", ts(i.next_escalation_at.as_ref())),
    ])
}

/// An incident as stable JSON for scripts.
pub fn incident_json(i: &Incident) -> Value {
    json!({
        "id": i.id,
        "title": i.title,
        "level": i.level,
        "state": i.state,
        "labels": i.labels.iter().collect::<BTreeMap<_, _>>(),
        "group_key": i.group_key,
        "alerts_firing": i.alerts_firing,
        "alerts_resolved": i.alerts_resolved,
        "opened_by": i.opened_by,
        "opened_at": ts_json(i.opened_at.as_ref()),
        "response_due_at": ts_json(i.response_due_at.as_ref()),
        "acknowledged_at": ts_json(i.acknowledged_at.as_ref()),
        "acknowledged_by": i.acknowledged_by,
        "resolved_at": ts_json(i.resolved_at.as_ref()),
        "resolved_by": i.resolved_by,
        "escalation_step": i.escalation_step,
        "next_escalation_at": ts_json(i.next_escalation_at.as_ref()),
    })
}

fn timeline_json(e: &IncidentTimelineEntry) -> Value {
    json!({
        "at": ts_json(e.at.as_ref()),
        "kind": e.kind,
        "actor": e.actor,
        "detail": json_doc(&e.detail_json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_people_read_well() {
        assert_eq!(
            label("service=api").expect("label"),
            ("service".into(), "api".into())
        );
        assert!(label("=api").is_err() && label("service").is_err());
        let aiko = OnCallPerson {
            name: "aiko".into(),
            slack: "U1".into(),
            ..Default::default()
        };
        assert_eq!(person_text(Some(&aiko)), "aiko (slack U1)");
        assert_eq!(person_text(None), "nobody");
        assert_eq!(person_json(&aiko)["discord"], Value::Null);
        assert_eq!(names(&["a".into(), "b".into()]), "a → b");
        assert_eq!(names(&[]), "-");
    }
}
