//! Long-poll claims, batch claims and batch submits through the real api:
//! a waiting `ClaimStep` woken by a submit on another api replica (two
//! `ApiApp`s with their own pools on one PostgreSQL database: the wake can
//! only travel by `LISTEN/NOTIFY`), an empty long poll ending after its
//! wait, the claim statements an idle fleet of long-polling workers costs,
//! `max_steps`, and `SubmitProposals` with a bad item.

mod helpers;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use helpers::{Backend, TestApp, claim, complete, spawn, submit};
use opsloop_api::ApiApp;
use opsloop_core::audit::AuditLog;
use opsloop_core::bus::memory::MemoryBus;
use opsloop_core::config::{ConfigSources, load};
use opsloop_core::daemon::Infra;
use opsloop_core::proto::v1 as pb;
use opsloop_core::secrets::SecretStore;
use opsloop_core::workflow::claim_statements;
use sea_orm::ConnectionTrait;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

/// A second api process on `first`'s database: its own pool, its own
/// listener, its own policy cache and notifier.
struct Replica {
    channel: Channel,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Replica {
    async fn start(first: &TestApp) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = load(&ConfigSources::env_only([
            ("OPSLOOP__API__GRPC_ADDR", "127.0.0.1:0".to_owned()),
            ("OPSLOOP__API__HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("OPSLOOP__API__OUTBOX_RELAY", "false".to_owned()),
            ("OPSLOOP__DATABASE__URL", first.db.url.clone()),
            (
                "OPSLOOP__AUDIT__LOG_PATH",
                dir.path().join("audit.jsonl").display().to_string(),
            ),
        ]))
        .expect("config");
        let db = opsloop_core::store::connect(&first.db.url, &Default::default())
            .await
            .expect("second pool");
        let secrets = SecretStore::with_sources(None, dir.path(), Vec::new());
        let auth =
            opsloop_core::auth::Auth::from_secrets(&secrets, Some(db.clone())).expect("auth");
        let shutdown = CancellationToken::new();
        let infra = Infra {
            audit: Arc::new(AuditLog::new(&config.settings.audit)),
            config,
            db,
            bus: Arc::new(MemoryBus::new()),
            secrets,
            auth,
            shutdown: shutdown.clone(),
        };
        let app = ApiApp::build(infra).await.expect("build replica");
        let grpc = app.grpc_addr().expect("grpc addr");
        let task = tokio::spawn(app.run_until_stopped());
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect replica");
        Self {
            channel,
            shutdown,
            task,
            _dir: dir,
        }
    }

    fn missions(&self) -> pb::mission_service_client::MissionServiceClient<Channel> {
        pb::mission_service_client::MissionServiceClient::new(self.channel.clone())
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
    }
}

fn long_claim(worker: &str, kinds: &[&str], wait_seconds: u32) -> pb::ClaimStepRequest {
    pb::ClaimStepRequest {
        wait_seconds,
        ..claim(worker, kinds)
    }
}

/// Waits (polling, with a deadline) until `listeners` backends of the test
/// database have run `LISTEN`: the replicas' notification listeners are up.
async fn listeners_up(app: &TestApp, listeners: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = app
            .db
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT count(*) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            ))
            .await
            .expect("pg_stat_activity")
            .expect("row");
        let n: i64 = row.try_get("", "n").expect("n");
        if n >= listeners {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {listeners} listeners up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (polling, with a deadline) until this process ran `at_least`
/// claim statements in all.
async fn claims_reach(at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while claim_statements() < at_least {
        assert!(Instant::now() < deadline, "claims never reached {at_least}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_long_poll_is_woken_by_a_submit_on_another_replica() {
    let app = spawn(Backend::Postgres).await;
    let replica = Replica::start(&app).await;
    listeners_up(&app, 2).await;

    let before = claim_statements();
    let mut worker = replica.missions();
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let response = worker
            .claim_step(long_claim("w-replica", &["echo"], 25))
            .await
            .expect("long poll")
            .into_inner();
        (response, started.elapsed())
    });
    // The claim ran once and found nothing: it is waiting now (or about
    // to; its stamp was taken before the claim, so nothing is missed).
    claims_reach(before + 1).await;

    let submitted = app
        .proposals()
        .submit_proposal(submit(&["echo"], None))
        .await
        .expect("submit on the first replica")
        .into_inner();
    let mission_id = submitted
        .proposal
        .and_then(|p| p.mission_id)
        .expect("approved");
    let submitted_at = Instant::now();

    // The deadline is far below the 25 s wait: only a wake-up meets it.
    let (response, waited) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("woken before the deadline")
        .expect("joined");
    assert!(response.found, "woken and claimed");
    let step = response.step.expect("step");
    assert_eq!(step.mission_id, mission_id);
    assert_eq!(step.lease_holder.as_deref(), Some("w-replica"));
    assert_eq!(response.steps.len(), 1);
    assert!(
        waited < Duration::from_secs(10) && submitted_at.elapsed() < Duration::from_secs(5),
        "woke {waited:?} after asking"
    );
    // One claim before the wait, one after the wake.
    assert_eq!(claim_statements() - before, 2);

    replica.stop().await;
    app.stop().await;
}

async fn empty_long_poll(backend: Backend) {
    let app = spawn(backend).await;
    if backend == Backend::Postgres {
        // A listener (re)starting wakes every waiter once (news may have
        // been missed): let it start first.
        listeners_up(&app, 1).await;
    }
    let before = claim_statements();
    let started = Instant::now();
    let response = app
        .missions()
        .claim_step(long_claim("w-idle", &["echo"], 1))
        .await
        .expect("long poll")
        .into_inner();
    let waited = started.elapsed();
    assert!(!response.found && response.step.is_none() && response.steps.is_empty());
    assert!(!response.emergency_stop);
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_secs(5),
        "returned after {waited:?}, asked to wait 1 s"
    );
    assert_eq!(claim_statements() - before, 1, "one claim per wait period");

    // wait_seconds is capped: 3600 asks for 30 s, not an hour (the call is
    // cut by a submit well before either).
    let mut worker = app.missions();
    let waiting = tokio::spawn(async move {
        worker
            .claim_step(long_claim("w-idle", &["echo"], 3600))
            .await
            .expect("long poll")
            .into_inner()
    });
    claims_reach(before + 2).await;
    app.proposals()
        .submit_proposal(submit(&["echo"], None))
        .await
        .expect("submit");
    let response = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("woken")
        .expect("joined");
    assert!(response.found);
    app.stop().await;
}

#[tokio::test]
async fn a_long_poll_with_nothing_arriving_returns_empty_after_its_wait_on_postgres() {
    empty_long_poll(Backend::Postgres).await;
}

#[tokio::test]
async fn a_long_poll_with_nothing_arriving_returns_empty_after_its_wait_on_sqlite() {
    empty_long_poll(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_long_poll_on_sqlite_is_woken_by_a_submit_completion_and_retry() {
    let app = spawn(Backend::Sqlite).await;
    let mut worker = app.missions();
    let before = claim_statements();
    let waiting = tokio::spawn(async move {
        worker
            .claim_step(long_claim("w1", &["summarize"], 25))
            .await
            .expect("long poll")
            .into_inner()
    });
    claims_reach(before + 1).await;
    // A sequential mission: `summarize` becomes claimable only when `echo`
    // completes, and that completion must wake the waiting claim.
    app.proposals()
        .submit_proposal(submit(&["echo", "summarize"], None))
        .await
        .expect("submit");
    let first = app
        .missions()
        .claim_step(claim("w2", &["echo"]))
        .await
        .expect("claim echo")
        .into_inner()
        .step
        .expect("echo step");
    app.missions()
        .complete_step(complete(&first, "w2"))
        .await
        .expect("complete echo");
    let response = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("woken by the completion")
        .expect("joined");
    let step = response.step.expect("summarize step");
    assert_eq!(step.kind, "summarize");
    app.stop().await;
}

#[tokio::test]
async fn idle_long_polling_workers_cost_one_claim_per_wait_period() {
    const WORKERS: u64 = 16;
    const PERIODS: u64 = 2;
    let app = spawn(Backend::Postgres).await;
    listeners_up(&app, 1).await;
    let before = claim_statements();
    let started = Instant::now();
    let mut fleet = Vec::new();
    for w in 0..WORKERS {
        let mut client = app.missions();
        fleet.push(tokio::spawn(async move {
            for _ in 0..PERIODS {
                let response = client
                    .claim_step(long_claim(&format!("idle-{w}"), &["echo", "notify"], 1))
                    .await
                    .expect("long poll")
                    .into_inner();
                assert!(!response.found);
            }
        }));
    }
    for worker in fleet {
        worker.await.expect("worker");
    }
    let elapsed = started.elapsed();
    let statements = claim_statements() - before;
    assert!(
        elapsed >= Duration::from_secs(PERIODS) - Duration::from_millis(100),
        "each poll waited: {elapsed:?}"
    );
    assert_eq!(
        statements,
        WORKERS * PERIODS,
        "{WORKERS} idle workers x {PERIODS} wait periods"
    );
    app.stop().await;
}

async fn max_steps(backend: Backend) {
    let app = spawn(backend).await;
    let mut request = submit(&["echo", "echo", "echo", "echo", "echo"], None);
    request.parallel = true;
    app.proposals()
        .submit_proposal(request)
        .await
        .expect("submit");
    let mut batch = claim("batcher", &["echo"]);
    batch.max_steps = 3;
    let first = app
        .missions()
        .claim_step(batch.clone())
        .await
        .expect("batch claim")
        .into_inner();
    assert!(first.found);
    assert_eq!(first.steps.len(), 3);
    assert_eq!(
        first.step.as_ref(),
        first.steps.first(),
        "old field = first"
    );
    batch.max_steps = 100; // capped at 32; 2 left anyway
    let second = app
        .missions()
        .claim_step(batch)
        .await
        .expect("batch claim")
        .into_inner();
    assert_eq!(second.steps.len(), 2);
    let all: Vec<pb::Step> = first.steps.into_iter().chain(second.steps).collect();
    let ids: BTreeSet<&str> = all.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), 5, "distinct steps");
    for step in &all {
        assert_eq!(step.status, pb::StepStatus::Running as i32);
        assert_eq!(step.attempt, 1);
        assert_eq!(step.lease_holder.as_deref(), Some("batcher"));
        assert!(step.lease_expires_at.is_some());
    }
    // Each step is fenced on its own: a wrong attempt or holder is refused,
    // the right one accepted.
    let mut stale = complete(&all[0], "batcher");
    stale.attempt = 2;
    let refused = app
        .missions()
        .complete_step(stale)
        .await
        .expect_err("wrong attempt");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let refused = app
        .missions()
        .complete_step(complete(&all[1], "somebody-else"))
        .await
        .expect_err("wrong holder");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    for step in &all {
        app.missions()
            .complete_step(complete(step, "batcher"))
            .await
            .expect("complete");
    }
    let nothing = app
        .missions()
        .claim_step(claim("batcher", &["echo"]))
        .await
        .expect("claim")
        .into_inner();
    assert!(!nothing.found && nothing.steps.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn max_steps_hands_out_distinct_steps_each_fenced_on_postgres() {
    max_steps(Backend::Postgres).await;
}

#[tokio::test]
async fn max_steps_hands_out_distinct_steps_each_fenced_on_sqlite() {
    max_steps(Backend::Sqlite).await;
}

async fn batch_submit(backend: Backend) {
    let app = spawn(backend).await;
    // A daily cap of 2 on `summarize`: the batch's items are judged in
    // order, each as if alone, so the third capped item is refused.
    app.policy()
        .set_policy(pb::SetPolicyRequest {
            key: "step_gates".into(),
            value_json: r#"{"timezone": "UTC", "kinds": {"summarize": {"daily_cap": 2}}}"#.into(),
            actor: "op".into(),
            reason: "cap".into(),
            expected_version: None,
        })
        .await
        .expect("set step_gates");
    let mut bad = submit(&["echo"], None);
    bad.title = String::new();
    let items = vec![
        submit(&["echo", "notify"], Some("batch-a")),
        submit(&["summarize"], None),
        bad,
        submit(&["summarize"], None),
        submit(&["summarize"], None),
        submit(&["echo"], Some("batch-a")),
    ];
    let results = app
        .proposals()
        .submit_proposals(pb::SubmitProposalsRequest { proposals: items })
        .await
        .expect("batch")
        .into_inner()
        .results;
    assert_eq!(results.len(), 6);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.index as usize, i);
    }
    let approved = |i: usize| {
        let p = results[i].proposal.as_ref().expect("judged");
        assert_eq!(p.status, pb::ProposalStatus::Approved as i32, "item {i}");
        assert!(p.mission_id.is_some());
        assert!(p.steps.is_empty(), "steps left out of the response");
        p.id.clone()
    };
    let first = approved(0);
    approved(1);
    approved(3);
    assert_eq!(results[2].error_code, "INVALID_ARGUMENT");
    assert!(results[2].proposal.is_none());
    assert!(
        results[2].error.as_deref().unwrap_or("").contains("title"),
        "{:?}",
        results[2].error
    );
    let capped = results[4].proposal.as_ref().expect("judged");
    assert_eq!(capped.status, pb::ProposalStatus::Rejected as i32);
    assert_eq!(capped.rejection_reason.as_deref(), Some("daily_cap"));
    assert!(results[5].deduplicated);
    assert_eq!(
        results[5].proposal.as_ref().map(|p| p.id.clone()),
        Some(first)
    );
    // What was stored: the five judged items' four new proposals.
    let stored = app
        .proposals()
        .list_proposals(pb::ListProposalsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .proposals;
    assert_eq!(stored.len(), 4);
    // Their steps are claimable like any others.
    let mut batch = claim("w", &["echo", "summarize"]);
    batch.max_steps = 32;
    let claimed = app
        .missions()
        .claim_step(batch)
        .await
        .expect("claim")
        .into_inner();
    assert_eq!(claimed.steps.len(), 3, "echo of a, and two summarize");

    let too_many = app
        .proposals()
        .submit_proposals(pb::SubmitProposalsRequest {
            proposals: vec![submit(&["echo"], None); 1001],
        })
        .await
        .expect_err("1001 items");
    assert_eq!(too_many.code(), Code::InvalidArgument);
    let empty = app
        .proposals()
        .submit_proposals(pb::SubmitProposalsRequest { proposals: vec![] })
        .await
        .expect_err("no items");
    assert_eq!(empty.code(), Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test]
async fn submit_proposals_with_one_bad_item_rejects_only_that_item_on_postgres() {
    batch_submit(Backend::Postgres).await;
}

#[tokio::test]
async fn submit_proposals_with_one_bad_item_rejects_only_that_item_on_sqlite() {
    batch_submit(Backend::Sqlite).await;
}
