//! `opsloop probe list|run`: the heartbeat-worker's uptime probes over its
//! HTTP port (`GET /probes`, viewer; `POST /probes/{name}/run`, admin).
//! Probes are configured in `[[heartbeat.probes]]` of the daemon's file;
//! the daemon holds their clients and secrets, so a check asked for here
//! runs there, exactly as a scheduled one, and is recorded like one.

use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Subcommand;
use serde_json::Value;
use tonic::Code;

use crate::client::{Daemon, Globals};
use crate::output::{self, OutputFormat, Table, fields};

/// `opsloop probe …`
#[derive(Subcommand)]
pub enum ProbeCommand {
    /// Every configured probe: state, since when, last check, latency,
    /// certificate days left and the step kinds it holds paused
    /// (GET /probes on the heartbeat-worker; viewer role).
    List,
    /// Check one probe now, whatever its schedule, and print the result.
    /// The check is recorded like a scheduled one: state, history, and any
    /// probe.down/probe.up, alert or pause it causes (POST
    /// /probes/NAME/run on the heartbeat-worker; admin role).
    Run {
        /// The probe's name (`opsloop probe list`).
        name: String,
        /// How long to wait for the check: seconds or 90s, 5m.
        #[arg(long, default_value = "90s", value_name = "DURATION")]
        timeout: String,
    },
}

/// Runs `opsloop probe …`.
pub async fn run(command: ProbeCommand, globals: &Globals) -> anyhow::Result<()> {
    match command {
        ProbeCommand::List => list(globals).await,
        ProbeCommand::Run { name, timeout } => {
            let timeout: Duration = crate::parse::duration(&timeout).context("--timeout")?;
            run_one(globals, &name, timeout).await
        }
    }
}

/// The gRPC code an HTTP status of the heartbeat-worker stands for (so the
/// exit status follows the one table in [`crate::exit`]).
fn code_for(status: u16) -> Code {
    match status {
        400 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::FailedPrecondition,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Unknown,
    }
}

/// `method path` on the heartbeat-worker; the JSON body of a 2xx answer.
async fn call(
    globals: &Globals,
    method: &str,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let base = globals.endpoint(Daemon::Heartbeat);
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let token = globals.token()?;
    let sent = match method {
        "GET" => crate::http::get(&url, token.as_deref(), timeout).await,
        _ => crate::http::post(&url, token.as_deref(), timeout).await,
    };
    let response = match sent {
        Ok(response) => response,
        Err(crate::http::RequestError::Connect(_)) => {
            return Err(crate::client::unreachable(Daemon::Heartbeat, &base));
        }
        Err(crate::http::RequestError::Other(error)) => {
            return Err(crate::exit::status(
                Code::Unavailable,
                format!(
                    "UNAVAILABLE: {method} {url} failed: {} — is the heartbeat-worker healthy? (see its logs)",
                    output::one_line(&format!("{error:#}"))
                ),
            ));
        }
    };
    let body = String::from_utf8_lossy(&response.body).into_owned();
    if !(200..300).contains(&response.status) {
        let code = code_for(response.status);
        let detail = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| output::truncate(&output::one_line(&body), 300));
        let hint = match response.status {
            401 => "give a token with --token, --token-file or $OPSLOOP_TOKEN",
            403 => "use a token with the role the call needs (opsloop token list)",
            404 if detail.is_empty() => "is this the heartbeat-worker's HTTP port (default 9755)?",
            404 => "see opsloop probe list for the configured names",
            _ => "see the heartbeat-worker's logs",
        };
        return Err(crate::exit::status(
            code,
            format!(
                "{}: HTTP {} from {method} {url}: {detail} — {hint}",
                crate::client::code_name(code),
                response.status
            ),
        ));
    }
    serde_json::from_str(&body).map_err(|e| {
        anyhow!("{method} {url} answered something that is not JSON ({e}); is this the heartbeat-worker?")
    })
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn kinds(value: &Value) -> String {
    let list: Vec<String> = value
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(",")
    }
}

async fn list(globals: &Globals) -> anyhow::Result<()> {
    let answer = call(globals, "GET", "/probes", Duration::from_secs(30)).await?;
    if globals.output == OutputFormat::Json {
        return output::print_json(&answer);
    }
    let probes = answer["probes"].as_array().cloned().unwrap_or_default();
    let mut table = Table::new(&[
        "NAME",
        "KIND",
        "STATE",
        "SINCE",
        "LAST CHECK",
        "LATENCY",
        "CERT DAYS",
        "PAUSES",
        "LAST ERROR",
    ])
    .max_cell(60);
    for p in &probes {
        let latency = match p["latency_ms"].as_i64() {
            Some(ms) => format!("{ms} ms"),
            None => "-".into(),
        };
        let pauses = if p["paused_kinds"].as_array().is_some_and(|a| !a.is_empty()) {
            format!("paused: {}", kinds(&p["paused_kinds"]))
        } else if p["on_down"] == "emergency_stop" {
            "on down: emergency stop".into()
        } else if p["depends_kinds"].as_array().is_some_and(|a| !a.is_empty()) {
            format!("on down: {}", kinds(&p["depends_kinds"]))
        } else {
            "-".into()
        };
        table.row(vec![
            text(&p["name"]),
            text(&p["kind"]),
            text(&p["status"]).to_uppercase(),
            text(&p["since"]),
            text(&p["last_checked_at"]),
            latency,
            text(&p["cert_days_left"]),
            pauses,
            text(&p["last_error"]),
        ]);
    }
    table.print_or("no probes are configured (add [[heartbeat.probes]] tables to the heartbeat-worker's config; see docs/runbook.md)");
    Ok(())
}

async fn run_one(globals: &Globals, name: &str, timeout: Duration) -> anyhow::Result<()> {
    if name.is_empty() || name.contains(['/', '?', '#', ' ']) {
        return Err(crate::exit::usage(format!(
            "{name:?} is not a probe name (letters, digits, '_', '-', '.')"
        )));
    }
    let report = call(globals, "POST", &format!("/probes/{name}/run"), timeout).await?;
    if globals.output == OutputFormat::Json {
        return output::print_json(&report);
    }
    let mut pairs = vec![
        ("probe", text(&report["probe"])),
        (
            "result",
            if report["ok"] == true {
                "ok".into()
            } else {
                format!("FAILED: {}", text(&report["error"]))
            },
        ),
        ("latency", format!("{} ms", text(&report["latency_ms"]))),
        ("state", text(&report["status"]).to_uppercase()),
    ];
    if !report["transition"].is_null() {
        pairs.push(("changed", format!("went {}", text(&report["transition"]))));
    }
    if !report["alert"].is_null() {
        pairs.push(("ProbeDown alert", text(&report["alert"])));
    }
    if report["maintenance"] == true {
        pairs.push(("maintenance", "in a window: down alerts held back".into()));
    }
    if !report["cert_notice_days"].is_null() {
        pairs.push((
            "certificate notice",
            format!("{} days", text(&report["cert_notice_days"])),
        ));
    }
    if report["paused_kinds"].is_array() {
        pairs.push(("paused step kinds", kinds(&report["paused_kinds"])));
    }
    if report["resumed_kinds"].is_array() {
        pairs.push(("resumed step kinds", kinds(&report["resumed_kinds"])));
    }
    if report["emergency_stop_engaged"] == true {
        pairs.push((
            "emergency stop",
            "ENGAGED (release it with opsloop emergency-stop release)".into(),
        ));
    }
    out!("{}", fields(&pairs));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_to_the_exit_table() {
        assert_eq!(code_for(404), Code::NotFound);
        assert_eq!(code_for(403), Code::PermissionDenied);
        assert_eq!(code_for(401), Code::Unauthenticated);
        assert_eq!(code_for(503), Code::Unavailable);
        assert_eq!(code_for(500), Code::Unknown);
    }
}
