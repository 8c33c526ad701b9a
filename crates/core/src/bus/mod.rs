//! The event bus: one [`Bus`] trait with two implementations — RabbitMQ
//! ([`rabbit::RabbitBus`], production) and in-process ([`memory::MemoryBus`],
//! `opsloop dev`) — with the same semantics: topic routing, durable named
//! queues, manual acknowledgement, redelivery of what a dead consumer held,
//! dead-lettering of rejected messages. Message id = event id, so consumers
//! deduplicate; W3C trace context travels in the headers.

pub mod memory;
pub mod rabbit;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{BusKind, BusSettings};
use crate::secrets::Secret;

/// `opsloop_bus_connection_state{state}`: 1 for the connection's current
/// state, 0 for the others (a Prometheus state set), on every daemon with a
/// RabbitMQ bus.
pub const CONNECTION_STATE: &str = "opsloop_bus_connection_state";

/// The states of [`CONNECTION_STATE`]: `connecting` (never connected yet),
/// `connected`, `reconnecting` (the link was lost), `closed` (shut down).
pub const CONNECTION_STATES: [&str; 4] = ["connecting", "connected", "reconnecting", "closed"];

/// Sets [`CONNECTION_STATE`] to `state` (one of [`CONNECTION_STATES`]).
pub fn record_connection_state(state: &str) {
    for s in CONNECTION_STATES {
        metrics::gauge!(CONNECTION_STATE, "state" => s).set(if s == state { 1.0 } else { 0.0 });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("broker unreachable: {0} (is RabbitMQ running? check bus.url)")]
    Unavailable(String),
    #[error("publish of {message_id} not confirmed within {timeout_ms} ms: {reason}")]
    PublishTimeout {
        message_id: String,
        timeout_ms: u64,
        reason: String,
    },
    #[error("broker refused publish of {message_id} (nack)")]
    Nacked { message_id: String },
    #[error("broker error: {0}")]
    Protocol(String),
    #[error("the bus is shut down")]
    Closed,
}

/// One message on the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct BusMessage {
    /// Unique id (the event id); consumers deduplicate on it.
    pub id: String,
    /// `event.<kind>`, `alert.<severity>`, `backup.<outcome>`.
    pub routing_key: String,
    /// JSON body.
    pub payload: Vec<u8>,
    /// String headers, including `traceparent` when a trace is active.
    pub headers: BTreeMap<String, String>,
}

impl BusMessage {
    pub fn json(
        id: impl Into<String>,
        routing_key: impl Into<String>,
        body: &serde_json::Value,
    ) -> Self {
        let mut headers = BTreeMap::new();
        crate::telemetry::inject_trace_context(&mut headers);
        Self {
            id: id.into(),
            routing_key: routing_key.into(),
            payload: serde_json::to_vec(body).unwrap_or_default(),
            headers,
        }
    }
}

/// The routing key of an event kind: `event.<kind>` with `:` as `.`.
pub fn event_routing_key(kind: &str) -> String {
    format!("event.{}", kind.replace(':', "."))
}

/// A durable queue bound to the exchange with topic patterns.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    pub name: String,
    /// Topic patterns (`*` one word, `#` zero or more words).
    pub bindings: Vec<String>,
    /// Unacknowledged deliveries held at once; `None` = the bus default.
    pub prefetch: Option<u16>,
    /// Only one consumer of the queue receives at a time; others stand by.
    pub single_active_consumer: bool,
}

impl QueueSpec {
    pub fn new(name: impl Into<String>, bindings: &[&str]) -> Self {
        Self {
            name: name.into(),
            bindings: bindings.iter().map(|b| (*b).to_owned()).collect(),
            prefetch: None,
            single_active_consumer: false,
        }
    }

    pub fn single_active(mut self) -> Self {
        self.single_active_consumer = true;
        self
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes and waits until the broker has taken responsibility for the
    /// message (publisher confirm), reconnecting as needed within the
    /// publish timeout.
    async fn publish(&self, message: BusMessage) -> Result<(), BusError>;
    /// Declares the queue and its bindings and starts consuming. The
    /// subscription survives reconnects; dropping it stops the consumer and
    /// returns what it held unacknowledged to the queue.
    async fn subscribe(&self, spec: QueueSpec) -> Result<Subscription, BusError>;
    /// False while the broker is unreachable.
    fn is_connected(&self) -> bool;
    /// `rabbitmq` or `memory`, for logs and readiness.
    fn kind(&self) -> &'static str;
    /// Closes the broker connection and stops reconnecting: a stopping
    /// daemon says goodbye instead of leaving the connection to be torn
    /// down with the runtime.
    async fn close(&self) {}
}

/// Builds the bus the settings ask for. `url` overrides `settings.url` (the
/// `amqp_url` secret).
pub async fn connect(
    settings: &BusSettings,
    url: Option<&Secret>,
) -> Result<Arc<dyn Bus>, BusError> {
    match settings.kind {
        BusKind::Memory => Ok(Arc::new(memory::MemoryBus::new())),
        BusKind::Rabbitmq => {
            let url = url
                .map(|s| s.expose().to_owned())
                .unwrap_or_else(|| settings.url.clone());
            Ok(Arc::new(rabbit::RabbitBus::start(settings.clone(), url)))
        }
    }
}

/// A stream of deliveries from one queue.
pub struct Subscription {
    inner: SubscriptionInner,
}

enum SubscriptionInner {
    Rabbit(rabbit::RabbitSubscription),
    Memory(memory::MemorySubscription),
}

impl Subscription {
    /// The next delivery; `None` once the bus has shut down.
    pub async fn next(&mut self) -> Option<Delivery> {
        match &mut self.inner {
            SubscriptionInner::Rabbit(s) => s.next().await,
            SubscriptionInner::Memory(s) => s.next().await,
        }
    }
}

/// A message handed to a consumer. Ack it when done; nack to requeue or
/// dead-letter. Dropping it unacknowledged returns it to the queue.
pub struct Delivery {
    pub message: BusMessage,
    /// True when an earlier consumer received it and did not ack.
    pub redelivered: bool,
    acker: Acker,
}

enum Acker {
    Rabbit(lapin::Acker),
    Memory(memory::MemoryAcker),
}

impl Delivery {
    pub async fn ack(self) -> Result<(), BusError> {
        match self.acker {
            Acker::Rabbit(acker) => acker
                .ack(lapin::options::BasicAckOptions::default())
                .await
                .map(|_| ())
                .map_err(|e| BusError::Protocol(e.to_string())),
            Acker::Memory(acker) => {
                acker.ack();
                Ok(())
            }
        }
    }

    /// `requeue = false` dead-letters the message.
    pub async fn nack(self, requeue: bool) -> Result<(), BusError> {
        match self.acker {
            Acker::Rabbit(acker) => acker
                .nack(lapin::options::BasicNackOptions {
                    multiple: false,
                    requeue,
                })
                .await
                .map(|_| ())
                .map_err(|e| BusError::Protocol(e.to_string())),
            Acker::Memory(acker) => {
                acker.nack(requeue);
                Ok(())
            }
        }
    }
}

/// AMQP topic matching: words split on `.`, `*` matches one word, `#` zero
/// or more.
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(w), Some(x)) if w == x => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = routing_key.split('.').collect();
    go(&p, &k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns() {
        let table = [
            ("event.#", "event.step.failed", true),
            ("event.#", "event", true),
            ("event.*", "event.step.failed", false),
            ("event.*.failed", "event.step.failed", true),
            ("alert.#", "event.step.failed", false),
            ("#", "anything.at.all", true),
            ("alert.critical", "alert.critical", true),
            ("alert.critical", "alert.warning", false),
            ("#.failed", "event.step.failed", true),
        ];
        for (pattern, key, expected) in table {
            assert_eq!(topic_matches(pattern, key), expected, "{pattern} vs {key}");
        }
    }

    #[test]
    fn event_kinds_become_routing_keys() {
        assert_eq!(event_routing_key("step.failed"), "event.step.failed");
        assert_eq!(
            event_routing_key("engagement:high"),
            "event.engagement.high"
        );
    }
}
