//! The `[[heartbeat.probes]]` entries: what each uptime probe checks, how
//! often, how long it may take and how many failures make it down. A
//! [`ProbeSpec`] is the TOML shape; [`ProbeSpec::parse`] turns it into a
//! typed [`Probe`] or one error naming the probe and the field. Also the
//! `[[heartbeat.maintenance]]` windows that hold back probes' down alerts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use opsloop_core::alert::Severity;
use serde::{Deserialize, Serialize};

use crate::config::SettingsError;
use crate::probe_rules::{JsonPath, MaintenanceWindow};

/// Shortest interval a probe may run at.
pub const MIN_INTERVAL_SECS: u64 = 10;

/// One `[[heartbeat.probes]]` entry as written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct ProbeSpec {
    /// Unique name: the `probe` label of metrics, alerts and events
    /// (required; `A-Za-z0-9_.-`, at most 64).
    pub name: String,
    /// `http`, `tcp`, `tls`, `grpc_health`, `dns` or `heartbeat` (required).
    pub kind: String,
    /// URL (`http`, `grpc_health`), `host:port` (`tcp`, `tls`; an
    /// `https://` URL also works for `tls`) or host name (`dns`); unused by
    /// `heartbeat`.
    pub target: String,
    /// Seconds between checks (at least 10).
    pub interval_secs: u64,
    /// Longest a check may take, in milliseconds.
    pub timeout_ms: u64,
    /// Consecutive failed checks that make the probe down.
    pub retries: u32,
    /// Severity of the down alert: info, warning, high or critical.
    pub severity: String,
    /// `http`: request method.
    pub method: String,
    /// `http`: accepted status codes; empty means any 2xx.
    pub expected_status: Vec<u16>,
    /// `http`: the body must contain this text.
    pub body_contains: Option<String>,
    /// `http`: slower responses count as failures.
    pub max_response_ms: Option<u64>,
    /// `http`: request headers with literal values (not for credentials).
    pub headers: BTreeMap<String, String>,
    /// `http`: request headers whose values are secrets, header name →
    /// secret name (read like every secret: `$CREDENTIALS_DIRECTORY/<name>`,
    /// `/run/secrets/<name>`, then `OPSLOOP_<NAME>`), never logged.
    pub header_secrets: BTreeMap<String, String>,
    /// `http`: a path into the JSON body (`status`, `checks[0].state`,
    /// `$.data.ready`) whose value must equal `json_equals`.
    pub json_path: Option<String>,
    /// `http`: the value expected at `json_path` (a string also matches a
    /// number or boolean written the same way).
    pub json_equals: Option<serde_json::Value>,
    /// `http`: most body bytes read; a longer body fails the check.
    pub max_body_bytes: u64,
    /// `tls`: days before expiry at which one notice each goes out.
    pub warn_days: Vec<u32>,
    /// `http`, `tls`, `grpc_health`: extra CA certificates (PEM) to trust
    /// besides the system roots.
    pub ca_file: Option<String>,
    /// `grpc_health`: the service name asked about (empty: the server).
    pub grpc_service: String,
    /// `heartbeat`: no ping for this long means down.
    pub absent_minutes: u64,
    /// Step kinds that depend on what this probe checks: while it is down
    /// (after its retries) workers get nothing of these kinds
    /// (`on_down = "pause_kinds"`).
    pub depends_kinds: Vec<String>,
    /// What going down does besides the alert: `pause_kinds` (default:
    /// pause `depends_kinds` until the probe is up again) or
    /// `emergency_stop` (engage the global emergency stop; a human
    /// releases it).
    pub on_down: String,
}

impl Default for ProbeSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            kind: String::new(),
            target: String::new(),
            interval_secs: 60,
            timeout_ms: 10_000,
            retries: 3,
            severity: "high".into(),
            method: "GET".into(),
            expected_status: Vec::new(),
            body_contains: None,
            max_response_ms: None,
            max_body_bytes: 64 * 1024,
            warn_days: vec![21, 14, 7, 3, 1],
            ca_file: None,
            grpc_service: String::new(),
            absent_minutes: 10,
            headers: BTreeMap::new(),
            header_secrets: BTreeMap::new(),
            json_path: None,
            json_equals: None,
            depends_kinds: Vec::new(),
            on_down: "pause_kinds".into(),
        }
    }
}

/// An HTTP(S) check.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCheck {
    pub url: reqwest::Url,
    pub method: reqwest::Method,
    pub expected_status: Vec<u16>,
    pub body_contains: Option<String>,
    pub max_response: Option<Duration>,
    pub max_body_bytes: usize,
    /// Literal headers, checked names and values.
    pub headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    /// Header name → secret name, resolved when the probe's client is built.
    pub header_secrets: Vec<(reqwest::header::HeaderName, String)>,
    /// The JSON body must hold `expected` at `path`.
    pub json: Option<JsonCondition>,
}

/// `json_path` equals `json_equals`.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonCondition {
    pub path: JsonPath,
    pub expected: serde_json::Value,
}

/// What a probe does when it goes down (besides its alert).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDown {
    /// Pause the probe's `depends_kinds` for claiming until it is up.
    PauseKinds,
    /// Engage the global emergency stop (released by a human).
    EmergencyStop,
}

impl OnDown {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PauseKinds => "pause_kinds",
            Self::EmergencyStop => "emergency_stop",
        }
    }
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeKind {
    Http(Box<HttpCheck>),
    /// A TCP connect to `host:port`.
    Tcp {
        host: String,
        port: u16,
    },
    /// A TLS handshake: chain valid for `host`, days to expiry.
    Tls {
        host: String,
        port: u16,
        warn_days: Vec<u32>,
    },
    /// `grpc.health.v1.Health/Check` at `endpoint` for `service`.
    GrpcHealth {
        endpoint: String,
        service: String,
    },
    /// The host name resolves to at least one address.
    Dns {
        host: String,
    },
    /// Pushed pings; none for `absent` is down.
    Heartbeat {
        absent: Duration,
    },
}

impl ProbeKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Http(_) => "http",
            Self::Tcp { .. } => "tcp",
            Self::Tls { .. } => "tls",
            Self::GrpcHealth { .. } => "grpc_health",
            Self::Dns { .. } => "dns",
            Self::Heartbeat { .. } => "heartbeat",
        }
    }
}

/// A valid probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub name: String,
    pub kind: ProbeKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub severity: Severity,
    pub ca_file: Option<PathBuf>,
    /// The target as configured (events and alerts quote it).
    pub target: String,
    /// Step kinds paused while the probe is down (valid step kinds).
    pub depends_kinds: Vec<String>,
    pub on_down: OnDown,
}

fn parse_severity(value: &str) -> Option<Severity> {
    Some(match value {
        "info" => Severity::Info,
        "warning" => Severity::Warning,
        "high" => Severity::High,
        "critical" => Severity::Critical,
        _ => return None,
    })
}

/// `host:port`, with the port required.
fn host_port(target: &str) -> Result<(String, u16), String> {
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| format!("{target:?} is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{target:?} has no host"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{target:?}: the port must be 1-65535"))?;
    Ok((host.to_owned(), port))
}

fn parse_url(target: &str, schemes: &[&str]) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(target).map_err(|e| format!("{target:?} is not a URL: {e}"))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!(
            "{target:?}: the scheme must be {}",
            schemes.join(" or ")
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{target:?} has no host"));
    }
    Ok(url)
}

impl ProbeSpec {
    /// The typed probe, or an error naming `probes[<name>].<field>`.
    pub fn parse(&self) -> Result<Probe, SettingsError> {
        let name = self.name.as_str();
        let fail = |field: &str, reason: String| SettingsError {
            key: format!(
                "probes[{}].{field}",
                if name.is_empty() { "?" } else { name }
            ),
            reason,
        };
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(fail(
                "name",
                format!("{name:?}: 1-64 letters, digits, '_', '-' or '.'"),
            ));
        }
        if self.interval_secs < MIN_INTERVAL_SECS {
            return Err(fail(
                "interval_secs",
                format!(
                    "{} s is too often; at least {MIN_INTERVAL_SECS} s",
                    self.interval_secs
                ),
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > self.interval_secs * 1000 {
            return Err(fail(
                "timeout_ms",
                format!(
                    "{} ms: must be between 1 and the interval ({} ms)",
                    self.timeout_ms,
                    self.interval_secs * 1000
                ),
            ));
        }
        if self.retries == 0 {
            return Err(fail("retries", "must be at least 1".into()));
        }
        let severity = parse_severity(&self.severity).ok_or_else(|| {
            fail(
                "severity",
                format!(
                    "{:?}: expected info, warning, high or critical",
                    self.severity
                ),
            )
        })?;
        let target = self.target.trim();
        let need_target = |what: &str| {
            if target.is_empty() {
                Err(fail("target", format!("required: {what}")))
            } else {
                Ok(())
            }
        };
        let kind = match self.kind.as_str() {
            "http" => {
                need_target("an http:// or https:// URL")?;
                let url = parse_url(target, &["http", "https"]).map_err(|r| fail("target", r))?;
                let method =
                    reqwest::Method::from_bytes(self.method.to_ascii_uppercase().as_bytes())
                        .map_err(|_| {
                            fail("method", format!("{:?} is not an HTTP method", self.method))
                        })?;
                if let Some(code) = self
                    .expected_status
                    .iter()
                    .find(|c| !(100..=599).contains(*c))
                {
                    return Err(fail(
                        "expected_status",
                        format!("{code} is not an HTTP status (100-599)"),
                    ));
                }
                if self.max_body_bytes == 0 {
                    return Err(fail("max_body_bytes", "must be at least 1".into()));
                }
                if self.max_response_ms == Some(0) {
                    return Err(fail("max_response_ms", "must be at least 1".into()));
                }
                let header_name = |field: &str, name: &str| {
                    reqwest::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| fail(field, format!("{name:?} is not an HTTP header name")))
                };
                let mut headers = Vec::with_capacity(self.headers.len());
                for (name, value) in &self.headers {
                    let field = format!("headers.{name}");
                    let header = header_name(&field, name)?;
                    let value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                        fail(
                            &field,
                            "the value has characters a header cannot carry".into(),
                        )
                    })?;
                    headers.push((header, value));
                }
                let mut header_secrets = Vec::with_capacity(self.header_secrets.len());
                for (name, secret) in &self.header_secrets {
                    let field = format!("header_secrets.{name}");
                    let header = header_name(&field, name)?;
                    if headers.iter().any(|(h, _)| *h == header) {
                        return Err(fail(&field, "also set in headers; set it once".into()));
                    }
                    if secret.is_empty()
                        || !secret.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                        })
                    {
                        return Err(fail(
                            &field,
                            format!(
                                "{secret:?} is not a secret name (lowercase letters, digits, '_')"
                            ),
                        ));
                    }
                    header_secrets.push((header, secret.clone()));
                }
                let json = match (&self.json_path, &self.json_equals) {
                    (None, None) => None,
                    (Some(_), None) => {
                        return Err(fail(
                            "json_equals",
                            "required with json_path: the value expected there".into(),
                        ));
                    }
                    (None, Some(_)) => {
                        return Err(fail(
                            "json_path",
                            "required with json_equals: where the value is".into(),
                        ));
                    }
                    (Some(path), Some(expected)) => Some(JsonCondition {
                        path: JsonPath::parse(path).map_err(|r| fail("json_path", r))?,
                        expected: expected.clone(),
                    }),
                };
                ProbeKind::Http(Box::new(HttpCheck {
                    url,
                    method,
                    expected_status: self.expected_status.clone(),
                    body_contains: self.body_contains.clone(),
                    max_response: self.max_response_ms.map(Duration::from_millis),
                    max_body_bytes: usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX),
                    headers,
                    header_secrets,
                    json,
                }))
            }
            "tcp" => {
                need_target("host:port")?;
                let (host, port) = host_port(target).map_err(|r| fail("target", r))?;
                ProbeKind::Tcp { host, port }
            }
            "tls" => {
                need_target("host:port or an https:// URL")?;
                let (host, port) = if target.contains("://") {
                    let url = parse_url(target, &["https"]).map_err(|r| fail("target", r))?;
                    (
                        url.host_str().unwrap_or_default().to_owned(),
                        url.port_or_known_default().unwrap_or(443),
                    )
                } else {
                    host_port(target).map_err(|r| fail("target", r))?
                };
                if self.warn_days.is_empty() || self.warn_days.contains(&0) {
                    return Err(fail(
                        "warn_days",
                        "at least one threshold, each at least 1 day".into(),
                    ));
                }
                let mut warn_days = self.warn_days.clone();
                warn_days.sort_unstable();
                warn_days.dedup();
                ProbeKind::Tls {
                    host,
                    port,
                    warn_days,
                }
            }
            "grpc_health" => {
                need_target("an http:// or https:// URL of the gRPC server")?;
                parse_url(target, &["http", "https"]).map_err(|r| fail("target", r))?;
                ProbeKind::GrpcHealth {
                    endpoint: target.to_owned(),
                    service: self.grpc_service.clone(),
                }
            }
            "dns" => {
                need_target("a host name")?;
                if target.contains(['/', ' ', ':']) {
                    return Err(fail("target", format!("{target:?} is not a host name")));
                }
                ProbeKind::Dns {
                    host: target.to_owned(),
                }
            }
            "heartbeat" => {
                if self.absent_minutes == 0 {
                    return Err(fail("absent_minutes", "must be at least 1".into()));
                }
                ProbeKind::Heartbeat {
                    absent: Duration::from_secs(self.absent_minutes * 60),
                }
            }
            other => {
                return Err(fail(
                    "kind",
                    format!(
                        "unknown probe kind {other:?} (expected http, tcp, tls, grpc_health, dns or heartbeat)"
                    ),
                ));
            }
        };
        if self.kind != "http"
            && (!self.headers.is_empty()
                || !self.header_secrets.is_empty()
                || self.json_path.is_some()
                || self.json_equals.is_some())
        {
            let field = if !self.headers.is_empty() {
                "headers"
            } else if !self.header_secrets.is_empty() {
                "header_secrets"
            } else {
                "json_path"
            };
            return Err(fail(field, "only http probes take it".into()));
        }
        let on_down = match self.on_down.as_str() {
            "pause_kinds" => OnDown::PauseKinds,
            "emergency_stop" => OnDown::EmergencyStop,
            other => {
                return Err(fail(
                    "on_down",
                    format!("{other:?}: expected pause_kinds or emergency_stop"),
                ));
            }
        };
        let mut depends_kinds: Vec<String> = Vec::with_capacity(self.depends_kinds.len());
        for kind in &self.depends_kinds {
            let kind = opsloop_core::domain::input::StepKind::parse("depends_kinds", kind)
                .map_err(|e| fail("depends_kinds", format!("{kind:?}: {}", e.reason)))?;
            if !depends_kinds.iter().any(|k| k == kind.as_str()) {
                depends_kinds.push(kind.as_str().to_owned());
            }
        }
        depends_kinds.sort();
        Ok(Probe {
            depends_kinds,
            on_down,
            name: name.to_owned(),
            kind,
            interval: Duration::from_secs(self.interval_secs),
            timeout: Duration::from_millis(self.timeout_ms),
            retries: self.retries,
            severity,
            ca_file: self.ca_file.as_ref().map(PathBuf::from),
            target: target.to_owned(),
        })
    }
}

/// One `[[heartbeat.maintenance]]` entry: down alerts of `probes` (every
/// probe when empty) are held back from `start` to `end` (RFC 3339).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct MaintenanceSpec {
    /// Start of the window, RFC 3339 (`2027-01-31T22:00:00Z`).
    pub start: String,
    /// End of the window, RFC 3339; after `start`.
    pub end: String,
    /// Probe names whose down alerts are held back; every probe when empty.
    pub probes: Vec<String>,
    /// Why (quoted in logs and events).
    pub reason: String,
}

/// The windows of the section, checked against the probes' names.
pub fn parse_maintenance(
    specs: &[MaintenanceSpec],
    probes: &[Probe],
) -> Result<Vec<MaintenanceWindow>, SettingsError> {
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let fail = |field: &str, reason: String| SettingsError {
                key: format!("maintenance[{i}].{field}"),
                reason,
            };
            let time = |field: &str, value: &str| {
                chrono::DateTime::parse_from_rfc3339(value)
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|e| {
                        fail(
                            field,
                            format!(
                                "{value:?} is not an RFC 3339 time (2027-01-31T22:00:00Z): {e}"
                            ),
                        )
                    })
            };
            let start = time("start", &spec.start)?;
            let end = time("end", &spec.end)?;
            if end <= start {
                return Err(fail("end", "must be after start".into()));
            }
            if let Some(unknown) = spec
                .probes
                .iter()
                .find(|name| !probes.iter().any(|p| &&p.name == name))
            {
                return Err(fail("probes", format!("no probe is named {unknown:?}")));
            }
            Ok(MaintenanceWindow {
                start,
                end,
                probes: spec.probes.clone(),
            })
        })
        .collect()
}

/// Every probe of the section, names unique.
pub fn parse_probes(specs: &[ProbeSpec]) -> Result<Vec<Probe>, SettingsError> {
    let mut probes: Vec<Probe> = Vec::with_capacity(specs.len());
    for spec in specs {
        let probe = spec.parse()?;
        if probes.iter().any(|p| p.name == probe.name) {
            return Err(SettingsError {
                key: format!("probes[{}].name", probe.name),
                reason: "used by an earlier probe; names must be unique".into(),
            });
        }
        probes.push(probe);
    }
    Ok(probes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, target: &str) -> ProbeSpec {
        ProbeSpec {
            name: "api".into(),
            kind: kind.into(),
            target: target.into(),
            ..Default::default()
        }
    }

    #[test]
    fn valid_probes_parse() {
        let http = spec("http", "https://example.com/health")
            .parse()
            .expect("http");
        assert_eq!(http.interval, Duration::from_secs(60));
        assert!(matches!(http.kind, ProbeKind::Http(ref h) if h.method == reqwest::Method::GET));
        let tls = spec("tls", "https://example.com").parse().expect("tls");
        assert_eq!(
            tls.kind,
            ProbeKind::Tls {
                host: "example.com".into(),
                port: 443,
                warn_days: vec![1, 3, 7, 14, 21]
            }
        );
        assert_eq!(
            spec("tcp", "db.internal:5432").parse().expect("tcp").kind,
            ProbeKind::Tcp {
                host: "db.internal".into(),
                port: 5432
            }
        );
        spec("grpc_health", "http://127.0.0.1:50051")
            .parse()
            .expect("grpc");
        spec("dns", "example.com").parse().expect("dns");
        spec("heartbeat", "").parse().expect("heartbeat");
    }

    #[test]
    fn bad_probes_name_the_probe_and_field() {
        let table: Vec<(ProbeSpec, &str, &str)> = vec![
            (spec("smtp", "x:25"), "kind", "unknown probe kind \"smtp\""),
            (spec("http", "not a url"), "target", "is not a URL"),
            (spec("http", "ftp://example.com"), "target", "scheme"),
            (spec("http", ""), "target", "required"),
            (spec("tcp", "example.com"), "target", "host:port"),
            (spec("tcp", "example.com:0"), "target", "port"),
            (
                ProbeSpec {
                    interval_secs: 5,
                    ..spec("http", "http://x")
                },
                "interval_secs",
                "at least 10 s",
            ),
            (
                ProbeSpec {
                    timeout_ms: 0,
                    ..spec("tcp", "x:1")
                },
                "timeout_ms",
                "between 1",
            ),
            (
                ProbeSpec {
                    retries: 0,
                    ..spec("tcp", "x:1")
                },
                "retries",
                "at least 1",
            ),
            (
                ProbeSpec {
                    severity: "loud".into(),
                    ..spec("tcp", "x:1")
                },
                "severity",
                "loud",
            ),
            (
                ProbeSpec {
                    method: "GE T".into(),
                    ..spec("http", "http://x")
                },
                "method",
                "not an HTTP method",
            ),
            (
                ProbeSpec {
                    expected_status: vec![200, 700],
                    ..spec("http", "http://x")
                },
                "expected_status",
                "700",
            ),
            (
                ProbeSpec {
                    warn_days: vec![14, 0],
                    ..spec("tls", "x:443")
                },
                "warn_days",
                "at least 1 day",
            ),
            (
                ProbeSpec {
                    name: "has space".into(),
                    ..spec("tcp", "x:1")
                },
                "name",
                "letters",
            ),
        ];
        for (spec, field, reason) in table {
            let err = spec.parse().expect_err(field);
            let line = err.to_string();
            assert!(
                line.contains(&format!(".{field}: ")) && line.contains(reason),
                "{field}: {line}"
            );
            if field != "name" {
                assert!(line.contains("heartbeat.probes[api]."), "{line}");
            }
        }
        let dup =
            parse_probes(&[spec("tcp", "x:1"), spec("dns", "example.com")]).expect_err("duplicate");
        assert_eq!(dup.key, "probes[api].name");
    }
}
