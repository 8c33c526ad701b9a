//! `opsloop worker --kinds a,b --exec CMD`: a real worker process built on
//! [`crate::worker`]: one line per handled step, a clean stop on SIGTERM or
//! Ctrl-C after the current step, and an immediate abandon on a second one.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::client::{Connection, Daemon, Globals};
use crate::mission::status_word;
use crate::output::{self, OutputFormat};
use crate::worker::{
    Reported, ShellHandler, StepOutcome, Worker, WorkerConfig, WorkerEvent, cost_of_output,
    default_worker_id,
};

/// `opsloop worker`
#[derive(Args)]
pub struct WorkerArgs {
    /// Step kinds to claim, comma-separated, e.g. `analyze,draft`.
    #[arg(long, value_delimiter = ',', required = true)]
    kinds: Vec<String>,
    /// Shell command run per step with `sh -c`: the step payload JSON on
    /// stdin; OPSLOOP_STEP_ID, OPSLOOP_STEP_KIND, OPSLOOP_MISSION_ID and
    /// OPSLOOP_STEP_ATTEMPT in its environment. Exit 0: stdout (JSON, else
    /// {"stdout": …}; a `cost_usd` number is the cost) completes the step.
    /// Exit 75: retryable failure. Other exits: terminal failure with the
    /// stderr tail as the error. A top-level `usage` list in the JSON
    /// (calls, latency, status counts per upstream resource) is reported
    /// with the outcome, also when the command failed: a failed command may
    /// print a JSON object with `usage` and `cost_usd` before exiting.
    #[arg(long, value_name = "CMD")]
    exec: String,
    /// Worker name recorded as the lease holder (default: HOSTNAME-PID).
    #[arg(long)]
    worker_id: Option<String>,
    /// Lease length to ask for in seconds (0: the server's worker_policy
    /// default); renewed every third of it while CMD runs.
    #[arg(long, default_value_t = 0)]
    lease_seconds: u32,
    /// Run at most one step: claim (retrying while the api is unreachable),
    /// run what is handed out, report it, exit. Exits 0 also when there was
    /// nothing to claim.
    #[arg(long)]
    once: bool,
    /// Longest pause between claims while there is nothing to do: seconds or 5s, 1m.
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    max_idle: String,
    /// Long poll: seconds each claim waits on the api for a step to arrive
    /// (1 to 30; the step starts the moment it is submitted, and an idle
    /// worker sends one claim per wait). 0: poll, pausing up to --max-idle.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=30))]
    wait_seconds: u32,
}

/// Runs `opsloop worker` until stopped.
pub async fn run(args: WorkerArgs, globals: &Globals) -> anyhow::Result<()> {
    let kinds: Vec<String> = args
        .kinds
        .iter()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect();
    if kinds.is_empty() {
        anyhow::bail!("--kinds needs at least one step kind");
    }
    let max_idle: Duration = crate::parse::duration(&args.max_idle)?;
    let worker_id = args.worker_id.unwrap_or_else(default_worker_id);
    let conn = Connection::open(globals, Daemon::Api).await?;
    let mut config = WorkerConfig::new(worker_id.clone(), kinds.clone());
    config.lease_seconds = args.lease_seconds;
    config.once = args.once;
    config.max_idle_backoff = max_idle.max(Duration::from_millis(200));
    config.wait_seconds = args.wait_seconds;
    let format = globals.output;
    let worker = Worker::new(
        conn,
        config,
        ShellHandler::new(args.exec, worker_id.clone()),
        move |event| {
            print_event(&event, format);
        },
    );

    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    spawn_signal_handler(stop.clone(), abort.clone())?;
    if format == OutputFormat::Table && !args.once {
        eprintln!(
            "worker {worker_id}: claiming {} from {} (Ctrl-C stops after the current step)",
            kinds.join(","),
            globals.endpoint(Daemon::Api)
        );
    }
    let stats = worker.run(stop, abort).await?;
    match format {
        OutputFormat::Json => {
            let summary = json!({
                "worker_id": worker_id,
                "claimed": stats.claimed,
                "succeeded": stats.succeeded,
                "failed": stats.failed,
                "requeued": stats.requeued,
                "abandoned": stats.abandoned,
            });
            eprintln!("{summary}");
        }
        OutputFormat::Table => {
            if args.once && stats.claimed == 0 {
                outln!("nothing to claim for {}", kinds.join(","));
            } else if !args.once {
                eprintln!(
                    "worker {worker_id} stopped: {} claimed, {} succeeded, {} failed, {} requeued, {} abandoned",
                    stats.claimed, stats.succeeded, stats.failed, stats.requeued, stats.abandoned
                );
            }
        }
    }
    Ok(())
}

/// First SIGINT/SIGTERM: finish the current step, then stop. Second: abandon
/// it. The handlers are installed before this returns, so a signal sent as
/// soon as the worker claims is never the default (fatal) one.
fn spawn_signal_handler(stop: CancellationToken, abort: CancellationToken) -> anyhow::Result<()> {
    #[cfg(unix)]
    let (mut interrupt, mut terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        )
    };
    tokio::spawn(async move {
        for round in 0..2 {
            #[cfg(unix)]
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            #[cfg(not(unix))]
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            if round == 0 {
                eprintln!("worker: stopping after the current step (signal again to abandon it)");
                stop.cancel();
            } else {
                eprintln!("worker: abandoning the current step");
                abort.cancel();
            }
        }
    });
    Ok(())
}

fn print_event(event: &WorkerEvent, format: OutputFormat) {
    match event {
        WorkerEvent::Notice(text) => eprintln!("worker: {}", output::one_line(text)),
        WorkerEvent::Step(report) => {
            let step = &report.step;
            let (outcome, detail) = match (&report.reported, &report.outcome) {
                (Reported::Succeeded, _) => ("succeeded", String::new()),
                (Reported::Requeued, StepOutcome::Fail { error, .. }) => {
                    ("requeued", error.clone())
                }
                (Reported::Failed, StepOutcome::Fail { error, .. }) => ("failed", error.clone()),
                (Reported::Requeued, _) => ("requeued", String::new()),
                (Reported::Failed, _) => ("failed", String::new()),
                (Reported::LeaseLost(reason), _) => ("lease-lost", reason.clone()),
                (Reported::NotReported(reason), _) => ("not-reported", reason.clone()),
            };
            match format {
                OutputFormat::Json => {
                    let (result, cost) = match &report.outcome {
                        StepOutcome::Complete {
                            result_json,
                            cost_usd,
                        } => (output::json_doc(result_json), *cost_usd),
                        StepOutcome::Fail { output_json, .. } => (
                            output_json
                                .as_deref()
                                .map_or(serde_json::Value::Null, output::json_doc),
                            output_json.as_deref().and_then(cost_of_output),
                        ),
                    };
                    let line = json!({
                        "step_id": step.id,
                        "mission_id": step.mission_id,
                        "kind": step.kind,
                        "attempt": step.attempt,
                        "outcome": outcome,
                        "detail": if detail.is_empty() { serde_json::Value::Null } else { detail.into() },
                        "result": result,
                        "cost_usd": cost,
                        "mission_status": status_word(report.mission_status),
                        "elapsed_ms": u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
                    });
                    outln!("{line}");
                }
                OutputFormat::Table => {
                    let mission = match status_word(report.mission_status).as_str() {
                        "unspecified" | "running" => String::new(),
                        done => format!("  mission {} {done}", step.mission_id),
                    };
                    let detail = if detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", output::truncate(&output::one_line(&detail), 200))
                    };
                    outln!(
                        "step {} {} attempt {} {outcome} in {:.1}s{detail}{mission}",
                        step.id,
                        step.kind,
                        step.attempt,
                        report.elapsed.as_secs_f64()
                    );
                }
            }
        }
    }
}
