//! The outbox relay against RabbitMQ through a severable proxy: proposals
//! submitted while the broker is unreachable are all delivered once it is
//! back, each mission's events in order.

mod helpers;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use helpers::{Backend, Options, claim, complete, spawn_with, submit};
use opsloop_core::bus::rabbit::RabbitBus;
use opsloop_core::bus::testing::{
    TcpProxy, amqp_url, isolated_settings, queue_name, require_rabbitmq, via,
};
use opsloop_core::bus::{Bus, QueueSpec};

#[tokio::test]
async fn events_written_while_the_broker_is_down_arrive_once_in_order() {
    // A hung broker connection must fail the test, not stall the suite.
    tokio::time::timeout(Duration::from_secs(180), outage_roundtrip())
        .await
        .expect("the outage test finishes within 3 minutes");
}

async fn outage_roundtrip() {
    require_rabbitmq().await;
    let settings = isolated_settings(&amqp_url());
    let proxy = TcpProxy::start(
        &settings
            .url
            .replace("amqp://guest:guest@", "")
            .replace("/%2f", ""),
    )
    .await
    .expect("proxy");
    let proxied_url = via(&amqp_url(), proxy.addr);
    let mut proxied_settings = settings.clone();
    proxied_settings.url = proxied_url.clone();
    proxied_settings.publish_timeout_ms = 2_000;
    let app_bus: Arc<dyn Bus> = Arc::new(RabbitBus::start(proxied_settings, proxied_url));
    // The consumer talks to the broker directly.
    let consumer = RabbitBus::start(settings.clone(), amqp_url());
    let mut sub = consumer
        .subscribe(QueueSpec::new(queue_name("outbox"), &["event.#"]))
        .await
        .expect("subscribe");

    let app = spawn_with(Options {
        backend: Backend::Postgres,
        bus: Some(app_bus),
        ..Default::default()
    })
    .await;

    proxy.sever();
    let mut missions = Vec::new();
    for i in 0..5 {
        let p = app
            .proposals()
            .submit_proposal(submit(&["echo"], Some(&format!("outage-{i}"))))
            .await
            .expect("submit while the broker is down")
            .into_inner()
            .proposal
            .expect("p");
        missions.push(p.mission_id.expect("mission"));
    }
    for _ in 0..5 {
        let step = app
            .missions()
            .claim_step(claim("w", &["echo"]))
            .await
            .expect("claim")
            .into_inner()
            .step
            .expect("step");
        app.missions()
            .complete_step(complete(&step, "w"))
            .await
            .expect("complete");
    }
    proxy.restore();

    // 5 × (submitted, approved, mission.started, step.started, step.succeeded, mission.succeeded).
    let expected = 30;
    let mut ids = HashSet::new();
    let mut per_mission: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    while ids.len() < expected {
        let delivery = tokio::time::timeout(Duration::from_secs(60), sub.next())
            .await
            .expect("every event within 60 s of the broker's return")
            .expect("subscription open");
        let body: serde_json::Value =
            serde_json::from_slice(&delivery.message.payload).expect("json");
        assert!(
            ids.insert(delivery.message.id.clone()),
            "duplicate {}",
            delivery.message.id
        );
        if let Some(m) = body["mission_id"].as_str() {
            per_mission.entry(m.to_owned()).or_default().push((
                body["seq"].as_i64().unwrap_or(0),
                body["kind"].as_str().unwrap_or("").to_owned(),
            ));
        }
        delivery.ack().await.expect("ack");
    }
    assert_eq!(per_mission.len(), 5);
    for (mission, events) in per_mission {
        let kinds: Vec<&str> = events.iter().map(|(_, k)| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "mission.started",
                "step.started",
                "step.succeeded",
                "mission.succeeded"
            ],
            "mission {mission}"
        );
        assert!(events.windows(2).all(|w| w[0].0 < w[1].0), "in seq order");
    }
    app.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), consumer.close()).await;
}
