//! `opsloop status`: one screen across the daemons — each one's version
//! (`/healthz`), readiness and dependency checks (`/readyz`), and from the
//! api the emergency stop, the backlog, the last heartbeat and who leads
//! (the named leases), and from the
//! backup-agent the newest backup. Exits 0 when every daemon is ready, 6
//! (unavailable) otherwise, after printing everything it could learn.

use std::time::Duration;

use clap::Args;
use opsloop_core::proto::v1::{GetHealthRequest, ListBackupsRequest};
use serde_json::{Value, json};

use crate::client::{Connection, Daemon, Globals};
use crate::output::{OutputFormat, Table, ts_json};

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// `opsloop status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// HTTP address of the api's health port (default: the host of --endpoint or the api endpoint's
    /// host, port 9754).
    #[arg(long, value_name = "URL")]
    pub api_http: Option<String>,
    /// HTTP address of the alerter's health port (default: the alerter
    /// endpoint's host, port 9756).
    #[arg(long, value_name = "URL")]
    pub alerter_http: Option<String>,
    /// HTTP address of the backup-agent's health port (default: the backup
    /// endpoint's host, port 9757).
    #[arg(long, value_name = "URL")]
    pub backup_http: Option<String>,
}

/// The default HTTP (health) port of a daemon.
fn http_port(daemon: Daemon) -> u16 {
    match daemon {
        Daemon::Api => 9754,
        Daemon::Heartbeat => 9755,
        Daemon::Alerter => 9756,
        Daemon::BackupAgent => 9757,
    }
}

/// The health port's URL for a daemon reached at the gRPC `endpoint`: the
/// same scheme and host, the daemon's default HTTP port.
pub fn health_url(endpoint: &str, daemon: Daemon) -> String {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("http", endpoint));
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.rsplit_once(':') {
        // `[::1]:50051` and `host:50051`; a bare IPv6 literal keeps its colons.
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    format!("{scheme}://{host}:{}", http_port(daemon))
}

/// What one daemon's health port said.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// The daemon.
    pub daemon: &'static str,
    /// The health port probed.
    pub url: String,
    /// `version` from `/healthz`.
    pub version: Option<String>,
    /// True when `/readyz` answered 200.
    pub ready: bool,
    /// `/readyz`'s `checks` (name → {status, latency_ms, error}).
    pub checks: Value,
    /// Why the daemon could not be probed.
    pub error: Option<String>,
}

impl Probe {
    fn json(&self) -> Value {
        json!({
            "daemon": self.daemon,
            "url": self.url,
            "version": self.version,
            "ready": self.ready,
            "checks": self.checks,
            "error": self.error,
        })
    }

    /// `database ok, broker error: …` from the checks.
    fn checks_line(&self) -> String {
        let Some(checks) = self.checks.as_object() else {
            return String::new();
        };
        checks
            .iter()
            .map(|(name, check)| {
                let status = check["status"].as_str().unwrap_or("?");
                match check["error"].as_str() {
                    Some(error) => format!("{name} {status}: {error}"),
                    None => format!("{name} {status}"),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Probes `/healthz` and `/readyz` under `url`.
pub async fn probe(daemon: &'static str, url: &str, token: Option<&str>) -> Probe {
    let mut probe = Probe {
        daemon,
        url: url.to_owned(),
        version: None,
        ready: false,
        checks: Value::Null,
        error: None,
    };
    let base = url.trim_end_matches('/');
    match crate::http::get(&format!("{base}/healthz"), token, PROBE_TIMEOUT).await {
        Ok(response) => {
            let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
            probe.version = body["version"].as_str().map(str::to_owned);
        }
        Err(crate::http::RequestError::Connect(error)) => {
            probe.error = Some(format!("unreachable: {error}"));
            return probe;
        }
        Err(crate::http::RequestError::Other(error)) => {
            probe.error = Some(format!("{error:#}"));
            return probe;
        }
    }
    match crate::http::get(&format!("{base}/readyz"), token, PROBE_TIMEOUT).await {
        Ok(response) => {
            let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
            probe.ready = response.status == 200;
            probe.checks = body["checks"].clone();
            if !probe.ready && probe.checks.is_null() {
                probe.error = Some(format!("/readyz answered HTTP {}", response.status));
            }
        }
        Err(crate::http::RequestError::Connect(error)) => {
            probe.error = Some(format!("unreachable: {error}"));
        }
        Err(crate::http::RequestError::Other(error)) => probe.error = Some(format!("{error:#}")),
    }
    probe
}

/// Runs `opsloop status`.
pub async fn run(args: StatusArgs, globals: &Globals) -> anyhow::Result<()> {
    let token = globals.token()?;
    let token = token.as_deref();
    // `--endpoint` names the api here; the other daemons come from their
    // environment variables or defaults.
    let others = Globals {
        endpoint: None,
        ..globals.clone()
    };
    let api_endpoint = globals.endpoint(Daemon::Api);
    let alerter_endpoint = others.endpoint(Daemon::Alerter);
    let backup_endpoint = others.endpoint(Daemon::BackupAgent);
    let targets = [
        (
            "api",
            args.api_http
                .unwrap_or_else(|| health_url(&api_endpoint, Daemon::Api)),
        ),
        ("heartbeat-worker", others.endpoint(Daemon::Heartbeat)),
        (
            "alerter",
            args.alerter_http
                .unwrap_or_else(|| health_url(&alerter_endpoint, Daemon::Alerter)),
        ),
        (
            "backup-agent",
            args.backup_http
                .unwrap_or_else(|| health_url(&backup_endpoint, Daemon::BackupAgent)),
        ),
    ];
    // One after another: four probes, each bounded by PROBE_TIMEOUT.
    let mut probes = Vec::with_capacity(targets.len());
    for (name, url) in &targets {
        probes.push(probe(name, url, token).await);
    }

    // The api's figures and the newest backup; a daemon that does not answer
    // leaves its part empty with the reason.
    let (health, leaders, health_error) = match Connection::open(globals, Daemon::Api).await {
        Ok(conn) => match conn.ops().get_health(GetHealthRequest {}).await {
            Ok(response) => {
                let response = response.into_inner();
                (response.health, response.leaders, None)
            }
            Err(status) => (None, Vec::new(), Some(format!("{:#}", conn.error(status)))),
        },
        Err(error) => (None, Vec::new(), Some(format!("{error:#}"))),
    };
    let (newest_backup, backup_error) = match Connection::open(&others, Daemon::BackupAgent).await {
        Ok(conn) => match conn
            .backups()
            .list_backups(ListBackupsRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
        {
            Ok(response) => (response.into_inner().backups.into_iter().next(), None),
            Err(status) => (None, Some(format!("{:#}", conn.error(status)))),
        },
        Err(error) => (None, Some(format!("{error:#}"))),
    };

    let stop = health
        .as_ref()
        .and_then(|h| h.emergency_stop.clone())
        .unwrap_or_default();
    let document = json!({
        "daemons": probes.iter().map(Probe::json).collect::<Vec<_>>(),
        "emergency_stop": health.as_ref().map(|_| json!({
            "engaged": stop.engaged,
            "reason": stop.reason,
            "actor": stop.actor,
        })),
        "backlog": health.as_ref().map(|h| json!({
            "pending_proposals": h.pending_proposals,
            "queued_steps": h.queued_steps,
            "running_steps": h.running_steps,
            "expired_leases": h.expired_leases,
            "step_failures_last_hour": h.step_failures_last_hour,
        })),
        "last_heartbeat_at": health.as_ref().map(|h| ts_json(h.last_heartbeat_at.as_ref())),
        "leaders": leaders.iter().map(|l| json!({
            "name": l.name,
            "holder": l.holder,
            "held": l.held,
            "expires_at": ts_json(l.expires_at.as_ref()),
        })).collect::<Vec<_>>(),
        "health_error": health_error,
        "newest_backup": newest_backup.as_ref().map(|b| json!({
            "id": b.id,
            "target": b.target,
            "status": crate::output::enum_label(b.status().as_str_name(), "BACKUP_STATUS_"),
            "started_at": ts_json(b.started_at.as_ref()),
            "size_bytes": b.size_bytes,
            "verified_at": ts_json(b.verified_at.as_ref()),
        })),
        "backup_error": backup_error,
    });
    match globals.output {
        OutputFormat::Json => crate::output::print_json(&document)?,
        OutputFormat::Table => print_table(&probes, &document),
    }
    let not_ready: Vec<&str> = probes
        .iter()
        .filter(|p| !p.ready)
        .map(|p| p.daemon)
        .collect();
    if not_ready.is_empty() {
        Ok(())
    } else {
        Err(crate::exit::status(
            tonic::Code::Unavailable,
            format!("UNAVAILABLE: not ready: {}", not_ready.join(", ")),
        ))
    }
}

fn print_table(probes: &[Probe], document: &Value) {
    let mut table = Table::new(&["DAEMON", "VERSION", "READY", "CHECKS"]).max_cell(100);
    for probe in probes {
        let ready = match (&probe.error, probe.ready) {
            (Some(_), _) => "down".to_owned(),
            (None, true) => "ready".to_owned(),
            (None, false) => "NOT READY".to_owned(),
        };
        let checks = probe.error.clone().unwrap_or_else(|| probe.checks_line());
        table.row(vec![
            probe.daemon.to_owned(),
            probe.version.clone().unwrap_or_else(|| "-".into()),
            ready,
            checks,
        ]);
    }
    crate::out!("{}", table.render());
    let text = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let stop = &document["emergency_stop"];
    let stop_line = if stop.is_null() {
        format!("unknown ({})", text(&document["health_error"]))
    } else if stop["engaged"] == true {
        format!(
            "ENGAGED by {} — {}",
            text(&stop["actor"]),
            text(&stop["reason"])
        )
    } else {
        "released".to_owned()
    };
    let backlog = &document["backlog"];
    let backlog_line = if backlog.is_null() {
        "unknown".to_owned()
    } else {
        format!(
            "{} pending proposals, {} queued / {} running steps, {} expired leases, {} step failures in the last hour",
            backlog["pending_proposals"],
            backlog["queued_steps"],
            backlog["running_steps"],
            backlog["expired_leases"],
            backlog["step_failures_last_hour"]
        )
    };
    let leaders_line = match document["leaders"].as_array() {
        Some(leaders) if !leaders.is_empty() => leaders
            .iter()
            .map(|l| {
                let state = if l["held"] == true {
                    "until"
                } else {
                    "EXPIRED at"
                };
                format!(
                    "{} {} ({state} {})",
                    text(&l["name"]),
                    text(&l["holder"]),
                    text(&l["expires_at"])
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => "none".to_owned(),
    };
    let backup = &document["newest_backup"];
    let backup_line = if backup.is_null() {
        match document["backup_error"].as_str() {
            Some(error) => format!("unknown ({error})"),
            None => "none yet".to_owned(),
        }
    } else {
        format!(
            "{} of {} at {} ({}, verified {})",
            text(&backup["id"]),
            text(&backup["target"]),
            text(&backup["started_at"]),
            text(&backup["status"]),
            text(&backup["verified_at"])
        )
    };
    crate::out!(
        "\n{}",
        crate::output::fields(&[
            ("emergency stop", stop_line),
            ("backlog", backlog_line),
            ("last heartbeat", text(&document["last_heartbeat_at"])),
            ("leaders", leaders_line),
            ("newest backup", backup_line),
        ])
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_urls_keep_the_host_and_take_the_daemons_http_port() {
        assert_eq!(
            health_url("http://127.0.0.1:50051", Daemon::Api),
            "http://127.0.0.1:9754"
        );
        assert_eq!(
            health_url("https://ops.example:443/", Daemon::Alerter),
            "https://ops.example:9756"
        );
        assert_eq!(
            health_url("http://[::1]:50053", Daemon::BackupAgent),
            "http://[::1]:9757"
        );
        assert_eq!(health_url("http://db", Daemon::Api), "http://db:9754");
    }
}
