//! Alerts the heartbeat raises (`OpsFailureSpike`, budget warnings, the
//! emergency stop, `OpsDailySummary`, `OpsWeeklyReport`): `opsloop_core::alert`
//! with this service's name, counted in `opsloop_heartbeat_alerts_total`.

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;
use uuid::Uuid;

use opsloop_core::workflow::WorkflowError;

pub use opsloop_core::alert::{Alert, Severity};

/// An alert raised by the heartbeat-worker.
pub fn alert(name: &str, severity: Severity, summary: String, description: String) -> Alert {
    Alert::new(crate::SERVICE, name, severity, summary, description)
}

/// Writes the alert's outbox row in `tx` (see `opsloop_core::alert`).
pub async fn enqueue_alert(
    tx: &impl ConnectionTrait,
    alert: &Alert,
    now: DateTime<Utc>,
) -> Result<Uuid, WorkflowError> {
    let id = opsloop_core::alert::enqueue_alert(tx, alert, now).await?;
    metrics::counter!("opsloop_heartbeat_alerts_total", "alertname" => alert.name.clone(),
        "severity" => alert.severity.as_str())
    .increment(1);
    Ok(id)
}
