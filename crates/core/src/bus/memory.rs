//! The in-process bus of `opsloop dev`: named queues bound with topic
//! patterns, manual acks, redelivery of what a dropped delivery held, and a
//! dead-letter list. Lives as long as the process.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{
    Acker, Bus, BusError, BusMessage, Delivery, QueueSpec, Subscription, SubscriptionInner,
    topic_matches,
};

const DEFAULT_PREFETCH: usize = 64;

#[derive(Clone, Default)]
pub struct MemoryBus {
    queues: Arc<Mutex<HashMap<String, Arc<MemoryQueue>>>>,
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages dead-lettered from `queue` (nacked without requeue).
    pub fn dead_letters(&self, queue: &str) -> Vec<BusMessage> {
        lock(&self.queues)
            .get(queue)
            .map(|q| lock(&q.state).dead.clone())
            .unwrap_or_default()
    }

    /// Messages waiting in `queue` (ready plus unacknowledged).
    pub fn depth(&self, queue: &str) -> usize {
        lock(&self.queues)
            .get(queue)
            .map(|q| {
                let state = lock(&q.state);
                state.ready.len() + state.unacked.len()
            })
            .unwrap_or(0)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short critical sections leaves the
    // data consistent (every mutation is a single push/pop), so recover.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct MemoryQueue {
    bindings: Mutex<Vec<String>>,
    state: Mutex<QueueState>,
    notify: Notify,
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<(BusMessage, bool)>,
    unacked: HashMap<u64, BusMessage>,
    next_tag: u64,
    dead: Vec<BusMessage>,
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, message: BusMessage) -> Result<(), BusError> {
        let queues: Vec<Arc<MemoryQueue>> = lock(&self.queues).values().cloned().collect();
        for queue in queues {
            let matched = lock(&queue.bindings)
                .iter()
                .any(|b| topic_matches(b, &message.routing_key));
            if matched {
                lock(&queue.state).ready.push_back((message.clone(), false));
                queue.notify.notify_waiters();
                queue.notify.notify_one();
            }
        }
        Ok(())
    }

    async fn subscribe(&self, spec: QueueSpec) -> Result<Subscription, BusError> {
        let queue = lock(&self.queues)
            .entry(spec.name.clone())
            .or_insert_with(|| {
                Arc::new(MemoryQueue {
                    bindings: Mutex::new(Vec::new()),
                    state: Mutex::new(QueueState::default()),
                    notify: Notify::new(),
                })
            })
            .clone();
        {
            let mut bindings = lock(&queue.bindings);
            for b in spec.bindings {
                if !bindings.contains(&b) {
                    bindings.push(b);
                }
            }
        }
        Ok(Subscription {
            inner: SubscriptionInner::Memory(MemorySubscription {
                queue,
                prefetch: spec.prefetch.map(usize::from).unwrap_or(DEFAULT_PREFETCH),
            }),
        })
    }

    fn is_connected(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

pub struct MemorySubscription {
    queue: Arc<MemoryQueue>,
    prefetch: usize,
}

impl MemorySubscription {
    pub(super) async fn next(&mut self) -> Option<Delivery> {
        loop {
            let notified = self.queue.notify.notified();
            {
                let mut state = lock(&self.queue.state);
                if state.unacked.len() < self.prefetch
                    && let Some((message, redelivered)) = state.ready.pop_front()
                {
                    state.next_tag += 1;
                    let tag = state.next_tag;
                    state.unacked.insert(tag, message.clone());
                    return Some(Delivery {
                        message,
                        redelivered,
                        acker: Acker::Memory(MemoryAcker {
                            queue: self.queue.clone(),
                            tag,
                            settled: false,
                        }),
                    });
                }
            }
            notified.await;
        }
    }
}

pub struct MemoryAcker {
    queue: Arc<MemoryQueue>,
    tag: u64,
    settled: bool,
}

impl MemoryAcker {
    pub(super) fn ack(mut self) {
        self.settled = true;
        lock(&self.queue.state).unacked.remove(&self.tag);
        self.queue.notify.notify_waiters();
    }

    pub(super) fn nack(mut self, requeue: bool) {
        self.settled = true;
        self.settle(requeue);
    }

    fn settle(&self, requeue: bool) {
        let mut state = lock(&self.queue.state);
        if let Some(message) = state.unacked.remove(&self.tag) {
            if requeue {
                state.ready.push_front((message, true));
            } else {
                state.dead.push(message);
            }
        }
        drop(state);
        self.queue.notify.notify_waiters();
        self.queue.notify.notify_one();
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if !self.settled {
            // The consumer went away holding the message: give it back.
            self.settle(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, key: &str) -> BusMessage {
        BusMessage {
            id: id.into(),
            routing_key: key.into(),
            payload: b"{}".to_vec(),
            headers: Default::default(),
        }
    }

    #[tokio::test]
    async fn routes_acks_redelivers_and_dead_letters() {
        let bus = MemoryBus::new();
        let mut alerts = bus
            .subscribe(QueueSpec::new("alerts", &["alert.#"]))
            .await
            .expect("subscribe");
        bus.publish(msg("1", "event.step.failed"))
            .await
            .expect("publish");
        bus.publish(msg("2", "alert.critical"))
            .await
            .expect("publish");
        bus.publish(msg("3", "alert.info")).await.expect("publish");

        let first = alerts.next().await.expect("delivery");
        assert_eq!(first.message.id, "2");
        assert!(!first.redelivered);
        drop(first); // consumer died without acking
        let again = alerts.next().await.expect("redelivery");
        assert_eq!(again.message.id, "2");
        assert!(again.redelivered);
        again.ack().await.expect("ack");
        let third = alerts.next().await.expect("delivery");
        assert_eq!(third.message.id, "3");
        third.nack(false).await.expect("nack");
        assert_eq!(bus.dead_letters("alerts").len(), 1);
        assert_eq!(bus.depth("alerts"), 0);
    }
}
