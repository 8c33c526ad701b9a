//! The heartbeat's reports (`OpsDailySummary`, `OpsWeeklyReport`) through
//! the alerter's default routing tree to real local HTTP receivers, on a
//! fresh PostgreSQL database, with an injected clock: they reach the summary
//! receivers only (Slack blocks and Discord embeds, not a JSON string), and
//! with no summary webhook they do not fall back to the alert channel.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{LocalReceiver, alerter, secrets, settings, start_time};
use opsloop_alerter::model::PostableAlert;
use opsloop_core::clock::ManualClock;
use opsloop_core::store::testing::fresh_postgres;
use serde_json::{Value, json};

fn alert(labels: &[(&str, &str)], annotations: &[(&str, String)]) -> PostableAlert {
    PostableAlert {
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        annotations: annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        ..Default::default()
    }
}

fn weekly_report() -> PostableAlert {
    let body = include_str!("../src/receivers/testdata/weekly_report.json");
    alert(
        &[
            ("alertname", "OpsWeeklyReport"),
            ("severity", "info"),
            ("service", "heartbeat-worker"),
            ("period", "2026-11-23"),
        ],
        &[
            (
                "summary",
                "week to 2026-11-23: mission success 95 %, objectives 3 met / 2 missed".into(),
            ),
            ("report", body.to_owned()),
            (
                "command",
                "opsloop report weekly --week-of 2026-11-16".into(),
            ),
        ],
    )
}

fn daily_summary() -> PostableAlert {
    let figures = include_str!("../src/receivers/testdata/daily_summary.json");
    alert(
        &[
            ("alertname", "OpsDailySummary"),
            ("severity", "info"),
            ("service", "heartbeat-worker"),
        ],
        &[
            ("summary", "last 24 h: 5 proposals".into()),
            ("figures", figures.to_owned()),
        ],
    )
}

/// The default settings (default receivers and routing tree), with alerts
/// that never time out during the test.
fn defaults() -> opsloop_alerter::config::AlerterSettings {
    settings(json!({"resolve_timeout": "1d"}))
}

fn mentions(payloads: &[Value], needle: &str) -> usize {
    payloads
        .iter()
        .filter(|p| p.to_string().contains(needle))
        .count()
}

#[tokio::test]
async fn without_a_summary_webhook_reports_stay_off_the_alert_channel() {
    let slack = LocalReceiver::start().await;
    let db = fresh_postgres().await;
    let clock = Arc::new(ManualClock::new(start_time()));
    let a = alerter(
        &defaults(),
        db.db.clone(),
        &secrets(&[("slack_webhook_url", &slack.url())]),
        clock.clone(),
    )
    .await;
    a.post_alerts(
        vec![
            weekly_report(),
            daily_summary(),
            alert(
                &[("alertname", "DiskFilling"), ("severity", "warning")],
                &[("summary", "disk 91 % full".into())],
            ),
            // An info alert that is not a report still falls back to slack.
            alert(
                &[("alertname", "Fyi"), ("severity", "info")],
                &[("summary", "for your information".into())],
            ),
        ],
        "http",
    )
    .await
    .expect("post");
    // Past the default group_wait (30 s): every group flushes.
    clock.advance(Duration::from_secs(31));
    a.tick().await.expect("tick");
    a.settle().await;

    let got = slack.accepted();
    assert_eq!(got.len(), 2, "DiskFilling and Fyi: {got:?}");
    assert_eq!(mentions(&got, "DiskFilling"), 1);
    assert_eq!(mentions(&got, "Fyi"), 1);
    assert_eq!(mentions(&got, "OpsWeeklyReport"), 0, "{got:?}");
    assert_eq!(mentions(&got, "OpsDailySummary"), 0, "{got:?}");
    assert_eq!(mentions(&got, "Weekly report"), 0);
    // The reports went to the console receiver, once each.
    let console = a.store().log_rows("summary_console").await.expect("log");
    assert_eq!(console.len(), 2, "{console:?}");
    assert!(console.iter().all(|r| r.status == "sent"));
    // Later ticks send nothing more to slack.
    clock.advance(Duration::from_secs(600));
    a.tick().await.expect("tick");
    a.settle().await;
    assert_eq!(mentions(&slack.accepted(), "Ops"), 0);
    db.cleanup().await;
}

#[tokio::test]
async fn reports_reach_the_summary_receivers_as_blocks_and_embeds() {
    let slack = LocalReceiver::start().await;
    let summary = LocalReceiver::start().await;
    let discord_summary = LocalReceiver::start().await;
    let db = fresh_postgres().await;
    let clock = Arc::new(ManualClock::new(start_time()));
    let a = alerter(
        &defaults(),
        db.db.clone(),
        &secrets(&[
            ("slack_webhook_url", &slack.url()),
            ("slack_summary_webhook_url", &summary.url()),
            ("discord_summary_webhook_url", &discord_summary.url()),
        ]),
        clock.clone(),
    )
    .await;
    a.post_alerts(vec![weekly_report(), daily_summary()], "http")
        .await
        .expect("post");
    clock.advance(Duration::from_secs(31));
    a.tick().await.expect("tick");
    a.settle().await;

    assert!(slack.accepted().is_empty(), "not on the alert channel");

    let on_slack = summary.accepted();
    assert_eq!(on_slack.len(), 2, "{on_slack:?}");
    let weekly = on_slack
        .iter()
        .find(|p| p["blocks"][0]["text"]["text"] == "📊 Weekly report · 2026-11-16 → 2026-11-23")
        .expect("the weekly report as Block Kit");
    assert_eq!(weekly["blocks"][0]["type"], "header");
    let fields: Vec<&str> = weekly["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .filter_map(|b| b["fields"].as_array())
        .flatten()
        .filter_map(|f| f["text"].as_str())
        .collect();
    assert!(
        fields.contains(&"*steps availability*\n95.2 % of 42 (objective 99.90 %) ❌ missed"),
        "{fields:?}"
    );
    assert!(fields.contains(&"*MTTR*\n1.5 h"), "{fields:?}");
    assert!(
        !weekly.to_string().contains("successRate"),
        "figures, not the JSON body"
    );
    assert!(
        on_slack
            .iter()
            .any(|p| p["blocks"][0]["text"]["text"]
                == "📋 Daily summary · since 2026-11-22 06:00 UTC"),
        "{on_slack:?}"
    );

    let on_discord = discord_summary.accepted();
    assert_eq!(on_discord.len(), 2, "{on_discord:?}");
    let weekly = on_discord
        .iter()
        .find(|p| p["embeds"][0]["title"] == "📊 Weekly report · 2026-11-16 → 2026-11-23")
        .expect("the weekly report as an embed");
    let fields = weekly["embeds"][0]["fields"].as_array().expect("fields");
    assert!(
        fields.iter().any(|f| f["name"] == "heartbeat p95 latency"
            && f["value"] == "130 ms (objective 500 ms) ✅ met"),
        "{fields:?}"
    );
    assert_eq!(
        weekly["embeds"][0]["footer"]["text"],
        "Full figures: `opsloop report weekly --week-of 2026-11-16`"
    );
    db.cleanup().await;
}
