//! The scenarios of issue 8, each returning its table rows and a JSON detail.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use opsloop_core::proto::v1 as pb;
use opsloop_core::store::testing::TestDb;
use pb::mission_service_client::MissionServiceClient;
use pb::proposal_service_client::ProposalServiceClient;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::daemon::{Daemon, Launch, free_addr};
use crate::env::Env;
use crate::load::{self, LatencySummary, closed_loop, open_loop};
use crate::pgbench::{self, Length};
use crate::report::Row;

type Outcome = anyhow::Result<(Vec<Row>, Value)>;

const STEP_KINDS: [&str; 3] = ["analyze", "draft", "notify"];
const SUBMIT_SQL: &str = include_str!("../sql/submit.sql");
const CLAIM_COMPLETE_SQL: &str = include_str!("../sql/claim_complete.sql");
const SEED_STEPS_SQL: &str = include_str!("../sql/seed_steps.sql");

/// Runs `body`, then stops the daemon and drops the database whatever happened.
async fn with_api<F, Fut>(env: &Env, pool: u32, body: F) -> Outcome
where
    F: FnOnce(Daemon, TestDb) -> Fut,
    Fut: std::future::Future<Output = (Daemon, TestDb, Outcome)>,
{
    let db = env.database().await;
    let api = match env.start_api(&db.url, pool).await {
        Ok(api) => api,
        Err(error) => {
            db.cleanup().await;
            return Err(error);
        }
    };
    let (api, db, outcome) = body(api, db).await;
    let stopped = api.stop().await;
    db.cleanup().await;
    stopped?;
    outcome
}

// ---------------------------------------------------------------- submit

#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct SubmitArgs {
    /// Concurrent gRPC clients (one connection each), also pgbench's -c.
    #[arg(long)]
    pub clients: Option<u32>,
    /// Seconds per phase (saturation, half load, baseline).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Open-loop rate per second for the latency phase (default: half the saturation throughput).
    #[arg(long)]
    pub rate: Option<f64>,
}

/// `script` by pgbench on a fresh database: at saturation, then (when that
/// ran) at `rate` transactions per second with lag counted.
async fn pgbench_saturation_then_rate(
    env: &Env,
    tool: &std::path::Path,
    script: &str,
    clients: u32,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<(pgbench::Run, pgbench::Run)> {
    let db = env.database().await;
    let run = |rate| {
        pgbench::run(
            tool,
            &db.url,
            script,
            clients,
            rate,
            Length::Duration(duration),
            env.scratch(),
        )
    };
    let saturation = run(None).await;
    let at_rate = match &saturation {
        Ok(_) => run(Some(rate)).await,
        Err(_) => Err(anyhow::anyhow!("skipped")),
    };
    db.cleanup().await;
    Ok((saturation?, at_rate?))
}

fn submit_request(seq: u64) -> pb::SubmitProposalRequest {
    pb::SubmitProposalRequest {
        title: format!("bench proposal {seq}"),
        source: pb::ProposalSource::Api as i32,
        agent: "opsloop-bench".into(),
        dedupe_key: None,
        steps: STEP_KINDS
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

async fn submit_once(mut client: ProposalServiceClient<Channel>, seq: u64) -> Result<(), String> {
    let response = client
        .submit_proposal(submit_request(seq))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    match response.into_inner().proposal {
        Some(p) if p.status == pb::ProposalStatus::Approved as i32 => Ok(()),
        Some(p) => Err(format!("proposal not auto-approved: status {}", p.status)),
        None => Err("response without proposal".into()),
    }
}

pub(crate) async fn submit(env: &Env, args: SubmitArgs) -> Outcome {
    let clients = args.clients.unwrap_or(if env.smoke { 4 } else { 16 });
    let duration = Duration::from_secs(args.duration.unwrap_or(if env.smoke { 1 } else { 20 }));
    eprintln!("submit: {clients} clients, {duration:?} per phase");
    let measured = with_api(env, clients.max(10), |api, db| async move {
        let outcome = async {
            let grpc = api.grpc.context("api gRPC address")?;
            let mut stubs = Vec::new();
            for _ in 0..clients {
                stubs.push(ProposalServiceClient::new(Env::channel(grpc).await?));
            }
            let warmup = closed_loop(
                stubs.clone(),
                duration.min(Duration::from_secs(2)) / 2,
                |c: &mut ProposalServiceClient<Channel>, seq| submit_once(c.clone(), seq),
            )
            .await;
            if warmup.ok == 0 {
                bail!(
                    "no submit succeeded during warm-up: {:?}",
                    warmup.first_error
                );
            }
            let sampler = api.sampler();
            let saturated = closed_loop(
                stubs.clone(),
                duration,
                |c: &mut ProposalServiceClient<Channel>, seq| {
                    submit_once(c.clone(), seq + (1 << 40))
                },
            )
            .await;
            let saturated_use = sampler.finish().await;
            let sat = saturated.summary();
            let rate = args.rate.unwrap_or((sat.throughput_per_s / 2.0).max(1.0));
            let sampler = api.sampler();
            let half = open_loop(stubs, rate, duration, 4096, |c, seq| {
                submit_once(c, seq + (2 << 40))
            })
            .await;
            let half_use = sampler.finish().await;
            Ok(json!({
                "clients": clients,
                "phase_seconds": duration.as_secs(),
                "saturation": sat,
                "saturation_first_error": saturated.first_error,
                "half_load_rate": rate,
                "half_load": half.summary(),
                "half_load_first_error": half.first_error,
                "api_resources_saturation": saturated_use,
                "api_resources_half_load": half_use,
                "api_cold_start_ms": api.ready_after.as_secs_f64() * 1000.0,
            }))
        }
        .await;
        (api, db, outcome.map(|v| (Vec::new(), v)))
    })
    .await?;
    let mut detail = measured.1;
    let sat: f64 = detail["saturation"]["throughput_per_s"]
        .as_f64()
        .unwrap_or(0.0);
    let rate = detail["half_load_rate"].as_f64().unwrap_or(1.0);

    // Baseline: the same SQL transaction by the same number of pgbench clients.
    let (baseline, baseline_half, note) = match &env.pgbench {
        Some(tool) => {
            let (full, half) =
                pgbench_saturation_then_rate(env, tool, SUBMIT_SQL, clients, rate, duration)
                    .await?;
            detail["baseline"] = json!({"saturation": full.latency, "command": full.command,
                "half_load": half.latency, "half_load_command": half.command});
            (Some(full.tps), Some(half.latency), String::new())
        }
        None => (None, None, env.missing_baseline("pgbench")?),
    };
    // The lean reference: the same durable rows in one statement per
    // submit, the policy assumed cached (issue 21); run unchanged, at
    // saturation and at opsloop's half-load rate (`-R`, lag counted).
    let (lean, lean_half) = match (&env.pgbench, env.lean_script("lean_submit.sql")?) {
        (Some(tool), Some(script)) => {
            let (run, half) =
                pgbench_saturation_then_rate(env, tool, &script, clients, rate, duration).await?;
            detail["lean"] = json!({"saturation": run.latency, "command": run.command,
                "half_load": half.latency, "half_load_command": half.command});
            (Some(run.tps), Some(half.latency))
        }
        _ => (None, None),
    };
    let sat_summary: LatencySummary = serde_json::from_value(detail["saturation"].clone())?;
    let half_summary: LatencySummary = serde_json::from_value(detail["half_load"].clone())?;
    let rss = detail["api_resources_saturation"]["rss_max_mib"]
        .as_f64()
        .unwrap_or(0.0)
        .max(
            detail["api_resources_half_load"]["rss_max_mib"]
                .as_f64()
                .unwrap_or(0.0),
        );
    let cpu = detail["api_resources_saturation"]["cpu_percent"]
        .as_f64()
        .unwrap_or(0.0);
    let lean_row = Row::new("submit", "proposals/s at saturation vs lean", "1/s")
        .target(">= 0.5x lean")
        .opsloop(sat)
        .baseline(lean)
        .note(format!(
            "{clients} clients; p99 {:.1} ms at saturation; api CPU {cpu:.0}%; baseline = pgbench lean_submit.sql (one statement, policy cached)",
            sat_summary.p99_ms
        ));
    let lean_met = lean_row.ratio.map(|r| r >= 0.5);
    let throughput_row = Row::new("submit", "proposals/s vs replay (informative)", "1/s")
        .target("-")
        .opsloop(sat)
        .baseline(baseline)
        .note(format!(
            "baseline = pgbench replaying the api's statements of session 2 (sql/submit.sql) {note}"
        ));
    let mut rows = vec![lean_row.met(lean_met), throughput_row];
    rows.push(
        Row::new("submit", "p99 at 50% load", "ms")
            .target("< 20 ms")
            .opsloop(half_summary.p99_ms)
            .baseline(baseline_half.as_ref().map(|b| b.p99_ms))
            .met(Some(half_summary.p99_ms < 20.0))
            .note(format!(
                "open loop {rate:.0}/s; p50 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms; baseline = pgbench -R at the same rate",
                half_summary.p50_ms, half_summary.p999_ms, half_summary.max_ms
            )),
    );
    // Issue 21: p99 at half of opsloop's saturation rate within 1.5x of
    // the lean reference's p99 at that rate.
    let lean_p99 = lean_half.as_ref().map(|l| l.p99_ms);
    rows.push(
        Row::new("submit", "p99 at 50% load vs lean at that rate", "ms")
            .target("<= 1.5x lean")
            .opsloop(half_summary.p99_ms)
            .baseline(lean_p99)
            .met(lean_p99.map(|b| half_summary.p99_ms <= 1.5 * b))
            .note(format!(
                "open loop {rate:.0}/s; baseline = pgbench -R {rate:.0} lean_submit.sql (lag counted); lean p50 {}",
                lean_half
                    .as_ref()
                    .map_or("-".to_owned(), |l| format!("{:.1} ms", l.p50_ms))
            )),
    );
    rows.push(
        Row::new("submit", "errors", "count")
            .target("0")
            .opsloop((sat_summary.errors + half_summary.errors) as f64)
            .met(Some(sat_summary.errors + half_summary.errors == 0)),
    );
    rows.push(
        Row::new("footprint", "api RSS under submit load", "MiB")
            .target("< 128 MiB")
            .opsloop(rss)
            .met(Some(rss < 128.0)),
    );
    Ok((rows, detail))
}

// ---------------------------------------------------------------- work cycle

#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct WorkArgs {
    /// Concurrent workers (one connection each), also pgbench's -c.
    #[arg(long)]
    pub workers: Option<u32>,
    /// Queued steps (in 3-step missions) to drain.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Upper bound on the drain, in seconds.
    #[arg(long)]
    pub max_seconds: Option<u64>,
}

/// Queues `steps` steps as running 3-step missions (what approved proposals
/// leave behind), without going through the api: seeding is not measured.
async fn seed_steps(db: &TestDb, steps: u64) -> anyhow::Result<u64> {
    let missions = steps.div_ceil(3);
    db.db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            SEED_STEPS_SQL,
            vec![i64::try_from(missions)?.into()],
        ))
        .await
        .context("seeding queued steps")?;
    // Fresh statistics, as autovacuum gathers within a minute of a bulk
    // load; without them the planner takes 100k queued rows for one.
    for table in ["missions", "mission_steps"] {
        db.db
            .execute_raw(Statement::from_string(
                DbBackend::Postgres,
                format!("ANALYZE {table}"),
            ))
            .await
            .context("analyzing the seeded tables")?;
    }
    Ok(missions * 3)
}

/// Steps succeeded, steps claimed more than once, all steps.
async fn step_counts(db: &TestDb) -> anyhow::Result<(i64, i64, i64)> {
    let row = db
        .db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) FILTER (WHERE status = 'succeeded') AS done, \
             count(*) FILTER (WHERE attempt > 1) AS reclaimed, count(*) AS total FROM mission_steps",
        ))
        .await?
        .context("no count row")?;
    Ok((
        row.try_get("", "done")?,
        row.try_get("", "reclaimed")?,
        row.try_get("", "total")?,
    ))
}

struct Cycle {
    claim: hdrhistogram::Histogram<u64>,
    complete: hdrhistogram::Histogram<u64>,
    cycle: hdrhistogram::Histogram<u64>,
    errors: u64,
    empty_claims: u64,
    first_error: Option<String>,
}

pub(crate) async fn work_cycle(env: &Env, args: WorkArgs) -> Outcome {
    let workers = args.workers.unwrap_or(if env.smoke { 4 } else { 16 });
    let wanted = args.steps.unwrap_or(if env.smoke { 300 } else { 100_000 });
    let bound = Duration::from_secs(args.max_seconds.unwrap_or(if env.smoke { 30 } else { 900 }));
    eprintln!("work-cycle: {workers} workers over {wanted} steps");
    let (_, mut detail) = with_api(env, workers.max(10), |api, db| async move {
        let outcome = async {
            let steps = seed_steps(&db, wanted).await?;
            let grpc = api.grpc.context("api gRPC address")?;
            let completed = Arc::new(AtomicU64::new(0));
            let doubles = Arc::new(AtomicU64::new(0));
            let seen = Arc::new(Mutex::new(HashSet::<String>::with_capacity(steps as usize)));
            let sampler = api.sampler();
            let started = Instant::now();
            let deadline = started + bound;
            let mut tasks = tokio::task::JoinSet::new();
            for w in 0..workers {
                let mut client = MissionServiceClient::new(Env::channel(grpc).await?);
                let completed = completed.clone();
                let doubles = doubles.clone();
                let seen = seen.clone();
                tasks.spawn(async move {
                    let worker_id = format!("bench-worker-{w}");
                    let mut out = Cycle {
                        claim: load::histogram(),
                        complete: load::histogram(),
                        cycle: load::histogram(),
                        errors: 0,
                        empty_claims: 0,
                        first_error: None,
                    };
                    while completed.load(Ordering::Relaxed) < steps && Instant::now() < deadline {
                        let t0 = Instant::now();
                        let claimed = client
                            .claim_step(pb::ClaimStepRequest {
                                worker_id: worker_id.clone(),
                                kinds: STEP_KINDS.iter().map(|k| (*k).to_owned()).collect(),
                                lease_seconds: 0,
                                ..Default::default()
                            })
                            .await;
                        let step = match claimed.map(|r| r.into_inner()) {
                            Ok(r) if r.found => r.step,
                            Ok(_) => {
                                out.empty_claims += 1;
                                tokio::time::sleep(Duration::from_millis(2)).await;
                                continue;
                            }
                            Err(s) => {
                                out.errors += 1;
                                out.first_error.get_or_insert(format!("claim: {s}"));
                                continue;
                            }
                        };
                        let Some(step) = step else {
                            out.errors += 1;
                            continue;
                        };
                        let _ = out.claim.record(t0.elapsed().as_micros().max(1) as u64);
                        if !seen.lock().expect("seen lock").insert(step.id.clone()) {
                            doubles.fetch_add(1, Ordering::Relaxed);
                        }
                        let t1 = Instant::now();
                        let done = client
                            .complete_step(pb::CompleteStepRequest {
                                step_id: step.id.clone(),
                                worker_id: worker_id.clone(),
                                attempt: step.attempt,
                                result_json: r#"{"done":true}"#.into(),
                                cost_usd: Some(0.01),
                                usage: Vec::new(),
                            })
                            .await;
                        match done {
                            Ok(_) => {
                                let _ = out.complete.record(t1.elapsed().as_micros().max(1) as u64);
                                let _ = out.cycle.record(t0.elapsed().as_micros().max(1) as u64);
                                completed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(s) => {
                                out.errors += 1;
                                out.first_error.get_or_insert(format!("complete: {s}"));
                            }
                        }
                    }
                    out
                });
            }
            let mut claim = load::histogram();
            let mut complete = load::histogram();
            let mut cycle = load::histogram();
            let (mut errors, mut empty, mut first_error) = (0, 0, None);
            while let Some(done) = tasks.join_next().await {
                let out = done.context("worker task")?;
                let _ = claim.add(&out.claim);
                let _ = complete.add(&out.complete);
                let _ = cycle.add(&out.cycle);
                errors += out.errors;
                empty += out.empty_claims;
                if first_error.is_none() {
                    first_error = out.first_error;
                }
            }
            let elapsed = started.elapsed();
            let usage = sampler.finish().await;
            let (done, reclaimed, total) = step_counts(&db).await?;
            let n = completed.load(Ordering::Relaxed);
            Ok(json!({
                "workers": workers,
                "steps": steps,
                "drained": done == total,
                "steps_succeeded": done,
                "steps_reclaimed_in_db": reclaimed,
                "double_claims": doubles.load(Ordering::Relaxed),
                "empty_claims": empty,
                "errors": errors,
                "first_error": first_error,
                "elapsed_s": elapsed.as_secs_f64(),
                "steps_per_s": n as f64 / elapsed.as_secs_f64(),
                "claim": LatencySummary::of(&claim, n, 0, elapsed),
                "complete": LatencySummary::of(&complete, n, 0, elapsed),
                "cycle": LatencySummary::of(&cycle, n, errors, elapsed),
                "api_resources": usage,
            }))
        }
        .await;
        (api, db, outcome.map(|v| (Vec::new(), v)))
    })
    .await?;

    let (baseline, note) = match &env.pgbench {
        Some(tool) => {
            let db = env.database().await;
            let result = async {
                let steps = seed_steps(&db, wanted).await?;
                // Each pgbench transaction claims and completes one step; the
                // slack covers claims that find nothing at the very end.
                let per_client = steps.div_ceil(u64::from(workers)) + steps / 20 + 5;
                let run = pgbench::run(
                    tool,
                    &db.url,
                    CLAIM_COMPLETE_SQL,
                    workers,
                    None,
                    Length::Transactions(per_client),
                    env.scratch(),
                )
                .await?;
                let (done, reclaimed, total) = step_counts(&db).await?;
                anyhow::Ok((run, done, reclaimed, total))
            }
            .await;
            db.cleanup().await;
            let (run, done, reclaimed, total) = result?;
            let rate = done as f64 / run.wall.as_secs_f64();
            detail["baseline"] = json!({"command": run.command, "steps_succeeded": done,
                "steps_total": total, "steps_reclaimed": reclaimed, "wall_s": run.wall.as_secs_f64(),
                "steps_per_s": rate, "transactions": run.latency});
            (Some(rate), String::new())
        }
        None => (None, env.missing_baseline("pgbench")?),
    };
    let lean = match (&env.pgbench, env.lean_script("lean_claim_complete.sql")?) {
        (Some(tool), Some(script)) => {
            let db = env.database().await;
            let result = async {
                let steps = seed_steps(&db, wanted).await?;
                let per_client = steps.div_ceil(u64::from(workers)) + steps / 20 + 5;
                let run = pgbench::run(
                    tool,
                    &db.url,
                    &script,
                    workers,
                    None,
                    Length::Transactions(per_client),
                    env.scratch(),
                )
                .await?;
                let (done, _, _) = step_counts(&db).await?;
                anyhow::Ok((run, done))
            }
            .await;
            db.cleanup().await;
            let (run, done) = result?;
            let rate = done as f64 / run.wall.as_secs_f64();
            detail["lean"] = json!({"command": run.command, "steps_succeeded": done,
                "wall_s": run.wall.as_secs_f64(), "steps_per_s": rate});
            Some(rate)
        }
        _ => None,
    };
    let rate = detail["steps_per_s"].as_f64().unwrap_or(0.0);
    let cycle: LatencySummary = serde_json::from_value(detail["cycle"].clone())?;
    let doubles = detail["double_claims"].as_u64().unwrap_or(0)
        + detail["steps_reclaimed_in_db"].as_u64().unwrap_or(0);
    let drained = detail["drained"].as_bool().unwrap_or(false);
    let lean_row = Row::new("work-cycle", "steps/s (claim+complete) vs lean", "1/s")
        .target(">= 0.5x lean")
        .opsloop(rate)
        .baseline(lean)
        .note("baseline = pgbench lean_claim_complete.sql (one statement each) on the same seed");
    let lean_met = lean_row.ratio.map(|r| r >= 0.5);
    let row = Row::new("work-cycle", "steps/s vs replay (informative)", "1/s")
        .target("-")
        .opsloop(rate)
        .baseline(baseline)
        .note(format!(
            "{workers} workers, {} steps; cycle p50 {:.1} ms p99 {:.1} ms; api CPU {:.0}% {note}",
            detail["steps"],
            cycle.p50_ms,
            cycle.p99_ms,
            detail["api_resources"]["cpu_percent"]
                .as_f64()
                .unwrap_or(0.0)
        ));
    let rows = vec![
        lean_row.met(lean_met),
        row,
        Row::new("work-cycle", "double claims (checked)", "count")
            .target("0")
            .opsloop(doubles as f64)
            .met(Some(doubles == 0)),
        Row::new("work-cycle", "cycle p99", "ms")
            .opsloop(cycle.p99_ms)
            .note(format!("drained: {drained}; errors {}", cycle.errors)),
    ];
    if doubles > 0 {
        bail!("{doubles} steps were handed out twice");
    }
    if !drained {
        bail!(
            "the queue was not drained within {bound:?}: {}",
            detail["first_error"]
        );
    }
    Ok((rows, detail))
}

// ---------------------------------------------------------------- backup

#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct BackupArgs {
    /// Size of the database to back up, in MiB of table data.
    #[arg(long)]
    pub mib: Option<u64>,
}

/// Fills `bench_fill` with about `mib` MiB of rows that compress like
/// application data (text with repetition, numbers, timestamps).
async fn fill(db: &TestDb, mib: u64) -> anyhow::Result<()> {
    // About 200 bytes per row on disk.
    let rows = mib * 1024 * 1024 / 200;
    db.db
        .execute_unprepared(&format!(
            "CREATE TABLE bench_fill (id bigint PRIMARY KEY, kind text, body text, n double precision, at timestamptz);\
             INSERT INTO bench_fill SELECT g, 'kind-' || (g % 17), \
             md5(g::text) || ' ' || repeat('payload ', 1 + g % 12) || md5((g * 7)::text), \
             random() * 1000, now() - (g || ' seconds')::interval FROM generate_series(1, {rows}) g;\
             ANALYZE bench_fill;"
        ))
        .await
        .context("filling the backup database")?;
    Ok(())
}

async fn database_bytes(db: &TestDb) -> anyhow::Result<i64> {
    let row = db
        .db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT pg_database_size(current_database()) AS size",
        ))
        .await?
        .context("no size row")?;
    Ok(row.try_get("", "size")?)
}

pub(crate) async fn backup(env: &Env, args: BackupArgs) -> Outcome {
    let mib = args.mib.unwrap_or(if env.smoke { 8 } else { 1024 });
    eprintln!("backup: {mib} MiB of table data");
    let db = env.database().await;
    let result = backup_on(env, &db, mib).await;
    db.cleanup().await;
    result
}

async fn backup_on(env: &Env, db: &TestDb, mib: u64) -> Outcome {
    fill(db, mib).await?;
    let size = database_bytes(db).await? as f64 / (1024.0 * 1024.0);
    let dir = env.scratch().join("backup");
    std::fs::create_dir_all(dir.join("store"))?;

    // Baseline first (a cold cache would otherwise favour whoever goes second).
    let tools_present = ["pg_dump", "zstd", "sha256sum"]
        .iter()
        .all(|t| which(t).is_some());
    let (baseline, baseline_note, baseline_detail) = if tools_present {
        let file = dir.join("baseline.dump.zst");
        let script = format!(
            "set -euo pipefail; pg_dump -Fc '{}' | zstd -q -3 | tee >(sha256sum > '{}.sha256') > '{}'",
            db.url,
            file.display(),
            file.display()
        );
        let started = Instant::now();
        let status = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .status()
            .await?;
        let wall = started.elapsed();
        if !status.success() {
            bail!("baseline pipeline failed: {status}");
        }
        let bytes = std::fs::metadata(&file)?.len();
        let _ = std::fs::remove_file(&file);
        (
            Some(size / wall.as_secs_f64()),
            String::new(),
            json!({"command": "pg_dump -Fc URL | zstd -3 | tee >(sha256sum) > file",
                   "seconds": wall.as_secs_f64(), "bytes": bytes}),
        )
    } else {
        let line = env.missing_baseline("pg_dump/zstd/sha256sum")?;
        (None, line, Value::Null)
    };

    // opsloop: the backup-agent daemon, RunBackup(wait) then VerifyBackup.
    let grpc = free_addr()?;
    let http = free_addr()?;
    let config = dir.join("backup-agent.toml");
    std::fs::write(
        &config,
        format!(
            "[backup]\nstore_dir = {:?}\nschedule = \"0 3 1 1 *\"\ncatch_up_missed = false\nprune_after_backup = false\n\
             [[backup.targets]]\nname = \"bench\"\nurl = {:?}\n[backup.verify]\nafter_backup = false\n",
            dir.join("store").display().to_string(),
            db.url
        ),
    )?;
    let mut daemon_env = env.daemon_env(&db.url, 4);
    daemon_env.push(("OPSLOOP__BACKUP__GRPC_ADDR".into(), grpc.to_string()));
    daemon_env.push(("OPSLOOP__BACKUP__HTTP_ADDR".into(), http.to_string()));
    let binary = env.binary("opsloop-backup-agent");
    let agent = Daemon::start(Launch {
        binary: &binary,
        name: "opsloop-backup-agent",
        env: daemon_env,
        config: Some(&config),
        http,
        grpc: Some(grpc),
        workdir: env.scratch(),
        args: Vec::new(),
        ready_path: "/readyz",
        ready_timeout: Duration::from_secs(30),
    })
    .await?;
    let measured = async {
        let mut client =
            pb::backup_service_client::BackupServiceClient::new(Env::channel(grpc).await?);
        let sampler = agent.sampler();
        let started = Instant::now();
        let response = client
            .run_backup(pb::RunBackupRequest {
                target: Some("bench".into()),
                wait: true,
            })
            .await
            .context("RunBackup")?
            .into_inner();
        let wall = started.elapsed();
        let usage = sampler.finish().await;
        let backup = response
            .backup
            .context("RunBackup answered without a backup")?;
        if backup.status != pb::BackupStatus::Completed as i32 {
            bail!("backup ended with status {}: {:?}", backup.status, backup);
        }
        let started = Instant::now();
        let verified = client
            .verify_backup(pb::VerifyBackupRequest {
                id: backup.id.clone(),
            })
            .await
            .map(|r| format!("{:?}", r.into_inner()));
        let verify_wall = started.elapsed();
        anyhow::Ok(json!({
            "seconds": wall.as_secs_f64(),
            "bytes": backup.size_bytes,
            "agent_resources": usage,
            "verify_seconds": verify_wall.as_secs_f64(),
            "verify": verified.unwrap_or_else(|s| format!("error: {s}")),
        }))
    }
    .await;
    let log = agent.log.clone();
    agent.stop().await?;
    let ours =
        measured.with_context(|| format!("backup-agent log:\n{}", crate::daemon::tail(&log)))?;
    let seconds = ours["seconds"].as_f64().unwrap_or(f64::INFINITY);
    let verify = ours["verify_seconds"].as_f64().unwrap_or(0.0);
    let row = Row::new("backup", "dump+compress+checksum+store", "MiB/s")
        .target(">= 0.9x baseline")
        .opsloop(size / seconds)
        .baseline(baseline)
        .note(format!(
            "database {size:.0} MiB; {seconds:.1} s {baseline_note}"
        ));
    let met = row.ratio.map(|r| r >= 0.9);
    let rows = vec![
        row.met(met),
        Row::new("backup", "verification (restore + counts)", "s")
            .target("< 600 s")
            .opsloop(verify)
            .met(Some(verify < 600.0))
            .note(
                ours["verify"]
                    .as_str()
                    .filter(|v| v.starts_with("error"))
                    .unwrap_or("")
                    .chars()
                    .take(120)
                    .collect::<String>(),
            ),
    ];
    Ok((
        rows,
        json!({"database_mib": size, "opsloop": ours, "baseline": baseline_detail}),
    ))
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file())
    })
}

// ---------------------------------------------------------------- footprint

/// `RssAnon` of `/proc/<pid>/status` in MiB: what a process allocated,
/// without the file-backed pages of its binary (shared, reclaimable) that
/// `VmRSS` also counts.
fn rss_anon_mib(pid: u32) -> Option<f64> {
    parse_rss_anon_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
        .map(|kib| kib as f64 / 1024.0)
}

fn parse_rss_anon_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

pub(crate) async fn footprint(env: &Env) -> Outcome {
    let settle = Duration::from_millis(if env.smoke { 500 } else { 5_000 });
    let db = env.database().await;
    let result = async {
        let mut rows = Vec::new();
        let mut detail = serde_json::Map::new();
        for (binary, section, has_grpc) in [
            ("opsloop-api", "API", true),
            ("opsloop-heartbeat-worker", "HEARTBEAT", false),
            ("opsloop-alerter", "ALERTER", true),
            ("opsloop-backup-agent", "BACKUP", true),
        ] {
            let http = free_addr()?;
            let grpc = has_grpc.then(free_addr).transpose()?;
            let mut daemon_env = env.daemon_env(&db.url, 10);
            daemon_env.push((format!("OPSLOOP__{section}__HTTP_ADDR"), http.to_string()));
            if let Some(grpc) = grpc {
                daemon_env.push((format!("OPSLOOP__{section}__GRPC_ADDR"), grpc.to_string()));
            }
            if section == "BACKUP" {
                daemon_env.push((
                    "OPSLOOP__BACKUP__STORE_DIR".into(),
                    env.scratch().join("footprint-store").display().to_string(),
                ));
            }
            let path = env.binary(binary);
            let daemon = Daemon::start(Launch {
                binary: &path,
                name: binary,
                env: daemon_env,
                config: None,
                http,
                grpc,
                workdir: env.scratch(),
                args: Vec::new(),
                ready_path: "/readyz",
                ready_timeout: Duration::from_secs(30),
            })
            .await?;
            let ready_ms = daemon.ready_after.as_secs_f64() * 1000.0;
            tokio::time::sleep(settle).await;
            let rss = daemon
                .stats()
                .map(|s| s.rss_bytes as f64 / (1024.0 * 1024.0))
                .unwrap_or(0.0);
            let anon = rss_anon_mib(daemon.pid).unwrap_or(0.0);
            daemon.stop().await?;
            rows.push(
                Row::new("footprint", &format!("{binary} idle RSS"), "MiB")
                    .target("<= 16 MiB")
                    .opsloop(rss)
                    .met(Some(rss <= 16.0)),
            );
            rows.push(
                Row::new("footprint", &format!("{binary} idle anonymous RSS"), "MiB")
                    .opsloop(anon)
                    .note("RssAnon: the heap and stacks, without the binary's file-backed pages"),
            );
            rows.push(
                Row::new("footprint", &format!("{binary} cold start to ready"), "ms")
                    .target("<= 170 ms")
                    .opsloop(ready_ms)
                    .met(Some(ready_ms <= 170.0))
                    .note("spawn to first 200 from /readyz, database up"),
            );
            detail.insert(
                binary.into(),
                json!({"idle_rss_mib": rss, "idle_rss_anon_mib": anon, "ready_ms": ready_ms, "settle_s": settle.as_secs_f64()}),
            );
        }
        anyhow::Ok((rows, Value::Object(detail)))
    }
    .await;
    db.cleanup().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_anon_is_read_from_proc_status() {
        let status = "VmRSS:\t   25996 kB\nRssAnon:\t    4848 kB\nRssFile:\t   21148 kB\n";
        assert_eq!(parse_rss_anon_kib(status), Some(4848));
        assert_eq!(parse_rss_anon_kib("VmRSS: 1 kB\n"), None);
        assert!(rss_anon_mib(std::process::id()).is_some_and(|mib| mib > 0.0));
    }
}
