//! `opsloop rollout create|status|advance|rollback`: the staged rollout
//! through `RolloutService`. `status` and `advance` show the go/no-go
//! report (each criterion with its measured value); `advance` refuses
//! anything but `go` unless `--force` with a `--reason`.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Subcommand;
use opsloop_core::proto::v1::{
    AdvanceRolloutRequest, CreateRolloutRequest, GetRolloutRequest, RollbackRolloutRequest,
    Rollout, RolloutReport,
};
use serde_json::{Value, json};

use crate::client::{Connection, Daemon, Globals};
use crate::output::{self, OutputFormat, Table, fields, json_doc, ts, ts_json};

/// `opsloop rollout …`
#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout (admin): the default template (the plan's phases A–D,
    /// one week each) or the phases in --file; its first phase's toggles and
    /// caps are written at once.
    Create {
        /// Name of the rollout (with the default template).
        #[arg(long, default_value = "rollout")]
        name: String,
        /// The rollout as JSON or YAML (`{name, phases: [{name, toggles,
        /// caps, min_duration_secs, criteria}], auto_advance}`; `-` for stdin).
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// With the default template: advance by itself on `go`.
        #[arg(long)]
        auto_advance: bool,
    },
    /// The active rollout (or the newest) with a fresh go/no-go report.
    Status,
    /// Move to the next phase (admin); refused unless the report says go.
    Advance {
        /// Advance whatever the report says (needs --reason).
        #[arg(long, requires = "reason")]
        force: bool,
        /// Why (audit log); required with --force.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Go back to the previous phase, or end the rollout from its first (admin).
    Rollback {
        /// Why (audit log).
        #[arg(long)]
        reason: String,
    },
}

/// Runs a `rollout` command.
pub async fn run(command: RolloutCommand, globals: &Globals) -> anyhow::Result<()> {
    let conn = Connection::open(globals, Daemon::Api).await?;
    let mut client = conn.rollouts();
    match command {
        RolloutCommand::Create {
            name,
            file,
            auto_advance,
        } => {
            let spec_json = match file {
                Some(path) => crate::policy::read_value(&path)?,
                None => String::new(),
            };
            let rollout = client
                .create_rollout(CreateRolloutRequest {
                    spec_json,
                    name,
                    auto_advance,
                    actor: globals.actor.clone(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .rollout
                .ok_or_else(|| anyhow!("the api answered without a rollout"))?;
            show(&rollout, None, globals)
        }
        RolloutCommand::Status => {
            let rollout = client
                .get_rollout(GetRolloutRequest {})
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .rollout
                .ok_or_else(|| anyhow!("the api answered without a rollout"))?;
            show(&rollout, None, globals)
        }
        RolloutCommand::Advance { force, reason } => {
            let r = client
                .advance_rollout(AdvanceRolloutRequest {
                    force,
                    reason: reason.unwrap_or_default(),
                    actor: globals.actor.clone(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            let rollout = r
                .rollout
                .ok_or_else(|| anyhow!("the api answered without a rollout"))?;
            let moved = (r.from_phase, r.to_phase);
            show_move(&rollout, r.report.as_ref(), &moved, globals)
        }
        RolloutCommand::Rollback { reason } => {
            let r = client
                .rollback_rollout(RollbackRolloutRequest {
                    reason,
                    actor: globals.actor.clone(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            let rollout = r
                .rollout
                .ok_or_else(|| anyhow!("the api answered without a rollout"))?;
            let moved = (r.from_phase, r.to_phase);
            show_move(&rollout, r.report.as_ref(), &moved, globals)
        }
    }
}

fn show_move(
    rollout: &Rollout,
    report: Option<&RolloutReport>,
    (from, to): &(String, String),
    globals: &Globals,
) -> anyhow::Result<()> {
    if matches!(globals.output, OutputFormat::Table) {
        let to = if to.is_empty() {
            format!("(rollout {})", rollout.status)
        } else {
            format!("phase {to}")
        };
        out!("moved from phase {from} to {to}");
    }
    show(rollout, report, globals)
}

fn show(
    rollout: &Rollout,
    report: Option<&RolloutReport>,
    globals: &Globals,
) -> anyhow::Result<()> {
    let report = report.or(rollout.report.as_ref());
    match globals.output {
        OutputFormat::Json => output::print_json(&json!({
            "rollout": rollout_json(rollout),
            "report": report.map(report_json),
        })),
        OutputFormat::Table => {
            let phase = rollout
                .phases
                .get(rollout.phase_index as usize)
                .cloned()
                .unwrap_or_default();
            out!(
                "{}",
                fields(&[
                    ("rollout", format!("{} ({})", rollout.name, rollout.id)),
                    ("status", rollout.status.clone()),
                    (
                        "phases",
                        rollout
                            .phases
                            .iter()
                            .enumerate()
                            .map(|(i, p)| if i == rollout.phase_index as usize {
                                format!("[{p}]")
                            } else {
                                p.clone()
                            })
                            .collect::<Vec<_>>()
                            .join(" → ")
                    ),
                    (
                        "phase since",
                        format!("{phase} since {}", ts(rollout.phase_started_at.as_ref()))
                    ),
                    (
                        "advances",
                        if rollout.auto_advance {
                            "by itself on go".into()
                        } else {
                            "by `opsloop rollout advance`".into()
                        }
                    ),
                ])
            );
            if let Some(report) = report {
                out!(
                    "verdict: {} (phase {}, {} of at least {})",
                    report.verdict.to_uppercase(),
                    report.phase,
                    duration(report.elapsed_secs),
                    duration(report.min_duration_secs)
                );
                let mut table = Table::new(&["CRITERION", "MEASURED", "STATE"]);
                for c in &report.criteria {
                    table.row(vec![
                        c.criterion.clone(),
                        c.measured.clone(),
                        c.state.clone(),
                    ]);
                }
                table.print_or("no criteria");
            }
            Ok(())
        }
    }
}

/// Seconds as `3 d 4 h`, `5 h 20 min` or `45 min`.
fn duration(secs: u64) -> String {
    let minutes = secs / 60;
    match minutes {
        m if m < 60 => format!("{m} min"),
        m if m < 24 * 60 => format!("{} h {} min", m / 60, m % 60),
        m => format!("{} d {} h", m / (24 * 60), m % (24 * 60) / 60),
    }
}

fn report_json(r: &RolloutReport) -> Value {
    json!({
        "phase": r.phase,
        "elapsed_secs": r.elapsed_secs,
        "min_duration_secs": r.min_duration_secs,
        "verdict": r.verdict,
        "criteria": r.criteria.iter().map(|c| json!({
            "criterion": c.criterion, "measured": c.measured, "state": c.state,
        })).collect::<Vec<_>>(),
    })
}

fn rollout_json(r: &Rollout) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "status": r.status,
        "phases": r.phases,
        "phase_index": r.phase_index,
        "phase_started_at": ts_json(r.phase_started_at.as_ref()),
        "auto_advance": r.auto_advance,
        "spec": json_doc(&r.spec_json),
        "created_by": r.created_by,
        "created_at": ts_json(r.created_at.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(59), "0 min");
        assert_eq!(duration(45 * 60), "45 min");
        assert_eq!(duration(5 * 3600 + 20 * 60), "5 h 20 min");
        assert_eq!(duration(7 * 24 * 3600 + 4 * 3600), "7 d 4 h");
    }
}
