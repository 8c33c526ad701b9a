//! The load engine: closed-loop (saturation) and open-loop (fixed arrival
//! rate) drivers recording latency into HDR histograms. Open-loop latency is
//! measured from each request's *intended* send time, so a stalled server
//! shows up as latency instead of as fewer requests (coordinated omission).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// Latencies are recorded in microseconds, 1 µs .. 120 s, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// What one driver run measured.
pub(crate) struct Outcome {
    pub hist: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub first_error: Option<String>,
}

impl Outcome {
    fn empty() -> Self {
        Self {
            hist: histogram(),
            ok: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            first_error: None,
        }
    }

    fn merge(&mut self, other: Outcome) {
        let _ = self.hist.add(&other.hist);
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub(crate) fn summary(&self) -> LatencySummary {
        LatencySummary::of(&self.hist, self.ok, self.errors, self.elapsed)
    }
}

/// The figures every scenario reports for one operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LatencySummary {
    pub ok: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub throughput_per_s: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub(crate) fn of(hist: &Histogram<u64>, ok: u64, errors: u64, elapsed: Duration) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        let secs = elapsed.as_secs_f64();
        Self {
            ok,
            errors,
            elapsed_s: secs,
            throughput_per_s: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            mean_ms: hist.mean() / 1000.0,
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p90_ms: ms(hist.value_at_quantile(0.90)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// `clients.len()` clients each send a request as soon as their previous one
/// answered, for `duration`: the throughput at saturation.
pub(crate) async fn closed_loop<C, F, Fut>(clients: Vec<C>, duration: Duration, op: F) -> Outcome
where
    C: Send + 'static,
    F: Fn(&mut C, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (index, mut client) in clients.into_iter().enumerate() {
        let op = op.clone();
        tasks.spawn(async move {
            let mut out = Outcome::empty();
            let mut seq = (index as u64) << 32;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let result = op(&mut client, seq).await;
                seq += 1;
                match result {
                    Ok(()) => {
                        out.ok += 1;
                        let _ = out.hist.record(micros(t0.elapsed()));
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert(e);
                    }
                }
            }
            out
        });
    }
    let mut total = Outcome::empty();
    while let Some(done) = tasks.join_next().await {
        if let Ok(out) = done {
            total.merge(out);
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// Sends requests at a fixed `rate` per second for `duration`, whatever the
/// server's pace, with at most `max_in_flight` outstanding; each latency
/// counts from the moment the request was due.
pub(crate) async fn open_loop<C, F, Fut>(
    clients: Vec<C>,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
    op: F,
) -> Outcome
where
    C: Clone + Send + 'static,
    F: Fn(C, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let shared = Arc::new(Mutex::new(Outcome::empty()));
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let total = (rate * duration.as_secs_f64()).floor().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let client = clients[(i as usize) % clients.len()].clone();
        let op = op.clone();
        let shared = shared.clone();
        tasks.spawn(async move {
            let result = op(client, i).await;
            let latency = micros(due.elapsed());
            drop(permit);
            let mut out = shared.lock().expect("outcome lock");
            match result {
                Ok(()) => {
                    out.ok += 1;
                    let _ = out.hist.record(latency);
                }
                Err(e) => {
                    out.errors += 1;
                    out.first_error.get_or_insert(e);
                }
            }
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    let mut out = std::mem::replace(&mut *shared.lock().expect("outcome lock"), Outcome::empty());
    out.elapsed = elapsed;
    out
}
