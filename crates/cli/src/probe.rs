//! `opsloop probe list|run|add|rm`: the heartbeat-worker's uptime probes
//! over its HTTP port (`GET /probes`, viewer; `POST /probes/{name}/run`,
//! `POST /probes`, `DELETE /probes/{name}`, admin). Probes come from
//! `[[heartbeat.probes]]` of the daemon's file and from `opsloop probe add`
//! (stored in the database, run by every instance's leader without a
//! restart); the file wins on a name clash. The daemon holds the clients
//! and secrets, so a check asked for here runs there, exactly as a
//! scheduled one, and is recorded like one.

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
    /// Add a probe at run time (admin): stored in the database and run by
    /// the heartbeat leader within seconds, no restart. The keys are those
    /// of [[heartbeat.probes]] (README); a name the configuration file
    /// uses is refused (the file wins: edit it there). Bad values are
    /// refused naming the field.
    Add(Box<AddArgs>),
    /// Remove a probe added with `opsloop probe add` (admin): the kinds it
    /// paused are resumed; its history stays until the retention purges
    /// it. Probes of the configuration file are removed from the file.
    Rm {
        /// The probe's name.
        name: String,
    },
}

/// `opsloop probe add`: the keys of one `[[heartbeat.probes]]` entry.
#[derive(clap::Args)]
pub struct AddArgs {
    /// Unique name (letters, digits, '_', '-', '.').
    name: String,
    /// http, tcp, tls, grpc_health, dns or heartbeat.
    #[arg(long)]
    kind: String,
    /// URL (http, grpc_health), host:port (tcp, tls) or host name (dns).
    #[arg(long, default_value = "")]
    target: String,
    /// Seconds between checks (at least 10; default 60).
    #[arg(long, value_name = "SECONDS")]
    interval_secs: Option<u64>,
    /// A check taking longer fails (default 10000).
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Consecutive failed checks that make it down (default 3).
    #[arg(long)]
    retries: Option<u32>,
    /// Severity of its ProbeDown alert: info, warning, high, critical.
    #[arg(long)]
    severity: Option<String>,
    /// http: request method (default GET).
    #[arg(long)]
    method: Option<String>,
    /// http: an accepted status code (repeat; default any 2xx).
    #[arg(long = "expected-status", value_name = "CODE")]
    expected_status: Vec<u16>,
    /// http: text the body must contain.
    #[arg(long)]
    body_contains: Option<String>,
    /// http: a path into the JSON body (checks[0].state) ...
    #[arg(long, requires = "json_equals")]
    json_path: Option<String>,
    /// ... and the value it must equal (JSON, or else taken as text).
    #[arg(long, requires = "json_path")]
    json_equals: Option<String>,
    /// http: slower responses fail.
    #[arg(long, value_name = "MS")]
    max_response_ms: Option<u64>,
    /// http: a request header NAME=VALUE (repeat; not for credentials).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// http: a header read from a secret on the daemon, NAME=SECRET (repeat).
    #[arg(long = "header-secret", value_name = "NAME=SECRET")]
    header_secrets: Vec<String>,
    /// grpc_health: the service asked about.
    #[arg(long)]
    grpc_service: Option<String>,
    /// heartbeat: no ping for this long is down (default 10).
    #[arg(long, value_name = "MINUTES")]
    absent_minutes: Option<u64>,
    /// A step kind paused for claiming while the probe is down (repeat).
    #[arg(long = "depends-kind", value_name = "KIND")]
    depends_kinds: Vec<String>,
    /// pause_kinds (default) or emergency_stop.
    #[arg(long)]
    on_down: Option<String>,
}

impl AddArgs {
    /// The `[[heartbeat.probes]]` entry as JSON, only the keys given.
    fn spec(&self) -> anyhow::Result<Value> {
        let pairs =
            |flag: &str, values: &[String]| -> anyhow::Result<serde_json::Map<String, Value>> {
                values
                    .iter()
                    .map(|pair| {
                        let (name, value) = pair.split_once('=').ok_or_else(|| {
                            crate::exit::usage(format!("{flag} {pair:?}: expected NAME=VALUE"))
                        })?;
                        Ok((name.trim().to_owned(), Value::String(value.to_owned())))
                    })
                    .collect()
            };
        let mut spec = serde_json::Map::new();
        spec.insert("name".into(), self.name.clone().into());
        spec.insert("kind".into(), self.kind.clone().into());
        spec.insert("target".into(), self.target.clone().into());
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                spec.insert(key.to_owned(), value);
            }
        };
        put("interval_secs", self.interval_secs.map(Value::from));
        put("timeout_ms", self.timeout_ms.map(Value::from));
        put("retries", self.retries.map(Value::from));
        put("severity", self.severity.clone().map(Value::from));
        put("method", self.method.clone().map(Value::from));
        put(
            "expected_status",
            (!self.expected_status.is_empty()).then(|| Value::from(self.expected_status.clone())),
        );
        put("body_contains", self.body_contains.clone().map(Value::from));
        put("json_path", self.json_path.clone().map(Value::from));
        put(
            "json_equals",
            self.json_equals
                .as_deref()
                .map(|v| serde_json::from_str(v).unwrap_or_else(|_| Value::from(v))),
        );
        put("max_response_ms", self.max_response_ms.map(Value::from));
        put(
            "headers",
            (!self.headers.is_empty())
                .then(|| pairs("--header", &self.headers).map(Value::Object))
                .transpose()?,
        );
        put(
            "header_secrets",
            (!self.header_secrets.is_empty())
                .then(|| pairs("--header-secret", &self.header_secrets).map(Value::Object))
                .transpose()?,
        );
        put("grpc_service", self.grpc_service.clone().map(Value::from));
        put("absent_minutes", self.absent_minutes.map(Value::from));
        put(
            "depends_kinds",
            (!self.depends_kinds.is_empty()).then(|| Value::from(self.depends_kinds.clone())),
        );
        put("on_down", self.on_down.clone().map(Value::from));
        Ok(Value::Object(spec))
    }
}

/// Runs `opsloop probe …`.
pub async fn run(command: ProbeCommand, globals: &Globals) -> anyhow::Result<()> {
    match command {
        ProbeCommand::List => list(globals).await,
        ProbeCommand::Run { name, timeout } => {
            let timeout: Duration = crate::parse::duration(&timeout).context("--timeout")?;
            check_name(&name)?;
            run_one(globals, &name, timeout).await
        }
        ProbeCommand::Add(args) => {
            let spec = args.spec()?;
            let added = call(
                globals,
                "POST",
                "/probes",
                Some(&spec),
                Duration::from_secs(30),
            )
            .await?;
            if globals.output == OutputFormat::Json {
                return output::print_json(&added);
            }
            outln!(
                "probe {} ({}) added; the heartbeat leader runs it within seconds (opsloop probe list)",
                text(&added["probe"]),
                text(&added["kind"])
            );
            Ok(())
        }
        ProbeCommand::Rm { name } => {
            check_name(&name)?;
            call(
                globals,
                "DELETE",
                &format!("/probes/{name}"),
                None,
                Duration::from_secs(30),
            )
            .await?;
            if globals.output == OutputFormat::Json {
                return output::print_json(&serde_json::json!({"removed": name}));
            }
            outln!("probe {name} removed");
            Ok(())
        }
    }
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.contains(['/', '?', '#', ' ', '%']) {
        return Err(crate::exit::usage(format!(
            "{name:?} is not a probe name (letters, digits, '_', '-', '.')"
        )));
    }
    Ok(())
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
    body: Option<&Value>,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let base = globals.endpoint(Daemon::Heartbeat);
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let token = globals.token()?;
    let sent = match (method, body) {
        ("GET", _) => crate::http::get(&url, token.as_deref(), timeout).await,
        (_, Some(body)) => {
            crate::http::send_json(method, &url, token.as_deref(), body, timeout).await
        }
        ("POST", None) => crate::http::post(&url, token.as_deref(), timeout).await,
        (_, None) => crate::http::delete(&url, token.as_deref(), timeout).await,
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
    if body.trim().is_empty() {
        return Ok(Value::Null);
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
    let answer = call(globals, "GET", "/probes", None, Duration::from_secs(30)).await?;
    if globals.output == OutputFormat::Json {
        return output::print_json(&answer);
    }
    let probes = answer["probes"].as_array().cloned().unwrap_or_default();
    let mut table = Table::new(&[
        "NAME",
        "SOURCE",
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
            text(&p["source"]),
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
    table.print_or("no probes (add [[heartbeat.probes]] tables to the heartbeat-worker's config, or opsloop probe add; see docs/runbook.md)");
    if let Some(shadowed) = answer["shadowed"].as_array().filter(|a| !a.is_empty()) {
        eprintln!(
            "note: added probes {} are ignored: the configuration file defines probes of the same names (it wins); remove them with opsloop probe rm",
            shadowed.iter().map(text).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

async fn run_one(globals: &Globals, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let report = call(
        globals,
        "POST",
        &format!("/probes/{name}/run"),
        None,
        timeout,
    )
    .await?;
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
