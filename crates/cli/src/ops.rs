//! The operator's commands: `opsloop summary`, `opsloop health`, `opsloop
//! emergency-stop engage|release|status`, `opsloop report weekly` (all
//! `OpsService`) and
//! `opsloop heartbeat run-once` (the heartbeat-worker's HTTP `POST /run`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand, ValueEnum};
use opsloop_core::proto::v1::{
    EmergencyStopState, EngageEmergencyStopRequest, GetHealthRequest, GetSummaryRequest,
    GetWeeklyReportRequest, ReleaseEmergencyStopRequest, SummaryPeriod, WeeklyReport,
};
use serde_json::{Value, json};

use crate::client::{Connection, Daemon, Globals};
use crate::output::{self, OutputFormat, Table, fields, json_doc, opt, opt_json, ts, ts_json};

/// `opsloop summary`
#[derive(Args)]
pub struct SummaryArgs {
    /// The window to count over.
    #[arg(long, value_enum, default_value_t = PeriodArg::Daily)]
    period: PeriodArg,
}

/// A summary window on the command line.
#[derive(Clone, Copy, ValueEnum)]
pub enum PeriodArg {
    /// The last 24 hours.
    Daily,
    /// The last 7 days.
    Weekly,
}

/// `opsloop emergency-stop …`
#[derive(Subcommand)]
pub enum EmergencyStopCommand {
    /// Engage the stop: proposals are rejected and no step is handed out (admin token).
    Engage {
        /// Why (required; audited and alerted).
        #[arg(long)]
        reason: String,
    },
    /// Release the stop (admin token).
    Release {
        /// Why (required; audited).
        #[arg(long)]
        reason: String,
    },
    /// Show whether the stop is engaged, by whom and why.
    Status,
}

/// `opsloop heartbeat …`
#[derive(Subcommand)]
pub enum HeartbeatCommand {
    /// Run one heartbeat tick now (HTTP POST /run on the heartbeat-worker,
    /// default http://127.0.0.1:9755, or $OPSLOOP_HEARTBEAT_ENDPOINT) and
    /// print its result.
    RunOnce {
        /// How long to wait for the tick to finish: seconds or 90s, 5m.
        #[arg(long, default_value = "120s", value_name = "DURATION")]
        timeout: String,
    },
}

/// `opsloop report …`
#[derive(Subcommand)]
pub enum ReportCommand {
    /// Show the stored weekly operations report.
    Weekly {
        /// Any time within the wanted week (RFC 3339, a date, or `7d` ago).
        /// Default: the latest report.
        #[arg(long, value_name = "TIME")]
        week_of: Option<String>,
    },
}

/// Runs `opsloop summary`.
pub async fn summary(args: SummaryArgs, globals: &Globals) -> anyhow::Result<()> {
    let period = match args.period {
        PeriodArg::Daily => SummaryPeriod::Daily,
        PeriodArg::Weekly => SummaryPeriod::Weekly,
    };
    let conn = Connection::open(globals, Daemon::Api).await?;
    let summary = conn
        .ops()
        .get_summary(GetSummaryRequest {
            period: period as i32,
        })
        .await
        .map_err(|s| conn.error(s))?
        .into_inner()
        .summary
        .ok_or_else(|| anyhow!("the api answered without a summary"))?;
    let period_word = output::enum_label(summary.period().as_str_name(), "SUMMARY_PERIOD_");
    match globals.output {
        // The same shape as GET /api/ops/summary/daily.
        OutputFormat::Json => output::print_json(&json!({
            "period": period_word,
            "since": ts_json(summary.since.as_ref()),
            "proposals": summary.proposals.iter().collect::<BTreeMap<_, _>>(),
            "missions": summary.missions.iter().collect::<BTreeMap<_, _>>(),
            "steps": summary.steps.iter().collect::<BTreeMap<_, _>>(),
            "totalEvents": summary.total_events,
            "generatedAt": ts_json(summary.generated_at.as_ref()),
        })),
        OutputFormat::Table => {
            outln!("{period_word} summary since {}", ts(summary.since.as_ref()));
            outln!();
            let mut table = Table::new(&["", "COUNTS"]);
            table.row(vec![
                "proposals".into(),
                counts(
                    &summary.proposals,
                    &["pending", "approved", "rejected", "expired"],
                ),
            ]);
            table.row(vec![
                "missions".into(),
                counts(
                    &summary.missions,
                    &["running", "succeeded", "failed", "cancelled"],
                ),
            ]);
            table.row(vec![
                "steps".into(),
                counts(
                    &summary.steps,
                    &["queued", "running", "succeeded", "failed", "cancelled"],
                ),
            ]);
            table.row(vec!["events".into(), summary.total_events.to_string()]);
            out!("{}", table.render());
            Ok(())
        }
    }
}

/// `pending 1  approved 4 …` in a fixed order, then any other keys.
fn counts(map: &HashMap<String, i64>, order: &[&str]) -> String {
    let mut parts: Vec<String> = order
        .iter()
        .map(|key| format!("{key} {}", map.get(*key).copied().unwrap_or(0)))
        .collect();
    let mut extra: Vec<_> = map
        .iter()
        .filter(|(k, _)| !order.contains(&k.as_str()))
        .collect();
    extra.sort();
    parts.extend(extra.into_iter().map(|(k, v)| format!("{k} {v}")));
    parts.join("  ")
}

/// Runs `opsloop health`: the ops-health figures the heartbeat alerts on.
pub async fn health(globals: &Globals) -> anyhow::Result<()> {
    let conn = Connection::open(globals, Daemon::Api).await?;
    let h = conn
        .ops()
        .get_health(GetHealthRequest {})
        .await
        .map_err(|s| conn.error(s))?
        .into_inner()
        .health
        .ok_or_else(|| anyhow!("the api answered without health figures"))?;
    let stop = h.emergency_stop.clone().unwrap_or_default();
    match globals.output {
        OutputFormat::Json => output::print_json(&json!({
            "step_failures_last_hour": h.step_failures_last_hour,
            "failure_threshold": h.failure_threshold,
            "failure_spike": h.failure_spike,
            "pending_proposals": h.pending_proposals,
            "queued_steps": h.queued_steps,
            "running_steps": h.running_steps,
            "expired_leases": h.expired_leases,
            "emergency_stop": stop_json(&stop),
            "alert_cooldown_until": ts_json(h.alert_cooldown_until.as_ref()),
            "last_heartbeat_at": ts_json(h.last_heartbeat_at.as_ref()),
            "cost_today_usd": h.cost_today_usd,
            "cost_month_usd": h.cost_month_usd,
            "paused_kinds": h.paused_kinds.iter().map(|p| json!({
                "kind": p.kind,
                "source": p.source,
                "reason": p.reason,
                "since": ts_json(p.since.as_ref()),
            })).collect::<Vec<_>>(),
            "generated_at": ts_json(h.generated_at.as_ref()),
        })),
        OutputFormat::Table => {
            let spike = if h.failure_spike { " (SPIKE)" } else { "" };
            out!(
                "{}",
                fields(&[
                    (
                        "step failures (1h)",
                        format!(
                            "{} of threshold {}{spike}",
                            h.step_failures_last_hour, h.failure_threshold
                        ),
                    ),
                    ("pending proposals", h.pending_proposals.to_string()),
                    (
                        "steps",
                        format!(
                            "{} queued, {} running, {} with expired lease",
                            h.queued_steps, h.running_steps, h.expired_leases
                        ),
                    ),
                    (
                        "emergency stop",
                        if stop.engaged {
                            format!(
                                "ENGAGED by {}: {}",
                                opt(stop.actor.as_deref()),
                                opt(stop.reason.as_deref())
                            )
                        } else {
                            "released".into()
                        },
                    ),
                    ("alert cooldown until", ts(h.alert_cooldown_until.as_ref())),
                    ("last heartbeat", ts(h.last_heartbeat_at.as_ref())),
                    (
                        "cost",
                        format!(
                            "${:.2} today, ${:.2} this month",
                            h.cost_today_usd, h.cost_month_usd
                        )
                    ),
                    ("paused step kinds", paused_kinds_line(&h.paused_kinds)),
                ])
            );
            Ok(())
        }
    }
}

/// `none`, or each paused kind with what paused it and since when:
/// `payments (probe:payments-api since 2027-01-31 22:00:00 UTC: …)`.
fn paused_kinds_line(paused: &[opsloop_core::proto::v1::PausedStepKind]) -> String {
    if paused.is_empty() {
        return "none".into();
    }
    paused
        .iter()
        .map(|p| {
            format!(
                "{} ({} since {}: {})",
                p.kind,
                p.source,
                ts(p.since.as_ref()),
                p.reason
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs `opsloop emergency-stop …`.
pub async fn emergency_stop(
    command: EmergencyStopCommand,
    globals: &Globals,
) -> anyhow::Result<()> {
    let conn = Connection::open(globals, Daemon::Api).await?;
    let mut ops = conn.ops();
    let (state, changed) = match command {
        EmergencyStopCommand::Engage { reason } => {
            let r = ops
                .engage_emergency_stop(EngageEmergencyStopRequest {
                    reason,
                    actor: globals.actor.clone(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            (r.state, Some(r.changed))
        }
        EmergencyStopCommand::Release { reason } => {
            let r = ops
                .release_emergency_stop(ReleaseEmergencyStopRequest {
                    reason,
                    actor: globals.actor.clone(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            (r.state, Some(r.changed))
        }
        EmergencyStopCommand::Status => {
            let health = ops
                .get_health(GetHealthRequest {})
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .health
                .ok_or_else(|| anyhow!("the api answered without health figures"))?;
            (health.emergency_stop, None)
        }
    };
    let state = state.unwrap_or_default();
    match globals.output {
        OutputFormat::Json => {
            let mut value = stop_json(&state);
            if let (Some(changed), Value::Object(map)) = (changed, &mut value) {
                map.insert("changed".into(), Value::Bool(changed));
            }
            output::print_json(&value)
        }
        OutputFormat::Table => {
            let mut pairs = vec![(
                "emergency stop",
                if state.engaged { "ENGAGED" } else { "released" }.to_owned(),
            )];
            if let Some(changed) = changed {
                pairs.push((
                    "changed",
                    if changed {
                        "yes".into()
                    } else {
                        "no (already in that state)".into()
                    },
                ));
            }
            pairs.extend([
                ("reason", opt(state.reason.as_deref())),
                ("by", opt(state.actor.as_deref())),
                ("since", ts(state.changed_at.as_ref())),
            ]);
            out!("{}", fields(&pairs));
            Ok(())
        }
    }
}

fn stop_json(state: &EmergencyStopState) -> Value {
    json!({
        "engaged": state.engaged,
        "reason": opt_json(state.reason.as_deref()),
        "actor": opt_json(state.actor.as_deref()),
        "changed_at": ts_json(state.changed_at.as_ref()),
    })
}

/// Runs `opsloop heartbeat run-once`.
pub async fn heartbeat(command: HeartbeatCommand, globals: &Globals) -> anyhow::Result<()> {
    let HeartbeatCommand::RunOnce { timeout } = command;
    let timeout: Duration = crate::parse::duration(&timeout).context("--timeout")?;
    let base = globals.endpoint(Daemon::Heartbeat);
    let url = format!("{}/run", base.trim_end_matches('/'));
    let token = globals.token()?;
    let response = match crate::http::post(&url, token.as_deref(), timeout).await {
        Ok(response) => response,
        Err(crate::http::RequestError::Connect(_)) => {
            return Err(crate::client::unreachable(Daemon::Heartbeat, &base));
        }
        Err(crate::http::RequestError::Other(error)) => {
            return Err(anyhow!(
                "UNAVAILABLE: POST {url} failed: {} — is the heartbeat-worker healthy? (see its logs)",
                output::one_line(&format!("{error:#}"))
            ));
        }
    };
    let body = String::from_utf8_lossy(&response.body);
    if !(200..300).contains(&response.status) {
        let hint = match response.status {
            401 => "give a token with --token, --token-file or $OPSLOOP_TOKEN",
            403 => "use a token with the role the call needs (opsloop token list)",
            404 | 405 => "is this the heartbeat-worker's HTTP port (default 9755)?",
            409 | 423 | 429 => "a tick is running or this process is not the leader; retry shortly",
            _ => "see the heartbeat-worker's logs",
        };
        let body = output::truncate(&output::one_line(&body), 300);
        let detail = if body.is_empty() {
            String::new()
        } else {
            format!(": {body}")
        };
        return Err(anyhow!(
            "HTTP {} from POST {url}{detail} — {hint}",
            response.status
        ));
    }
    match globals.output {
        OutputFormat::Json => output::print_json(&json_doc(&body)),
        OutputFormat::Table => {
            match serde_json::from_str::<Value>(&body) {
                Ok(value) => outln!("{}", serde_json::to_string_pretty(&value)?),
                Err(_) if body.trim().is_empty() => {
                    outln!("heartbeat tick done (HTTP {})", response.status)
                }
                Err(_) => outln!("{}", body.trim()),
            }
            Ok(())
        }
    }
}

/// Runs `opsloop report …`.
pub async fn report(command: ReportCommand, globals: &Globals) -> anyhow::Result<()> {
    let ReportCommand::Weekly { week_of } = command;
    let week_of = week_of
        .as_deref()
        .map(|t| crate::parse::instant(t, chrono::Utc::now()).context("--week-of"))
        .transpose()?
        .map(output::to_timestamp);
    let conn = Connection::open(globals, Daemon::Api).await?;
    let report = conn
        .ops()
        .get_weekly_report(GetWeeklyReportRequest { week_of })
        .await
        .map_err(|status| {
            if status.code() == tonic::Code::NotFound {
                anyhow!(
                    "NOT_FOUND: {} — the heartbeat stores one report a week (default Monday 09:00 UTC, heartbeat.summary_timezone); try another --week-of",
                    output::one_line(status.message())
                )
            } else {
                conn.error(status)
            }
        })?
        .into_inner()
        .report
        .ok_or_else(|| anyhow!("the api answered without a report"))?;
    match globals.output {
        OutputFormat::Json => output::print_json(&report_json(&report)),
        OutputFormat::Table => {
            print_report(&report);
            Ok(())
        }
    }
}

fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

fn print_report(r: &WeeklyReport) {
    out!(
        "{}",
        fields(&[
            (
                "week",
                format!(
                    "{} → {}",
                    ts(r.period_start.as_ref()),
                    ts(r.period_end.as_ref())
                )
            ),
            (
                "missions",
                format!(
                    "{} finished: {} succeeded, {} failed, {} cancelled ({} success)",
                    r.missions_total,
                    r.missions_succeeded,
                    r.missions_failed,
                    r.missions_cancelled,
                    percent(r.mission_success_rate)
                ),
            ),
            (
                "step duration",
                format!(
                    "p50 {} ms, p95 {} ms",
                    r.step_duration_p50_ms, r.step_duration_p95_ms
                ),
            ),
            (
                "cost",
                format!("${:.2} of ${:.2} budget", r.cost_usd, r.budget_usd)
            ),
            ("last backup", ts(r.last_backup_at.as_ref())),
            (
                "last verified backup",
                ts(r.last_verified_backup_at.as_ref())
            ),
            ("generated", ts(r.generated_at.as_ref())),
        ])
    );
    outln!();
    let mut kinds = Table::new(&[
        "KIND",
        "TOTAL",
        "SUCCEEDED",
        "FAILED",
        "SUCCESS",
        "P50 MS",
        "P95 MS",
    ]);
    for k in &r.step_kinds {
        kinds.row(vec![
            k.kind.clone(),
            k.total.to_string(),
            k.succeeded.to_string(),
            k.failed.to_string(),
            percent(k.success_rate),
            k.duration_p50_ms.to_string(),
            k.duration_p95_ms.to_string(),
        ]);
    }
    kinds.print_or("no steps finished this week");
    for (title, list) in [
        ("FAILURE REASON", &r.failures_by_reason),
        ("ALERT", &r.alerts_fired),
    ] {
        if list.is_empty() {
            continue;
        }
        outln!();
        let mut table = Table::new(&[title, "COUNT"]);
        for item in list {
            table.row(vec![item.name.clone(), item.count.to_string()]);
        }
        out!("{}", table.render());
    }
    let extra = report_extras(&r.report_json);
    if !extra.is_empty() {
        outln!();
        out!("{extra}");
    }
}

/// What only the stored body carries (reports from before it had them show
/// nothing here): each SLI against its objective, met or missed; incidents
/// with MTTA/MTTR; cost per kind and per upstream resource and kind, and how
/// the budget was derived.
fn report_extras(report_json: &str) -> String {
    let Ok(body) = serde_json::from_str::<Value>(report_json) else {
        return String::new();
    };
    let verdict = |met: &Value| match met.as_bool() {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "no data",
    };
    let mut out = String::new();
    let slis = body["slis"].as_array().cloned().unwrap_or_default();
    if !slis.is_empty() {
        let mut table = Table::new(&[
            "SLI",
            "AVAILABILITY",
            "OBJECTIVE",
            "",
            "P95",
            "OBJECTIVE",
            "",
        ]);
        for sli in &slis {
            let a = &sli["availability"];
            let l = &sli["latencyP95Ms"];
            let ms = |v: &Value| {
                v.as_i64()
                    .map(|v| format!("{v} ms"))
                    .unwrap_or_else(|| "-".into())
            };
            table.row(vec![
                sli["name"].as_str().unwrap_or("-").to_owned(),
                a["value"]
                    .as_f64()
                    .map(|v| format!("{:.2}%", v * 100.0))
                    .unwrap_or_else(|| "-".into()),
                a["objective"]
                    .as_f64()
                    .map(|v| format!("{:.1}%", v * 100.0))
                    .unwrap_or_default(),
                verdict(&a["met"]).to_owned(),
                ms(&l["value"]),
                if l.is_object() {
                    ms(&l["objective"])
                } else {
                    "-".into()
                },
                if l.is_object() {
                    verdict(&l["met"]).to_owned()
                } else {
                    "not recorded".into()
                },
            ]);
        }
        out.push_str(&table.render());
    }
    let i = &body["incidents"];
    if i["opened"].as_i64().unwrap_or(0) > 0 {
        let minutes = |v: &Value| {
            v.as_f64()
                .map(|s| format!("{:.1} min", s / 60.0))
                .unwrap_or_else(|| "-".into())
        };
        out.push_str(&format!(
            "\nincidents: {} opened, {} acknowledged, {} resolved; MTTA {}, MTTR {}\n",
            i["opened"],
            i["acknowledged"],
            i["resolved"],
            minutes(&i["mttaSeconds"]),
            minutes(&i["mttrSeconds"])
        ));
    }
    let kinds = body["cost"]["byKind"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if !kinds.is_empty() {
        let mut table = Table::new(&["COST KIND", "USD"]);
        for (kind, usd) in &kinds {
            table.row(vec![
                kind.clone(),
                format!("{:.2}", usd.as_f64().unwrap_or(0.0)),
            ]);
        }
        out.push('\n');
        out.push_str(&table.render());
    }
    let resources = body["cost"]["byResource"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !resources.is_empty() {
        let mut table = Table::new(&["RESOURCE", "KIND", "CALLS", "USD"]);
        for r in &resources {
            table.row(vec![
                r["resource"].as_str().unwrap_or("?").to_owned(),
                r["kind"].as_str().unwrap_or("?").to_owned(),
                r["calls"].as_i64().unwrap_or(0).to_string(),
                format!("{:.2}", r["usd"].as_f64().unwrap_or(0.0)),
            ]);
        }
        out.push('\n');
        out.push_str(&table.render());
    }
    if let Some(basis) = body["cost"]["budgetBasis"]
        .as_str()
        .filter(|b| !b.is_empty())
    {
        out.push_str(&format!("budget: {basis}\n"));
    }
    out
}

fn report_json(r: &WeeklyReport) -> Value {
    let named = |list: &[opsloop_core::proto::v1::NamedCount]| -> Vec<Value> {
        list.iter()
            .map(|n| json!({"name": n.name, "count": n.count}))
            .collect()
    };
    json!({
        "id": r.id,
        "period_start": ts_json(r.period_start.as_ref()),
        "period_end": ts_json(r.period_end.as_ref()),
        "missions_total": r.missions_total,
        "missions_succeeded": r.missions_succeeded,
        "missions_failed": r.missions_failed,
        "missions_cancelled": r.missions_cancelled,
        "mission_success_rate": r.mission_success_rate,
        "step_kinds": r.step_kinds.iter().map(|k| json!({
            "kind": k.kind,
            "total": k.total,
            "succeeded": k.succeeded,
            "failed": k.failed,
            "success_rate": k.success_rate,
            "duration_p50_ms": k.duration_p50_ms,
            "duration_p95_ms": k.duration_p95_ms,
        })).collect::<Vec<_>>(),
        "step_duration_p50_ms": r.step_duration_p50_ms,
        "step_duration_p95_ms": r.step_duration_p95_ms,
        "failures_by_reason": named(&r.failures_by_reason),
        "alerts_fired": named(&r.alerts_fired),
        "cost_usd": r.cost_usd,
        "budget_usd": r.budget_usd,
        "last_backup_at": ts_json(r.last_backup_at.as_ref()),
        "last_verified_backup_at": ts_json(r.last_verified_backup_at.as_ref()),
        "report": json_doc(&r.report_json),
        "generated_at": ts_json(r.generated_at.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_extras_show_objectives_incidents_and_cost_kinds() {
        let body = json!({
            "slis": [
                {"name": "steps", "availability": {"value": 0.95, "objective": 0.999, "met": false},
                 "latencyP95Ms": {"value": 4100, "objective": 500, "met": false}},
                {"name": "alert_delivery", "availability": {"value": 1.0, "objective": 0.999, "met": true},
                 "latencyP95Ms": null}
            ],
            "incidents": {"opened": 2, "acknowledged": 2, "resolved": 1, "mttaSeconds": 180.0, "mttrSeconds": 1800.0},
            "cost": {"byKind": {"analyze": 2.5},
                     "byResource": [{"resource": "twitterapi", "kind": "post_x", "calls": 3000, "usd": 0.45}],
                     "budgetBasis": "monthly budget $800.00 pro-rated over 7 days (30-day month) in UTC"}
        });
        let text = report_extras(&body.to_string());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("SLI"), "{text}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "steps", "95.00%", "99.9%", "MISSED", "4100", "ms", "500", "ms", "MISSED"
            ]
        );
        assert!(lines[2].ends_with("not recorded"), "{text}");
        assert!(text.contains(
            "incidents: 2 opened, 2 acknowledged, 1 resolved; MTTA 3.0 min, MTTR 30.0 min"
        ));
        assert!(text.contains("analyze    2.50"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == ["twitterapi", "post_x", "3000", "0.45"]),
            "{text}"
        );
        assert!(text.contains("budget: monthly budget $800.00 pro-rated over 7 days"));
        // A report stored before these figures existed: nothing extra.
        assert_eq!(report_extras(r#"{"missions": {}}"#), "");
        assert_eq!(report_extras("not json"), "");
    }
}
