//! The loop's database side: every state change of DESIGN.md "The loop" as
//! one transaction that also writes its event row and an outbox row. The
//! rules themselves live in [`crate::domain`]; this module reads what they
//! need, asks them, and writes the outcome. Time is always passed in
//! (`now`), so callers and tests control the clock.
//!
//! Concurrency: on PostgreSQL, rows are claimed with `FOR UPDATE SKIP
//! LOCKED` and every multi-row change locks the mission row first (one lock
//! order, no deadlocks); on SQLite every write transaction is `BEGIN
//! IMMEDIATE`, so writers are serialized and conditional updates checked by
//! `rows_affected` give the same guarantees.

pub mod events;
pub mod governance;
pub mod missions;
pub mod notify;
pub mod ops;
pub mod outbox;
pub mod pauses;
pub mod policy;
pub mod proposals;
pub mod repair;
pub mod rollouts;
mod sql;
pub mod triggers;

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr};

use crate::domain::input::ValidationError;
use crate::domain::policy::{
    AutoApprove, EmergencyStop, PolicyKey, PolicyValue, StepGates, WorkerPolicy,
};
use crate::domain::status::IllegalTransition;

pub use events::{
    EventFilter, OutboxMessage, append_event, append_event_in, enqueue_message, list_events,
};
pub use governance::{RateLimit, ResourceRate};
pub use missions::{
    ClaimBatch, ClaimOutcome, MissionFilter, MissionView, RecoveryReport, cancel_mission,
    claim_statements, claim_step, claim_step_cached, claim_steps_cached, claim_steps_governed,
    complete_step, complete_step_with_usage, fail_step, fail_step_with_usage, get_mission,
    list_missions, recover_stale_steps, renew_lease,
};
pub use ops::{HealthFigures, SummaryFigures, SummaryPeriod, health, leases, summary};
pub use pauses::{KindPause, PauseChange, paused_kinds, sync_source_pauses};
pub use policy::{
    EmergencyStopChange, PolicyChange, emergency_stop_state, engage_emergency_stop, get_policy,
    list_policies, policy_history, release_emergency_stop, set_policy,
};
pub use proposals::{
    ProposalFilter, ProposalView, SubmitOutcome, approve_proposal, audit_file,
    expire_stale_proposals, get_proposal, list_proposals, pending_proposals_between,
    pending_proposals_oldest, reject_proposal, submit_proposal, submit_proposal_cached,
    submit_proposal_in, submit_proposals_cached,
};
pub use repair::{
    DeadLetterFilter, RetryOutcome, get_dead_letter, list_dead_letters, list_quarantined_events,
    retry_dead_letter, retry_quarantined_event,
};

/// What a workflow operation can fail with, in the domain's words. The api
/// maps each variant to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// Bad input (`INVALID_ARGUMENT`).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// Unknown id or key (`NOT_FOUND`).
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },
    /// The state machine forbids it (`FAILED_PRECONDITION`).
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    /// The caller does not hold the current lease (`FAILED_PRECONDITION`).
    #[error("step {step_id}: {reason}")]
    LeaseLost { step_id: String, reason: String },
    /// A compare-and-set lost (`FAILED_PRECONDITION`).
    #[error("{0}")]
    Conflict(String),
    /// A unique name is taken (`ALREADY_EXISTS`).
    #[error("{0}")]
    AlreadyExists(String),
    /// A stored value no longer parses (`INTERNAL`).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The database failed (`UNAVAILABLE`).
    #[error("database: {0}")]
    Db(#[from] DbErr),
}

impl WorkflowError {
    pub(crate) fn not_found(entity: &'static str, id: impl ToString) -> Self {
        Self::NotFound {
            entity,
            id: id.to_string(),
        }
    }
}

/// The one mapping of workflow errors to gRPC statuses.
impl From<WorkflowError> for tonic::Status {
    fn from(error: WorkflowError) -> Self {
        match &error {
            WorkflowError::Invalid(v) => {
                tonic::Status::invalid_argument(format!("{}: {}", v.field, v.reason))
            }
            WorkflowError::NotFound { .. } => tonic::Status::not_found(error.to_string()),
            WorkflowError::Illegal(_)
            | WorkflowError::LeaseLost { .. }
            | WorkflowError::Conflict(_) => tonic::Status::failed_precondition(error.to_string()),
            WorkflowError::AlreadyExists(_) => tonic::Status::already_exists(error.to_string()),
            WorkflowError::Corrupt(_) => {
                tracing::error!(%error, "stored data is invalid");
                tonic::Status::internal(error.to_string())
            }
            WorkflowError::Db(_) => {
                tracing::error!(%error, "database error");
                let mut status = tonic::Status::unavailable(DATABASE_UNAVAILABLE);
                // Lets clients tell "the api is up, its database is not"
                // from "cannot connect to the api".
                status.metadata_mut().insert(
                    UNAVAILABLE_CAUSE_HEADER,
                    tonic::metadata::MetadataValue::from_static("database"),
                );
                status
            }
        }
    }
}

pub type Result<T, E = WorkflowError> = std::result::Result<T, E>;

/// The message of the api's UNAVAILABLE when its database failed.
pub const DATABASE_UNAVAILABLE: &str = "database unavailable, retry later";

/// Metadata key on an api UNAVAILABLE naming what is unavailable
/// (`database`); absent on transport failures, which never reached the api.
pub const UNAVAILABLE_CAUSE_HEADER: &str = "opsloop-unavailable";

/// Timestamps are stored with microsecond precision (PostgreSQL's); cutting
/// `now` to that keeps what we return equal to what we stored.
pub fn db_now(now: DateTime<Utc>) -> DateTime<Utc> {
    now.trunc_subsecs(6)
}

pub(crate) async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction> {
    Ok(crate::store::begin_write(db).await?)
}

pub(crate) use crate::store::{for_update, stmt};

/// Locks a mission row (PostgreSQL) so changes to it and its steps happen in
/// one order everywhere: mission first, then steps.
pub(crate) async fn lock_mission(
    tx: &DatabaseTransaction,
    mission_id: uuid::Uuid,
) -> Result<Option<String>> {
    let backend = tx.get_database_backend();
    let row = tx
        .query_one_raw(stmt(
            backend,
            &format!(
                "SELECT status FROM missions WHERE id = $1{}",
                for_update(backend)
            ),
            vec![mission_id.into()],
        ))
        .await?;
    match row {
        Some(row) => Ok(Some(row.try_get::<String>("", "status")?)),
        None => Ok(None),
    }
}

/// The policy values the loop consults, read in one query.
#[derive(Debug, Clone)]
pub struct PolicySnapshot {
    pub version: i64,
    /// Sum of every policy row's version: every policy write raises one
    /// row's version (history ids only grow, and writers of one key are
    /// serialized by its row lock), so this number grows with every
    /// committed change — in commit order, unlike `MAX(policy_history.id)`
    /// (ids are taken before commit). A write statement that checks it
    /// against `FINGERPRINT_SQL` never acts on a stale snapshot.
    pub fingerprint: i64,
    pub auto_approve: AutoApprove,
    pub step_gates: StepGates,
    pub worker: WorkerPolicy,
    pub emergency_stop: EmergencyStop,
    pub ops_health: crate::domain::policy::OpsHealth,
    /// Toggle key → enabled.
    pub toggles: BTreeMap<String, bool>,
    /// Upstream resources and the kinds using them (rate governance).
    pub resources: crate::domain::governance::Resources,
    /// Cost per upstream call.
    pub pricing: crate::domain::governance::Pricing,
}

/// The current policy fingerprint (see [`PolicySnapshot::fingerprint`]) as
/// a scalar subquery, for folding into write statements.
pub(crate) const FINGERPRINT_SQL: &str =
    "SELECT CAST(COALESCE(SUM(version), 0) AS BIGINT) FROM policy";

/// Reads every policy row in one statement: the values, the global version
/// (the newest row version, i.e. the last history id) and the fingerprint.
pub async fn load_policy(db: &impl ConnectionTrait) -> Result<PolicySnapshot> {
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(stmt(
            backend,
            "SELECT key, value, version FROM policy",
            vec![],
        ))
        .await?;
    let mut snapshot = PolicySnapshot {
        version: 0,
        fingerprint: 0,
        auto_approve: AutoApprove {
            enabled: false,
            allowed_kinds: vec![],
        },
        step_gates: StepGates {
            timezone: "UTC".into(),
            kinds: BTreeMap::new(),
        },
        worker: WorkerPolicy::default(),
        emergency_stop: EmergencyStop::default(),
        ops_health: Default::default(),
        toggles: BTreeMap::new(),
        resources: Default::default(),
        pricing: Default::default(),
    };
    for row in rows {
        let key: String = row.try_get("", "key")?;
        let value: serde_json::Value = row.try_get("", "value")?;
        let version: i64 = row.try_get("", "version")?;
        snapshot.version = snapshot.version.max(version);
        snapshot.fingerprint = snapshot.fingerprint.wrapping_add(version);
        let Ok(parsed_key) = PolicyKey::parse(&key) else {
            continue;
        };
        let parsed = PolicyValue::parse(&parsed_key, &value)
            .map_err(|e| WorkflowError::Corrupt(format!("policy {key}: {e}")))?;
        match parsed {
            PolicyValue::AutoApprove(v) => snapshot.auto_approve = v,
            PolicyValue::StepGates(v) => snapshot.step_gates = v,
            PolicyValue::WorkerPolicy(v) => snapshot.worker = v,
            PolicyValue::EmergencyStop(v) => snapshot.emergency_stop = v,
            PolicyValue::OpsHealth(v) => snapshot.ops_health = v,
            PolicyValue::Resources(v) => snapshot.resources = v,
            PolicyValue::Pricing(v) => snapshot.pricing = v,
            PolicyValue::Toggle(t) => {
                snapshot.toggles.insert(key, t.enabled);
            }
            _ => {}
        }
    }
    Ok(snapshot)
}

/// The policy snapshot of one api process, shared by its handlers. It is
/// never trusted blindly: the hot-path write statements carry the
/// snapshot's fingerprint and write nothing when the stored policy differs
/// (then the cache is reloaded and the work judged again), so no decision
/// is taken against a policy older than the statement that records it.
///
/// It also keeps the database outages this process observed
/// ([`OutageLog`]), which the claim uses so that time the database could
/// not be reached does not count against a lease.
#[derive(Debug, Clone, Default)]
pub struct PolicyCache {
    current: std::sync::Arc<std::sync::RwLock<Option<std::sync::Arc<PolicySnapshot>>>>,
    outages: OutageLog,
    /// The fingerprint whose resource buckets this process made sure exist
    /// (see [`governance::ensure_rates`]); 0: none yet.
    rates_ensured: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl PolicyCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The database outages this process observed.
    pub fn outages(&self) -> &OutageLog {
        &self.outages
    }

    /// Creates the buckets of the snapshot's resources once per policy
    /// fingerprint (a new resource gets its row before its first claim).
    pub(crate) async fn ensure_rates(
        &self,
        db: &impl ConnectionTrait,
        snapshot: &PolicySnapshot,
        now: DateTime<Utc>,
    ) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.rates_ensured.load(Ordering::Relaxed) == snapshot.fingerprint {
            return Ok(());
        }
        governance::ensure_rates(db, &snapshot.resources, now).await?;
        self.rates_ensured
            .store(snapshot.fingerprint, Ordering::Relaxed);
        Ok(())
    }

    /// Forgets that the buckets exist (a claim found one missing).
    pub(crate) fn rates_missing(&self) {
        self.rates_ensured
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// The cached snapshot, loaded on first use.
    pub async fn get(&self, db: &impl ConnectionTrait) -> Result<std::sync::Arc<PolicySnapshot>> {
        let cached = self.current.read().ok().and_then(|c| c.clone());
        match cached {
            Some(snapshot) => Ok(snapshot),
            None => self.reload(db).await,
        }
    }

    /// Reads the policy again (a write found the snapshot stale).
    pub async fn reload(
        &self,
        db: &impl ConnectionTrait,
    ) -> Result<std::sync::Arc<PolicySnapshot>> {
        let fresh = std::sync::Arc::new(load_policy(db).await?);
        if let Ok(mut current) = self.current.write() {
            // Keep the newer of two racing reloads.
            let newer = current
                .as_ref()
                .is_none_or(|c| c.fingerprint <= fresh.fingerprint);
            if newer {
                *current = Some(fresh.clone());
            }
        }
        metrics::counter!("opsloop_policy_cache_reloads_total").increment(1);
        Ok(fresh)
    }
}

/// The last database outage one api process observed (from its own failed
/// and then successful claims, on its injected clock). A lease that was live
/// during it is extended by its length before a claim may take it, so time
/// nobody could report in is not held against the lease holder.
#[derive(Debug, Clone, Default)]
pub struct OutageLog {
    state: std::sync::Arc<std::sync::Mutex<OutageState>>,
}

#[derive(Debug, Default)]
struct OutageState {
    since: Option<DateTime<Utc>>,
    last: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// What a claim must credit to leases: those that expired after `start`
/// and started before `end` get `end - start` more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutageCredit {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl OutageLog {
    /// A call failed because the database could not be reached.
    pub fn failed(&self, now: DateTime<Utc>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.since.is_none() {
            tracing::warn!(since = %now, "database unreachable: leases are credited until it is back");
            state.since = Some(now);
        }
    }

    /// A call succeeded: an ongoing outage ended at `now`.
    pub fn succeeded(&self, now: DateTime<Utc>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = state.since.take() {
            tracing::info!(%since, until = %now, "database reachable again");
            state.last = Some((since, now.max(since)));
        }
    }

    /// The window to credit at `now`: an outage still open counts as ending
    /// now (this call may be the first to get through), else the last one.
    pub fn credit(&self, now: DateTime<Utc>) -> Option<OutageCredit> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.since {
            Some(start) => Some(OutageCredit {
                start,
                end: now.max(start),
            }),
            None => state.last.map(|(start, end)| OutageCredit { start, end }),
        }
    }
}

/// A page size: 0 means the default (50); capped at 500.
pub fn page_size(requested: u32) -> u64 {
    match requested {
        0 => 50,
        n => u64::from(n.min(500)),
    }
}

#[cfg(test)]
mod rollout_tests;
#[cfg(test)]
mod tests;
