//! `opsloop-bench`: load generator and side-by-side benchmarks of opsloop's
//! hot paths against the tools it stands on (pgbench, pg_dump | zstd). Every
//! load goes to 127.0.0.1, bounded in count and time; the daemons under test
//! run as the release binaries on fresh PostgreSQL databases that are dropped
//! afterwards.

mod daemon;
mod env;
mod governance;
mod heartbeat;
mod load;
mod longpoll;
mod page;
mod pgbench;
mod report;
mod scenarios;
mod storm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::env::{BusChoice, Env};
use crate::report::Row;

#[derive(Parser, Debug)]
#[command(
    name = "opsloop-bench",
    about = "Benchmarks of opsloop against its baselines"
)]
struct Cli {
    /// Tiny sizes: every scenario in seconds (CI keeps the suite from rotting).
    #[arg(long, global = true)]
    smoke: bool,
    /// Write the JSON report here.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Directory holding the daemon binaries (default: next to this binary).
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    /// Bus the daemons use: RabbitMQ when 127.0.0.1:5672 answers, else in-process.
    #[arg(long, global = true, value_enum, default_value_t = BusChoice::Auto)]
    bus: BusChoice,
    /// Fail (exit 1) when a baseline's tool is missing instead of skipping it.
    #[arg(long, global = true)]
    require_baselines: bool,
    #[command(subcommand)]
    command: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
enum Scenario {
    /// Every scenario below, in order (sizes: the unless given).
    All(AllArgs),
    /// SubmitProposal (auto-approved, 3 steps) at saturation and at half of it; pgbench baseline.
    Submit(scenarios::SubmitArgs),
    /// ClaimStep → CompleteStep by N workers over M queued steps; pgbench baseline.
    WorkCycle(scenarios::WorkArgs),
    /// Long-poll claims (submit -> claim latency, idle claim statements) and batch vs single submit.
    LongPoll(longpoll::LongPollArgs),
    /// Claims/s with a resource rate limit active (above saturation) vs none, and grants vs the configured rate under 64 workers.
    RateLimit(governance::RateLimitArgs),
    /// Alerts posted at a fixed rate → a local Slack-shaped webhook; Alertmanager baseline.
    EventToPage(page::PageArgs),
    /// The alerter in an alert storm (issue 22): N active groups, idle, 100/s, 1,000/s; Alertmanager side by side.
    Storm(storm::StormArgs),
    /// The heartbeat's trigger phase with 200 rules over a small and a 10x larger event table.
    HeartbeatScaling(heartbeat::HeartbeatArgs),
    /// dump + compress + checksum + store by the backup-agent vs pg_dump -Fc | zstd -3 | sha256sum.
    Backup(scenarios::BackupArgs),
    /// Idle RSS and cold start to ready of each daemon binary.
    Footprint,
}

/// Size overrides for `all` (each scenario's own flag, renamed).
#[derive(clap::Args, Debug, Clone, Default)]
struct AllArgs {
    /// submit: seconds per phase.
    #[arg(long)]
    submit_seconds: Option<u64>,
    /// work-cycle: queued steps.
    #[arg(long)]
    work_steps: Option<u64>,
    /// event-to-page: seconds of posting.
    #[arg(long)]
    page_seconds: Option<u64>,
    /// storm: active groups before the measured phases.
    #[arg(long)]
    storm_active: Option<u64>,
    /// heartbeat-scaling: the smaller event table.
    #[arg(long)]
    heartbeat_table_events: Option<u64>,
    /// backup: MiB of table data.
    #[arg(long)]
    backup_mib: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("opsloop-bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("opsloop-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the chosen scenarios; `Ok(false)` when one of them failed.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let env = Env::new(
        cli.smoke,
        cli.bin_dir.clone(),
        cli.bus,
        cli.require_baselines,
    )?;
    eprintln!(
        "opsloop-bench: smoke={} bus={} binaries={} pgbench={}",
        env.smoke,
        env.bus_name(),
        env.bin_dir.display(),
        env.pgbench
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "missing".into())
    );
    let invocation: Vec<String> = std::env::args().collect();
    let scenarios: Vec<Scenario> = match &cli.command {
        Scenario::All(sizes) => vec![
            Scenario::Footprint,
            Scenario::Submit(scenarios::SubmitArgs {
                duration: sizes.submit_seconds,
                ..Default::default()
            }),
            Scenario::WorkCycle(scenarios::WorkArgs {
                steps: sizes.work_steps,
                ..Default::default()
            }),
            Scenario::LongPoll(longpoll::LongPollArgs::default()),
            Scenario::RateLimit(governance::RateLimitArgs::default()),
            Scenario::EventToPage(page::PageArgs {
                duration: sizes.page_seconds,
                ..Default::default()
            }),
            Scenario::Storm(storm::StormArgs {
                active: sizes.storm_active,
                ..Default::default()
            }),
            Scenario::HeartbeatScaling(heartbeat::HeartbeatArgs {
                table_events: sizes.heartbeat_table_events,
                ..Default::default()
            }),
            Scenario::Backup(scenarios::BackupArgs {
                mib: sizes.backup_mib,
            }),
        ],
        one => vec![one.clone()],
    };
    let started = chrono::Utc::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut details = serde_json::Map::new();
    let mut failures = Vec::new();
    for scenario in scenarios {
        let (name, result) = match scenario {
            Scenario::Submit(args) => ("submit", scenarios::submit(&env, args).await),
            Scenario::WorkCycle(args) => ("work-cycle", scenarios::work_cycle(&env, args).await),
            Scenario::LongPoll(args) => ("long-poll", longpoll::long_poll(&env, args).await),
            Scenario::RateLimit(args) => ("rate-limit", governance::rate_limit(&env, args).await),
            Scenario::EventToPage(args) => ("event-to-page", page::event_to_page(&env, args).await),
            Scenario::Storm(args) => ("storm", storm::storm(&env, args).await),
            Scenario::HeartbeatScaling(args) => (
                "heartbeat-scaling",
                heartbeat::heartbeat_scaling(&env, args).await,
            ),
            Scenario::Backup(args) => ("backup", scenarios::backup(&env, args).await),
            Scenario::Footprint => ("footprint", scenarios::footprint(&env).await),
            Scenario::All(_) => unreachable!("expanded above"),
        };
        match result {
            Ok((scenario_rows, detail)) => {
                eprint!("{}", report::table(&scenario_rows));
                rows.extend(scenario_rows);
                details.insert(name.into(), detail);
            }
            Err(error) => {
                eprintln!("opsloop-bench: scenario {name} FAILED: {error:#}");
                failures.push(format!("{name}: {error:#}"));
                rows.push(
                    Row::new(name, "scenario", "-").note(format!("FAILED: {}", error.root_cause())),
                );
            }
        }
    }
    let table = report::table(&rows);
    println!("{table}");
    let report = serde_json::json!({
        "started_at": started,
        "finished_at": chrono::Utc::now(),
        "smoke": env.smoke,
        "command": invocation.join(" "),
        "bus": env.bus_name(),
        "host": env::host_info(),
        "rows": rows,
        "details": details,
        "failures": failures,
    });
    if let Some(path) = &cli.out {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("opsloop-bench: wrote {}", path.display());
    }
    env.cleanup();
    Ok(failures.is_empty())
}
