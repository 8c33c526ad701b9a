//! Inhibition: a firing alert matching a rule's source matchers mutes the
//! alerts matching its target matchers that have equal values for the rule's
//! `equal` labels (e.g. a critical alert mutes warnings of the same service).
//! An alert never inhibits itself.

use serde::{Deserialize, Serialize};

use crate::matchers::{self, Matcher, MatcherError};
use crate::model::{Alert, Fingerprint};

/// One rule as configured (`[[alerter.inhibit_rules]]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InhibitRuleConfig {
    pub source_matchers: Vec<String>,
    pub target_matchers: Vec<String>,
    pub equal: Vec<String>,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct InhibitRule {
    source: Vec<Matcher>,
    target: Vec<Matcher>,
    equal: Vec<String>,
}

impl InhibitRule {
    pub fn compile(config: &InhibitRuleConfig) -> Result<Self, MatcherError> {
        Ok(Self {
            source: matchers::parse_all(&config.source_matchers)?,
            target: matchers::parse_all(&config.target_matchers)?,
            equal: config.equal.clone(),
        })
    }

    /// Whether an alert with these labels can inhibit under this rule
    /// (when firing).
    pub fn is_source(&self, labels: &crate::model::LabelSet) -> bool {
        matchers::matches_all(&self.source, labels)
    }

    /// Whether an alert with these labels can be inhibited by this rule.
    pub fn is_target(&self, labels: &crate::model::LabelSet) -> bool {
        matchers::matches_all(&self.target, labels)
    }

    /// Whether `source` inhibits `target` under this rule, given that
    /// `target` matches the target matchers.
    pub fn source_inhibits(
        &self,
        (source_fp, source): (Fingerprint, &Alert),
        (target_fp, target): (Fingerprint, &Alert),
        now: chrono::DateTime<chrono::Utc>,
    ) -> bool {
        source_fp != target_fp
            && !source.is_resolved(now)
            && self.is_source(&source.labels)
            && self
                .equal
                .iter()
                .all(|name| source.labels.get(name) == target.labels.get(name))
    }
}

/// The default: a critical alert mutes warnings of the same service.
pub fn default_rules() -> Vec<InhibitRuleConfig> {
    vec![InhibitRuleConfig {
        source_matchers: vec!["severity=~\"(?i)critical|p0\"".into()],
        target_matchers: vec!["severity=~\"(?i)warning|warn|p2\"".into()],
        equal: vec!["service".into()],
    }]
}

/// The fingerprints of the firing alerts in `active` that inhibit `target`,
/// under any rule.
pub fn inhibited_by<'a>(
    rules: &[InhibitRule],
    target: &Alert,
    active: impl IntoIterator<Item = &'a Alert> + Clone,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<Fingerprint> {
    let target_fp = target.fingerprint();
    let mut sources = Vec::new();
    for rule in rules {
        if !rule.is_target(&target.labels) {
            continue;
        }
        for source in active.clone() {
            let fp = source.fingerprint();
            if rule.source_inhibits((fp, source), (target_fp, target), now)
                && !sources.contains(&fp)
            {
                sources.push(fp);
            }
        }
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::{alert, at};

    #[test]
    fn critical_mutes_warnings_of_the_same_service() {
        let rules: Vec<InhibitRule> = default_rules()
            .iter()
            .map(|c| InhibitRule::compile(c).expect("compiles"))
            .collect();
        let crit_api = alert(
            &[
                ("alertname", "Down"),
                ("severity", "critical"),
                ("service", "api"),
            ],
            0,
        );
        let mut resolved_crit_db = alert(
            &[
                ("alertname", "Down"),
                ("severity", "critical"),
                ("service", "db"),
            ],
            0,
        );
        resolved_crit_db.ends_at = Some(at(10));
        let warn_api = alert(
            &[
                ("alertname", "Slow"),
                ("severity", "warning"),
                ("service", "api"),
            ],
            0,
        );
        let warn_db = alert(
            &[
                ("alertname", "Slow"),
                ("severity", "warning"),
                ("service", "db"),
            ],
            0,
        );
        let warn_none = alert(&[("alertname", "Slow"), ("severity", "warning")], 0);
        let high_api = alert(
            &[
                ("alertname", "Slow"),
                ("severity", "high"),
                ("service", "api"),
            ],
            0,
        );
        let active = vec![
            crit_api.clone(),
            resolved_crit_db.clone(),
            warn_api.clone(),
            warn_db.clone(),
            warn_none.clone(),
            high_api.clone(),
        ];
        let now = at(20);
        let table = [
            (&warn_api, vec![crit_api.fingerprint()]),
            (&warn_db, vec![]),   // its critical source is resolved
            (&warn_none, vec![]), // "service" missing on one side only
            (&high_api, vec![]),  // not a target
            (&crit_api, vec![]),
        ];
        for (target, expected) in table {
            assert_eq!(
                inhibited_by(&rules, target, &active, now),
                expected,
                "{:?}",
                target.labels
            );
        }
    }

    #[test]
    fn an_alert_matching_source_and_target_does_not_inhibit_itself() {
        let rule = InhibitRule::compile(&InhibitRuleConfig {
            source_matchers: vec!["alertname=X".into()],
            target_matchers: vec!["alertname=X".into()],
            equal: vec![],
        })
        .expect("compiles");
        let a = alert(&[("alertname", "X"), ("i", "1")], 0);
        let b = alert(&[("alertname", "X"), ("i", "2")], 0);
        assert!(inhibited_by(std::slice::from_ref(&rule), &a, [&a], at(1)).is_empty());
        assert_eq!(
            inhibited_by(&[rule], &a, [&a, &b], at(1)),
            vec![b.fingerprint()]
        );
    }
}
