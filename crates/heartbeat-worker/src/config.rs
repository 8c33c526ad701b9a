//! The `[heartbeat]` config section: tick cadence (interval or cron), the
//! leader lease, phase budgets, the daily summary's schedule and zone, and
//! this instance's id, and the uptime probes (`[[heartbeat.probes]]`, see
//! [`crate::probe_config`]). [`HeartbeatSettings::validate`] turns a bad value
//! into one line naming the key.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::probe_config::{MaintenanceSpec, ProbeSpec, parse_maintenance, parse_probes};
use crate::schedule::{CronSchedule, TickSchedule};

/// The `[heartbeat]` config section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatSettings {
    /// HTTP listen address (health, readiness, metrics, `POST /run`).
    pub http_addr: String,
    /// Seconds between ticks (used when `cron` is unset).
    pub interval_secs: u64,
    /// A cron expression for ticks (UTC); overrides `interval_secs`.
    pub cron: Option<String>,
    /// Leader lease length; a standby takes over within this long.
    pub lease_secs: u64,
    /// This process's name in the lease and in `heartbeat_runs`; default
    /// `<hostname>-<pid>-<random>`.
    pub instance_id: Option<String>,
    pub triggers_budget_ms: u64,
    pub reactions_budget_ms: u64,
    /// Budget of every other phase.
    pub phase_budget_ms: u64,
    /// When the daily summary goes out, in `summary_timezone`.
    pub summary_cron: String,
    /// Time zone of the daily summary and the weekly report.
    pub summary_timezone: String,
    /// When the weekly report goes out, in `summary_timezone`.
    pub weekly_report_cron: String,
    /// Proposals pending longer than this expire.
    pub stale_proposal_days: u32,
    /// A proposal pending for longer than this is announced once
    /// (`OpsProposalPendingApproval`, info, to the summary receiver).
    pub pending_notice_secs: u64,
    /// The operator console's base URL, for links in notifications
    /// (`<console_url>/proposals/<id>`).
    pub console_url: String,
    /// Most new events one phase reads per tick.
    pub event_batch: u64,
    /// An event whose evaluation fails is retried on the following ticks
    /// and quarantined (with a record) after this many failed attempts.
    pub quarantine_after_failures: u32,
    /// Base URL of an OpenAI-compatible API (`…/v1`) that writes insight
    /// summaries; the secret `summarizer_api_key` is its bearer key. Unset:
    /// the deterministic built-in summary.
    pub summarizer_url: Option<String>,
    pub summarizer_model: String,
    pub summarizer_timeout_ms: u64,
    /// Consume `event.#` from the bus for reactions in near real time.
    pub consume_events: bool,
    /// The bus queue of that consumer.
    pub reactions_queue: String,
    /// Uptime probes the leader runs, each on its own interval.
    pub probes: Vec<ProbeSpec>,
    /// Windows in which probes' down alerts are held back.
    pub maintenance: Vec<MaintenanceSpec>,
    /// Most probe checks in flight at once.
    pub probe_concurrency: u32,
    /// Days of per-minute probe history kept.
    pub probe_history_days: u32,
}

impl Default for HeartbeatSettings {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:9755".into(),
            interval_secs: 300,
            cron: None,
            lease_secs: 30,
            instance_id: None,
            triggers_budget_ms: 4_000,
            reactions_budget_ms: 3_000,
            phase_budget_ms: 10_000,
            summary_cron: "0 6 * * *".into(),
            summary_timezone: "UTC".into(),
            weekly_report_cron: "0 9 * * 1".into(),
            stale_proposal_days: 7,
            pending_notice_secs: 900,
            console_url: "http://127.0.0.1:9754/console".into(),
            event_batch: 5_000,
            quarantine_after_failures: 3,
            summarizer_url: None,
            summarizer_model: "gpt-4o-mini".into(),
            summarizer_timeout_ms: 10_000,
            consume_events: true,
            reactions_queue: "opsloop.heartbeat.reactions".into(),
            probes: Vec::new(),
            maintenance: Vec::new(),
            probe_concurrency: 16,
            probe_history_days: 90,
        }
    }
}

/// The parsed schedules of a valid section.
#[derive(Debug, Clone)]
pub struct Schedules {
    pub tick: TickSchedule,
    pub summary: CronSchedule,
    pub weekly: CronSchedule,
}

/// A bad `[heartbeat]` value.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: heartbeat.{key}: {reason}")]
pub struct SettingsError {
    pub key: String,
    pub reason: String,
}

fn positive(key: &'static str, value: u64) -> Result<(), SettingsError> {
    if value == 0 {
        return Err(SettingsError {
            key: key.into(),
            reason: "must be at least 1".into(),
        });
    }
    Ok(())
}

impl HeartbeatSettings {
    /// Checks every value; the parsed schedules are returned.
    pub fn validate(&self) -> Result<Schedules, SettingsError> {
        positive("interval_secs", self.interval_secs)?;
        positive("lease_secs", self.lease_secs)?;
        positive("triggers_budget_ms", self.triggers_budget_ms)?;
        positive("reactions_budget_ms", self.reactions_budget_ms)?;
        positive("phase_budget_ms", self.phase_budget_ms)?;
        positive("stale_proposal_days", self.stale_proposal_days.into())?;
        positive("pending_notice_secs", self.pending_notice_secs)?;
        if !(self.console_url.starts_with("http://") || self.console_url.starts_with("https://")) {
            return Err(SettingsError {
                key: "console_url".into(),
                reason: format!(
                    "`{}` is not an http(s) URL (e.g. https://opsloop.example.com/console)",
                    self.console_url
                ),
            });
        }
        positive("event_batch", self.event_batch)?;
        positive(
            "quarantine_after_failures",
            self.quarantine_after_failures.into(),
        )?;
        positive("summarizer_timeout_ms", self.summarizer_timeout_ms)?;
        positive("probe_concurrency", self.probe_concurrency.into())?;
        positive("probe_history_days", self.probe_history_days.into())?;
        parse_maintenance(&self.maintenance, &parse_probes(&self.probes)?)?;
        if let Some(url) = &self.summarizer_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(SettingsError {
                key: "summarizer_url".into(),
                reason: "must start with http:// or https://".into(),
            });
        }
        let tick = match &self.cron {
            Some(expr) => {
                TickSchedule::Cron(Box::new(CronSchedule::parse(expr, "UTC").map_err(|e| {
                    SettingsError {
                        key: "cron".into(),
                        reason: e.to_string(),
                    }
                })?))
            }
            None => TickSchedule::Every(chrono::Duration::seconds(
                i64::try_from(self.interval_secs).unwrap_or(i64::MAX / 2_000_000),
            )),
        };
        let summary =
            CronSchedule::parse(&self.summary_cron, &self.summary_timezone).map_err(|e| {
                SettingsError {
                    key: if self.summary_timezone.parse::<chrono_tz::Tz>().is_err() {
                        "summary_timezone".into()
                    } else {
                        "summary_cron".into()
                    },
                    reason: e.to_string(),
                }
            })?;
        let weekly = CronSchedule::parse(&self.weekly_report_cron, &self.summary_timezone)
            .map_err(|e| SettingsError {
                key: "weekly_report_cron".into(),
                reason: e.to_string(),
            })?;
        Ok(Schedules {
            tick,
            summary,
            weekly,
        })
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }

    /// The configured id, or `<hostname>-<pid>-<random>`.
    pub fn resolved_instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "heartbeat".into());
            let random = uuid::Uuid::new_v4().simple().to_string();
            format!("{host}-{}-{}", std::process::id(), &random[..8])
        })
    }
}

/// Parses and validates `[heartbeat]` before any I/O; what
/// `opsloop_core::daemon::run` calls.
pub fn check_config(config: &opsloop_core::config::LoadedConfig) -> anyhow::Result<()> {
    let settings: HeartbeatSettings = config.section("heartbeat")?;
    settings.validate()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_the_key() {
        HeartbeatSettings::default()
            .validate()
            .expect("defaults are valid");
        let table: Vec<(HeartbeatSettings, &str)> = vec![
            (
                HeartbeatSettings {
                    interval_secs: 0,
                    ..Default::default()
                },
                "interval_secs",
            ),
            (
                HeartbeatSettings {
                    cron: Some("nope".into()),
                    ..Default::default()
                },
                "cron",
            ),
            (
                HeartbeatSettings {
                    summary_cron: "x".into(),
                    ..Default::default()
                },
                "summary_cron",
            ),
            (
                HeartbeatSettings {
                    summary_timezone: "Mars/X".into(),
                    ..Default::default()
                },
                "summary_timezone",
            ),
            (
                HeartbeatSettings {
                    lease_secs: 0,
                    ..Default::default()
                },
                "lease_secs",
            ),
        ];
        for (settings, key) in table {
            let err = settings.validate().expect_err("invalid");
            assert_eq!(err.key, key);
            assert!(err.to_string().contains(&format!("heartbeat.{key}")));
        }
        let with_cron = HeartbeatSettings {
            cron: Some("*/5 * * * *".into()),
            ..Default::default()
        };
        assert!(matches!(
            with_cron.validate().expect("valid").tick,
            TickSchedule::Cron(_)
        ));
    }
}
