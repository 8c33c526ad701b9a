//! Parsing of command-line values into what the gRPC contract wants:
//! durations (`90s`, `15m`, `2h`, `7d`), instants (RFC 3339 or "that long
//! ago"), JSON documents and label matchers (`name=value`, `!=`, `=~`, `!~`).

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, NaiveDate, Utc};
use opsloop_core::proto::v1::Matcher;

/// A duration: whole seconds (`3600`) or a number with a unit `s`, `m`, `h`,
/// `d` or `w` (`90s`, `15m`, `2h`, `7d`, `1w`).
pub fn duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| anyhow!("{text:?} is not a duration like 90s, 15m, 2h or 7d"))?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => bail!("{text:?} is not a duration like 90s, 15m, 2h or 7d"),
    };
    value
        .checked_mul(unit_seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| anyhow!("{text:?} is too long a duration"))
}

/// An instant: RFC 3339 (`2026-11-23T09:00:00Z`), a date (`2026-11-23`,
/// midnight UTC), or a duration meaning that long before `now` (`2h`).
pub fn instant(text: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    if let Some(midnight) = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
    {
        return Ok(midnight.and_utc());
    }
    let ago = duration(text).map_err(|_| {
        anyhow!("{text:?} is not a time like 2026-11-23T09:00:00Z, 2026-11-23 or 2h (ago)")
    })?;
    let ago = chrono::Duration::from_std(ago).context("duration out of range")?;
    now.checked_sub_signed(ago)
        .ok_or_else(|| anyhow!("{text:?} reaches too far back"))
}

/// A JSON document given on the command line; `what` names the flag in the
/// error. Returns it re-serialized compactly.
pub fn json_arg(what: &str, text: &str) -> anyhow::Result<String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| anyhow!("{what}: not valid JSON ({e}): {text}"))?;
    Ok(value.to_string())
}

/// A label matcher: `name=value`, `name!=value`, `name=~regex`,
/// `name!~regex`. Surrounding quotes on the value are removed.
pub fn matcher(text: &str) -> anyhow::Result<Matcher> {
    let bad = || {
        anyhow!("{text:?} is not a matcher like alertname=Foo, severity!=info, service=~api|web")
    };
    let pos = text.find(['=', '!']).ok_or_else(bad)?;
    let (name, rest) = text.split_at(pos);
    let (is_equal, is_regex, value) = if let Some(v) = rest.strip_prefix("=~") {
        (true, true, v)
    } else if let Some(v) = rest.strip_prefix("!~") {
        (false, true, v)
    } else if let Some(v) = rest.strip_prefix("!=") {
        (false, false, v)
    } else if let Some(v) = rest.strip_prefix('=') {
        (true, false, v)
    } else {
        return Err(bad());
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(bad());
    }
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    Ok(Matcher {
        name: name.to_owned(),
        value: value.to_owned(),
        is_regex,
        is_equal: Some(is_equal),
    })
}

/// A matcher back in its `name=value` form.
pub fn matcher_text(m: &Matcher) -> String {
    let op = match (m.is_equal.unwrap_or(true), m.is_regex) {
        (true, false) => "=",
        (false, false) => "!=",
        (true, true) => "=~",
        (false, true) => "!~",
    };
    format!("{}{op}{}", m.name, m.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(duration("2x").is_err());
        assert!(duration("h").is_err());
    }

    #[test]
    fn instants() {
        let now = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            instant("2h", now).unwrap().to_rfc3339(),
            "2026-11-23T08:00:00+00:00"
        );
        assert_eq!(
            instant("2026-11-20", now).unwrap().to_rfc3339(),
            "2026-11-20T00:00:00+00:00"
        );
        assert_eq!(
            instant("2026-11-20T01:02:03+09:00", now)
                .unwrap()
                .to_rfc3339(),
            "2026-11-19T16:02:03+00:00"
        );
        assert!(instant("yesterday", now).is_err());
    }

    #[test]
    fn matchers() {
        for (text, name, value, eq, re) in [
            ("alertname=Foo", "alertname", "Foo", true, false),
            ("severity!=info", "severity", "info", false, false),
            ("service=~api|web", "service", "api|web", true, true),
            ("env!~\"prod.*\"", "env", "prod.*", false, true),
        ] {
            let m = matcher(text).unwrap();
            assert_eq!(
                (m.name.as_str(), m.value.as_str(), m.is_equal, m.is_regex),
                (name, value, Some(eq), re)
            );
        }
        assert_eq!(matcher_text(&matcher("a!~b").unwrap()), "a!~b");
        assert!(matcher("novalue").is_err());
        assert!(matcher("=x").is_err());
    }
}
