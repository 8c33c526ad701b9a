//! Event to page: alerts posted to the Alertmanager v2 API at a fixed rate,
//! timed until a local Slack-shaped webhook receives each one; the same
//! alerts, rate and receiver against Prometheus Alertmanager as the baseline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};

use crate::daemon::{Daemon, Launch, free_addr};
use crate::env::Env;
use crate::load::{LatencySummary, histogram};
use crate::report::Row;

const MARK: &str = "bench-alert-";

#[derive(clap::Args, Debug, Clone, Default)]
pub struct PageArgs {
    /// Alerts per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of posting.
    #[arg(long)]
    pub duration: Option<u64>,
}

type Arrivals = Arc<Mutex<HashMap<u64, Instant>>>;

/// Records the first arrival of every `bench-alert-<n>` named in a body.
async fn receive(State(arrivals): State<Arrivals>, body: axum::body::Bytes) -> &'static str {
    let now = Instant::now();
    let text = String::from_utf8_lossy(&body);
    let mut seen = arrivals.lock().expect("arrivals lock");
    for (index, _) in text.match_indices(MARK) {
        let digits: String = text[index + MARK.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse::<u64>() {
            seen.entry(n).or_insert(now);
        }
    }
    "ok"
}

/// A Slack-shaped webhook on 127.0.0.1 (answers 200 "ok" like Slack).
struct Receiver {
    addr: SocketAddr,
    arrivals: Arrivals,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> anyhow::Result<Self> {
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

    fn reset(&self) {
        self.arrivals.lock().expect("arrivals lock").clear();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Posts `rate`/s alerts for `duration` to `http`'s `/api/v2/alerts` and
/// measures due time → arrival at the receiver.
async fn drive(
    http: SocketAddr,
    receiver: &Receiver,
    rate: f64,
    duration: Duration,
    offset: u64,
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
    for i in 0..total {
        let at = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(at.into()).await;
        due.push(at);
        let id = offset + i;
        let body = json!([{
            "labels": {"alertname": format!("{MARK}{id}"), "severity": "warning", "service": "bench"},
            "annotations": {"summary": format!("{MARK}{id} fired")},
            "startsAt": chrono::Utc::now().to_rfc3339(),
        }]);
        let client = client.clone();
        let url = url.clone();
        posts.spawn(async move {
            match client.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("POST answered {}", r.status())),
                Err(e) => Err(format!("POST failed: {e}")),
            }
        });
        while posts.try_join_next().is_some() {}
    }
    let mut post_errors = 0u64;
    let mut first_error = None;
    while let Some(done) = posts.join_next().await {
        if let Ok(Err(e)) = done {
            post_errors += 1;
            first_error.get_or_insert(e);
        }
    }
    // Let the last pages arrive.
    let grace = Instant::now() + Duration::from_secs(10);
    while Instant::now() < grace {
        if receiver.arrivals.lock().expect("arrivals lock").len() as u64 >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrivals = receiver.arrivals.lock().expect("arrivals lock").clone();
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
    Ok(json!({
        "sent": total,
        "received": received,
        "lost": total - received,
        "post_errors": post_errors,
        "first_error": first_error,
        "latency": summary,
    }))
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file())
    })
}

pub async fn event_to_page(env: &Env, args: PageArgs) -> anyhow::Result<(Vec<Row>, Value)> {
    let rate = args.rate.unwrap_or(if env.smoke { 20.0 } else { 100.0 });
    let duration = Duration::from_secs(args.duration.unwrap_or(if env.smoke { 1 } else { 60 }));
    eprintln!("event-to-page: {rate}/s for {duration:?}");
    let receiver = Receiver::start().await?;
    let hook = format!("http://{}/hook", receiver.addr);
    let dir = env.scratch().join("page");
    std::fs::create_dir_all(&dir)?;

    // opsloop's alerter.
    let db = env.database().await;
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
    daemon_env.push(("OPSLOOP_SLACK_WEBHOOK_URL".into(), hook.clone()));
    let binary = env.binary("opsloop-alerter");
    let ours = async {
        let alerter = Daemon::start(Launch {
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
        let sampler = alerter.sampler();
        let result = drive(http, &receiver, rate, duration, 0).await;
        let usage = sampler.finish().await;
        let log = alerter.log.clone();
        alerter.stop().await?;
        let mut result =
            result.with_context(|| format!("alerter log:\n{}", crate::daemon::tail(&log)))?;
        result["alerter_resources"] = serde_json::to_value(usage)?;
        anyhow::Ok(result)
    }
    .await;
    db.cleanup().await;
    let ours = ours?;

    // Baseline: Prometheus Alertmanager, same alerts, rate and receiver.
    let alertmanager = which("prometheus-alertmanager").or_else(|| which("alertmanager"));
    let (baseline, note) = match alertmanager {
        Some(binary) => {
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
                binary: &binary,
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
            let result = drive(http, &receiver, rate, duration, 1 << 32).await;
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
