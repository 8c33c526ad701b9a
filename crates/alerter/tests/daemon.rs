//! The daemon end to end, as a client sees it: `AlerterApp` on port 0 with a
//! fresh database and a real bus. An alert published on the bus and one
//! POSTed to `/api/v2/alerts` both arrive at a local Slack-shaped receiver;
//! the Alertmanager v2 silence API and the gRPC `AlertService` answer.

mod common;

use std::time::Duration;

use common::{LocalReceiver, spawn_app, stop};
use opsloop_core::bus::BusMessage;
use opsloop_core::bus::testing::{amqp_url, isolated_settings, require_rabbitmq};
use opsloop_core::config::BusSettings;
use opsloop_core::proto::v1 as pb;
use opsloop_core::store::testing::{fresh_postgres, fresh_sqlite};
use opsloop_core::testing::{eventually, holds, stays};
use pb::alert_service_client::AlertServiceClient;
use serde_json::json;

fn alert_names(bodies: &[serde_json::Value]) -> Vec<String> {
    let mut names: Vec<String> = bodies
        .iter()
        .map(|b| {
            b["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn bus_and_http_alerts_reach_slack_on_postgres_and_rabbitmq() {
    require_rabbitmq().await;
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
        isolated_settings(&amqp_url()),
        receivers,
        vec![("OPSLOOP_SLACK_WEBHOOK_URL".into(), slack.url())],
    )
    .await;
    let http = reqwest::Client::new();

    // /healthz from the base router is merged in.
    let health = http
        .get(format!("{}/healthz", app.http))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let receivers: serde_json::Value = http
        .get(format!("{}/api/v2/receivers", app.http))
        .send()
        .await
        .expect("receivers")
        .json()
        .await
        .expect("json");
    assert_eq!(receivers, json!([{"name": "slack"}]));
    let status = http
        .get(format!("{}/api/v2/status", app.http))
        .send()
        .await
        .expect("status");
    assert_eq!(status.status(), 200);

    // One alert over HTTP (Alertmanager v2), one over the bus.
    let response = http
        .post(format!("{}/api/v2/alerts", app.http))
        .json(&json!([{
            "labels": {"alertname": "HttpDown", "severity": "critical", "service": "api"},
            "annotations": {"description": "api is down", "runbook_url": "https://runbooks.example/api"},
            "generatorURL": "http://prometheus/graph"
        }]))
        .send()
        .await
        .expect("post alerts");
    assert_eq!(response.status(), 200);
    let bad = http
        .post(format!("{}/api/v2/alerts", app.http))
        .json(&json!([{"labels": {}}]))
        .send()
        .await
        .expect("post bad");
    assert_eq!(bad.status(), 400);

    // The bus consumer subscribes once the app holds the delivery lease;
    // publish (same id: idempotent) until the queue has taken it.
    let body = json!({"labels": {"alertname": "BusBackupFailed", "severity": "high"},
        "annotations": {"summary": "nightly backup failed"}, "status": "firing"});
    let message = BusMessage::json("msg-1", "alert.high", &body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut accepted = Vec::new();
    while accepted.len() < 2 && tokio::time::Instant::now() < deadline {
        app.infra
            .bus
            .publish(message.clone())
            .await
            .expect("publish");
        accepted = slack.wait_accepted(2, Duration::from_millis(300)).await;
    }
    assert_eq!(
        alert_names(&accepted),
        vec![
            "🔴 [FIRING:1] HttpDown".to_owned(),
            "🟠 [FIRING:1] BusBackupFailed".to_owned()
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    // A duplicate message id changes nothing.
    app.infra
        .bus
        .publish(message)
        .await
        .expect("publish duplicate");

    // GET /api/v2/alerts in Alertmanager's shape.
    let alerts: Vec<serde_json::Value> = http
        .get(format!("{}/api/v2/alerts", app.http))
        .send()
        .await
        .expect("get alerts")
        .json()
        .await
        .expect("json");
    assert_eq!(alerts.len(), 2);
    assert!(alerts.iter().all(|a| a["status"]["state"] == "active"));
    assert!(alerts.iter().all(|a| a["receivers"][0]["name"] == "slack"));
    let filtered: Vec<serde_json::Value> = http
        .get(format!(
            "{}/api/v2/alerts?filter=alertname%3D%22HttpDown%22",
            app.http
        ))
        .send()
        .await
        .expect("filter")
        .json()
        .await
        .expect("json");
    assert_eq!(filtered.len(), 1);

    // Silences: create, see it mute, expire it.
    let ends_at = chrono::Utc::now() + chrono::Duration::hours(1);
    let created: serde_json::Value = http
        .post(format!("{}/api/v2/silences", app.http))
        .json(&json!({"matchers": [{"name": "alertname", "value": "HttpDown", "isRegex": false, "isEqual": true}],
            "endsAt": ends_at, "createdBy": "ops", "comment": "maintenance"}))
        .send()
        .await
        .expect("post silence")
        .json()
        .await
        .expect("json");
    let id = created["silenceID"].as_str().expect("silenceID").to_owned();
    let silences: Vec<serde_json::Value> = http
        .get(format!("{}/api/v2/silences", app.http))
        .send()
        .await
        .expect("get silences")
        .json()
        .await
        .expect("json");
    assert_eq!(silences.len(), 1);
    assert_eq!(silences[0]["status"]["state"], "active");
    let alerts: Vec<serde_json::Value> = http
        .get(format!("{}/api/v2/alerts?silenced=false", app.http))
        .send()
        .await
        .expect("get alerts")
        .json()
        .await
        .expect("json");
    assert_eq!(alerts.len(), 1, "the silenced alert is filtered out");
    let invalid = http
        .post(format!("{}/api/v2/silences", app.http))
        .json(&json!({"matchers": [], "endsAt": ends_at, "createdBy": "ops", "comment": "x"}))
        .send()
        .await
        .expect("post invalid silence");
    assert_eq!(invalid.status(), 400);
    let deleted = http
        .delete(format!("{}/api/v2/silence/{id}", app.http))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 200);
    let unknown = http
        .delete(format!(
            "{}/api/v2/silence/{}",
            app.http,
            uuid::Uuid::new_v4()
        ))
        .send()
        .await
        .expect("delete unknown");
    assert_eq!(unknown.status(), 404);

    // gRPC AlertService.
    let mut client = AlertServiceClient::connect(app.grpc.clone())
        .await
        .expect("grpc connect");
    let listed = client
        .list_alerts(pb::ListAlertsRequest::default())
        .await
        .expect("list alerts")
        .into_inner();
    assert_eq!(listed.alerts.len(), 2);
    assert!(
        listed
            .alerts
            .iter()
            .any(|a| a.severity == pb::Severity::Critical as i32)
    );
    let silences = client
        .list_silences(pb::ListSilencesRequest {
            state: pb::SilenceState::Expired as i32,
            ..Default::default()
        })
        .await
        .expect("list silences")
        .into_inner();
    assert_eq!(silences.silences.len(), 1);
    let expired_again = client
        .expire_silence(pb::ExpireSilenceRequest {
            id: id.clone(),
            actor: "ops".into(),
        })
        .await
        .expect_err("already expired");
    assert_eq!(expired_again.code(), tonic::Code::FailedPrecondition);
    let tested = client
        .test_receiver(pb::TestReceiverRequest {
            receiver: "slack".into(),
            severity: pb::Severity::Warning as i32,
            message: Some("hello from the test".into()),
        })
        .await
        .expect("test receiver")
        .into_inner();
    assert!(tested.delivered, "{tested:?}");
    assert_eq!(tested.http_status, Some(200));
    let unknown = client
        .test_receiver(pb::TestReceiverRequest {
            receiver: "nope".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown receiver");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let bad_silence = client
        .create_silence(pb::CreateSilenceRequest {
            created_by: "ops".into(),
            comment: "x".into(),
            ends_at: Some(prost_types::Timestamp {
                seconds: ends_at.timestamp(),
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect_err("no matchers");
    assert_eq!(bad_silence.code(), tonic::Code::InvalidArgument);

    // Nothing was sent twice: two groups, two notifications, plus the test.
    let three = || async {
        let n = slack.accepted().len();
        holds(n == 3, || format!("{n} notifications"))
    };
    eventually("three notifications", Duration::from_secs(10), three).await;
    stays("three notifications", Duration::from_millis(300), three).await;
    stop(app).await;
    db.cleanup().await;
}

#[tokio::test]
async fn dev_defaults_sqlite_memory_bus_and_a_jsonl_file() {
    let db = fresh_sqlite().await;
    let out = tempfile::tempdir().expect("tempdir");
    let path = out.path().join("var/alerts.jsonl");
    let receivers = format!(
        r#"
[[alerter.receivers]]
name = "slack"
kind = "console"
path = "{}"
"#,
        path.display()
    );
    let app = spawn_app(&db, BusSettings::default(), &receivers, Vec::new()).await;
    let body = json!({"labels": {"alertname": "OpsDailySummary", "severity": "info"},
        "annotations": {"summary": "3 missions succeeded"}});
    let message = BusMessage::json("summary-1", "alert.info", &body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut published = false;
    while common::json_lines(&path).is_empty() && tokio::time::Instant::now() < deadline {
        if !published {
            app.infra
                .bus
                .publish(message.clone())
                .await
                .expect("publish");
            published = true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The memory bus drops messages published before the queue exists.
        if common::json_lines(&path).is_empty() {
            app.infra
                .bus
                .publish(message.clone())
                .await
                .expect("publish");
        }
    }
    stays(
        "one line, however often the message came",
        Duration::from_millis(300),
        || async {
            let n = common::json_lines(&path).len();
            holds(n == 1, || format!("{n} lines"))
        },
    )
    .await;
    let lines = common::json_lines(&path);
    assert_eq!(lines[0]["version"], "4");
    assert_eq!(
        lines[0]["alerts"][0]["labels"]["alertname"],
        "OpsDailySummary"
    );
    stop(app).await;
    db.cleanup().await;
}
