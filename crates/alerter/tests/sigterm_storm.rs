//! SIGTERM in the middle of an alert storm (issue 22): the real binary
//! exits within its drain bound with deliveries in flight and more waiting
//! for a slot, and after a restart every alert has reached a real local
//! webhook exactly once. On SIGTERM the alerter starts no more deliveries,
//! lets those holding a slot finish and log, and leaves the waiting ones
//! unsent and unlogged for the next start. The alerts whose post the
//! stopping process did not answer with 200 are posted again to the new
//! one, as Prometheus does.

mod common;

use std::time::{Duration, Instant};

use common::{CountingReceiver, Storm, repost, start_daemon, storm_config, terminate};
use opsloop_core::store::testing::fresh_postgres;

/// Alerts in the storm, each its own group.
const ALERTS: u64 = 2_000;
/// Alerts posted per second (one per request).
const RATE: u64 = 200;
/// SIGTERM once half the storm is posted and this many alerts reached the
/// receiver.
const TERM_AFTER: usize = 10;
/// The daemon's drain bound (`shutdown.drain_timeout_ms`).
const DRAIN: Duration = Duration::from_secs(10);
/// How long the receiver takes to answer: deliveries are in flight when
/// the signal comes.
const RECEIVER_DELAY: Duration = Duration::from_millis(100);
/// `alerter.max_in_flight_per_receiver`: with the receiver's delay, fewer
/// than the storm's rate, so notifications wait for a slot.
const BOUND: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_storm_exits_in_time_and_loses_or_repeats_nothing() {
    let db = fresh_postgres().await;
    let hook = CountingReceiver::start(RECEIVER_DELAY).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = storm_config(dir.path(), &db.url, DRAIN.as_millis(), BOUND);
    let env = [("OPSLOOP_STORM_WEBHOOK_URL", hook.url.as_str())];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    // 1. The storm: one alert per post at RATE/s, open loop.
    let mut first = start_daemon(&config, &env).await;
    let storm = Storm::start(
        http.clone(),
        format!("{}/api/v2/alerts", first.http),
        ALERTS,
        RATE,
    );

    // 2. SIGTERM mid-storm, deliveries in flight and waiting.
    let deadline = Instant::now() + Duration::from_secs(30);
    while hook.distinct() < TERM_AFTER || storm.posted() < ALERTS / 2 {
        assert!(Instant::now() < deadline, "the storm reached the receiver");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (took, status) = terminate(&mut first, DRAIN * 3).await;
    assert!(
        took <= DRAIN,
        "exited {took:?} after SIGTERM, past the {DRAIN:?} drain bound"
    );
    assert!(status.success(), "clean exit after SIGTERM: {status}");
    let by_first = hook.distinct();
    let refused = storm.refused().await;
    assert!(
        !refused.is_empty() && by_first < ALERTS as usize,
        "the signal came mid-storm ({} refused, {by_first} delivered)",
        refused.len()
    );

    // 3. Restarted, it is sent what the stopped one did not take in.
    let mut second = start_daemon(&config, &env).await;
    repost(&http, &format!("{}/api/v2/alerts", second.http), &refused).await;
    let distinct = hook
        .wait_distinct(ALERTS as usize, Duration::from_secs(90))
        .await;
    assert_eq!(
        distinct, ALERTS as usize,
        "every alert delivered after the restart"
    );
    hook.repeats_stay_within(&Default::default()).await;
    assert_eq!(hook.repeated(), Vec::<String>::new(), "each exactly once");
    assert!(
        hook.peak_requests() <= BOUND && hook.peak_connections() <= BOUND,
        "at most {BOUND} deliveries and connections at once: {} requests, {} connections",
        hook.peak_requests(),
        hook.peak_connections()
    );
    eprintln!(
        "SIGTERM after {by_first} deliveries: exited in {took:?}; {} posts refused and re-sent; \
         peak {} requests, {} connections at once ({} opened)",
        refused.len(),
        hook.peak_requests(),
        hook.peak_connections(),
        hook.connections()
    );
    let (took, status) = terminate(&mut second, DRAIN * 3).await;
    assert!(
        took <= DRAIN && status.success(),
        "second stop: {took:?} {status}"
    );
    db.cleanup().await;
}
