//! The alerter in an alert storm (issue 22): opsloop's alerter and
//! Prometheus Alertmanager run side by side in one invocation, each on its
//! own local Slack-shaped receiver, same route (`group_by [alertname]`,
//! `group_wait 0s`, `group_interval 1s`, `repeat_interval 4h`), every alert
//! its own group. Measured on both: idle CPU and RSS with N active groups,
//! post → delivery at 100 alerts/s with N active, `POST /api/v2/alerts`
//! latency with N active, 1,000 alerts/s for 60 s, and the bytes of resident
//! memory per active alert at N and at a larger count.
//!
//! Phases run one system after the other (opsloop first), both daemons up
//! throughout, so background load falls on both alike; idle phases sample
//! both over the same window.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::daemon::{Daemon, ResourceUse};
use crate::env::Env;
use crate::page::{self, AlerterSide, Receiver, alert_json};
use crate::report::Row;

type Outcome = anyhow::Result<(Vec<Row>, Value)>;

const SCENARIO: &str = "storm";
/// Alerts per fill request (Prometheus sends up to 64 per post; larger
/// batches only make the fill faster, they are not measured).
const FILL_BATCH: u64 = 500;
/// Fill requests in flight.
const FILL_IN_FLIGHT: usize = 2;
/// How long filled alerts stay firing: longer than the whole run.
const FILL_ENDS_IN: Duration = Duration::from_secs(2 * 3600);
const MIB: f64 = 1024.0 * 1024.0;

#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct StormArgs {
    /// Active groups (one alert each) before the measured phases (default 10000).
    #[arg(long)]
    pub active: Option<u64>,
    /// Active alerts for the second bytes-per-alert figure (default 100000).
    #[arg(long)]
    pub large: Option<u64>,
    /// Seconds of the idle sample (default 20).
    #[arg(long)]
    pub idle_seconds: Option<u64>,
    /// Alerts per second of the latency phase (default 100).
    #[arg(long)]
    pub probe_rate: Option<f64>,
    /// Seconds of the latency phase (default 30).
    #[arg(long)]
    pub probe_seconds: Option<u64>,
    /// Alerts per second of the storm (default 1000).
    #[arg(long)]
    pub storm_rate: Option<f64>,
    /// Seconds of the storm (default 60).
    #[arg(long)]
    pub storm_seconds: Option<u64>,
}

/// One system under test and its receiver.
struct Side {
    name: &'static str,
    http: SocketAddr,
    pid: u32,
    receiver: Receiver,
    /// The next alert number to post (alerts are never reused).
    next_id: u64,
}

impl Side {
    fn rss_mib(&self) -> f64 {
        opsloop_core::telemetry::ProcessStats::read_pid(&self.pid.to_string())
            .map(|s| s.rss_bytes as f64 / MIB)
            .unwrap_or(0.0)
    }

    /// Adds `count` active alerts (each its own group) in batches, then
    /// waits until the receiver has heard of every one.
    async fn fill(&mut self, count: u64) -> anyhow::Result<Value> {
        self.receiver.reset();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let url = format!("http://{}/api/v2/alerts", self.http);
        let first = self.next_id;
        self.next_id += count;
        let started = Instant::now();
        let mut refused = 0u32;
        let mut slowest = Duration::ZERO;
        let mut batches = (0..count.div_ceil(FILL_BATCH)).map(|b| {
            let from = first + b * FILL_BATCH;
            let to = (from + FILL_BATCH).min(first + count);
            json!(
                (from..to)
                    .map(|id| alert_json(id, Some(FILL_ENDS_IN)))
                    .collect::<Vec<_>>()
            )
        });
        let mut in_flight = tokio::task::JoinSet::new();
        loop {
            while in_flight.len() < FILL_IN_FLIGHT
                && let Some(body) = batches.next()
            {
                in_flight.spawn(post_batch(client.clone(), url.clone(), self.name, body));
            }
            let Some(done) = in_flight.join_next().await else {
                break;
            };
            let (refusals, took) = done??;
            refused += refusals;
            slowest = slowest.max(took);
        }
        let posted_in = started.elapsed();
        let bound = Duration::from_secs(60 + count / 500);
        let delivered = self.receiver.wait_distinct(count, bound).await;
        let delivered_in = started.elapsed();
        if delivered < count {
            bail!(
                "{}: only {delivered} of {count} filled alerts reached the receiver within {bound:?}",
                self.name
            );
        }
        Ok(json!({
            "alerts": count,
            "posted_s": posted_in.as_secs_f64(),
            "delivered_s": delivered_in.as_secs_f64(),
            "slowest_batch_ms": slowest.as_secs_f64() * 1000.0,
            "refusals": refused,
            "repeats": self.receiver.repeats(),
        }))
    }

    /// The open-loop phase of `page::drive`: `rate`/s single-alert posts.
    async fn drive(&mut self, rate: f64, duration: Duration) -> anyhow::Result<Value> {
        let offset = self.next_id;
        let result = page::drive(
            self.http,
            &self.receiver,
            rate,
            duration,
            offset,
            Some(FILL_ENDS_IN),
        )
        .await?;
        self.next_id += result["sent"].as_u64().unwrap_or(0);
        Ok(result)
    }
}

/// Posts one fill batch, retrying (bounded) when refused with 429/503 or
/// when the connection fails, after the server's Retry-After. Returns the
/// refusals and how long it took.
async fn post_batch(
    client: reqwest::Client,
    url: String,
    name: &'static str,
    body: Value,
) -> anyhow::Result<(u32, Duration)> {
    let started = Instant::now();
    let mut refusals = 0u32;
    loop {
        let pause = match client.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => return Ok((refusals, started.elapsed())),
            Ok(r) if matches!(r.status().as_u16(), 429 | 503) => r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(Duration::from_millis(500), Duration::from_secs),
            Ok(r) => bail!("{name}: fill POST answered {}", r.status()),
            Err(e) => {
                eprintln!("storm: {name} fill POST failed ({e}); retrying");
                Duration::from_millis(500)
            }
        };
        refusals += 1;
        if refusals > 120 {
            bail!("{name}: fill refused {refusals} times");
        }
        tokio::time::sleep(pause).await;
    }
}

/// Samples every side's process over the same `seconds` of quiet.
async fn idle(sides: &[&Side], seconds: f64) -> Vec<ResourceUse> {
    let samplers: Vec<_> = sides
        .iter()
        .map(|s| crate::daemon::Sampler::start(s.pid))
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let mut out = Vec::new();
    for sampler in samplers {
        out.push(sampler.finish().await);
    }
    out
}

/// Resident bytes per active alert: growth over the empty process.
fn bytes_per_alert(rss_mib: f64, empty_mib: f64, alerts: u64) -> f64 {
    (rss_mib - empty_mib).max(0.0) * MIB / alerts.max(1) as f64
}

/// What one system measured, phase by phase.
#[derive(Default)]
struct Measured {
    detail: serde_json::Map<String, Value>,
}

impl Measured {
    fn put(&mut self, key: &str, value: Value) {
        self.detail.insert(key.into(), value);
    }

    fn f(&self, path: &[&str]) -> Option<f64> {
        let mut v = self.detail.get(path[0])?;
        for key in &path[1..] {
            v = v.get(key)?;
        }
        v.as_f64()
    }
}

pub(crate) async fn storm(env: &Env, args: StormArgs) -> Outcome {
    let smoke = env.smoke;
    let active = args.active.unwrap_or(if smoke { 100 } else { 10_000 });
    let large = args.large.unwrap_or(if smoke { 500 } else { 100_000 });
    let idle_s = args.idle_seconds.unwrap_or(if smoke { 1 } else { 20 }) as f64;
    let probe_rate = args.probe_rate.unwrap_or(if smoke { 20.0 } else { 100.0 });
    let probe_s = Duration::from_secs(args.probe_seconds.unwrap_or(if smoke { 1 } else { 30 }));
    let storm_rate = args
        .storm_rate
        .unwrap_or(if smoke { 100.0 } else { 1000.0 });
    let storm_s = Duration::from_secs(args.storm_seconds.unwrap_or(if smoke { 1 } else { 60 }));
    eprintln!(
        "storm: {active} active groups; idle {idle_s} s; {probe_rate}/s for {probe_s:?}; \
         storm {storm_rate}/s for {storm_s:?}; bytes per alert at {active} and {large}"
    );
    let dir = env.scratch().join("storm");
    std::fs::create_dir_all(&dir)?;

    let ours_receiver = Receiver::start().await?;
    let ours_dir = dir.join("opsloop");
    std::fs::create_dir_all(&ours_dir)?;
    let alerter = AlerterSide::start(env, &ours_dir, &ours_receiver.url()).await?;
    let mut sides = vec![Side {
        name: "opsloop",
        http: alerter.http,
        pid: alerter.daemon.pid,
        receiver: ours_receiver,
        next_id: 0,
    }];
    let mut am: Option<Daemon> = None;
    let mut note = String::new();
    let started = async {
        match page::alertmanager_binary() {
            Some(binary) => {
                let receiver = Receiver::start().await?;
                let am_dir = dir.join("alertmanager");
                std::fs::create_dir_all(&am_dir)?;
                let (daemon, http) =
                    page::start_alertmanager(env, &binary, &am_dir, &receiver.url()).await?;
                sides.push(Side {
                    name: "alertmanager",
                    http,
                    pid: daemon.pid,
                    receiver,
                    next_id: 0,
                });
                am = Some(daemon);
            }
            None => note = env.missing_baseline("prometheus-alertmanager")?,
        }
        anyhow::Ok(())
    }
    .await;
    let measured = match started {
        Ok(()) => {
            measure(
                &mut sides,
                active,
                large,
                idle_s,
                (probe_rate, probe_s),
                (storm_rate, storm_s),
            )
            .await
        }
        Err(error) => Err(error),
    };
    let log = alerter.daemon.log.clone();
    // How the alerter stops holding everything the run left (SIGTERM; the
    // bench kills it 10 s later): reported, not fatal to the figures.
    let stopping = Instant::now();
    let stopped = alerter.stop().await;
    let stop_s = stopping.elapsed().as_secs_f64();
    // The scratch directory goes at the end: the alerter's log is kept
    // when its stop failed, or always with OPSLOOP_BENCH_KEEP_LOGS set.
    let kept = (stopped.is_err() || std::env::var_os(KEEP_LOGS).is_some())
        .then(|| keep_log(&log))
        .flatten();
    if let Some(am) = am
        && let Err(error) = am.stop().await
    {
        eprintln!("storm: {error:#}");
    }
    let measured =
        measured.with_context(|| format!("alerter log:\n{}", crate::daemon::tail(&log)))?;
    let (ours, base) = (&measured[0], measured.get(1));
    let mut table = rows(
        ours, base, active, large, probe_rate, storm_rate, storm_s, &note,
    );
    table.push(
        Row::new(SCENARIO, "alerter exit after SIGTERM, holding the run", "s")
            .target("<= 10 s (drain bound)")
            .opsloop(stop_s)
            .met(Some(stopped.is_ok()))
            .note(match (&stopped, &kept) {
                (Ok(()), None) => "clean exit".to_owned(),
                (Ok(()), Some(path)) => format!("clean exit; log kept at {}", path.display()),
                (Err(error), None) => format!("{error:#}; killed"),
                (Err(error), Some(path)) => {
                    format!("{error:#}; killed; log kept at {}", path.display())
                }
            }),
    );
    Ok((
        table,
        json!({
            "active": active,
            "large": large,
            "idle_seconds": idle_s,
            "probe": {"rate": probe_rate, "seconds": probe_s.as_secs()},
            "storm": {"rate": storm_rate, "seconds": storm_s.as_secs()},
            "opsloop": ours.detail,
            "alertmanager": base.map(|b| &b.detail),
        }),
    ))
}

/// Set (to anything) to keep the alerter's log after the run.
const KEEP_LOGS: &str = "OPSLOOP_BENCH_KEEP_LOGS";

/// Copies the alerter's log out of the scratch directory (removed at the
/// end) to `$TMPDIR/opsloop-bench-storm-alerter-<unix seconds>.log`.
fn keep_log(log: &std::path::Path) -> Option<std::path::PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let kept = std::env::temp_dir().join(format!("opsloop-bench-storm-alerter-{stamp}.log"));
    match std::fs::copy(log, &kept) {
        Ok(_) => {
            eprintln!("storm: alerter log kept at {}", kept.display());
            Some(kept)
        }
        Err(error) => {
            eprintln!("storm: cannot keep the alerter log: {error}");
            None
        }
    }
}

/// The phases, on every side in turn.
async fn measure(
    sides: &mut [Side],
    active: u64,
    large: u64,
    idle_s: f64,
    (probe_rate, probe_s): (f64, Duration),
    (storm_rate, storm_s): (f64, Duration),
) -> anyhow::Result<Vec<Measured>> {
    let mut out: Vec<Measured> = sides.iter().map(|_| Measured::default()).collect();
    let all: Vec<&Side> = sides.iter().collect();
    let empty = idle(&all, idle_s.clamp(0.5, 3.0)).await;
    for (m, u) in out.iter_mut().zip(&empty) {
        m.put("empty", serde_json::to_value(u)?);
    }

    for (side, m) in sides.iter_mut().zip(out.iter_mut()) {
        eprintln!("storm: {}: filling {active} groups", side.name);
        m.put("fill", side.fill(active).await?);
    }
    let all: Vec<&Side> = sides.iter().collect();
    let quiet = idle(&all, idle_s).await;
    for ((m, u), side) in out.iter_mut().zip(&quiet).zip(sides.iter()) {
        m.put("idle", serde_json::to_value(u)?);
        let empty = m.f(&["empty", "rss_end_mib"]).unwrap_or(0.0);
        m.put(
            "bytes_per_alert_active",
            json!(bytes_per_alert(u.rss_end_mib, empty, active)),
        );
        m.put("repeats_while_idle", json!(side.receiver.repeats()));
    }

    for (side, m) in sides.iter_mut().zip(out.iter_mut()) {
        eprintln!("storm: {}: {probe_rate}/s for {probe_s:?}", side.name);
        let sampler = crate::daemon::Sampler::start(side.pid);
        let mut probe = side.drive(probe_rate, probe_s).await?;
        probe["resources"] = serde_json::to_value(sampler.finish().await)?;
        m.put("probe", probe);
    }

    for (side, m) in sides.iter_mut().zip(out.iter_mut()) {
        eprintln!("storm: {}: {storm_rate}/s for {storm_s:?}", side.name);
        let sampler = crate::daemon::Sampler::start(side.pid);
        let mut storm = side.drive(storm_rate, storm_s).await?;
        storm["resources"] = serde_json::to_value(sampler.finish().await)?;
        m.put("storm", storm);
    }

    // Up to `large` active alerts: bytes per alert there.
    for (side, m) in sides.iter_mut().zip(out.iter_mut()) {
        let held = side.next_id;
        if held < large {
            eprintln!("storm: {}: filling up to {large} alerts", side.name);
            // A side that cannot take them all still reports the rest.
            match side.fill(large - held).await {
                Ok(fill) => m.put("fill_large", fill),
                Err(error) => {
                    eprintln!("storm: {error:#}");
                    m.put("fill_large_error", json!(format!("{error:#}")));
                }
            }
        }
        m.put("alerts_held", json!(side.next_id));
    }
    let all: Vec<&Side> = sides.iter().collect();
    let quiet = idle(&all, (idle_s / 2.0).max(1.0)).await;
    for ((m, u), side) in out.iter_mut().zip(&quiet).zip(sides.iter()) {
        m.put("idle_large", serde_json::to_value(u)?);
        let empty = m.f(&["empty", "rss_end_mib"]).unwrap_or(0.0);
        m.put(
            "bytes_per_alert_large",
            json!(bytes_per_alert(u.rss_end_mib, empty, side.next_id)),
        );
        m.put("rss_now_mib", json!(side.rss_mib()));
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn rows(
    ours: &Measured,
    base: Option<&Measured>,
    active: u64,
    large: u64,
    probe_rate: f64,
    storm_rate: f64,
    storm_s: Duration,
    note: &str,
) -> Vec<Row> {
    let b = |path: &[&str]| base.and_then(|m| m.f(path));
    let row = |metric: String, unit: &str, path: &[&str]| {
        Row::new(SCENARIO, &metric, unit)
            .opsloop(ours.f(path).unwrap_or(0.0))
            .baseline(b(path))
    };
    let ratio_at_most = |r: Row, limit: f64| {
        let met = r.ratio.map(|x| x <= limit);
        r.met(met)
    };
    let mut rows = Vec::new();
    rows.push(ratio_at_most(
        row(
            format!("idle CPU, {active} active groups"),
            "%",
            &["idle", "cpu_percent"],
        )
        .target("<= 1.5x Alertmanager")
        .note(format!("% of one core over the idle sample {note}")),
        1.5,
    ));
    rows.push(ratio_at_most(
        row(
            format!("idle RSS, {active} active groups"),
            "MiB",
            &["idle", "rss_end_mib"],
        )
        .target("<= Alertmanager"),
        1.0,
    ));
    let probe_p99 = row(
        format!("p99 post → delivery, {probe_rate:.0}/s with {active} active"),
        "ms",
        &["probe", "latency", "p99_ms"],
    )
    .target("<= Alertmanager")
    .note(format!(
        "p50 {:.2} vs {:.2} ms",
        ours.f(&["probe", "latency", "p50_ms"]).unwrap_or(0.0),
        b(&["probe", "latency", "p50_ms"]).unwrap_or(f64::NAN)
    ));
    rows.push(ratio_at_most(probe_p99, 1.0));
    let lost = |m: &Measured, phase: &str| {
        m.f(&[phase, "lost"]).unwrap_or(0.0) + m.f(&[phase, "post_errors"]).unwrap_or(0.0)
    };
    let probe_lost = lost(ours, "probe");
    rows.push(
        Row::new(
            SCENARIO,
            &format!("lost or refused, {probe_rate:.0}/s phase"),
            "count",
        )
        .target("0")
        .opsloop(probe_lost)
        .baseline(base.map(|m| lost(m, "probe")))
        .met(Some(probe_lost == 0.0)),
    );
    let post_p99 = ours.f(&["probe", "post_latency", "p99_ms"]).unwrap_or(0.0);
    rows.push(
        row(
            format!("POST /api/v2/alerts p99, {active} active"),
            "ms",
            &["probe", "post_latency", "p99_ms"],
        )
        .target("<= 20 ms (ambition 5)")
        .met(Some(post_p99 <= 20.0))
        .note(format!(
            "single-alert posts of the {probe_rate:.0}/s phase; max {:.1} ms",
            ours.f(&["probe", "post_latency", "max_ms"]).unwrap_or(0.0)
        )),
    );
    let storm_p99 = ours.f(&["storm", "latency", "p99_ms"]).unwrap_or(0.0);
    rows.push(
        row(
            format!(
                "p99 post → delivery, {storm_rate:.0}/s for {} s",
                storm_s.as_secs()
            ),
            "ms",
            &["storm", "latency", "p99_ms"],
        )
        .target("<= 1000 ms (group timing + 1 s)")
        .met(Some(storm_p99 <= 1000.0))
        .note(format!(
            "POST p99 {:.1} vs {:.1} ms; CPU {:.0} vs {:.0} %",
            ours.f(&["storm", "post_latency", "p99_ms"]).unwrap_or(0.0),
            b(&["storm", "post_latency", "p99_ms"]).unwrap_or(f64::NAN),
            ours.f(&["storm", "resources", "cpu_percent"])
                .unwrap_or(0.0),
            b(&["storm", "resources", "cpu_percent"]).unwrap_or(f64::NAN),
        )),
    );
    let storm_lost = lost(ours, "storm");
    rows.push(
        Row::new(
            SCENARIO,
            &format!("lost or refused, {storm_rate:.0}/s storm"),
            "count",
        )
        .target("0")
        .opsloop(storm_lost)
        .baseline(base.map(|m| lost(m, "storm")))
        .met(Some(storm_lost == 0.0)),
    );
    rows.push(
        row(
            format!("bytes per active alert at {active}"),
            "B",
            &["bytes_per_alert_active"],
        )
        .note("(RSS - RSS empty) / alerts"),
    );
    rows.push(
        row(
            // The storm may already have posted more than `large`: the
            // figure is per alert posted so far.
            format!(
                "bytes per active alert at {}",
                ours.f(&["alerts_held"])
                    .map_or(large, |held| (held as u64).max(large))
            ),
            "B",
            &["bytes_per_alert_large"],
        )
        .note(format!(
            "RSS {:.1} vs {:.1} MiB",
            ours.f(&["idle_large", "rss_end_mib"]).unwrap_or(0.0),
            b(&["idle_large", "rss_end_mib"]).unwrap_or(f64::NAN)
        )),
    );
    let repeats = ours.f(&["probe", "repeats"]).unwrap_or(0.0)
        + ours.f(&["storm", "repeats"]).unwrap_or(0.0)
        + ours.f(&["repeats_while_idle"]).unwrap_or(0.0);
    rows.push(
        Row::new(SCENARIO, "alerts notified twice", "count")
            .target("0")
            .opsloop(repeats)
            .met(Some(repeats == 0.0)),
    );
    rows
}
