//! Issue 18's benchmarks: what rate governance costs the claim path and how
//! close the grants stay to the configured rate, against the real api
//! binary on a fresh PostgreSQL database.
//!
//! - claim cost: W workers claim (claim only, no completion: the claim
//!   statement is what governance changes) over a deep queue of one kind
//!   for D seconds, once for a kind no resource governs (the plain claim)
//!   and once for a kind whose resource's rate is far above saturation
//!   (every claim runs the bucket CTEs and takes a token, none is refused).
//!   Target: at most 10 % fewer claims/s.
//! - grant accuracy: 64 workers claim a kind whose resource allows R/s,
//!   each backing off as the api's `rate_limited.retry_after_ms` says; the
//!   grants per second over the run against R (one burst of R on top).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use opsloop_core::proto::v1 as pb;
use pb::mission_service_client::MissionServiceClient;
use pb::policy_service_client::PolicyServiceClient;
use pb::proposal_service_client::ProposalServiceClient;
use serde_json::{Value, json};

use crate::env::Env;
use crate::load::{LatencySummary, closed_loop};
use crate::report::Row;

type Outcome = anyhow::Result<(Vec<Row>, Value)>;

#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct RateLimitArgs {
    /// Claim cost: concurrent claiming workers.
    #[arg(long)]
    pub workers: Option<u32>,
    /// Claim cost: seconds per phase.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Grant accuracy: the resource's rate (calls/s).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Grant accuracy: workers.
    #[arg(long)]
    pub fleet: Option<u32>,
    /// Grant accuracy: seconds.
    #[arg(long)]
    pub accuracy_seconds: Option<u64>,
}

/// Kinds the seeded `auto_approve` allows: one per phase, so each phase
/// claims from its own queue.
const PLAIN: &str = "analyze";
const FAST: &str = "draft";
const SLOW: &str = "summarize";

async fn set_policy(grpc: SocketAddr, key: &str, value: Value) -> anyhow::Result<()> {
    PolicyServiceClient::new(Env::channel(grpc).await?)
        .set_policy(pb::SetPolicyRequest {
            key: key.into(),
            value_json: value.to_string(),
            actor: "opsloop-bench".into(),
            reason: "rate-limit benchmark".into(),
            expected_version: None,
        })
        .await
        .map_err(|s| anyhow::anyhow!("set {key}: {s}"))?;
    Ok(())
}

/// `count` queued steps of `kind`: parallel proposals of 50, 20 per call.
async fn queue(grpc: SocketAddr, kind: &str, count: u64) -> anyhow::Result<()> {
    let mut proposals = ProposalServiceClient::new(Env::channel(grpc).await?);
    let per = 50u64;
    let mut left = count.div_ceil(per);
    let mut seq = 0u64;
    while left > 0 {
        let n = left.min(20);
        left -= n;
        let items = (0..n)
            .map(|_| {
                seq += 1;
                pb::SubmitProposalRequest {
                    title: format!("rate-limit bench {seq}"),
                    source: pb::ProposalSource::Api as i32,
                    agent: "opsloop-bench".into(),
                    dedupe_key: None,
                    steps: (0..per)
                        .map(|_| pb::StepSpec {
                            kind: kind.into(),
                            payload_json: "{}".into(),
                            max_attempts: None,
                        })
                        .collect(),
                    parallel: true,
                    metadata_json: String::new(),
                }
            })
            .collect();
        proposals
            .submit_proposals(pb::SubmitProposalsRequest { proposals: items })
            .await
            .map_err(|s| anyhow::anyhow!("queue {kind}: {s}"))?;
    }
    Ok(())
}

/// Claims of `kind` by `workers` for `duration`: every call must hand out a
/// step (the queue is deeper than the run).
async fn claims(
    grpc: SocketAddr,
    kind: &'static str,
    workers: u32,
    duration: Duration,
) -> anyhow::Result<LatencySummary> {
    let mut clients = Vec::new();
    for _ in 0..workers {
        clients.push(MissionServiceClient::new(Env::channel(grpc).await?));
    }
    let out = closed_loop(clients, duration, move |client, seq| {
        let mut client = client.clone();
        async move {
            let answer = client
                .claim_step(pb::ClaimStepRequest {
                    worker_id: format!("bench-{}", seq >> 32),
                    kinds: vec![kind.into()],
                    lease_seconds: 600,
                    wait_seconds: 0,
                    max_steps: 1,
                })
                .await
                .map_err(|s| s.to_string())?
                .into_inner();
            if answer.found {
                Ok(())
            } else if let Some(limit) = answer.rate_limited {
                Err(format!("rate limited on {}", limit.resource))
            } else {
                Err("queue ran dry".into())
            }
        }
    })
    .await;
    Ok(out.summary())
}

/// `fleet` workers claiming `SLOW` for `duration`, each backing off as told.
/// Returns (grants, held back, seconds).
async fn grants(
    grpc: SocketAddr,
    fleet: u32,
    duration: Duration,
) -> anyhow::Result<(u64, u64, f64)> {
    let granted = Arc::new(AtomicU64::new(0));
    let held = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..fleet {
        let mut client = MissionServiceClient::new(Env::channel(grpc).await?);
        let (granted, held) = (granted.clone(), held.clone());
        tasks.spawn(async move {
            while started.elapsed() < duration {
                let answer = client
                    .claim_step(pb::ClaimStepRequest {
                        worker_id: format!("fleet-{w}"),
                        kinds: vec![SLOW.into()],
                        lease_seconds: 600,
                        wait_seconds: 0,
                        max_steps: 1,
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("claim: {s}"))?
                    .into_inner();
                if answer.found {
                    granted.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let retry = answer
                    .rate_limited
                    .map_or(100, |l| u64::from(l.retry_after_ms));
                held.fetch_add(1, Ordering::Relaxed);
                // Back off as told, spread over up to twice the wait.
                let spread = u64::from(w % 16);
                tokio::time::sleep(Duration::from_millis(retry * (16 + spread) / 16)).await;
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("grant worker")??;
    }
    Ok((
        granted.load(Ordering::Relaxed),
        held.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    ))
}

pub(crate) async fn rate_limit(env: &Env, args: RateLimitArgs) -> Outcome {
    let workers = args.workers.unwrap_or(16);
    let duration = Duration::from_secs(args.duration.unwrap_or(if env.smoke { 1 } else { 10 }));
    let rate = args.rate.unwrap_or(if env.smoke { 50.0 } else { 100.0 });
    let fleet = args.fleet.unwrap_or(if env.smoke { 8 } else { 64 });
    let accuracy =
        Duration::from_secs(
            args.accuracy_seconds
                .unwrap_or(if env.smoke { 2 } else { 10 }),
        );
    // Deeper than a run can drain (the api on 2 cores claims < 3000/s).
    let depth = if env.smoke { 2_000 } else { 40_000 };
    eprintln!(
        "rate-limit: {workers} workers x {duration:?} plain vs governed; {fleet} workers x {accuracy:?} at {rate}/s"
    );
    let db = env.database().await;
    let api = match env.start_api(&db.url, (workers + fleet + 4).max(10)).await {
        Ok(api) => api,
        Err(error) => {
            db.cleanup().await;
            return Err(error);
        }
    };
    let outcome = async {
        let grpc = api.grpc.context("api gRPC address")?;
        set_policy(
            grpc,
            "resources",
            json!({
                "bench_fast": {"kinds": [FAST], "initial_rate": 1_000_000, "min_rate": 1_000_000,
                               "max_rate": 1_000_000, "violation_rate": 10_000_000},
                "bench_slow": {"kinds": [SLOW], "initial_rate": rate, "min_rate": rate,
                               "max_rate": rate, "violation_rate": rate * 2.0},
            }),
        )
        .await?;
        let slow_depth = (rate * accuracy.as_secs_f64() * 2.0) as u64 + 200;
        queue(grpc, PLAIN, depth).await?;
        queue(grpc, FAST, depth).await?;
        queue(grpc, SLOW, slow_depth).await?;
        let plain = claims(grpc, PLAIN, workers, duration).await?;
        let governed = claims(grpc, FAST, workers, duration).await?;
        let accuracy = grants(grpc, fleet, accuracy).await?;
        Ok::<_, anyhow::Error>((plain, governed, accuracy))
    }
    .await;
    let stopped = api.stop().await;
    db.cleanup().await;
    stopped?;
    let (plain, governed, (granted, held, seconds)) = outcome?;
    let ratio = if plain.throughput_per_s > 0.0 {
        governed.throughput_per_s / plain.throughput_per_s
    } else {
        0.0
    };
    let per_s = granted as f64 / seconds.max(0.001);
    // One burst (1 s of the rate) may come on top of rate x time.
    let ceiling = rate + rate / seconds.max(1.0);
    let rows = vec![
        Row::new(
            "rate-limit",
            &format!("claims/s with a rate limit above saturation vs none, {workers} workers"),
            "1/s",
        )
        .target(">= 90 % of none")
        .opsloop(governed.throughput_per_s)
        .baseline(Some(plain.throughput_per_s))
        .met(Some(ratio >= 0.9 && governed.errors == 0))
        .note(format!(
            "{:.1} % of the plain claim; claim p99 {:.2} ms (plain {:.2} ms); errors {} / {}",
            ratio * 100.0,
            governed.p99_ms,
            plain.p99_ms,
            governed.errors,
            plain.errors
        )),
        Row::new(
            "rate-limit",
            &format!("grants/s vs configured {rate}/s, {fleet} workers"),
            "1/s",
        )
        .target(&format!("{:.0}..={ceiling:.1}", rate * 0.9))
        .opsloop(per_s)
        .met(Some(per_s >= rate * 0.9 && per_s <= ceiling))
        .note(format!(
            "{granted} grants, {held} claims held back by the limit in {seconds:.2} s"
        )),
    ];
    let detail = json!({
        "plain": plain, "governed": governed, "ratio": ratio,
        "accuracy": {"rate": rate, "fleet": fleet, "granted": granted, "held_back": held,
                     "seconds": seconds, "grants_per_s": per_s},
    });
    Ok((rows, detail))
}
