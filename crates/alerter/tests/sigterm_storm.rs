//! SIGTERM in the middle of an alert storm (issue 22): the real binary
//! exits within its drain bound with deliveries in flight, and after a
//! restart every alert has reached a real local webhook exactly once. The
//! alerts whose post the stopping process did not answer with 200 are posted
//! again to the new one, as Prometheus does.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use opsloop_core::store::testing::fresh_postgres;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Alerts in the storm, each its own group.
const ALERTS: u64 = 2_000;
/// Alerts posted per second (one per request).
const RATE: u64 = 400;
/// SIGTERM once half the storm is posted and this many alerts reached the
/// receiver.
const TERM_AFTER: usize = 50;
/// The daemon's drain bound (`shutdown.drain_timeout_ms`).
const DRAIN: Duration = Duration::from_secs(10);
/// How long the receiver takes to answer: deliveries are in flight when
/// the signal comes.
const RECEIVER_DELAY: Duration = Duration::from_millis(100);

/// Deliveries per alert name, counted when the receiver answers 200.
type Counts = Arc<Mutex<HashMap<String, u32>>>;

async fn receive(State(counts): State<Counts>, body: axum::body::Bytes) -> &'static str {
    tokio::time::sleep(RECEIVER_DELAY).await;
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut counts = counts.lock().expect("counts");
    for alert in json["alerts"].as_array().into_iter().flatten() {
        if let Some(name) = alert["labels"]["alertname"].as_str() {
            *counts.entry(name.to_owned()).or_default() += 1;
        }
    }
    "ok"
}

/// A webhook receiver on 127.0.0.1:0 recording every alert it is told of.
async fn receiver() -> (String, Counts) {
    let counts: Counts = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(counts.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.expect("receiver serves") });
    (format!("http://{addr}/hook"), counts)
}

fn delivered(counts: &Counts) -> usize {
    counts.lock().expect("counts").len()
}

struct Daemon {
    child: Child,
    http: String,
}

async fn start(config: &std::path::Path, hook: &str) -> Daemon {
    let mut child = Command::new(env!("CARGO_BIN_EXE_opsloop-alerter"))
        .arg("--config")
        .arg(config)
        .env("OPSLOOP_STORM_WEBHOOK_URL", hook)
        .env_remove("OPSLOOP_ADMIN_TOKEN")
        .env_remove("OPSLOOP_AGENT_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the alerter binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let pattern = regex::Regex::new(r#""http":"([^"]+)""#).expect("regex");
    let http = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if line.contains("alerter started")
                && let Some(captures) = pattern.captures(&line)
            {
                return captures[1].to_owned();
            }
        }
        panic!("the alerter exited before its start line");
    })
    .await
    .expect("start line within 60 s");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Daemon {
        child,
        http: format!("http://{http}/api/v2/alerts"),
    }
}

/// SIGTERM; returns how long the process took to exit, and its status.
async fn terminate(daemon: &mut Daemon) -> (Duration, std::process::ExitStatus) {
    let pid = daemon.child.id().expect("pid");
    let sent = Instant::now();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await
        .expect("kill -TERM");
    assert!(status.success(), "kill -TERM {pid}");
    let exited = tokio::time::timeout(DRAIN * 3, daemon.child.wait())
        .await
        .expect("the alerter exits after SIGTERM")
        .expect("wait");
    (sent.elapsed(), exited)
}

fn alert(i: u64) -> Value {
    json!({"labels": {"alertname": format!("Storm{i}"), "service": "storm"},
           "annotations": {"summary": "SIGTERM storm"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_storm_exits_in_time_and_loses_or_repeats_nothing() {
    let db = fresh_postgres().await;
    let (hook, counts) = receiver().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("opsloop.toml");
    std::fs::write(
        &config,
        format!(
            r#"
environment = "sigterm-storm"
[database]
url = "{db}"
[telemetry]
log_format = "json"
log_level = "info"
[audit]
log_path = "{audit}"
[shutdown]
drain_timeout_ms = {drain}
[alerter]
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
tick_ms = 100
lease_ttl_ms = 2000
[alerter.route]
receiver = "hook"
group_by = ["alertname"]
group_wait = "0s"
group_interval = "1s"
repeat_interval = "4h"
[[alerter.receivers]]
name = "hook"
kind = "webhook"
secret = "storm_webhook_url"
min_interval_ms = 0
"#,
            db = db.url,
            audit = dir.path().join("audit.jsonl").display(),
            drain = DRAIN.as_millis(),
        ),
    )
    .expect("config");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");

    // 1. The storm: one alert per post at RATE/s, open loop.
    let mut first = start(&config, &hook).await;
    let accepted: Arc<Mutex<Vec<bool>>> = Arc::new(Mutex::new(vec![false; ALERTS as usize]));
    let posted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let storm = {
        let (http, url, accepted) = (http.clone(), first.http.clone(), accepted.clone());
        let posted = posted.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut posts = tokio::task::JoinSet::new();
            for i in 0..ALERTS {
                tokio::time::sleep_until(started + Duration::from_millis(i * 1000 / RATE)).await;
                posted.store(i + 1, std::sync::atomic::Ordering::Relaxed);
                let (http, url, accepted) = (http.clone(), url.clone(), accepted.clone());
                posts.spawn(async move {
                    let ok = matches!(
                        http.post(&url).json(&json!([alert(i)])).send().await,
                        Ok(r) if r.status() == 200
                    );
                    accepted.lock().expect("accepted")[i as usize] = ok;
                });
                while posts.try_join_next().is_some() {}
            }
            while posts.join_next().await.is_some() {}
        })
    };

    // 2. SIGTERM mid-storm, deliveries in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered(&counts) < TERM_AFTER
        || posted.load(std::sync::atomic::Ordering::Relaxed) < ALERTS / 2
    {
        assert!(Instant::now() < deadline, "the storm reached the receiver");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (took, status) = terminate(&mut first).await;
    assert!(
        took <= DRAIN,
        "exited {took:?} after SIGTERM, past the {DRAIN:?} drain bound"
    );
    assert!(status.success(), "clean exit after SIGTERM: {status}");
    let by_first = delivered(&counts);
    storm.await.expect("storm sender");
    let refused: Vec<u64> = {
        let accepted = accepted.lock().expect("accepted");
        (0..ALERTS).filter(|i| !accepted[*i as usize]).collect()
    };
    assert!(
        !refused.is_empty() && by_first < ALERTS as usize,
        "the signal came mid-storm ({} refused, {by_first} delivered)",
        refused.len()
    );

    // 3. Restarted, it is sent what the stopped one did not take in.
    let mut second = start(&config, &hook).await;
    for chunk in refused.chunks(200) {
        let body: Vec<Value> = chunk.iter().map(|i| alert(*i)).collect();
        let response = http
            .post(&second.http)
            .json(&body)
            .send()
            .await
            .expect("re-post");
        assert_eq!(response.status(), 200, "re-post to the restarted alerter");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered(&counts) < ALERTS as usize {
        assert!(
            Instant::now() < deadline,
            "only {} of {ALERTS} alerts delivered after the restart",
            delivered(&counts)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two more group intervals: a repeat would show up by now.
    let quiet = Instant::now() + Duration::from_millis(2_500);
    while Instant::now() < quiet {
        {
            let counts = counts.lock().expect("counts");
            let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
            assert!(twice.is_empty(), "delivered more than once: {twice:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counts = counts.lock().expect("counts").clone();
    assert_eq!(counts.len(), ALERTS as usize, "every alert delivered");
    assert!(counts.values().all(|n| *n == 1), "each exactly once");
    eprintln!(
        "SIGTERM after {by_first} deliveries: exited in {took:?}; {} posts refused and re-sent",
        refused.len()
    );
    let (took, status) = terminate(&mut second).await;
    assert!(
        took <= DRAIN && status.success(),
        "second stop: {took:?} {status}"
    );
    db.cleanup().await;
}
