//! Issue 21 items 3 and 4: long-poll claims and batch submits, against the
//! real api binary on a fresh PostgreSQL database.
//!
//! - submit → claim: one worker long-polls (`wait_seconds` 20) for `analyze`;
//!   the bench submits a one-step proposal and measures from just before the
//!   `SubmitProposal` call to the worker holding the claimed step. Between
//!   samples the worker completes its step and is back in its long poll (a
//!   short pause paces the samples; it is not a measurement).
//! - idle claim statements: 16 workers long-poll for a kind nobody submits,
//!   for a few wait periods; the api's `opsloop_step_claim_statements_total`
//!   (scraped from `/metrics`) before and after, divided by the periods.
//! - batch vs single submit: N clients at saturation with `SubmitProposal`,
//!   then with `SubmitProposals` of 100 (same 3-step proposal); proposals/s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use opsloop_core::proto::v1 as pb;
use pb::mission_service_client::MissionServiceClient;
use pb::proposal_service_client::ProposalServiceClient;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use crate::env::Env;
use crate::load::{LatencySummary, closed_loop, histogram};
use crate::report::Row;

type Outcome = anyhow::Result<(Vec<Row>, Value)>;

/// The counter the api keeps of its claim statements.
const CLAIM_COUNTER: &str = "opsloop_step_claim_statements_total";

#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct LongPollArgs {
    /// submit → claim samples.
    #[arg(long)]
    pub samples: Option<u64>,
    /// Idle phase: long-polling workers.
    #[arg(long)]
    pub workers: Option<u64>,
    /// Idle phase: each long poll's wait_seconds.
    #[arg(long)]
    pub wait: Option<u32>,
    /// Idle phase: wait periods measured.
    #[arg(long)]
    pub periods: Option<u64>,
    /// Batch vs single: concurrent clients.
    #[arg(long)]
    pub clients: Option<u32>,
    /// Batch vs single: seconds per phase.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Batch vs single: proposals per SubmitProposals call.
    #[arg(long)]
    pub batch: Option<u32>,
}

fn proposal(seq: u64, kinds: &[&str]) -> pb::SubmitProposalRequest {
    pb::SubmitProposalRequest {
        title: format!("bench proposal {seq}"),
        source: pb::ProposalSource::Api as i32,
        agent: "opsloop-bench".into(),
        dedupe_key: None,
        steps: kinds
            .iter()
            .map(|kind| pb::StepSpec {
                kind: (*kind).into(),
                payload_json: r#"{"text":"bench"}"#.into(),
                max_attempts: None,
            })
            .collect(),
        parallel: false,
        metadata_json: String::new(),
    }
}

const BATCH_KINDS: [&str; 3] = ["analyze", "draft", "notify"];

/// The value of `name` in the api's `/metrics` (0 when not yet counted).
async fn scrape(http: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let mut stream = tokio::net::TcpStream::connect(http).await?;
    // HTTP/1.0: a plain body up to the close, never chunked.
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {http}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut body))
        .await
        .context("scraping /metrics")??;
    if body.split_whitespace().nth(1) != Some("200") {
        bail!(
            "/metrics answered {}",
            body.lines().next().unwrap_or_default()
        );
    }
    Ok(body
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

pub(crate) async fn long_poll(env: &Env, args: LongPollArgs) -> Outcome {
    let samples = args.samples.unwrap_or(if env.smoke { 20 } else { 300 });
    let workers = args.workers.unwrap_or(16);
    let wait = args.wait.unwrap_or(if env.smoke { 1 } else { 5 });
    let periods = args.periods.unwrap_or(if env.smoke { 1 } else { 3 });
    let clients = args.clients.unwrap_or(if env.smoke { 4 } else { 16 });
    let duration = Duration::from_secs(args.duration.unwrap_or(if env.smoke { 1 } else { 10 }));
    let batch = args.batch.unwrap_or(100).clamp(1, 1000);
    eprintln!(
        "long-poll: {samples} samples; {workers} idle workers x {periods} waits of {wait}s; \
         {clients} clients x {duration:?}, batches of {batch}"
    );
    let db = env.database().await;
    let api = match env
        .start_api(&db.url, (clients + workers as u32 + 4).max(10))
        .await
    {
        Ok(api) => api,
        Err(error) => {
            db.cleanup().await;
            return Err(error);
        }
    };
    let outcome = async {
        let grpc = api.grpc.context("api gRPC address")?;
        let latency = submit_to_claim(grpc, samples).await?;
        let idle = idle_claims(grpc, api.http, workers, wait, periods).await?;
        let rates = batch_vs_single(grpc, clients, duration, batch).await?;
        Ok::<_, anyhow::Error>((latency, idle, rates))
    }
    .await;
    let stopped = api.stop().await;
    db.cleanup().await;
    stopped?;
    let (latency, idle, (single, batched)) = outcome?;

    let per_period = idle / periods as f64;
    let ratio = if single.throughput_per_s > 0.0 {
        batched.throughput_per_s / single.throughput_per_s
    } else {
        0.0
    };
    let rows = vec![
        Row::new(
            "long-poll",
            "submit -> claim p99, idle long-polling worker",
            "ms",
        )
        .target("< 10 ms")
        .opsloop(latency.p99_ms)
        .met(Some(latency.p99_ms < 10.0))
        .note(format!(
            "{} samples; p50 {:.2} ms, max {:.2} ms",
            latency.ok, latency.p50_ms, latency.max_ms
        )),
        Row::new(
            "long-poll",
            &format!("idle claim statements per {wait}s wait, {workers} workers"),
            "1",
        )
        .target(&format!("<= {workers}"))
        .opsloop(per_period)
        .met(Some(per_period <= workers as f64))
        .note(format!(
            "{idle} statements over {periods} wait periods ({CLAIM_COUNTER})"
        )),
        Row::new(
            "batch-submit",
            &format!("proposals/s, {batch} per call vs single, {clients} clients"),
            "1/s",
        )
        .target(">= 3x single")
        .opsloop(batched.throughput_per_s)
        .baseline(Some(single.throughput_per_s))
        .met(Some(ratio >= 3.0))
        .note(format!(
            "call p99 {:.1} ms (single {:.1} ms)",
            batched.p99_ms, single.p99_ms
        )),
    ];
    let detail = json!({
        "submit_to_claim": latency,
        "idle": {"workers": workers, "wait_seconds": wait, "periods": periods, "claim_statements": idle},
        "single_submit": single,
        "batch_submit": batched,
        "batch": batch,
    });
    Ok((rows, detail))
}

/// submit → claim with one idle long-polling worker.
async fn submit_to_claim(grpc: SocketAddr, samples: u64) -> anyhow::Result<LatencySummary> {
    let mut proposals = ProposalServiceClient::new(Env::channel(grpc).await?);
    let mut missions = MissionServiceClient::new(Env::channel(grpc).await?);
    let (claimed_tx, mut claimed_rx) = tokio::sync::mpsc::channel::<Instant>(1);
    let worker = tokio::spawn(async move {
        loop {
            let response = missions
                .claim_step(pb::ClaimStepRequest {
                    worker_id: "bench-longpoll".into(),
                    kinds: vec!["analyze".into()],
                    lease_seconds: 60,
                    wait_seconds: 20,
                    max_steps: 1,
                })
                .await
                .map_err(|s| anyhow::anyhow!("claim: {s}"))?
                .into_inner();
            let Some(step) = response.step else { continue };
            let at = Instant::now();
            missions
                .complete_step(pb::CompleteStepRequest {
                    step_id: step.id.clone(),
                    worker_id: "bench-longpoll".into(),
                    attempt: step.attempt,
                    result_json: "{}".into(),
                    cost_usd: None,
                    usage: Vec::new(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("complete: {s}"))?;
            if claimed_tx.send(at).await.is_err() {
                return Ok::<(), anyhow::Error>(());
            }
        }
    });
    let mut hist = histogram();
    let started = Instant::now();
    let mut errors = 0;
    for seq in 0..samples {
        // Pacing: the worker is back in its long poll before the next submit.
        tokio::time::sleep(Duration::from_millis(25)).await;
        let t0 = Instant::now();
        proposals
            .submit_proposal(proposal(seq, &["analyze"]))
            .await
            .context("submit")?;
        match tokio::time::timeout(Duration::from_secs(25), claimed_rx.recv()).await {
            Ok(Some(at)) => {
                let micros = u64::try_from(at.duration_since(t0).as_micros()).unwrap_or(u64::MAX);
                let _ = hist.record(micros.max(1));
            }
            _ => errors += 1,
        }
    }
    worker.abort();
    if errors > 0 {
        bail!("{errors} of {samples} submits were never claimed within 25 s");
    }
    Ok(LatencySummary::of(&hist, samples, 0, started.elapsed()))
}

/// Claim statements of `workers` idle long-polling workers over `periods`
/// waits of `wait` seconds.
async fn idle_claims(
    grpc: SocketAddr,
    http: SocketAddr,
    workers: u64,
    wait: u32,
    periods: u64,
) -> anyhow::Result<f64> {
    let before = scrape(http, CLAIM_COUNTER).await?;
    let mut fleet = tokio::task::JoinSet::new();
    for w in 0..workers {
        let mut client = MissionServiceClient::new(Env::channel(grpc).await?);
        fleet.spawn(async move {
            for _ in 0..periods {
                let response = client
                    .claim_step(pb::ClaimStepRequest {
                        worker_id: format!("bench-idle-{w}"),
                        kinds: vec!["bench_nothing".into()],
                        lease_seconds: 0,
                        wait_seconds: wait,
                        max_steps: 1,
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("idle claim: {s}"))?;
                if response.into_inner().found {
                    bail!("an idle worker was handed a step");
                }
            }
            Ok(())
        });
    }
    while let Some(done) = fleet.join_next().await {
        done??;
    }
    Ok(scrape(http, CLAIM_COUNTER).await? - before)
}

async fn batch_vs_single(
    grpc: SocketAddr,
    clients: u32,
    duration: Duration,
    batch: u32,
) -> anyhow::Result<(LatencySummary, LatencySummary)> {
    let mut stubs = Vec::new();
    for _ in 0..clients {
        stubs.push(ProposalServiceClient::new(Env::channel(grpc).await?));
    }
    let single = closed_loop(
        stubs.clone(),
        duration,
        |c: &mut ProposalServiceClient<Channel>, seq| {
            let mut c = c.clone();
            async move {
                let p = c
                    .submit_proposal(proposal(seq, &BATCH_KINDS))
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner()
                    .proposal
                    .ok_or("no proposal")?;
                if p.status != pb::ProposalStatus::Approved as i32 {
                    return Err(format!("not approved: {}", p.status));
                }
                Ok(())
            }
        },
    )
    .await;
    if single.ok == 0 {
        bail!("no single submit succeeded: {:?}", single.first_error);
    }
    let batched = closed_loop(
        stubs,
        duration,
        move |c: &mut ProposalServiceClient<Channel>, seq| {
            let mut c = c.clone();
            async move {
                let items = (0..u64::from(batch))
                    .map(|i| proposal((seq << 12) + i, &BATCH_KINDS))
                    .collect();
                let results = c
                    .submit_proposals(pb::SubmitProposalsRequest { proposals: items })
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner()
                    .results;
                let approved = results
                    .iter()
                    .filter(|r| {
                        r.proposal
                            .as_ref()
                            .is_some_and(|p| p.status == pb::ProposalStatus::Approved as i32)
                    })
                    .count();
                if approved != batch as usize {
                    return Err(format!("{approved} of {batch} approved"));
                }
                Ok(())
            }
        },
    )
    .await;
    if batched.ok == 0 {
        bail!("no batch submit succeeded: {:?}", batched.first_error);
    }
    let single = single.summary();
    let mut batched = batched.summary();
    // Proposals per second, not calls.
    batched.throughput_per_s *= f64::from(batch);
    Ok((single, batched))
}
