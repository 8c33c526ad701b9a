//! The insight phase: candidates from [`crate::insight_rules`] get a
//! summary from the [`Summarizer`] and are stored with their source events
//! (`insight_sources`, keyed by event id, so an event never promotes twice);
//! a candidate whose fingerprint is already stored is linked to that insight
//! instead of stored again. A failing summarizer fails the phase before
//! anything is written, so the candidates come back next tick.

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use opsloop_core::domain::policy::{InsightPromotion, PolicyKey, PolicyValue};
use opsloop_core::workflow::{self, WorkflowError, db_now};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::db::{self, begin_write, stmt};
use crate::heartbeat::{Heartbeat, HeartbeatError, emit_in};
use crate::insight_rules::{Candidate, candidates};

/// Most events of the promotion window read per tick.
const WINDOW_EVENT_LIMIT: u64 = 50_000;

/// Writes an insight's summary.
#[async_trait]
pub trait Summarizer: Send + Sync + 'static {
    async fn summarize(&self, candidate: &Candidate) -> Result<String, String>;
}

/// The deterministic built-in summary: pattern, citations, period, kinds.
pub struct BuiltinSummarizer;

#[async_trait]
impl Summarizer for BuiltinSummarizer {
    async fn summarize(&self, c: &Candidate) -> Result<String, String> {
        let first = c.events.first().map(|e| e.created_at);
        let last = c.events.last().map(|e| e.created_at);
        let mut kinds: Vec<&str> = c.events.iter().map(|e| e.kind.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        Ok(match (first, last) {
            (Some(first), Some(last)) => format!(
                "\"{}\" had high engagement {} times between {} and {} ({})",
                c.pattern,
                c.events.len(),
                first.format("%Y-%m-%d"),
                last.format("%Y-%m-%d"),
                kinds.join(", ")
            ),
            _ => format!("\"{}\" had high engagement", c.pattern),
        })
    }
}

/// A summarizer behind an OpenAI-compatible chat endpoint
/// (`POST <base_url>/chat/completions`). One request per candidate, bounded
/// by a timeout and never retried here: a failure fails the phase and the
/// candidates come back next tick.
pub struct ChatSummarizer {
    client: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<opsloop_core::secrets::Secret>,
}

impl ChatSummarizer {
    pub fn new(
        base_url: &str,
        model: &str,
        api_key: Option<opsloop_core::secrets::Secret>,
        timeout: std::time::Duration,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            model: model.to_owned(),
            api_key,
        })
    }
}

#[async_trait]
impl Summarizer for ChatSummarizer {
    async fn summarize(&self, c: &Candidate) -> Result<String, String> {
        let examples: Vec<&Value> = c.events.iter().take(20).map(|e| &e.payload).collect();
        let prompt = format!(
            "Summarize in one sentence why \"{}\" had high engagement {} times. Event payloads: {}",
            c.pattern,
            c.events.len(),
            json!(examples)
        );
        let mut request = self.client.post(&self.url).json(&json!({
            "model": self.model,
            "messages": [
                {"role": "system", "content": "You write short, factual operations insights."},
                {"role": "user", "content": prompt},
            ],
        }));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose());
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{}: {e}", self.url))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("{} answered {status}", self.url));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("{}: {e}", self.url))?;
        body["choices"][0]["message"]["content"]
            .as_str()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{}: no choices[0].message.content in the answer", self.url))
    }
}

async fn policy(db: &impl ConnectionTrait) -> Result<InsightPromotion, HeartbeatError> {
    let row = workflow::get_policy(db, "insight_promotion").await?;
    match PolicyValue::parse(&PolicyKey::InsightPromotion, &row.value) {
        Ok(PolicyValue::InsightPromotion(p)) => Ok(p),
        Ok(_) => Err(WorkflowError::Corrupt("insight_promotion".into()).into()),
        Err(e) => Err(WorkflowError::from(e).into()),
    }
}

async fn promoted_among(
    db: &DatabaseConnection,
    ids: &[Uuid],
) -> Result<HashSet<Uuid>, HeartbeatError> {
    let mut promoted = HashSet::new();
    for chunk in ids.chunks(500) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let rows = db
            .query_all_raw(stmt(
                db.get_database_backend(),
                &format!(
                    "SELECT event_id FROM insight_sources WHERE event_id IN ({})",
                    placeholders.join(", ")
                ),
                chunk.iter().map(|id| (*id).into()).collect(),
            ))
            .await?;
        for row in rows {
            promoted.insert(row.try_get::<Uuid>("", "event_id")?);
        }
    }
    Ok(promoted)
}

pub async fn run(hb: &Heartbeat, now: DateTime<Utc>) -> Result<Value, HeartbeatError> {
    let db = hb.db();
    let now = db_now(now);
    let p = policy(db).await?;
    let window = Duration::days(i64::from(p.window_days));
    let events = db::events_between(db, now - window, now, WINDOW_EVENT_LIMIT).await?;
    let tagged: Vec<Uuid> = events
        .iter()
        .filter(|e| e.kind == p.tag || e.tags.contains(&p.tag))
        .map(|e| e.id)
        .collect();
    let promoted = promoted_among(db, &tagged).await?;
    let found = candidates(
        &events,
        &p.tag,
        p.min_citations as usize,
        window,
        &promoted,
        now,
    );
    let (mut stored, mut merged) = (0, 0);
    for candidate in &found {
        let summary = hb
            .inner
            .summarizer
            .summarize(candidate)
            .await
            .map_err(HeartbeatError::Summarizer)?;
        let (insight_id, new) = store(db, candidate, &summary, now).await?;
        if new {
            stored += 1;
            tracing::debug!(%insight_id, "insight stored");
        } else {
            merged += 1;
        }
    }
    Ok(
        json!({"tagged_events": tagged.len(), "candidates": found.len(),
              "stored": stored, "merged_into_existing": merged}),
    )
}

/// Stores the insight (or finds the one with its fingerprint) and its
/// sources. Returns (insight id, newly stored).
async fn store(
    db: &DatabaseConnection,
    c: &Candidate,
    summary: &str,
    now: DateTime<Utc>,
) -> Result<(Uuid, bool), HeartbeatError> {
    let tx = begin_write(db).await?;
    let backend = tx.get_database_backend();
    let existing = tx
        .query_one_raw(stmt(
            backend,
            "SELECT id FROM insights WHERE fingerprint = $1",
            vec![c.fingerprint.clone().into()],
        ))
        .await?;
    let (id, new) = match existing {
        Some(row) => (row.try_get::<Uuid>("", "id")?, false),
        None => {
            let id = Uuid::now_v7();
            tx.execute_raw(stmt(
                backend,
                "INSERT INTO insights (id, pattern, summary, fingerprint, source_event_ids, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                vec![
                    id.into(),
                    c.pattern.clone().into(),
                    summary.into(),
                    c.fingerprint.clone().into(),
                    json!(c.event_ids).into(),
                    now.into(),
                ],
            ))
            .await?;
            (id, true)
        }
    };
    for event_id in &c.event_ids {
        tx.execute_raw(stmt(
            backend,
            "INSERT INTO insight_sources (event_id, insight_id) VALUES ($1, $2) \
             ON CONFLICT (event_id) DO NOTHING",
            vec![(*event_id).into(), id.into()],
        ))
        .await?;
    }
    if new {
        // The insight and its event commit together.
        emit_in(
            &tx,
            "insight.promoted",
            json!({"insight_id": id, "pattern": c.pattern,
                   "summary": summary, "source_event_ids": c.event_ids}),
            None,
            now,
        )
        .await?;
    }
    tx.commit().await?;
    if new {
        metrics::counter!("opsloop_heartbeat_insights_total").increment(1);
        tracing::info!(insight_id = %id, pattern = %c.pattern, sources = c.event_ids.len(), "insight promoted");
    }
    Ok((id, new))
}
