//! The pure decisions of uptime probes, without I/O: the up/down state
//! machine (down after `retries` consecutive failures, up again on the first
//! success, a transition reported once), certificate-expiry thresholds (which
//! are crossed, which notice is due given those already sent for the same
//! certificate), maintenance windows (which silence the down alert, and
//! what to send once a window ends with the probe still down) and reading a
//! certificate's `notAfter` from its DER.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};

/// A probe's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not checked yet, or failing without having reached its retries.
    Unknown,
    Up,
    Down,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "unknown" => Self::Unknown,
            "up" => Self::Up,
            "down" => Self::Down,
            _ => return None,
        })
    }
}

/// What is persisted per probe between checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeStatus {
    pub status: Status,
    pub consecutive_failures: u32,
    /// When `status` began.
    pub since: DateTime<Utc>,
}

impl ProbeStatus {
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            status: Status::Unknown,
            consecutive_failures: 0,
            since: now,
        }
    }
}

/// A change worth telling people about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// Reached its retries: down since `now`.
    Down,
    /// Recovered after being down since `down_since`.
    Up {
        down_since: DateTime<Utc>,
    },
}

/// The state after one check at `now`.
pub fn observe(
    prev: ProbeStatus,
    ok: bool,
    retries: u32,
    now: DateTime<Utc>,
) -> (ProbeStatus, Transition) {
    if ok {
        let next = ProbeStatus {
            status: Status::Up,
            consecutive_failures: 0,
            since: if prev.status == Status::Up {
                prev.since
            } else {
                now
            },
        };
        let transition = match prev.status {
            Status::Down => Transition::Up {
                down_since: prev.since,
            },
            _ => Transition::None,
        };
        return (next, transition);
    }
    let failures = prev.consecutive_failures.saturating_add(1);
    if prev.status != Status::Down && failures >= retries.max(1) {
        (
            ProbeStatus {
                status: Status::Down,
                consecutive_failures: failures,
                since: now,
            },
            Transition::Down,
        )
    } else {
        (
            ProbeStatus {
                consecutive_failures: failures,
                ..prev
            },
            Transition::None,
        )
    }
}

/// A maintenance window: down alerts of `probes` (all when empty) are held
/// back from `start` to `end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceWindow {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub probes: Vec<String>,
}

/// Whether `probe` is in a maintenance window at `now`.
pub fn in_maintenance(windows: &[MaintenanceWindow], probe: &str, now: DateTime<Utc>) -> bool {
    windows.iter().any(|w| {
        w.start <= now
            && now < w.end
            && (w.probes.is_empty() || w.probes.iter().any(|p| p == probe))
    })
}

/// What a check does with the `ProbeDown` alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertAction {
    None,
    Fire,
    Resolve,
}

/// The alert action of a check that led to `next` by `transition`, when
/// the down alert was (`alerted`) or was not yet sent for this outage and
/// the probe is or is not in maintenance; and whether the alert stands
/// afterwards. Down in maintenance: no alert; still down once the window
/// is over: the alert then; up again: resolved only if it was sent.
pub fn alert_action(
    transition: Transition,
    next: Status,
    alerted: bool,
    maintenance: bool,
) -> (AlertAction, bool) {
    match transition {
        Transition::Down if maintenance => (AlertAction::None, false),
        Transition::Down => (AlertAction::Fire, true),
        Transition::Up { .. } if alerted => (AlertAction::Resolve, false),
        Transition::Up { .. } => (AlertAction::None, false),
        Transition::None if next == Status::Down && !alerted && !maintenance => {
            (AlertAction::Fire, true)
        }
        Transition::None => (AlertAction::None, alerted && next == Status::Down),
    }
}

/// The thresholds (days) a certificate with `remaining` time left has
/// crossed, smallest first. An expired certificate has crossed all.
pub fn crossed_thresholds(remaining: Duration, warn_days: &[u32]) -> Vec<u32> {
    let mut crossed: Vec<u32> = warn_days
        .iter()
        .copied()
        .filter(|d| remaining <= Duration::days(i64::from(*d)))
        .collect();
    crossed.sort_unstable();
    crossed.dedup();
    crossed
}

/// The notice due for a certificate that has crossed `crossed` (smallest
/// first) when `notified` were already sent for it: the tightest crossed
/// threshold, unless it was sent. Looser thresholds crossed at the same
/// time are not announced separately (a certificate first seen with 10 days
/// left gets the 14-day notice, not the 21-day one too).
pub fn notice_due(crossed: &[u32], notified: &[u32]) -> Option<u32> {
    let tightest = *crossed.first()?;
    (!notified.contains(&tightest)).then_some(tightest)
}

/// One DER element: (tag, contents, what follows). Single-byte tags only,
/// which is all an X.509 certificate's outer structure uses.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn digits(text: &[u8]) -> Option<u32> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`).
fn der_time(tag: u8, text: &[u8]) -> Option<DateTime<Utc>> {
    let (year, rest) = match tag {
        0x17 if text.len() == 13 => {
            let yy = i32::try_from(digits(&text[..2])?).ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        0x18 if text.len() == 15 => (i32::try_from(digits(&text[..4])?).ok()?, &text[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(year, digits(&rest[0..2])?, digits(&rest[2..4])?)?;
    let time = date.and_hms_opt(
        digits(&rest[4..6])?,
        digits(&rest[6..8])?,
        digits(&rest[8..10])?,
    )?;
    Some(Utc.from_utc_datetime(&time))
}

/// The `notAfter` of an X.509 certificate in DER; `None` when it is not one.
pub fn certificate_not_after(der: &[u8]) -> Option<DateTime<Utc>> {
    let (0x30, cert, _) = tlv(der)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(cert)? else {
        return None;
    };
    let (tag, _, mut rest) = tlv(tbs)?;
    if tag == 0xa0 {
        // [0] version, then the serial number.
        let (0x02, _, after_serial) = tlv(rest)? else {
            return None;
        };
        rest = after_serial;
    } else if tag != 0x02 {
        return None;
    }
    let (_, _, rest) = tlv(rest)?; // signature algorithm
    let (_, _, rest) = tlv(rest)?; // issuer
    let (0x30, validity, _) = tlv(rest)? else {
        return None;
    };
    let (_, _, after_not_before) = tlv(validity)?;
    let (tag, not_after, _) = tlv(after_not_before)?;
    der_time(tag, not_after)
}

/// One step of a [`JsonPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonStep {
    /// `.name`: a member of an object.
    Key(String),
    /// `[n]`: an element of an array.
    Index(usize),
}

/// A path into a JSON document, as `json_path` writes it: members joined
/// by `.`, array elements as `[n]`, with an optional leading `$`
/// (`status`, `checks[0].state`, `$.data.ready`, `$[1]`). Just enough to
/// point at one value; no wildcards or filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(pub Vec<JsonStep>);

impl JsonPath {
    /// The path, or why it does not parse (with the position).
    pub fn parse(text: &str) -> Result<Self, String> {
        let chars: Vec<char> = text.chars().collect();
        if text.trim().is_empty() {
            return Err("empty; write a path such as status or checks[0].state".into());
        }
        let mut steps = Vec::new();
        let mut i = 0;
        // `$` is the document; without it the path starts with a member.
        let mut expect_key = true;
        if chars.first() == Some(&'$') {
            i = 1;
            expect_key = false;
        } else if chars.first() == Some(&'[') {
            expect_key = false;
        }
        while i < chars.len() || expect_key {
            if expect_key {
                let start = i;
                while i < chars.len() && !matches!(chars[i], '.' | '[' | ']') {
                    i += 1;
                }
                if i == start {
                    return Err(format!(
                        "{text:?}: a member name is missing at position {start}"
                    ));
                }
                let key: String = chars[start..i].iter().collect();
                if key.trim() != key {
                    return Err(format!("{text:?}: {key:?} has spaces around it"));
                }
                steps.push(JsonStep::Key(key));
                expect_key = false;
                continue;
            }
            match chars[i] {
                '.' => {
                    i += 1;
                    expect_key = true;
                }
                '[' => {
                    let start = i + 1;
                    let mut end = start;
                    while end < chars.len() && chars[end].is_ascii_digit() {
                        end += 1;
                    }
                    if end == start || chars.get(end) != Some(&']') {
                        return Err(format!(
                            "{text:?}: expected an index such as [0] at position {i}"
                        ));
                    }
                    let digits: String = chars[start..end].iter().collect();
                    let index = digits
                        .parse::<usize>()
                        .map_err(|_| format!("{text:?}: index {digits} is too large"))?;
                    steps.push(JsonStep::Index(index));
                    i = end + 1;
                }
                other => {
                    return Err(format!(
                        "{text:?}: unexpected {other:?} at position {i} (use . between members, [n] for elements)"
                    ));
                }
            }
        }
        Ok(Self(steps))
    }

    /// The value at the path, if the document has one there.
    pub fn lookup<'a>(&self, document: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
        self.0.iter().try_fold(document, |value, step| match step {
            JsonStep::Key(key) => value.get(key.as_str()),
            JsonStep::Index(index) => value.get(*index),
        })
    }
}

impl std::fmt::Display for JsonPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("$")?;
        for step in &self.0 {
            match step {
                JsonStep::Key(key) => write!(f, ".{key}")?,
                JsonStep::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Whether `actual` counts as `expected`: equal JSON, equal numbers
/// (`1` and `1.0`), or an expected string that is how `actual` (a number or
/// boolean) is written (environment overrides give every value as text).
pub fn json_matches(expected: &serde_json::Value, actual: &serde_json::Value) -> bool {
    use serde_json::Value;
    if expected == actual {
        return true;
    }
    match (expected, actual) {
        (Value::Number(a), Value::Number(b)) => a.as_f64().is_some_and(|a| Some(a) == b.as_f64()),
        (Value::String(text), Value::Number(n)) => text
            .trim()
            .parse::<f64>()
            .ok()
            .is_some_and(|t| Some(t) == n.as_f64()),
        (Value::String(text), Value::Bool(b)) => text.as_str() == if *b { "true" } else { "false" },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0)
            .single()
            .expect("time")
    }

    #[test]
    fn down_after_retries_once_and_up_on_first_success() {
        // (ok, expected status, failures, transition) from a fresh probe, retries = 3.
        let checks: &[(bool, Status, u32, &str)] = &[
            (true, Status::Up, 0, "none"),
            (false, Status::Up, 1, "none"),
            (false, Status::Up, 2, "none"),
            (true, Status::Up, 0, "none"),
            (false, Status::Up, 1, "none"),
            (false, Status::Up, 2, "none"),
            (false, Status::Down, 3, "down"),
            (false, Status::Down, 4, "none"),
            (false, Status::Down, 5, "none"),
            (true, Status::Up, 0, "up"),
            (true, Status::Up, 0, "none"),
        ];
        let mut state = ProbeStatus::new(at(0));
        for (i, (ok, status, failures, transition)) in checks.iter().enumerate() {
            let now = at(60 * (i as i64 + 1));
            let (next, t) = observe(state, *ok, 3, now);
            assert_eq!(next.status, *status, "check {i}");
            assert_eq!(next.consecutive_failures, *failures, "check {i}");
            let name = match t {
                Transition::None => "none",
                Transition::Down => {
                    assert_eq!(next.since, now);
                    "down"
                }
                Transition::Up { down_since } => {
                    assert_eq!(down_since, state.since, "up reports when it went down");
                    assert_eq!(next.since, now);
                    "up"
                }
            };
            assert_eq!(name, *transition, "check {i}");
            state = next;
        }
    }

    #[test]
    fn a_probe_failing_from_its_first_check_goes_down_after_retries() {
        let (s1, t1) = observe(ProbeStatus::new(at(0)), false, 2, at(1));
        assert_eq!((s1.status, t1), (Status::Unknown, Transition::None));
        let (s2, t2) = observe(s1, false, 2, at(2));
        assert_eq!((s2.status, t2), (Status::Down, Transition::Down));
        let (s3, t3) = observe(ProbeStatus::new(at(0)), false, 1, at(1));
        assert_eq!((s3.status, t3), (Status::Down, Transition::Down));
    }

    #[test]
    fn maintenance_windows_hold_back_the_down_alert() {
        let windows = vec![
            MaintenanceWindow {
                start: at(100),
                end: at(200),
                probes: vec!["db".into()],
            },
            MaintenanceWindow {
                start: at(500),
                end: at(600),
                probes: vec![],
            },
        ];
        // (probe, time, in maintenance)
        for (probe, t, expected) in [
            ("db", 99, false),
            ("db", 100, true),
            ("db", 199, true),
            ("db", 200, false),
            ("web", 150, false),
            ("web", 550, true),
            ("db", 599, true),
        ] {
            assert_eq!(
                in_maintenance(&windows, probe, at(t)),
                expected,
                "{probe} {t}"
            );
        }
        let up = Transition::Up { down_since: at(0) };
        // (transition, status after, alerted before, maintenance) → (action, alerted after)
        let table = [
            (
                Transition::Down,
                Status::Down,
                false,
                false,
                AlertAction::Fire,
                true,
            ),
            (
                Transition::Down,
                Status::Down,
                false,
                true,
                AlertAction::None,
                false,
            ),
            (
                Transition::None,
                Status::Down,
                false,
                true,
                AlertAction::None,
                false,
            ),
            // The window ended with the probe still down: the alert now, once.
            (
                Transition::None,
                Status::Down,
                false,
                false,
                AlertAction::Fire,
                true,
            ),
            (
                Transition::None,
                Status::Down,
                true,
                false,
                AlertAction::None,
                true,
            ),
            (
                Transition::None,
                Status::Down,
                true,
                true,
                AlertAction::None,
                true,
            ),
            (up, Status::Up, true, false, AlertAction::Resolve, false),
            (up, Status::Up, true, true, AlertAction::Resolve, false),
            // Down and up inside the window: nothing was sent, nothing to resolve.
            (up, Status::Up, false, true, AlertAction::None, false),
            (
                Transition::None,
                Status::Up,
                false,
                false,
                AlertAction::None,
                false,
            ),
            (
                Transition::None,
                Status::Unknown,
                false,
                false,
                AlertAction::None,
                false,
            ),
        ];
        for (i, (transition, next, alerted, maintenance, action, after)) in
            table.into_iter().enumerate()
        {
            assert_eq!(
                alert_action(transition, next, alerted, maintenance),
                (action, after),
                "row {i}"
            );
        }
    }

    type Crossed = Vec<u32>;
    type Notified = Vec<u32>;

    #[test]
    fn thresholds_and_notices() {
        let warn = [21, 14, 7, 3, 1];
        // (time left, crossed, already notified for this certificate, notice)
        let table: Vec<(Duration, Crossed, Notified, Option<u32>)> = vec![
            (Duration::days(40), vec![], vec![], None),
            (Duration::days(21), vec![21], vec![], Some(21)),
            (Duration::days(10), vec![14, 21], vec![], Some(14)),
            (Duration::days(10), vec![14, 21], vec![21], Some(14)),
            (Duration::days(10), vec![14, 21], vec![14, 21], None),
            (Duration::days(6), vec![7, 14, 21], vec![14, 21], Some(7)),
            (Duration::hours(20), vec![1, 3, 7, 14, 21], vec![], Some(1)),
            (Duration::days(-2), vec![1, 3, 7, 14, 21], vec![1], None),
        ];
        for (left, crossed, notified, notice) in table {
            let got = crossed_thresholds(left, &warn);
            assert_eq!(got, crossed, "{left}");
            assert_eq!(notice_due(&got, &notified), notice, "{left} {notified:?}");
        }
    }

    #[test]
    fn not_after_of_generated_certificates() {
        for (y, m, d) in [(2030, 5, 17), (2049, 12, 31), (2051, 1, 2), (1999, 3, 4)] {
            let mut params =
                rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
            params.not_before = rcgen::date_time_ymd(1990, 1, 1);
            params.not_after = rcgen::date_time_ymd(y, m, d);
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = params.self_signed(&key).expect("cert");
            let expected = Utc
                .with_ymd_and_hms(y, u32::from(m), u32::from(d), 0, 0, 0)
                .single();
            assert_eq!(certificate_not_after(cert.der()), expected, "{y}-{m}-{d}");
        }
        assert_eq!(certificate_not_after(b"not a certificate"), None);
        assert_eq!(certificate_not_after(&[0x30, 0x82, 0xff]), None);
    }

    #[test]
    fn json_paths_parse_and_look_up() {
        let doc = serde_json::json!({
            "status": "ok",
            "checks": [{"state": "up"}, {"state": "down", "count": 3}],
            "data": {"ready": true},
        });
        let table: &[(&str, Option<serde_json::Value>)] = &[
            ("status", Some(serde_json::json!("ok"))),
            ("$.status", Some(serde_json::json!("ok"))),
            ("checks[1].state", Some(serde_json::json!("down"))),
            ("$.checks[1].count", Some(serde_json::json!(3))),
            ("data.ready", Some(serde_json::json!(true))),
            ("checks[2].state", None),
            ("status.deeper", None),
            ("missing", None),
        ];
        for (text, expected) in table {
            let path = JsonPath::parse(text).expect(text);
            assert_eq!(path.lookup(&doc), expected.as_ref(), "{text}");
        }
        assert_eq!(JsonPath::parse("$").expect("root").lookup(&doc), Some(&doc));
        assert_eq!(
            JsonPath::parse("$[0]").expect("index").0,
            vec![JsonStep::Index(0)]
        );
        assert_eq!(
            JsonPath::parse("checks[1].state")
                .expect("parses")
                .to_string(),
            "$.checks[1].state"
        );
    }

    #[test]
    fn bad_json_paths_say_where() {
        for (text, reason) in [
            ("", "empty"),
            ("  ", "empty"),
            ("a..b", "member name is missing at position 2"),
            ("a.", "member name is missing at position 2"),
            ("checks[x]", "expected an index such as [0] at position 6"),
            ("checks[0", "expected an index"),
            ("checks[]", "expected an index"),
            ("a[0]b", "unexpected 'b' at position 4"),
            ("$status", "unexpected 's' at position 1"),
            ("a]", "unexpected ']'"),
            ("a[99999999999999999999999]", "too large"),
        ] {
            let error = JsonPath::parse(text).expect_err(text);
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }

    #[test]
    fn json_values_match_loosely_only_where_text_is_all_there_is() {
        use serde_json::json;
        assert!(json_matches(&json!("ok"), &json!("ok")));
        assert!(json_matches(&json!(1), &json!(1.0)));
        assert!(json_matches(&json!("3"), &json!(3)));
        assert!(json_matches(&json!("true"), &json!(true)));
        assert!(json_matches(&json!({"a": [1]}), &json!({"a": [1]})));
        assert!(!json_matches(&json!("ok"), &json!("OK")));
        assert!(!json_matches(&json!(3), &json!("3")));
        assert!(!json_matches(&json!(true), &json!("true")));
        assert!(!json_matches(&json!(null), &json!("null")));
    }
}
