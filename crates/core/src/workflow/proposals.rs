//! Proposals: the one entry point [`submit_proposal`] (dedupe → emergency
//! stop → toggles → daily caps → auto_approve, in one transaction), manual
//! approval and rejection, expiry, and reads.

use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend,
    EntityTrait, Set,
};
use serde_json::json;
use uuid::Uuid;

use super::events::{EventRecord, write_event};
use super::{
    FINGERPRINT_SQL, PolicyCache, PolicySnapshot, Result, WorkflowError, begin_write, db_now,
    load_policy, stmt,
};
use crate::audit::{AuditLog, AuditRecord};
use crate::domain::gate::{self, Decision, GateInput, GatePlan, GateRejection, StopState};
use crate::domain::input::{NewProposal, StepKind, StepSpec};
use crate::domain::status::{MissionStatus, ProposalStatus, StepStatus};
use crate::store::entities::{audit_events, mission_steps, missions, proposals};

/// A proposal and the mission created from it, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct ProposalView {
    pub proposal: proposals::Model,
    pub mission_id: Option<Uuid>,
}

impl ProposalView {
    pub fn status(&self) -> Result<ProposalStatus> {
        self.proposal
            .status
            .parse()
            .map_err(|e| WorkflowError::Corrupt(format!("{e}")))
    }

    /// The steps as stored.
    pub fn steps(&self) -> Vec<StepSpec> {
        serde_json::from_value(self.proposal.steps.clone()).unwrap_or_default()
    }
}

/// What [`submit_proposal`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitOutcome {
    pub proposal: ProposalView,
    /// True when the dedupe key matched an earlier proposal (nothing written).
    pub deduplicated: bool,
}

/// The single entry point through which work enters the loop: the api,
/// trigger rules, reactions and manual submissions all call it. One
/// transaction: the proposal row (insert-on-conflict on `dedupe_key`, so
/// concurrent submits with one key yield one proposal), the gates, the daily
/// counters (conditional upsert: O(1), never over the cap), and on approval
/// the mission with its queued steps, plus the events and outbox rows.
/// Without a process-wide policy cache (see [`submit_proposal_cached`]).
pub async fn submit_proposal(
    db: &DatabaseConnection,
    proposal: NewProposal,
    now: DateTime<Utc>,
) -> Result<SubmitOutcome> {
    submit_proposal_cached(db, &PolicyCache::new(), proposal, now).await
}

/// [`submit_proposal`] with the api process's policy cache. On PostgreSQL
/// the common case — no daily cap involved — is one statement: proposal,
/// mission, steps, events and outbox rows written by data-modifying CTEs in
/// one round trip, the gates judged on the cached policy and the statement
/// writing nothing unless the stored policy's fingerprint still equals the
/// cached one (then the cache is reloaded and the proposal judged again). A
/// proposal of a capped kind, and every submit on SQLite, takes the
/// transactional path (the counters need their conditional upserts).
pub async fn submit_proposal_cached(
    db: &DatabaseConnection,
    cache: &PolicyCache,
    proposal: NewProposal,
    now: DateTime<Utc>,
) -> Result<SubmitOutcome> {
    if db.get_database_backend() != DbBackend::Postgres {
        return submit_proposal_tx(db, proposal, now).await;
    }
    let now = db_now(now);
    let proposal = proposal.validate(&crate::domain::input::Limits::DEFAULT)?;
    match submit_fast(db, cache, proposal, now).await? {
        Fast::Done(outcome) => {
            super::notify::notify_after(db, &woken_kinds(&outcome)).await;
            Ok(*outcome)
        }
        Fast::Transactional(proposal) => submit_proposal_tx(db, *proposal, now).await,
    }
}

/// The kinds of the steps a submit made claimable at once (the first step
/// of a new mission, or every step of a parallel one); none when it made no
/// mission. What the one-statement submit announces after its commit.
fn woken_kinds(outcome: &SubmitOutcome) -> Vec<String> {
    if outcome.deduplicated || outcome.proposal.mission_id.is_none() {
        return Vec::new();
    }
    let take = if outcome.proposal.proposal.parallel {
        usize::MAX
    } else {
        1
    };
    outcome
        .proposal
        .steps()
        .into_iter()
        .take(take)
        .map(|s| s.kind.as_str().to_owned())
        .collect()
}

/// Up to 1,000 proposals in one transaction, each judged exactly as
/// [`submit_proposal_cached`] judges one alone (the same code: the one
/// statement when it applies, else [`submit_proposal_in`]), in order. An
/// invalid item is refused in its slot and nothing is written for it. An
/// item the database refuses is rolled back alone: the batch is then run
/// again with a savepoint around each item (on PostgreSQL the first run has
/// none, as an error is rare and a savepoint costs two round trips), and the
/// failing item reported in its slot while the others commit together. An
/// error of the transaction itself fails the call.
pub async fn submit_proposals_cached(
    db: &DatabaseConnection,
    cache: &PolicyCache,
    proposals: Vec<NewProposal>,
    now: DateTime<Utc>,
) -> Result<Vec<Result<SubmitOutcome>>> {
    let now = db_now(now);
    let items: Vec<Result<NewProposal>> = proposals
        .into_iter()
        .map(|p| {
            p.validate(&crate::domain::input::Limits::DEFAULT)
                .map_err(WorkflowError::from)
        })
        .collect();
    if db.get_database_backend() == DbBackend::Postgres
        && let Some(results) = submit_batch(db, cache, &items, now, false).await?
    {
        return Ok(results);
    }
    submit_batch(db, cache, &items, now, true)
        .await?
        .ok_or_else(|| WorkflowError::Conflict("batch item failed under its savepoint".into()))
}

/// One run of [`submit_proposals_cached`]. `None`: an item failed without
/// savepoints, nothing was committed.
async fn submit_batch(
    db: &DatabaseConnection,
    cache: &PolicyCache,
    items: &[Result<NewProposal>],
    now: DateTime<Utc>,
    savepoints: bool,
) -> Result<Option<Vec<Result<SubmitOutcome>>>> {
    use sea_orm::TransactionTrait;
    let postgres = db.get_database_backend() == DbBackend::Postgres;
    let tx = begin_write(db).await?;
    let mut results = Vec::with_capacity(items.len());
    // Announced after the commit (the transactional path notifies inside).
    let mut woken = Vec::new();
    for item in items {
        let proposal = match item {
            Ok(p) => p.clone(),
            Err(WorkflowError::Invalid(e)) => {
                results.push(Err(WorkflowError::Invalid(e.clone())));
                continue;
            }
            Err(other) => {
                results.push(Err(WorkflowError::Conflict(other.to_string())));
                continue;
            }
        };
        let savepoint = if savepoints {
            Some(tx.begin().await?)
        } else {
            None
        };
        let conn = savepoint.as_ref().unwrap_or(&tx);
        let outcome = if postgres {
            match submit_fast(conn, cache, proposal, now).await {
                Ok(Fast::Done(outcome)) => {
                    woken.extend(woken_kinds(&outcome));
                    Ok(*outcome)
                }
                Ok(Fast::Transactional(proposal)) => submit_proposal_in(conn, *proposal, now).await,
                Err(e) => Err(e),
            }
        } else {
            submit_proposal_in(conn, proposal, now).await
        };
        match (outcome, savepoint) {
            (Ok(outcome), savepoint) => {
                if let Some(savepoint) = savepoint {
                    savepoint.commit().await?;
                }
                results.push(Ok(outcome));
            }
            (Err(error), Some(savepoint)) => {
                savepoint.rollback().await?;
                tracing::warn!(%error, "batch item refused");
                results.push(Err(error));
            }
            (Err(error), None) => {
                tracing::info!(%error, "batch item failed; running the batch again with savepoints");
                tx.rollback().await?;
                return Ok(None);
            }
        }
    }
    tx.commit().await?;
    super::notify::notify_after(db, &woken).await;
    Ok(Some(results))
}

/// What [`submit_fast`] did.
enum Fast {
    Done(Box<SubmitOutcome>),
    /// A daily cap applies, or the policy kept changing: judge it on the
    /// transactional path.
    Transactional(Box<NewProposal>),
}

/// The one-statement submit on `conn` (PostgreSQL; a connection or a
/// transaction), judged on the cached policy.
async fn submit_fast(
    conn: &impl ConnectionTrait,
    cache: &PolicyCache,
    proposal: NewProposal,
    now: DateTime<Utc>,
) -> Result<Fast> {
    let db = conn;
    let kinds: Vec<StepKind> = proposal.steps.iter().map(|s| s.kind.clone()).collect();
    // Two tries: a stale cache is reloaded once; a policy changing again
    // in between sends the submit down the transactional path.
    for _ in 0..2 {
        let policy = cache.get(db).await?;
        let Some(decision) = judge_uncapped(&policy, &kinds, now) else {
            return Ok(Fast::Transactional(Box::new(proposal)));
        };
        match write_submit(db, &policy, &proposal, &kinds, &decision, now).await? {
            Written::Stale => {
                cache.reload(db).await?;
            }
            Written::Held => {
                let key = proposal.dedupe_key.as_ref().map(|k| k.as_str().to_owned());
                let existing = proposals::Entity::find()
                    .from_raw_sql(stmt(
                        DbBackend::Postgres,
                        "SELECT * FROM proposals WHERE dedupe_key = $1",
                        vec![key.clone().into()],
                    ))
                    .one(db)
                    .await?;
                let Some(existing) = existing else {
                    // The holder was rejected meanwhile (it gave up its
                    // key): judge this one afresh.
                    continue;
                };
                let view = with_mission(db, existing).await?;
                metrics::counter!("opsloop_proposals_total", "outcome" => "deduplicated", "gate" => "dedupe")
                    .increment(1);
                return Ok(Fast::Done(Box::new(SubmitOutcome {
                    proposal: view,
                    deduplicated: true,
                })));
            }
            Written::Done(outcome) => return Ok(Fast::Done(outcome)),
        }
    }
    Ok(Fast::Transactional(Box::new(proposal)))
}

async fn submit_proposal_tx(
    db: &DatabaseConnection,
    proposal: NewProposal,
    now: DateTime<Utc>,
) -> Result<SubmitOutcome> {
    let tx = begin_write(db).await?;
    let outcome = submit_proposal_in(&tx, proposal, now).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// The gates that need no counter: stop, toggles, auto_approve. `None` when
/// a daily cap applies to one of `kinds`.
fn judge_uncapped(
    policy: &PolicySnapshot,
    kinds: &[StepKind],
    now: DateTime<Utc>,
) -> Option<Decision> {
    match gate::plan(&gate_input(policy, kinds, now)) {
        GatePlan::Decided(decision) => Some(decision),
        GatePlan::Reserve { .. } => None,
    }
}

/// The gates' view of a submit under `policy` (the dedupe key is checked
/// before the gates run, by the statement that writes the proposal).
fn gate_input<'a>(
    policy: &'a PolicySnapshot,
    kinds: &'a [StepKind],
    now: DateTime<Utc>,
) -> GateInput<'a> {
    GateInput {
        dedupe_key_held: false,
        emergency_stop: StopState::from_flag(
            policy.emergency_stop.engaged,
            policy.emergency_stop.reason.as_deref(),
        ),
        step_kinds: kinds,
        gates: &policy.step_gates,
        toggles: &policy.toggles,
        auto_approve: &policy.auto_approve,
        now,
    }
}

enum Written {
    /// The policy changed since the snapshot: nothing written.
    Stale,
    /// The dedupe key is held by another proposal: nothing written.
    Held,
    Done(Box<SubmitOutcome>),
}

/// The one statement of a judged submit (PostgreSQL).
async fn write_submit(
    db: &impl ConnectionTrait,
    policy: &PolicySnapshot,
    proposal: &NewProposal,
    kinds: &[StepKind],
    decision: &Decision,
    now: DateTime<Utc>,
) -> Result<Written> {
    use super::sql::{KnownEvent, Params, events_ctes};
    let id = Uuid::now_v7();
    let steps_json = serde_json::to_value(&proposal.steps)
        .map_err(|e| WorkflowError::Corrupt(format!("steps: {e}")))?;
    let (status, decided_by, rejection) = match decision {
        Decision::Approve => (
            ProposalStatus::Approved,
            Some("auto_approve".to_owned()),
            None,
        ),
        Decision::Pending | Decision::Duplicate => (ProposalStatus::Pending, None, None),
        Decision::Reject(r) => (
            ProposalStatus::Rejected,
            Some(r.reason().to_owned()),
            Some(r.clone()),
        ),
    };
    let key = proposal.dedupe_key.as_ref().map(|k| k.as_str().to_owned());
    let trace_id = proposal
        .trace_id
        .clone()
        .or_else(super::events::current_trace_id);
    let model = proposals::Model {
        id,
        // A gate-rejected proposal does not hold its key.
        dedupe_key: if rejection.is_some() {
            None
        } else {
            key.clone()
        },
        source: proposal.source.as_str().to_owned(),
        agent: Some(proposal.agent.clone()),
        title: proposal.title.clone(),
        status: status.as_str().to_owned(),
        rejection_reason: rejection.as_ref().map(|r| r.reason().to_owned()),
        rejection_detail: rejection.as_ref().map(GateRejection::detail),
        steps: steps_json,
        parallel: proposal.parallel,
        metadata: proposal.metadata.clone(),
        policy_version: policy.version,
        trace_id,
        decided_by,
        decided_at: status.is_final().then_some(now),
        created_at: now,
        updated_at: now,
    };

    let mut p = Params::default();
    let fingerprint = p.push(policy.fingerprint);
    let mut sql = format!(
        "WITH v AS (SELECT ({FINGERPRINT_SQL}) AS fp),          p AS (INSERT INTO proposals (id, dedupe_key, source, agent, title, status, rejection_reason,                rejection_detail, steps, parallel, metadata, policy_version, trace_id, decided_by,                decided_at, created_at, updated_at)                SELECT {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {now_p}, {now_p}                FROM v WHERE v.fp = {fingerprint}",
        p.push(model.id),
        p.push(model.dedupe_key.clone()),
        p.push(model.source.clone()),
        p.push(model.agent.clone()),
        p.push(model.title.clone()),
        p.push(model.status.clone()),
        p.push(model.rejection_reason.clone()),
        p.push(model.rejection_detail.clone()),
        p.push(model.steps.clone()),
        p.push(model.parallel),
        p.push(model.metadata.clone()),
        p.push(model.policy_version),
        p.push(model.trace_id.clone()),
        p.push(model.decided_by.clone()),
        p.push(model.decided_at),
        now_p = p.push(now),
    );
    match (&key, &rejection) {
        // Dedupe comes before every gate: a held key returns its holder even
        // when this submit would be rejected.
        (Some(k), Some(_)) => sql.push_str(&format!(
            " AND NOT EXISTS (SELECT 1 FROM proposals WHERE dedupe_key = {})",
            p.push(k.clone())
        )),
        (Some(_), None) => sql.push_str(" ON CONFLICT (dedupe_key) DO NOTHING"),
        (None, _) => {}
    }
    sql.push_str(" RETURNING id)");

    let mut events = vec![KnownEvent::new(
        "proposal.submitted",
        json!({"title": model.title, "source": model.source, "agent": model.agent,
                   "step_kinds": kinds, "policy_version": policy.version}),
    )];
    let mut mission_id = None;
    match decision {
        Decision::Approve => {
            let mid = Uuid::now_v7();
            mission_id = Some(mid);
            events.push(KnownEvent::new(
                "proposal.approved",
                json!({"decided_by": "auto_approve", "policy_version": policy.version}),
            ));
            sql.push_str(&format!(
                ", m AS (INSERT INTO missions (id, proposal_id, title, status, parallel, created_at, updated_at)                  SELECT {}, p.id, {}, 'running', {}, {now_p}, {now_p} FROM p RETURNING id)",
                p.push(mid),
                p.push(model.title.clone()),
                p.push(model.parallel),
                now_p = p.push(now),
            ));
            let mut rows = Vec::with_capacity(proposal.steps.len());
            for (seq, spec) in proposal.steps.iter().enumerate() {
                let max_attempts =
                    i32::try_from(spec.max_attempts.unwrap_or(policy.worker.max_attempts))
                        .unwrap_or(i32::MAX);
                rows.push(format!(
                    "({}, {}, {}, {}, {})",
                    p.push(Uuid::now_v7()),
                    p.push(i32::try_from(seq).unwrap_or(i32::MAX)),
                    p.push(spec.kind.as_str().to_owned()),
                    p.push(spec.payload.clone()),
                    p.push(max_attempts),
                ));
            }
            if !rows.is_empty() {
                sql.push_str(&format!(
                    ", s AS (INSERT INTO mission_steps (id, mission_id, seq, kind, payload, status, attempt,                      max_attempts, created_at, updated_at)                      SELECT x.id, m.id, x.seq, x.kind, x.payload, 'queued', 0, x.max_attempts, {now_p}, {now_p}                      FROM m CROSS JOIN (VALUES {}) x(id, seq, kind, payload, max_attempts))",
                    rows.join(", "),
                    now_p = p.push(now),
                ));
            }
            let mut started = KnownEvent::new(
                "mission.started",
                json!({"title": model.title, "step_count": proposal.steps.len(),
                       "parallel": model.parallel}),
            );
            started.mission_id = Some(mid);
            events.push(started);
        }
        Decision::Reject(r) => events.push(KnownEvent::new(
            "proposal.rejected",
            json!({"reason": r.reason(), "detail": r.detail(), "policy_version": policy.version}),
        )),
        Decision::Pending | Decision::Duplicate => {}
    }
    for event in &mut events {
        event.proposal_id = Some(id);
    }
    sql.push_str(&events_ctes(&mut p, &events, "p", now));
    // Long polls are woken after the commit (`notify_after`), not by a
    // NOTIFY here: see there why.
    sql.push_str(" SELECT (SELECT fp FROM v) AS fp, (SELECT count(*) FROM p) AS inserted");

    let row = db
        .query_one_raw(stmt(DbBackend::Postgres, &sql, p.values))
        .await?
        .ok_or_else(|| WorkflowError::Conflict("submit statement returned no row".into()))?;
    let stored_fp: i64 = row.try_get("", "fp")?;
    let inserted: i64 = row.try_get("", "inserted")?;
    if stored_fp != policy.fingerprint {
        return Ok(Written::Stale);
    }
    if inserted == 0 {
        return Ok(Written::Held);
    }
    if let Some(mid) = mission_id {
        tracing::debug!(mission_id = %mid, "mission started");
        for spec in &proposal.steps {
            metrics::counter!("opsloop_steps_total", "kind" => spec.kind.to_string(), "status" => "queued")
                .increment(1);
        }
    }
    let (outcome, gate_label) = match decision {
        Decision::Approve => ("approved", "auto_approve"),
        Decision::Pending | Decision::Duplicate => ("pending", "auto_approve"),
        Decision::Reject(r) => ("rejected", r.reason()),
    };
    metrics::counter!("opsloop_proposals_total", "outcome" => outcome, "gate" => gate_label)
        .increment(1);
    tracing::info!(proposal_id = %id, status = status.as_str(), gate = gate_label,
        policy_version = policy.version, "proposal submitted");
    Ok(Written::Done(Box::new(SubmitOutcome {
        proposal: ProposalView {
            proposal: model,
            mission_id,
        },
        deduplicated: false,
    })))
}

/// [`submit_proposal`] inside the caller's write transaction (from
/// [`crate::store::begin_write`]: `BEGIN IMMEDIATE` on SQLite), so the
/// caller's own rows (a trigger's fire ledger and cooldown, a reaction's
/// status) commit or roll back together with the proposal. The same gates,
/// run on `tx` only: no second connection or transaction is opened. The
/// caller commits; on error it must roll back (dropping `tx` does).
pub async fn submit_proposal_in(
    tx: &DatabaseTransaction,
    proposal: NewProposal,
    now: DateTime<Utc>,
) -> Result<SubmitOutcome> {
    let now = db_now(now);
    // Callers other than the api (triggers, reactions) get the same limits.
    let proposal = proposal.validate(&crate::domain::input::Limits::DEFAULT)?;
    let id = Uuid::now_v7();
    let steps_json = serde_json::to_value(&proposal.steps)
        .map_err(|e| WorkflowError::Corrupt(format!("steps: {e}")))?;
    let row = proposals::ActiveModel {
        id: Set(id),
        dedupe_key: Set(proposal.dedupe_key.as_ref().map(|k| k.as_str().to_owned())),
        source: Set(proposal.source.as_str().to_owned()),
        agent: Set(Some(proposal.agent.clone())),
        title: Set(proposal.title.clone()),
        status: Set(ProposalStatus::Pending.as_str().to_owned()),
        rejection_reason: Set(None),
        rejection_detail: Set(None),
        steps: Set(steps_json),
        parallel: Set(proposal.parallel),
        metadata: Set(proposal.metadata.clone()),
        policy_version: Set(0),
        trace_id: Set(proposal
            .trace_id
            .clone()
            .or_else(super::events::current_trace_id)),
        decided_by: Set(None),
        decided_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let inserted = proposals::Entity::insert(row)
        .on_conflict(
            OnConflict::column(proposals::Column::DedupeKey)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(tx)
        .await?;
    if inserted == 0 {
        // The key is held: return the holder, change nothing.
        let key = proposal.dedupe_key.as_ref().map(|k| k.as_str().to_owned());
        let existing = proposals::Entity::find()
            .from_raw_sql(stmt(
                tx.get_database_backend(),
                "SELECT * FROM proposals WHERE dedupe_key = $1",
                vec![key.clone().into()],
            ))
            .one(tx)
            .await?
            .ok_or_else(|| WorkflowError::Conflict(format!("dedupe key {key:?} vanished")))?;
        let view = with_mission(tx, existing).await?;
        metrics::counter!("opsloop_proposals_total", "outcome" => "deduplicated", "gate" => "dedupe")
            .increment(1);
        return Ok(SubmitOutcome {
            proposal: view,
            deduplicated: true,
        });
    }

    let policy = load_policy(tx).await?;
    let kinds: Vec<StepKind> = proposal.steps.iter().map(|s| s.kind.clone()).collect();
    let decision = judge(tx, &policy, &kinds, now).await?;

    let (status, decided_by, rejection) = match &decision {
        Decision::Approve => (
            ProposalStatus::Approved,
            Some("auto_approve".to_owned()),
            None,
        ),
        Decision::Pending | Decision::Duplicate => (ProposalStatus::Pending, None, None),
        Decision::Reject(r) => (
            ProposalStatus::Rejected,
            Some(r.reason().to_owned()),
            Some(r.clone()),
        ),
    };
    let mut active: proposals::ActiveModel = proposals::ActiveModel {
        id: Set(id),
        ..Default::default()
    };
    active.status = Set(status.as_str().to_owned());
    active.policy_version = Set(policy.version);
    active.decided_by = Set(decided_by.clone());
    active.decided_at = Set(status.is_final().then_some(now));
    if let Some(r) = &rejection {
        active.rejection_reason = Set(Some(r.reason().to_owned()));
        active.rejection_detail = Set(Some(r.detail()));
        // A gate-rejected proposal does not hold its key: tomorrow's retry
        // is judged afresh.
        active.dedupe_key = Set(None);
    }
    let stored = active.update(tx).await?;

    write_event(
        tx,
        EventRecord::api(
            "proposal.submitted",
            json!({"title": stored.title, "source": stored.source, "agent": stored.agent,
                   "step_kinds": kinds, "policy_version": policy.version}),
        )
        .proposal(id),
        now,
    )
    .await?;
    let mut mission_id = None;
    match &decision {
        Decision::Approve => {
            write_event(
                tx,
                EventRecord::api(
                    "proposal.approved",
                    json!({"decided_by": "auto_approve", "policy_version": policy.version}),
                )
                .proposal(id),
                now,
            )
            .await?;
            mission_id = Some(create_mission(tx, &stored, &policy, now).await?);
        }
        Decision::Reject(r) => {
            write_event(
                tx,
                EventRecord::api(
                    "proposal.rejected",
                    json!({"reason": r.reason(), "detail": r.detail(),
                           "policy_version": policy.version}),
                )
                .proposal(id),
                now,
            )
            .await?;
        }
        Decision::Pending | Decision::Duplicate => {}
    }

    let (outcome, gate_label) = match &decision {
        Decision::Approve => ("approved", "auto_approve"),
        Decision::Pending | Decision::Duplicate => ("pending", "auto_approve"),
        Decision::Reject(r) => ("rejected", r.reason()),
    };
    metrics::counter!("opsloop_proposals_total", "outcome" => outcome, "gate" => gate_label)
        .increment(1);
    tracing::info!(proposal_id = %id, status = status.as_str(), gate = gate_label,
        policy_version = policy.version, "proposal submitted");
    Ok(SubmitOutcome {
        proposal: ProposalView {
            proposal: stored,
            mission_id,
        },
        deduplicated: false,
    })
}

/// The gates after dedupe, with the caps reserved atomically: for each capped
/// kind (in kind order), a conditional upsert adds this proposal's steps to
/// today's counter only if the sum stays within the cap. A later failure
/// gives back what was reserved.
async fn judge(
    tx: &DatabaseTransaction,
    policy: &PolicySnapshot,
    kinds: &[StepKind],
    now: DateTime<Utc>,
) -> Result<Decision> {
    let input = gate_input(policy, kinds, now);
    let (day, caps) = match gate::plan(&input) {
        GatePlan::Decided(decision) => return Ok(decision),
        GatePlan::Reserve { day, caps } => (day, caps),
    };
    let backend = tx.get_database_backend();
    let mut reserved: Vec<(StepKind, u32)> = Vec::new();
    for capped in caps {
        let added = if capped.requested > capped.cap {
            0
        } else {
            tx.execute_raw(stmt(
                backend,
                "INSERT INTO daily_step_counts (kind, day, count) VALUES ($1, $2, $3) \
                 ON CONFLICT (kind, day) DO UPDATE SET count = daily_step_counts.count + excluded.count \
                 WHERE daily_step_counts.count + excluded.count <= $4",
                vec![
                    capped.kind.as_str().into(),
                    day.clone().into(),
                    i64::from(capped.requested).into(),
                    i64::from(capped.cap).into(),
                ],
            ))
            .await?
            .rows_affected()
        };
        if added == 0 {
            let used = count_for(tx, &capped.kind, &day).await?;
            for (kind, n) in reserved {
                release(tx, &kind, &day, n).await?;
            }
            let refusal = gate::cap_refusal(&capped, used, &day);
            return Ok(gate::finish(&input, Some(refusal)));
        }
        reserved.push((capped.kind.clone(), capped.requested));
    }
    Ok(gate::finish(&input, None))
}

async fn count_for(tx: &impl ConnectionTrait, kind: &StepKind, day: &str) -> Result<i64> {
    let row = tx
        .query_one_raw(stmt(
            tx.get_database_backend(),
            "SELECT count FROM daily_step_counts WHERE kind = $1 AND day = $2",
            vec![kind.as_str().into(), day.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<i64>("", "count")?,
        None => 0,
    })
}

async fn release(tx: &impl ConnectionTrait, kind: &StepKind, day: &str, n: u32) -> Result<()> {
    tx.execute_raw(stmt(
        tx.get_database_backend(),
        "UPDATE daily_step_counts SET count = CASE WHEN count >= $3 THEN count - $3 ELSE 0 END \
         WHERE kind = $1 AND day = $2",
        vec![kind.as_str().into(), day.into(), i64::from(n).into()],
    ))
    .await?;
    Ok(())
}

/// Gives back the daily-cap counts a pending proposal held (it was rejected
/// or expired). The day is the proposal's submit day in the gates' zone.
async fn release_caps(
    tx: &impl ConnectionTrait,
    policy: &PolicySnapshot,
    proposal: &proposals::Model,
) -> Result<()> {
    let specs: Vec<StepSpec> = serde_json::from_value(proposal.steps.clone())
        .map_err(|e| WorkflowError::Corrupt(format!("proposal {} steps: {e}", proposal.id)))?;
    let kinds: Vec<StepKind> = specs.into_iter().map(|s| s.kind).collect();
    let day = gate::day_key(proposal.created_at, &policy.step_gates);
    for capped in gate::capped_kinds(&policy.step_gates, &kinds) {
        release(tx, &capped.kind, &day, capped.requested).await?;
    }
    Ok(())
}

/// Creates the mission of an approved proposal with its queued steps.
/// `UNIQUE(missions.proposal_id)` makes a second attempt a no-op.
async fn create_mission(
    tx: &DatabaseTransaction,
    proposal: &proposals::Model,
    policy: &PolicySnapshot,
    now: DateTime<Utc>,
) -> Result<Uuid> {
    let specs: Vec<StepSpec> = serde_json::from_value(proposal.steps.clone())
        .map_err(|e| WorkflowError::Corrupt(format!("proposal {} steps: {e}", proposal.id)))?;
    let mission_id = Uuid::now_v7();
    let inserted = missions::Entity::insert(missions::ActiveModel {
        id: Set(mission_id),
        proposal_id: Set(proposal.id),
        title: Set(proposal.title.clone()),
        status: Set(MissionStatus::Running.as_str().to_owned()),
        parallel: Set(proposal.parallel),
        created_at: Set(now),
        updated_at: Set(now),
        finished_at: Set(None),
    })
    .on_conflict(
        OnConflict::column(missions::Column::ProposalId)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(tx)
    .await?;
    if inserted == 0 {
        return mission_of(tx, proposal.id)
            .await?
            .ok_or_else(|| WorkflowError::Conflict("mission vanished".into()));
    }
    let rows: Vec<mission_steps::ActiveModel> = specs
        .iter()
        .enumerate()
        .map(|(seq, spec)| mission_steps::ActiveModel {
            id: Set(Uuid::now_v7()),
            mission_id: Set(mission_id),
            seq: Set(i32::try_from(seq).unwrap_or(i32::MAX)),
            kind: Set(spec.kind.as_str().to_owned()),
            payload: Set(spec.payload.clone()),
            status: Set(StepStatus::Queued.as_str().to_owned()),
            attempt: Set(0),
            max_attempts: Set(i32::try_from(
                spec.max_attempts.unwrap_or(policy.worker.max_attempts),
            )
            .unwrap_or(i32::MAX)),
            lease_holder: Set(None),
            lease_expires_at: Set(None),
            next_attempt_at: Set(None),
            result: Set(None),
            error: Set(None),
            cost_usd: Set(None),
            created_at: Set(now),
            started_at: Set(None),
            finished_at: Set(None),
            updated_at: Set(now),
        })
        .collect();
    if !rows.is_empty() {
        // One multi-row insert, nothing returned.
        mission_steps::Entity::insert_many(rows)
            .exec_without_returning(tx)
            .await?;
    }
    // Wakes long-polling claims: the first step, or all when parallel.
    super::notify::notify_in(
        tx,
        "s.mission_id = $1 AND (s.seq = 0 OR $2)",
        vec![mission_id.into(), proposal.parallel.into()],
    )
    .await?;
    write_event(
        tx,
        EventRecord::api(
            "mission.started",
            json!({"title": proposal.title, "step_count": specs.len(), "parallel": proposal.parallel}),
        )
        .proposal(proposal.id)
        .mission(mission_id),
        now,
    )
    .await?;
    for spec in &specs {
        metrics::counter!("opsloop_steps_total", "kind" => spec.kind.to_string(), "status" => "queued")
            .increment(1);
    }
    Ok(mission_id)
}

async fn mission_of(tx: &impl ConnectionTrait, proposal_id: Uuid) -> Result<Option<Uuid>> {
    let row = tx
        .query_one_raw(stmt(
            tx.get_database_backend(),
            "SELECT id FROM missions WHERE proposal_id = $1",
            vec![proposal_id.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => Some(row.try_get::<Uuid>("", "id")?),
        None => None,
    })
}

async fn with_mission(
    tx: &impl ConnectionTrait,
    proposal: proposals::Model,
) -> Result<ProposalView> {
    let mission_id = mission_of(tx, proposal.id).await?;
    Ok(ProposalView {
        proposal,
        mission_id,
    })
}

/// Writes the database audit row; the file copy is appended after commit.
pub(crate) async fn audit_row(tx: &impl ConnectionTrait, record: &AuditRecord) -> Result<()> {
    audit_events::ActiveModel {
        id: sea_orm::ActiveValue::NotSet,
        actor: Set(record.actor.clone()),
        action: Set(record.action.clone()),
        subject: Set(record.subject.clone()),
        before: Set(record.before.clone()),
        after: Set(record.after.clone()),
        reason: Set(record.reason.clone()),
        created_at: Set(record.at),
    }
    .insert(tx)
    .await?;
    Ok(())
}

/// Appends to the audit file; a failure is logged, never undoes the change
/// (the database row is the record of truth).
pub fn audit_file(audit: Option<&AuditLog>, record: &AuditRecord) {
    if let Some(log) = audit
        && let Err(error) = log.append(record)
    {
        tracing::error!(%error, action = %record.action, subject = %record.subject,
            "cannot append to the audit log file");
    }
}

/// Decides a pending proposal. Shared by approve and reject.
async fn decide(
    db: &DatabaseConnection,
    id: Uuid,
    to: ProposalStatus,
    actor: &str,
    reason: Option<&str>,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<ProposalView> {
    let now = db_now(now);
    let tx = begin_write(db).await?;
    let backend = tx.get_database_backend();
    let changed = match to {
        ProposalStatus::Approved => {
            tx.execute_raw(stmt(
                backend,
                "UPDATE proposals SET status = 'approved', decided_by = $2, decided_at = $3, updated_at = $3 \
                 WHERE id = $1 AND status = 'pending'",
                vec![id.into(), actor.into(), now.into()],
            ))
            .await?
        }
        _ => {
            tx.execute_raw(stmt(
                backend,
                "UPDATE proposals SET status = 'rejected', decided_by = $2, decided_at = $3, updated_at = $3, \
                 rejection_reason = 'manual', rejection_detail = $4 \
                 WHERE id = $1 AND status = 'pending'",
                vec![id.into(), actor.into(), now.into(), reason.map(str::to_owned).into()],
            ))
            .await?
        }
    }
    .rows_affected();
    let proposal = proposals::Entity::find_by_id(id)
        .one(&tx)
        .await?
        .ok_or_else(|| WorkflowError::not_found("proposal", id))?;
    if changed == 0 {
        let current: ProposalStatus = proposal
            .status
            .parse()
            .map_err(|e| WorkflowError::Corrupt(format!("{e}")))?;
        if current == to && to == ProposalStatus::Approved {
            // Approving twice returns the first approval (one mission).
            let view = with_mission(&tx, proposal).await?;
            tx.commit().await?;
            return Ok(view);
        }
        current.transition(to)?;
    }
    let policy = load_policy(&tx).await?;
    let mut mission_id = None;
    let action = if to == ProposalStatus::Approved {
        write_event(
            &tx,
            EventRecord::api(
                "proposal.approved",
                json!({"decided_by": actor, "comment": reason}),
            )
            .proposal(id),
            now,
        )
        .await?;
        mission_id = Some(create_mission(&tx, &proposal, &policy, now).await?);
        "proposal.approve"
    } else {
        release_caps(&tx, &policy, &proposal).await?;
        write_event(
            &tx,
            EventRecord::api(
                "proposal.rejected",
                json!({"reason": "manual", "detail": reason, "decided_by": actor}),
            )
            .proposal(id),
            now,
        )
        .await?;
        "proposal.reject"
    };
    let record = AuditRecord {
        at: now,
        actor: actor.to_owned(),
        action: action.to_owned(),
        subject: format!("proposal/{id}"),
        reason: reason.map(str::to_owned),
        before: Some(json!({"status": "pending"})),
        after: Some(json!({"status": to.as_str(), "mission_id": mission_id})),
    };
    audit_row(&tx, &record).await?;
    tx.commit().await?;
    audit_file(audit, &record);
    metrics::counter!("opsloop_proposals_total", "outcome" => to.as_str(), "gate" => "manual")
        .increment(1);
    tracing::info!(proposal_id = %id, status = to.as_str(), actor, "proposal decided");
    Ok(ProposalView {
        proposal,
        mission_id,
    })
}

/// ApproveProposal: pending → approved, creating the mission in the same
/// transaction. Approving an approved proposal returns it unchanged.
pub async fn approve_proposal(
    db: &DatabaseConnection,
    id: Uuid,
    actor: &str,
    comment: Option<&str>,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<ProposalView> {
    decide(db, id, ProposalStatus::Approved, actor, comment, audit, now).await
}

/// RejectProposal: pending → rejected (`manual`), giving back its cap counts.
pub async fn reject_proposal(
    db: &DatabaseConnection,
    id: Uuid,
    actor: &str,
    reason: &str,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<ProposalView> {
    decide(
        db,
        id,
        ProposalStatus::Rejected,
        actor,
        Some(reason),
        audit,
        now,
    )
    .await
}

/// Expires proposals pending for longer than `max_age` (the heartbeat calls
/// it with 7 days). Returns the expired ids.
pub async fn expire_stale_proposals(
    db: &DatabaseConnection,
    max_age: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>> {
    let now = db_now(now);
    let tx = begin_write(db).await?;
    let backend = tx.get_database_backend();
    let stale = proposals::Entity::find()
        .from_raw_sql(stmt(
            backend,
            &format!(
                "SELECT * FROM proposals WHERE status = 'pending' AND created_at < $1 \
                 ORDER BY created_at LIMIT 500{}",
                super::for_update(backend)
            ),
            vec![(now - max_age).into()],
        ))
        .all(&tx)
        .await?;
    let policy = load_policy(&tx).await?;
    let mut expired = Vec::with_capacity(stale.len());
    for proposal in stale {
        let changed = tx
            .execute_raw(stmt(
                backend,
                "UPDATE proposals SET status = 'expired', decided_by = 'heartbeat', decided_at = $2, \
                 updated_at = $2 WHERE id = $1 AND status = 'pending'",
                vec![proposal.id.into(), now.into()],
            ))
            .await?
            .rows_affected();
        if changed == 0 {
            continue;
        }
        release_caps(&tx, &policy, &proposal).await?;
        write_event(
            &tx,
            EventRecord::api(
                "proposal.expired",
                json!({"created_at": proposal.created_at, "max_age_seconds": max_age.num_seconds()}),
            )
            .proposal(proposal.id),
            now,
        )
        .await?;
        expired.push(proposal.id);
    }
    tx.commit().await?;
    if !expired.is_empty() {
        tracing::info!(count = expired.len(), "expired stale proposals");
    }
    Ok(expired)
}

/// One proposal.
pub async fn get_proposal(db: &DatabaseConnection, id: Uuid) -> Result<ProposalView> {
    let proposal = proposals::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| WorkflowError::not_found("proposal", id))?;
    with_mission(db, proposal).await
}

/// Filters of ListProposals.
#[derive(Debug, Clone, Default)]
pub struct ProposalFilter {
    pub status: Option<ProposalStatus>,
    pub source: Option<String>,
    pub agent: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Continue after this (created_at, id), newest first.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: u64,
}

/// Proposals newest first.
pub async fn list_proposals(
    db: &DatabaseConnection,
    filter: &ProposalFilter,
) -> Result<Vec<ProposalView>> {
    let mut sql = String::from("SELECT * FROM proposals WHERE 1=1");
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
    if let Some(source) = &filter.source {
        add(" AND source = $?", vec![source.clone().into()], &mut sql);
    }
    if let Some(agent) = &filter.agent {
        add(" AND agent = $?", vec![agent.clone().into()], &mut sql);
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
    let rows = proposals::Entity::find()
        .from_raw_sql(stmt(db.get_database_backend(), &sql, values))
        .all(db)
        .await?;
    let mut views = Vec::with_capacity(rows.len());
    for row in rows {
        views.push(with_mission(db, row).await?);
    }
    Ok(views)
}

/// Pending proposals created in `(after, before]`, oldest first, at most
/// `limit`: the ones that have waited for a decision longer than a notice
/// threshold (`before` = now − threshold) and were not announced yet
/// (`after` = the newest one announced).
pub async fn pending_proposals_between(
    db: &impl ConnectionTrait,
    after: Option<DateTime<Utc>>,
    before: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<proposals::Model>> {
    let mut sql =
        String::from("SELECT * FROM proposals WHERE status = 'pending' AND created_at <= $1");
    let mut values: Vec<sea_orm::Value> = vec![db_now(before).into()];
    if let Some(after) = after {
        sql.push_str(" AND created_at > $2");
        values.push(db_now(after).into());
    }
    sql.push_str(&format!(
        " ORDER BY created_at, id LIMIT {}",
        limit.clamp(1, 1000)
    ));
    Ok(proposals::Entity::find()
        .from_raw_sql(stmt(db.get_database_backend(), &sql, values))
        .all(db)
        .await?)
}

/// How many proposals wait for a decision, and the `oldest` of them (at
/// most that many), oldest first: the daily summary's list.
pub async fn pending_proposals_oldest(
    db: &impl ConnectionTrait,
    oldest: u64,
) -> Result<(i64, Vec<proposals::Model>)> {
    let backend = db.get_database_backend();
    let count = super::ops::scalar(
        db,
        "SELECT COUNT(*) AS n FROM proposals WHERE status = 'pending'",
        vec![],
    )
    .await?;
    let rows = proposals::Entity::find()
        .from_raw_sql(stmt(
            backend,
            &format!(
                "SELECT * FROM proposals WHERE status = 'pending' \
                 ORDER BY created_at, id LIMIT {}",
                oldest.clamp(1, 1000)
            ),
            vec![],
        ))
        .all(db)
        .await?;
    Ok((count, rows))
}
