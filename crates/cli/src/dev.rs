//! `opsloop dev`: every role in one process on the embedded default — SQLite
//! under `var/`, the in-process bus — so the loop runs with nothing installed.
//! With `--demo`, a few demo proposals are submitted and an in-process worker
//! runs their steps, so proposals visibly flow to finished missions.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use opsloop_cli::client::Globals;
use opsloop_cli::outln;
use opsloop_core::config::{BusKind, ConfigSources, LogFormat};
use opsloop_core::daemon::Infra;
use opsloop_core::secrets::SecretStore;
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub(crate) struct DevArgs {
    /// SQLite database file.
    #[arg(long, default_value = "var/opsloop.db")]
    database: PathBuf,
    /// Also submit demo proposals (step kinds analyze, draft, notify) every
    /// few seconds and run an in-process worker for them, printing one line
    /// per finished mission.
    #[arg(long)]
    demo: bool,
    /// How many demo proposals to submit (0: until stopped).
    #[arg(long, default_value_t = 5, requires = "demo")]
    demo_proposals: u32,
}

pub(crate) fn run(config: Option<PathBuf>, args: DevArgs, globals: &Globals) -> ExitCode {
    let demo = if args.demo {
        match globals.token() {
            Ok(token) => Some(demo::DemoSettings {
                token,
                proposals: args.demo_proposals,
            }),
            Err(error) => {
                eprintln!("opsloop dev: {error:#}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let mut loaded =
        match opsloop_core::config::load(&ConfigSources::from_process(config.as_deref())) {
            Ok(loaded) => loaded,
            Err(error) => {
                eprintln!("opsloop dev: {error}");
                return ExitCode::from(2);
            }
        };
    // The embedded default, whatever the config file says about production.
    let settings = &mut loaded.settings;
    settings.database.url = format!("sqlite://{}?mode=rwc", args.database.display());
    settings.database.migrate_on_start = true;
    settings.bus.kind = BusKind::Memory;
    if std::env::var_os("OPSLOOP__TELEMETRY__LOG_FORMAT").is_none() {
        settings.telemetry.log_format = LogFormat::Pretty;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("opsloop dev: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let settings = loaded.settings.clone();
        let _telemetry = match opsloop_core::telemetry::init(
            "opsloop-dev",
            &settings.environment,
            &settings.telemetry,
        ) {
            Ok(guard) => guard,
            Err(error) => {
                eprintln!("opsloop dev: {error}");
                return ExitCode::from(2);
            }
        };
        match run_all(loaded, demo).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("opsloop dev: {error:#}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn run_all(
    loaded: opsloop_core::config::LoadedConfig,
    demo: Option<demo::DemoSettings>,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    opsloop_core::lifecycle::cancel_on_signals(shutdown.clone());
    let database = loaded.settings.database.url.clone();
    let infra = Infra::connect(loaded, SecretStore::from_process(), shutdown.clone())
        .await
        .context("starting the embedded infrastructure")?;

    let api = opsloop_api::ApiApp::build(infra.clone()).await?;
    let heartbeat = opsloop_heartbeat_worker::HeartbeatApp::build(infra.clone()).await?;
    let alerter = opsloop_alerter::AlerterApp::build(infra.clone()).await?;
    let backup = opsloop_backup_agent::BackupApp::build(infra.clone()).await?;
    // The status page checks the other roles where they were bound.
    let api = api
        .with_status_peers(
            heartbeat.http_addr()?,
            alerter.http_addr()?,
            backup.http_addr()?,
        )
        .with_peer_grpc(alerter.grpc_addr()?, backup.grpc_addr()?);

    outln!("opsloop dev: every role in one process");
    outln!("  database          {database}");
    outln!("  bus               in-process");
    outln!(
        "  api               grpc://{}  http://{}",
        api.grpc_addr()?,
        api.http_addr()?
    );
    outln!("  heartbeat-worker  http://{}", heartbeat.http_addr()?);
    outln!(
        "  alerter           grpc://{}  http://{}",
        alerter.grpc_addr()?,
        alerter.http_addr()?
    );
    outln!(
        "  backup-agent      grpc://{}  http://{}",
        backup.grpc_addr()?,
        backup.http_addr()?
    );
    outln!("  status page       http://{}/status", api.http_addr()?);
    outln!("  console           http://{}/console", api.http_addr()?);
    match console_sign_in(&infra).await {
        Ok(Some((name, secret))) => outln!(
            "  console sign-in   token {secret} (admin token {name}, expires in 12 hours; revoke with: opsloop token revoke {name})"
        ),
        Ok(None) => {
            outln!("  console sign-in   no token needed: no token is configured (open dev mode)")
        }
        Err(error) => eprintln!("opsloop dev: no console sign-in token: {error:#}"),
    }
    outln!("  try: curl -s http://{}/readyz", api.http_addr()?);
    outln!("Ctrl-C stops every role.");

    let demo_run = {
        let api_addr = api.grpc_addr()?;
        let shutdown = shutdown.clone();
        async move {
            if let Some(settings) = demo {
                demo::run(api_addr, settings, shutdown).await;
            }
        }
    };
    let (a, h, al, b, ()) = tokio::join!(
        api.run_until_stopped(),
        heartbeat.run_until_stopped(),
        alerter.run_until_stopped(),
        backup.run_until_stopped(),
        demo_run,
    );
    a.context("api")?;
    h.context("heartbeat-worker")?;
    al.context("alerter")?;
    b.context("backup-agent")?;
    Ok(())
}

/// A sign-in token for the console, printed once: with tokens configured,
/// a named admin token that expires in 12 hours (core's `create_token`,
/// audited as made by `opsloop dev`); `None` when the daemons are open (no
/// token at all), where the console signs in without one — creating a token
/// there would close every port of the dev stack.
async fn console_sign_in(infra: &Infra) -> anyhow::Result<Option<(String, String)>> {
    if infra.auth.is_open() {
        return Ok(None);
    }
    let now = chrono::Utc::now();
    let name = format!("dev-console-{}", now.format("%Y%m%d-%H%M%S"));
    let (_, secret) = opsloop_core::auth::create_token(
        &infra.db,
        &name,
        opsloop_core::access::Role::Admin,
        Some(now + chrono::Duration::hours(12)),
        "opsloop dev",
        Some(infra.audit.as_ref()),
        now,
    )
    .await
    .context("creating the console's sign-in token")?;
    infra.auth.refresh().await.context("reloading the tokens")?;
    Ok(Some((name, secret)))
}

/// The `--demo` traffic: a submitter of demo proposals, an in-process worker
/// with a built-in handler, and one printed line per finished mission.
mod demo {
    use std::net::SocketAddr;
    use std::time::Duration;

    use opsloop_cli::client::{Connection, Daemon};
    use opsloop_cli::outln;
    use opsloop_cli::worker::{StepHandler, StepOutcome, Worker, WorkerConfig, WorkerEvent};
    use opsloop_core::proto::v1::{
        GetMissionRequest, MissionStatus, ProposalSource, ProposalStatus, Step, StepSpec,
        SubmitProposalRequest,
    };
    use serde_json::{Value, json};
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    /// The step kinds the demo submits and its worker runs.
    pub(super) const KINDS: [&str; 3] = ["analyze", "draft", "notify"];

    /// Time between two demo proposals.
    const SUBMIT_EVERY: Duration = Duration::from_secs(4);

    const TOPICS: [&str; 6] = [
        "weekly metrics digest",
        "incident follow-up",
        "release notes",
        "customer feedback triage",
        "cost report",
        "onboarding checklist",
    ];

    /// What `--demo` needs from the command line.
    pub(super) struct DemoSettings {
        /// Bearer token for the api (an agent token when tokens are configured).
        pub token: Option<String>,
        /// Proposals to submit; 0: until stopped.
        pub proposals: u32,
    }

    /// Runs the demo until `shutdown`; problems are printed, never fatal to
    /// the roles.
    pub(super) async fn run(api: SocketAddr, settings: DemoSettings, shutdown: CancellationToken) {
        let endpoint = format!("http://{api}");
        let mut conn = None;
        // The api starts serving concurrently with this task: give it a moment.
        for _ in 0..50 {
            match Connection::connect(&endpoint, settings.token.as_deref(), Daemon::Api).await {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                Err(_) if !shutdown.is_cancelled() => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(_) => return,
            }
        }
        let Some(conn) = conn else {
            eprintln!("demo: cannot reach the api at {endpoint}; no demo traffic");
            return;
        };
        outln!(
            "demo: submitting {} proposals of steps analyze → draft → notify; an in-process worker runs them",
            if settings.proposals == 0 {
                "a stream of".to_owned()
            } else {
                settings.proposals.to_string()
            }
        );

        let (events, mut reports) = mpsc::unbounded_channel();
        let worker = Worker::new(
            conn.clone(),
            WorkerConfig::new(
                "opsloop-dev-demo",
                KINDS.iter().map(|k| (*k).to_owned()).collect(),
            ),
            DemoHandler,
            move |event| {
                let _ = events.send(event);
            },
        );
        let stop = shutdown.clone();
        let working = async move {
            if let Err(error) = worker.run(stop, CancellationToken::new()).await {
                eprintln!("demo worker stopped: {error:#}");
            }
        };
        let printer_conn = conn.clone();
        let printing = async move {
            while let Some(event) = reports.recv().await {
                match event {
                    WorkerEvent::Notice(text) => tracing::warn!(notice = %text, "demo worker"),
                    WorkerEvent::Step(report) => {
                        if matches!(
                            report.mission_status,
                            MissionStatus::Succeeded
                                | MissionStatus::Failed
                                | MissionStatus::Cancelled
                        ) {
                            print_finished(&printer_conn, &report.step.mission_id).await;
                        }
                    }
                }
            }
        };
        tokio::join!(
            submit(conn, settings.proposals, shutdown.clone()),
            working,
            printing
        );
    }

    async fn submit(conn: Connection, count: u32, shutdown: CancellationToken) {
        let mut n: u32 = 0;
        while count == 0 || n < count {
            let topic = TOPICS[n as usize % TOPICS.len()];
            n += 1;
            let request = SubmitProposalRequest {
                title: format!("demo #{n}: {topic}"),
                source: ProposalSource::Api as i32,
                agent: "opsloop-demo".into(),
                dedupe_key: None,
                steps: vec![
                    step("analyze", json!({"topic": topic, "sources": 3})),
                    step("draft", json!({"topic": topic, "tone": "plain"})),
                    step("notify", json!({"channel": "console"})),
                ],
                parallel: false,
                metadata_json: json!({"demo": true}).to_string(),
            };
            match conn.proposals().submit_proposal(request).await {
                Ok(response) => {
                    if let Some(p) = response.into_inner().proposal {
                        match p.status() {
                            ProposalStatus::Approved => {}
                            ProposalStatus::Pending => outln!(
                                "demo: proposal {} is pending (auto_approve does not cover the demo kinds): opsloop proposal approve {}",
                                p.id,
                                p.id
                            ),
                            _ => outln!(
                                "demo: proposal {} was rejected: {} {}",
                                p.id,
                                p.rejection_reason.unwrap_or_default(),
                                p.rejection_detail.unwrap_or_default()
                            ),
                        }
                    }
                }
                Err(status) => {
                    eprintln!("demo: stopping the submitter: {}", conn.error(status));
                    return;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(SUBMIT_EVERY) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    fn step(kind: &str, payload: Value) -> StepSpec {
        StepSpec {
            kind: kind.into(),
            payload_json: payload.to_string(),
            max_attempts: None,
        }
    }

    async fn print_finished(conn: &Connection, mission_id: &str) {
        let request = GetMissionRequest {
            id: mission_id.to_owned(),
        };
        match conn.missions().get_mission(request).await {
            Ok(response) => {
                let Some(m) = response.into_inner().mission else {
                    return;
                };
                let took = match (
                    m.created_at
                        .as_ref()
                        .and_then(opsloop_cli::output::to_datetime),
                    m.finished_at
                        .as_ref()
                        .and_then(opsloop_cli::output::to_datetime),
                ) {
                    (Some(start), Some(end)) => {
                        format!("{:.1}s", (end - start).num_milliseconds() as f64 / 1000.0)
                    }
                    _ => "-".into(),
                };
                outln!(
                    "mission {} {}: \"{}\" ({} steps, ${:.4}, {took})",
                    m.id,
                    opsloop_cli::mission::mission_status(&m),
                    m.title,
                    m.step_count,
                    m.cost_usd
                );
            }
            Err(status) => outln!("mission {mission_id} finished ({})", conn.error(status)),
        }
    }

    /// The demo worker's built-in handler: pretends to work for a moment and
    /// returns a plausible result with a small cost.
    struct DemoHandler;

    impl StepHandler for DemoHandler {
        async fn run(&self, step: &Step, interrupt: CancellationToken) -> StepOutcome {
            let payload: Value = serde_json::from_str(&step.payload_json).unwrap_or(Value::Null);
            let topic = payload
                .get("topic")
                .and_then(Value::as_str)
                .unwrap_or("the request")
                .to_owned();
            let spread = step.id.bytes().fold(0u64, |acc, b| {
                acc.wrapping_mul(31).wrapping_add(u64::from(b))
            }) % 600;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(200 + spread)) => {}
                () = interrupt.cancelled() => {
                    return StepOutcome::fail("interrupted", true);
                }
            }
            let (result, cost) = match step.kind.as_str() {
                "analyze" => (
                    json!({"topic": topic, "findings": 3, "sentiment": "positive"}),
                    0.002,
                ),
                "draft" => (
                    json!({"topic": topic, "words": 180, "text": format!("A short note on {topic}.")}),
                    0.004,
                ),
                "notify" => (json!({"channel": "console", "delivered": true}), 0.0),
                other => {
                    return StepOutcome::fail(
                        format!("the demo worker does not run steps of kind {other}"),
                        false,
                    );
                }
            };
            StepOutcome::Complete {
                result_json: result.to_string(),
                cost_usd: Some(cost),
            }
        }
    }
}
