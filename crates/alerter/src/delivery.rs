//! One delivery engine for every receiver: per-receiver pacing (Slack about
//! one message a second), `429` honoured (`Retry-After`, Discord's
//! `retry_after` body and `X-RateLimit-*` headers), exponential backoff with
//! jitter on 5xx, timeouts and connection errors, all within a bounded total
//! retry time. The outcome says what happened; the caller records it (a
//! dead-letter row when undelivered), so nothing is dropped silently. Time
//! comes from a [`Clock`], so tests neither sleep nor wait.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use opsloop_core::domain::Doubling;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::group::Notification;
use crate::receivers::{ConfiguredReceiver, RenderContext, Target, local, truncate};

/// The time source and sleeper of the engine: core's one clock.
pub use opsloop_core::clock::{Clock, SystemClock};

/// Retry settings (`[alerter.delivery]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// First backoff after a failure.
    pub initial_backoff_ms: u64,
    /// Cap of one backoff.
    pub max_backoff_ms: u64,
    /// Give up (dead-letter) when the next wait would end later than this
    /// after the first attempt.
    pub max_total_ms: u64,
    /// Bound on one HTTP request.
    pub request_timeout_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            max_total_ms: 10 * 60_000,
            request_timeout_ms: 10_000,
        }
    }
}

/// What happened to one notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub delivered: bool,
    pub attempts: u32,
    pub http_status: Option<u16>,
    /// From the first attempt to the outcome.
    pub latency: Duration,
    /// In words; never contains the receiver's URL.
    pub detail: String,
}

/// What one HTTP attempt said.
enum Attempt {
    Delivered(u16),
    /// Try again after at least this long (None: use the backoff).
    Retry {
        status: Option<u16>,
        after: Option<Duration>,
        detail: String,
    },
    Permanent {
        status: u16,
        detail: String,
    },
}

pub struct DeliveryEngine {
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
    policy: RetryPolicy,
    /// Receiver name → earliest instant of its next message.
    pacing: Mutex<HashMap<String, DateTime<Utc>>>,
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn parse_seconds(text: &str) -> Option<Duration> {
    let secs: f64 = text.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    if let Some(d) = parse_seconds(value) {
        return Some(d);
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    (at - now).to_std().ok().or(Some(Duration::ZERO))
}

impl DeliveryEngine {
    pub fn new(clock: Arc<dyn Clock>, policy: RetryPolicy) -> Result<Self, reqwest::Error> {
        Self::with_pool(clock, policy, DEFAULT_MAX_IN_FLIGHT)
    }

    /// One HTTP client for every receiver, keeping at most `idle_per_host`
    /// idle connections per receiver host (the service bounds the requests
    /// on the wire with [`DeliveryQueues`], so connections stay bounded
    /// too).
    pub fn with_pool(
        clock: Arc<dyn Clock>,
        policy: RetryPolicy,
        idle_per_host: usize,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(idle_per_host.max(1))
            .timeout(Duration::from_millis(policy.request_timeout_ms))
            .connect_timeout(Duration::from_millis(policy.request_timeout_ms.min(5_000)))
            .user_agent(concat!("opsloop-alerter/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            clock,
            policy,
            pacing: Mutex::new(HashMap::new()),
        })
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Waits for this receiver's next slot and books the one after it.
    async fn pace(&self, receiver: &ConfiguredReceiver) {
        let now = self.clock.now();
        let slot = {
            let mut pacing = self.pacing.lock().unwrap_or_else(|p| p.into_inner());
            let next = pacing.entry(receiver.name.clone()).or_insert(now);
            let slot = (*next).max(now);
            *next = slot + to_chrono(receiver.min_interval);
            slot
        };
        if let Ok(wait) = (slot - now).to_std()
            && !wait.is_zero()
        {
            self.clock.sleep(wait).await;
        }
    }

    /// Holds back the receiver's next message (a rate-limit header said so).
    fn hold_back(&self, receiver: &str, until: DateTime<Utc>) {
        let mut pacing = self.pacing.lock().unwrap_or_else(|p| p.into_inner());
        let next = pacing.entry(receiver.to_owned()).or_insert(until);
        *next = (*next).max(until);
    }

    /// Renders and delivers one notification, retrying within the budget.
    pub async fn deliver(
        &self,
        receiver: &ConfiguredReceiver,
        notification: &Notification,
        ctx: &RenderContext,
    ) -> Outcome {
        let payload = receiver.format.payload(notification, ctx);
        let started = self.clock.now();
        let outcome = match &receiver.target {
            Target::Console { path } => {
                for line in local::console_lines(notification) {
                    println!("{line}");
                }
                let written = match path {
                    Some(path) => local::append_json_line(path, &payload)
                        .map_err(|e| format!("appending to {}: {e}", path.display())),
                    None => Ok(()),
                };
                Outcome {
                    delivered: written.is_ok(),
                    attempts: 1,
                    http_status: None,
                    latency: Duration::ZERO,
                    detail: written.err().unwrap_or_else(|| "printed".into()),
                }
            }
            Target::Http { url } => {
                self.post_with_retries(receiver, url.expose(), &payload, started)
                    .await
            }
        };
        let outcome_label = if outcome.delivered {
            "sent"
        } else {
            "dead_letter"
        };
        metrics::counter!(
            "opsloop_alerter_notifications_total",
            "receiver" => receiver.name.clone(),
            "outcome" => outcome_label
        )
        .increment(1);
        metrics::histogram!(
            "opsloop_alerter_delivery_seconds",
            "receiver" => receiver.name.clone()
        )
        .record(outcome.latency.as_secs_f64());
        outcome
    }

    async fn post_with_retries(
        &self,
        receiver: &ConfiguredReceiver,
        url: &str,
        payload: &serde_json::Value,
        started: DateTime<Utc>,
    ) -> Outcome {
        let deadline = started + to_chrono(Duration::from_millis(self.policy.max_total_ms));
        let mut backoff = Doubling::new(
            Duration::from_millis(self.policy.initial_backoff_ms),
            Duration::from_millis(self.policy.max_backoff_ms),
        );
        let mut attempts = 0;
        loop {
            self.pace(receiver).await;
            attempts += 1;
            let attempt = self.post_once(&receiver.name, url, payload).await;
            let now = self.clock.now();
            let latency = (now - started).to_std().unwrap_or_default();
            let (status, after, detail) = match attempt {
                Attempt::Delivered(status) => {
                    return Outcome {
                        delivered: true,
                        attempts,
                        http_status: Some(status),
                        latency,
                        detail: format!("HTTP {status}"),
                    };
                }
                Attempt::Permanent { status, detail } => {
                    return Outcome {
                        delivered: false,
                        attempts,
                        http_status: Some(status),
                        latency,
                        detail,
                    };
                }
                Attempt::Retry {
                    status,
                    after,
                    detail,
                } => (status, after, detail),
            };
            // Jittered, so receivers recovering from an outage are not hit
            // in lockstep; a receiver's own Retry-After wins.
            let own = backoff.next_jittered(rand::random::<f64>());
            let wait = after.unwrap_or(own);
            if now + to_chrono(wait) > deadline {
                return Outcome {
                    delivered: false,
                    attempts,
                    http_status: status,
                    latency,
                    detail: format!(
                        "gave up after {attempts} attempts within the {} ms retry budget: {detail}",
                        self.policy.max_total_ms
                    ),
                };
            }
            tracing::warn!(
                receiver = %receiver.name,
                attempt = attempts,
                wait_ms = wait.as_millis() as u64,
                detail = %detail,
                "delivery failed; retrying"
            );
            self.clock.sleep(wait).await;
        }
    }

    async fn post_once(&self, receiver: &str, url: &str, payload: &serde_json::Value) -> Attempt {
        let response = match self.http.post(url).json(payload).send().await {
            Ok(response) => response,
            Err(error) => {
                // without_url: the URL is a secret.
                let kind = if error.is_timeout() {
                    "timed out"
                } else if error.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                return Attempt::Retry {
                    status: None,
                    after: None,
                    detail: format!("{kind}: {}", error.without_url()),
                };
            }
        };
        let status = response.status();
        let now = self.clock.now();
        let headers = response.headers().clone();
        // Discord: X-RateLimit-Remaining 0 → hold the next message back.
        let remaining = headers
            .get("x-ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        if remaining == Some("0")
            && let Some(reset) = headers
                .get("x-ratelimit-reset-after")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_seconds)
        {
            self.hold_back(receiver, now + to_chrono(reset));
        }
        let body = response.text().await.unwrap_or_default();
        let code = status.as_u16();
        if status.is_success() {
            return Attempt::Delivered(code);
        }
        let detail = format!("HTTP {code}: {}", truncate(body.trim(), 200));
        if status == StatusCode::TOO_MANY_REQUESTS {
            let body_after = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("retry_after").and_then(serde_json::Value::as_f64))
                .and_then(|s| parse_seconds(&s.to_string()));
            return Attempt::Retry {
                status: Some(code),
                after: retry_after(&headers, now).or(body_after),
                detail,
            };
        }
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            return Attempt::Retry {
                status: Some(code),
                after: None,
                detail,
            };
        }
        Attempt::Permanent {
            status: code,
            detail,
        }
    }
}

/// The default of `alerter.max_in_flight_per_receiver`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// What [`DeliveryQueues::offer`] did with a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Queued behind the receiver's earlier notifications.
    Queued,
    /// The group already waited: its newer state replaced the queued one,
    /// keeping its place.
    Replaced,
    /// The group's previous delivery is still unconfirmed; the group's next
    /// flush after it sends whatever changed.
    Busy,
}

/// One receiver's deliveries: group keys waiting in order (with the newest
/// notification of each) and the groups in flight.
#[derive(Default)]
struct ReceiverQueue {
    order: VecDeque<String>,
    waiting: HashMap<String, Notification>,
    in_flight: HashSet<String>,
}

/// Per-receiver delivery queues, without I/O: at most `limit` deliveries
/// of one receiver are unconfirmed at once (on the wire, or answered and
/// waiting for their notification log row); the rest wait in the order
/// their groups flushed, one entry per group.
///
/// Nothing here needs persisting: a waiting notification has no
/// notification log row yet and its alerts are in the alerts table, so a
/// process that dies (kill -9) or stops (SIGTERM) with notifications
/// waiting leaves them for the next start, which rebuilds the groups from
/// the table and notifies every group the log has not recorded. Only the
/// (at most `limit`) unconfirmed deliveries can reach a receiver twice.
pub struct DeliveryQueues {
    limit: usize,
    receivers: HashMap<String, ReceiverQueue>,
    stopped: bool,
}

impl DeliveryQueues {
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            receivers: HashMap::new(),
            stopped: false,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Queues a flushed group's notification (see [`Offered`]).
    pub fn offer(&mut self, notification: Notification) -> Offered {
        let queue = self
            .receivers
            .entry(notification.receiver.clone())
            .or_default();
        let key = notification.group_key.clone();
        if queue.in_flight.contains(&key) {
            return Offered::Busy;
        }
        match queue.waiting.insert(key.clone(), notification) {
            Some(_) => Offered::Replaced,
            None => {
                queue.order.push_back(key);
                Offered::Queued
            }
        }
    }

    /// Takes the notifications that may go on the wire now, in queue
    /// order, and counts them in flight (none once stopped).
    pub fn start_ready(&mut self) -> Vec<Notification> {
        let mut ready = Vec::new();
        if self.stopped {
            return ready;
        }
        for queue in self.receivers.values_mut() {
            while queue.in_flight.len() < self.limit
                && let Some(key) = queue.order.pop_front()
            {
                if let Some(notification) = queue.waiting.remove(&key) {
                    queue.in_flight.insert(key);
                    ready.push(notification);
                }
            }
        }
        ready
    }

    /// A delivery is confirmed (logged) or given up: its slot frees.
    pub fn finish(&mut self, receiver: &str, group_key: &str) {
        if let Some(queue) = self.receivers.get_mut(receiver) {
            queue.in_flight.remove(group_key);
        }
    }

    /// Starts nothing more (shutdown); returns how many notifications are
    /// left waiting for the next start.
    pub fn stop(&mut self) -> usize {
        self.stopped = true;
        self.waiting()
    }

    /// Drops the waiting notifications (this process stopped delivering:
    /// the lease holder rebuilds them from the database).
    pub fn clear_waiting(&mut self) {
        for queue in self.receivers.values_mut() {
            queue.order.clear();
            queue.waiting.clear();
        }
    }

    /// Notifications waiting, over every receiver.
    pub fn waiting(&self) -> usize {
        self.receivers.values().map(|q| q.waiting.len()).sum()
    }

    /// Per receiver seen so far (a handful): (waiting, in flight).
    pub fn depths(&self) -> Vec<(String, usize, usize)> {
        self.receivers
            .iter()
            .map(|(name, q)| (name.clone(), q.waiting.len(), q.in_flight.len()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(receiver: &str, key: &str, firing: usize) -> Notification {
        let at = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let alerts = (0..firing)
            .map(|i| crate::model::tests::alert(&[("alertname", key), ("i", &i.to_string())], 0))
            .collect();
        Notification::new(receiver, key, Default::default(), alerts, Vec::new(), at)
    }

    fn keys(notes: &[Notification]) -> Vec<&str> {
        notes.iter().map(|n| n.group_key.as_str()).collect()
    }

    #[test]
    fn queues_bound_each_receiver_and_keep_order() {
        let mut q = DeliveryQueues::new(2);
        for key in ["a", "b", "c", "d"] {
            assert_eq!(q.offer(note("hook", key, 1)), Offered::Queued);
        }
        assert_eq!(q.offer(note("other", "x", 1)), Offered::Queued);
        let mut first = q.start_ready();
        first.sort_by(|x, y| (&x.receiver, &x.group_key).cmp(&(&y.receiver, &y.group_key)));
        assert_eq!(keys(&first), ["a", "b", "x"]);
        assert!(q.start_ready().is_empty(), "hook is at its bound");
        // A group in flight is not queued again; a waiting one is replaced
        // in place by its newer state.
        assert_eq!(q.offer(note("hook", "a", 2)), Offered::Busy);
        assert_eq!(q.offer(note("hook", "c", 3)), Offered::Replaced);
        assert_eq!(q.waiting(), 2);
        q.finish("hook", "b");
        let next = q.start_ready();
        assert_eq!(keys(&next), ["c"]);
        assert_eq!(next[0].firing.len(), 3, "the newest state of c");
        // Stopped: nothing more starts; what waits is left for the next start.
        assert_eq!(q.stop(), 1);
        q.finish("hook", "a");
        assert!(q.start_ready().is_empty());
        let mut depths = q.depths();
        depths.sort();
        assert_eq!(depths, vec![("hook".into(), 1, 1), ("other".into(), 0, 1)]);
        q.clear_waiting();
        assert_eq!(q.waiting(), 0);
        q.finish("hook", "c");
        q.finish("other", "x");
        assert!(q.depths().iter().all(|(_, w, f)| *w == 0 && *f == 0));
        assert_eq!(DeliveryQueues::new(0).limit(), 1);
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers, now), None);
        headers.insert(reqwest::header::RETRY_AFTER, "3".parse().expect("h"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(3)));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            "Mon, 23 Nov 2026 10:00:07 GMT".parse().expect("h"),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        assert_eq!(parse_seconds("0.25"), Some(Duration::from_millis(250)));
        assert_eq!(parse_seconds("-1"), None);
        assert_eq!(parse_seconds("soon"), None);
    }
}
