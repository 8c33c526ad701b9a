//! The routing tree, as data: a route matches an alert's labels, hands it to
//! its children first (stopping at the first match unless that child says
//! `continue`), and otherwise keeps it itself. Children inherit receiver,
//! `group_by` and timings from their parent; the root's defaults are
//! Alertmanager's (group_wait 30s, group_interval 5m, repeat_interval 4h).

use std::collections::BTreeSet;

use chrono::Duration;
use serde::{Deserialize, Serialize};

use crate::matchers::{self, Matcher};
use crate::model::LabelSet;

/// Alertmanager's default timings.
pub const DEFAULT_GROUP_WAIT: &str = "30s";
pub const DEFAULT_GROUP_INTERVAL: &str = "5m";
pub const DEFAULT_REPEAT_INTERVAL: &str = "4h";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> RouteError {
    RouteError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Parses `500ms`, `30s`, `5m`, `4h`, `1d`, `1h30m` (a bare number is
/// seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(Duration::seconds(secs));
    }
    let mut total = Duration::zero();
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{text:?} is not a duration like 30s, 5m or 4h"));
        }
        let n: i64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::milliseconds(n),
            "s" => Duration::seconds(n),
            "m" => Duration::minutes(n),
            "h" => Duration::hours(n),
            "d" => Duration::days(n),
            "w" => Duration::weeks(n),
            unit => {
                return Err(format!(
                    "{text:?}: unknown unit {unit:?} (ms, s, m, h, d, w)"
                ));
            }
        };
        total += part;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// One route of the tree as configured (`[alerter.route]`, `routes` nested).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    pub receiver: Option<String>,
    /// Label names to group by; `["..."]` groups by every label.
    pub group_by: Option<Vec<String>>,
    pub group_wait: Option<String>,
    pub group_interval: Option<String>,
    pub repeat_interval: Option<String>,
    /// Matchers like `severity="critical"` or `service=~"api|web"`.
    pub matchers: Vec<String>,
    /// Keep looking at later siblings after this route matched.
    #[serde(rename = "continue")]
    pub continue_matching: bool,
    /// When this route's receiver is not configured (no webhook secret),
    /// hand its alerts to the root receiver rather than nobody (default,
    /// inherited). `false` for alerts that belong to one receiver only: the
    /// Watchdog's heartbeat, the reports.
    pub fallback: Option<bool>,
    pub routes: Vec<RouteConfig>,
}

/// What labels an aggregation group is keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// `...`: every label (one group per alert).
    All,
    Labels(BTreeSet<String>),
}

impl GroupBy {
    /// The subset of `labels` that identifies the group.
    pub fn group_labels(&self, labels: &LabelSet) -> LabelSet {
        match self {
            Self::All => labels.clone(),
            Self::Labels(names) => labels
                .iter()
                .filter(|(k, _)| names.contains(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// The effective options of a matched route.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteOpts {
    /// The route's path of matchers, e.g. `{}/{severity="critical"}`; part
    /// of the group key.
    pub id: String,
    pub receiver: String,
    pub group_by: GroupBy,
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
    /// See [`RouteConfig::fallback`].
    pub fallback: bool,
}

impl RouteOpts {
    /// The aggregation group key: route path plus the group labels.
    pub fn group_key(&self, labels: &LabelSet) -> String {
        let group_labels = self.group_by.group_labels(labels);
        let inner: Vec<String> = group_labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        format!("{}:{{{}}}", self.id, inner.join(","))
    }
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    pub opts: RouteOpts,
    matchers: Vec<Matcher>,
    continue_matching: bool,
    routes: Vec<Route>,
}

impl Route {
    /// The matched routes whose receiver can deliver (`enabled`). When none
    /// can (e.g. the summary webhook is not configured), the root route's
    /// receiver takes the alert rather than nobody — unless a matched route
    /// says `fallback = false` (the Watchdog belongs to its heartbeat
    /// receiver alone: posted to Slack every minute it would be noise).
    pub fn deliverable(
        &self,
        labels: &LabelSet,
        enabled: &std::collections::BTreeSet<String>,
    ) -> Vec<RouteOpts> {
        let all = self.matching(labels);
        let may_fall_back = all.iter().all(|o| o.fallback);
        let matched: Vec<RouteOpts> = all
            .into_iter()
            .filter(|o| enabled.contains(&o.receiver))
            .cloned()
            .collect();
        if matched.is_empty() && may_fall_back && enabled.contains(&self.opts.receiver) {
            return vec![self.opts.clone()];
        }
        matched
    }

    /// Compiles the tree; errors name the offending key, e.g.
    /// `route.routes[1].group_wait`.
    pub fn compile(config: &RouteConfig) -> Result<Self, RouteError> {
        let root = RouteOpts {
            id: String::new(),
            receiver: String::new(),
            group_by: GroupBy::Labels(BTreeSet::new()),
            group_wait: Duration::zero(),
            group_interval: Duration::zero(),
            repeat_interval: Duration::zero(),
            fallback: true,
        };
        let defaults = RouteConfig {
            group_wait: Some(DEFAULT_GROUP_WAIT.into()),
            group_interval: Some(DEFAULT_GROUP_INTERVAL.into()),
            repeat_interval: Some(DEFAULT_REPEAT_INTERVAL.into()),
            group_by: Some(vec!["alertname".into()]),
            ..RouteConfig::default()
        };
        let root = Self::compile_with(&defaults, &root, "route", true)?;
        let route = Self::compile_with(config, &root.opts, "route", true)?;
        if route.opts.receiver.is_empty() {
            return Err(invalid("route.receiver", "the root route needs a receiver"));
        }
        if !route.matchers.is_empty() {
            return Err(invalid(
                "route.matchers",
                "the root route must match every alert",
            ));
        }
        Ok(route)
    }

    fn compile_with(
        config: &RouteConfig,
        parent: &RouteOpts,
        key: &str,
        is_root: bool,
    ) -> Result<Self, RouteError> {
        let duration = |field: &str, value: &Option<String>, inherited: Duration| match value {
            None => Ok(inherited),
            Some(text) => parse_duration(text)
                .map_err(|reason| invalid(&format!("{key}.{field}"), reason))
                .and_then(|d| {
                    if d < Duration::zero() {
                        Err(invalid(&format!("{key}.{field}"), "must not be negative"))
                    } else {
                        Ok(d)
                    }
                }),
        };
        let matchers = matchers::parse_all(&config.matchers)
            .map_err(|e| invalid(&format!("{key}.matchers"), e.to_string()))?;
        let group_by = match &config.group_by {
            None => parent.group_by.clone(),
            Some(names) if names.iter().any(|n| n == "...") => GroupBy::All,
            Some(names) => GroupBy::Labels(names.iter().cloned().collect()),
        };
        let path_part = format!(
            "{{{}}}",
            matchers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let id = if is_root {
            path_part
        } else {
            format!("{}/{}", parent.id, path_part)
        };
        let opts = RouteOpts {
            id,
            receiver: config
                .receiver
                .clone()
                .unwrap_or_else(|| parent.receiver.clone()),
            group_by,
            group_wait: duration("group_wait", &config.group_wait, parent.group_wait)?,
            group_interval: duration(
                "group_interval",
                &config.group_interval,
                parent.group_interval,
            )?,
            repeat_interval: duration(
                "repeat_interval",
                &config.repeat_interval,
                parent.repeat_interval,
            )?,
            fallback: config.fallback.unwrap_or(parent.fallback),
        };
        if opts.group_interval <= Duration::zero() {
            return Err(invalid(
                &format!("{key}.group_interval"),
                "must be positive",
            ));
        }
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, child)| {
                Self::compile_with(child, &opts, &format!("{key}.routes[{i}]"), false)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            opts,
            matchers,
            continue_matching: config.continue_matching,
            routes,
        })
    }

    /// The routes an alert with `labels` goes to, in tree order.
    pub fn matching(&self, labels: &LabelSet) -> Vec<&RouteOpts> {
        if !matchers::matches_all(&self.matchers, labels) {
            return Vec::new();
        }
        let mut all = Vec::new();
        for child in &self.routes {
            let matched = child.matching(labels);
            let stop = !matched.is_empty() && !child.continue_matching;
            all.extend(matched);
            if stop {
                break;
            }
        }
        if all.is_empty() {
            all.push(&self.opts);
        }
        all
    }

    /// Every receiver name the tree refers to.
    pub fn receivers(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::from([self.opts.receiver.clone()]);
        for child in &self.routes {
            names.extend(child.receivers());
        }
        names
    }
}

/// The alerts of the periodic reports (the heartbeat's daily summary and
/// weekly report).
pub const REPORTS: &str = "alertname=~\"OpsDailySummary|OpsWeeklyReport\"";

/// The default tree: P0 (critical) → slack + discord + pagerduty, P1 (high)
/// → slack + pagerduty, P2 (warning) → slack, P3 (info) → summary (or, with
/// no summary webhook, the root's slack); the periodic reports → summary,
/// discord_summary and summary_console (the console, always enabled, so a
/// report never falls back to slack). Everything also goes to `local`
/// (console and `var/alerts.jsonl`), which is only enabled when no webhook
/// is configured.
/// The always-firing `Watchdog` goes to `watchdog` alone, every minute.
pub fn default_route() -> RouteConfig {
    let to = |receiver: &str, matcher: &str, cont: bool| RouteConfig {
        receiver: Some(receiver.into()),
        matchers: vec![matcher.into()],
        continue_matching: cont,
        ..RouteConfig::default()
    };
    RouteConfig {
        receiver: Some("slack".into()),
        group_by: Some(vec!["alertname".into(), "service".into()]),
        routes: vec![
            // The dead-man's switch: only to the heartbeat receiver, every
            // minute, so its pings stop when Prometheus or the alerter die.
            RouteConfig {
                receiver: Some("watchdog".into()),
                matchers: vec!["alertname=\"Watchdog\"".into()],
                fallback: Some(false),
                group_wait: Some("0s".into()),
                group_interval: Some("1m".into()),
                repeat_interval: Some("1m".into()),
                ..RouteConfig::default()
            },
            RouteConfig {
                receiver: Some("local".into()),
                continue_matching: true,
                group_wait: Some("0s".into()),
                group_interval: Some("10s".into()),
                ..RouteConfig::default()
            },
            // The reports go to the summary receivers only (Slack and
            // Discord, those whose webhook is set) and to the console: never
            // to the alert channel, which the dispatcher's fallback to the
            // root receiver would pick were no receiver here enabled.
            to("summary", REPORTS, true),
            to("discord_summary", REPORTS, true),
            to("summary_console", REPORTS, false),
            to("slack", "severity=~\"(?i)critical|p0\"", true),
            to("discord", "severity=~\"(?i)critical|p0\"", true),
            to("pagerduty", "severity=~\"(?i)critical|p0\"", false),
            to("slack", "severity=~\"(?i)high|error|p1\"", true),
            to("pagerduty", "severity=~\"(?i)high|error|p1\"", false),
            to("slack", "severity=~\"(?i)warning|warn|p2\"", false),
            to("summary", "severity=~\"(?i)info|p3\"", false),
            RouteConfig {
                receiver: Some("slack".into()),
                ..RouteConfig::default()
            },
        ],
        ..RouteConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::labels;

    fn receivers(route: &Route, pairs: &[(&str, &str)]) -> Vec<String> {
        route
            .matching(&labels(pairs))
            .into_iter()
            .map(|o| o.receiver.clone())
            .collect()
    }

    #[test]
    fn a_route_without_fallback_never_lands_on_the_root_receiver() {
        let route = Route::compile(&default_route()).expect("default compiles");
        let deliver = |pairs: &[(&str, &str)], enabled: &[&str]| -> Vec<String> {
            let enabled: BTreeSet<String> = enabled.iter().map(|r| (*r).to_owned()).collect();
            route
                .deliverable(&labels(pairs), &enabled)
                .into_iter()
                .map(|o| o.receiver)
                .collect()
        };
        let watchdog = [("alertname", "Watchdog"), ("severity", "none")];
        assert!(
            deliver(&watchdog, &["slack"]).is_empty(),
            "no heartbeat URL: nowhere"
        );
        assert_eq!(deliver(&watchdog, &["slack", "watchdog"]), ["watchdog"]);
        // An info alert with no summary receiver still reaches the root's.
        let info = [("alertname", "Fyi"), ("severity", "info")];
        assert_eq!(deliver(&info, &["slack"]), ["slack"]);
        assert_eq!(deliver(&info, &["slack", "summary"]), ["summary"]);
    }

    #[test]
    fn durations_parse() {
        let table = [
            ("30s", Some(Duration::seconds(30))),
            ("5m", Some(Duration::minutes(5))),
            ("4h", Some(Duration::hours(4))),
            ("1h30m", Some(Duration::minutes(90))),
            ("250ms", Some(Duration::milliseconds(250))),
            ("15", Some(Duration::seconds(15))),
            ("0s", Some(Duration::zero())),
            ("soon", None),
            ("5x", None),
            ("", None),
        ];
        for (text, expected) in table {
            assert_eq!(parse_duration(text).ok(), expected, "{text}");
        }
    }

    #[test]
    fn default_tree_maps_severities_to_receivers() {
        let route = Route::compile(&default_route()).expect("default compiles");
        type Row<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let table: &[Row] = &[
            (
                &[("alertname", "Down"), ("severity", "critical")],
                &["local", "slack", "discord", "pagerduty"],
            ),
            (
                &[("alertname", "Down"), ("severity", "P0")],
                &["local", "slack", "discord", "pagerduty"],
            ),
            (
                &[("alertname", "Slow"), ("severity", "high")],
                &["local", "slack", "pagerduty"],
            ),
            (
                &[("alertname", "Odd"), ("severity", "warning")],
                &["local", "slack"],
            ),
            (
                &[("alertname", "Fyi"), ("severity", "info")],
                &["local", "summary"],
            ),
            (
                &[("alertname", "OpsDailySummary"), ("severity", "info")],
                &["local", "summary", "discord_summary", "summary_console"],
            ),
            (
                &[("alertname", "OpsWeeklyReport")],
                &["local", "summary", "discord_summary", "summary_console"],
            ),
            (&[("alertname", "NoSeverity")], &["local", "slack"]),
            (
                &[("alertname", "Watchdog"), ("severity", "none")],
                &["watchdog"],
            ),
        ];
        for (pairs, expected) in table {
            assert_eq!(receivers(&route, pairs), *expected, "{pairs:?}");
        }
        let all = route.receivers();
        for name in [
            "local",
            "slack",
            "discord",
            "pagerduty",
            "summary",
            "discord_summary",
            "summary_console",
            "watchdog",
        ] {
            assert!(all.contains(name), "{name}");
        }
    }

    #[test]
    fn continue_and_inheritance() {
        let config = RouteConfig {
            receiver: Some("root".into()),
            group_wait: Some("10s".into()),
            routes: vec![
                RouteConfig {
                    receiver: Some("team-a".into()),
                    matchers: vec!["team=a".into()],
                    continue_matching: true,
                    group_by: Some(vec!["...".into()]),
                    routes: vec![RouteConfig {
                        receiver: Some("a-db".into()),
                        matchers: vec!["service=~db.*".into()],
                        repeat_interval: Some("1h".into()),
                        ..RouteConfig::default()
                    }],
                    ..RouteConfig::default()
                },
                RouteConfig {
                    matchers: vec!["severity!=info".into()],
                    receiver: Some("oncall".into()),
                    ..RouteConfig::default()
                },
                RouteConfig {
                    matchers: vec!["team=a".into()],
                    receiver: Some("never-reached-for-non-info".into()),
                    ..RouteConfig::default()
                },
            ],
            ..RouteConfig::default()
        };
        let route = Route::compile(&config).expect("compiles");
        assert_eq!(
            receivers(&route, &[("team", "a"), ("service", "db1")]),
            ["a-db", "oncall"]
        );
        assert_eq!(
            receivers(&route, &[("team", "a"), ("service", "web")]),
            ["team-a", "oncall"]
        );
        assert_eq!(
            receivers(&route, &[("team", "a"), ("severity", "info")]),
            ["team-a", "never-reached-for-non-info"]
        );
        assert_eq!(
            receivers(&route, &[("team", "b"), ("severity", "info")]),
            ["root"]
        );

        let a_db = &route.matching(&labels(&[("team", "a"), ("service", "db1")]))[0];
        assert_eq!(
            a_db.group_wait,
            Duration::seconds(10),
            "inherited from the root"
        );
        assert_eq!(
            a_db.group_interval,
            Duration::minutes(5),
            "Alertmanager default"
        );
        assert_eq!(a_db.repeat_interval, Duration::hours(1));
        assert_eq!(a_db.group_by, GroupBy::All, "inherited from team-a");
        assert_eq!(a_db.id, "{}/{team=\"a\"}/{service=~\"db.*\"}");
        let info = labels(&[("alertname", "X"), ("team", "b"), ("severity", "info")]);
        let root = &route.matching(&info)[0];
        assert_eq!(root.repeat_interval, Duration::hours(4));
        assert_eq!(root.group_key(&info), "{}:{alertname=\"X\"}");
    }

    #[test]
    fn bad_config_names_the_key() {
        let config = RouteConfig {
            receiver: Some("root".into()),
            routes: vec![RouteConfig {
                group_wait: Some("soon".into()),
                ..RouteConfig::default()
            }],
            ..RouteConfig::default()
        };
        let err = Route::compile(&config).expect_err("bad duration");
        assert!(
            err.to_string().starts_with("route.routes[0].group_wait:"),
            "{err}"
        );
        let err = Route::compile(&RouteConfig::default()).expect_err("no receiver");
        assert!(err.to_string().contains("route.receiver"), "{err}");
        let config = RouteConfig {
            receiver: Some("r".into()),
            routes: vec![RouteConfig {
                matchers: vec!["x=~(".into()],
                ..RouteConfig::default()
            }],
            ..RouteConfig::default()
        };
        let err = Route::compile(&config).expect_err("bad regex");
        assert!(
            err.to_string().contains("route.routes[0].matchers"),
            "{err}"
        );
    }
}
