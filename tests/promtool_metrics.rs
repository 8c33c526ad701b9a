//! `promtool check metrics` on the live `/metrics` of each of the four
//! daemons, started as processes with the compose settings on PostgreSQL and
//! RabbitMQ: every exported metric has HELP and TYPE, and promtool's naming
//! lint has nothing to say. promtool comes from Debian's `prometheus`
//! package (`scripts/test.sh` installs it); without it the test fails.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use opsloop_core::bus::testing::{amqp_url, isolated_settings, require_rabbitmq};
use opsloop_core::store::testing::fresh_postgres;
use opsloop_e2e::stack::{DAEMONS, Stack, VIEWER_TOKEN};

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

    for (binary, _, _) in DAEMONS {
        let url = format!("{}/metrics", stack.http_url(binary));
        // Every daemon has run statements by the time it is ready; scrape
        // until the database metrics are there (the first scrape samples
        // the pool).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let text = loop {
            let (status, text) = scrape(&url).await;
            assert_eq!(status, 200, "{binary} /metrics: {text}");
            if (text.contains("opsloop_db_query_duration_seconds_bucket")
                && text.contains("opsloop_db_pool_connections_in_use")
                && text.contains("opsloop_db_pool_connections_max"))
                || tokio::time::Instant::now() > deadline
            {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for name in [
            "# TYPE opsloop_db_query_duration_seconds histogram",
            "# HELP opsloop_db_query_duration_seconds ",
            "# TYPE opsloop_db_pool_connections_in_use gauge",
            "# TYPE opsloop_db_pool_connections_max gauge",
            "process_resident_memory_bytes",
        ] {
            assert!(
                text.contains(name),
                "{binary} /metrics lacks {name:?}:\n{text}"
            );
        }
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
