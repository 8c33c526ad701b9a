//! Generic webhooks in Alertmanager's webhook JSON, version 4, so existing
//! Alertmanager webhook receivers work unchanged.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Receiver, ReceiverKind, RenderContext};
use crate::group::Notification;
use crate::model::Alert;

pub struct Webhook;

/// Alertmanager writes the zero time for the end of a firing alert.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn alert_json(alert: &Alert, resolved: bool) -> Value {
    json!({
        "status": if resolved { "resolved" } else { "firing" },
        "labels": alert.labels,
        "annotations": alert.annotations,
        "startsAt": rfc3339(alert.starts_at),
        "endsAt": match (resolved, alert.ends_at) {
            (true, Some(end)) => rfc3339(end),
            _ => ZERO_TIME.to_owned(),
        },
        "generatorURL": alert.generator_url.clone().unwrap_or_default(),
        "fingerprint": alert.fingerprint().to_string(),
    })
}

/// The webhook v4 body (also what the JSON-lines file receiver writes).
pub fn v4(n: &Notification, ctx: &RenderContext) -> Value {
    let alerts: Vec<Value> = n
        .firing
        .iter()
        .map(|a| alert_json(a, false))
        .chain(n.resolved.iter().map(|a| alert_json(a, true)))
        .collect();
    json!({
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": 0,
        "status": n.status().as_str(),
        "receiver": n.receiver,
        "groupLabels": n.group_labels,
        "commonLabels": n.common_labels,
        "commonAnnotations": n.common_annotations,
        "externalURL": ctx.external_url,
        "alerts": alerts,
    })
}

impl Receiver for Webhook {
    fn kind(&self) -> ReceiverKind {
        ReceiverKind::Webhook
    }

    fn payload(&self, n: &Notification, ctx: &RenderContext) -> Value {
        v4(n, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receivers::tests::small;

    #[test]
    fn alertmanager_webhook_v4_shape() {
        let ctx = RenderContext {
            environment: String::new(),
            external_url: "http://alerter:9756".into(),
        };
        let n = small();
        let p = Webhook.payload(&n, &ctx);
        let keys: Vec<&str> = p
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "alerts",
            "commonAnnotations",
            "commonLabels",
            "externalURL",
            "groupKey",
            "groupLabels",
            "receiver",
            "status",
            "truncatedAlerts",
            "version",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(p["version"], "4");
        assert_eq!(p["status"], "firing");
        assert_eq!(p["receiver"], "r");
        assert_eq!(p["groupKey"], "{}:{alertname=\"Down\"}");
        assert_eq!(p["commonLabels"]["service"], "api");
        assert!(p["commonLabels"].get("instance").is_none());
        assert_eq!(p["externalURL"], "http://alerter:9756");
        let alerts = p["alerts"].as_array().expect("alerts");
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0]["status"], "firing");
        assert_eq!(alerts[0]["endsAt"], ZERO_TIME);
        assert_eq!(alerts[0]["startsAt"], "2027-01-15T08:00:00Z");
        assert_eq!(alerts[0]["generatorURL"], "http://prom/graph");
        assert_eq!(
            alerts[0]["fingerprint"],
            n.firing[0].fingerprint().to_string()
        );
        assert_eq!(alerts[1]["status"], "resolved");
        assert_eq!(alerts[1]["endsAt"], "2027-01-15T08:00:05Z");
    }
}
