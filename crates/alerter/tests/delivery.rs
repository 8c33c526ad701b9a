//! Delivery against real local HTTP receivers with an injected clock: 429
//! with Retry-After (header and Discord body), 5xx past the retry budget →
//! dead-letter row and metric, permanent 4xx, pacing, and URLs kept out of
//! error details.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Answer, LocalReceiver, alerter, posted, secrets, settings, start_time};
use opsloop_alerter::delivery::{Clock, DeliveryEngine, RetryPolicy};
use opsloop_alerter::group::Notification;
use opsloop_alerter::model::{Alert, LabelSet};
use opsloop_alerter::receivers::{self, LocalOutput, ReceiverConfig, ReceiverKind, RenderContext};
use opsloop_core::clock::ManualClock;
use opsloop_core::store::testing::fresh_postgres;
use serde_json::json;

fn hook_settings(
    name: &str,
    kind: &str,
    policy: serde_json::Value,
) -> opsloop_alerter::config::AlerterSettings {
    settings(json!({
        "resolve_timeout": "1d",
        "route": {"receiver": name, "group_wait": "0s"},
        "inhibit_rules": [],
        "receivers": [{"name": name, "kind": kind, "secret": "hook_url", "min_interval_ms": 0}],
        "delivery": policy,
    }))
}

#[tokio::test]
async fn too_many_requests_then_ok_is_delivered_once_after_the_wait() {
    let receiver = LocalReceiver::start().await;
    receiver.script(vec![Answer::too_many("2"), Answer::ok()]);
    let db = fresh_postgres().await;
    let clock = Arc::new(ManualClock::new(start_time()));
    let settings = hook_settings("slack-429", "slack", json!({}));
    let a = alerter(
        &settings,
        db.db.clone(),
        &secrets(&[("hook_url", &receiver.url())]),
        clock.clone(),
    )
    .await;
    a.post_alerts(
        vec![posted(&[("alertname", "Down"), ("severity", "critical")])],
        "http",
    )
    .await
    .expect("post");
    a.tick().await.expect("tick");
    a.settle().await;

    assert_eq!(receiver.received().len(), 2, "one 429, one retry");
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1, "delivered once");
    assert!(accepted[0]["blocks"].is_array(), "a Slack Block Kit body");
    assert_eq!(
        clock.slept(),
        vec![Duration::from_secs(2)],
        "waited as Retry-After said"
    );
    let rows = a.store().log_rows("slack-429").await.expect("log");
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].status.as_str(), rows[0].attempts), ("sent", 2));
    // Nothing more to send on the next ticks.
    clock.advance(Duration::from_secs(600));
    a.tick().await.expect("tick");
    a.settle().await;
    assert_eq!(receiver.accepted().len(), 1);
    db.cleanup().await;
}

#[tokio::test]
async fn receiver_down_past_the_budget_is_dead_lettered_with_a_metric() {
    opsloop_core::telemetry::prometheus();
    let receiver = LocalReceiver::start().await;
    receiver.always(Answer::status(503));
    let db = fresh_postgres().await;
    let clock = Arc::new(ManualClock::new(start_time()));
    let settings = hook_settings(
        "down-hook",
        "webhook",
        json!({"initial_backoff_ms": 1000, "max_backoff_ms": 8000, "max_total_ms": 30000}),
    );
    let a = alerter(
        &settings,
        db.db.clone(),
        &secrets(&[("hook_url", &receiver.url())]),
        clock.clone(),
    )
    .await;
    a.post_alerts(vec![posted(&[("alertname", "Down")])], "http")
        .await
        .expect("post");
    a.tick().await.expect("tick");
    a.settle().await;

    let attempts = receiver.received().len();
    assert!(
        (4..=8).contains(&attempts),
        "{attempts} attempts within 30 s of backoff"
    );
    let total: Duration = clock.slept().iter().sum();
    assert!(
        total <= Duration::from_secs(30),
        "stayed within the budget: {total:?}"
    );
    let backoffs = clock.slept();
    assert!(
        backoffs.windows(2).all(|w| w[1] >= w[0]),
        "backoff grows: {backoffs:?}"
    );

    let rows = a.store().log_rows("down-hook").await.expect("log");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, "dead_letter");
    assert_eq!(rows[0].attempts as usize, attempts);
    let error = rows[0].last_error.clone().expect("last error");
    assert!(error.contains("HTTP 503"), "{error}");
    assert!(
        !error.contains(&receiver.addr.to_string()),
        "no URL in the error: {error}"
    );

    let metrics = opsloop_core::telemetry::render_metrics();
    assert!(
        metrics.contains("opsloop_alerter_dead_letters_total{receiver=\"down-hook\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "opsloop_alerter_notifications_total{receiver=\"down-hook\",outcome=\"dead_letter\"} 1"
    ));

    // The group is retried at its next tick once the receiver is back.
    receiver.always(Answer::ok());
    clock.advance(Duration::from_secs(300));
    a.tick().await.expect("tick");
    a.settle().await;
    let rows = a.store().log_rows("down-hook").await.expect("log");
    assert_eq!(rows.last().map(|r| r.status.as_str()), Some("sent"));
    db.cleanup().await;
}

fn engine_and_receiver(
    kind: ReceiverKind,
    url: &str,
    min_interval_ms: u64,
) -> (
    Arc<ManualClock>,
    DeliveryEngine,
    receivers::ConfiguredReceiver,
) {
    let clock = Arc::new(ManualClock::new(start_time()));
    let dyn_clock: Arc<dyn Clock> = clock.clone();
    let engine = DeliveryEngine::new(
        dyn_clock,
        RetryPolicy {
            initial_backoff_ms: 500,
            max_backoff_ms: 4000,
            max_total_ms: 20_000,
            request_timeout_ms: 2000,
        },
    )
    .expect("engine");
    let config = ReceiverConfig {
        min_interval_ms: Some(min_interval_ms),
        ..ReceiverConfig::new("r", kind, Some("hook_url"))
    };
    let built = receivers::build(
        &[config],
        &secrets(&[("hook_url", url)]),
        LocalOutput::Never,
    )
    .expect("build");
    let receiver = built.enabled.into_iter().next().expect("enabled");
    (clock, engine, receiver)
}

fn notification() -> Notification {
    let labels: LabelSet = [("alertname", "Down"), ("severity", "critical")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let alert = Alert {
        labels: labels.clone(),
        annotations: LabelSet::new(),
        starts_at: start_time(),
        ends_at: None,
        generator_url: None,
        source: "test".into(),
        updated_at: start_time(),
    };
    Notification::new("r", "{}:{}", labels, vec![alert], Vec::new(), start_time())
}

#[tokio::test]
async fn discord_retry_after_body_and_rate_limit_headers_are_honoured() {
    let receiver = LocalReceiver::start().await;
    receiver.script(vec![
        Answer {
            status: 429,
            headers: Vec::new(),
            body:
                r#"{"message": "You are being rate limited.", "retry_after": 1.5, "global": false}"#
                    .into(),
        },
        Answer {
            status: 204,
            headers: vec![
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset-after", "3".into()),
            ],
            body: String::new(),
        },
        Answer::ok(),
    ]);
    let (clock, engine, r) = engine_and_receiver(ReceiverKind::Discord, &receiver.url(), 0);
    let outcome = engine
        .deliver(&r, &notification(), &RenderContext::default())
        .await;
    assert!(outcome.delivered, "{outcome:?}");
    assert_eq!((outcome.attempts, outcome.http_status), (2, Some(204)));
    assert_eq!(clock.slept(), vec![Duration::from_millis(1500)]);
    // The next message waits out X-RateLimit-Reset-After.
    let outcome = engine
        .deliver(&r, &notification(), &RenderContext::default())
        .await;
    assert!(outcome.delivered);
    assert_eq!(
        clock.slept(),
        vec![Duration::from_millis(1500), Duration::from_secs(3)]
    );
    assert!(
        receiver.accepted()[0]["embeds"].is_array(),
        "a Discord body"
    );
}

#[tokio::test]
async fn slack_is_paced_and_client_errors_are_not_retried() {
    let receiver = LocalReceiver::start().await;
    receiver.script(vec![Answer::ok(), Answer::ok(), Answer::status(400)]);
    let (clock, engine, r) = engine_and_receiver(ReceiverKind::Slack, &receiver.url(), 1000);
    let ctx = RenderContext::default();
    assert!(engine.deliver(&r, &notification(), &ctx).await.delivered);
    assert!(engine.deliver(&r, &notification(), &ctx).await.delivered);
    assert_eq!(
        clock.slept(),
        vec![Duration::from_secs(1)],
        "one message a second"
    );
    clock.advance(Duration::from_secs(5));
    let outcome = engine.deliver(&r, &notification(), &ctx).await;
    assert!(!outcome.delivered);
    assert_eq!((outcome.attempts, outcome.http_status), (1, Some(400)));
    assert_eq!(receiver.received().len(), 3);
}

#[tokio::test]
async fn connection_failures_retry_and_never_show_the_url() {
    // A port nothing listens on: bind, then drop.
    let addr = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr")
    };
    let url = format!("http://{addr}/services/T000/B000/secret-token-xyz");
    let (clock, engine, r) = engine_and_receiver(ReceiverKind::Webhook, &url, 0);
    let outcome = engine
        .deliver(&r, &notification(), &RenderContext::default())
        .await;
    assert!(!outcome.delivered);
    assert!(outcome.attempts >= 3, "{outcome:?}");
    assert!(
        outcome.detail.contains("connection failed"),
        "{}",
        outcome.detail
    );
    assert!(
        !outcome.detail.contains("secret-token-xyz"),
        "{}",
        outcome.detail
    );
    assert!(clock.slept().iter().sum::<Duration>() <= Duration::from_secs(20));
}
