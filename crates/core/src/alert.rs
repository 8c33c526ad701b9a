//! Alerts the daemons raise themselves (the heartbeat's `OpsFailureSpike`,
//! budget and summary alerts; the backup-agent's `BackupFailed`, …), in the
//! Alertmanager-v2 shape the alerter consumes, published as
//! `alert.<severity>` through the transactional outbox: written in the
//! caller's transaction and relayed after commit (by the api's relay), so
//! none is lost while the broker is down.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::workflow::{self, OutboxMessage, WorkflowError};

/// Alert severity: the routing key's last word and the `severity` label the
/// alerter routes on (P0 critical, P1 high, P2 warning, P3 info).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

/// One alert, raised by `service`.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub name: String,
    pub severity: Severity,
    pub service: String,
    pub summary: String,
    pub description: String,
    /// Extra labels (besides alertname, severity, service).
    pub labels: Vec<(String, String)>,
    /// Extra annotations (figures as text).
    pub annotations: Vec<(String, String)>,
}

impl Alert {
    pub fn new(
        service: &str,
        name: &str,
        severity: Severity,
        summary: String,
        description: String,
    ) -> Self {
        Self {
            name: name.to_owned(),
            severity,
            service: service.to_owned(),
            summary,
            description,
            labels: Vec::new(),
            annotations: Vec::new(),
        }
    }

    pub fn annotation(mut self, key: &str, value: impl ToString) -> Self {
        self.annotations.push((key.to_owned(), value.to_string()));
        self
    }

    pub fn label(mut self, key: &str, value: impl ToString) -> Self {
        self.labels.push((key.to_owned(), value.to_string()));
        self
    }

    /// `{labels, annotations, startsAt, status: "firing"}`.
    pub fn to_json(&self, starts_at: DateTime<Utc>) -> Value {
        let mut labels = serde_json::Map::new();
        labels.insert("alertname".into(), json!(self.name));
        labels.insert("severity".into(), json!(self.severity.as_str()));
        labels.insert("service".into(), json!(self.service));
        for (k, v) in &self.labels {
            labels.insert(k.clone(), json!(v));
        }
        let mut annotations = serde_json::Map::new();
        annotations.insert("summary".into(), json!(self.summary));
        annotations.insert("description".into(), json!(self.description));
        for (k, v) in &self.annotations {
            annotations.insert(k.clone(), json!(v));
        }
        json!({"labels": labels, "annotations": annotations,
               "startsAt": starts_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
               "status": "firing"})
    }

    pub fn routing_key(&self) -> String {
        format!("alert.{}", self.severity.as_str())
    }
}

/// Writes the alert's outbox row in `tx`; the relay publishes it after
/// commit, with the returned id as message id (the alerter deduplicates on
/// it).
pub async fn enqueue_alert(
    tx: &impl ConnectionTrait,
    alert: &Alert,
    now: DateTime<Utc>,
) -> Result<Uuid, WorkflowError> {
    let id = Uuid::now_v7();
    let now = workflow::db_now(now);
    workflow::enqueue_message(
        tx,
        OutboxMessage {
            message_id: id,
            routing_key: alert.routing_key(),
            aggregate_id: format!("alert:{}", alert.name),
            payload: alert.to_json(now),
            headers: BTreeMap::new(),
        },
        now,
    )
    .await?;
    tracing::info!(alertname = %alert.name, severity = alert.severity.as_str(), alert_id = %id,
        service = %alert.service, "alert enqueued");
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alertmanager_shape() {
        let now = Utc::now();
        let a = Alert::new(
            "heartbeat-worker",
            "OpsFailureSpike",
            Severity::Warning,
            "s".into(),
            "d".into(),
        )
        .annotation("failures", 7)
        .label("period", "2026-11-23");
        let v = a.to_json(now);
        assert_eq!(v["labels"]["alertname"], "OpsFailureSpike");
        assert_eq!(v["labels"]["severity"], "warning");
        assert_eq!(v["labels"]["service"], "heartbeat-worker");
        assert_eq!(v["labels"]["period"], "2026-11-23");
        assert_eq!(v["annotations"]["failures"], "7");
        assert_eq!(v["status"], "firing");
        assert!(v["startsAt"].is_string());
        assert_eq!(a.routing_key(), "alert.warning");
    }
}
