//! `opsloop worker` as a process against an in-test `MissionService`: the
//! command's exit status and stdout become `CompleteStep` / `FailStep`, the
//! lease is renewed while the command runs, the token travels as bearer
//! metadata, and SIGTERM stops the worker only after the current step.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use opsloop_core::proto::v1::mission_service_server::{MissionService, MissionServiceServer};
use opsloop_core::proto::v1::{
    CancelMissionRequest, CancelMissionResponse, ClaimStepRequest, ClaimStepResponse,
    CompleteStepRequest, CompleteStepResponse, FailStepRequest, FailStepResponse,
    GetMissionRequest, GetMissionResponse, ListMissionsRequest, ListMissionsResponse,
    MissionStatus, RenewLeaseRequest, RenewLeaseResponse, Step, StepStatus,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// What the fake api saw.
#[derive(Default)]
struct Seen {
    claims: Vec<ClaimStepRequest>,
    authorization: Vec<Option<String>>,
    renewals: Vec<RenewLeaseRequest>,
    completes: Vec<CompleteStepRequest>,
    fails: Vec<FailStepRequest>,
}

struct FakeMissions {
    queue: Mutex<VecDeque<Step>>,
    lease: Duration,
    /// True: every RenewLease is refused, as for a worker whose lease was taken over.
    refuse_renewals: bool,
    seen: Arc<Mutex<Seen>>,
}

fn expiry(lease: Duration) -> prost_types::Timestamp {
    let at = SystemTime::now() + lease;
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970");
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).expect("seconds fit"),
        nanos: i32::try_from(since.subsec_nanos()).expect("nanos fit"),
    }
}

#[tonic::async_trait]
impl MissionService for FakeMissions {
    async fn get_mission(
        &self,
        _: Request<GetMissionRequest>,
    ) -> Result<Response<GetMissionResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn list_missions(
        &self,
        _: Request<ListMissionsRequest>,
    ) -> Result<Response<ListMissionsResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn cancel_mission(
        &self,
        _: Request<CancelMissionRequest>,
    ) -> Result<Response<CancelMissionResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn list_dead_letters(
        &self,
        _: Request<opsloop_core::proto::v1::ListDeadLettersRequest>,
    ) -> Result<Response<opsloop_core::proto::v1::ListDeadLettersResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn get_dead_letter(
        &self,
        _: Request<opsloop_core::proto::v1::GetDeadLetterRequest>,
    ) -> Result<Response<opsloop_core::proto::v1::GetDeadLetterResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn retry_dead_letter(
        &self,
        _: Request<opsloop_core::proto::v1::RetryDeadLetterRequest>,
    ) -> Result<Response<opsloop_core::proto::v1::RetryDeadLetterResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
    async fn claim_step(
        &self,
        request: Request<ClaimStepRequest>,
    ) -> Result<Response<ClaimStepResponse>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let request = request.into_inner();
        let next = self.queue.lock().unwrap().pop_front();
        let step = next.map(|mut step| {
            step.status = StepStatus::Running as i32;
            step.attempt += 1;
            step.lease_holder = Some(request.worker_id.clone());
            step.lease_expires_at = Some(expiry(self.lease));
            step
        });
        let mut seen = self.seen.lock().unwrap();
        seen.claims.push(request);
        seen.authorization.push(authorization);
        Ok(Response::new(ClaimStepResponse {
            found: step.is_some(),
            step,
            emergency_stop: false,
            ..Default::default()
        }))
    }
    async fn renew_lease(
        &self,
        request: Request<RenewLeaseRequest>,
    ) -> Result<Response<RenewLeaseResponse>, Status> {
        self.seen
            .lock()
            .unwrap()
            .renewals
            .push(request.into_inner());
        if self.refuse_renewals {
            return Err(Status::failed_precondition(
                "step is held by attempt 2 of worker w-other",
            ));
        }
        Ok(Response::new(RenewLeaseResponse {
            lease_expires_at: Some(expiry(self.lease)),
        }))
    }
    async fn complete_step(
        &self,
        request: Request<CompleteStepRequest>,
    ) -> Result<Response<CompleteStepResponse>, Status> {
        self.seen
            .lock()
            .unwrap()
            .completes
            .push(request.into_inner());
        Ok(Response::new(CompleteStepResponse {
            step: None,
            mission_status: MissionStatus::Succeeded as i32,
        }))
    }
    async fn fail_step(
        &self,
        request: Request<FailStepRequest>,
    ) -> Result<Response<FailStepResponse>, Status> {
        let request = request.into_inner();
        let requeued = request.retryable;
        self.seen.lock().unwrap().fails.push(request);
        Ok(Response::new(FailStepResponse {
            step: None,
            requeued,
            mission_status: if requeued {
                MissionStatus::Running
            } else {
                MissionStatus::Failed
            } as i32,
        }))
    }
}

fn step(n: u32) -> Step {
    Step {
        id: format!("step-{n}"),
        mission_id: format!("mission-{n}"),
        seq: 0,
        kind: "analyze".into(),
        payload_json: format!("{{\"n\": {n}}}"),
        attempt: 0,
        max_attempts: 3,
        ..Step::default()
    }
}

/// Serves a fake MissionService handing out `steps`, with leases of `lease`.
async fn fake_api(steps: Vec<Step>, lease: Duration) -> (SocketAddr, Arc<Mutex<Seen>>) {
    serve(steps, lease, false).await
}

async fn serve(
    steps: Vec<Step>,
    lease: Duration,
    refuse_renewals: bool,
) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let fake = FakeMissions {
        queue: Mutex::new(steps.into()),
        lease,
        refuse_renewals,
        seen: seen.clone(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MissionServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, seen)
}

fn worker(addr: SocketAddr, exec: &str, extra: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_opsloop"));
    command
        .args([
            "--endpoint",
            &format!("http://{addr}"),
            "worker",
            "--kinds",
            "analyze,draft",
        ])
        .args(["--worker-id", "w-test", "--exec", exec])
        .args(extra)
        .env_remove("OPSLOOP_TOKEN")
        .env_remove("OPSLOOP_TOKEN_FILE")
        .kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_completes_with_the_json_result_and_cost() {
    let (addr, seen) = fake_api(vec![step(1)], Duration::from_secs(30)).await;
    let exec = r#"payload=$(cat); printf '{"got": %s, "kind": "%s", "attempt": %s, "cost_usd": 0.12}' "$payload" "$OPSLOOP_STEP_KIND" "$OPSLOOP_STEP_ATTEMPT""#;
    let out = worker(addr, exec, &["--once", "--token", "secret-t"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("step step-1 analyze attempt 1 succeeded")
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.claims.len(), 1);
    assert_eq!(seen.claims[0].kinds, vec!["analyze", "draft"]);
    assert_eq!(seen.claims[0].worker_id, "w-test");
    assert_eq!(seen.authorization[0].as_deref(), Some("Bearer secret-t"));
    assert_eq!(seen.completes.len(), 1);
    let complete = &seen.completes[0];
    assert_eq!(
        (
            complete.step_id.as_str(),
            complete.worker_id.as_str(),
            complete.attempt
        ),
        ("step-1", "w-test", 1)
    );
    let result: serde_json::Value = serde_json::from_str(&complete.result_json).unwrap();
    assert_eq!(
        result,
        serde_json::json!({"got": {"n": 1}, "kind": "analyze", "attempt": 1, "cost_usd": 0.12})
    );
    assert_eq!(complete.cost_usd, Some(0.12));
    assert!(seen.fails.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_become_failures() {
    for (exec, error, retryable) in [
        (
            "echo 'rate limited, later' >&2; exit 75",
            "exit code 75: rate limited, later",
            true,
        ),
        (
            "echo 'bad input' >&2; exit 3",
            "exit code 3: bad input",
            false,
        ),
        ("echo 'not json'; exit 1", "exit code 1 (no stderr)", false),
    ] {
        let (addr, seen) = fake_api(vec![step(2)], Duration::from_secs(30)).await;
        let out = worker(addr, exec, &["--once"]).output().await.unwrap();
        assert!(
            out.status.success(),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen = seen.lock().unwrap();
        assert!(seen.completes.is_empty());
        assert_eq!(seen.fails.len(), 1, "{exec}");
        assert_eq!(seen.fails[0].error, error);
        assert_eq!(seen.fails[0].retryable, retryable, "{exec}");
        assert_eq!(seen.fails[0].attempt, 1);
        assert_eq!(seen.authorization[0], None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_command_reports_the_usage_and_cost_it_printed() {
    let (addr, seen) = fake_api(vec![step(4)], Duration::from_secs(30)).await;
    // The upstream answered 503 once and refused the connection once; the
    // command gives up (retryable) but says what it spent.
    let exec = r#"cat >/dev/null; echo '{"cost_usd": 0.0003, "usage": [{"resource": "twitterapi", "calls": 2, "latency_p50_ms": 900, "latency_max_ms": 30000, "status_5xx": 1, "unreachable": 1}]}'; echo 'upstream unavailable' >&2; exit 75"#;
    let out = worker(addr, exec, &["--once"]).output().await.unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fail = {
        let seen = seen.lock().unwrap();
        assert!(seen.completes.is_empty());
        assert_eq!(seen.fails.len(), 1);
        seen.fails[0].clone()
    };
    assert_eq!(
        (fail.error.as_str(), fail.retryable),
        ("exit code 75: upstream unavailable", true)
    );
    assert_eq!(fail.cost_usd, Some(0.0003));
    assert_eq!(fail.usage.len(), 1, "{:?}", fail.usage);
    let usage = &fail.usage[0];
    assert_eq!(
        (
            usage.resource.as_str(),
            usage.calls,
            usage.status_5xx,
            usage.unreachable,
            usage.latency_max_ms
        ),
        ("twitterapi", 2, 1, 1, 30000.0)
    );
    // A failure that printed no JSON reports no usage (as before).
    let (addr, seen) = fake_api(vec![step(5)], Duration::from_secs(30)).await;
    let out = worker(addr, "echo oops >&2; exit 1", &["--once"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.fails.len(), 1);
    assert!(seen.fails[0].usage.is_empty());
    assert_eq!(seen.fails[0].cost_usd, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_stdout_is_kept_as_text() {
    let (addr, seen) = fake_api(vec![step(3)], Duration::from_secs(30)).await;
    let out = worker(addr, "echo hello; echo world", &["--once"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.completes[0].result_json,
        r#"{"stdout":"hello\nworld"}"#
    );
    assert_eq!(seen.completes[0].cost_usd, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_renewed_while_the_command_runs() {
    // A 3 s lease is renewed every second; the command runs 2.5 s.
    let (addr, seen) = fake_api(vec![step(4)], Duration::from_secs(3)).await;
    let out = worker(
        addr,
        "sleep 2.5; echo '{}'",
        &["--once", "--lease-seconds", "3"],
    )
    .output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = seen.lock().unwrap();
    assert!(
        seen.renewals.len() >= 2,
        "renewals: {}",
        seen.renewals.len()
    );
    for renewal in &seen.renewals {
        assert_eq!(
            (
                renewal.step_id.as_str(),
                renewal.worker_id.as_str(),
                renewal.attempt
            ),
            ("step-4", "w-test", 1)
        );
        assert_eq!(renewal.lease_seconds, 3);
    }
    assert_eq!(seen.claims[0].lease_seconds, 3);
    assert_eq!(seen.completes.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_with_nothing_to_claim_exits_cleanly() {
    let (addr, seen) = fake_api(Vec::new(), Duration::from_secs(30)).await;
    let out = worker(addr, "cat", &["--once"]).output().await.unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to claim for analyze,draft"));
    assert_eq!(seen.lock().unwrap().claims.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_come_from_a_file_or_the_environment() {
    let (addr, seen) = fake_api(Vec::new(), Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent_token");
    std::fs::write(&file, "from-file\n").unwrap();
    let out = worker(
        addr,
        "cat",
        &["--once", "--token-file", file.to_str().unwrap()],
    )
    .output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = worker(addr, "cat", &["--once"])
        .env("OPSLOOP_TOKEN", "from-env")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = worker(
        addr,
        "cat",
        &[
            "--once",
            "--token",
            "from-flag",
            "--token-file",
            file.to_str().unwrap(),
        ],
    )
    .env("OPSLOOP_TOKEN", "from-env")
    .output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = seen.lock().unwrap();
    let sent: Vec<Option<&str>> = seen.authorization.iter().map(Option::as_deref).collect();
    assert_eq!(
        sent,
        vec![
            Some("Bearer from-file"),
            Some("Bearer from-env"),
            Some("Bearer from-flag")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_current_step_then_stops() {
    let (addr, seen) = fake_api(vec![step(5), step(6)], Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    let command = format!(
        "touch '{}'; sleep 1; echo '{{\"done\": true}}'",
        started.display()
    );
    let mut child = worker(addr, &command, &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the worker runs the first step (not merely until the fake
    // api saw the claim: a stop while the claim's answer is still on its way
    // ends an idle long poll, by design), then ask the worker to stop.
    opsloop_core::testing::eventually("the first step running", Duration::from_secs(30), || {
        let running = started.exists();
        async move { opsloop_core::testing::holds(running, || "not started yet".to_owned()) }
    })
    .await;
    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the worker stops after its step")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let seen = seen.lock().unwrap();
    // The step in progress was completed; the second was never claimed.
    assert_eq!(seen.completes.len(), 1);
    assert_eq!(seen.completes[0].step_id, "step-5");
    assert_eq!(seen.claims.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_stops_the_command_and_reports_nothing() {
    let (addr, seen) = serve(vec![step(7)], Duration::from_secs(3), true).await;
    let started = std::time::Instant::now();
    let out = worker(
        addr,
        "sleep 30; echo '{}'",
        &["--once", "--lease-seconds", "3"],
    )
    .output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the command was not stopped"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("step step-7 analyze attempt 1 lease-lost"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAILED_PRECONDITION: step is held by attempt 2 of worker w-other"),
        "{stdout}"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.renewals.len(), 1);
    // The step belongs to someone else now: neither completed nor failed by us.
    assert!(seen.completes.is_empty() && seen.fails.is_empty());
}
