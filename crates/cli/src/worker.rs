//! The worker protocol as a loop: claim a step of the worker's kinds, run it
//! through a [`StepHandler`] while renewing its lease at a third of its length,
//! then report the outcome with `CompleteStep` or `FailStep`. `opsloop worker
//! --exec` runs a shell command per step ([`ShellHandler`]); `opsloop dev
//! --demo` runs a built-in handler in process.

use std::future::Future;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use opsloop_core::domain::governance::{ResourceUsage as Usage, validate_usage};
use opsloop_core::proto::v1::{
    ClaimStepRequest, CompleteStepRequest, FailStepRequest, MissionStatus, RenewLeaseRequest,
    ResourceUsage, Step,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::client::Connection;

/// Most stderr characters kept in a failure's error text.
const ERROR_TAIL_CHARS: usize = 2000;

/// Most stdout characters kept when stdout is not JSON.
const STDOUT_TAIL_CHARS: usize = 64 * 1024;

/// Lease assumed when the server's answer does not say how long it is.
const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How often reporting an outcome is tried while the api is unreachable.
const REPORT_ATTEMPTS: u32 = 5;

/// What running a step came to.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// Succeeded: `CompleteStep` with this result and cost.
    Complete {
        /// The result as one JSON document.
        result_json: String,
        /// Cost reported by the step, in US dollars.
        cost_usd: Option<f64>,
    },
    /// Failed: `FailStep` with this error.
    Fail {
        /// What went wrong (for the step's `error` and the dead-letter record).
        error: String,
        /// True: requeue while attempts remain.
        retryable: bool,
        /// The JSON object the command printed before failing, if any: its
        /// `usage` and `cost_usd` are reported with the failure (a failed
        /// upstream call still counts against the limit and still costs).
        output_json: Option<String>,
    },
}

impl StepOutcome {
    /// A failure without output.
    pub fn fail(error: impl Into<String>, retryable: bool) -> Self {
        Self::Fail {
            error: error.into(),
            retryable,
            output_json: None,
        }
    }
}

/// Runs steps. `interrupt` is cancelled when the worker must abandon the step
/// at once (a second Ctrl-C, or the lease was lost); the handler then stops
/// and returns a retryable failure.
pub trait StepHandler: Send + Sync {
    /// Runs one claimed step to its outcome.
    fn run(
        &self,
        step: &Step,
        interrupt: CancellationToken,
    ) -> impl Future<Output = StepOutcome> + Send;
}

/// How a worker claims.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Stable worker name, recorded as the lease holder.
    pub worker_id: String,
    /// Step kinds this worker runs.
    pub kinds: Vec<String>,
    /// Lease length asked for, in seconds; 0: the server's `worker_policy` default.
    pub lease_seconds: u32,
    /// True: claim once, run at most one step, then return.
    pub once: bool,
    /// Longest wait between claims while there is nothing to claim.
    pub max_idle_backoff: Duration,
    /// Long poll: each claim waits up to this many seconds on the api for a
    /// step to arrive (woken the moment one does), so an idle worker sends
    /// one claim per wait and a new step starts at once. 0: poll with the
    /// idle backoff. Not used with `once`. An api that answers an empty
    /// claim sooner than asked (an older api) is polled with the backoff.
    pub wait_seconds: u32,
}

impl WorkerConfig {
    /// A worker of `kinds` with the defaults: server lease, loop forever,
    /// idle backoff up to 5 s.
    pub fn new(worker_id: impl Into<String>, kinds: Vec<String>) -> Self {
        Self {
            worker_id: worker_id.into(),
            kinds,
            lease_seconds: 0,
            once: false,
            max_idle_backoff: Duration::from_secs(5),
            wait_seconds: 20,
        }
    }
}

/// How a claimed step ended from the worker's side.
#[derive(Debug, Clone, PartialEq)]
pub enum Reported {
    /// `CompleteStep` accepted.
    Succeeded,
    /// `FailStep` accepted and the step was requeued for another attempt.
    Requeued,
    /// `FailStep` accepted and the step failed terminally.
    Failed,
    /// The lease was lost (expired and taken over, or refused): nothing was
    /// reported, the step's current holder will.
    LeaseLost(String),
    /// The outcome could not be reported (the api stayed unreachable); the
    /// lease will expire and the step be recovered.
    NotReported(String),
}

/// One step handled by the worker.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// The step as claimed.
    pub step: Step,
    /// What the handler decided.
    pub outcome: StepOutcome,
    /// What the api recorded.
    pub reported: Reported,
    /// The mission's status after the report (UNSPECIFIED when not reported).
    pub mission_status: MissionStatus,
    /// Time from claim to report.
    pub elapsed: Duration,
}

/// What the worker tells its caller while it runs.
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    /// A step was handled.
    Step(Box<StepReport>),
    /// Something worth a line (retrying after an error, emergency stop).
    Notice(String),
}

/// Counts of a worker's run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Steps claimed.
    pub claimed: u64,
    /// Steps completed.
    pub succeeded: u64,
    /// Steps failed terminally.
    pub failed: u64,
    /// Steps failed and requeued.
    pub requeued: u64,
    /// Steps whose lease was lost or whose outcome could not be reported.
    pub abandoned: u64,
}

/// A worker: claims steps from the api and runs them with its handler.
pub struct Worker<H> {
    connection: Connection,
    config: WorkerConfig,
    handler: H,
    on_event: Box<dyn Fn(WorkerEvent) + Send + Sync>,
}

impl<H: StepHandler> Worker<H> {
    /// A worker on `connection` (to the api) running steps with `handler`;
    /// `on_event` hears about every handled step and notice.
    pub fn new(
        connection: Connection,
        config: WorkerConfig,
        handler: H,
        on_event: impl Fn(WorkerEvent) + Send + Sync + 'static,
    ) -> Self {
        Self {
            connection,
            config,
            handler,
            on_event: Box::new(on_event),
        }
    }

    /// Claims and runs steps until `stop` is cancelled (a claim in flight and
    /// the current step are finished and reported first) or, with `once`,
    /// after one claim.
    /// Cancelling `abort` abandons the current step at once (reported as a
    /// retryable failure). Returns an error only for errors retrying cannot
    /// fix (bad token, unknown kinds, wrong endpoint).
    pub async fn run(
        &self,
        stop: CancellationToken,
        abort: CancellationToken,
    ) -> anyhow::Result<WorkerStats> {
        let mut stats = WorkerStats::default();
        let min_idle = Duration::from_millis(200);
        let mut idle = min_idle;
        let mut said_stopped = false;
        let mut missions = self.connection.missions();
        while !stop.is_cancelled() {
            let wait_seconds = if self.config.once {
                0
            } else {
                self.config.wait_seconds
            };
            let request = ClaimStepRequest {
                worker_id: self.config.worker_id.clone(),
                kinds: self.config.kinds.clone(),
                lease_seconds: self.config.lease_seconds,
                wait_seconds,
                max_steps: 1,
            };
            let sent = Instant::now();
            // A short claim in flight is not cut short by `stop`: the api may
            // already have leased a step to us, which we then run and report
            // rather than leave to the lease expiry. Only `abort` cuts it. A
            // long poll is cut by `stop` (it is almost always idle; a step
            // leased in that instant goes back to others when its lease
            // expires, which claims take at once).
            let long_poll = async {
                if wait_seconds == 0 {
                    std::future::pending::<()>().await;
                }
                stop.cancelled().await;
            };
            let claimed = tokio::select! {
                claimed = missions.claim_step(request) => claimed,
                () = abort.cancelled() => break,
                () = long_poll => break,
            };
            let response = match claimed {
                Ok(response) => response.into_inner(),
                Err(status) if is_transient(status.code()) => {
                    let outage = Outage::of(&status);
                    let (wait, next) = outage.backoff(idle, self.config.max_idle_backoff);
                    let wait = jittered(wait);
                    (self.on_event)(WorkerEvent::Notice(format!(
                        "{}, retrying in {:.1}s: {}",
                        outage.describe(),
                        wait.as_secs_f64(),
                        self.connection.error(status)
                    )));
                    idle = next;
                    sleep_or_stop(wait, &stop).await;
                    continue;
                }
                Err(status) => return Err(self.connection.error(status)),
            };
            match response.step {
                Some(step) if response.found => {
                    said_stopped = false;
                    idle = min_idle;
                    stats.claimed += 1;
                    let report = self.work(step, &abort).await?;
                    match report.reported {
                        Reported::Succeeded => stats.succeeded += 1,
                        Reported::Requeued => stats.requeued += 1,
                        Reported::Failed => stats.failed += 1,
                        Reported::LeaseLost(_) | Reported::NotReported(_) => stats.abandoned += 1,
                    }
                    (self.on_event)(WorkerEvent::Step(Box::new(report)));
                }
                _ if response.rate_limited.is_some() && !self.config.once => {
                    // A resource is at its limit: ask again when its token
                    // is due (jittered, so a fleet does not ask in step).
                    let retry = response
                        .rate_limited
                        .as_ref()
                        .map_or(100, |r| u64::from(r.retry_after_ms));
                    let wait = jittered(Duration::from_millis(retry.max(1)));
                    idle = min_idle;
                    sleep_or_stop(wait, &stop).await;
                    continue;
                }
                _ => {
                    if response.emergency_stop && !said_stopped {
                        said_stopped = true;
                        (self.on_event)(WorkerEvent::Notice(
                            "the emergency stop is engaged: nothing is handed out until it is released".into(),
                        ));
                    }
                    if self.config.once {
                        break;
                    }
                    // The api waited as asked: claim again at once.
                    let waited = Duration::from_secs(u64::from(wait_seconds));
                    if wait_seconds > 0
                        && !response.emergency_stop
                        && sent.elapsed() + Duration::from_millis(500) >= waited
                    {
                        idle = min_idle;
                        continue;
                    }
                    sleep_or_stop(jittered(idle), &stop).await;
                    idle = (idle * 2).min(self.config.max_idle_backoff);
                    continue;
                }
            }
            if self.config.once {
                break;
            }
        }
        Ok(stats)
    }

    /// The usage report in a step's JSON result (see [`usage_from_result`]);
    /// a report the api would refuse is dropped with a notice, so the step
    /// still completes.
    fn usage_of(&self, result_json: &str) -> Vec<ResourceUsage> {
        match usage_from_result(result_json) {
            Ok(usage) => usage,
            Err(reason) => {
                (self.on_event)(WorkerEvent::Notice(format!(
                    "the step's usage report was not sent: {reason}"
                )));
                Vec::new()
            }
        }
    }

    /// Runs one claimed step, renewing its lease, and reports its outcome.
    async fn work(&self, step: Step, abort: &CancellationToken) -> anyhow::Result<StepReport> {
        let started = Instant::now();
        let lease = lease_length(&step).unwrap_or(if self.config.lease_seconds > 0 {
            Duration::from_secs(u64::from(self.config.lease_seconds))
        } else {
            DEFAULT_LEASE
        });
        let renew_every = (lease / 3).max(Duration::from_secs(1));
        let interrupt = abort.child_token();
        let mut missions = self.connection.missions();
        let mut lost: Option<String> = None;
        let mut renewals =
            tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
        let run = self.handler.run(&step, interrupt.clone());
        tokio::pin!(run);
        let outcome = loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                _ = renewals.tick(), if lost.is_none() => {
                    let request = RenewLeaseRequest {
                        step_id: step.id.clone(),
                        worker_id: self.config.worker_id.clone(),
                        attempt: step.attempt,
                        lease_seconds: self.config.lease_seconds,
                    };
                    match missions.renew_lease(request).await {
                        Ok(_) => {}
                        Err(status) if is_transient(status.code()) => {
                            (self.on_event)(WorkerEvent::Notice(format!(
                                "renewing the lease of step {} failed, retrying: {}",
                                step.id,
                                self.connection.error(status)
                            )));
                        }
                        Err(status) => {
                            // Someone else holds the step now: stop working on it.
                            lost = Some(self.connection.error(status).to_string());
                            interrupt.cancel();
                        }
                    }
                }
            }
        };
        let report = |reported, mission_status| StepReport {
            step: step.clone(),
            outcome: outcome.clone(),
            reported,
            mission_status,
            elapsed: started.elapsed(),
        };
        if let Some(reason) = lost {
            return Ok(report(
                Reported::LeaseLost(reason),
                MissionStatus::Unspecified,
            ));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match &outcome {
                StepOutcome::Complete {
                    result_json,
                    cost_usd,
                } => missions
                    .complete_step(CompleteStepRequest {
                        step_id: step.id.clone(),
                        worker_id: self.config.worker_id.clone(),
                        attempt: step.attempt,
                        result_json: result_json.clone(),
                        cost_usd: *cost_usd,
                        usage: self.usage_of(result_json),
                    })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        (Reported::Succeeded, r.mission_status())
                    }),
                StepOutcome::Fail {
                    error,
                    retryable,
                    output_json,
                } => missions
                    .fail_step(FailStepRequest {
                        step_id: step.id.clone(),
                        worker_id: self.config.worker_id.clone(),
                        attempt: step.attempt,
                        error: error.clone(),
                        retryable: *retryable,
                        cost_usd: output_json.as_deref().and_then(cost_of_output),
                        usage: output_json
                            .as_deref()
                            .map(|json| self.usage_of(json))
                            .unwrap_or_default(),
                    })
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        let reported = if r.requeued {
                            Reported::Requeued
                        } else {
                            Reported::Failed
                        };
                        (reported, r.mission_status())
                    }),
            };
            match result {
                Ok((reported, mission_status)) => return Ok(report(reported, mission_status)),
                Err(status)
                    if status.code() == Code::FailedPrecondition
                        || status.code() == Code::NotFound =>
                {
                    let reason = self.connection.error(status).to_string();
                    return Ok(report(
                        Reported::LeaseLost(reason),
                        MissionStatus::Unspecified,
                    ));
                }
                Err(status) if is_transient(status.code()) && attempt < REPORT_ATTEMPTS => {
                    let wait = jittered(Duration::from_millis(500) * 2u32.pow(attempt));
                    (self.on_event)(WorkerEvent::Notice(format!(
                        "reporting step {} failed, retrying in {:.1}s: {}",
                        step.id,
                        wait.as_secs_f64(),
                        self.connection.error(status)
                    )));
                    tokio::time::sleep(wait).await;
                }
                Err(status) if is_transient(status.code()) => {
                    let reason = self.connection.error(status).to_string();
                    return Ok(report(
                        Reported::NotReported(reason),
                        MissionStatus::Unspecified,
                    ));
                }
                Err(status) => return Err(self.connection.error(status)),
            }
        }
    }
}

/// Why a claim failed, as far as the worker can tell; the two outages need
/// different answers. Neither ends the worker: both heal on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// The call never reached the api (refused, reset, DNS, TLS): the api
    /// is down or restarting, which takes seconds — retry from 1 s,
    /// doubling up to the idle backoff (5 s).
    ApiUnreachable,
    /// The api answered UNAVAILABLE because its database is down: the api
    /// is fine, asking it again soon only costs it a failed pool acquire —
    /// retry from 2 s, doubling up to 15 s.
    DatabaseUnavailable,
    /// Any other transient answer (deadline, overload): as unreachable.
    Other,
}

impl Outage {
    pub fn of(status: &tonic::Status) -> Self {
        if crate::client::database_unavailable(status) {
            Self::DatabaseUnavailable
        } else if status.code() == Code::Unavailable {
            Self::ApiUnreachable
        } else {
            Self::Other
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::ApiUnreachable => "cannot connect to the api",
            Self::DatabaseUnavailable => "the api is up but its database is unavailable",
            Self::Other => "claim failed",
        }
    }

    /// The wait before the next claim and the next backoff base, from the
    /// current one (`idle`).
    pub fn backoff(self, idle: Duration, max_idle: Duration) -> (Duration, Duration) {
        let (floor, cap) = match self {
            Self::DatabaseUnavailable => (Duration::from_secs(2), Duration::from_secs(15)),
            Self::ApiUnreachable | Self::Other => (Duration::from_secs(1), max_idle),
        };
        let wait = idle.max(floor).min(cap.max(floor));
        (wait, (wait * 2).min(cap.max(floor)))
    }
}

/// Errors that waiting and retrying can fix.
fn is_transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Unknown
            | Code::Internal
    )
}

/// The lease the server granted, from its expiry.
fn lease_length(step: &Step) -> Option<Duration> {
    let expires = crate::output::to_datetime(step.lease_expires_at.as_ref()?)?;
    let left = expires
        .signed_duration_since(chrono::Utc::now())
        .to_std()
        .ok()?;
    (left > Duration::ZERO).then_some(left)
}

/// `base` plus up to a quarter more, so many workers do not poll in step.
fn jittered(base: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let quarter = base.as_millis() / 4;
    let extra = if quarter == 0 {
        0
    } else {
        u128::from(nanos) % quarter
    };
    base + Duration::from_millis(u64::try_from(extra).unwrap_or(0))
}

async fn sleep_or_stop(wait: Duration, stop: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = stop.cancelled() => {}
    }
}

/// A default worker id: `<hostname>-<pid>`.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Runs `sh -c COMMAND` per step: the payload JSON on stdin, `OPSLOOP_STEP_ID`,
/// `OPSLOOP_STEP_KIND`, `OPSLOOP_MISSION_ID`, `OPSLOOP_STEP_ATTEMPT` (and
/// `OPSLOOP_STEP_SEQ`, `OPSLOOP_WORKER_ID`) in its environment; the outcome
/// from its exit status, stdout and stderr ([`outcome_from_exit`]).
pub struct ShellHandler {
    command: String,
    worker_id: String,
}

impl ShellHandler {
    /// A handler running `command` with `sh -c`.
    pub fn new(command: impl Into<String>, worker_id: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            worker_id: worker_id.into(),
        }
    }
}

impl StepHandler for ShellHandler {
    async fn run(&self, step: &Step, interrupt: CancellationToken) -> StepOutcome {
        let mut command = tokio::process::Command::new("sh");
        command
            .arg("-c")
            .arg(&self.command)
            .env("OPSLOOP_STEP_ID", &step.id)
            .env("OPSLOOP_STEP_KIND", &step.kind)
            .env("OPSLOOP_MISSION_ID", &step.mission_id)
            .env("OPSLOOP_STEP_ATTEMPT", step.attempt.to_string())
            .env("OPSLOOP_STEP_SEQ", step.seq.to_string())
            .env("OPSLOOP_WORKER_ID", &self.worker_id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Its own process group: a Ctrl-C at the terminal reaches the worker
        // (which finishes the step) and not the command.
        #[cfg(unix)]
        command.process_group(0);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                return StepOutcome::fail(
                    format!("cannot start `sh -c {}`: {error}", self.command),
                    false,
                );
            }
        };
        let payload = if step.payload_json.trim().is_empty() {
            "{}".to_owned()
        } else {
            step.payload_json.clone()
        };
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let io = async move {
            let feed = async move {
                if let Some(mut stdin) = stdin {
                    // A command that does not read its stdin closes the pipe: not an error.
                    let _ = stdin.write_all(payload.as_bytes()).await;
                }
            };
            let (_, out, err) = tokio::join!(feed, read_all(stdout), read_all(stderr));
            (out, err)
        };
        let finished = tokio::select! {
            (status, (out, err)) = async { tokio::join!(child.wait(), io) } => Some((status, out, err)),
            () = interrupt.cancelled() => None,
        };
        match finished {
            Some((Ok(status), out, err)) => {
                #[cfg(unix)]
                let signal = std::os::unix::process::ExitStatusExt::signal(&status);
                #[cfg(not(unix))]
                let signal = None;
                outcome_from_exit(status.code(), signal, &out, &err)
            }
            Some((Err(error), _, _)) => {
                StepOutcome::fail(format!("waiting for the command failed: {error}"), true)
            }
            None => {
                kill_group(&mut child).await;
                StepOutcome::fail(
                    "interrupted: the worker abandoned the step (stopped, or lost its lease)",
                    true,
                )
            }
        }
    }
}

async fn read_all<R: tokio::io::AsyncRead + Unpin>(reader: Option<R>) -> Vec<u8> {
    let mut buffer = Vec::new();
    if let Some(mut reader) = reader {
        let _ = reader.read_to_end(&mut buffer).await;
    }
    buffer
}

/// Kills the command and everything it started (its process group).
async fn kill_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// The outcome of a finished command. Exit 0: stdout parsed as the JSON result
/// (empty → `{}`, not JSON → `{"stdout": "…"}`), a top-level `cost_usd`
/// number is the step's cost. Exit 75 (EX_TEMPFAIL): a retryable failure.
/// Any other exit, or death by a signal: a terminal failure. A failure's error
/// is the exit status and the tail of stderr; a JSON object on its stdout is
/// kept, for the `usage` and `cost_usd` the failure reports.
pub fn outcome_from_exit(
    code: Option<i32>,
    signal: Option<i32>,
    stdout: &[u8],
    stderr: &[u8],
) -> StepOutcome {
    if code == Some(0) {
        let text = String::from_utf8_lossy(stdout);
        let text = text.trim();
        if text.is_empty() {
            return StepOutcome::Complete {
                result_json: "{}".into(),
                cost_usd: None,
            };
        }
        return match serde_json::from_str::<Value>(text) {
            Ok(value) => StepOutcome::Complete {
                cost_usd: value.get("cost_usd").and_then(Value::as_f64),
                result_json: value.to_string(),
            },
            Err(_) => StepOutcome::Complete {
                result_json: serde_json::json!({ "stdout": tail(text, STDOUT_TAIL_CHARS) })
                    .to_string(),
                cost_usd: None,
            },
        };
    }
    let status = match (code, signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "exited abnormally".to_owned(),
    };
    let stderr = String::from_utf8_lossy(stderr);
    let stderr = stderr.trim();
    let error = if stderr.is_empty() {
        format!("{status} (no stderr)")
    } else {
        format!("{status}: {}", tail(stderr, ERROR_TAIL_CHARS))
    };
    // A failed command may still say what it spent: a JSON object on stdout.
    let output_json = serde_json::from_slice::<Value>(stdout)
        .ok()
        .filter(Value::is_object)
        .map(|v| v.to_string());
    StepOutcome::Fail {
        error,
        retryable: code == Some(75),
        output_json,
    }
}

/// The `cost_usd` number of a command's JSON output.
pub fn cost_of_output(output_json: &str) -> Option<f64> {
    serde_json::from_str::<Value>(output_json)
        .ok()?
        .get("cost_usd")
        .and_then(Value::as_f64)
}

/// The per-resource usage a command reported in its JSON result: a
/// top-level `usage` list of objects (`resource`, `calls`,
/// `latency_p50_ms`, `latency_max_ms`, `status_2xx`, `status_4xx`,
/// `status_429`, `status_5xx`, `units`). No `usage` key: an empty report.
/// A report that is malformed, or that the api would refuse (negative or
/// absurd numbers), is an error naming the field.
pub fn usage_from_result(result_json: &str) -> Result<Vec<ResourceUsage>, String> {
    let Ok(value) = serde_json::from_str::<Value>(result_json) else {
        return Ok(Vec::new());
    };
    let Some(list) = value.get("usage") else {
        return Ok(Vec::new());
    };
    let usage: Vec<Usage> =
        serde_json::from_value(list.clone()).map_err(|e| format!("usage: {e}"))?;
    validate_usage("usage", &usage).map_err(|e| format!("{}: {}", e.field, e.reason))?;
    Ok(usage
        .into_iter()
        .map(|u| ResourceUsage {
            resource: u.resource,
            calls: u.calls,
            latency_p50_ms: u.latency_p50_ms,
            latency_max_ms: u.latency_max_ms,
            status_2xx: u.status_2xx,
            status_4xx: u.status_4xx,
            status_429: u.status_429,
            status_5xx: u.status_5xx,
            unreachable: u.unreachable,
            units: u.units,
        })
        .collect())
}

/// The last `max` characters of `text`, with `…` in front when cut.
fn tail(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_owned();
    }
    let mut out = String::from("…");
    out.extend(text.chars().skip(count - max));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(json: &str, cost: Option<f64>) -> StepOutcome {
        StepOutcome::Complete {
            result_json: json.into(),
            cost_usd: cost,
        }
    }

    #[test]
    fn usage_is_read_from_the_result() {
        assert_eq!(usage_from_result("{}"), Ok(vec![]));
        assert_eq!(usage_from_result("not json"), Ok(vec![]));
        let usage = usage_from_result(
            r#"{"usage": [{"resource": "twitterapi", "calls": 3, "latency_p50_ms": 120,
                "latency_max_ms": 300, "status_2xx": 2, "status_429": 1}]}"#,
        )
        .expect("valid");
        assert_eq!(usage.len(), 1);
        assert_eq!((usage[0].calls, usage[0].status_429), (3, 1));
        assert_eq!(usage[0].latency_p50_ms, 120.0);
        let bad = usage_from_result(r#"{"usage": [{"resource": "x", "calls": -1}]}"#);
        assert_eq!(
            bad,
            Err("usage[0].calls: must be between 0 and 1000000 for one step".into())
        );
        assert!(usage_from_result(r#"{"usage": {"calls": 1}}"#).is_err());
    }

    #[test]
    fn exit_zero_maps_stdout_to_the_result() {
        let cases: &[(&str, StepOutcome)] = &[
            ("", complete("{}", None)),
            ("  \n", complete("{}", None)),
            ("{\"ok\": true}\n", complete("{\"ok\":true}", None)),
            (
                "{\"n\": 1, \"cost_usd\": 0.25}",
                complete("{\"cost_usd\":0.25,\"n\":1}", Some(0.25)),
            ),
            (
                "{\"cost_usd\": \"0.25\"}",
                complete("{\"cost_usd\":\"0.25\"}", None),
            ),
            ("[1, 2]", complete("[1,2]", None)),
            ("42", complete("42", None)),
            (
                "hello world\n",
                complete("{\"stdout\":\"hello world\"}", None),
            ),
            ("{broken", complete("{\"stdout\":\"{broken\"}", None)),
        ];
        for (stdout, expected) in cases {
            assert_eq!(
                &outcome_from_exit(Some(0), None, stdout.as_bytes(), b"ignored"),
                expected,
                "stdout {stdout:?}"
            );
        }
    }

    #[test]
    fn nonzero_exit_maps_to_a_failure() {
        // (exit code, signal, stderr, expected error, retryable)
        type Case = (Option<i32>, Option<i32>, &'static str, &'static str, bool);
        let cases: &[Case] = &[
            (
                Some(75),
                None,
                "try later\n",
                "exit code 75: try later",
                true,
            ),
            (Some(1), None, "boom", "exit code 1: boom", false),
            (Some(2), None, "", "exit code 2 (no stderr)", false),
            (Some(74), None, "io", "exit code 74: io", false),
            (None, Some(9), "", "killed by signal 9 (no stderr)", false),
        ];
        for (code, signal, stderr, error, retryable) in cases {
            assert_eq!(
                outcome_from_exit(*code, *signal, b"not json", stderr.as_bytes()),
                StepOutcome::fail(*error, *retryable),
                "exit {code:?} signal {signal:?}"
            );
        }
    }

    #[test]
    fn a_failed_command_keeps_its_json_output_for_usage_and_cost() {
        let stdout = br#"{"error": "upstream 503", "cost_usd": 0.0003,
            "usage": [{"resource": "twitterapi", "calls": 2, "status_5xx": 1, "unreachable": 1}]}"#;
        let outcome = outcome_from_exit(Some(75), None, stdout, b"upstream down");
        let StepOutcome::Fail {
            error,
            retryable,
            output_json: Some(output),
        } = outcome
        else {
            panic!("expected a failure with output, got {outcome:?}");
        };
        assert_eq!(
            (error.as_str(), retryable),
            ("exit code 75: upstream down", true)
        );
        assert_eq!(cost_of_output(&output), Some(0.0003));
        let usage = usage_from_result(&output).expect("usage");
        assert_eq!(
            (usage[0].calls, usage[0].status_5xx, usage[0].unreachable),
            (2, 1, 1)
        );
        // Not a JSON object: nothing kept.
        for stdout in [&b"plain text"[..], b"[1, 2]", b"", b"3"] {
            let outcome = outcome_from_exit(Some(1), None, stdout, b"");
            assert!(
                matches!(
                    outcome,
                    StepOutcome::Fail {
                        output_json: None,
                        ..
                    }
                ),
                "{outcome:?}"
            );
        }
        assert_eq!(cost_of_output(r#"{"cost_usd": "a lot"}"#), None);
    }

    #[test]
    fn long_stderr_keeps_its_tail() {
        let stderr = format!("{}END", "x".repeat(5000));
        let StepOutcome::Fail { error, .. } =
            outcome_from_exit(Some(1), None, b"", stderr.as_bytes())
        else {
            panic!("expected a failure");
        };
        assert!(error.ends_with("END"));
        assert!(error.starts_with("exit code 1: …"));
        assert_eq!(
            error.chars().count(),
            "exit code 1: …".chars().count() + ERROR_TAIL_CHARS
        );
    }

    #[test]
    fn outages_are_told_apart_and_backed_off_differently() {
        let refused = tonic::Status::unavailable("tcp connect error: Connection refused");
        assert_eq!(Outage::of(&refused), Outage::ApiUnreachable);
        // What the api sends when its database is down (the mapping in core).
        let database: tonic::Status = opsloop_core::workflow::WorkflowError::Db(
            sea_orm::DbErr::Conn(sea_orm::RuntimeErr::Internal("pool timed out".into())),
        )
        .into();
        assert_eq!(Outage::of(&database), Outage::DatabaseUnavailable);
        let line = crate::client::status_line(
            crate::client::Daemon::Api,
            "http://127.0.0.1:50051",
            &database,
        );
        assert!(
            line.contains("is up but its database is unavailable"),
            "{line}"
        );
        assert!(!line.contains("is it running"), "{line}");
        let line = crate::client::status_line(
            crate::client::Daemon::Api,
            "http://127.0.0.1:50051",
            &refused,
        );
        assert!(line.contains("is it running"), "{line}");

        let max = Duration::from_secs(5);
        let mut idle = Duration::from_millis(200);
        let mut waits = Vec::new();
        for _ in 0..6 {
            let (wait, next) = Outage::ApiUnreachable.backoff(idle, max);
            waits.push(wait.as_secs());
            idle = next;
        }
        assert_eq!(waits, [1, 2, 4, 5, 5, 5]);
        let mut idle = Duration::from_millis(200);
        let mut waits = Vec::new();
        for _ in 0..6 {
            let (wait, next) = Outage::DatabaseUnavailable.backoff(idle, max);
            waits.push(wait.as_secs());
            idle = next;
        }
        assert_eq!(waits, [2, 4, 8, 15, 15, 15]);
    }

    fn step() -> Step {
        Step {
            id: "step-1".into(),
            mission_id: "mission-1".into(),
            seq: 0,
            kind: "analyze".into(),
            payload_json: "{\"text\":\"hi\"}".into(),
            attempt: 2,
            ..Step::default()
        }
    }

    #[tokio::test]
    async fn shell_handler_feeds_payload_and_environment() {
        let handler = ShellHandler::new(
            r#"payload=$(cat); printf '{"payload": %s, "env": "%s/%s/%s/%s", "cost_usd": 0.5}' "$payload" "$OPSLOOP_STEP_ID" "$OPSLOOP_STEP_KIND" "$OPSLOOP_MISSION_ID" "$OPSLOOP_STEP_ATTEMPT""#,
            "w1",
        );
        let outcome = handler.run(&step(), CancellationToken::new()).await;
        let StepOutcome::Complete {
            result_json,
            cost_usd,
        } = outcome
        else {
            panic!("expected success, got {outcome:?}");
        };
        let result: Value = serde_json::from_str(&result_json).unwrap();
        assert_eq!(result["payload"], serde_json::json!({"text": "hi"}));
        assert_eq!(result["env"], "step-1/analyze/mission-1/2");
        assert_eq!(cost_usd, Some(0.5));
    }

    #[tokio::test]
    async fn shell_handler_maps_exit_75_to_retryable() {
        let handler = ShellHandler::new("echo 'rate limited' >&2; exit 75", "w1");
        assert_eq!(
            handler.run(&step(), CancellationToken::new()).await,
            StepOutcome::fail("exit code 75: rate limited", true)
        );
    }

    #[tokio::test]
    async fn shell_handler_is_interrupted() {
        let handler = ShellHandler::new("sleep 30", "w1");
        let interrupt = CancellationToken::new();
        let trigger = interrupt.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            trigger.cancel();
        });
        let started = Instant::now();
        let outcome = handler.run(&step(), interrupt).await;
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            matches!(
                outcome,
                StepOutcome::Fail {
                    retryable: true,
                    ..
                }
            ),
            "{outcome:?}"
        );
    }
}
