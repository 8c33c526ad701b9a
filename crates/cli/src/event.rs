//! `opsloop event emit|list|tail`: the append-only event log through
//! `EventService`; `tail` follows the server stream and, after a broken
//! connection, resumes from the last sequence number it printed.

use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use opsloop_core::proto::v1::{EmitEventRequest, Event, ListEventsRequest, TailEventsRequest};
use serde_json::{Value, json};
use tonic::Code;

use crate::client::{Connection, Daemon, Globals};
use crate::output::{self, OutputFormat, Table, fields, json_doc, opt_json, ts, ts_json};

/// `opsloop event …`
#[derive(Subcommand)]
pub enum EventCommand {
    /// Append an event to the log (agent token).
    Emit(EmitArgs),
    /// List events in ascending sequence order.
    List(ListArgs),
    /// Follow new events as they are written, until Ctrl-C; reconnects and
    /// resumes after the last event printed.
    Tail(TailArgs),
}

/// `opsloop event emit`
#[derive(Args)]
pub struct EmitArgs {
    /// Event kind, e.g. `engagement:high`.
    #[arg(long)]
    kind: String,
    /// Who emits it (default: --actor).
    #[arg(long)]
    source: Option<String>,
    /// The event's data as JSON (default {}).
    #[arg(long, value_name = "JSON")]
    payload: Option<String>,
    /// A tag, e.g. `env:prod`; repeatable.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Cost in US dollars the event reports (feeds the budget).
    #[arg(long, value_name = "USD")]
    cost_usd: Option<f64>,
    /// The mission the event concerns.
    #[arg(long, value_name = "ID")]
    mission: Option<String>,
    /// The step the event concerns.
    #[arg(long, value_name = "ID")]
    step: Option<String>,
    /// The proposal the event concerns.
    #[arg(long, value_name = "ID")]
    proposal: Option<String>,
}

/// `opsloop event list`
#[derive(Args)]
pub struct ListArgs {
    /// Only kinds matching this glob (`*`, `?`), e.g. `mission.*`.
    #[arg(long, value_name = "GLOB")]
    kind: Option<String>,
    /// Only events with a sequence number greater than this.
    #[arg(long, value_name = "SEQ")]
    since_seq: Option<i64>,
    /// Only events written at or after this time (RFC 3339, a date, or `2h` ago).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only events from this source.
    #[arg(long)]
    source: Option<String>,
    /// Only events concerning this mission.
    #[arg(long, value_name = "ID")]
    mission: Option<String>,
    /// Most events to show.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Cursor printed by a previous page.
    #[arg(long)]
    page_token: Option<String>,
}

/// `opsloop event tail`
#[derive(Args)]
pub struct TailArgs {
    /// Start after this sequence number (0 replays the whole log). Default:
    /// only events written from now on.
    #[arg(long, value_name = "SEQ")]
    from_seq: Option<i64>,
    /// Only kinds matching this glob (`*`, `?`), e.g. `mission.*`.
    #[arg(long, value_name = "GLOB")]
    kind: Option<String>,
}

/// Runs an `event` command.
pub async fn run(command: EventCommand, globals: &Globals) -> anyhow::Result<()> {
    match command {
        EventCommand::Emit(args) => {
            let payload_json = args
                .payload
                .as_deref()
                .map(|p| crate::parse::json_arg("--payload", p))
                .transpose()?
                .unwrap_or_default();
            let conn = Connection::open(globals, Daemon::Api).await?;
            let event = conn
                .events()
                .emit_event(EmitEventRequest {
                    kind: args.kind,
                    source: args.source.unwrap_or_else(|| globals.actor.clone()),
                    payload_json,
                    tags: args.tags,
                    cost_usd: args.cost_usd,
                    mission_id: args.mission,
                    step_id: args.step,
                    proposal_id: args.proposal,
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .event
                .ok_or_else(|| anyhow!("the api answered without an event"))?;
            match globals.output {
                OutputFormat::Json => output::print_json(&event_json(&event)),
                OutputFormat::Table => {
                    out!(
                        "{}",
                        fields(&[
                            ("id", event.id.clone()),
                            ("seq", event.seq.to_string()),
                            ("kind", event.kind.clone()),
                            ("source", event.source.clone()),
                            ("tags", event.tags.join(", ")),
                            ("created", ts(event.created_at.as_ref())),
                        ])
                    );
                    Ok(())
                }
            }
        }
        EventCommand::List(args) => {
            let since = args
                .since
                .as_deref()
                .map(|t| crate::parse::instant(t, chrono::Utc::now()).context("--since"))
                .transpose()?
                .map(output::to_timestamp);
            let conn = Connection::open(globals, Daemon::Api).await?;
            let response = conn
                .events()
                .list_events(ListEventsRequest {
                    kind_pattern: args.kind,
                    since_seq: args.since_seq,
                    since,
                    source: args.source,
                    mission_id: args.mission,
                    page_size: args.limit,
                    page_token: args.page_token.unwrap_or_default(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "events": response.events.iter().map(event_json).collect::<Vec<_>>(),
                    "next_page_token": response.next_page_token,
                })),
                OutputFormat::Table => {
                    let mut table = Table::new(&[
                        "SEQ", "TIME", "KIND", "SOURCE", "MISSION", "TAGS", "PAYLOAD",
                    ]);
                    for e in &response.events {
                        table.row(event_row(e));
                    }
                    table.print_or("no events");
                    crate::proposal::print_more(&response.next_page_token);
                    Ok(())
                }
            }
        }
        EventCommand::Tail(args) => tail(args, globals).await,
    }
}

fn event_row(e: &Event) -> Vec<String> {
    vec![
        e.seq.to_string(),
        ts(e.created_at.as_ref()),
        e.kind.clone(),
        e.source.clone(),
        e.mission_id
            .as_deref()
            .map(output::short_id)
            .unwrap_or_else(|| "-".into()),
        if e.tags.is_empty() {
            "-".into()
        } else {
            e.tags.join(",")
        },
        e.payload_json.clone(),
    ]
}

/// Streams events until Ctrl-C. A broken stream is reopened with a growing
/// wait, from the last printed seq, so nothing is skipped or printed twice.
async fn tail(args: TailArgs, globals: &Globals) -> anyhow::Result<()> {
    let mut conn = Connection::open(globals, Daemon::Api).await?;
    let mut cursor = args.from_seq;
    let mut wait =
        opsloop_core::domain::Doubling::new(Duration::from_millis(500), Duration::from_secs(10));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let request = TailEventsRequest {
            from_seq: cursor,
            kind_pattern: args.kind.clone(),
        };
        let mut events = conn.events();
        let opened = tokio::select! {
            opened = events.tail_events(request) => opened,
            _ = &mut ctrl_c => return Ok(()),
        };
        let broken = match opened {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let next = tokio::select! {
                        next = stream.message() => next,
                        _ = &mut ctrl_c => return Ok(()),
                    };
                    match next {
                        Ok(Some(message)) => {
                            wait.reset();
                            let Some(event) = message.event else { continue };
                            if cursor.is_some_and(|c| event.seq <= c) {
                                continue;
                            }
                            cursor = Some(event.seq);
                            print_tailed(&event, globals.output)?;
                        }
                        Ok(None) => break "the api closed the stream".to_owned(),
                        Err(status) if resumable(status.code()) => {
                            break conn.error(status).to_string();
                        }
                        Err(status) => return Err(conn.error(status)),
                    }
                }
            }
            Err(status) if resumable(status.code()) => conn.error(status).to_string(),
            Err(status) => return Err(conn.error(status)),
        };
        let from = cursor.map_or_else(|| "now".to_owned(), |c| format!("seq {c}"));
        eprintln!(
            "event tail: {broken}; resuming after {from} in {:.1}s",
            wait.peek().as_secs_f64()
        );
        tokio::select! {
            () = tokio::time::sleep(wait.next_delay()) => {}
            _ = &mut ctrl_c => return Ok(()),
        }
        if let Ok(fresh) = Connection::open(globals, Daemon::Api).await {
            conn = fresh;
        }
    }
}

/// Stream errors worth reconnecting for.
fn resumable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled
    )
}

fn print_tailed(event: &Event, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => output::print_json_line(&event_json(event)),
        OutputFormat::Table => {
            let line = format!(
                "{:>6}  {}  {:<22}  {:<14}  {}",
                event.seq,
                ts(event.created_at.as_ref()),
                event.kind,
                event.source,
                output::one_line(&event.payload_json)
            );
            outln!("{}", output::truncate(&line, 240));
            Ok(())
        }
    }
}

/// An event as stable JSON for scripts.
pub fn event_json(e: &Event) -> Value {
    json!({
        "id": e.id,
        "seq": e.seq,
        "kind": e.kind,
        "source": e.source,
        "payload": json_doc(&e.payload_json),
        "tags": e.tags,
        "cost_usd": e.cost_usd,
        "mission_id": opt_json(e.mission_id.as_deref()),
        "step_id": opt_json(e.step_id.as_deref()),
        "proposal_id": opt_json(e.proposal_id.as_deref()),
        "trace_id": if e.trace_id.is_empty() { Value::Null } else { Value::String(e.trace_id.clone()) },
        "created_at": ts_json(e.created_at.as_ref()),
    })
}
