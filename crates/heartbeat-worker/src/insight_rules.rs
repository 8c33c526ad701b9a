//! Insight promotion (policy `insight_promotion`): events carrying the tag
//! (`engagement:high`), grouped by what they cite (`payload.pattern`, else
//! `payload.topic`, else the kind); a group cited at least `min_citations`
//! times within `window_days` by events not yet promoted becomes one
//! insight. The fingerprint normalises the pattern, so a near-duplicate of a
//! stored insight is recognised. Pure, no I/O.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::matching::EventView;

/// What an event cites.
pub fn citation(event: &EventView) -> String {
    ["pattern", "topic"]
        .iter()
        .find_map(|k| event.payload.get(*k).and_then(Value::as_str))
        .map(str::to_owned)
        .unwrap_or_else(|| event.kind.clone())
}

/// Lowercase alphanumeric words joined by one space, hashed: "Short  Videos!"
/// and "short videos" are the same insight.
pub fn fingerprint(pattern: &str) -> String {
    let normal: Vec<String> = pattern
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    hex::encode(Sha256::digest(normal.join(" ").as_bytes()))
}

/// A group ready to become an insight.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub pattern: String,
    pub fingerprint: String,
    /// Source events, ascending seq.
    pub event_ids: Vec<Uuid>,
    pub events: Vec<EventView>,
}

/// The candidates among `events` (ascending seq): tagged, within the window,
/// not promoted before, at least `min_citations` per fingerprint.
pub fn candidates(
    events: &[EventView],
    tag: &str,
    min_citations: usize,
    window: Duration,
    promoted: &HashSet<Uuid>,
    now: DateTime<Utc>,
) -> Vec<Candidate> {
    let mut groups: BTreeMap<String, Candidate> = BTreeMap::new();
    for e in events {
        let tagged = e.kind == tag || e.tags.iter().any(|t| t == tag);
        if !tagged || e.created_at < now - window || e.created_at > now || promoted.contains(&e.id)
        {
            continue;
        }
        let pattern = citation(e);
        let fp = fingerprint(&pattern);
        let group = groups.entry(fp.clone()).or_insert_with(|| Candidate {
            pattern,
            fingerprint: fp,
            event_ids: Vec::new(),
            events: Vec::new(),
        });
        group.event_ids.push(e.id);
        group.events.push(e.clone());
    }
    groups
        .into_values()
        .filter(|c| c.event_ids.len() >= min_citations.max(1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::tests::event;
    use serde_json::json;

    fn cited(seq: i64, pattern: &str, tags: &[&str], at: DateTime<Utc>) -> EventView {
        let mut e = event(seq, "post.metrics", tags, at);
        e.payload = json!({"pattern": pattern});
        e
    }

    #[test]
    fn threshold_window_and_no_double_promotion() {
        let now = Utc::now();
        let d = Duration::days;
        let hi = ["engagement:high"];
        let events = vec![
            cited(1, "Short videos", &hi, now - d(1)),
            cited(2, "short  VIDEOS!", &hi, now - d(2)),
            cited(3, "Short videos", &[], now - d(1)),
            cited(4, "Threads", &hi, now - d(1)),
            cited(5, "short videos", &hi, now - d(8)),
        ];
        let none = HashSet::new();
        assert!(
            candidates(&events, "engagement:high", 3, d(7), &none, now).is_empty(),
            "2 in window"
        );
        let mut more = events.clone();
        more.push(cited(6, "Short Videos", &hi, now));
        let found = candidates(&more, "engagement:high", 3, d(7), &none, now);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].event_ids,
            vec![Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(6)]
        );
        let promoted: HashSet<Uuid> = found[0].event_ids.iter().copied().collect();
        assert!(candidates(&more, "engagement:high", 3, d(7), &promoted, now).is_empty());
        assert_eq!(fingerprint("Short videos"), fingerprint("short-videos"));
    }
}
