//! The append-only event log and its outbox: every event row is written with
//! an outbox row in the caller's transaction; listing pages by `seq`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::NotSet, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, EntityTrait, Set,
};
use serde_json::json;
use uuid::Uuid;

use super::{Result, WorkflowError, begin_write, db_now, stmt};
use crate::domain::input::{NewEvent, ValidationError};
use crate::store::entities::{events, outbox};

/// An event about to be written.
#[derive(Debug, Clone, Default)]
pub struct EventRecord {
    pub kind: String,
    pub source: String,
    pub payload: serde_json::Value,
    pub tags: Vec<String>,
    pub cost_usd: Option<f64>,
    pub proposal_id: Option<Uuid>,
    pub mission_id: Option<Uuid>,
    pub step_id: Option<Uuid>,
}

impl EventRecord {
    /// An event written by the api itself.
    pub fn api(kind: &str, payload: serde_json::Value) -> Self {
        Self {
            kind: kind.to_owned(),
            source: "api".to_owned(),
            payload,
            ..Default::default()
        }
    }

    pub fn proposal(mut self, id: Uuid) -> Self {
        self.proposal_id = Some(id);
        self
    }

    pub fn mission(mut self, id: Uuid) -> Self {
        self.mission_id = Some(id);
        self
    }

    pub fn step(mut self, id: Uuid) -> Self {
        self.step_id = Some(id);
        self
    }

    pub fn cost(mut self, cost: Option<f64>) -> Self {
        self.cost_usd = cost;
        self
    }
}

/// The bus message body of an event (also what consumers of `event.#` get).
pub fn event_json(event: &events::Model) -> serde_json::Value {
    json!({
        "id": event.id,
        "seq": event.seq,
        "kind": event.kind,
        "source": event.source,
        "payload": event.payload,
        "tags": event.tags,
        "cost_usd": event.cost_usd,
        "proposal_id": event.proposal_id,
        "mission_id": event.mission_id,
        "step_id": event.step_id,
        "trace_id": event.trace_id,
        "created_at": event.created_at,
    })
}

/// The W3C trace id (32 hex digits) of a `traceparent` header, if any.
fn trace_id_of(headers: &BTreeMap<String, String>) -> Option<String> {
    headers
        .get("traceparent")
        .and_then(|tp| tp.split('-').nth(1))
        .filter(|id| id.len() == 32 && id.bytes().any(|b| b != b'0'))
        .map(str::to_owned)
}

/// The trace id of the current span, when tracing exports one.
pub fn current_trace_id() -> Option<String> {
    let mut headers = BTreeMap::new();
    crate::telemetry::inject_trace_context(&mut headers);
    trace_id_of(&headers)
}

/// Writes the event and its outbox row in `tx`. The outbox's aggregate is
/// the mission (else the proposal, else the event itself): the relay keeps
/// order per aggregate.
pub(crate) async fn write_event(
    tx: &impl ConnectionTrait,
    record: EventRecord,
    now: DateTime<Utc>,
) -> Result<events::Model> {
    let mut headers = BTreeMap::new();
    crate::telemetry::inject_trace_context(&mut headers);
    let trace_id = trace_id_of(&headers);
    let id = Uuid::now_v7();
    let event = events::ActiveModel {
        seq: NotSet,
        id: Set(id),
        kind: Set(record.kind.clone()),
        source: Set(record.source),
        proposal_id: Set(record.proposal_id),
        mission_id: Set(record.mission_id),
        step_id: Set(record.step_id),
        payload: Set(record.payload),
        tags: Set(json!(record.tags)),
        cost_usd: Set(record.cost_usd),
        trace_id: Set(trace_id),
        created_at: Set(db_now(now)),
    }
    .insert(tx)
    .await?;
    let aggregate = record
        .mission_id
        .or(record.proposal_id)
        .unwrap_or(id)
        .to_string();
    enqueue_message(
        tx,
        OutboxMessage {
            message_id: id,
            routing_key: crate::bus::event_routing_key(&record.kind),
            aggregate_id: aggregate,
            payload: event_json(&event),
            headers,
        },
        now,
    )
    .await?;
    metrics::counter!("opsloop_events_total", "kind" => kind_label(&record.kind)).increment(1);
    Ok(event)
}

/// A bus message to publish through the outbox.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    /// The bus message id (consumers deduplicate on it).
    pub message_id: Uuid,
    pub routing_key: String,
    /// The relay keeps order per aggregate.
    pub aggregate_id: String,
    pub payload: serde_json::Value,
    pub headers: BTreeMap<String, String>,
}

/// The one outbox writer: adds `message` to the outbox in the caller's
/// transaction; the relay publishes it after commit (so nothing is lost
/// while the broker is down). Event rows get theirs from `write_event`;
/// messages that are not events (the heartbeat's alerts) come here directly.
pub async fn enqueue_message(
    tx: &impl ConnectionTrait,
    message: OutboxMessage,
    now: DateTime<Utc>,
) -> Result<()> {
    outbox::ActiveModel {
        id: NotSet,
        event_id: Set(message.message_id),
        routing_key: Set(message.routing_key),
        aggregate_id: Set(message.aggregate_id),
        payload: Set(message.payload),
        headers: Set(json!(message.headers)),
        created_at: Set(db_now(now)),
        published_at: Set(None),
        attempts: Set(0),
        last_error: Set(None),
    }
    .insert(tx)
    .await?;
    Ok(())
}

/// Event kinds are open-ended; only the api's own prefixes become labels.
pub(crate) fn kind_label(kind: &str) -> String {
    let prefix = kind.split(['.', ':']).next().unwrap_or("other");
    match prefix {
        "proposal" | "mission" | "step" | "policy" | "emergency_stop" | "trigger" => {
            kind.to_owned()
        }
        _ => "other".to_owned(),
    }
}

/// EmitEvent: appends a client's event. Referenced ids must exist.
pub async fn append_event(
    db: &DatabaseConnection,
    event: NewEvent,
    now: DateTime<Utc>,
) -> Result<events::Model> {
    let tx = begin_write(db).await?;
    let written = append_event_in(&tx, event, now).await?;
    tx.commit().await?;
    Ok(written)
}

/// [`append_event`] inside the caller's write transaction, so the event (and
/// its outbox row) commits together with the caller's own changes. The caller
/// commits.
pub async fn append_event_in(
    tx: &DatabaseTransaction,
    event: NewEvent,
    now: DateTime<Utc>,
) -> Result<events::Model> {
    let backend = tx.get_database_backend();
    for (field, table, id) in [
        ("proposal_id", "proposals", event.proposal_id),
        ("mission_id", "missions", event.mission_id),
        ("step_id", "mission_steps", event.step_id),
    ] {
        if let Some(id) = id {
            let found = tx
                .query_one_raw(stmt(
                    backend,
                    &format!("SELECT 1 AS one FROM {table} WHERE id = $1"),
                    vec![id.into()],
                ))
                .await?;
            if found.is_none() {
                return Err(ValidationError::new(field, format!("no such id {id}")).into());
            }
        }
    }
    let record = EventRecord {
        kind: event.kind.as_str().to_owned(),
        source: event.source,
        payload: event.payload,
        tags: event.tags,
        cost_usd: event.cost_usd,
        proposal_id: event.proposal_id,
        mission_id: event.mission_id,
        step_id: event.step_id,
    };
    write_event(tx, record, now).await
}

/// Filters of ListEvents / TailEvents.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Glob: `*` any run, `?` one character.
    pub kind_pattern: Option<String>,
    /// Only seq greater than this.
    pub after_seq: Option<i64>,
    pub since: Option<DateTime<Utc>>,
    pub source: Option<String>,
    pub mission_id: Option<Uuid>,
    pub limit: u64,
}

/// A kind glob as a SQL LIKE pattern (escape character `\`).
pub fn glob_to_like(glob: &str) -> Result<String, ValidationError> {
    if glob.is_empty() || glob.len() > 128 {
        return Err(ValidationError::new(
            "kind_pattern",
            "must be 1 to 128 characters",
        ));
    }
    let mut out = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Events in ascending seq order.
pub async fn list_events(
    db: &impl ConnectionTrait,
    filter: &EventFilter,
) -> Result<Vec<events::Model>> {
    let mut sql = String::from("SELECT * FROM events WHERE 1=1");
    let mut values: Vec<sea_orm::Value> = Vec::new();
    let mut push = |cond: &str, v: sea_orm::Value, sql: &mut String| {
        values.push(v);
        sql.push_str(&cond.replace("$?", &format!("${}", values.len())));
    };
    if let Some(pattern) = &filter.kind_pattern {
        let like = glob_to_like(pattern).map_err(WorkflowError::from)?;
        push(" AND kind LIKE $? ESCAPE '\\'", like.into(), &mut sql);
    }
    if let Some(seq) = filter.after_seq {
        push(" AND seq > $?", seq.into(), &mut sql);
    }
    if let Some(since) = filter.since {
        push(" AND created_at >= $?", since.into(), &mut sql);
    }
    if let Some(source) = &filter.source {
        push(" AND source = $?", source.clone().into(), &mut sql);
    }
    if let Some(mission) = filter.mission_id {
        push(" AND mission_id = $?", mission.into(), &mut sql);
    }
    sql.push_str(&format!(
        " ORDER BY seq LIMIT {}",
        filter.limit.clamp(1, 1000)
    ));
    let rows = events::Entity::find()
        .from_raw_sql(stmt(db.get_database_backend(), &sql, values))
        .all(db)
        .await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_like_patterns() {
        assert_eq!(glob_to_like("mission.*").expect("ok"), "mission.%");
        assert_eq!(glob_to_like("step_?").expect("ok"), "step\\__");
        assert!(glob_to_like("").is_err());
    }
}
