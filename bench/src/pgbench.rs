//! Baselines with `pgbench`: the same SQL the api issues, run by the same
//! number of clients against a fresh database of the same schema. Latencies
//! come from pgbench's per-transaction log (`-l`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::Command;

use crate::load::{LatencySummary, histogram};

/// `pgbench` on the PATH, if installed.
pub(crate) fn locate() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("pgbench"))
            .find(|candidate| candidate.is_file())
    })
}

/// How long, or how many transactions per client.
pub(crate) enum Length {
    Duration(Duration),
    Transactions(u64),
}

/// What one pgbench run measured.
pub(crate) struct Run {
    pub tps: f64,
    pub latency: LatencySummary,
    pub wall: Duration,
    pub command: String,
}

pub(crate) async fn run(
    pgbench: &Path,
    url: &str,
    script: &str,
    clients: u32,
    rate: Option<f64>,
    length: Length,
    workdir: &Path,
) -> anyhow::Result<Run> {
    let dir = workdir.join(format!("pgbench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let script_path = dir.join("script.sql");
    std::fs::write(&script_path, script)?;
    let jobs = clients.clamp(1, 2);
    let mut args: Vec<String> = vec![
        "-n".into(),
        "-M".into(),
        "prepared".into(),
        "-c".into(),
        clients.to_string(),
        "-j".into(),
        jobs.to_string(),
        "-l".into(),
        format!("--log-prefix={}", dir.join("txn").display()),
        "-f".into(),
        script_path.display().to_string(),
    ];
    if let Some(rate) = rate {
        // Throttled: pgbench schedules transactions (Poisson) and logs each
        // one's lag behind its schedule, which we add to its latency.
        args.extend(["-R".into(), format!("{rate:.0}")]);
    }
    match length {
        Length::Duration(d) => args.extend(["-T".into(), d.as_secs().max(1).to_string()]),
        Length::Transactions(t) => args.extend(["-t".into(), t.max(1).to_string()]),
    }
    args.push(url.to_owned());
    let command = format!("pgbench {}", args.join(" "));
    let started = Instant::now();
    let output = Command::new(pgbench)
        .args(&args)
        .current_dir(&dir)
        .output()
        .await
        .context("running pgbench")?;
    let wall = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("pgbench failed ({}):\n{stdout}\n{stderr}", output.status);
    }
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no tps line in pgbench output:\n{stdout}"))?;
    let mut hist = histogram();
    let mut ok = 0u64;
    let mut failed = 0u64;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("txn"))
        {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            // client_id transaction_no time script_no time_epoch time_us [schedule_lag]
            let fields: Vec<&str> = line.split_whitespace().collect();
            let lag = fields
                .get(6)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            match fields.get(2).map(|v| v.parse::<u64>()) {
                Some(Ok(us)) => {
                    ok += 1;
                    let _ = hist.record((us + lag).max(1));
                }
                _ => failed += 1,
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut latency = LatencySummary::of(&hist, ok, failed, wall);
    latency.throughput_per_s = tps;
    Ok(Run {
        tps,
        latency,
        wall,
        command,
    })
}
