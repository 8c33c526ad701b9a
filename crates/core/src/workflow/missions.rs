//! Missions and the worker protocol: claim (oldest claimable step, SKIP
//! LOCKED on PostgreSQL), lease renewal, completion and failure fenced by
//! (holder, attempt), retry with backoff, dead letters, stale-lease recovery,
//! cancellation, and the one finalizer that ends a mission and emits its
//! event exactly once.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend,
    EntityTrait, FromQueryResult, Set,
};
use serde_json::json;
use uuid::Uuid;

use super::events::{EventRecord, write_event};
use super::governance::{
    RateLimit, attribute_cost, lock_rates, record_usage, refill, store_tokens,
};
use super::proposals::{audit_file, audit_row};
use super::sql::{Params, trace_context};
use super::{
    FINGERPRINT_SQL, OutageCredit, PolicyCache, Result, WorkflowError, begin_write, db_now,
    load_policy, lock_mission, stmt,
};
use crate::audit::{AuditLog, AuditRecord};
use crate::domain::backoff::{Backoff, random_jitter, retry_delay};
use crate::domain::governance::{ResourceUsage, validate_usage};
use crate::domain::input::StepKind;
use crate::domain::policy::MAX_LEASE_SECONDS;
use crate::domain::status::{MissionStatus, StepStatus, mission_outcome};
use crate::store::entities::{mission_steps, missions, step_dead_letters};

/// A mission with its steps in seq order.
#[derive(Debug, Clone, PartialEq)]
pub struct MissionView {
    pub mission: missions::Model,
    pub steps: Vec<mission_steps::Model>,
    pub step_count: u32,
    pub cost_usd: f64,
    /// Why it ended when it did not succeed.
    pub outcome_detail: Option<String>,
}

/// What ClaimStep handed out.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    Claimed(Box<mission_steps::Model>),
    Nothing,
    /// The emergency stop is engaged: nothing is handed out.
    EmergencyStop,
    /// A claimable step calls a resource whose bucket is empty: nothing is
    /// handed out; ask again after `retry_after`.
    RateLimited(RateLimit),
}

/// What one `ClaimStep` handed out (see [`claim_steps_governed`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClaimBatch {
    pub steps: Vec<mission_steps::Model>,
    /// Nothing was handed out because the emergency stop is engaged.
    pub emergency_stop: bool,
    /// The batch stopped because a resource had no token.
    pub rate_limited: Option<RateLimit>,
}

fn parse_step_status(step: &mission_steps::Model) -> Result<StepStatus> {
    step.status
        .parse()
        .map_err(|e| WorkflowError::Corrupt(format!("{e}")))
}

/// The lease length: the request's, else `worker_policy`'s, capped.
fn lease_length(requested: Option<u32>, default: u32) -> Duration {
    let seconds = requested.filter(|s| *s > 0).unwrap_or(default);
    Duration::seconds(i64::from(seconds.clamp(1, MAX_LEASE_SECONDS)))
}

/// Claim statements this process ran (each [`claim_step_cached`] attempt):
/// what an idle fleet of long-polling workers costs the database. Also the
/// counter `opsloop_step_claim_statements_total`.
static CLAIM_STATEMENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The number of claim statements this process ran so far.
pub fn claim_statements() -> u64 {
    CLAIM_STATEMENTS.load(std::sync::atomic::Ordering::Relaxed)
}

fn count_claim_statement() {
    CLAIM_STATEMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    metrics::counter!("opsloop_step_claim_statements_total").increment(1);
}

/// Up to `max_steps` claims for one worker, each its own statement (so each
/// step gets its own lease, attempt and `step.started` event and is fenced
/// on its own), stopping at the first that finds nothing. Empty with
/// [`ClaimOutcome::EmergencyStop`]'s flag when the stop is engaged.
pub async fn claim_steps_cached(
    db: &DatabaseConnection,
    cache: &PolicyCache,
    worker_id: &str,
    kinds: &[StepKind],
    lease_seconds: Option<u32>,
    max_steps: usize,
    now: DateTime<Utc>,
) -> Result<(Vec<mission_steps::Model>, bool)> {
    let batch =
        claim_steps_governed(db, cache, worker_id, kinds, lease_seconds, max_steps, now).await?;
    Ok((batch.steps, batch.emergency_stop))
}

/// [`claim_steps_cached`], also saying when a resource's rate limit cut
/// the batch short (the api tells the worker when to ask again).
pub async fn claim_steps_governed(
    db: &DatabaseConnection,
    cache: &PolicyCache,
    worker_id: &str,
    kinds: &[StepKind],
    lease_seconds: Option<u32>,
    max_steps: usize,
    now: DateTime<Utc>,
) -> Result<ClaimBatch> {
    let mut batch = ClaimBatch::default();
    while batch.steps.len() < max_steps.max(1) {
        match claim_step_cached(db, cache, worker_id, kinds, lease_seconds, now).await {
            Ok(ClaimOutcome::Claimed(step)) => batch.steps.push(*step),
            Ok(ClaimOutcome::Nothing) => break,
            Ok(ClaimOutcome::EmergencyStop) => {
                batch.emergency_stop = true;
                break;
            }
            Ok(ClaimOutcome::RateLimited(limit)) => {
                batch.rate_limited = Some(limit);
                break;
            }
            // Steps already leased are handed out; the error shows next time.
            Err(error) if !batch.steps.is_empty() => {
                tracing::warn!(%error, claimed = batch.steps.len(), "batch claim cut short");
                break;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(batch)
}

/// Hands `worker_id` the oldest claimable step of one of `kinds`: queued, of
/// a running mission, past its backoff, of a kind not paused, and (unless
/// the mission is parallel) with every earlier step succeeded. Without a
/// process-wide policy cache (see [`claim_step_cached`]).
pub async fn claim_step(
    db: &DatabaseConnection,
    worker_id: &str,
    kinds: &[StepKind],
    lease_seconds: Option<u32>,
    now: DateTime<Utc>,
) -> Result<ClaimOutcome> {
    claim_step_cached(
        db,
        &PolicyCache::new(),
        worker_id,
        kinds,
        lease_seconds,
        now,
    )
    .await
}

/// [`claim_step`] with the api process's policy cache. On PostgreSQL one
/// statement: pick (SKIP LOCKED), lease, and the `step.started` event with
/// its outbox row, written only if the stored policy still has the cached
/// fingerprint (an emergency stop engaged before the claim is never missed).
pub async fn claim_step_cached(
    db: &DatabaseConnection,
    cache: &PolicyCache,
    worker_id: &str,
    kinds: &[StepKind],
    lease_seconds: Option<u32>,
    now: DateTime<Utc>,
) -> Result<ClaimOutcome> {
    // Counted once the claim is done: a caller that sees the count knows
    // the claim has looked (tests wait on it).
    let outcome = claim_cached(db, cache, worker_id, kinds, lease_seconds, now).await;
    count_claim_statement();
    if let Ok(ClaimOutcome::RateLimited(limit)) = &outcome {
        metrics::counter!("opsloop_step_claims_rate_limited_total",
            "resource" => limit.resource.clone())
        .increment(1);
    }
    outcome
}

async fn claim_cached(
    db: &DatabaseConnection,
    cache: &PolicyCache,
    worker_id: &str,
    kinds: &[StepKind],
    lease_seconds: Option<u32>,
    now: DateTime<Utc>,
) -> Result<ClaimOutcome> {
    if db.get_database_backend() != DbBackend::Postgres {
        return claim_step_tx(db, worker_id, kinds, lease_seconds, now).await;
    }
    let now = db_now(now);
    if kinds.is_empty() {
        return Ok(ClaimOutcome::Nothing);
    }
    for _ in 0..2 {
        let mut policy = cache.get(db).await?;
        if policy.emergency_stop.engaged {
            // Confirm before refusing work on a cached stop.
            policy = cache.reload(db).await?;
            if policy.emergency_stop.engaged {
                return Ok(ClaimOutcome::EmergencyStop);
            }
        }
        let lease = lease_length(lease_seconds, policy.worker.lease_seconds);
        let needs = policy.resources.needs(kinds);
        if !needs.is_empty() {
            cache.ensure_rates(db, &policy, now).await?;
        }
        let claimed = claim_statement(
            db,
            policy.fingerprint,
            worker_id,
            kinds,
            &needs,
            now,
            now + lease,
            cache.outages().credit(now),
        )
        .await;
        match claimed {
            Err(WorkflowError::Db(error)) => {
                cache.outages().failed(now);
                return Err(WorkflowError::Db(error));
            }
            Err(other) => return Err(other),
            Ok(None) => {
                cache.outages().succeeded(now);
                cache.reload(db).await?;
            }
            Ok(Some(outcome)) => {
                cache.outages().succeeded(now);
                if matches!(&outcome, ClaimOutcome::RateLimited(l) if l.retry_after == MISSING_BUCKET_WAIT)
                {
                    cache.rates_missing();
                }
                return Ok(outcome);
            }
        }
    }
    claim_step_tx(db, worker_id, kinds, lease_seconds, now).await
}

/// The claim's filter on paused step kinds (see [`super::pauses`]) on
/// PostgreSQL, inside the one claim statement (no extra round trip): the
/// small `step_kind_pauses` table read once into an array (an InitPlan, so
/// the claim keeps its ordered index scan; a correlated anti-join let the
/// planner switch to a sequential scan and sort, 3.8 ms → 210 ms with
/// 100 000 queued steps), plus a one-time gate that skips the scan when every
/// asked kind is paused (51 ms → 5 ms for a worker of only paused kinds).
/// `kinds` is the statement's list of kind placeholders.
fn not_paused_pg(kinds: &str) -> String {
    format!(
        "s.kind <> ALL (ARRAY(SELECT kind FROM step_kind_pauses)) \
         AND EXISTS (SELECT 1 FROM unnest(ARRAY[{kinds}]::text[]) AS w(k) \
         WHERE w.k <> ALL (ARRAY(SELECT kind FROM step_kind_pauses)))"
    )
}

/// A claim that found a bucket missing says so with this wait (and the
/// process creates the buckets again before its next claim).
const MISSING_BUCKET_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The rate-governance parts of the claim statement; empty strings when
/// none of the asked kinds calls a resource (the statement is then the
/// plain claim, at no cost).
#[derive(Debug, Default)]
struct GovernanceSql {
    /// `need` (kind, resource, burst) from the cached policy, `av` the
    /// buckets' tokens at `now`, `bk` the kinds with an empty bucket.
    ctes: String,
    /// The pick's filter: no kind with an empty bucket.
    not_limited: String,
    /// `tk`: takes one token from every bucket of the picked step's kind,
    /// each re-checked on the row's latest version (concurrent claims on
    /// other replicas wait on the bucket row, never overdraw it).
    take: String,
    /// The lease only when every bucket gave a token.
    granted: String,
    /// Columns saying which bucket was empty and when a token is due.
    report: String,
}

/// Tokens of bucket `r` at `now_p`, burst from `n.burst`.
fn fill_sql(now_p: &str) -> String {
    format!(
        "LEAST(GREATEST(1.0, r.rate * n.burst), r.tokens + r.rate * \
         GREATEST(0.0, CAST(EXTRACT(EPOCH FROM ({now_p} - r.refilled_at)) AS float8)))"
    )
}

fn governance_sql(p: &mut Params, needs: &[(String, String, f64)], now_p: &str) -> GovernanceSql {
    if needs.is_empty() {
        return GovernanceSql::default();
    }
    let rows: Vec<String> = needs
        .iter()
        .map(|(kind, resource, burst)| {
            format!(
                "(CAST({} AS text), CAST({} AS text), CAST({} AS float8))",
                p.push(kind.clone()),
                p.push(resource.clone()),
                p.push(*burst)
            )
        })
        .collect();
    let fill = fill_sql(now_p);
    GovernanceSql {
        ctes: format!(
            "need(kind, resource, burst) AS (VALUES {rows}), \
             av AS (SELECT r.resource, r.rate, {fill} AS tokens FROM resource_rates r \
                    JOIN (SELECT resource, MAX(burst) AS burst FROM need GROUP BY resource) n \
                    ON n.resource = r.resource), \
             bk AS (SELECT DISTINCT n.kind FROM need n LEFT JOIN av ON av.resource = n.resource \
                    WHERE av.tokens IS NULL OR av.tokens < 1.0), ",
            rows = rows.join(", ")
        ),
        not_limited: " AND s.kind <> ALL (ARRAY(SELECT kind FROM bk))".into(),
        take: format!(
            "tk AS (UPDATE resource_rates r SET tokens = {fill} - 1.0, \
                    refilled_at = GREATEST(r.refilled_at, {now_p}), updated_at = {now_p} \
                    FROM need n, c WHERE n.kind = c.kind AND n.resource = r.resource \
                    AND {fill} >= 1.0 RETURNING r.resource), "
        ),
        granted: " AND (SELECT count(*) FROM tk) = (SELECT count(*) FROM need n WHERE n.kind = c.kind)"
            .into(),
        report: ", (SELECT count(*) FROM c) AS picked, \
                 (SELECT n.resource FROM need n WHERE NOT EXISTS \
                    (SELECT 1 FROM av WHERE av.resource = n.resource) ORDER BY n.resource LIMIT 1) AS missing, \
                 (SELECT av.resource FROM av WHERE av.tokens < 1.0 ORDER BY av.resource LIMIT 1) AS limited, \
                 (SELECT MAX((1.0 - av.tokens) / GREATEST(av.rate, 0.001)) FROM av WHERE av.tokens < 1.0) AS wait_s, \
                 (SELECT MIN(n.resource) FROM need n JOIN c ON c.kind = n.kind) AS raced, \
                 (SELECT 1.0 / GREATEST(MIN(av.rate), 0.001) FROM av) AS token_s"
            .into(),
    }
}

/// What a governed claim that handed out nothing says: a bucket missing,
/// empty, or emptied by a concurrent claim between the pick and the take;
/// else plain nothing.
fn rate_limit_of(row: &sea_orm::QueryResult) -> Result<ClaimOutcome> {
    let missing: Option<String> = row.try_get("", "missing")?;
    if let Some(resource) = missing {
        return Ok(ClaimOutcome::RateLimited(RateLimit {
            resource,
            retry_after: MISSING_BUCKET_WAIT,
        }));
    }
    let picked: i64 = row.try_get("", "picked")?;
    let raced: Option<String> = row.try_get("", "raced")?;
    if picked > 0
        && let Some(resource) = raced
    {
        let token_s: Option<f64> = row.try_get("", "token_s")?;
        return Ok(ClaimOutcome::RateLimited(RateLimit::after_seconds(
            resource,
            token_s.unwrap_or(0.01),
        )));
    }
    let limited: Option<String> = row.try_get("", "limited")?;
    match limited {
        Some(resource) => {
            let wait: Option<f64> = row.try_get("", "wait_s")?;
            Ok(ClaimOutcome::RateLimited(RateLimit::after_seconds(
                resource,
                wait.unwrap_or(0.01),
            )))
        }
        None => Ok(ClaimOutcome::Nothing),
    }
}

/// The same on SQLite (an uncorrelated `NOT IN`, evaluated once).
const NOT_PAUSED_SQLITE: &str = "s.kind NOT IN (SELECT kind FROM step_kind_pauses)";

/// The one claim statement (PostgreSQL). `None` when the policy changed.
///
/// A step of a kind that is paused (a row in `step_kind_pauses`, e.g. an
/// upstream probe it depends on is down) is neither handed out nor taken
/// over from an expired lease until the pause is lifted.
///
/// It takes, first, a running step of one of `kinds` whose lease expired
/// with attempts left (the attempt is bumped, so the late holder is
/// fenced), else the oldest claimable queued step. A lease that was live
/// during the last database outage this process saw (`credit`) counts as
/// expired only once the outage's length has passed after its expiry; so
/// does a step the heartbeat requeued for an expired lease (it keeps its
/// last holder and expiry, and that holder may still report it).
#[allow(clippy::too_many_arguments)]
async fn claim_statement(
    db: &DatabaseConnection,
    fingerprint: i64,
    worker_id: &str,
    kinds: &[StepKind],
    needs: &[(String, String, f64)],
    now: DateTime<Utc>,
    expires: DateTime<Utc>,
    credit: Option<OutageCredit>,
) -> Result<Option<ClaimOutcome>> {
    let mut p = Params::default();
    let fp = p.push(fingerprint);
    let now_p = p.push(now);
    let (outage_start, outage_end, credited_cutoff) = match credit {
        Some(c) => (c.start, c.end, now - (c.end - c.start)),
        None => (now, now, now),
    };
    let os_p = p.push(outage_start);
    let oe_p = p.push(outage_end);
    let cc_p = p.push(credited_cutoff);
    // When an expired lease may be taken over.
    let expired = format!(
        "s.lease_expires_at < CASE WHEN s.lease_expires_at > {os_p} AND s.started_at < {oe_p}          THEN {cc_p} ELSE {now_p} END"
    );
    // A step the heartbeat requeued (it keeps its last holder) waits only
    // while the outage credit covers its lease; without an outage it is free.
    let requeued_free = match credit {
        None => "TRUE".to_owned(),
        Some(_) => format!(
            "NOT (s.lease_expires_at > {os_p} AND s.started_at < {oe_p} \
             AND s.lease_expires_at >= {cc_p})"
        ),
    };
    let kinds_p: Vec<String> = kinds
        .iter()
        .map(|k| p.push(k.as_str().to_owned()))
        .collect();
    let worker_p = p.push(worker_id.to_owned());
    let expires_p = p.push(expires);
    let expires_text = p.push(json!(expires));
    let event_id = Uuid::now_v7();
    let event_p = p.push(event_id);
    let (headers, trace_id) = trace_context();
    let headers_p = p.push(json!(headers));
    let trace_p = p.push(trace_id);
    let now_text = p.push(json!(now));
    let gov = governance_sql(&mut p, needs, &now_p);
    let sql = format!(
        "WITH v AS (SELECT ({FINGERPRINT_SQL}) AS fp), {ctes}\
         x AS (SELECT s.id, s.kind FROM mission_steps s JOIN missions m ON m.id = s.mission_id \
               WHERE (SELECT fp FROM v) = {fp} AND s.status = 'running' AND s.kind IN ({kinds}) \
               AND m.status = 'running' AND s.attempt < s.max_attempts AND {expired} \
               AND {not_paused}{not_limited} \
               ORDER BY s.lease_expires_at LIMIT 1 FOR UPDATE OF s SKIP LOCKED), \
         q AS (SELECT s.id, s.kind FROM mission_steps s JOIN missions m ON m.id = s.mission_id \
               WHERE NOT EXISTS (SELECT 1 FROM x) \
               AND (SELECT fp FROM v) = {fp} AND s.status = 'queued' AND s.kind IN ({kinds}) \
               AND m.status = 'running' AND {not_paused}{not_limited} \
               AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= {now_p}) \
               AND (s.lease_holder IS NULL OR s.lease_expires_at IS NULL OR {requeued_free}) \
               AND (m.parallel OR NOT EXISTS (SELECT 1 FROM mission_steps p \
                    WHERE p.mission_id = s.mission_id AND p.seq < s.seq AND p.status <> 'succeeded')) \
               ORDER BY s.created_at, s.mission_id, s.seq LIMIT 1 FOR UPDATE OF s SKIP LOCKED), \
         c AS (SELECT id, kind FROM x UNION ALL SELECT id, kind FROM q), {take}\
         u AS (UPDATE mission_steps t SET status = 'running', attempt = t.attempt + 1, \
               lease_holder = {worker_p}, lease_expires_at = {expires_p}, started_at = {now_p}, \
               updated_at = {now_p}, next_attempt_at = NULL \
               FROM c WHERE t.id = c.id{granted} RETURNING t.*), \
         e AS (INSERT INTO events (id, kind, source, mission_id, step_id, payload, tags, trace_id, created_at) \
               SELECT {event_p}, 'step.started', 'api', u.mission_id, u.id, \
               jsonb_build_object('kind', u.kind, 'seq', u.seq, 'attempt', u.attempt, \
                                  'worker_id', {worker_p}, 'lease_expires_at', {expires_text}), \
               '[]'::jsonb, {trace_p}, {now_p} FROM u RETURNING id, seq, mission_id, step_id, payload), \
         o AS (INSERT INTO outbox (event_id, routing_key, aggregate_id, payload, headers, created_at) \
               SELECT e.id, 'event.step.started', e.mission_id::text, \
               jsonb_build_object('id', e.id, 'seq', e.seq, 'kind', 'step.started', 'source', 'api', \
                 'payload', e.payload, 'tags', '[]'::jsonb, 'cost_usd', NULL, 'proposal_id', NULL, \
                 'mission_id', e.mission_id, 'step_id', e.step_id, 'trace_id', {trace_p}, \
                 'created_at', {now_text}), \
               {headers_p}, {now_p} FROM e) \
         SELECT (SELECT fp FROM v) AS fp{report}, u.* FROM (SELECT 1) AS one LEFT JOIN u ON true",
        kinds = kinds_p.join(", "),
        not_paused = not_paused_pg(&kinds_p.join(", ")),
        ctes = gov.ctes,
        not_limited = gov.not_limited,
        take = gov.take,
        granted = gov.granted,
        report = gov.report,
    );
    let row = db
        .query_one_raw(stmt(DbBackend::Postgres, &sql, p.values))
        .await?
        .ok_or_else(|| WorkflowError::Conflict("claim statement returned no row".into()))?;
    let stored: i64 = row.try_get("", "fp")?;
    if stored != fingerprint {
        return Ok(None);
    }
    let claimed: Option<Uuid> = row.try_get("", "id")?;
    if claimed.is_none() {
        if needs.is_empty() {
            return Ok(Some(ClaimOutcome::Nothing));
        }
        return Ok(Some(rate_limit_of(&row)?));
    }
    let step = mission_steps::Model::from_query_result(&row, "")?;
    metrics::counter!("opsloop_events_total", "kind" => "step.started").increment(1);
    metrics::counter!("opsloop_steps_total", "kind" => step.kind.clone(), "status" => "running")
        .increment(1);
    tracing::info!(step_id = %step.id, mission_id = %step.mission_id, kind = %step.kind,
        attempt = step.attempt, worker_id, "step claimed");
    Ok(Some(ClaimOutcome::Claimed(Box::new(step))))
}

/// The transactional claim (SQLite, whose writers are serialized).
async fn claim_step_tx(
    db: &DatabaseConnection,
    worker_id: &str,
    kinds: &[StepKind],
    lease_seconds: Option<u32>,
    now: DateTime<Utc>,
) -> Result<ClaimOutcome> {
    let now = db_now(now);
    let policy = load_policy(db).await?;
    if policy.emergency_stop.engaged {
        return Ok(ClaimOutcome::EmergencyStop);
    }
    if kinds.is_empty() {
        return Ok(ClaimOutcome::Nothing);
    }
    let lease = lease_length(lease_seconds, policy.worker.lease_seconds);
    let tx = begin_write(db).await?;
    let backend = tx.get_database_backend();
    // Rate governance: the buckets of the asked kinds' resources, locked
    // (PostgreSQL) or under the immediate transaction (SQLite), refilled.
    let needs = policy.resources.needs(kinds);
    let mut buckets: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    if !needs.is_empty() {
        let mut names: Vec<&str> = needs.iter().map(|(_, r, _)| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let mut rows = lock_rates(&tx, &names).await?;
        if rows.len() < names.len() {
            super::governance::ensure_rates(&tx, &policy.resources, now).await?;
            rows = lock_rates(&tx, &names).await?;
        }
        for row in rows {
            let burst = needs
                .iter()
                .filter(|(_, r, _)| *r == row.resource)
                .map(|(_, _, b)| *b)
                .fold(0.0, f64::max);
            let tokens = refill(row.rate, row.tokens, row.refilled_at, burst, now);
            buckets.insert(row.resource, (tokens, row.rate));
        }
    }
    let blocked: Vec<&str> = needs
        .iter()
        .filter(|(_, r, _)| buckets.get(r).is_none_or(|(t, _)| *t < 1.0))
        .map(|(k, _, _)| k.as_str())
        .collect();
    let mut values: Vec<sea_orm::Value> = vec![now.into()];
    let mut placeholders = Vec::with_capacity(kinds.len());
    for kind in kinds {
        values.push(kind.as_str().into());
        placeholders.push(format!("${}", values.len()));
    }
    let mut not_limited = String::new();
    if !blocked.is_empty() {
        let mut marks = Vec::with_capacity(blocked.len());
        for kind in &blocked {
            values.push((*kind).into());
            marks.push(format!("${}", values.len()));
        }
        not_limited = format!(" AND s.kind NOT IN ({})", marks.join(", "));
    }
    let lock = if backend == DbBackend::Postgres {
        " FOR UPDATE OF s SKIP LOCKED"
    } else {
        ""
    };
    let sql = format!(
        "SELECT s.id, s.kind FROM mission_steps s JOIN missions m ON m.id = s.mission_id \
         WHERE s.status = 'queued' AND s.kind IN ({}) AND m.status = 'running' \
         AND {NOT_PAUSED_SQLITE}{not_limited} \
         AND (s.next_attempt_at IS NULL OR s.next_attempt_at <= $1) \
         AND (m.parallel OR NOT EXISTS (SELECT 1 FROM mission_steps p \
              WHERE p.mission_id = s.mission_id AND p.seq < s.seq AND p.status <> 'succeeded')) \
         ORDER BY s.created_at, s.mission_id, s.seq LIMIT 1{lock}",
        placeholders.join(", ")
    );
    // An expired lease with attempts left is taken first (as on PostgreSQL).
    let expired_sql = format!(
        "SELECT s.id, s.kind FROM mission_steps s JOIN missions m ON m.id = s.mission_id \
         WHERE s.status = 'running' AND s.kind IN ({}) AND m.status = 'running' \
         AND {NOT_PAUSED_SQLITE}{not_limited} AND s.attempt < s.max_attempts AND s.lease_expires_at < $1 \
         ORDER BY s.lease_expires_at LIMIT 1{lock}",
        placeholders.join(", ")
    );
    let row = match tx
        .query_one_raw(stmt(backend, &expired_sql, values.clone()))
        .await?
    {
        Some(row) => Some(row),
        None => tx.query_one_raw(stmt(backend, &sql, values)).await?,
    };
    let Some(row) = row else {
        tx.commit().await?;
        // The first empty bucket (by resource) and when its token is due.
        let limited = needs
            .iter()
            .filter(|(k, _, _)| blocked.contains(&k.as_str()))
            .map(|(_, r, _)| r)
            .min();
        return Ok(match limited {
            Some(resource) => {
                let wait = buckets
                    .get(resource)
                    .map_or(MISSING_BUCKET_WAIT.as_secs_f64(), |(t, rate)| {
                        (1.0 - t) / rate.max(0.001)
                    });
                ClaimOutcome::RateLimited(RateLimit::after_seconds(resource.clone(), wait))
            }
            None => ClaimOutcome::Nothing,
        });
    };
    let step_id: Uuid = row.try_get("", "id")?;
    let step_kind: String = row.try_get("", "kind")?;
    for (_, resource, _) in needs.iter().filter(|(k, _, _)| *k == step_kind) {
        if let Some((tokens, _)) = buckets.get(resource) {
            store_tokens(&tx, resource, tokens - 1.0, now).await?;
        }
    }
    let expires = now + lease;
    let changed = tx
        .execute_raw(stmt(
            backend,
            "UPDATE mission_steps SET status = 'running', attempt = attempt + 1, lease_holder = $2, \
             lease_expires_at = $3, started_at = $4, updated_at = $4, next_attempt_at = NULL \
             WHERE id = $1 AND status IN ('queued', 'running')",
            vec![step_id.into(), worker_id.into(), expires.into(), now.into()],
        ))
        .await?
        .rows_affected();
    if changed == 0 {
        // Only possible if another writer got there between our read and
        // write, which the row lock / immediate transaction exclude.
        tx.rollback().await?;
        return Ok(ClaimOutcome::Nothing);
    }
    let step = mission_steps::Entity::find_by_id(step_id)
        .one(&tx)
        .await?
        .ok_or_else(|| WorkflowError::not_found("step", step_id))?;
    write_event(
        &tx,
        EventRecord::api(
            "step.started",
            json!({"kind": step.kind, "seq": step.seq, "attempt": step.attempt,
                   "worker_id": worker_id, "lease_expires_at": expires}),
        )
        .mission(step.mission_id)
        .step(step.id),
        now,
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("opsloop_steps_total", "kind" => step.kind.clone(), "status" => "running")
        .increment(1);
    tracing::info!(step_id = %step.id, mission_id = %step.mission_id, kind = %step.kind,
        attempt = step.attempt, worker_id, "step claimed");
    Ok(ClaimOutcome::Claimed(Box::new(step)))
}

/// Loads a step and checks the caller holds its current lease.
async fn fenced_step(
    tx: &DatabaseTransaction,
    step_id: Uuid,
    worker_id: &str,
    attempt: u32,
) -> Result<mission_steps::Model> {
    let step = mission_steps::Entity::find_by_id(step_id)
        .one(tx)
        .await?
        .ok_or_else(|| WorkflowError::not_found("step", step_id))?;
    let status = parse_step_status(&step)?;
    let lost = |reason: String| WorkflowError::LeaseLost {
        step_id: step_id.to_string(),
        reason,
    };
    // A step the heartbeat requeued for an expired lease keeps its last
    // holder and attempt until someone claims it again: until then that
    // holder's late report is still the step's only run, so it is taken.
    let requeued_unclaimed = status == StepStatus::Queued && step.lease_holder.is_some();
    if status != StepStatus::Running && !requeued_unclaimed {
        return Err(lost(format!("step is {status}, not running")));
    }
    if step.lease_holder.as_deref() != Some(worker_id) {
        return Err(lost(format!(
            "lease is held by another worker (attempt {})",
            step.attempt
        )));
    }
    if i64::from(step.attempt) != i64::from(attempt) {
        return Err(lost(format!(
            "attempt {attempt} is not the current attempt {}",
            step.attempt
        )));
    }
    Ok(step)
}

/// The mission a step belongs to, locked (mission first, then step).
async fn lock_mission_of_step(tx: &DatabaseTransaction, step_id: Uuid) -> Result<Uuid> {
    let row = tx
        .query_one_raw(stmt(
            tx.get_database_backend(),
            "SELECT mission_id FROM mission_steps WHERE id = $1",
            vec![step_id.into()],
        ))
        .await?
        .ok_or_else(|| WorkflowError::not_found("step", step_id))?;
    let mission_id: Uuid = row.try_get("", "mission_id")?;
    lock_mission(tx, mission_id).await?;
    Ok(mission_id)
}

/// Extends the lease of a step the caller holds. Returns the new expiry.
pub async fn renew_lease(
    db: &DatabaseConnection,
    step_id: Uuid,
    worker_id: &str,
    attempt: u32,
    lease_seconds: Option<u32>,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>> {
    let now = db_now(now);
    let policy = load_policy(db).await?;
    let expires = now + lease_length(lease_seconds, policy.worker.lease_seconds);
    let tx = begin_write(db).await?;
    let changed = tx
        .execute_raw(stmt(
            tx.get_database_backend(),
            "UPDATE mission_steps SET status = 'running', lease_expires_at = $4, updated_at = $5, \
             next_attempt_at = NULL \
             WHERE id = $1 AND status IN ('running', 'queued') AND lease_holder = $2 AND attempt = $3",
            vec![
                step_id.into(),
                worker_id.into(),
                i64::from(attempt).into(),
                expires.into(),
                now.into(),
            ],
        ))
        .await?
        .rows_affected();
    if changed == 0 {
        // Say why: unknown step, or a lost lease.
        fenced_step(&tx, step_id, worker_id, attempt).await?;
        return Err(WorkflowError::Conflict("lease renewal lost a race".into()));
    }
    tx.commit().await?;
    Ok(expires)
}

/// Records a step's success; may finish the mission. On PostgreSQL a step
/// of a sequential mission completes in one statement (mission row locked
/// first, fenced update, events, and the mission's end when it was the last
/// step — in a sequential mission the last step can only run once every
/// earlier one succeeded). Parallel missions, refusals (to say why) and
/// SQLite take the transactional path.
pub async fn complete_step(
    db: &DatabaseConnection,
    step_id: Uuid,
    worker_id: &str,
    attempt: u32,
    result: serde_json::Value,
    cost_usd: Option<f64>,
    now: DateTime<Utc>,
) -> Result<(mission_steps::Model, MissionStatus)> {
    complete_step_with_usage(db, step_id, worker_id, attempt, result, cost_usd, &[], now).await
}

/// The policy's prices and resources when a report carries usage.
async fn usage_policy(
    db: &DatabaseConnection,
    usage: &[ResourceUsage],
) -> Result<Option<super::PolicySnapshot>> {
    validate_usage("usage", usage)?;
    if usage.is_empty() {
        return Ok(None);
    }
    Ok(Some(load_policy(db).await?))
}

/// Records the usage of a step the caller holds, in its transaction;
/// returns the step's cost: the reported one, else the usage priced.
async fn record_step_usage(
    tx: &DatabaseTransaction,
    policy: Option<&super::PolicySnapshot>,
    kind: &str,
    usage: &[ResourceUsage],
    cost_usd: Option<f64>,
    now: DateTime<Utc>,
) -> Result<Option<f64>> {
    let Some(policy) = policy else {
        return Ok(cost_usd);
    };
    let costs = attribute_cost(usage, &policy.pricing, cost_usd);
    record_usage(tx, kind, usage, &costs, &policy.resources, now).await?;
    Ok(cost_usd.or_else(|| Some(costs.iter().sum())))
}

/// [`complete_step`] with the worker's per-resource usage report (validated
/// first: a bad report changes nothing). With usage, the step's cost is
/// the reported `cost_usd`, else the calls priced by the `pricing` policy.
#[allow(clippy::too_many_arguments)]
pub async fn complete_step_with_usage(
    db: &DatabaseConnection,
    step_id: Uuid,
    worker_id: &str,
    attempt: u32,
    result: serde_json::Value,
    cost_usd: Option<f64>,
    usage: &[ResourceUsage],
    now: DateTime<Utc>,
) -> Result<(mission_steps::Model, MissionStatus)> {
    let now = db_now(now);
    let policy = usage_policy(db, usage).await?;
    if db.get_database_backend() == DbBackend::Postgres
        && usage.is_empty()
        && let Some(done) =
            complete_statement(db, step_id, worker_id, attempt, &result, cost_usd, now).await?
    {
        return Ok(done);
    }
    let tx = begin_write(db).await?;
    let mission_id = lock_mission_of_step(&tx, step_id).await?;
    let step = fenced_step(&tx, step_id, worker_id, attempt).await?;
    let cost_usd =
        record_step_usage(&tx, policy.as_ref(), &step.kind, usage, cost_usd, now).await?;
    let mut active: mission_steps::ActiveModel = step.into();
    active.status = Set(StepStatus::Succeeded.as_str().to_owned());
    active.result = Set(Some(result));
    active.cost_usd = Set(cost_usd);
    active.lease_holder = Set(None);
    active.lease_expires_at = Set(None);
    active.finished_at = Set(Some(now));
    active.updated_at = Set(now);
    let step = active.update(&tx).await?;
    write_event(
        &tx,
        EventRecord::api(
            "step.succeeded",
            json!({"kind": step.kind, "seq": step.seq, "attempt": step.attempt, "worker_id": worker_id}),
        )
        .mission(mission_id)
        .step(step.id)
        .cost(cost_usd),
        now,
    )
    .await?;
    let status = finalize_mission(&tx, mission_id, now).await?;
    // Sequential: the next step is claimable now (parallel ones already were).
    super::notify::notify_in(
        &tx,
        "s.mission_id = $1 AND s.seq = $2",
        vec![mission_id.into(), (step.seq + 1).into()],
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("opsloop_steps_total", "kind" => step.kind.clone(), "status" => "succeeded")
        .increment(1);
    tracing::info!(step_id = %step.id, %mission_id, kind = %step.kind, "step succeeded");
    Ok((step, status))
}

/// The one completion statement (PostgreSQL, sequential missions). `None`
/// when it did not apply: unknown step, parallel mission, or a lost lease.
async fn complete_statement(
    db: &DatabaseConnection,
    step_id: Uuid,
    worker_id: &str,
    attempt: u32,
    result: &serde_json::Value,
    cost_usd: Option<f64>,
    now: DateTime<Utc>,
) -> Result<Option<(mission_steps::Model, MissionStatus)>> {
    let mut p = Params::default();
    let step_p = p.push(step_id);
    let worker_p = p.push(worker_id.to_owned());
    let attempt_p = p.push(i64::from(attempt));
    let result_p = p.push(result.clone());
    let cost_p = p.push(cost_usd);
    let now_p = p.push(now);
    let now_text = p.push(json!(now));
    let step_event = p.push(Uuid::now_v7());
    let mission_event = p.push(Uuid::now_v7());
    let (headers, trace_id) = trace_context();
    let headers_p = p.push(json!(headers));
    let trace_p = p.push(trace_id);
    let sql = format!(
        "WITH lk AS (SELECT m.id, m.title, m.proposal_id FROM missions m                WHERE m.id = (SELECT mission_id FROM mission_steps WHERE id = {step_p})                AND NOT m.parallel FOR UPDATE),          d AS (UPDATE mission_steps s SET status = 'succeeded', result = {result_p}, cost_usd = {cost_p},                lease_holder = NULL, lease_expires_at = NULL, finished_at = {now_p}, updated_at = {now_p}                FROM lk WHERE s.id = {step_p} AND s.mission_id = lk.id AND s.status IN ('running', 'queued')                AND s.lease_holder = {worker_p} AND s.attempt = {attempt_p} RETURNING s.*),          f AS (UPDATE missions m SET status = 'succeeded', finished_at = {now_p}, updated_at = {now_p}                FROM d WHERE m.id = d.mission_id AND m.status = 'running'                AND NOT EXISTS (SELECT 1 FROM mission_steps x WHERE x.mission_id = d.mission_id AND x.seq > d.seq)                RETURNING m.id, m.title, m.proposal_id),          e AS (INSERT INTO events (id, kind, source, proposal_id, mission_id, step_id, payload, tags,                cost_usd, trace_id, created_at)                SELECT {step_event}, 'step.succeeded', 'api', NULL::uuid, d.mission_id, d.id,                  jsonb_build_object('kind', d.kind, 'seq', d.seq, 'attempt', d.attempt, 'worker_id', {worker_p}),                  '[]'::jsonb, {cost_p}, {trace_p}, {now_p} FROM d                UNION ALL                SELECT {mission_event}, 'mission.succeeded', 'api', f.proposal_id, f.id, NULL::uuid,                  jsonb_build_object('title', f.title, 'error', NULL,                    'step_count', (SELECT count(*) FROM mission_steps WHERE mission_id = f.id)),                  '[]'::jsonb, NULL::float8, {trace_p}, {now_p} FROM f                RETURNING id, seq, kind, proposal_id, mission_id, step_id, payload, cost_usd),          o AS (INSERT INTO outbox (event_id, routing_key, aggregate_id, payload, headers, created_at)                SELECT e.id, 'event.' || e.kind, e.mission_id::text,                jsonb_build_object('id', e.id, 'seq', e.seq, 'kind', e.kind, 'source', 'api',                  'payload', e.payload, 'tags', '[]'::jsonb, 'cost_usd', e.cost_usd,                  'proposal_id', e.proposal_id, 'mission_id', e.mission_id, 'step_id', e.step_id,                  'trace_id', {trace_p}, 'created_at', {now_text}),                {headers_p}, {now_p} FROM e)          SELECT d.*, (SELECT count(*) FROM f) AS finished,          (SELECT n.kind FROM mission_steps n WHERE n.mission_id = d.mission_id AND n.seq = d.seq + 1           AND n.status = 'queued' LIMIT 1) AS next_kind FROM d",
    );
    let Some(row) = db
        .query_one_raw(stmt(DbBackend::Postgres, &sql, p.values))
        .await?
    else {
        return Ok(None);
    };
    let step = mission_steps::Model::from_query_result(&row, "")?;
    let finished: i64 = row.try_get("", "finished")?;
    // The next step of the sequential mission is claimable now; announced
    // after the commit (see `notify_after` for why not inside).
    let next_kind: Option<String> = row.try_get("", "next_kind")?;
    if let Some(kind) = next_kind {
        super::notify::notify_after(db, &[kind]).await;
    }
    let status = if finished > 0 {
        metrics::counter!("opsloop_missions_total", "status" => "succeeded").increment(1);
        metrics::counter!("opsloop_events_total", "kind" => "mission.succeeded").increment(1);
        tracing::info!(mission_id = %step.mission_id, status = "succeeded", "mission finished");
        MissionStatus::Succeeded
    } else {
        MissionStatus::Running
    };
    metrics::counter!("opsloop_events_total", "kind" => "step.succeeded").increment(1);
    metrics::counter!("opsloop_steps_total", "kind" => step.kind.clone(), "status" => "succeeded")
        .increment(1);
    tracing::info!(step_id = %step.id, mission_id = %step.mission_id, kind = %step.kind, "step succeeded");
    Ok(Some((step, status)))
}

/// Records a failure: requeued with backoff when retryable and attempts
/// remain, else failed terminally with a dead-letter record (failing the
/// mission). Returns the step, whether it was requeued, and the mission's
/// status.
#[allow(clippy::too_many_arguments)]
pub async fn fail_step(
    db: &DatabaseConnection,
    step_id: Uuid,
    worker_id: &str,
    attempt: u32,
    error: &str,
    retryable: bool,
    cost_usd: Option<f64>,
    now: DateTime<Utc>,
) -> Result<(mission_steps::Model, bool, MissionStatus)> {
    fail_step_with_usage(
        db,
        step_id,
        worker_id,
        attempt,
        error,
        retryable,
        cost_usd,
        &[],
        now,
    )
    .await
}

/// [`fail_step`] with the worker's per-resource usage report (see
/// [`complete_step_with_usage`]).
#[allow(clippy::too_many_arguments)]
pub async fn fail_step_with_usage(
    db: &DatabaseConnection,
    step_id: Uuid,
    worker_id: &str,
    attempt: u32,
    error: &str,
    retryable: bool,
    cost_usd: Option<f64>,
    usage: &[ResourceUsage],
    now: DateTime<Utc>,
) -> Result<(mission_steps::Model, bool, MissionStatus)> {
    let now = db_now(now);
    validate_usage("usage", usage)?;
    let policy = load_policy(db).await?;
    let tx = begin_write(db).await?;
    let mission_id = lock_mission_of_step(&tx, step_id).await?;
    let step = fenced_step(&tx, step_id, worker_id, attempt).await?;
    let usage_policy = (!usage.is_empty()).then_some(&policy);
    let cost_usd = record_step_usage(&tx, usage_policy, &step.kind, usage, cost_usd, now).await?;
    let cost = match (step.cost_usd, cost_usd) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    };
    let (step, requeued) = fail_or_requeue(
        &tx,
        step,
        error,
        retryable,
        cost,
        Backoff::from(&policy.worker),
        now,
    )
    .await?;
    let status = finalize_mission(&tx, mission_id, now).await?;
    tx.commit().await?;
    Ok((step, requeued, status))
}

async fn fail_or_requeue(
    tx: &DatabaseTransaction,
    step: mission_steps::Model,
    error: &str,
    retryable: bool,
    cost: Option<f64>,
    backoff: Backoff,
    now: DateTime<Utc>,
) -> Result<(mission_steps::Model, bool)> {
    let attempts_left = step.attempt < step.max_attempts;
    let mission_id = step.mission_id;
    let mut active: mission_steps::ActiveModel = step.clone().into();
    active.error = Set(Some(error.to_owned()));
    active.cost_usd = Set(cost);
    active.lease_holder = Set(None);
    active.lease_expires_at = Set(None);
    active.updated_at = Set(now);
    if retryable && attempts_left {
        let attempt = u32::try_from(step.attempt).unwrap_or(1);
        let delay = retry_delay(backoff, attempt, random_jitter());
        let next = db_now(now + Duration::from_std(delay).unwrap_or(Duration::zero()));
        active.status = Set(StepStatus::Queued.as_str().to_owned());
        active.next_attempt_at = Set(Some(next));
        let step = active.update(tx).await?;
        super::notify::notify_in(tx, "s.id = $1", vec![step.id.into()]).await?;
        write_event(
            tx,
            EventRecord::api(
                "step.retrying",
                json!({"kind": step.kind, "seq": step.seq, "attempt": step.attempt,
                       "error": error, "next_attempt_at": next}),
            )
            .mission(mission_id)
            .step(step.id),
            now,
        )
        .await?;
        metrics::counter!("opsloop_steps_total", "kind" => step.kind.clone(), "status" => "retrying")
            .increment(1);
        tracing::warn!(step_id = %step.id, %mission_id, attempt = step.attempt, error,
            "step failed, requeued");
        return Ok((step, true));
    }
    active.status = Set(StepStatus::Failed.as_str().to_owned());
    active.finished_at = Set(Some(now));
    let step = active.update(tx).await?;
    step_dead_letters::ActiveModel {
        id: Set(Uuid::now_v7()),
        step_id: Set(step.id),
        mission_id: Set(mission_id),
        kind: Set(step.kind.clone()),
        attempt: Set(step.attempt),
        error: Set(error.to_owned()),
        payload: Set(step.payload.clone()),
        created_at: Set(now),
        retried_proposal_id: Set(None),
        retried_by: Set(None),
        retried_at: Set(None),
    }
    .insert(tx)
    .await?;
    write_event(
        tx,
        EventRecord::api(
            "step.failed",
            json!({"kind": step.kind, "seq": step.seq, "attempt": step.attempt,
                   "error": error, "retryable": retryable}),
        )
        .mission(mission_id)
        .step(step.id),
        now,
    )
    .await?;
    metrics::counter!("opsloop_steps_total", "kind" => step.kind.clone(), "status" => "failed")
        .increment(1);
    tracing::warn!(step_id = %step.id, %mission_id, attempt = step.attempt, error, "step failed");
    Ok((step, false))
}

/// The one finalizer: ends a running mission when its steps say so (all
/// succeeded → succeeded; one failed → the rest cancelled, failed). The
/// conditional update makes the mission event happen exactly once. The
/// mission row must already be locked by the caller.
async fn finalize_mission(
    tx: &DatabaseTransaction,
    mission_id: Uuid,
    now: DateTime<Utc>,
) -> Result<MissionStatus> {
    let backend = tx.get_database_backend();
    let steps = steps_of(tx, mission_id).await?;
    let statuses: Vec<StepStatus> = steps.iter().map(parse_step_status).collect::<Result<_>>()?;
    let mission = missions::Entity::find_by_id(mission_id)
        .one(tx)
        .await?
        .ok_or_else(|| WorkflowError::not_found("mission", mission_id))?;
    let current: MissionStatus = mission
        .status
        .parse()
        .map_err(|e| WorkflowError::Corrupt(format!("{e}")))?;
    let Some(outcome) = mission_outcome(&statuses) else {
        return Ok(current);
    };
    if current.is_final() {
        return Ok(current);
    }
    if outcome == MissionStatus::Failed {
        cancel_open_steps(tx, &steps, now, "mission failed").await?;
    }
    let changed = tx
        .execute_raw(stmt(
            backend,
            "UPDATE missions SET status = $2, finished_at = $3, updated_at = $3 \
             WHERE id = $1 AND status = 'running'",
            vec![mission_id.into(), outcome.as_str().into(), now.into()],
        ))
        .await?
        .rows_affected();
    if changed == 1 {
        let failed_error = steps
            .iter()
            .zip(&statuses)
            .find(|(_, s)| **s == StepStatus::Failed)
            .and_then(|(step, _)| step.error.clone());
        write_event(
            tx,
            EventRecord::api(
                &format!("mission.{}", outcome.as_str()),
                json!({"title": mission.title, "step_count": steps.len(), "error": failed_error}),
            )
            .proposal(mission.proposal_id)
            .mission(mission_id),
            now,
        )
        .await?;
        metrics::counter!("opsloop_missions_total", "status" => outcome.as_str()).increment(1);
        tracing::info!(%mission_id, status = outcome.as_str(), "mission finished");
    }
    Ok(outcome)
}

async fn steps_of(
    tx: &impl ConnectionTrait,
    mission_id: Uuid,
) -> Result<Vec<mission_steps::Model>> {
    Ok(mission_steps::Entity::find()
        .from_raw_sql(stmt(
            tx.get_database_backend(),
            "SELECT * FROM mission_steps WHERE mission_id = $1 ORDER BY seq",
            vec![mission_id.into()],
        ))
        .all(tx)
        .await?)
}

async fn cancel_open_steps(
    tx: &DatabaseTransaction,
    steps: &[mission_steps::Model],
    now: DateTime<Utc>,
    why: &str,
) -> Result<usize> {
    let mut cancelled = 0;
    for step in steps {
        let status = parse_step_status(step)?;
        if !status.can_become(StepStatus::Cancelled) {
            continue;
        }
        let changed = tx
            .execute_raw(stmt(
                tx.get_database_backend(),
                "UPDATE mission_steps SET status = 'cancelled', lease_holder = NULL, \
                 lease_expires_at = NULL, finished_at = $2, updated_at = $2 \
                 WHERE id = $1 AND status IN ('queued', 'running')",
                vec![step.id.into(), now.into()],
            ))
            .await?
            .rows_affected();
        if changed == 1 {
            cancelled += 1;
            write_event(
                tx,
                EventRecord::api(
                    "step.cancelled",
                    json!({"kind": step.kind, "seq": step.seq, "reason": why}),
                )
                .mission(step.mission_id)
                .step(step.id),
                now,
            )
            .await?;
        }
    }
    Ok(cancelled)
}

/// CancelMission: running → cancelled with its queued and running steps.
pub async fn cancel_mission(
    db: &DatabaseConnection,
    mission_id: Uuid,
    actor: &str,
    reason: &str,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<MissionView> {
    let now = db_now(now);
    let tx = begin_write(db).await?;
    let status = lock_mission(&tx, mission_id)
        .await?
        .ok_or_else(|| WorkflowError::not_found("mission", mission_id))?;
    let current: MissionStatus = status
        .parse()
        .map_err(|e| WorkflowError::Corrupt(format!("{e}")))?;
    current.transition(MissionStatus::Cancelled)?;
    let steps = steps_of(&tx, mission_id).await?;
    let cancelled = cancel_open_steps(&tx, &steps, now, reason).await?;
    let changed = tx
        .execute_raw(stmt(
            tx.get_database_backend(),
            "UPDATE missions SET status = 'cancelled', finished_at = $2, updated_at = $2 \
             WHERE id = $1 AND status = 'running'",
            vec![mission_id.into(), now.into()],
        ))
        .await?
        .rows_affected();
    if changed == 0 {
        // Excluded by the mission lock; kept as a typed error, not a panic.
        return Err(WorkflowError::Conflict(format!(
            "mission {mission_id} changed while being cancelled"
        )));
    }
    write_event(
        &tx,
        EventRecord::api(
            "mission.cancelled",
            json!({"actor": actor, "reason": reason, "cancelled_steps": cancelled}),
        )
        .mission(mission_id),
        now,
    )
    .await?;
    let record = AuditRecord {
        at: now,
        actor: actor.to_owned(),
        action: "mission.cancel".into(),
        subject: format!("mission/{mission_id}"),
        reason: Some(reason.to_owned()),
        before: Some(json!({"status": "running"})),
        after: Some(json!({"status": "cancelled", "cancelled_steps": cancelled})),
    };
    audit_row(&tx, &record).await?;
    tx.commit().await?;
    audit_file(audit, &record);
    metrics::counter!("opsloop_missions_total", "status" => "cancelled").increment(1);
    tracing::info!(%mission_id, actor, cancelled_steps = cancelled, "mission cancelled");
    get_mission(db, mission_id).await
}

/// What [`recover_stale_steps`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Steps whose lease expired and that went back to the queue.
    pub requeued: Vec<Uuid>,
    /// Steps whose lease expired on their last attempt: failed.
    pub failed: Vec<Uuid>,
}

/// Running steps whose lease expired before `now`: back to queued while
/// attempts remain (`running → queued`), else failed with `lease_expired`
/// (dead letter, mission failed). The heartbeat calls it every tick.
pub async fn recover_stale_steps(
    db: &DatabaseConnection,
    now: DateTime<Utc>,
) -> Result<RecoveryReport> {
    let now = db_now(now);
    let policy = load_policy(db).await?;
    let stale = mission_steps::Entity::find()
        .from_raw_sql(stmt(
            db.get_database_backend(),
            "SELECT * FROM mission_steps WHERE status = 'running' AND lease_expires_at < $1 \
             ORDER BY lease_expires_at LIMIT 500",
            vec![now.into()],
        ))
        .all(db)
        .await?;
    let mut report = RecoveryReport::default();
    for candidate in stale {
        let tx = begin_write(db).await?;
        lock_mission(&tx, candidate.mission_id).await?;
        // Re-read under the lock: the worker may have finished meanwhile.
        let step = mission_steps::Entity::find_by_id(candidate.id)
            .one(&tx)
            .await?;
        let Some(step) = step.filter(|s| {
            s.status == "running"
                && s.attempt == candidate.attempt
                && s.lease_expires_at.is_some_and(|t| t < now)
        }) else {
            tx.rollback().await?;
            continue;
        };
        let step_id = step.id;
        let mission_id = step.mission_id;
        if step.attempt < step.max_attempts {
            let changed = tx
                .execute_raw(stmt(
                    tx.get_database_backend(),
                    "UPDATE mission_steps SET status = 'queued', error = 'lease_expired', \
                     updated_at = $2 WHERE id = $1 AND status = 'running'",
                    vec![step_id.into(), now.into()],
                ))
                .await?
                .rows_affected();
            if changed == 1 {
                // Wakes long-polling claims on every api replica.
                super::notify::notify_in(&tx, "s.id = $1", vec![step_id.into()]).await?;
                write_event(
                    &tx,
                    EventRecord::api(
                        "step.lease_expired",
                        json!({"kind": step.kind, "seq": step.seq, "attempt": step.attempt,
                               "worker_id": step.lease_holder, "requeued": true}),
                    )
                    .mission(mission_id)
                    .step(step_id),
                    now,
                )
                .await?;
                report.requeued.push(step_id);
            }
        } else {
            fail_or_requeue(
                &tx,
                step,
                "lease_expired",
                false,
                None,
                Backoff::from(&policy.worker),
                now,
            )
            .await?;
            finalize_mission(&tx, mission_id, now).await?;
            report.failed.push(step_id);
        }
        tx.commit().await?;
    }
    if !report.requeued.is_empty() || !report.failed.is_empty() {
        tracing::warn!(
            requeued = report.requeued.len(),
            failed = report.failed.len(),
            "recovered steps with expired leases"
        );
    }
    Ok(report)
}

/// One mission with its steps.
pub async fn get_mission(db: &impl ConnectionTrait, mission_id: Uuid) -> Result<MissionView> {
    let mission = missions::Entity::find_by_id(mission_id)
        .one(db)
        .await?
        .ok_or_else(|| WorkflowError::not_found("mission", mission_id))?;
    let steps = steps_of(db, mission_id).await?;
    let mut view = summarize(mission, &steps);
    view.outcome_detail = outcome_detail(db, &view).await?;
    view.steps = steps;
    Ok(view)
}

fn summarize(mission: missions::Model, steps: &[mission_steps::Model]) -> MissionView {
    MissionView {
        mission,
        steps: Vec::new(),
        step_count: u32::try_from(steps.len()).unwrap_or(u32::MAX),
        cost_usd: steps.iter().filter_map(|s| s.cost_usd).sum(),
        outcome_detail: None,
    }
}

async fn outcome_detail(db: &impl ConnectionTrait, view: &MissionView) -> Result<Option<String>> {
    let kind = match view.mission.status.as_str() {
        "failed" => "mission.failed",
        "cancelled" => "mission.cancelled",
        _ => return Ok(None),
    };
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT payload FROM events WHERE mission_id = $1 AND kind = $2 ORDER BY seq DESC LIMIT 1",
            vec![view.mission.id.into(), kind.into()],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let payload: serde_json::Value = row.try_get("", "payload")?;
    let field = if kind == "mission.failed" {
        "error"
    } else {
        "reason"
    };
    Ok(payload
        .get(field)
        .and_then(|v| v.as_str())
        .map(str::to_owned))
}

/// Filters of ListMissions.
#[derive(Debug, Clone, Default)]
pub struct MissionFilter {
    pub status: Option<MissionStatus>,
    pub proposal_id: Option<Uuid>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: u64,
}

/// Missions newest first, without their steps (but with count and cost).
pub async fn list_missions(
    db: &DatabaseConnection,
    filter: &MissionFilter,
) -> Result<Vec<MissionView>> {
    let mut sql = String::from("SELECT * FROM missions WHERE 1=1");
    let mut values: Vec<sea_orm::Value> = Vec::new();
    let mut add = |cond: &str, v: Vec<sea_orm::Value>, sql: &mut String| {
        let mut cond = cond.to_owned();
        for value in v {
            values.push(value);
            cond = cond.replacen("$?", &format!("${}", values.len()), 1);
        }
        sql.push_str(&cond);
    };
    if let Some(status) = filter.status {
        add(" AND status = $?", vec![status.as_str().into()], &mut sql);
    }
    if let Some(p) = filter.proposal_id {
        add(" AND proposal_id = $?", vec![p.into()], &mut sql);
    }
    if let Some(t) = filter.created_after {
        add(" AND created_at >= $?", vec![t.into()], &mut sql);
    }
    if let Some(t) = filter.created_before {
        add(" AND created_at < $?", vec![t.into()], &mut sql);
    }
    if let Some((t, id)) = filter.after {
        add(
            " AND (created_at < $? OR (created_at = $? AND id < $?))",
            vec![t.into(), t.into(), id.into()],
            &mut sql,
        );
    }
    sql.push_str(&format!(
        " ORDER BY created_at DESC, id DESC LIMIT {}",
        filter.limit.clamp(1, 1000)
    ));
    let rows = missions::Entity::find()
        .from_raw_sql(stmt(db.get_database_backend(), &sql, values))
        .all(db)
        .await?;
    let mut views = Vec::with_capacity(rows.len());
    for mission in rows {
        let steps = steps_of(db, mission.id).await?;
        let mut view = summarize(mission, &steps);
        view.outcome_detail = outcome_detail(db, &view).await?;
        views.push(view);
    }
    Ok(views)
}
