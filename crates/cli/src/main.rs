//! `opsloop`: the user's tool. Drives the daemons over gRPC, applies
//! migrations, and runs every role in one process with `opsloop dev`.

mod dev;
mod migrate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use opsloop_cli::client::Globals;
use opsloop_cli::output::OutputFormat;
use opsloop_cli::{
    alerts, backup, config_check, event, incident, mission, ops, policy, probe, proposal, repair,
    rollout, status, token, trigger, worker_cmd,
};

/// `opsloop --version`: the crate version, git revision and build date
/// (stamped by `build.rs`).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (rev ",
    env!("OPSLOOP_GIT_REVISION"),
    ", built ",
    env!("OPSLOOP_BUILD_DATE"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "opsloop",
    version = VERSION,
    about = "opsloop: a closed-loop operations control plane",
    long_about = None,
    after_help = opsloop_cli::exit::TABLE
)]
struct Cli {
    /// TOML config file (default: /etc/opsloop/opsloop.toml when present).
    /// Environment variables OPSLOOP__SECTION__KEY override it.
    #[arg(
        long,
        global = true,
        env = "OPSLOOP_CONFIG",
        help_heading = "Global options"
    )]
    config: Option<PathBuf>,

    /// gRPC endpoint of the daemon the command talks to. Default: for api
    /// commands $OPSLOOP_ENDPOINT or http://127.0.0.1:50051; alerts/silence
    /// $OPSLOOP_ALERTER_ENDPOINT or http://127.0.0.1:50052; backup
    /// $OPSLOOP_BACKUP_ENDPOINT or http://127.0.0.1:50053; heartbeat (HTTP)
    /// $OPSLOOP_HEARTBEAT_ENDPOINT or http://127.0.0.1:9755.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        help_heading = "Global options"
    )]
    endpoint: Option<String>,

    /// Bearer token sent as `authorization: Bearer …` (default: $OPSLOOP_TOKEN).
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        help_heading = "Global options"
    )]
    token: Option<String>,

    /// Read the bearer token from this file, e.g. a mounted secret (--token wins).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "OPSLOOP_TOKEN_FILE",
        help_heading = "Global options"
    )]
    token_file: Option<PathBuf>,

    /// CA bundle (PEM) that https:// endpoints are checked against, besides the system roots.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "OPSLOOP_CA_FILE",
        help_heading = "Global options"
    )]
    ca_file: Option<PathBuf>,

    /// How results are printed.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table, overrides_with = "output", help_heading = "Global options")]
    output: OutputFormat,

    /// Who is acting, recorded in audit fields (default: $OPSLOOP_ACTOR, else $USER).
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        help_heading = "Global options"
    )]
    actor: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run api, heartbeat-worker, alerter and backup-agent in one process on
    /// SQLite (var/opsloop.db) and the in-process bus.
    Dev(dev::DevArgs),
    /// Apply or roll back the database schema.
    Migrate(migrate::MigrateArgs),
    /// Submit, list, show, approve and reject proposals.
    #[command(subcommand)]
    Proposal(proposal::ProposalCommand),
    /// List, show and cancel missions.
    #[command(subcommand)]
    Mission(mission::MissionCommand),
    /// Emit, list and tail events.
    #[command(subcommand)]
    Event(event::EventCommand),
    /// Read and change policy, and show a key's history.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// List, show and retry dead-lettered steps (failed for good).
    #[command(subcommand)]
    Deadletter(repair::DeadLetterCommand),
    /// List quarantined events and put them back in the retry set.
    #[command(subcommand)]
    Quarantine(repair::QuarantineCommand),
    /// Start, inspect, advance and roll back the staged rollout.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Add, list and remove heartbeat trigger rules.
    #[command(subcommand)]
    Trigger(trigger::TriggerCommand),
    /// Create, list and revoke named API tokens (admin).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Counts of proposals, missions, steps and events over a period.
    Summary(ops::SummaryArgs),
    /// The ops-health figures: failures, backlog, leases, stop, cost.
    Health,
    /// Engage, release or inspect the emergency stop.
    #[command(subcommand)]
    EmergencyStop(ops::EmergencyStopCommand),
    /// Drive the heartbeat-worker.
    #[command(subcommand)]
    Heartbeat(ops::HeartbeatCommand),
    /// List the uptime probes with their state, check one now, or add and
    /// remove probes at run time (heartbeat-worker HTTP).
    #[command(subcommand)]
    Probe(probe::ProbeCommand),
    /// Show stored operations reports.
    #[command(subcommand)]
    Report(ops::ReportCommand),
    /// Run a worker: claim steps of some kinds and execute a command for each.
    Worker(worker_cmd::WorkerArgs),
    /// List alerts and test receivers (alerter).
    #[command(subcommand)]
    Alerts(alerts::AlertsCommand),
    /// Add, list and expire silences (alerter).
    #[command(subcommand)]
    Silence(alerts::SilenceCommand),
    /// List, show, open, acknowledge, resolve, note and escalate incidents (alerter).
    #[command(subcommand)]
    Incident(incident::IncidentCommand),
    /// Who is on call now, today or this week (alerter).
    #[command(subcommand)]
    Oncall(incident::OncallCommand),
    /// Take, list, verify, restore and preview-prune backups (backup-agent).
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Every daemon's version and readiness, the emergency stop, the
    /// backlog and the newest backup, on one screen.
    Status(status::StatusArgs),
    /// Check the configuration a daemon would start with.
    #[command(subcommand)]
    Config(config_check::ConfigCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Write the man pages (opsloop.1 and one per subcommand) into a directory.
    Man(ManArgs),
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    opsloop_cli::client::set_ca_file(cli.ca_file.clone());
    let globals = Globals {
        endpoint: cli.endpoint,
        token: cli.token,
        token_file: cli.token_file,
        output: cli.output,
        actor: cli
            .actor
            .or_else(|| std::env::var("OPSLOOP_ACTOR").ok())
            .or_else(|| std::env::var("USER").ok())
            .filter(|a| !a.trim().is_empty())
            .unwrap_or_else(|| "opsloop-cli".to_owned()),
    };
    let command = match cli.command {
        Command::Dev(args) => return dev::run(cli.config, args, &globals),
        Command::Migrate(args) => return migrate::run(cli.config, args),
        Command::Config(config_check::ConfigCommand::Check(args)) => {
            return config_check::run(cli.config, args, globals.output);
        }
        Command::Completions(args) => {
            // Into a buffer first: clap_complete panics on a closed stdout
            // (`opsloop completions bash | head`); `out!` ends quietly.
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut Cli::command(), "opsloop", &mut script);
            opsloop_cli::out!("{}", String::from_utf8_lossy(&script));
            return ExitCode::SUCCESS;
        }
        Command::Man(args) => return man(&args.out),
        other => other,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("opsloop: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let submit_matches = matches
        .subcommand_matches("proposal")
        .and_then(|m| m.subcommand_matches("submit"));
    match runtime.block_on(run(command, &globals, submit_matches)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", opsloop_cli::output::one_line(&format!("{error:#}")));
            ExitCode::from(opsloop_cli::exit::for_error(&error))
        }
    }
}

async fn run(
    command: Command,
    globals: &Globals,
    submit_matches: Option<&clap::ArgMatches>,
) -> anyhow::Result<()> {
    match command {
        Command::Proposal(command) => proposal::run(command, globals, submit_matches).await,
        Command::Mission(command) => mission::run(command, globals).await,
        Command::Event(command) => event::run(command, globals).await,
        Command::Policy(command) => policy::run(command, globals).await,
        Command::Rollout(command) => rollout::run(command, globals).await,
        Command::Deadletter(command) => repair::run_dead_letter(command, globals).await,
        Command::Quarantine(command) => repair::run_quarantine(command, globals).await,
        Command::Trigger(command) => trigger::run(command, globals).await,
        Command::Token(command) => token::run(command, globals).await,
        Command::Summary(args) => ops::summary(args, globals).await,
        Command::Health => ops::health(globals).await,
        Command::EmergencyStop(command) => ops::emergency_stop(command, globals).await,
        Command::Heartbeat(command) => ops::heartbeat(command, globals).await,
        Command::Report(command) => ops::report(command, globals).await,
        Command::Probe(command) => probe::run(command, globals).await,
        Command::Worker(args) => worker_cmd::run(args, globals).await,
        Command::Alerts(command) => alerts::alerts(command, globals).await,
        Command::Silence(command) => alerts::silence(command, globals).await,
        Command::Incident(command) => incident::incident(command, globals).await,
        Command::Oncall(command) => incident::oncall(command, globals).await,
        Command::Backup(command) => backup::run(command, globals).await,
        Command::Status(args) => status::run(args, globals).await,
        Command::Dev(_)
        | Command::Migrate(_)
        | Command::Config(_)
        | Command::Completions(_)
        | Command::Man(_) => unreachable!("handled before the runtime starts"),
    }
}

/// `opsloop completions SHELL`.
#[derive(clap::Args)]
struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// `opsloop man --out DIR`.
#[derive(clap::Args)]
struct ManArgs {
    /// Directory the pages are written into (created when missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Writes `opsloop.1` and `opsloop-<sub>[-<sub>].1` for every subcommand.
fn man(out: &std::path::Path) -> ExitCode {
    let result =
        std::fs::create_dir_all(out).and_then(|()| clap_mangen::generate_to(Cli::command(), out));
    match result {
        Ok(()) => {
            opsloop_cli::outln!("man pages written to {}", out.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("opsloop man: {}: {error}", out.display());
            ExitCode::from(opsloop_cli::exit::OTHER)
        }
    }
}
