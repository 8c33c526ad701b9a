//! `opsloop-api`: see the library's documentation.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use opsloop_api::ApiApp;
use opsloop_core::healthcheck::DaemonCommand;

/// opsloop api daemon.
#[derive(Parser)]
#[command(name = "opsloop-api", version, about, long_about = None)]
struct Args {
    /// TOML config file (default: /etc/opsloop/opsloop.toml when present).
    /// Environment variables OPSLOOP__SECTION__KEY override it.
    #[arg(long, env = "OPSLOOP_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<DaemonCommand>,
}

/// The default HTTP port (`http_addr`), probed by `healthcheck`.
const DEFAULT_HTTP_PORT: u16 = 9754;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(command) = args.command {
        return command.run(opsloop_api::SERVICE, DEFAULT_HTTP_PORT);
    }
    opsloop_core::daemon::run(
        opsloop_api::SERVICE,
        args.config,
        opsloop_api::check_config,
        |infra| async move { ApiApp::build(infra).await?.run_until_stopped().await },
    )
}
