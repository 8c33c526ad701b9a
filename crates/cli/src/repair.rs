//! `opsloop deadletter list|show|retry` and `opsloop quarantine list|retry`:
//! putting failed work back without SQL. A dead letter is retried as a new
//! proposal (the gates judge it again; the failed mission stays failed); a
//! quarantined event goes back into its consumer's retry set.

use anyhow::anyhow;
use clap::Subcommand;
use opsloop_core::proto::v1::{
    DeadLetter, GetDeadLetterRequest, ListDeadLettersRequest, ListQuarantinedEventsRequest,
    QuarantinedEvent, RetryDeadLetterRequest, RetryQuarantinedEventRequest,
};
use serde_json::{Value, json};

use crate::client::{Connection, Daemon, Globals};
use crate::output::{self, OutputFormat, Table, fields, json_doc, ts, ts_json};

/// `opsloop deadletter …`
#[derive(Subcommand)]
pub enum DeadLetterCommand {
    /// Steps that failed for good, newest first (only those not retried, by
    /// default).
    List {
        /// Only this step kind.
        #[arg(long)]
        kind: Option<String>,
        /// Also those already retried.
        #[arg(long)]
        all: bool,
        /// Most dead letters to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One dead letter with its error and payload.
    Show {
        /// Dead letter id.
        id: String,
    },
    /// Retry as a new proposal: the failed step and the steps its failure
    /// cancelled, judged by the gates again (admin token; audited; once per
    /// dead letter).
    Retry {
        /// Dead letter id.
        id: String,
    },
}

/// `opsloop quarantine …`
#[derive(Subcommand)]
pub enum QuarantineCommand {
    /// Events the heartbeat set aside after repeated failures, newest first.
    List {
        /// Only this consumer (`triggers` or `reactions`).
        #[arg(long)]
        consumer: Option<String>,
        /// Most entries to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Put an event back into its consumer's retry set: the next heartbeat
    /// tick evaluates it again (admin token; audited).
    Retry {
        /// The consumer (`triggers` or `reactions`).
        consumer: String,
        /// The event's seq.
        seq: i64,
    },
}

/// Runs a `deadletter` command.
pub async fn run_dead_letter(command: DeadLetterCommand, globals: &Globals) -> anyhow::Result<()> {
    let conn = Connection::open(globals, Daemon::Api).await?;
    match command {
        DeadLetterCommand::List { kind, all, limit } => {
            let rows = conn
                .missions()
                .list_dead_letters(ListDeadLettersRequest {
                    kind,
                    include_retried: all,
                    page_size: limit,
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .dead_letters;
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "dead_letters": rows.iter().map(dead_letter_json).collect::<Vec<_>>(),
                })),
                OutputFormat::Table => {
                    let mut table = Table::new(&[
                        "ID", "FAILED", "KIND", "ATTEMPT", "MISSION", "RETRY", "ERROR",
                    ]);
                    for d in &rows {
                        table.row(vec![
                            d.id.clone(),
                            ts(d.created_at.as_ref()),
                            d.kind.clone(),
                            d.attempt.to_string(),
                            d.mission_id.clone(),
                            d.retried_proposal_id.clone().unwrap_or_else(|| "-".into()),
                            first_line(&d.error),
                        ]);
                    }
                    table.print_or("no dead letters waiting");
                    Ok(())
                }
            }
        }
        DeadLetterCommand::Show { id } => {
            let dead = conn
                .missions()
                .get_dead_letter(GetDeadLetterRequest { id })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .dead_letter
                .ok_or_else(|| anyhow!("the api answered without a dead letter"))?;
            match globals.output {
                OutputFormat::Json => output::print_json(&dead_letter_json(&dead)),
                OutputFormat::Table => {
                    out!("{}", dead_letter_fields(&dead));
                    Ok(())
                }
            }
        }
        DeadLetterCommand::Retry { id } => {
            let response = conn
                .missions()
                .retry_dead_letter(RetryDeadLetterRequest {
                    id,
                    actor: globals.actor.clone(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            let dead = response
                .dead_letter
                .ok_or_else(|| anyhow!("the api answered without the dead letter"))?;
            let proposal = response
                .proposal
                .ok_or_else(|| anyhow!("the api answered without the new proposal"))?;
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "dead_letter": dead_letter_json(&dead),
                    "proposal": crate::proposal::proposal_json(&proposal),
                })),
                OutputFormat::Table => {
                    out!("{}", crate::proposal::proposal_fields(&proposal));
                    Ok(())
                }
            }
        }
    }
}

/// Runs a `quarantine` command.
pub async fn run_quarantine(command: QuarantineCommand, globals: &Globals) -> anyhow::Result<()> {
    let conn = Connection::open(globals, Daemon::Api).await?;
    let rows = match command {
        QuarantineCommand::List { consumer, limit } => {
            conn.ops()
                .list_quarantined_events(ListQuarantinedEventsRequest {
                    consumer,
                    page_size: limit,
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .events
        }
        QuarantineCommand::Retry { consumer, seq } => conn
            .ops()
            .retry_quarantined_event(RetryQuarantinedEventRequest {
                consumer,
                event_seq: seq,
                actor: globals.actor.clone(),
            })
            .await
            .map_err(|s| conn.error(s))?
            .into_inner()
            .event
            .into_iter()
            .collect(),
    };
    match globals.output {
        OutputFormat::Json => output::print_json(&json!({
            "events": rows.iter().map(quarantined_json).collect::<Vec<_>>(),
        })),
        OutputFormat::Table => {
            let mut table = Table::new(&["CONSUMER", "SEQ", "FAILURES", "UPDATED", "ERROR"]);
            for q in &rows {
                table.row(vec![
                    q.consumer.clone(),
                    q.event_seq.to_string(),
                    q.failures.to_string(),
                    ts(q.updated_at.as_ref()),
                    first_line(&q.last_error),
                ]);
            }
            table.print_or("no quarantined events");
            Ok(())
        }
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(120)
        .collect()
}

fn dead_letter_fields(d: &DeadLetter) -> String {
    fields(&[
        ("id", d.id.clone()),
        ("kind", d.kind.clone()),
        ("failed", ts(d.created_at.as_ref())),
        ("attempt", d.attempt.to_string()),
        ("mission", d.mission_id.clone()),
        ("step", d.step_id.clone()),
        ("error", d.error.clone()),
        (
            "retried",
            match &d.retried_proposal_id {
                Some(p) => format!(
                    "as proposal {p} by {} at {}",
                    d.retried_by.as_deref().unwrap_or("?"),
                    ts(d.retried_at.as_ref())
                ),
                None => "no".into(),
            },
        ),
        ("payload", output::pretty_doc(&d.payload_json)),
    ])
}

fn dead_letter_json(d: &DeadLetter) -> Value {
    json!({
        "id": d.id,
        "step_id": d.step_id,
        "mission_id": d.mission_id,
        "kind": d.kind,
        "attempt": d.attempt,
        "error": d.error,
        "payload": json_doc(&d.payload_json),
        "created_at": ts_json(d.created_at.as_ref()),
        "retried_proposal_id": d.retried_proposal_id,
        "retried_by": d.retried_by,
        "retried_at": ts_json(d.retried_at.as_ref()),
    })
}

fn quarantined_json(q: &QuarantinedEvent) -> Value {
    json!({
        "consumer": q.consumer,
        "event_seq": q.event_seq,
        "failures": q.failures,
        "last_error": q.last_error,
        "created_at": ts_json(q.created_at.as_ref()),
        "updated_at": ts_json(q.updated_at.as_ref()),
    })
}
