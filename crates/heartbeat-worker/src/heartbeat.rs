//! One heartbeat: the tick. Leader lease first (one leader at a time, with
//! a fencing token), ticks never overlap (a tick due while one runs is
//! skipped and counted), then the phases in order, each in its own task
//! with its own time budget, so an error, timeout or panic in one is
//! recorded and the next still runs. Each tick is written to
//! `heartbeat_runs`, emitted as a `heartbeat.tick` event (and
//! `heartbeat.phase_error` when partial), measured and logged once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Utc};
use opsloop_core::audit::AuditLog;
use opsloop_core::domain::input::{EventKind, NewEvent};
use opsloop_core::store::entities::heartbeat_runs;
use opsloop_core::workflow::{self, WorkflowError, db_now};
use sea_orm::{ActiveModelTrait, DatabaseConnection, DatabaseTransaction, DbErr, Set};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::Instrument;
use uuid::Uuid;

use crate::config::{HeartbeatSettings, SettingsError};
use crate::db;
use crate::insights::{BuiltinSummarizer, Summarizer};
use crate::matching::SpecError;
use crate::schedule::{CronSchedule, TickSchedule};

/// The lease row every heartbeat competes for.
pub const LEASE_NAME: &str = "heartbeat.leader";

/// What a phase or tick can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    #[error("summarizer failed: {0}")]
    Summarizer(String),
    #[error("injected fault")]
    Injected,
}

/// The phases, in the order a tick runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Triggers,
    Reactions,
    Insights,
    Recovery,
    OpsHealth,
    Governance,
    Budget,
    /// The active staged rollout: its go/no-go report, rollback on a
    /// failed criterion, automatic advance when configured.
    Rollout,
    DailySummary,
    WeeklyReport,
}

impl Phase {
    pub const ALL: [Phase; 10] = [
        Phase::Triggers,
        Phase::Reactions,
        Phase::Insights,
        Phase::Recovery,
        Phase::OpsHealth,
        Phase::Governance,
        Phase::Budget,
        Phase::Rollout,
        Phase::DailySummary,
        Phase::WeeklyReport,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Triggers => "triggers",
            Self::Reactions => "reactions",
            Self::Insights => "insights",
            Self::Recovery => "recovery",
            Self::OpsHealth => "ops_health",
            Self::Governance => "governance",
            Self::Budget => "budget",
            Self::Rollout => "rollout",
            Self::DailySummary => "daily_summary",
            Self::WeeklyReport => "weekly_report",
        }
    }
}

/// A fault injected into a phase (failure drills and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Panic,
    Fail,
    Delay(StdDuration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseStatus {
    Ok,
    Error,
    Timeout,
    Panicked,
    Skipped,
}

/// One phase's result in a tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseResult {
    pub phase: Phase,
    pub status: PhaseStatus,
    pub duration_ms: u64,
    pub counts: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TickReport {
    pub id: Uuid,
    pub tick_at: DateTime<Utc>,
    pub leader: String,
    pub fencing_token: i64,
    /// `ok`, or `partial` when any phase did not finish cleanly.
    pub status: &'static str,
    pub duration_ms: u64,
    pub phases: Vec<PhaseResult>,
}

impl TickReport {
    pub fn phase(&self, phase: Phase) -> Option<&PhaseResult> {
        self.phases.iter().find(|p| p.phase == phase)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// A tick was still running.
    Overlap,
    /// Another instance holds the leader lease.
    NotLeader,
}

/// What [`Heartbeat::tick`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TickOutcome {
    Ran(TickReport),
    Skipped {
        reason: SkipReason,
        holder: Option<String>,
    },
}

pub(crate) struct Inner {
    pub db: DatabaseConnection,
    pub audit: Option<Arc<AuditLog>>,
    pub settings: HeartbeatSettings,
    pub instance_id: String,
    pub tick_schedule: TickSchedule,
    pub summary_schedule: CronSchedule,
    pub weekly_schedule: CronSchedule,
    pub summarizer: Arc<dyn Summarizer>,
    tick_lock: tokio::sync::Mutex<()>,
    ticks: AtomicU64,
    faults: Mutex<BTreeMap<Phase, Fault>>,
}

/// The heartbeat: cheap to clone, shared by the loop, `POST /run` and the
/// reaction consumer.
#[derive(Clone)]
pub struct Heartbeat {
    pub(crate) inner: Arc<Inner>,
}

impl Heartbeat {
    /// A heartbeat with the built-in summarizer.
    pub fn new(
        db: DatabaseConnection,
        audit: Option<Arc<AuditLog>>,
        settings: HeartbeatSettings,
    ) -> Result<Self, SettingsError> {
        Self::with_summarizer(db, audit, settings, Arc::new(BuiltinSummarizer))
    }

    pub fn with_summarizer(
        db: DatabaseConnection,
        audit: Option<Arc<AuditLog>>,
        settings: HeartbeatSettings,
        summarizer: Arc<dyn Summarizer>,
    ) -> Result<Self, SettingsError> {
        let schedules = settings.validate()?;
        let instance_id = settings.resolved_instance_id();
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                audit,
                settings,
                instance_id,
                tick_schedule: schedules.tick,
                summary_schedule: schedules.summary,
                weekly_schedule: schedules.weekly,
                summarizer,
                tick_lock: tokio::sync::Mutex::new(()),
                ticks: AtomicU64::new(0),
                faults: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    pub fn settings(&self) -> &HeartbeatSettings {
        &self.inner.settings
    }

    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    pub fn tick_schedule(&self) -> &TickSchedule {
        &self.inner.tick_schedule
    }

    /// Makes `phase` panic, fail or stall on every tick from now on.
    pub fn inject_fault(&self, phase: Phase, fault: Fault) {
        self.inner
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(phase, fault);
    }

    fn fault(&self, phase: Phase) -> Option<Fault> {
        self.inner
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&phase)
            .copied()
    }

    fn budget(&self, phase: Phase) -> StdDuration {
        let s = &self.inner.settings;
        StdDuration::from_millis(match phase {
            Phase::Triggers => s.triggers_budget_ms,
            Phase::Reactions => s.reactions_budget_ms,
            _ => s.phase_budget_ms,
        })
    }

    fn lease_ttl(&self) -> chrono::Duration {
        chrono::Duration::seconds(i64::try_from(self.inner.settings.lease_secs).unwrap_or(30))
    }

    /// Takes or renews the leader lease at `now`.
    pub async fn acquire_lease(&self, now: DateTime<Utc>) -> Result<Option<db::LeaseGrant>, DbErr> {
        db::acquire_lease(
            &self.inner.db,
            LEASE_NAME,
            &self.inner.instance_id,
            self.lease_ttl(),
            now,
        )
        .await
    }

    /// Whether this instance holds the leader lease at `now` (without
    /// renewing it: the tick loop does that).
    pub async fn is_leader(&self, now: DateTime<Utc>) -> Result<bool, DbErr> {
        Ok(db::lease_holder(&self.inner.db, LEASE_NAME)
            .await?
            .is_some_and(|(holder, expires_at)| {
                holder == self.inner.instance_id && expires_at > now
            }))
    }

    /// Gives up the lease (graceful shutdown).
    pub async fn release_lease(&self, now: DateTime<Utc>) -> Result<(), DbErr> {
        db::release_lease(&self.inner.db, LEASE_NAME, &self.inner.instance_id, now).await
    }

    /// Runs one tick at `now` (injected clock) if this instance is the
    /// leader and no tick is running.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<TickOutcome, HeartbeatError> {
        let Ok(_running) = self.inner.tick_lock.try_lock() else {
            metrics::counter!("opsloop_heartbeat_ticks_skipped_total", "reason" => "overlap")
                .increment(1);
            tracing::warn!(instance = %self.inner.instance_id, "tick skipped: the previous tick is still running");
            return Ok(TickOutcome::Skipped {
                reason: SkipReason::Overlap,
                holder: None,
            });
        };
        let now = db_now(now);
        let Some(grant) = self.acquire_lease(now).await? else {
            let holder = db::lease_holder(&self.inner.db, LEASE_NAME)
                .await?
                .map(|(h, _)| h);
            metrics::counter!("opsloop_heartbeat_ticks_skipped_total", "reason" => "not_leader")
                .increment(1);
            tracing::debug!(instance = %self.inner.instance_id, holder = ?holder, "standing by: not the leader");
            return Ok(TickOutcome::Skipped {
                reason: SkipReason::NotLeader,
                holder,
            });
        };
        let started = Instant::now();
        let tick_no = self.inner.ticks.fetch_add(1, Ordering::SeqCst);
        let mut phases = Vec::with_capacity(Phase::ALL.len());
        let mut lease_lost = false;
        for (i, phase) in Phase::ALL.into_iter().enumerate() {
            if i > 0 && !lease_lost {
                let at = now + chrono::Duration::from_std(started.elapsed()).unwrap_or_default();
                lease_lost = !matches!(self.acquire_lease(at).await, Ok(Some(g)) if g.fencing_token == grant.fencing_token);
                if lease_lost {
                    tracing::warn!(instance = %self.inner.instance_id, phase = phase.as_str(),
                        "leader lease lost mid-tick; remaining phases skipped");
                }
            }
            if lease_lost {
                phases.push(PhaseResult {
                    phase,
                    status: PhaseStatus::Skipped,
                    duration_ms: 0,
                    counts: Value::Null,
                    error: Some("leader lease lost".into()),
                });
                continue;
            }
            phases.push(self.run_isolated(phase, now, tick_no).await);
        }
        let partial = phases.iter().any(|p| p.status != PhaseStatus::Ok);
        let report = TickReport {
            id: Uuid::now_v7(),
            tick_at: now,
            leader: self.inner.instance_id.clone(),
            fencing_token: grant.fencing_token,
            status: if partial { "partial" } else { "ok" },
            duration_ms: started.elapsed().as_millis() as u64,
            phases,
        };
        if let Err(error) = self.record(&report).await {
            tracing::error!(%error, tick_id = %report.id, "cannot record the tick");
        }
        metrics::counter!("opsloop_heartbeat_ticks_total", "status" => report.status).increment(1);
        metrics::histogram!("opsloop_heartbeat_tick_seconds")
            .record(started.elapsed().as_secs_f64());
        let failed: Vec<&str> = report
            .phases
            .iter()
            .filter(|p| p.status != PhaseStatus::Ok)
            .map(|p| p.phase.as_str())
            .collect();
        tracing::info!(tick_id = %report.id, tick_at = %report.tick_at, status = report.status,
            fencing_token = report.fencing_token, duration_ms = report.duration_ms,
            failed_phases = ?failed, "heartbeat tick");
        Ok(TickOutcome::Ran(report))
    }

    /// Runs `phase` in its own task within its budget.
    async fn run_isolated(&self, phase: Phase, now: DateTime<Utc>, tick_no: u64) -> PhaseResult {
        let started = Instant::now();
        let hb = self.clone();
        let span = tracing::info_span!("heartbeat_phase", phase = phase.as_str(), tick = tick_no);
        let mut handle =
            tokio::spawn(async move { hb.run_phase(phase, now, tick_no).await }.instrument(span));
        let budget = self.budget(phase);
        let (status, counts, error) = match tokio::time::timeout(budget, &mut handle).await {
            Ok(Ok(Ok(counts))) => (PhaseStatus::Ok, counts, None),
            Ok(Ok(Err(e))) => (PhaseStatus::Error, Value::Null, Some(e.to_string())),
            Ok(Err(join)) if join.is_panic() => {
                let payload = join.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                (PhaseStatus::Panicked, Value::Null, Some(message))
            }
            Ok(Err(join)) => (PhaseStatus::Error, Value::Null, Some(join.to_string())),
            Err(_) => {
                handle.abort();
                (
                    PhaseStatus::Timeout,
                    Value::Null,
                    Some(format!("exceeded its budget of {} ms", budget.as_millis())),
                )
            }
        };
        let duration = started.elapsed();
        metrics::histogram!("opsloop_heartbeat_phase_seconds", "phase" => phase.as_str())
            .record(duration.as_secs_f64());
        if status != PhaseStatus::Ok {
            metrics::counter!("opsloop_heartbeat_phase_failures_total", "phase" => phase.as_str())
                .increment(1);
            tracing::warn!(phase = phase.as_str(), status = ?status, error = ?error, "phase did not finish");
        }
        PhaseResult {
            phase,
            status,
            duration_ms: duration.as_millis() as u64,
            counts,
            error,
        }
    }

    /// Runs one phase directly (no lease, no isolation).
    pub async fn run_phase(
        &self,
        phase: Phase,
        now: DateTime<Utc>,
        tick_no: u64,
    ) -> Result<Value, HeartbeatError> {
        match self.fault(phase) {
            Some(Fault::Panic) => panic!("injected panic in phase {}", phase.as_str()),
            Some(Fault::Fail) => return Err(HeartbeatError::Injected),
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            None => {}
        }
        match phase {
            Phase::Triggers => crate::triggers::run(self, now, tick_no).await,
            Phase::Reactions => crate::reactions::run(self, now).await,
            Phase::Insights => crate::insights::run(self, now).await,
            Phase::Recovery => crate::ops::recover(self, now).await,
            Phase::OpsHealth => crate::ops::ops_health(self, now).await,
            Phase::Governance => crate::governance::run(self, now).await,
            Phase::Budget => crate::ops::budget(self, now).await,
            Phase::Rollout => crate::rollout::run(self, now).await,
            Phase::DailySummary => crate::ops::daily_summary(self, now).await,
            Phase::WeeklyReport => crate::ops::weekly_report(self, now).await,
        }
    }

    async fn record(&self, report: &TickReport) -> Result<(), HeartbeatError> {
        let finished = report.tick_at + chrono::Duration::milliseconds(report.duration_ms as i64);
        // The run row and its events in one transaction.
        let tx = db::begin_write(&self.inner.db).await?;
        heartbeat_runs::ActiveModel {
            id: Set(report.id),
            tick_at: Set(report.tick_at),
            started_at: Set(report.tick_at),
            finished_at: Set(Some(db_now(finished))),
            status: Set(report.status.to_owned()),
            leader: Set(report.leader.clone()),
            phases: Set(serde_json::to_value(&report.phases).unwrap_or(Value::Null)),
            created_at: Set(db_now(Utc::now())),
        }
        .insert(&tx)
        .await?;
        let summary: Vec<Value> = report
            .phases
            .iter()
            .map(|p| json!({"phase": p.phase, "status": p.status, "duration_ms": p.duration_ms}))
            .collect();
        emit_in(
            &tx,
            "heartbeat.tick",
            json!({"run_id": report.id, "status": report.status, "leader": report.leader,
                   "fencing_token": report.fencing_token, "duration_ms": report.duration_ms,
                   "phases": summary}),
            None,
            report.tick_at,
        )
        .await?;
        let failed: Vec<&PhaseResult> = report
            .phases
            .iter()
            .filter(|p| p.status != PhaseStatus::Ok)
            .collect();
        if !failed.is_empty() {
            emit_in(
                &tx,
                "heartbeat.phase_error",
                json!({"run_id": report.id, "phases": failed}),
                None,
                report.tick_at,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Appends a heartbeat event (event row + outbox row) in the caller's write
/// transaction.
pub(crate) async fn emit_in(
    tx: &DatabaseTransaction,
    kind: &str,
    payload: Value,
    proposal_id: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<(), HeartbeatError> {
    workflow::append_event_in(tx, heartbeat_event(kind, payload, proposal_id)?, now).await?;
    Ok(())
}

fn heartbeat_event(
    kind: &str,
    payload: Value,
    proposal_id: Option<Uuid>,
) -> Result<NewEvent, HeartbeatError> {
    Ok(NewEvent {
        kind: EventKind::parse("kind", kind).map_err(WorkflowError::from)?,
        source: crate::SERVICE.to_owned(),
        payload,
        tags: Vec::new(),
        cost_usd: None,
        proposal_id,
        mission_id: None,
        step_id: None,
    })
}
