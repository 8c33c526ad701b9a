//! A stock Prometheus (the Debian package's binary) pointed at the alerter
//! delivers a firing rule's alert to a local Slack-shaped receiver. Skipped,
//! saying so, only when no `prometheus` binary is installed
//! (`apt-get install prometheus`, or set `OPSLOOP_PROMETHEUS_BIN`).

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{LocalReceiver, spawn_app, stop};
use opsloop_core::config::BusSettings;
use opsloop_core::store::testing::fresh_postgres;

fn prometheus_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("OPSLOOP_PROMETHEUS_BIN") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file())
}

#[tokio::test]
async fn a_stock_prometheus_alert_reaches_slack() {
    let Some(binary) = prometheus_binary() else {
        eprintln!(
            "SKIPPED: no prometheus binary (install the Debian package `prometheus` \
             or set OPSLOOP_PROMETHEUS_BIN)"
        );
        return;
    };
    let db = fresh_postgres().await;
    let slack = LocalReceiver::start().await;
    let receivers = r#"
[[alerter.receivers]]
name = "slack"
kind = "slack"
secret = "slack_webhook_url"
min_interval_ms = 0
"#;
    let app = spawn_app(
        &db,
        BusSettings::default(),
        receivers,
        vec![("OPSLOOP_SLACK_WEBHOOK_URL".into(), slack.url())],
    )
    .await;
    let alerter_authority = app.http.trim_start_matches("http://").to_owned();

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("rules.yml"),
        r#"groups:
  - name: opsloop-e2e
    interval: 1s
    rules:
      - alert: PrometheusE2E
        expr: vector(1)
        labels:
          severity: critical
          service: e2e
        annotations:
          description: fired by a stock prometheus
"#,
    )
    .expect("rules");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{rules}"]
alerting:
  alertmanagers:
    - api_version: v2
      static_configs:
        - targets: ["{alerter_authority}"]
"#,
            rules = dir.path().join("rules.yml").display()
        ),
    )
    .expect("config");
    let mut prometheus = tokio::process::Command::new(&binary)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .arg("--rules.alert.resend-delay=1s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus starts");

    let accepted = slack.wait_accepted(1, Duration::from_secs(60)).await;
    let _ = prometheus.kill().await;
    assert!(
        !accepted.is_empty(),
        "no notification from prometheus' alert within 60 s"
    );
    let header = accepted[0]["blocks"][0]["text"]["text"]
        .as_str()
        .expect("header")
        .to_owned();
    assert_eq!(header, "🔴 [FIRING:1] PrometheusE2E");
    let text = serde_json::to_string(&accepted[0]).expect("json");
    assert!(text.contains("fired by a stock prometheus"), "{text}");
    stop(app).await;
    db.cleanup().await;
}
