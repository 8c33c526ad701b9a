//! Building blocks of the one-statement hot paths on PostgreSQL: numbered
//! parameters, and the events + outbox rows of a change written by
//! data-modifying CTEs, with each event's bus body built once in Rust (the
//! database adds only the `seq` it assigns).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::Value;
use serde_json::json;
use uuid::Uuid;

/// Bound values of one statement; [`Params::push`] returns the placeholder.
#[derive(Debug, Default)]
pub(crate) struct Params {
    pub values: Vec<Value>,
}

impl Params {
    pub(super) fn push(&mut self, value: impl Into<Value>) -> String {
        self.values.push(value.into());
        format!("${}", self.values.len())
    }
}

/// An event whose every field is known before the statement runs.
#[derive(Debug, Clone)]
pub(crate) struct KnownEvent {
    pub id: Uuid,
    pub kind: String,
    pub proposal_id: Option<Uuid>,
    pub mission_id: Option<Uuid>,
    pub step_id: Option<Uuid>,
    pub payload: serde_json::Value,
}

impl KnownEvent {
    pub(super) fn new(kind: &str, payload: serde_json::Value) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind: kind.to_owned(),
            proposal_id: None,
            mission_id: None,
            step_id: None,
            payload,
        }
    }
}

/// The trace context of the current span: headers for the outbox, trace id
/// for the event rows.
pub(crate) fn trace_context() -> (BTreeMap<String, String>, Option<String>) {
    let mut headers = BTreeMap::new();
    crate::telemetry::inject_trace_context(&mut headers);
    let trace_id = headers
        .get("traceparent")
        .and_then(|tp| tp.split('-').nth(1))
        .filter(|id| id.len() == 32 && id.bytes().any(|b| b != b'0'))
        .map(str::to_owned);
    (headers, trace_id)
}

/// CTEs `ev` (the rows as values), `e` (events, written only when the
/// relation `gate` has a row) and `o` (their outbox rows, the body of
/// [`super::events::event_json`] plus the assigned `seq`). Starts with a
/// comma: append after other CTEs.
pub(crate) fn events_ctes(
    params: &mut Params,
    events: &[KnownEvent],
    gate: &str,
    now: DateTime<Utc>,
) -> String {
    let (headers, trace_id) = trace_context();
    let headers_p = params.push(json!(headers));
    let trace_p = params.push(trace_id.clone());
    let now_p = params.push(now);
    let mut rows = Vec::with_capacity(events.len());
    for event in events {
        let body = json!({
            "id": event.id,
            "kind": event.kind,
            "source": "api",
            "payload": event.payload,
            "tags": [],
            "cost_usd": null,
            "proposal_id": event.proposal_id,
            "mission_id": event.mission_id,
            "step_id": event.step_id,
            "trace_id": trace_id,
            "created_at": now,
        });
        let aggregate = event
            .mission_id
            .or(event.proposal_id)
            .unwrap_or(event.id)
            .to_string();
        rows.push(format!(
            "({}, {}, {}, {}, {}, {}, {}, {}, {})",
            params.push(event.id),
            params.push(event.kind.clone()),
            params.push(event.proposal_id),
            params.push(event.mission_id),
            params.push(event.step_id),
            params.push(event.payload.clone()),
            params.push(crate::bus::event_routing_key(&event.kind)),
            params.push(aggregate),
            params.push(body),
        ));
        metrics::counter!("opsloop_events_total", "kind" => super::events::kind_label(&event.kind))
            .increment(1);
    }
    format!(
        ", ev (id, kind, proposal_id, mission_id, step_id, payload, routing_key, aggregate_id, body) AS \
         (VALUES {rows}), \
         e AS (INSERT INTO events (id, kind, source, proposal_id, mission_id, step_id, payload, tags, \
               cost_usd, trace_id, created_at) \
               SELECT ev.id, ev.kind, 'api', ev.proposal_id, ev.mission_id, ev.step_id, ev.payload, \
               '[]'::jsonb, NULL, {trace_p}, {now_p} FROM ev WHERE EXISTS (SELECT 1 FROM {gate}) \
               RETURNING id, seq), \
         o AS (INSERT INTO outbox (event_id, routing_key, aggregate_id, payload, headers, created_at) \
               SELECT ev.id, ev.routing_key, ev.aggregate_id, ev.body || jsonb_build_object('seq', e.seq), \
               {headers_p}, {now_p} FROM e JOIN ev ON ev.id = e.id)",
        rows = rows.join(", ")
    )
}
