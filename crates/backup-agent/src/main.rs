//! `opsloop-backup-agent`: see the library's documentation.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use opsloop_backup_agent::BackupApp;

/// opsloop backup-agent daemon.
#[derive(Parser)]
#[command(name = "opsloop-backup-agent", version, about, long_about = None)]
struct Args {
    /// TOML config file (default: /etc/opsloop/opsloop.toml when present).
    /// Environment variables OPSLOOP__SECTION__KEY override it.
    #[arg(long, env = "OPSLOOP_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    opsloop_core::daemon::run(
        opsloop_backup_agent::SERVICE,
        args.config,
        opsloop_backup_agent::config::check_config,
        |infra| async move { BackupApp::build(infra).await?.run_until_stopped().await },
    )
}
