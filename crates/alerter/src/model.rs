//! The alert itself, in Alertmanager v2 terms: a label set (its identity, the
//! fingerprint), annotations, `startsAt`/`endsAt`, a generator URL, and the
//! status derived from `endsAt`. Parsing of posted alerts lives here, so an
//! invalid alert never gets past the door.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// Label or annotation names to values, sorted by name.
pub type LabelSet = BTreeMap<String, String>;

/// The label naming an alert.
pub const ALERTNAME: &str = "alertname";
/// The label carrying the severity (P0–P3).
pub const SEVERITY: &str = "severity";

/// An alert's identity: FNV-1a 64 over the sorted label set, as Alertmanager
/// computes it, printed as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Fingerprint(pub u64);

impl Fingerprint {
    pub fn of(labels: &LabelSet) -> Self {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        const SEPARATOR: u8 = 0xff;
        let mut hash = OFFSET;
        let mut write = |bytes: &[u8]| {
            for b in bytes {
                hash ^= u64::from(*b);
                hash = hash.wrapping_mul(PRIME);
            }
        };
        for (name, value) in labels {
            write(name.as_bytes());
            write(&[SEPARATOR]);
            write(value.as_bytes());
            write(&[SEPARATOR]);
        }
        Self(hash)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl From<Fingerprint> for String {
    fn from(fp: Fingerprint) -> Self {
        fp.to_string()
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        u64::from_str_radix(&s, 16)
            .map(Self)
            .map_err(|_| format!("{s:?} is not a 16-hex-digit fingerprint"))
    }
}

/// Whether the alert's condition still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

/// P0–P3, read from the `severity` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Critical,
    High,
    Warning,
    Info,
}

impl Severity {
    /// `critical`/`p0`, `high`/`error`/`p1`, `warning`/`p2`, `info`/`p3`
    /// (any case); anything else is no severity.
    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "critical" | "p0" => Some(Self::Critical),
            "high" | "error" | "p1" => Some(Self::High),
            "warning" | "warn" | "p2" => Some(Self::Warning),
            "info" | "p3" => Some(Self::Info),
            _ => None,
        }
    }

    pub fn of(labels: &LabelSet) -> Option<Self> {
        labels.get(SEVERITY).and_then(|v| Self::parse(v))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::High => "high",
            Self::Warning => "warning",
            Self::Info => "info",
        }
    }

    /// `P0` … `P3`.
    pub fn priority(self) -> &'static str {
        match self {
            Self::Critical => "P0",
            Self::High => "P1",
            Self::Warning => "P2",
            Self::Info => "P3",
        }
    }
}

/// An alert as the alerter holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub labels: LabelSet,
    pub annotations: LabelSet,
    pub starts_at: DateTime<Utc>,
    /// When the condition ended, or when it will be considered ended unless
    /// refreshed.
    pub ends_at: Option<DateTime<Utc>>,
    pub generator_url: Option<String>,
    /// Where it came from: `http`, `bus`, `test`.
    pub source: String,
    pub updated_at: DateTime<Utc>,
}

impl Alert {
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.labels)
    }

    pub fn name(&self) -> &str {
        self.labels.get(ALERTNAME).map(String::as_str).unwrap_or("")
    }

    pub fn severity(&self) -> Option<Severity> {
        Severity::of(&self.labels)
    }

    pub fn status(&self, now: DateTime<Utc>) -> Status {
        match self.ends_at {
            Some(end) if end <= now => Status::Resolved,
            _ => Status::Firing,
        }
    }

    pub fn is_resolved(&self, now: DateTime<Utc>) -> bool {
        self.status(now) == Status::Resolved
    }

    /// Merges a newer report of the same alert (same fingerprint) into this
    /// one, as Alertmanager does: a still-firing alert keeps its first
    /// `startsAt`; the newer report wins for the rest.
    pub fn merge(&mut self, newer: Alert, now: DateTime<Utc>) {
        let starts_at = if self.is_resolved(now) {
            newer.starts_at
        } else {
            self.starts_at.min(newer.starts_at)
        };
        *self = Alert { starts_at, ..newer };
    }
}

/// Why a posted alert was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AlertError {
    #[error("labels: at least one label is required")]
    NoLabels,
    #[error("labels: invalid label name {0:?} (use [a-zA-Z_][a-zA-Z0-9_]*)")]
    LabelName(String),
    #[error("labels.{0}: empty value (omit the label instead)")]
    EmptyLabelValue(String),
    #[error("{field}: longer than {max} bytes")]
    TooLong { field: String, max: usize },
    #[error("endsAt: before startsAt")]
    EndsBeforeStarts,
    #[error("status: {0:?} is neither firing nor resolved")]
    Status(String),
    #[error("alert: {0}")]
    Json(String),
}

/// Limits on one posted alert.
const MAX_LABELS: usize = 64;
const MAX_LABEL_VALUE: usize = 4096;
const MAX_ANNOTATION_VALUE: usize = 64 * 1024;

/// An alert as posted (Alertmanager v2 `PostableAlert`) or published on the
/// bus (which may also carry `status`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostableAlert {
    pub labels: LabelSet,
    #[serde(default)]
    pub annotations: LabelSet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<DateTime<Utc>>,
    #[serde(
        default,
        rename = "generatorURL",
        skip_serializing_if = "Option::is_none"
    )]
    pub generator_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// Go's zero `time.Time` (`0001-01-01T00:00:00Z`) or anything before it:
/// what Go clients send for an unset time.
pub fn is_go_zero(t: DateTime<Utc>) -> bool {
    t.timestamp() <= GO_ZERO_UNIX
}

/// `0001-01-01T00:00:00Z` in Unix seconds.
const GO_ZERO_UNIX: i64 = -62_135_596_800;

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl PostableAlert {
    /// Validates and completes the alert as Alertmanager does: a missing
    /// `startsAt` is now (or `endsAt` when only that is given); a missing
    /// `endsAt` on a firing alert is now + `resolve_timeout`; `status:
    /// resolved` without `endsAt` ends it now.
    pub fn into_alert(
        self,
        source: &str,
        now: DateTime<Utc>,
        resolve_timeout: Duration,
    ) -> Result<Alert, AlertError> {
        let labels: LabelSet = self
            .labels
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect();
        if labels.is_empty() {
            return Err(AlertError::NoLabels);
        }
        if labels.len() > MAX_LABELS {
            return Err(AlertError::TooLong {
                field: "labels".into(),
                max: MAX_LABELS,
            });
        }
        for (name, value) in &labels {
            if !valid_label_name(name) {
                return Err(AlertError::LabelName(name.clone()));
            }
            if value.len() > MAX_LABEL_VALUE {
                return Err(AlertError::TooLong {
                    field: format!("labels.{name}"),
                    max: MAX_LABEL_VALUE,
                });
            }
        }
        for (name, value) in &self.annotations {
            if value.len() > MAX_ANNOTATION_VALUE {
                return Err(AlertError::TooLong {
                    field: format!("annotations.{name}"),
                    max: MAX_ANNOTATION_VALUE,
                });
            }
        }
        let resolved = match self.status.as_deref() {
            None | Some("") | Some("firing") => false,
            Some("resolved") => true,
            Some(other) => return Err(AlertError::Status(other.into())),
        };
        // Go clients (amtool, client_golang) send the zero time for "not
        // set"; Alertmanager reads it so, and so do we.
        let posted_start = self.starts_at.filter(|t| !is_go_zero(*t));
        let posted_end = self.ends_at.filter(|t| !is_go_zero(*t));
        let starts_at = posted_start.or(posted_end).unwrap_or(now);
        let ends_at = match (posted_end, resolved) {
            (Some(end), false) => end,
            (Some(end), true) => end.min(now),
            (None, true) => now,
            (None, false) => now + resolve_timeout,
        };
        if ends_at < starts_at {
            return Err(AlertError::EndsBeforeStarts);
        }
        Ok(Alert {
            labels,
            annotations: self.annotations,
            starts_at,
            ends_at: Some(ends_at),
            generator_url: self.generator_url.filter(|u| !u.is_empty()),
            source: source.to_owned(),
            updated_at: now,
        })
    }
}

/// Parses a bus message body: one alert, or a list of them.
pub fn parse_bus_payload(payload: &[u8]) -> Result<Vec<PostableAlert>, AlertError> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| AlertError::Json(e.to_string()))?;
    let result = if value.is_array() {
        serde_json::from_value(value)
    } else {
        serde_json::from_value(value).map(|a| vec![a])
    };
    result.map_err(|e| AlertError::Json(e.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn labels(pairs: &[(&str, &str)]) -> LabelSet {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    pub(crate) fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("valid instant")
    }

    pub(crate) fn alert(pairs: &[(&str, &str)], starts: i64) -> Alert {
        Alert {
            labels: labels(pairs),
            annotations: LabelSet::new(),
            starts_at: at(starts),
            ends_at: None,
            generator_url: None,
            source: "test".into(),
            updated_at: at(starts),
        }
    }

    #[test]
    fn fingerprint_matches_alertmanager() {
        // Values computed by Prometheus' model.LabelSet.Fingerprint().
        assert_eq!(
            Fingerprint::of(&LabelSet::new()).to_string(),
            "cbf29ce484222325"
        );
        let a = labels(&[("alertname", "Down"), ("job", "node")]);
        let b = labels(&[("job", "node"), ("alertname", "Down")]);
        assert_eq!(Fingerprint::of(&a), Fingerprint::of(&b));
        assert_ne!(
            Fingerprint::of(&a),
            Fingerprint::of(&labels(&[("alertname", "Down"), ("job", "nodes")]))
        );
        // Separators keep "a"+"bc" and "ab"+"c" apart.
        assert_ne!(
            Fingerprint::of(&labels(&[("a", "bc")])),
            Fingerprint::of(&labels(&[("ab", "c")]))
        );
        let fp = Fingerprint::of(&a);
        assert_eq!(Fingerprint::try_from(fp.to_string()), Ok(fp));
        assert_eq!(fp.to_string().len(), 16);
    }

    #[test]
    fn severities_parse() {
        let table = [
            ("critical", Some(Severity::Critical)),
            ("P0", Some(Severity::Critical)),
            ("high", Some(Severity::High)),
            ("Warning", Some(Severity::Warning)),
            ("p3", Some(Severity::Info)),
            ("info", Some(Severity::Info)),
            ("loud", None),
        ];
        for (text, expected) in table {
            assert_eq!(Severity::parse(text), expected, "{text}");
        }
    }

    #[test]
    fn posted_alerts_are_completed_and_validated() {
        let timeout = Duration::minutes(5);
        let now = at(100);
        let base = PostableAlert {
            labels: labels(&[("alertname", "Down"), ("empty", "")]),
            ..Default::default()
        };
        let a = base
            .clone()
            .into_alert("http", now, timeout)
            .expect("valid");
        assert_eq!(a.starts_at, now);
        assert_eq!(a.ends_at, Some(now + timeout));
        assert!(!a.labels.contains_key("empty"), "empty labels are dropped");
        assert_eq!(a.status(now), Status::Firing);
        assert_eq!(a.status(now + timeout), Status::Resolved);

        let resolved = PostableAlert {
            status: Some("resolved".into()),
            starts_at: Some(at(0)),
            ..base.clone()
        }
        .into_alert("bus", now, timeout)
        .expect("valid");
        assert_eq!(resolved.ends_at, Some(now));
        assert_eq!(resolved.status(now), Status::Resolved);

        let cases: Vec<(PostableAlert, AlertError)> = vec![
            (PostableAlert::default(), AlertError::NoLabels),
            (
                PostableAlert {
                    labels: labels(&[("bad-name", "x")]),
                    ..Default::default()
                },
                AlertError::LabelName("bad-name".into()),
            ),
            (
                PostableAlert {
                    starts_at: Some(at(10)),
                    ends_at: Some(at(5)),
                    ..base.clone()
                },
                AlertError::EndsBeforeStarts,
            ),
            (
                PostableAlert {
                    status: Some("exploded".into()),
                    ..base.clone()
                },
                AlertError::Status("exploded".into()),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(input.into_alert("http", now, timeout), Err(expected));
        }
    }

    #[test]
    fn alertmanager_json_shape_round_trips() {
        let body = r#"[{"labels":{"alertname":"Down"},"annotations":{"summary":"s"},
            "startsAt":"2026-11-23T10:00:00Z","endsAt":"2026-11-23T10:05:00Z",
            "generatorURL":"http://prom/graph"}]"#;
        let parsed = parse_bus_payload(body.as_bytes()).expect("parses");
        assert_eq!(parsed.len(), 1);
        assert_eq!(
            parsed[0].generator_url.as_deref(),
            Some("http://prom/graph")
        );
        let single = parse_bus_payload(br#"{"labels":{"alertname":"X"},"status":"firing"}"#)
            .expect("parses");
        assert_eq!(single[0].status.as_deref(), Some("firing"));
        assert!(parse_bus_payload(b"not json").is_err());
    }

    /// What `amtool alert add Name label=value` posts: Go's zero time for
    /// both ends. Unset, as Alertmanager reads it: firing from now until
    /// `resolve_timeout`.
    #[test]
    fn go_zero_times_from_amtool_are_unset() {
        let body = r#"[{"labels":{"alertname":"AmtoolAdded","service":"api"},"annotations":{},"startsAt":"0001-01-01T00:00:00.000Z","endsAt":"0001-01-01T00:00:00.000Z","generatorURL":""}]"#;
        let posted: Vec<PostableAlert> = serde_json::from_str(body).expect("amtool's body parses");
        let now = at(100);
        let timeout = Duration::minutes(5);
        let alert = posted[0]
            .clone()
            .into_alert("http", now, timeout)
            .expect("valid");
        assert_eq!(alert.starts_at, now);
        assert_eq!(alert.ends_at, Some(now + timeout));
        assert_eq!(alert.status(now), Status::Firing);
        assert_eq!(alert.generator_url, None);
        // Only one end zero: the other is kept.
        let only_start = PostableAlert {
            ends_at: Some(at(400)),
            ..posted[0].clone()
        }
        .into_alert("http", now, timeout)
        .expect("valid");
        assert_eq!(
            (only_start.starts_at, only_start.ends_at),
            (at(400), Some(at(400)))
        );
        let zero_end_resolved = PostableAlert {
            starts_at: Some(at(0)),
            status: Some("resolved".into()),
            ..posted[0].clone()
        }
        .into_alert("http", now, timeout)
        .expect("valid");
        assert_eq!(zero_end_resolved.ends_at, Some(now));
        assert!(is_go_zero(posted[0].starts_at.expect("parsed")));
        assert!(!is_go_zero(DateTime::UNIX_EPOCH));
    }

    #[test]
    fn merge_keeps_first_start_while_firing() {
        let mut old = alert(&[("alertname", "A")], 0);
        old.ends_at = Some(at(300));
        let mut newer = alert(&[("alertname", "A")], 60);
        newer.ends_at = Some(at(400));
        old.merge(newer.clone(), at(100));
        assert_eq!(old.starts_at, at(0));
        assert_eq!(old.ends_at, Some(at(400)));
        let mut gone = alert(&[("alertname", "A")], 0);
        gone.ends_at = Some(at(50));
        gone.merge(newer, at(100));
        assert_eq!(gone.starts_at, at(60), "a resolved alert starts afresh");
    }
}
