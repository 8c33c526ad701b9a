//! The `[alerter]` config section: listen addresses, the routing tree,
//! inhibition rules, receivers, timings and the delivery retry budget. The
//! defaults work for `opsloop dev`: with no webhook secret set, alerts go to
//! the console and `var/alerts.jsonl`.
//!
//! With the defaults, setting the secrets `slack_webhook_url`,
//! `discord_webhook_url`, `pagerduty_routing_key`,
//! `slack_summary_webhook_url` and `discord_summary_webhook_url` enables the
//! P0–P3 tree of [`crate::route::default_route`]; the daily summary and the
//! weekly report go to the summary receivers (and the console) only, never
//! to the alert channel. A custom tree looks like this:
//!
//! ```toml
//! [alerter]
//! resolve_timeout = "5m"
//! lease_ttl_ms = 15000
//! max_in_flight_per_receiver = 64
//! commit_fsync = false
//!
//! [alerter.route]
//! receiver = "slack"
//! group_by = ["alertname", "service"]
//! group_wait = "30s"
//! group_interval = "5m"
//! repeat_interval = "4h"
//!
//! [[alerter.route.routes]]
//! matchers = ['severity="critical"']
//! receiver = "pagerduty"
//! continue = true
//!
//! [[alerter.inhibit_rules]]
//! source_matchers = ['severity="critical"']
//! target_matchers = ['severity="warning"']
//! equal = ["service"]
//!
//! [[alerter.receivers]]
//! name = "slack"
//! kind = "slack"              # slack | discord | webhook | pagerduty | console
//! secret = "slack_webhook_url"
//! min_interval_ms = 1000
//!
//! [[alerter.receivers]]
//! name = "pagerduty"
//! kind = "pagerduty"
//! secret = "pagerduty_routing_key"
//!
//! [alerter.delivery]
//! initial_backoff_ms = 1000
//! max_backoff_ms = 60000
//! max_total_ms = 600000
//! request_timeout_ms = 10000
//! ```

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
    /// Deliveries one receiver may have unconfirmed at once (on the wire,
    /// or answered and not yet in the notification log); the rest wait in
    /// order. Also the idle connections kept per receiver host. 0 counts
    /// as 1.
    pub max_in_flight_per_receiver: usize,
    /// Whether a post is answered (and a delivery's slot freed) only once
    /// its commit is flushed to disk by the database. `false` (default):
    /// once committed, before the flush (PostgreSQL `synchronous_commit =
    /// off` for the alerter's batched writes only): nothing is lost when the
    /// alerter dies, a crash of the database host can lose the last ~600 ms
    /// of commits (posts Prometheus re-sends; log rows whose loss repeats a
    /// notification). `true`: every answer waits for the fsync.
    pub commit_fsync: bool,
    /// Incidents, on-call and escalation (`[alerter.incidents]`).
    pub incidents: crate::incident::IncidentSettings,
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
            max_in_flight_per_receiver: crate::delivery::DEFAULT_MAX_IN_FLIGHT,
            commit_fsync: false,
            incidents: Default::default(),
        }
    }
}

/// Parses and validates `[alerter]` (routing tree, inhibition rules,
/// durations, receivers named by the tree) before any I/O; what
/// `opsloop_core::daemon::run` calls.
pub fn check_config(config: &opsloop_core::config::LoadedConfig) -> anyhow::Result<()> {
    let settings: AlerterSettings = config.section("alerter")?;
    let route = crate::route::Route::compile(&settings.route)
        .map_err(|e| anyhow::anyhow!("invalid configuration: alerter.route: {e}"))?;
    for (i, rule) in settings.inhibit_rules.iter().enumerate() {
        crate::inhibit::InhibitRule::compile(rule).map_err(|e| {
            anyhow::anyhow!("invalid configuration: alerter.inhibit_rules[{i}]: {e}")
        })?;
    }
    crate::route::parse_duration(&settings.resolve_timeout)
        .map_err(|e| anyhow::anyhow!("invalid configuration: alerter.resolve_timeout: {e}"))?;
    let configured: std::collections::BTreeSet<String> =
        settings.receivers.iter().map(|r| r.name.clone()).collect();
    if let Some(missing) = route
        .receivers()
        .into_iter()
        .find(|r| !configured.contains(r))
    {
        anyhow::bail!(
            "invalid configuration: alerter.route: receiver {missing:?} is not defined in alerter.receivers"
        );
    }
    crate::incidents::compile(&settings.incidents)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_loads() {
        let doc: String = include_str!("config.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! "))
            .skip_while(|l| *l != "```toml")
            .skip(1)
            .take_while(|l| *l != "```")
            .collect::<Vec<_>>()
            .join("\n");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("opsloop.toml");
        std::fs::write(&path, doc).expect("write");
        let loaded = opsloop_core::config::load(&opsloop_core::config::ConfigSources {
            file: Some(path),
            use_default_file: false,
            env: Some(Default::default()),
        })
        .expect("loads");
        let settings: AlerterSettings = loaded.section("alerter").expect("section");
        assert_eq!(settings.receivers.len(), 2);
        assert!(settings.route.routes[0].continue_matching);
        crate::route::Route::compile(&settings.route).expect("compiles");
    }

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
