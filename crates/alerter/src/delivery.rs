//! One delivery engine for every receiver: per-receiver pacing (Slack about
//! one message a second), `429` honoured (`Retry-After`, Discord's
//! `retry_after` body and `X-RateLimit-*` headers), exponential backoff with
//! jitter on 5xx, timeouts and connection errors, all within a bounded total
//! retry time. The outcome says what happened; the caller records it (a
//! dead-letter row when undelivered), so nothing is dropped silently. Time
//! comes from a [`Clock`], so tests neither sleep nor wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::group::Notification;
use crate::receivers::{ConfiguredReceiver, RenderContext, Target, local, truncate};

/// The time source and sleeper of the engine.
#[async_trait]
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    async fn sleep(&self, duration: Duration);
}

/// The real clock.
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// A clock that only moves when slept on: sleeping advances it at once and
/// records the duration. For tests.
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    slept: Mutex<Vec<Duration>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Mutex::new(start),
            slept: Mutex::new(Vec::new()),
        }
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *now += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
    }

    /// Every sleep so far.
    pub fn slept(&self) -> Vec<Duration> {
        self.slept.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
    async fn sleep(&self, duration: Duration) {
        self.slept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(duration);
        self.advance(duration);
        tokio::task::yield_now().await;
    }
}

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
        let http = reqwest::Client::builder()
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
        let mut backoff = Duration::from_millis(self.policy.initial_backoff_ms.max(1));
        let max_backoff = Duration::from_millis(self.policy.max_backoff_ms.max(1));
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
            // The backoff plus up to half of it again as jitter (capped),
            // so receivers recovering from an outage are not hit in lockstep.
            let jitter = backoff.mul_f64(rand::random::<f64>() * 0.5);
            let wait = after.unwrap_or((backoff + jitter).min(max_backoff));
            backoff = (backoff * 2).min(max_backoff);
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

#[cfg(test)]
mod tests {
    use super::*;

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
