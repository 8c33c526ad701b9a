//! `opsloop mission list|show|cancel`: approved proposals at work, read and
//! cancelled through `MissionService`.

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand, ValueEnum};
use opsloop_core::proto::v1::{
    CancelMissionRequest, GetMissionRequest, ListMissionsRequest, Mission, MissionStatus, Step,
};
use serde_json::{Value, json};

use crate::client::{Connection, Daemon, Globals};
use crate::output::{
    self, OutputFormat, Table, enum_label, fields, json_doc, opt, opt_json, ts, ts_json, usd,
};

/// `opsloop mission …`
#[derive(Subcommand)]
pub enum MissionCommand {
    /// List missions, newest first.
    List(ListArgs),
    /// Show one mission with its steps.
    Show {
        /// Mission id.
        id: String,
    },
    /// Cancel a running mission and its unfinished steps (admin token).
    Cancel {
        /// Mission id.
        id: String,
        /// Why; stored as the mission's outcome and audited.
        #[arg(long)]
        reason: String,
    },
}

/// `opsloop mission list`
#[derive(Args)]
pub struct ListArgs {
    /// Only missions with this status.
    #[arg(long, value_enum)]
    status: Option<StatusArg>,
    /// Only the mission of this proposal.
    #[arg(long, value_name = "ID")]
    proposal: Option<String>,
    /// Only missions created at or after this time (RFC 3339, a date, or `2h` ago).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only missions created before this time.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Most missions to show.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Cursor printed by a previous page.
    #[arg(long)]
    page_token: Option<String>,
}

/// A mission status on the command line.
#[derive(Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl StatusArg {
    fn to_proto(self) -> MissionStatus {
        match self {
            StatusArg::Running => MissionStatus::Running,
            StatusArg::Succeeded => MissionStatus::Succeeded,
            StatusArg::Failed => MissionStatus::Failed,
            StatusArg::Cancelled => MissionStatus::Cancelled,
        }
    }
}

/// Runs a `mission` command.
pub async fn run(command: MissionCommand, globals: &Globals) -> anyhow::Result<()> {
    match command {
        MissionCommand::List(args) => {
            let now = chrono::Utc::now();
            let created_after = args
                .since
                .as_deref()
                .map(|t| crate::parse::instant(t, now).context("--since"))
                .transpose()?
                .map(output::to_timestamp);
            let created_before = args
                .until
                .as_deref()
                .map(|t| crate::parse::instant(t, now).context("--until"))
                .transpose()?
                .map(output::to_timestamp);
            let conn = Connection::open(globals, Daemon::Api).await?;
            let response = conn
                .missions()
                .list_missions(ListMissionsRequest {
                    status: args
                        .status
                        .map_or(MissionStatus::Unspecified, StatusArg::to_proto)
                        as i32,
                    proposal_id: args.proposal,
                    created_after,
                    created_before,
                    page_size: args.limit,
                    page_token: args.page_token.unwrap_or_default(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "missions": response.missions.iter().map(mission_json).collect::<Vec<_>>(),
                    "next_page_token": response.next_page_token,
                })),
                OutputFormat::Table => {
                    let mut table = Table::new(&[
                        "ID", "STATUS", "STEPS", "COST", "CREATED", "FINISHED", "TITLE",
                    ]);
                    for m in &response.missions {
                        table.row(vec![
                            m.id.clone(),
                            mission_status(m),
                            m.step_count.to_string(),
                            usd(Some(m.cost_usd)),
                            ts(m.created_at.as_ref()),
                            ts(m.finished_at.as_ref()),
                            m.title.clone(),
                        ]);
                    }
                    table.print_or("no missions");
                    crate::proposal::print_more(&response.next_page_token);
                    Ok(())
                }
            }
        }
        MissionCommand::Show { id } => {
            let conn = Connection::open(globals, Daemon::Api).await?;
            let mission = conn
                .missions()
                .get_mission(GetMissionRequest { id })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .mission
                .ok_or_else(|| anyhow!("the api answered without a mission"))?;
            print_mission(&mission, globals.output)
        }
        MissionCommand::Cancel { id, reason } => {
            let conn = Connection::open(globals, Daemon::Api).await?;
            let mission = conn
                .missions()
                .cancel_mission(CancelMissionRequest {
                    id,
                    actor: globals.actor.clone(),
                    reason,
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .mission
                .ok_or_else(|| anyhow!("the api answered without a mission"))?;
            print_mission(&mission, globals.output)
        }
    }
}

fn print_mission(mission: &Mission, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => output::print_json(&mission_json(mission)),
        OutputFormat::Table => {
            out!(
                "{}",
                fields(&[
                    ("id", mission.id.clone()),
                    ("title", mission.title.clone()),
                    ("status", mission_status(mission)),
                    ("outcome", opt(mission.outcome_detail.as_deref())),
                    ("proposal", mission.proposal_id.clone()),
                    ("parallel", mission.parallel.to_string()),
                    ("cost", usd(Some(mission.cost_usd))),
                    ("created", ts(mission.created_at.as_ref())),
                    ("finished", ts(mission.finished_at.as_ref())),
                ])
            );
            outln!();
            let mut table = Table::new(&[
                "SEQ",
                "STEP",
                "KIND",
                "STATUS",
                "ATTEMPT",
                "HOLDER",
                "COST",
                "FINISHED",
                "RESULT / ERROR",
            ]);
            for step in &mission.steps {
                let detail = match (&step.result_json, &step.error) {
                    (Some(result), _) if step_status(step) == "succeeded" => result.clone(),
                    (_, Some(error)) => error.clone(),
                    (Some(result), None) => result.clone(),
                    (None, None) => "-".into(),
                };
                table.row(vec![
                    step.seq.to_string(),
                    step.id.clone(),
                    step.kind.clone(),
                    step_status(step),
                    format!("{}/{}", step.attempt, step.max_attempts),
                    opt(step.lease_holder.as_deref()),
                    usd(step.cost_usd),
                    ts(step.finished_at.as_ref()),
                    detail,
                ]);
            }
            table.print_or("no steps");
            Ok(())
        }
    }
}

/// A mission's status as a lowercase word.
pub fn mission_status(m: &Mission) -> String {
    enum_label(m.status().as_str_name(), "MISSION_STATUS_")
}

/// A mission status value as a lowercase word.
pub fn status_word(status: MissionStatus) -> String {
    enum_label(status.as_str_name(), "MISSION_STATUS_")
}

fn step_status(s: &Step) -> String {
    enum_label(s.status().as_str_name(), "STEP_STATUS_")
}

/// A mission (with its steps, when present) as stable JSON for scripts.
pub fn mission_json(m: &Mission) -> Value {
    json!({
        "id": m.id,
        "proposal_id": m.proposal_id,
        "title": m.title,
        "status": mission_status(m),
        "parallel": m.parallel,
        "step_count": m.step_count,
        "steps": m.steps.iter().map(step_json).collect::<Vec<_>>(),
        "outcome_detail": opt_json(m.outcome_detail.as_deref()),
        "cost_usd": m.cost_usd,
        "created_at": ts_json(m.created_at.as_ref()),
        "finished_at": ts_json(m.finished_at.as_ref()),
        "updated_at": ts_json(m.updated_at.as_ref()),
    })
}

/// A step as stable JSON for scripts.
pub fn step_json(s: &Step) -> Value {
    json!({
        "id": s.id,
        "mission_id": s.mission_id,
        "seq": s.seq,
        "kind": s.kind,
        "payload": json_doc(&s.payload_json),
        "status": step_status(s),
        "attempt": s.attempt,
        "max_attempts": s.max_attempts,
        "lease_holder": opt_json(s.lease_holder.as_deref()),
        "lease_expires_at": ts_json(s.lease_expires_at.as_ref()),
        "next_attempt_at": ts_json(s.next_attempt_at.as_ref()),
        "result": s.result_json.as_deref().map_or(Value::Null, json_doc),
        "error": opt_json(s.error.as_deref()),
        "cost_usd": s.cost_usd,
        "created_at": ts_json(s.created_at.as_ref()),
        "started_at": ts_json(s.started_at.as_ref()),
        "finished_at": ts_json(s.finished_at.as_ref()),
    })
}
