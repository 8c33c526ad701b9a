//! The `[alerter]` config section: listen addresses, the routing tree,
//! inhibition rules, receivers, timings and the delivery retry budget. The
//! defaults work for `opsloop dev`: with no webhook secret set, alerts go to
//! the console and `var/alerts.jsonl`.

use serde::{Deserialize, Serialize};

use crate::delivery::RetryPolicy;
use crate::inhibit::{InhibitRuleConfig, default_rules};
use crate::receivers::{LocalOutput, ReceiverConfig, default_receivers};
use crate::route::{RouteConfig, default_route};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlerterSettings {
    /// gRPC listen address.
    pub grpc_addr: String,
    /// HTTP listen address (Alertmanager v2 API, health, readiness, metrics).
    pub http_addr: String,
    /// Where operators reach the alerter (the webhook's `externalURL`).
    pub external_url: String,
    /// How long an alert without `endsAt` stays firing unless re-sent
    /// (Alertmanager's `resolve_timeout`).
    pub resolve_timeout: String,
    /// Longest pause between two checks for due groups, in milliseconds.
    pub tick_ms: u64,
    /// How long bus message ids are remembered for deduplication, in hours.
    pub seen_retention_hours: u64,
    /// Lease time of the delivery lease, in milliseconds: with several
    /// alerters, the holder delivers and a standby takes over this long
    /// after the holder dies. 0 turns the lease off (every process delivers).
    pub lease_ttl_ms: u64,
    /// The bus queue consumed for `alert.#` (one per deployment; tests use
    /// their own).
    pub queue: String,
    pub route: RouteConfig,
    pub inhibit_rules: Vec<InhibitRuleConfig>,
    pub receivers: Vec<ReceiverConfig>,
    /// `auto` (console receivers only when no webhook is configured),
    /// `always` or `never`.
    pub local_output: LocalOutput,
    pub delivery: RetryPolicy,
}

impl Default for AlerterSettings {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:50052".into(),
            http_addr: "127.0.0.1:9756".into(),
            external_url: "http://127.0.0.1:9756".into(),
            resolve_timeout: "5m".into(),
            tick_ms: 1_000,
            seen_retention_hours: 72,
            lease_ttl_ms: 15_000,
            queue: crate::consumer::QUEUE.into(),
            route: default_route(),
            inhibit_rules: default_rules(),
            receivers: default_receivers(),
            local_output: LocalOutput::Auto,
            delivery: RetryPolicy::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml_shaped_config() {
        let json = serde_json::to_value(AlerterSettings::default()).expect("serialize");
        let back: AlerterSettings = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, AlerterSettings::default());
        let partial: AlerterSettings =
            serde_json::from_str(r#"{"route": {"receiver": "hook", "group_wait": "1s"}}"#)
                .expect("partial");
        assert_eq!(partial.route.receiver.as_deref(), Some("hook"));
        assert_eq!(partial.receivers, default_receivers());
        assert!(serde_json::from_str::<AlerterSettings>(r#"{"rout": {}}"#).is_err());
    }
}
