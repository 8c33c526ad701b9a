//! PagerDuty Events API v2: `trigger` while anything fires, `resolve` when
//! the group is all resolved, with `dedup_key` = the group key, so one
//! incident follows one group.

use opsloop_core::secrets::Secret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{AlertText, Receiver, ReceiverKind, RenderContext, describe, title, truncate};
use crate::group::Notification;
use crate::model::Severity;

pub const MAX_SUMMARY: usize = 1024;
pub const MAX_DEDUP_KEY: usize = 255;
/// Alerts listed in `custom_details` (the event's size limit is 512 KB).
const MAX_LISTED: usize = 50;

pub struct PagerDuty {
    pub routing_key: Secret,
}

/// The group key, or its hash when longer than PagerDuty accepts.
pub fn dedup_key(group_key: &str) -> String {
    if group_key.len() <= MAX_DEDUP_KEY {
        group_key.to_owned()
    } else {
        hex::encode(Sha256::digest(group_key.as_bytes()))
    }
}

fn pd_severity(severity: Option<Severity>) -> &'static str {
    match severity {
        Some(Severity::Critical) => "critical",
        Some(Severity::High) => "error",
        Some(Severity::Warning) => "warning",
        Some(Severity::Info) | None => "info",
    }
}

impl Receiver for PagerDuty {
    fn kind(&self) -> ReceiverKind {
        ReceiverKind::Pagerduty
    }

    fn payload(&self, n: &Notification, ctx: &RenderContext) -> Value {
        let dedup_key = dedup_key(&n.group_key);
        if n.firing.is_empty() {
            return json!({
                "routing_key": self.routing_key.expose(),
                "event_action": "resolve",
                "dedup_key": dedup_key,
            });
        }
        let first = &n.firing[0];
        let description = describe(first);
        let summary = if description.is_empty() {
            title(n)
        } else {
            format!("{}: {description}", title(n))
        };
        let listed: Vec<Value> = n
            .firing
            .iter()
            .take(MAX_LISTED)
            .map(|a| {
                let text = AlertText::of(a);
                let mut listed = json!({
                    "labels": a.labels.iter().map(|(k, v)| (k.clone(), truncate(v, 256))).collect::<std::collections::BTreeMap<_, _>>(),
                    "summary": truncate(&describe(a), 512),
                });
                if let (Some(_), Some(body)) = (text.headline, text.body) {
                    listed["description"] = json!(truncate(body, 512));
                }
                listed
            })
            .collect();
        let mut links = Vec::new();
        if let Some(url) = &first.generator_url {
            links.push(json!({"href": url, "text": "Source"}));
        }
        if let Some((label, url)) = super::link(first) {
            links.push(json!({"href": url, "text": label}));
        }
        json!({
            "routing_key": self.routing_key.expose(),
            "event_action": "trigger",
            "dedup_key": dedup_key,
            "client": "opsloop",
            "client_url": ctx.external_url,
            "payload": {
                "summary": truncate(&summary, MAX_SUMMARY),
                "source": truncate(first.labels.get("instance").map(String::as_str).unwrap_or("opsloop"), 255),
                "severity": pd_severity(n.severity()),
                "timestamp": first.starts_at.to_rfc3339(),
                "component": truncate(n.common_labels.get("service").map(String::as_str).unwrap_or(""), 255),
                "group": truncate(first.name(), 255),
                "class": truncate(first.name(), 255),
                "custom_details": {
                    "firing": n.firing.len(),
                    "resolved": n.resolved.len(),
                    "environment": ctx.environment,
                    "alerts": listed,
                },
            },
            "links": links,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::Notification;
    use crate::model::LabelSet;
    use crate::receivers::tests::{oversized, small};

    #[test]
    fn trigger_then_resolve_with_the_group_key() {
        let pd = PagerDuty {
            routing_key: Secret::new("KEY"),
        };
        let n = small();
        let p = pd.payload(&n, &RenderContext::default());
        assert_eq!(p["event_action"], "trigger");
        assert_eq!(p["routing_key"], "KEY");
        assert_eq!(p["dedup_key"], n.group_key);
        assert_eq!(p["payload"]["severity"], "critical");
        assert_eq!(p["payload"]["summary"], "[FIRING:1] Down: api is down");
        assert_eq!(p["payload"]["source"], "h1");
        assert_eq!(p["links"][0]["href"], "http://prom/graph");

        let resolved = Notification::new(
            "pd",
            &n.group_key,
            LabelSet::new(),
            Vec::new(),
            n.resolved.clone(),
            n.state.at,
        );
        let p = pd.payload(&resolved, &RenderContext::default());
        assert_eq!(p["event_action"], "resolve");
        assert_eq!(p["dedup_key"], n.group_key);

        let big = oversized(3);
        let p = pd.payload(&big, &RenderContext::default());
        assert!(p["payload"]["summary"].as_str().expect("s").chars().count() <= MAX_SUMMARY);
        assert_eq!(dedup_key(&"k".repeat(300)).len(), 64);
    }
}
