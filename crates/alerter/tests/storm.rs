//! The alerter in an alert storm: with 5,000 active groups, a post costs
//! about what it costs on an empty alerter (the flush loop visits only due
//! groups, a post touches only its own). Measured as a ratio of medians
//! inside one test, generous, never as an absolute time. And a storm of
//! distinct groups against the real binary never has more deliveries or
//! connections open to a receiver than `alerter.max_in_flight_per_receiver`,
//! and every group arrives exactly once.

mod common;

use std::time::{Duration, Instant};

use common::{CountingReceiver, LocalReceiver, spawn_app, start_daemon, stop, storm_config};
use opsloop_core::config::BusSettings;
use opsloop_core::store::testing::fresh_postgres;
use serde_json::json;

const ACTIVE_GROUPS: usize = 5_000;
const SAMPLES: usize = 40;
/// How much slower the median post may be with 5,000 active groups.
const MAX_RATIO: f64 = 6.0;

/// Posts one new alert (a new group, so also a flush and a delivery);
/// returns how long the answer took.
async fn probe(http: &reqwest::Client, url: &str, name: String) -> Duration {
    let body = json!([{"labels": {"alertname": name, "service": "probe"}}]);
    let started = Instant::now();
    let response = http.post(url).json(&body).send().await.expect("post");
    let took = started.elapsed();
    assert_eq!(response.status(), 200, "probe post");
    took
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

struct Side {
    app: common::Running,
    hook: LocalReceiver,
    url: String,
    db: opsloop_core::store::testing::TestDb,
}

async fn side() -> Side {
    let db = fresh_postgres().await;
    let hook = LocalReceiver::start().await;
    // Inserted under [alerter.route]: one group per alertname.
    let receivers = r#"group_by = ["alertname"]
repeat_interval = "4h"
[[alerter.receivers]]
name = "slack"
kind = "webhook"
secret = "storm_webhook_url"
"#;
    let app = spawn_app(
        &db,
        BusSettings::default(),
        receivers,
        vec![("OPSLOOP_STORM_WEBHOOK_URL".into(), hook.url())],
    )
    .await;
    let url = format!("{}/api/v2/alerts", app.http);
    Side { app, hook, url, db }
}

/// Two alerters side by side, one empty and one holding 5,000 active
/// groups; probes alternate between them, so whatever else loads the
/// machine loads both alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_active_groups_do_not_slow_a_post() {
    let empty = side().await;
    let loaded = side().await;
    let http = reqwest::Client::new();

    // 5,000 groups, each notified once (group_wait 0s).
    for batch in 0..ACTIVE_GROUPS / 500 {
        let alerts: Vec<serde_json::Value> = (0..500)
            .map(|i| json!({"labels": {"alertname": format!("Storm{batch}x{i}"), "service": "storm"}}))
            .collect();
        let response = http
            .post(&loaded.url)
            .json(&alerts)
            .send()
            .await
            .expect("post batch");
        assert_eq!(response.status(), 200, "batch {batch}");
    }
    // Every group notified, each once. (A cold CI run once saw about 50
    // of 5,000 groups twice. Re-run on that code under load: 6 groups with
    // two 'sent' log rows, every row 1 attempt, so no timeout and no retry:
    // a tick checked a group's in-flight mark after releasing the
    // dispatcher, and a delivery that finished in between was started again
    // from the stale flush. Queueing and finishing now happen under the
    // dispatcher lock.)
    let distinct_groups = || -> usize {
        loaded
            .hook
            .accepted()
            .iter()
            .filter_map(|body| {
                let text = serde_json::to_string(body).ok()?;
                let rest = text.split("Storm").nth(1)?;
                Some(
                    rest.split(|c: char| !c.is_ascii_alphanumeric())
                        .next()?
                        .to_owned(),
                )
            })
            .collect::<std::collections::HashSet<String>>()
            .len()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while distinct_groups() < ACTIVE_GROUPS && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(distinct_groups(), ACTIVE_GROUPS, "every group notified");
    let settled = loaded.hook.accepted().len();
    assert_eq!(settled, ACTIVE_GROUPS, "no group notified twice");

    // Warm both, then alternate.
    for i in 0..5 {
        probe(&http, &empty.url, format!("Warm{i}")).await;
        probe(&http, &loaded.url, format!("Warm{i}")).await;
    }
    let (mut on_empty, mut on_loaded) = (Vec::new(), Vec::new());
    for i in 0..SAMPLES {
        on_empty.push(probe(&http, &empty.url, format!("Probe{i}")).await);
        on_loaded.push(probe(&http, &loaded.url, format!("Probe{i}")).await);
        // Let the flush loops run between posts, as with real senders.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (empty_median, loaded_median) = (median(on_empty), median(on_loaded));
    let ratio = loaded_median.as_secs_f64() / empty_median.as_secs_f64().max(1e-4);
    eprintln!(
        "median post: empty {empty_median:?}, with {ACTIVE_GROUPS} active groups {loaded_median:?} (x{ratio:.2})"
    );
    assert!(
        ratio <= MAX_RATIO,
        "a post with {ACTIVE_GROUPS} active groups took {loaded_median:?}, {ratio:.1}x the empty alerter's {empty_median:?}"
    );

    // Nothing was delivered twice while the groups sat idle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expected = settled + 5 + SAMPLES;
    assert_eq!(loaded.hook.accepted().len(), expected, "no repeats");
    assert_eq!(empty.hook.accepted().len(), 5 + SAMPLES, "no repeats");
    for side in [empty, loaded] {
        stop(side.app).await;
        side.db.cleanup().await;
    }
}

/// Groups in the bounded storm, and its delivery bound.
const BOUNDED_GROUPS: u64 = 2_000;
const BOUND: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_groups_stays_within_the_delivery_bound() {
    let db = fresh_postgres().await;
    // A receiver slow enough that the alerter would want hundreds of
    // deliveries on the wire at once.
    let hook = CountingReceiver::start(Duration::from_millis(5)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = storm_config(dir.path(), &db.url, 10_000, BOUND);
    let mut daemon =
        start_daemon(&config, &[("OPSLOOP_STORM_WEBHOOK_URL", hook.url.as_str())]).await;
    let url = format!("{}/api/v2/alerts", daemon.http);
    let http = reqwest::Client::new();
    let all: Vec<u64> = (0..BOUNDED_GROUPS).collect();
    common::repost(&http, &url, &all).await;
    let distinct = hook
        .wait_distinct(BOUNDED_GROUPS as usize, Duration::from_secs(120))
        .await;
    assert_eq!(distinct, BOUNDED_GROUPS as usize, "every group notified");
    hook.repeats_stay_within(&Default::default()).await;
    assert_eq!(
        hook.repeated(),
        Vec::<String>::new(),
        "each group exactly once"
    );
    eprintln!(
        "{BOUNDED_GROUPS} groups, bound {BOUND}: peak {} requests and {} connections at once, {} connections opened",
        hook.peak_requests(),
        hook.peak_connections(),
        hook.connections()
    );
    assert!(
        hook.peak_requests() <= BOUND,
        "{} deliveries at once, bound {BOUND}",
        hook.peak_requests()
    );
    assert!(
        hook.peak_connections() <= BOUND,
        "{} connections at once, bound {BOUND}",
        hook.peak_connections()
    );
    let (_, status) = common::terminate(&mut daemon, Duration::from_secs(30)).await;
    assert!(status.success(), "clean exit: {status}");
    db.cleanup().await;
}
