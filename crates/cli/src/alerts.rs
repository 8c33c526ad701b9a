//! `opsloop alerts list|test` and `opsloop silence add|list|expire`: the
//! alerter's `AlertService` (default endpoint http://127.0.0.1:50052, or
//! $OPSLOOP_ALERTER_ENDPOINT).

use std::collections::BTreeMap;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use opsloop_core::proto::v1::{
    Alert, CreateSilenceRequest, ExpireSilenceRequest, ListAlertsRequest, ListSilencesRequest,
    Severity, Silence, SilenceState, TestReceiverRequest,
};
use serde_json::{Value, json};

use crate::client::{Connection, Daemon, Globals};
use crate::output::{self, OutputFormat, Table, enum_label, fields, ts, ts_json};
use crate::parse::{matcher, matcher_text};

/// `opsloop alerts …`
#[derive(Subcommand)]
pub enum AlertsCommand {
    /// List the alerts the alerter knows, newest first.
    List(ListArgs),
    /// Send a test alert straight to one receiver and show the outcome (admin token).
    Test {
        /// Name of a configured receiver, e.g. `slack`.
        receiver: String,
        /// Severity of the test alert.
        #[arg(long, value_enum, default_value_t = SeverityArg::Info)]
        severity: SeverityArg,
        /// Summary text of the test alert.
        #[arg(long)]
        message: Option<String>,
    },
}

/// `opsloop alerts list`
#[derive(Args)]
pub struct ListArgs {
    /// Only alerts matching this label matcher (`name=value`, `!=`, `=~`, `!~`); repeatable.
    #[arg(long = "filter", value_name = "MATCHER")]
    filters: Vec<String>,
    /// Only alerts routed to a receiver matching this regular expression.
    #[arg(long, value_name = "REGEX")]
    receiver: Option<String>,
    /// Leave out silenced alerts.
    #[arg(long)]
    no_silenced: bool,
    /// Leave out inhibited alerts.
    #[arg(long)]
    no_inhibited: bool,
    /// Leave out active (not suppressed) alerts.
    #[arg(long)]
    no_active: bool,
    /// Also list resolved alerts the alerter still remembers.
    #[arg(long)]
    include_resolved: bool,
    /// Most alerts to show.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Cursor printed by a previous page.
    #[arg(long)]
    page_token: Option<String>,
}

/// An alert severity on the command line.
#[derive(Clone, Copy, ValueEnum)]
pub enum SeverityArg {
    Critical,
    High,
    Warning,
    Info,
}

impl SeverityArg {
    fn to_proto(self) -> Severity {
        match self {
            SeverityArg::Critical => Severity::Critical,
            SeverityArg::High => Severity::High,
            SeverityArg::Warning => Severity::Warning,
            SeverityArg::Info => Severity::Info,
        }
    }
}

/// `opsloop silence …`
#[derive(Subcommand)]
pub enum SilenceCommand {
    /// Mute alerts matching all the given matchers for a while (admin token).
    Add(AddArgs),
    /// List silences: active first, then pending, then expired.
    List {
        /// Only silences in this state.
        #[arg(long, value_enum)]
        state: Option<SilenceStateArg>,
        /// Only silences having this matcher; repeatable.
        #[arg(long = "filter", value_name = "MATCHER")]
        filters: Vec<String>,
        /// Most silences to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Cursor printed by a previous page.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// End a silence now (admin token).
    Expire {
        /// Silence id.
        id: String,
    },
}

/// `opsloop silence add`
#[derive(Args)]
pub struct AddArgs {
    /// Label matchers, all of which an alert must satisfy: `alertname=Foo`,
    /// `severity!=info`, `service=~api|web`, `env!~dev.*`.
    #[arg(value_name = "MATCHER", required = true)]
    matchers: Vec<String>,
    /// Why (required), e.g. a maintenance ticket.
    #[arg(long)]
    comment: String,
    /// How long from the start: seconds or 90s, 15m, 2h, 1d.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "2h",
        conflicts_with = "ends_at"
    )]
    duration: String,
    /// When it starts (RFC 3339). Default: now.
    #[arg(long, value_name = "TIME")]
    starts_at: Option<String>,
    /// When it ends (RFC 3339), instead of --duration.
    #[arg(long, value_name = "TIME")]
    ends_at: Option<String>,
    /// Replace the silence with this id instead of creating one.
    #[arg(long)]
    id: Option<String>,
}

/// A silence state on the command line.
#[derive(Clone, Copy, ValueEnum)]
pub enum SilenceStateArg {
    Pending,
    Active,
    Expired,
}

/// Runs an `alerts` command.
pub async fn alerts(command: AlertsCommand, globals: &Globals) -> anyhow::Result<()> {
    match command {
        AlertsCommand::List(args) => {
            let filter = args
                .filters
                .iter()
                .map(|f| matcher(f))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let conn = Connection::open(globals, Daemon::Alerter).await?;
            let response = conn
                .alerts()
                .list_alerts(ListAlertsRequest {
                    active: Some(!args.no_active),
                    silenced: Some(!args.no_silenced),
                    inhibited: Some(!args.no_inhibited),
                    unprocessed: None,
                    include_resolved: args.include_resolved,
                    filter,
                    receiver: args.receiver,
                    page_size: args.limit,
                    page_token: args.page_token.unwrap_or_default(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "alerts": response.alerts.iter().map(alert_json).collect::<Vec<_>>(),
                    "next_page_token": response.next_page_token,
                })),
                OutputFormat::Table => {
                    let mut table = Table::new(&[
                        "FINGERPRINT",
                        "ALERTNAME",
                        "SEVERITY",
                        "STATUS",
                        "STATE",
                        "STARTS",
                        "RECEIVERS",
                        "SUMMARY",
                    ]);
                    for a in &response.alerts {
                        table.row(vec![
                            a.fingerprint.clone(),
                            a.labels
                                .get("alertname")
                                .cloned()
                                .unwrap_or_else(|| "-".into()),
                            severity_word(a.severity()),
                            enum_label(a.status().as_str_name(), "ALERT_STATUS_"),
                            enum_label(a.state().as_str_name(), "ALERT_STATE_"),
                            ts(a.starts_at.as_ref()),
                            a.receivers.join(","),
                            a.annotations
                                .get("summary")
                                .or_else(|| a.annotations.get("description"))
                                .cloned()
                                .unwrap_or_default(),
                        ]);
                    }
                    table.print_or("no alerts");
                    crate::proposal::print_more(&response.next_page_token);
                    Ok(())
                }
            }
        }
        AlertsCommand::Test {
            receiver,
            severity,
            message,
        } => {
            let conn = Connection::open(globals, Daemon::Alerter).await?;
            let r = conn
                .alerts()
                .test_receiver(TestReceiverRequest {
                    receiver: receiver.clone(),
                    severity: severity.to_proto() as i32,
                    message,
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "receiver": receiver,
                    "delivered": r.delivered,
                    "attempts": r.attempts,
                    "http_status": r.http_status,
                    "latency_ms": r.latency_ms,
                    "detail": r.detail,
                }))?,
                OutputFormat::Table => out!(
                    "{}",
                    fields(&[
                        ("receiver", receiver.clone()),
                        (
                            "delivered",
                            if r.delivered {
                                "yes".into()
                            } else {
                                "NO".into()
                            }
                        ),
                        ("attempts", r.attempts.to_string()),
                        (
                            "http status",
                            r.http_status.map_or_else(|| "-".into(), |s| s.to_string())
                        ),
                        ("latency", format!("{} ms", r.latency_ms)),
                        ("detail", r.detail.clone()),
                    ])
                ),
            }
            if !r.delivered {
                bail!(
                    "receiver {receiver} did not accept the test alert: {}",
                    output::one_line(&r.detail)
                );
            }
            Ok(())
        }
    }
}

/// Runs a `silence` command.
pub async fn silence(command: SilenceCommand, globals: &Globals) -> anyhow::Result<()> {
    match command {
        SilenceCommand::Add(args) => {
            let matchers = args
                .matchers
                .iter()
                .map(|m| matcher(m))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let now = chrono::Utc::now();
            let starts = match &args.starts_at {
                Some(text) => crate::parse::instant(text, now).context("--starts-at")?,
                None => now,
            };
            let ends = match &args.ends_at {
                Some(text) => crate::parse::instant(text, now).context("--ends-at")?,
                None => {
                    let length = crate::parse::duration(&args.duration).context("--duration")?;
                    starts + chrono::Duration::from_std(length).context("--duration is too long")?
                }
            };
            let conn = Connection::open(globals, Daemon::Alerter).await?;
            let silence = conn
                .alerts()
                .create_silence(CreateSilenceRequest {
                    id: args.id,
                    matchers,
                    starts_at: args
                        .starts_at
                        .is_some()
                        .then(|| output::to_timestamp(starts)),
                    ends_at: Some(output::to_timestamp(ends)),
                    created_by: globals.actor.clone(),
                    comment: args.comment,
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .silence
                .ok_or_else(|| anyhow!("the alerter answered without a silence"))?;
            print_silence(&silence, globals.output)
        }
        SilenceCommand::List {
            state,
            filters,
            limit,
            page_token,
        } => {
            let filter = filters
                .iter()
                .map(|f| matcher(f))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let state = match state {
                None => SilenceState::Unspecified,
                Some(SilenceStateArg::Pending) => SilenceState::Pending,
                Some(SilenceStateArg::Active) => SilenceState::Active,
                Some(SilenceStateArg::Expired) => SilenceState::Expired,
            };
            let conn = Connection::open(globals, Daemon::Alerter).await?;
            let response = conn
                .alerts()
                .list_silences(ListSilencesRequest {
                    state: state as i32,
                    filter,
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "silences": response.silences.iter().map(silence_json).collect::<Vec<_>>(),
                    "next_page_token": response.next_page_token,
                })),
                OutputFormat::Table => {
                    let mut table =
                        Table::new(&["ID", "STATE", "STARTS", "ENDS", "BY", "MATCHERS", "COMMENT"]);
                    for s in &response.silences {
                        table.row(vec![
                            s.id.clone(),
                            silence_state(s),
                            ts(s.starts_at.as_ref()),
                            ts(s.ends_at.as_ref()),
                            s.created_by.clone(),
                            s.matchers
                                .iter()
                                .map(matcher_text)
                                .collect::<Vec<_>>()
                                .join(" "),
                            s.comment.clone(),
                        ]);
                    }
                    table.print_or("no silences");
                    crate::proposal::print_more(&response.next_page_token);
                    Ok(())
                }
            }
        }
        SilenceCommand::Expire { id } => {
            let conn = Connection::open(globals, Daemon::Alerter).await?;
            let silence = conn
                .alerts()
                .expire_silence(ExpireSilenceRequest {
                    id,
                    actor: globals.actor.clone(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .silence
                .ok_or_else(|| anyhow!("the alerter answered without a silence"))?;
            print_silence(&silence, globals.output)
        }
    }
}

fn severity_word(severity: Severity) -> String {
    match severity {
        Severity::Unspecified => "-".into(),
        other => enum_label(other.as_str_name(), "SEVERITY_"),
    }
}

fn silence_state(s: &Silence) -> String {
    enum_label(s.status().as_str_name(), "SILENCE_STATE_")
}

fn print_silence(s: &Silence, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => output::print_json(&silence_json(s)),
        OutputFormat::Table => {
            out!(
                "{}",
                fields(&[
                    ("id", s.id.clone()),
                    ("state", silence_state(s)),
                    (
                        "matchers",
                        s.matchers
                            .iter()
                            .map(matcher_text)
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                    ("starts", ts(s.starts_at.as_ref())),
                    ("ends", ts(s.ends_at.as_ref())),
                    ("by", s.created_by.clone()),
                    ("comment", s.comment.clone()),
                ])
            );
            Ok(())
        }
    }
}

fn matcher_json(m: &opsloop_core::proto::v1::Matcher) -> Value {
    json!({
        "name": m.name,
        "value": m.value,
        "is_regex": m.is_regex,
        "is_equal": m.is_equal.unwrap_or(true),
    })
}

/// A silence as stable JSON for scripts.
pub fn silence_json(s: &Silence) -> Value {
    json!({
        "id": s.id,
        "matchers": s.matchers.iter().map(matcher_json).collect::<Vec<_>>(),
        "starts_at": ts_json(s.starts_at.as_ref()),
        "ends_at": ts_json(s.ends_at.as_ref()),
        "created_by": s.created_by,
        "comment": s.comment,
        "status": silence_state(s),
        "updated_at": ts_json(s.updated_at.as_ref()),
    })
}

/// An alert as stable JSON for scripts.
pub fn alert_json(a: &Alert) -> Value {
    json!({
        "fingerprint": a.fingerprint,
        "labels": a.labels.iter().collect::<BTreeMap<_, _>>(),
        "annotations": a.annotations.iter().collect::<BTreeMap<_, _>>(),
        "starts_at": ts_json(a.starts_at.as_ref()),
        "ends_at": ts_json(a.ends_at.as_ref()),
        "generator_url": a.generator_url,
        "status": enum_label(a.status().as_str_name(), "ALERT_STATUS_"),
        "state": enum_label(a.state().as_str_name(), "ALERT_STATE_"),
        "severity": match a.severity() { Severity::Unspecified => Value::Null, s => Value::String(severity_word(s)) },
        "receivers": a.receivers,
        "silenced_by": a.silenced_by,
        "inhibited_by": a.inhibited_by,
        "updated_at": ts_json(a.updated_at.as_ref()),
    })
}
