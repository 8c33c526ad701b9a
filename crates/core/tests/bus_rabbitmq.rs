//! The RabbitMQ bus against a real broker: publish/consume/ack, redelivery
//! after a consumer dies, and a broker outage (a severed TCP proxy) that
//! loses nothing published meanwhile.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use opsloop_core::bus::rabbit::{BusReadiness, RabbitBus};
use opsloop_core::bus::testing::{
    TcpProxy, amqp_url, isolated_settings, queue_name, require_rabbitmq, via,
};
use opsloop_core::bus::{Bus, BusMessage, QueueSpec, Subscription};
use opsloop_core::http::ReadinessCheck;
use opsloop_core::testing::{holds, stays};

fn message(id: &str, key: &str) -> BusMessage {
    let mut msg = BusMessage::json(id, key, &serde_json::json!({"id": id}));
    msg.headers.insert(
        "traceparent".into(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
    );
    msg
}

async fn next(sub: &mut Subscription) -> opsloop_core::bus::Delivery {
    tokio::time::timeout(Duration::from_secs(15), sub.next())
        .await
        .expect("a delivery within 15 s")
        .expect("subscription open")
}

async fn nothing_within(sub: &mut Subscription, wait: Duration) {
    if let Ok(Some(d)) = tokio::time::timeout(wait, sub.next()).await {
        panic!("unexpected delivery {}", d.message.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_consume_ack() {
    require_rabbitmq().await;
    let bus = RabbitBus::start(isolated_settings(&amqp_url()), amqp_url());
    bus.wait_connected(Duration::from_secs(10))
        .await
        .expect("connected");
    let queue = queue_name("ack");
    let mut sub = bus
        .subscribe(QueueSpec::new(&queue, &["event.#"]))
        .await
        .expect("subscribe");

    bus.publish(message("e1", "event.step.failed"))
        .await
        .expect("publish");
    bus.publish(message("a1", "alert.critical"))
        .await
        .expect("publish unrouted");
    bus.publish(message("e2", "event.proposal.created"))
        .await
        .expect("publish");

    let first = next(&mut sub).await;
    assert_eq!(first.message.id, "e1");
    assert_eq!(first.message.routing_key, "event.step.failed");
    assert_eq!(
        first.message.headers["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    let body: serde_json::Value = serde_json::from_slice(&first.message.payload).expect("json");
    assert_eq!(body["id"], "e1");
    assert!(!first.redelivered);
    first.ack().await.expect("ack");
    let second = next(&mut sub).await;
    assert_eq!(second.message.id, "e2");
    second.ack().await.expect("ack");

    drop(sub);
    let mut again = bus
        .subscribe(QueueSpec::new(&queue, &["event.#"]))
        .await
        .expect("resubscribe");
    nothing_within(&mut again, Duration::from_millis(500)).await;
    bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_dies_without_acking_gets_it_redelivered() {
    require_rabbitmq().await;
    let bus = RabbitBus::start(isolated_settings(&amqp_url()), amqp_url());
    let queue = queue_name("redeliver");
    let mut sub = bus
        .subscribe(QueueSpec::new(&queue, &["alert.#"]))
        .await
        .expect("subscribe");
    bus.publish(message("x1", "alert.high"))
        .await
        .expect("publish");
    let held = next(&mut sub).await;
    assert_eq!(held.message.id, "x1");
    drop(sub); // the consumer dies holding the message

    let mut survivor = bus
        .subscribe(QueueSpec::new(&queue, &["alert.#"]))
        .await
        .expect("subscribe");
    let again = next(&mut survivor).await;
    assert_eq!(again.message.id, "x1");
    assert!(again.redelivered, "broker marks it redelivered");
    again.ack().await.expect("ack");
    drop(held);
    bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_without_requeue_dead_letters() {
    require_rabbitmq().await;
    let settings = isolated_settings(&amqp_url());
    let parked = format!("{}.parked", settings.dead_letter_exchange);
    let bus = RabbitBus::start(settings, amqp_url());
    let mut sub = bus
        .subscribe(QueueSpec::new(queue_name("dlx"), &["event.#"]))
        .await
        .expect("subscribe");
    bus.publish(message("poison", "event.bad"))
        .await
        .expect("publish");
    next(&mut sub).await.nack(false).await.expect("nack");

    // The parked queue is the dead-letter exchange's catch-all: read it raw.
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .expect("raw connection");
    let channel = conn.create_channel().await.expect("channel");
    let mut found = None;
    for _ in 0..100 {
        if let Some(msg) = channel
            .basic_get(
                parked.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic_get")
        {
            found = Some(msg);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = found.expect("dead letter parked");
    assert_eq!(
        dead.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned()),
        Some("poison".to_owned())
    );
    bus.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_loses_nothing_and_readiness_follows() {
    require_rabbitmq().await;
    let upstream = "127.0.0.1:5672";
    let proxy = TcpProxy::start(upstream).await.expect("proxy");
    let url = via(&amqp_url(), proxy.addr);
    let bus = Arc::new(RabbitBus::start(isolated_settings(&url), url));
    bus.wait_connected(Duration::from_secs(10))
        .await
        .expect("connected");
    let readiness = BusReadiness(bus.clone());
    let mut sub = bus
        .subscribe(QueueSpec::new(queue_name("outage"), &["event.#"]))
        .await
        .expect("subscribe");

    let mut expected = BTreeSet::new();
    for i in 0..5 {
        let id = format!("before-{i}");
        bus.publish(message(&id, "event.tick"))
            .await
            .expect("publish");
        expected.insert(id);
    }

    proxy.sever();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bus.is_connected() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "disconnect noticed within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        readiness.check().await.is_err(),
        "not ready while disconnected"
    );

    let mut publishers = Vec::new();
    for i in 0..10 {
        let id = format!("during-{i}");
        expected.insert(id.clone());
        let bus = bus.clone();
        publishers.push(tokio::spawn(async move {
            bus.publish(message(&id, "event.tick")).await
        }));
    }
    // Publishing waits out the outage: no confirm arrives while it lasts.
    stays(
        "no publish confirmed while the broker is cut",
        Duration::from_millis(700),
        || async {
            let finished = publishers.iter().filter(|p| p.is_finished()).count();
            holds(finished == 0, || format!("{finished} publishes returned"))
        },
    )
    .await;
    proxy.restore();
    for p in publishers {
        p.await
            .expect("join")
            .expect("publish confirmed after reconnect");
    }
    assert!(readiness.check().await.is_ok(), "ready again");

    let mut seen = BTreeSet::new();
    while seen.len() < expected.len() {
        let d = next(&mut sub).await;
        seen.insert(d.message.id.clone());
        d.ack().await.ok();
    }
    assert_eq!(seen, expected);
    bus.close().await;
}
