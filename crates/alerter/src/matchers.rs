//! Label matchers with Alertmanager's semantics: `=`, `!=`, `=~`, `!~`, the
//! regular expressions anchored at both ends, and a missing label matching
//! as the empty string.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::model::LabelSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchOp {
    #[serde(rename = "=")]
    Equal,
    #[serde(rename = "!=")]
    NotEqual,
    #[serde(rename = "=~")]
    Regex,
    #[serde(rename = "!~")]
    NotRegex,
}

impl MatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Equal => "=",
            Self::NotEqual => "!=",
            Self::Regex => "=~",
            Self::NotRegex => "!~",
        }
    }

    pub fn is_regex(self) -> bool {
        matches!(self, Self::Regex | Self::NotRegex)
    }

    pub fn is_equal(self) -> bool {
        matches!(self, Self::Equal | Self::Regex)
    }

    pub fn from_flags(is_regex: bool, is_equal: bool) -> Self {
        match (is_regex, is_equal) {
            (false, true) => Self::Equal,
            (false, false) => Self::NotEqual,
            (true, true) => Self::Regex,
            (true, false) => Self::NotRegex,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MatcherError {
    #[error("matcher {0:?}: expected name, one of = != =~ !~, and a value")]
    Syntax(String),
    #[error("matcher {name}: invalid regular expression: {reason}")]
    Regex { name: String, reason: String },
    #[error("matcher: invalid label name {0:?}")]
    Name(String),
}

/// One matcher. The regex, when any, is compiled once at construction.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl Matcher {
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Self, MatcherError> {
        let valid_name = {
            let mut chars = name.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if !valid_name {
            return Err(MatcherError::Name(name.to_owned()));
        }
        let regex = if op.is_regex() {
            Some(Regex::new(&format!("^(?:{value})$")).map_err(|e| {
                MatcherError::Regex {
                    name: name.to_owned(),
                    // regex explains over several lines; keep its verdict.
                    reason: e
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .trim()
                        .trim_start_matches("error: ")
                        .to_owned(),
                }
            })?)
        } else {
            None
        };
        Ok(Self {
            name: name.to_owned(),
            op,
            value: value.to_owned(),
            regex,
        })
    }

    /// Parses `name=value`, `name!="value"`, `name=~"re"`, `name!~re`.
    pub fn parse(text: &str) -> Result<Self, MatcherError> {
        let syntax = || MatcherError::Syntax(text.to_owned());
        let pos = text.find(['=', '!']).ok_or_else(syntax)?;
        let (name, rest) = text.split_at(pos);
        let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
            (MatchOp::Regex, v)
        } else if let Some(v) = rest.strip_prefix("!~") {
            (MatchOp::NotRegex, v)
        } else if let Some(v) = rest.strip_prefix("!=") {
            (MatchOp::NotEqual, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (MatchOp::Equal, v)
        } else {
            return Err(syntax());
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        Self::new(name.trim(), op, value)
    }

    pub fn matches_value(&self, value: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => value == self.value,
            (MatchOp::NotEqual, _) => value != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(value),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(value),
            (MatchOp::Regex | MatchOp::NotRegex, None) => false,
        }
    }

    /// A missing label matches as the empty string.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.matches_value(labels.get(&self.name).map(String::as_str).unwrap_or(""))
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op.as_str(), self.value)
    }
}

/// All matchers must match (an empty list matches everything).
pub fn matches_all(matchers: &[Matcher], labels: &LabelSet) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

/// Parses a list of matcher strings (config files).
pub fn parse_all(texts: &[String]) -> Result<Vec<Matcher>, MatcherError> {
    texts.iter().map(|t| Matcher::parse(t)).collect()
}

/// A matcher in Alertmanager v2 JSON: `{name, value, isRegex, isEqual}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiMatcher {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub is_regex: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_equal: Option<bool>,
}

impl TryFrom<&ApiMatcher> for Matcher {
    type Error = MatcherError;
    fn try_from(m: &ApiMatcher) -> Result<Self, Self::Error> {
        Matcher::new(
            &m.name,
            MatchOp::from_flags(m.is_regex, m.is_equal.unwrap_or(true)),
            &m.value,
        )
    }
}

impl From<&Matcher> for ApiMatcher {
    fn from(m: &Matcher) -> Self {
        Self {
            name: m.name.clone(),
            value: m.value.clone(),
            is_regex: m.op.is_regex(),
            is_equal: Some(m.op.is_equal()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::labels;

    #[test]
    fn operators_match_like_alertmanager() {
        let set = labels(&[("severity", "critical"), ("service", "api-gw")]);
        let table = [
            ("severity=critical", true),
            ("severity=\"critical\"", true),
            ("severity!=critical", false),
            ("severity=~crit.*", true),
            ("severity=~crit", false), // anchored: no partial match
            ("severity!~warning|info", true),
            ("service=~\"api-.*\"", true),
            ("team=", true), // a missing label is ""
            ("team!=", false),
            ("team=~.*", true),
            ("team=~.+", false),
            ("team!~.+", true),
        ];
        for (text, expected) in table {
            let m = Matcher::parse(text).expect(text);
            assert_eq!(m.matches(&set), expected, "{text}");
        }
    }

    #[test]
    fn bad_matchers_are_refused() {
        assert!(matches!(
            Matcher::parse("severity"),
            Err(MatcherError::Syntax(_))
        ));
        assert!(matches!(
            Matcher::parse("sev=~(unclosed"),
            Err(MatcherError::Regex { .. })
        ));
        assert!(matches!(Matcher::parse("=x"), Err(MatcherError::Name(_))));
    }

    #[test]
    fn api_shape_round_trips() {
        let m = Matcher::parse("service!~db.*").expect("parse");
        let api = ApiMatcher::from(&m);
        assert_eq!(
            serde_json::to_value(&api).expect("json"),
            serde_json::json!({"name": "service", "value": "db.*", "isRegex": true, "isEqual": false})
        );
        assert_eq!(Matcher::try_from(&api).expect("back"), m);
        let absent: ApiMatcher =
            serde_json::from_str(r#"{"name":"a","value":"b","isRegex":false}"#).expect("json");
        assert_eq!(Matcher::try_from(&absent).expect("m").op, MatchOp::Equal);
        assert_eq!(m.to_string(), "service!~\"db.*\"");
    }
}
