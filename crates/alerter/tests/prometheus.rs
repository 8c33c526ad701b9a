//! A stock Prometheus (the Debian package's binary) pointed at the alerter
//! delivers a firing rule's alert to a local Slack-shaped receiver; over TLS
//! with the `alert_sender` bearer token it is delivered, and the same
//! Prometheus without the token is refused. Skipped,
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

/// A Prometheus whose one rule fires `alert` at once and sends it to the
/// alerter at `authority`; `alerting_extra` is added to the alertmanager
/// entry (scheme, authorization, tls_config).
struct StockPrometheus {
    child: tokio::process::Child,
    web: String,
    _dir: tempfile::TempDir,
}

impl StockPrometheus {
    fn start(binary: &std::path::Path, alert: &str, authority: &str, alerting_extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("rules.yml"),
            format!(
                r#"groups:
  - name: opsloop-e2e
    interval: 1s
    rules:
      - alert: {alert}
        expr: vector(1)
        labels:
          severity: critical
          service: e2e
        annotations:
          description: fired by a stock prometheus
"#
            ),
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
{alerting_extra}      static_configs:
        - targets: ["{authority}"]
"#,
                rules = dir.path().join("rules.yml").display()
            ),
        )
        .expect("config");
        // Its own web port, read back for its notification metrics.
        let web = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .to_string();
        let child = tokio::process::Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .arg("--rules.alert.resend-delay=1s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus starts");
        Self {
            child,
            web,
            _dir: dir,
        }
    }

    /// Sum of `prometheus_notifications_errors_total` (alerts it failed to
    /// send), or `None` while its web port does not answer yet.
    async fn notification_errors(&self) -> Option<f64> {
        let body = reqwest::get(format!("http://{}/metrics", self.web))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            body.lines()
                .filter(|line| line.starts_with("prometheus_notifications_errors_total"))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn slack_receiver_toml() -> &'static str {
    r#"
[[alerter.receivers]]
name = "slack"
kind = "slack"
secret = "slack_webhook_url"
min_interval_ms = 0
"#
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
    let app = spawn_app(
        &db,
        BusSettings::default(),
        slack_receiver_toml(),
        vec![("OPSLOOP_SLACK_WEBHOOK_URL".into(), slack.url())],
    )
    .await;
    let alerter_authority = app.http.trim_start_matches("http://").to_owned();
    let prometheus = StockPrometheus::start(&binary, "PrometheusE2E", &alerter_authority, "");

    let accepted = slack.wait_accepted(1, Duration::from_secs(60)).await;
    prometheus.stop().await;
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

/// The alerter with a certificate and an `alert_sender` token: Prometheus
/// over https with `authorization: Bearer` is delivered; a second Prometheus
/// with the same TLS settings and no token is refused (its notification
/// errors count up, and its alert never reaches the receiver).
#[tokio::test]
async fn a_stock_prometheus_over_tls_with_a_bearer_token_is_delivered_and_one_without_is_refused() {
    let Some(binary) = prometheus_binary() else {
        eprintln!(
            "SKIPPED: no prometheus binary (install the Debian package `prometheus` \
             or set OPSLOOP_PROMETHEUS_BIN)"
        );
        return;
    };
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("cert params")
        .self_signed(&key)
        .expect("self-signed");
    let token = format!("sender-{}", uuid::Uuid::new_v4().simple());
    let db = fresh_postgres().await;
    let slack = LocalReceiver::start().await;
    let app = spawn_app(
        &db,
        BusSettings::default(),
        slack_receiver_toml(),
        vec![
            ("OPSLOOP_SLACK_WEBHOOK_URL".into(), slack.url()),
            ("OPSLOOP_TLS_CERT".into(), cert.pem()),
            ("OPSLOOP_TLS_KEY".into(), key.serialize_pem()),
            ("OPSLOOP_ALERT_SENDER_TOKEN".into(), token.clone()),
            // An admin token too, as in production: the sender's role is
            // what lets Prometheus in, not an open alerter.
            (
                "OPSLOOP_ADMIN_TOKEN".into(),
                format!("admin-{}", uuid::Uuid::new_v4().simple()),
            ),
        ],
    )
    .await;
    let port = app.http.rsplit(':').next().expect("port").to_owned();
    let authority = format!("localhost:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.pem()).expect("ca file");
    let tls = format!(
        "      scheme: https\n      tls_config:\n        ca_file: {}\n",
        ca.display()
    );
    let with_token = StockPrometheus::start(
        &binary,
        "WithToken",
        &authority,
        &format!("{tls}      authorization:\n        type: Bearer\n        credentials: {token}\n"),
    );
    let without_token = StockPrometheus::start(&binary, "WithoutToken", &authority, &tls);

    let accepted = slack.wait_accepted(1, Duration::from_secs(60)).await;
    assert!(
        !accepted.is_empty(),
        "no notification from the token-bearing prometheus within 60 s"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if without_token.notification_errors().await.unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the prometheus without a token never reported a refused notification"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        with_token.notification_errors().await,
        Some(0.0),
        "the token-bearing prometheus had notification errors"
    );
    with_token.stop().await;
    without_token.stop().await;
    let text = serde_json::to_string(&slack.received()).expect("json");
    assert!(text.contains("WithToken"), "{text}");
    assert!(
        !text.contains("WithoutToken"),
        "an alert sent without a token was delivered: {text}"
    );
    stop(app).await;
    db.cleanup().await;
}
