//! The reaction matrix (policy `reaction_matrix`): patterns on an event's
//! source, kind and tags, the target agent, the proposal template, the
//! probability decided deterministically from (event id, pattern id) and the
//! cooldown per pattern and target. Pure, no I/O.

use chrono::Duration;
use opsloop_core::domain::rule_spec::ReactionPatternSpec;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::matching::{EventMatcher, EventView, SpecError};

/// One pattern of the matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct ReactionPattern {
    pub id: String,
    pub matcher: EventMatcher,
    /// The agent the proposal is for.
    pub target: String,
    /// In [0, 1].
    pub probability: f64,
    pub cooldown: Duration,
    /// `{title, steps: [{kind, payload}]}` rendered from the event.
    pub template: Value,
}

impl ReactionPattern {
    /// Parses one pattern ([`ReactionPatternSpec`], the same parse `SetPolicy`
    /// runs before storing the matrix), naming `patterns[index].FIELD`.
    pub fn parse(index: usize, spec: &Value) -> Result<Self, SpecError> {
        let field = format!("patterns[{index}]");
        let parsed = ReactionPatternSpec::parse(&field, spec)?;
        Ok(Self {
            id: parsed.id,
            matcher: parsed.events.into(),
            target: parsed.target,
            probability: parsed.probability,
            // Validated to at most a year.
            cooldown: Duration::seconds(i64::try_from(parsed.cooldown_seconds).unwrap_or(0)),
            // Kept as written: rendered per event.
            template: spec.get("template").cloned().unwrap_or(Value::Null),
        })
    }

    /// Parses the policy value `{"patterns": [...]}`. A bad pattern is an
    /// error for that pattern only; the good ones are kept.
    pub fn parse_matrix(policy: &Value) -> (Vec<Self>, Vec<SpecError>) {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let items = policy
            .get("patterns")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, item) in items.iter().enumerate() {
            match Self::parse(i, item) {
                Ok(p) => good.push(p),
                Err(e) => bad.push(e),
            }
        }
        (good, bad)
    }

    /// The cooldown's name in the `cooldowns` table.
    pub fn cooldown_name(&self) -> String {
        format!("reaction:{}:{}", self.id, self.target)
    }
}

/// The deterministic roll of (event, pattern) in [0, 1): never re-rolled,
/// recorded for audit.
pub fn roll(event_id: Uuid, pattern_id: &str) -> f64 {
    let mut hash = Sha256::new();
    hash.update(event_id.as_bytes());
    hash.update(b":");
    hash.update(pattern_id.as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    // 53 bits, so the value is exact in an f64 and strictly below 1.
    (u64::from_be_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// What the matrix decides for one (event, pattern).
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub pattern: ReactionPattern,
    pub roll: f64,
    /// `roll < probability`.
    pub selected: bool,
}

/// Every pattern the event matches, with its roll.
pub fn match_event(patterns: &[ReactionPattern], event: &EventView) -> Vec<Match> {
    patterns
        .iter()
        .filter(|p| p.matcher.matches(event))
        .map(|p| {
            let r = roll(event.id, &p.id);
            Match {
                pattern: p.clone(),
                roll: r,
                selected: r < p.probability,
            }
        })
        .collect()
}

/// The proposal dedupe key of a reaction: event id + pattern id.
pub fn reaction_dedupe_key(event_id: Uuid, pattern_id: &str) -> String {
    format!("reaction:{event_id}:{pattern_id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::tests::event;
    use chrono::Utc;
    use serde_json::json;

    fn pattern(p: f64) -> Value {
        json!({"id": "p1", "kind": "post.*", "tags": ["engagement:high"], "target": "writer",
               "probability": p, "cooldown_seconds": 600,
               "template": {"title": "Follow up {{event.kind}}", "steps": [{"kind": "draft", "payload": {}}]}})
    }

    #[test]
    fn rolls_are_deterministic_and_uniformish() {
        let id = Uuid::from_u128(42);
        assert_eq!(roll(id, "p1"), roll(id, "p1"));
        assert_ne!(roll(id, "p1"), roll(id, "p2"));
        let below_half = (0..1000u128)
            .filter(|i| roll(Uuid::from_u128(*i), "p") < 0.5)
            .count();
        assert!((400..600).contains(&below_half), "{below_half}");
        for i in 0..1000u128 {
            let r = roll(Uuid::from_u128(i), "x");
            assert!((0.0..1.0).contains(&r));
        }
    }

    #[test]
    fn matching_and_probability() {
        let e = event(1, "post.published", &["engagement:high"], Utc::now());
        let other = event(2, "post.published", &[], Utc::now());
        let table = [(0.0, Some(false)), (1.0, Some(true))];
        for (p, want) in table {
            let patterns = vec![ReactionPattern::parse(0, &pattern(p)).expect("parses")];
            let got = match_event(&patterns, &e).first().map(|m| m.selected);
            assert_eq!(got, want, "p = {p}");
            assert!(match_event(&patterns, &other).is_empty(), "tag missing");
        }
    }

    #[test]
    fn bad_patterns_are_reported_and_skipped() {
        let policy = json!({"patterns": [pattern(1.0), {"id": "x"}, pattern(2.0)]});
        let (good, bad) = ReactionPattern::parse_matrix(&policy);
        assert_eq!(good.len(), 1);
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[1].field, "patterns[2].probability");
        assert_eq!(good[0].cooldown_name(), "reaction:p1:writer");
        assert_eq!(
            reaction_dedupe_key(Uuid::nil(), "p1"),
            format!("reaction:{}:p1", Uuid::nil())
        );
    }
}
