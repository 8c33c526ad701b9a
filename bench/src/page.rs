//! Event to page: alerts posted to the Alertmanager v2 API at a fixed rate,
//! timed until a local Slack-shaped webhook receives each one; the same
//! alerts, rate and receiver against Prometheus Alertmanager as the baseline.
//! The receiver, the two daemons and the open-loop poster are shared with
//! the `storm` scenario.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use opsloop_core::store::testing::TestDb;
use serde_json::{Value, json};

use crate::daemon::{Daemon, Launch, free_addr};
use crate::env::Env;
use crate::load::{LatencySummary, histogram};
use crate::report::Row;

pub(crate) const MARK: &str = "bench-alert-";

#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct PageArgs {
    /// Alerts per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of posting.
    #[arg(long)]
    pub duration: Option<u64>,
}

/// What a receiver saw: the first arrival of every alert number, and how
/// many times any alert was named (more than the distinct count = repeats).
#[derive(Default)]
struct Seen {
    first: HashMap<u64, Instant>,
    marks: u64,
}

type Arrivals = Arc<Mutex<Seen>>;

/// Records the first arrival of every `bench-alert-<n>` named in a body.
async fn receive(State(arrivals): State<Arrivals>, body: axum::body::Bytes) -> &'static str {
    let now = Instant::now();
    let text = String::from_utf8_lossy(&body);
    let mut seen = arrivals.lock().expect("arrivals lock");
    let mut named = std::collections::HashSet::new();
    for (index, _) in text.match_indices(MARK) {
        let digits: String = text[index + MARK.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse::<u64>() {
            named.insert(n);
        }
    }
    // A body names its alert several times (title, labels): count each
    // alert once per notification.
    seen.marks += named.len() as u64;
    for n in named {
        seen.first.entry(n).or_insert(now);
    }
    "ok"
}

/// A Slack-shaped webhook on 127.0.0.1 (answers 200 "ok" like Slack).
pub(crate) struct Receiver {
    pub addr: SocketAddr,
    arrivals: Arrivals,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let arrivals: Arrivals = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(arrivals.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            arrivals,
            task,
        })
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub(crate) fn reset(&self) {
        let mut seen = self.arrivals.lock().expect("arrivals lock");
        seen.first.clear();
        seen.marks = 0;
    }

    /// Distinct alerts received so far.
    pub(crate) fn distinct(&self) -> u64 {
        self.arrivals.lock().expect("arrivals lock").first.len() as u64
    }

    /// Notifications of an alert beyond its first (since the last reset).
    pub(crate) fn repeats(&self) -> u64 {
        let seen = self.arrivals.lock().expect("arrivals lock");
        seen.marks.saturating_sub(seen.first.len() as u64)
    }

    /// Waits until `n` distinct alerts arrived, at most `within`; returns
    /// how many did.
    pub(crate) async fn wait_distinct(&self, n: u64, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let got = self.distinct();
            if got >= n || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The body of one posted alert, `bench-alert-<id>` (its own group under
/// `group_by: [alertname]`), ending `ends_in` from now when given.
pub(crate) fn alert_json(id: u64, ends_in: Option<Duration>) -> Value {
    let now = chrono::Utc::now();
    let mut alert = json!({
        "labels": {"alertname": format!("{MARK}{id}"), "severity": "warning", "service": "bench"},
        "annotations": {"summary": format!("{MARK}{id} fired")},
        "startsAt": now.to_rfc3339(),
    });
    if let Some(ends) = ends_in.and_then(|d| chrono::Duration::from_std(d).ok()) {
        alert["endsAt"] = json!((now + ends).to_rfc3339());
    }
    alert
}

/// Posts `rate`/s alerts (one per request) for `duration` to `http`'s
/// `/api/v2/alerts` and measures due time → arrival at the receiver, and
/// due time → the post's answer; alert numbers start at `offset`.
pub(crate) async fn drive(
    http: SocketAddr,
    receiver: &Receiver,
    rate: f64,
    duration: Duration,
    offset: u64,
    ends_in: Option<Duration>,
) -> anyhow::Result<Value> {
    receiver.reset();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = format!("http://{http}/api/v2/alerts");
    let total = (rate * duration.as_secs_f64()).floor().max(1.0) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut due = Vec::with_capacity(total as usize);
    let mut posts = tokio::task::JoinSet::new();
    let mut post_hist = histogram();
    let mut post_errors = 0u64;
    let mut first_error = None;
    let mut tally = |done: Result<(Result<(), String>, u64), tokio::task::JoinError>| match done {
        Ok((Ok(()), us)) => {
            let _ = post_hist.record(us.max(1));
        }
        Ok((Err(e), _)) => {
            post_errors += 1;
            first_error.get_or_insert(e);
        }
        Err(e) => {
            post_errors += 1;
            first_error.get_or_insert(e.to_string());
        }
    };
    for i in 0..total {
        let at = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(at.into()).await;
        due.push(at);
        let body = json!([alert_json(offset + i, ends_in)]);
        let client = client.clone();
        let url = url.clone();
        posts.spawn(async move {
            let result = match client.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("POST answered {}", r.status())),
                Err(e) => Err(format!("POST failed: {e}")),
            };
            (
                result,
                u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX),
            )
        });
        while let Some(done) = posts.try_join_next() {
            tally(done);
        }
    }
    while let Some(done) = posts.join_next().await {
        tally(done);
    }
    let posting = start.elapsed();
    // Let the last pages arrive.
    receiver.wait_distinct(total, Duration::from_secs(10)).await;
    let arrivals = receiver
        .arrivals
        .lock()
        .expect("arrivals lock")
        .first
        .clone();
    let mut hist = histogram();
    let mut received = 0u64;
    for (i, at) in due.iter().enumerate() {
        if let Some(got) = arrivals.get(&(offset + i as u64)) {
            received += 1;
            let us = got.saturating_duration_since(*at).as_micros().max(1);
            let _ = hist.record(u64::try_from(us).unwrap_or(u64::MAX));
        }
    }
    let summary = LatencySummary::of(&hist, received, post_errors, duration);
    let posts_ok = post_hist.len();
    Ok(json!({
        "sent": total,
        "received": received,
        "lost": total - received,
        "repeats": receiver.repeats(),
        "post_errors": post_errors,
        "first_error": first_error,
        "latency": summary,
        "post_latency": LatencySummary::of(&post_hist, posts_ok, post_errors, posting),
    }))
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file())
    })
}

/// The Prometheus Alertmanager binary, when installed.
pub(crate) fn alertmanager_binary() -> Option<PathBuf> {
    which("prometheus-alertmanager").or_else(|| which("alertmanager"))
}

/// opsloop's alerter on its own fresh database, delivering every alert to
/// `hook` (route `group_by [alertname]`, `group_wait 0s`, `group_interval
/// 1s`, `repeat_interval 4h`, Slack receiver without pacing).
pub(crate) struct AlerterSide {
    pub daemon: Daemon,
    pub http: SocketAddr,
    db: TestDb,
}

impl AlerterSide {
    pub(crate) async fn start(env: &Env, dir: &Path, hook: &str) -> anyhow::Result<Self> {
        let db = env.database().await;
        match Self::launch(env, dir, hook, &db).await {
            Ok((daemon, http)) => Ok(Self { daemon, http, db }),
            Err(error) => {
                db.cleanup().await;
                Err(error)
            }
        }
    }

    async fn launch(
        env: &Env,
        dir: &Path,
        hook: &str,
        db: &TestDb,
    ) -> anyhow::Result<(Daemon, SocketAddr)> {
        let grpc = free_addr()?;
        let http = free_addr()?;
        let config = dir.join("alerter.toml");
        std::fs::write(
            &config,
            "[alerter]\nlease_ttl_ms = 0\nlocal_output = \"never\"\ninhibit_rules = []\n\
             [alerter.route]\nreceiver = \"bench-slack\"\ngroup_by = [\"alertname\"]\n\
             group_wait = \"0s\"\ngroup_interval = \"1s\"\nrepeat_interval = \"4h\"\n\
             [[alerter.receivers]]\nname = \"bench-slack\"\nkind = \"slack\"\n\
             secret = \"slack_webhook_url\"\nmin_interval_ms = 0\nsend_resolved = false\n",
        )?;
        let mut daemon_env = env.daemon_env(&db.url, 10);
        daemon_env.push(("OPSLOOP__ALERTER__GRPC_ADDR".into(), grpc.to_string()));
        daemon_env.push(("OPSLOOP__ALERTER__HTTP_ADDR".into(), http.to_string()));
        daemon_env.push(("OPSLOOP_SLACK_WEBHOOK_URL".into(), hook.to_owned()));
        let binary = env.binary("opsloop-alerter");
        let daemon = Daemon::start(Launch {
            binary: &binary,
            name: "opsloop-alerter",
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
        Ok((daemon, http))
    }

    /// Stops the daemon (SIGTERM) and drops its database.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let stopped = self.daemon.stop().await;
        self.db.cleanup().await;
        stopped
    }
}

/// Prometheus Alertmanager with the same route and a Slack receiver at
/// `hook`, its data under `dir`; returns the daemon and its HTTP address.
pub(crate) async fn start_alertmanager(
    env: &Env,
    binary: &Path,
    dir: &Path,
    hook: &str,
) -> anyhow::Result<(Daemon, SocketAddr)> {
    let http = free_addr()?;
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        format!(
            "route:\n  receiver: slack\n  group_by: [alertname]\n  group_wait: 0s\n  \
             group_interval: 1s\n  repeat_interval: 4h\nreceivers:\n- name: slack\n  \
             slack_configs:\n  - api_url: '{hook}'\n    channel: '#bench'\n    send_resolved: false\n"
        ),
    )?;
    let storage = dir.join("alertmanager-data");
    std::fs::create_dir_all(&storage)?;
    let am = Daemon::start(Launch {
        binary,
        name: "alertmanager",
        env: vec![],
        config: None,
        args: vec![
            format!("--config.file={}", config.display()),
            format!("--storage.path={}", storage.display()),
            format!("--web.listen-address={http}"),
            "--cluster.listen-address=".into(),
        ],
        http,
        grpc: None,
        workdir: env.scratch(),
        ready_path: "/-/ready",
        ready_timeout: Duration::from_secs(30),
    })
    .await?;
    Ok((am, http))
}

pub(crate) async fn event_to_page(env: &Env, args: PageArgs) -> anyhow::Result<(Vec<Row>, Value)> {
    let rate = args.rate.unwrap_or(if env.smoke { 20.0 } else { 100.0 });
    let duration = Duration::from_secs(args.duration.unwrap_or(if env.smoke { 1 } else { 60 }));
    eprintln!("event-to-page: {rate}/s for {duration:?}");
    let receiver = Receiver::start().await?;
    let hook = receiver.url();
    let dir = env.scratch().join("page");
    std::fs::create_dir_all(&dir)?;

    // opsloop's alerter.
    let alerter = AlerterSide::start(env, &dir, &hook).await?;
    let sampler = alerter.daemon.sampler();
    let result = drive(alerter.http, &receiver, rate, duration, 0, None).await;
    let usage = sampler.finish().await;
    let log = alerter.daemon.log.clone();
    alerter.stop().await?;
    let mut ours =
        result.with_context(|| format!("alerter log:\n{}", crate::daemon::tail(&log)))?;
    ours["alerter_resources"] = serde_json::to_value(usage)?;

    // Baseline: Prometheus Alertmanager, same alerts, rate and receiver.
    let (baseline, note) = match alertmanager_binary() {
        Some(binary) => {
            let (am, http) = start_alertmanager(env, &binary, &dir, &hook).await?;
            let result = drive(http, &receiver, rate, duration, 1 << 32, None).await;
            am.stop().await?;
            (Some(result?), String::new())
        }
        None => (None, env.missing_baseline("prometheus-alertmanager")?),
    };
    let p = |v: &Value, q: &str| v["latency"][q].as_f64();
    let lost = ours["lost"].as_u64().unwrap_or(0);
    let ours_p99 = p(&ours, "p99_ms");
    let base_p99 = baseline.as_ref().and_then(|b| p(b, "p99_ms"));
    let mut rows = vec![
        Row::new("event-to-page", "p50 alert → receiver", "ms")
            .opsloop(p(&ours, "p50_ms").unwrap_or(0.0))
            .baseline(baseline.as_ref().and_then(|b| p(b, "p50_ms")))
            .note(format!(
                "{rate:.0} alerts/s for {}s, group_wait 0 {note}",
                duration.as_secs()
            )),
    ];
    let row = Row::new("event-to-page", "p99 alert → receiver", "ms")
        .target("<= Alertmanager")
        .opsloop(ours_p99.unwrap_or(0.0))
        .baseline(base_p99);
    let met = row.ratio.map(|r| r <= 1.0);
    rows.push(row.met(met));
    rows.push(
        Row::new("event-to-page", "alerts lost", "count")
            .target("0")
            .opsloop(lost as f64)
            .baseline(baseline.as_ref().and_then(|b| b["lost"].as_f64()))
            .met(Some(lost == 0)),
    );
    if ours["received"].as_u64().unwrap_or(0) == 0 {
        bail!("the receiver got no page from the alerter: {ours}");
    }
    Ok((
        rows,
        json!({"opsloop": ours, "alertmanager": baseline, "rate": rate}),
    ))
}
