//! Receivers: one [`Receiver`] trait that turns a notification into the JSON
//! a destination expects (Slack Block Kit, Discord embeds, Alertmanager
//! webhook v4, PagerDuty Events v2, console/JSON lines), and one config shape
//! that binds a named receiver to its payload format and its target. Sending
//! is the delivery engine's job; here nothing does I/O.

pub mod discord;
pub mod local;
pub mod pagerduty;
pub mod report;
pub mod slack;
pub mod webhook;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use opsloop_core::secrets::{Secret, SecretStore};
use serde::{Deserialize, Serialize};

use crate::group::Notification;

/// What every payload may mention besides the notification itself.
#[derive(Debug, Clone, Default)]
pub struct RenderContext {
    /// Deployment name (`production`, `development`).
    pub environment: String,
    /// Where the alerter is reachable (Alertmanager's `externalURL`).
    pub external_url: String,
}

/// Builds the payload of one destination from a notification.
pub trait Receiver: Send + Sync {
    /// `slack`, `discord`, `webhook`, `pagerduty`, `console`.
    fn kind(&self) -> ReceiverKind;
    /// The JSON body to deliver.
    fn payload(&self, notification: &Notification, ctx: &RenderContext) -> serde_json::Value;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverKind {
    Slack,
    Discord,
    Webhook,
    Pagerduty,
    Console,
}

impl ReceiverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Slack => "slack",
            Self::Discord => "discord",
            Self::Webhook => "webhook",
            Self::Pagerduty => "pagerduty",
            Self::Console => "console",
        }
    }
}

/// One receiver as configured (`[[alerter.receivers]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    pub name: String,
    pub kind: ReceiverKind,
    /// The secret holding the webhook URL (slack, discord, webhook) or the
    /// routing key (pagerduty). URLs are never configured in the clear.
    #[serde(default)]
    pub secret: Option<String>,
    /// PagerDuty's events endpoint (not a secret).
    #[serde(default)]
    pub api_url: Option<String>,
    /// Also tell the receiver when alerts resolve (default: true, except
    /// for console).
    #[serde(default)]
    pub send_resolved: Option<bool>,
    /// Least time between two messages to this receiver, in milliseconds
    /// (Slack allows about one per second per webhook).
    #[serde(default)]
    pub min_interval_ms: Option<u64>,
    /// Console only: also append each notification as a JSON line here.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Console only: when this receiver is enabled, in place of
    /// `alerter.local_output` (`always`: whether webhooks are set or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_output: Option<LocalOutput>,
}

impl ReceiverConfig {
    pub fn new(name: &str, kind: ReceiverKind, secret: Option<&str>) -> Self {
        Self {
            name: name.into(),
            kind,
            secret: secret.map(Into::into),
            api_url: None,
            send_resolved: None,
            min_interval_ms: None,
            path: None,
            local_output: None,
        }
    }
}

/// The default receivers: slack, discord, pagerduty, summary (Slack) and
/// discord_summary read their URL/key from secrets and are enabled when it is
/// set; `local` prints to the console and appends to `var/alerts.jsonl`;
/// `summary_console` prints the reports on the console, always, so that
/// without a summary webhook they stay off the alert channel (see
/// [`crate::route::default_route`]).
pub fn default_receivers() -> Vec<ReceiverConfig> {
    vec![
        ReceiverConfig::new("slack", ReceiverKind::Slack, Some("slack_webhook_url")),
        ReceiverConfig::new(
            "discord",
            ReceiverKind::Discord,
            Some("discord_webhook_url"),
        ),
        ReceiverConfig::new(
            "pagerduty",
            ReceiverKind::Pagerduty,
            Some("pagerduty_routing_key"),
        ),
        ReceiverConfig {
            send_resolved: Some(false),
            ..ReceiverConfig::new(
                "summary",
                ReceiverKind::Slack,
                Some("slack_summary_webhook_url"),
            )
        },
        ReceiverConfig {
            send_resolved: Some(false),
            ..ReceiverConfig::new(
                "discord_summary",
                ReceiverKind::Discord,
                Some("discord_summary_webhook_url"),
            )
        },
        ReceiverConfig {
            path: Some(PathBuf::from("var/alerts.jsonl")),
            ..ReceiverConfig::new("local", ReceiverKind::Console, None)
        },
        ReceiverConfig {
            send_resolved: Some(false),
            local_output: Some(LocalOutput::Always),
            ..ReceiverConfig::new("summary_console", ReceiverKind::Console, None)
        },
        // The Watchdog's heartbeat URL (healthchecks.io, PagerDuty's
        // heartbeat, …): pinged every minute while alerting works.
        ReceiverConfig {
            send_resolved: Some(false),
            ..ReceiverConfig::new("watchdog", ReceiverKind::Webhook, Some("watchdog_url"))
        },
    ]
}

pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// Where a payload goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// POST to a URL (from a secret: never logged).
    Http { url: Secret },
    /// Print to stdout, and append to a JSON-lines file when set.
    Console { path: Option<PathBuf> },
}

/// A receiver ready to use: its name, format, target and pacing.
#[derive(Clone)]
pub struct ConfiguredReceiver {
    pub name: String,
    pub send_resolved: bool,
    pub min_interval: Duration,
    pub target: Target,
    pub format: Arc<dyn Receiver>,
}

impl std::fmt::Debug for ConfiguredReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfiguredReceiver")
            .field("name", &self.name)
            .field("kind", &self.format.kind())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("receivers: duplicate receiver name {0:?}")]
    Duplicate(String),
    #[error("receivers.{name}: {reason}")]
    Invalid { name: String, reason: String },
}

/// The outcome of building receivers from config and secrets.
#[derive(Debug, Default)]
pub struct BuiltReceivers {
    pub enabled: Vec<ConfiguredReceiver>,
    /// Receivers left out, with why (e.g. their secret is not set).
    pub disabled: Vec<(String, String)>,
}

impl BuiltReceivers {
    pub fn names(&self) -> BTreeSet<String> {
        self.enabled.iter().map(|r| r.name.clone()).collect()
    }

    pub fn get(&self, name: &str) -> Option<&ConfiguredReceiver> {
        self.enabled.iter().find(|r| r.name == name)
    }
}

/// When console receivers are enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalOutput {
    /// Only when no HTTP receiver is enabled (`opsloop dev`).
    Auto,
    Always,
    Never,
}

/// Resolves every receiver's secret; a receiver whose secret is not set is
/// disabled (and reported), not an error.
pub fn build(
    configs: &[ReceiverConfig],
    secrets: &SecretStore,
    local_output: LocalOutput,
) -> Result<BuiltReceivers, ReceiverError> {
    let mut built = BuiltReceivers::default();
    let mut seen = BTreeSet::new();
    let mut consoles = Vec::new();
    // Console receivers whose own `local_output` is `always`.
    let mut always = Vec::new();
    for config in configs {
        if !seen.insert(config.name.clone()) {
            return Err(ReceiverError::Duplicate(config.name.clone()));
        }
        let invalid = |reason: &str| ReceiverError::Invalid {
            name: config.name.clone(),
            reason: reason.into(),
        };
        let default_interval = match config.kind {
            ReceiverKind::Slack => 1_000,
            ReceiverKind::Discord => 500,
            _ => 0,
        };
        let min_interval =
            Duration::from_millis(config.min_interval_ms.unwrap_or(default_interval));
        let (url, format): (Secret, Arc<dyn Receiver>) = match config.kind {
            ReceiverKind::Console => {
                let console = ConfiguredReceiver {
                    name: config.name.clone(),
                    send_resolved: config.send_resolved.unwrap_or(true),
                    min_interval,
                    target: Target::Console {
                        path: config.path.clone(),
                    },
                    format: Arc::new(local::Console),
                };
                match config.local_output {
                    Some(LocalOutput::Always) => always.push(console),
                    Some(LocalOutput::Never) => built
                        .disabled
                        .push((console.name, "its local_output is never".into())),
                    Some(LocalOutput::Auto) | None => consoles.push(console),
                }
                continue;
            }
            kind => {
                let Some(secret_name) = &config.secret else {
                    return Err(invalid(
                        "needs `secret`: the name of the secret holding its URL or key",
                    ));
                };
                let Some(secret) = secrets
                    .get(secret_name)
                    .map_err(|e| invalid(&e.to_string()))?
                else {
                    built.disabled.push((
                        config.name.clone(),
                        format!("secret {secret_name} is not set"),
                    ));
                    continue;
                };
                match kind {
                    ReceiverKind::Slack => (secret, Arc::new(slack::Slack) as Arc<dyn Receiver>),
                    ReceiverKind::Discord => (secret, Arc::new(discord::Discord)),
                    ReceiverKind::Webhook => (secret, Arc::new(webhook::Webhook)),
                    _ => (
                        Secret::new(
                            config
                                .api_url
                                .clone()
                                .unwrap_or_else(|| PAGERDUTY_EVENTS_URL.into()),
                        ),
                        Arc::new(pagerduty::PagerDuty {
                            routing_key: secret,
                        }),
                    ),
                }
            }
        };
        if !(url.expose().starts_with("http://") || url.expose().starts_with("https://")) {
            return Err(invalid("its URL must start with http:// or https://"));
        }
        built.enabled.push(ConfiguredReceiver {
            name: config.name.clone(),
            send_resolved: config.send_resolved.unwrap_or(true),
            min_interval,
            target: Target::Http { url },
            format,
        });
    }
    let use_consoles = match local_output {
        LocalOutput::Always => true,
        LocalOutput::Never => false,
        // The watchdog's heartbeat URL is not where alerts go.
        LocalOutput::Auto => built.enabled.iter().all(|r| r.name == "watchdog"),
    };
    if use_consoles {
        built.enabled.extend(consoles);
    } else {
        for c in consoles {
            built.disabled.push((
                c.name,
                "local output is off while webhooks are configured".into(),
            ));
        }
    }
    built.enabled.extend(always);
    Ok(built)
}

/// Cuts `text` to at most `max` characters, ending with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// Characters of `text` (what Slack and Discord count).
pub fn chars(text: &str) -> usize {
    text.chars().count()
}

/// The zone notification times are printed in: UTC unless the daemon set
/// another at start ([`set_display_timezone`]).
static DISPLAY_TIMEZONE: std::sync::OnceLock<chrono_tz::Tz> = std::sync::OnceLock::new();

/// Sets the zone notification times are printed in (once, at start; later
/// calls are ignored).
pub fn set_display_timezone(tz: chrono_tz::Tz) {
    let _ = DISPLAY_TIMEZONE.set(tz);
}

/// The zone notification times are printed in.
pub fn display_timezone() -> chrono_tz::Tz {
    DISPLAY_TIMEZONE.get().copied().unwrap_or(chrono_tz::UTC)
}

/// An instant in `tz` with the zone's abbreviation, and in UTC:
/// `2026-11-23 19:00 JST (10:00 UTC)`; in UTC itself just
/// `2026-11-23 10:00 UTC`.
pub fn zoned_and_utc(at: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    if tz == chrono_tz::UTC {
        return format!("{} UTC", at.format("%Y-%m-%d %H:%M"));
    }
    let local = at.with_timezone(&tz);
    format!(
        "{} ({} UTC)",
        local.format("%Y-%m-%d %H:%M %Z"),
        at.format("%H:%M")
    )
}

/// A one-line title: `[FIRING:3] AlertName` or `[RESOLVED] AlertName`.
pub fn title(notification: &Notification) -> String {
    let name = notification
        .common_labels
        .get(crate::model::ALERTNAME)
        .or_else(|| notification.group_labels.get(crate::model::ALERTNAME))
        .cloned()
        .or_else(|| notification.alerts().next().map(|a| a.name().to_owned()))
        .unwrap_or_else(|| "alert".into());
    match notification.status() {
        crate::model::Status::Firing => {
            format!("[FIRING:{}] {name}", notification.firing.len())
        }
        crate::model::Status::Resolved => format!("[RESOLVED] {name}"),
    }
}

/// An alert's texts, as Alertmanager's default templates use them: the
/// `summary` (or `message`) annotation is the headline, `description` the
/// body. Either may be absent; a body equal to the headline is left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertText<'a> {
    pub headline: Option<&'a str>,
    pub body: Option<&'a str>,
}

impl<'a> AlertText<'a> {
    pub fn of(alert: &'a crate::model::Alert) -> Self {
        let get = |k: &str| {
            alert
                .annotations
                .get(k)
                .map(String::as_str)
                .filter(|v| !v.trim().is_empty())
        };
        let headline = get("summary").or_else(|| get("message"));
        let body = get("description").filter(|b| Some(*b) != headline);
        Self { headline, body }
    }

    /// The headline and the body as markdown (`bold` wraps the headline),
    /// one paragraph each; empty when the alert has neither.
    pub fn markdown(&self, bold: &str) -> String {
        match (self.headline, self.body) {
            (Some(h), Some(b)) => format!("{bold}{h}{bold}\n{b}"),
            (Some(h), None) => format!("{bold}{h}{bold}"),
            (None, Some(b)) => b.to_owned(),
            (None, None) => String::new(),
        }
    }
}

/// One line about an alert: its headline, else its description.
pub fn describe(alert: &crate::model::Alert) -> String {
    let text = AlertText::of(alert);
    text.headline.or(text.body).unwrap_or_default().to_owned()
}

/// The dashboard or runbook link of an alert, when annotated.
pub fn link(alert: &crate::model::Alert) -> Option<(&'static str, String)> {
    [
        ("runbook_url", "Runbook"),
        ("dashboard_url", "Dashboard"),
        ("dashboard", "Dashboard"),
    ]
    .iter()
    .find_map(|(k, label)| {
        alert
            .annotations
            .get(*k)
            .filter(|v| v.starts_with("http://") || v.starts_with("https://"))
            .map(|v| (*label, v.clone()))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::tests::{alert, at};
    use crate::model::{Alert, LabelSet};

    /// A notification with `n` alerts carrying oversized labels and
    /// annotations.
    pub(crate) fn oversized(n: usize) -> Notification {
        let huge = "x".repeat(10_000);
        let firing: Vec<Alert> = (0..n)
            .map(|i| {
                let mut a = alert(
                    &[
                        (
                            "alertname",
                            &format!("VeryLongAlertName{}", "Z".repeat(400)),
                        ),
                        ("severity", "critical"),
                        ("service", &"s".repeat(3000)),
                        ("instance", &format!("host-{i}-{}", "i".repeat(2000))),
                    ],
                    0,
                );
                a.annotations.insert("description".into(), huge.clone());
                a.annotations.insert("summary".into(), huge.clone());
                a.annotations.insert(
                    "runbook_url".into(),
                    format!("https://runbooks.example/{huge}"),
                );
                a
            })
            .collect();
        Notification::new("r", "{}:{}", LabelSet::new(), firing, Vec::new(), at(0))
    }

    pub(crate) fn small() -> Notification {
        let mut a = alert(
            &[
                ("alertname", "Down"),
                ("severity", "critical"),
                ("service", "api"),
                ("instance", "h1"),
            ],
            0,
        );
        a.annotations
            .insert("description".into(), "api is down".into());
        a.annotations
            .insert("runbook_url".into(), "https://runbooks.example/down".into());
        a.generator_url = Some("http://prom/graph".into());
        let mut b = alert(
            &[
                ("alertname", "Down"),
                ("severity", "critical"),
                ("service", "api"),
                ("instance", "h2"),
            ],
            0,
        );
        b.ends_at = Some(at(5));
        Notification::new(
            "r",
            "{}:{alertname=\"Down\"}",
            LabelSet::new(),
            vec![a],
            vec![b],
            at(10),
        )
    }

    /// Every combination of summary / description / runbook_url, through
    /// every receiver: the summary is the headline, the description the
    /// body, each shown exactly once; the runbook is linked when given.
    #[test]
    fn summary_description_runbook_in_every_receiver() {
        const SUMMARY: &str = "SUMMARY-api-is-down";
        const DESCRIPTION: &str = "DESCRIPTION-all-5-replicas-fail-health-checks";
        const RUNBOOK: &str = "https://runbooks.example/api-down";
        let count = |haystack: &serde_json::Value, needle: &str| {
            serde_json::to_string(haystack)
                .expect("json")
                .matches(needle)
                .count()
        };
        let pd = pagerduty::PagerDuty {
            routing_key: Secret::new("KEY"),
        };
        let ctx = RenderContext::default();
        for mask in 0..8u8 {
            let (has_summary, has_description, has_runbook) =
                (mask & 1 != 0, mask & 2 != 0, mask & 4 != 0);
            let case = format!(
                "summary={has_summary} description={has_description} runbook={has_runbook}"
            );
            let mut a = alert(
                &[
                    ("alertname", "Down"),
                    ("severity", "critical"),
                    ("service", "api"),
                ],
                0,
            );
            if has_summary {
                a.annotations.insert("summary".into(), SUMMARY.into());
            }
            if has_description {
                a.annotations
                    .insert("description".into(), DESCRIPTION.into());
            }
            if has_runbook {
                a.annotations.insert("runbook_url".into(), RUNBOOK.into());
            }
            let n = Notification::new("r", "{}:{}", LabelSet::new(), vec![a], Vec::new(), at(1));
            let once = |present: bool| usize::from(present);

            // Slack: the body section is "*summary*\ndescription"; the
            // listing does not repeat either; a runbook button.
            let p = slack::Slack.payload(&n, &ctx);
            assert_eq!(count(&p, SUMMARY), once(has_summary), "slack {case}: {p}");
            assert_eq!(
                count(&p, DESCRIPTION),
                once(has_description),
                "slack {case}: {p}"
            );
            let blocks = p["blocks"].as_array().expect("blocks");
            let body = blocks[2]["text"]["text"].as_str().unwrap_or_default();
            match (has_summary, has_description) {
                (true, true) => {
                    assert_eq!(body, format!("*{SUMMARY}*\n{DESCRIPTION}"), "slack {case}")
                }
                (true, false) => assert_eq!(body, format!("*{SUMMARY}*"), "slack {case}"),
                (false, true) => assert_eq!(body, DESCRIPTION, "slack {case}"),
                (false, false) => {
                    assert!(!body.contains("SUMMARY") && !body.contains("DESCRIPTION"))
                }
            }
            let button = blocks
                .iter()
                .any(|b| b["type"] == "actions" && b["elements"][0]["url"] == RUNBOOK);
            assert_eq!(button, has_runbook, "slack {case}");

            // Discord: the embed's description carries both, headline first.
            let p = discord::Discord.payload(&n, &ctx);
            assert_eq!(count(&p, SUMMARY), once(has_summary), "discord {case}: {p}");
            assert_eq!(
                count(&p, DESCRIPTION),
                once(has_description),
                "discord {case}: {p}"
            );
            let embed = &p["embeds"][0];
            let text = embed["description"].as_str().unwrap_or_default();
            match (has_summary, has_description) {
                (true, true) => assert_eq!(
                    text,
                    format!("**{SUMMARY}**\n{DESCRIPTION}"),
                    "discord {case}"
                ),
                (true, false) => assert_eq!(text, format!("**{SUMMARY}**"), "discord {case}"),
                (false, true) => assert_eq!(text, DESCRIPTION, "discord {case}"),
                (false, false) => assert!(embed.get("description").is_none(), "discord {case}"),
            }
            let runbook_field = embed["fields"]
                .as_array()
                .expect("fields")
                .iter()
                .any(|f| f["name"] == "Runbook" && f["value"] == RUNBOOK);
            assert_eq!(runbook_field, has_runbook, "discord {case}");

            // Webhook v4: the annotations as posted, in the alert and in
            // the common annotations.
            let p = webhook::Webhook.payload(&n, &ctx);
            assert_eq!(
                p["alerts"][0]["annotations"],
                serde_json::json!(n.firing[0].annotations),
                "webhook {case}"
            );
            assert_eq!(
                p["commonAnnotations"],
                serde_json::json!(n.firing[0].annotations),
                "webhook {case}"
            );

            // PagerDuty: the event summary is the headline (the description
            // when there is no summary); details carry both; runbook link.
            let p = pd.payload(&n, &ctx);
            let summary = p["payload"]["summary"].as_str().expect("summary");
            let expected = match (has_summary, has_description) {
                (true, _) => format!("[FIRING:1] Down: {SUMMARY}"),
                (false, true) => format!("[FIRING:1] Down: {DESCRIPTION}"),
                (false, false) => "[FIRING:1] Down".to_owned(),
            };
            assert_eq!(summary, expected, "pagerduty {case}");
            let details = &p["payload"]["custom_details"]["alerts"][0];
            assert_eq!(
                count(details, SUMMARY),
                once(has_summary),
                "pagerduty {case}"
            );
            assert_eq!(
                count(details, DESCRIPTION),
                once(has_description),
                "pagerduty {case}"
            );
            let linked = p["links"]
                .as_array()
                .expect("links")
                .iter()
                .any(|l| l["href"] == RUNBOOK && l["text"] == "Runbook");
            assert_eq!(linked, has_runbook, "pagerduty {case}");
        }
    }

    #[test]
    fn truncation_never_exceeds() {
        let table = [
            ("hello", 10, "hello"),
            ("hello", 5, "hello"),
            ("hello", 4, "hel…"),
            ("日本語テキスト", 3, "日本…"),
            ("x", 0, ""),
        ];
        for (text, max, expected) in table {
            assert_eq!(truncate(text, max), expected);
            assert!(chars(&truncate(text, max)) <= max);
        }
    }

    #[test]
    fn receivers_build_from_secrets_and_fall_back_to_local() {
        let dir = tempfile::tempdir().expect("tempdir");
        let none = SecretStore::with_sources(None, dir.path(), Vec::new());
        let built = build(&default_receivers(), &none, LocalOutput::Auto).expect("build");
        assert_eq!(
            built.names(),
            BTreeSet::from(["local".to_owned(), "summary_console".to_owned()])
        );
        assert_eq!(built.disabled.len(), 6);
        assert!(
            built
                .disabled
                .iter()
                .any(|(n, why)| n == "slack" && why.contains("slack_webhook_url"))
        );

        let some = SecretStore::with_sources(
            None,
            dir.path(),
            vec![
                (
                    "OPSLOOP_SLACK_WEBHOOK_URL".into(),
                    "https://hooks.slack.test/T/B/C".into(),
                ),
                ("OPSLOOP_PAGERDUTY_ROUTING_KEY".into(), "R0UTING".into()),
            ],
        );
        let built = build(&default_receivers(), &some, LocalOutput::Auto).expect("build");
        assert_eq!(
            built.names(),
            BTreeSet::from([
                "pagerduty".to_owned(),
                "slack".to_owned(),
                "summary_console".to_owned()
            ])
        );
        let slack = built.get("slack").expect("slack");
        assert_eq!(slack.min_interval, Duration::from_secs(1));
        assert!(!format!("{slack:?}").contains("hooks.slack.test"));
        let built = build(&default_receivers(), &some, LocalOutput::Always).expect("build");
        assert!(built.get("local").is_some());

        let bad = SecretStore::with_sources(
            None,
            dir.path(),
            vec![("OPSLOOP_SLACK_WEBHOOK_URL".into(), "ftp://nope".into())],
        );
        let err = build(&default_receivers(), &bad, LocalOutput::Auto).expect_err("bad url");
        assert!(err.to_string().starts_with("receivers.slack:"), "{err}");
        assert!(
            !err.to_string().contains("ftp://nope"),
            "the URL is not echoed"
        );
        let dup = vec![ReceiverConfig::new("a", ReceiverKind::Console, None); 2];
        assert!(matches!(
            build(&dup, &none, LocalOutput::Auto),
            Err(ReceiverError::Duplicate(_))
        ));
    }

    #[test]
    fn times_show_the_zone_with_its_abbreviation_and_utc() {
        assert_eq!(
            zoned_and_utc(at(0), chrono_tz::Asia::Tokyo),
            "2027-01-15 17:00 JST (08:00 UTC)"
        );
        assert_eq!(
            zoned_and_utc(at(0), chrono_tz::America::New_York),
            "2027-01-15 03:00 EST (08:00 UTC)"
        );
        assert_eq!(zoned_and_utc(at(0), chrono_tz::UTC), "2027-01-15 08:00 UTC");
        // Nothing set the zone in this process: UTC.
        assert_eq!(display_timezone(), chrono_tz::UTC);
    }
}
