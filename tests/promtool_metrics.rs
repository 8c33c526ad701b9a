//! `promtool check metrics` on the live `/metrics` of each of the four
//! daemons, started as processes with the compose settings on PostgreSQL and
//! RabbitMQ: every exported metric has HELP and TYPE, and promtool's naming
//! lint has nothing to say. promtool comes from Debian's `prometheus`
//! package (`scripts/test.sh` installs it); without it the test fails.
//!
//! The families each daemon must export are required by name: the build
//! info and the bus connection state everywhere, the loop-state gauges of
//! `opsloop_core::loop_metrics` on the api, and on the alerter the incident
//! metrics (an incident opened by a critical alert, a forged incident link
//! refused).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use opsloop_core::bus::testing::{amqp_url, isolated_settings, require_rabbitmq};
use opsloop_core::loop_metrics;
use opsloop_core::store::testing::fresh_postgres;
use opsloop_e2e::stack::{ADMIN_TOKEN, DAEMONS, Stack, VIEWER_TOKEN};

/// The metric families `binary` must export (`# TYPE name kind` lines), and
/// samples that must be there.
fn required(binary: &str) -> (Vec<(&'static str, &'static str)>, Vec<&'static str>) {
    let mut families = vec![
        ("opsloop_build_info", "gauge"),
        ("opsloop_bus_connection_state", "gauge"),
        ("opsloop_db_query_duration_seconds", "histogram"),
        ("opsloop_db_pool_connections_in_use", "gauge"),
        ("opsloop_db_pool_connections_max", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
    ];
    let mut samples = vec![r#"opsloop_bus_connection_state{state="connected"} 1"#];
    match binary {
        "opsloop-api" => {
            families.extend([
                (loop_metrics::PROPOSALS_PENDING, "gauge"),
                (loop_metrics::STEPS_QUEUED, "gauge"),
                (loop_metrics::STEPS_RUNNING, "gauge"),
                (loop_metrics::LEASES_EXPIRED, "gauge"),
                (loop_metrics::OLDEST_QUEUED_AGE, "gauge"),
                (loop_metrics::CONSECUTIVE_FAILURES, "gauge"),
                (loop_metrics::EMERGENCY_STOP, "gauge"),
                (loop_metrics::COST_BUDGET, "gauge"),
            ]);
            samples.extend([
                "opsloop_emergency_stop_engaged 0",
                r#"opsloop_cost_budget_usd{period="day"}"#,
                r#"opsloop_cost_budget_usd{period="month"}"#,
            ]);
        }
        "opsloop-alerter" => {
            families.extend([
                ("opsloop_incidents_opened_total", "counter"),
                ("opsloop_incident_links_refused_total", "counter"),
            ]);
            samples.extend([
                r#"opsloop_incidents_opened_total{level="P0"} 1"#,
                r#"opsloop_incident_links_refused_total{reason="bad signature"} 1"#,
            ]);
        }
        _ => {}
    }
    (families, samples)
}

/// What of [`required`] `text` lacks.
fn missing(binary: &str, text: &str) -> Vec<String> {
    let (families, samples) = required(binary);
    let mut gone: Vec<String> = families
        .iter()
        .map(|(name, kind)| format!("# TYPE {name} {kind}"))
        .filter(|line| !text.lines().any(|l| l == line))
        .collect();
    gone.extend(
        samples
            .iter()
            .filter(|s| !text.lines().any(|l| l.starts_with(*s)))
            .map(|s| (*s).to_owned()),
    );
    gone
}

fn promtool_check(name: &str, text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is not runnable ({e}): install Debian's `prometheus` package \
                 (scripts/test.sh does: apt-get install prometheus)"
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool check metrics rejected {name}'s /metrics:\n{said}\n--- /metrics:\n{text}"
    );
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_every_daemons_live_metrics() {
    require_rabbitmq().await;
    let db = fresh_postgres().await;
    let bus = isolated_settings(&amqp_url());
    let mut stack = Stack::new(&db.url, &bus, "", &[]);
    stack.start_all();
    stack.wait_ready(Duration::from_secs(30)).await;

    // An incident on the alerter: a critical alert that started an hour
    // ago (its group flushes at once, opening a P0 incident), and a forged
    // acknowledge link (refused).
    let alerter = stack.http_url("opsloop-alerter");
    let client = reqwest::Client::new();
    let posted = client
        .post(format!("{alerter}/api/v2/alerts"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!([{
            "labels": {"alertname": "PromtoolIncident", "severity": "critical", "service": "api"},
            "annotations": {"summary": "opens an incident for the incident metrics"},
            "startsAt": (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339(),
        }]))
        .send()
        .await
        .expect("POST /api/v2/alerts");
    assert_eq!(posted.status().as_u16(), 200, "{:?}", posted.text().await);
    let forged = client
        .get(format!(
            "{alerter}/api/v1/incidents/{}/acknowledge?exp=4102444800&nonce=n1&sig=00",
            uuid::Uuid::new_v4()
        ))
        .send()
        .await
        .expect("GET a forged incident link");
    assert_eq!(forged.status().as_u16(), 403);

    for (binary, _, _) in DAEMONS {
        let url = format!("{}/metrics", stack.http_url(binary));
        // Every daemon has run statements by the time it is ready, but the
        // first scrape samples the pool, the broker may still be
        // connecting and the incident opens at the alerter's next tick:
        // scrape until the required families are there.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let text = loop {
            let (status, text) = scrape(&url).await;
            assert_eq!(status, 200, "{binary} /metrics: {text}");
            if missing(binary, &text).is_empty() || tokio::time::Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let gone = missing(binary, &text);
        assert!(gone.is_empty(), "{binary} /metrics lacks {gone:?}:\n{text}");
        let lint = promtool_check(binary, &text);
        assert!(
            lint.trim().is_empty(),
            "promtool's lint has remarks on {binary}'s /metrics:\n{lint}"
        );
        // Every metric family has its HELP line (promtool accepts a
        // missing one silently).
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let family = rest.split_whitespace().next().unwrap_or_default();
                assert!(
                    text.contains(&format!("# HELP {family} ")),
                    "{binary}: metric {family} has no HELP text"
                );
            }
        }
    }
    drop(stack);
    db.cleanup().await;
}

/// `GET url` as Prometheus scrapes it: with the viewer token.
async fn scrape(url: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(VIEWER_TOKEN)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}
