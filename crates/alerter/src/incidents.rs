//! The incident manager: the I/O shell around [`crate::incident`] and
//! [`crate::oncall`]. It opens or joins incidents from the alert groups the
//! dispatcher flushes, runs every transition as one transaction with its
//! timeline row, its `incident.*` event (events + outbox, published by the
//! relay) and its audit row, and — on the delivery lease's holder — drives
//! the persisted escalation cursor: pages go through the configured
//! receivers (Slack and Discord mention the person, PagerDuty triggers with
//! the incident's key and resolves with it).
//!
//! Crash safety matches the notification log: the cursor (`escalation_step`,
//! `next_escalation_at`) moves in the transaction that records a step's
//! pages, after they are sent; a process killed before that commit sends
//! the step again on restart (PagerDuty deduplicates on the incident key),
//! one killed after it never does. Waits are computed from the step's due
//! time, not from when it ran, so a restart keeps the schedule.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use opsloop_core::audit::{AuditLog, AuditRecord};
use opsloop_core::domain::input::{EventKind, NewEvent};
use opsloop_core::secrets::SecretStore;
use rand::Rng;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::ack_link::{LinkClaims, LinkRefusal, verify};
use crate::config::AlerterSettings;
use crate::delivery::{Clock, DeliveryEngine};
use crate::group::Notification;
use crate::incident::{
    Action, IncidentSettings, Level, Levels, NotifyTarget, ResponseTime, State, TransitionError,
    advance, transition,
};
use crate::model::{Alert, LabelSet, Severity};
use crate::oncall::{Person, Schedule};
use crate::receivers::{self, ConfiguredReceiver, ReceiverKind, RenderContext};

/// sea-orm entities of the m0009 tables (the alerter is their only user).
pub mod entities {
    pub mod incidents {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "incidents")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub id: Uuid,
            #[sea_orm(column_type = "Text")]
            pub title: String,
            #[sea_orm(column_type = "Text")]
            pub level: String,
            #[sea_orm(column_type = "Text")]
            pub state: String,
            #[sea_orm(column_type = "Text")]
            pub group_key: Option<String>,
            #[sea_orm(column_type = "JsonBinary")]
            pub labels: Json,
            pub alerts_firing: i32,
            pub alerts_resolved: bool,
            #[sea_orm(column_type = "Text")]
            pub opened_by: String,
            pub opened_at: DateTimeUtc,
            pub acknowledged_at: Option<DateTimeUtc>,
            #[sea_orm(column_type = "Text")]
            pub acknowledged_by: Option<String>,
            pub resolved_at: Option<DateTimeUtc>,
            #[sea_orm(column_type = "Text")]
            pub resolved_by: Option<String>,
            pub escalation_step: i32,
            pub next_escalation_at: Option<DateTimeUtc>,
            pub updated_at: DateTimeUtc,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod incident_groups {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "incident_groups")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
            pub group_key: String,
            pub incident_id: Uuid,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod incident_log {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "incident_log")]
        pub struct Model {
            #[sea_orm(primary_key)]
            pub id: i64,
            pub incident_id: Uuid,
            pub at: DateTimeUtc,
            #[sea_orm(column_type = "Text")]
            pub kind: String,
            #[sea_orm(column_type = "Text")]
            pub actor: String,
            #[sea_orm(column_type = "JsonBinary")]
            pub detail: Json,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    pub mod incident_link_uses {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "incident_link_uses")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
            pub nonce: String,
            pub incident_id: Uuid,
            #[sea_orm(column_type = "Text")]
            pub action: String,
            pub used_at: DateTimeUtc,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }
}

use entities::{incident_groups, incident_link_uses, incident_log, incidents};

#[derive(Debug, thiserror::Error)]
pub enum IncidentError {
    #[error("incident {0} not found")]
    NotFound(Uuid),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("the incident is {state}: {reason}")]
    Precondition { state: State, reason: &'static str },
    #[error("{0}")]
    Invalid(String),
    #[error("link refused: {}", refusal.as_str())]
    Link { refusal: LinkRefusal },
    #[error("the incident changed meanwhile; retry")]
    Conflict,
    #[error("database: {0}")]
    Db(String),
    #[error("stored incident is unreadable: {0}")]
    Corrupt(String),
}

impl From<DbErr> for IncidentError {
    fn from(e: DbErr) -> Self {
        IncidentError::Db(e.to_string())
    }
}

/// An incident as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub id: Uuid,
    pub title: String,
    pub level: Level,
    pub state: State,
    pub group_key: Option<String>,
    pub labels: LabelSet,
    pub alerts_firing: u32,
    /// Every alert of the incident has resolved (it stays open unless the
    /// level auto-resolves).
    pub alerts_resolved: bool,
    pub opened_by: String,
    pub opened_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    pub escalation_step: u32,
    pub next_escalation_at: Option<DateTime<Utc>>,
}

impl Incident {
    pub(crate) fn from_row(row: incidents::Model) -> Result<Self, IncidentError> {
        Ok(Incident {
            id: row.id,
            level: Level::parse(&row.level)
                .ok_or_else(|| IncidentError::Corrupt(format!("level {:?}", row.level)))?,
            state: State::parse(&row.state)
                .ok_or_else(|| IncidentError::Corrupt(format!("state {:?}", row.state)))?,
            labels: serde_json::from_value(row.labels)
                .map_err(|e| IncidentError::Corrupt(format!("labels: {e}")))?,
            title: row.title,
            group_key: row.group_key,
            alerts_firing: u32::try_from(row.alerts_firing).unwrap_or(0),
            alerts_resolved: row.alerts_resolved,
            opened_by: row.opened_by,
            opened_at: row.opened_at,
            acknowledged_at: row.acknowledged_at,
            acknowledged_by: row.acknowledged_by,
            resolved_at: row.resolved_at,
            resolved_by: row.resolved_by,
            escalation_step: u32::try_from(row.escalation_step).unwrap_or(0),
            next_escalation_at: row.next_escalation_at,
        })
    }

    /// The summary every event and audit row carries.
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "title": self.title,
            "level": self.level.as_str(),
            "state": self.state.as_str(),
            "group_key": self.group_key,
            "alerts_firing": self.alerts_firing,
            "alerts_resolved": self.alerts_resolved,
            "opened_at": self.opened_at,
            "acknowledged_at": self.acknowledged_at,
            "acknowledged_by": self.acknowledged_by,
            "resolved_at": self.resolved_at,
            "resolved_by": self.resolved_by,
        })
    }

    /// Time to acknowledge, once acknowledged.
    pub fn time_to_acknowledge(&self) -> Option<chrono::Duration> {
        self.acknowledged_at.map(|at| at - self.opened_at)
    }
}

/// One row of an incident's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEntry {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub actor: String,
    pub detail: Value,
}

/// Who a step paged and what the receivers said.
#[derive(Debug, Clone, PartialEq)]
pub struct PageReport {
    pub receiver: String,
    pub people: Vec<String>,
    pub delivered: bool,
}

pub struct IncidentManager {
    pub(crate) db: DatabaseConnection,
    levels: Levels,
    schedule: Schedule,
    receivers: Vec<ConfiguredReceiver>,
    engine: DeliveryEngine,
    ctx: RenderContext,
    link_key: Option<Vec<u8>>,
    link_ttl: chrono::Duration,
    audit: Option<Arc<AuditLog>>,
    /// Incident group key → open incident, refreshed from the database on
    /// every drive (what a previous lease holder opened included).
    open_groups: Mutex<BTreeMap<String, Uuid>>,
    /// When [`crate::postmortem`]'s reminders and figures last ran.
    pub(crate) housekeeping_at: Mutex<Option<DateTime<Utc>>>,
}

fn config_error(reason: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("invalid configuration: alerter.{reason}")
}

/// The part of a dispatcher group key that names the alerts (the route id
/// before `:` is left out, so the routes an alert continues through share
/// one incident).
pub fn incident_group_key(group_key: &str) -> &str {
    match group_key.find(":{") {
        Some(i) => &group_key[i + 1..],
        None => group_key,
    }
}

/// Fields checked at start (what `check_config` runs too).
pub fn compile(settings: &IncidentSettings) -> anyhow::Result<(Levels, Schedule)> {
    let levels = Levels::compile(&settings.levels).map_err(config_error)?;
    let schedule = Schedule::compile(
        &settings.people,
        settings.rotation.as_ref(),
        &settings.overrides,
    )
    .map_err(config_error)?;
    crate::route::parse_duration(&settings.link_ttl)
        .map_err(|e| config_error(format!("incidents.link_ttl: {e}")))?;
    Ok((levels, schedule))
}

impl IncidentManager {
    /// Compiles `[alerter.incidents]` (unknown people and overlapping
    /// overrides fail the start, naming them) and resolves the page
    /// receivers and the link key from secrets.
    pub async fn start(
        settings: &AlerterSettings,
        db: DatabaseConnection,
        secrets: &SecretStore,
        environment: &str,
        clock: Arc<dyn Clock>,
        audit: Option<Arc<AuditLog>>,
    ) -> anyhow::Result<Arc<Self>> {
        let config = &settings.incidents;
        let (levels, schedule) = compile(config)?;
        let link_ttl = crate::route::parse_duration(&config.link_ttl)
            .map_err(|e| config_error(format!("incidents.link_ttl: {e}")))?;
        let built = receivers::build(&settings.receivers, secrets, settings.local_output)
            .map_err(config_error)?;
        let page: Vec<ConfiguredReceiver> = config
            .page_receivers
            .iter()
            .filter_map(|name| built.get(name).cloned())
            .collect();
        tracing::info!(
            receivers = ?page.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
            people = schedule.people().len(),
            "incident pages"
        );
        let link_key = secrets
            .get(&config.link_secret)
            .map_err(|e| config_error(format!("incidents.link_secret: {e}")))?
            .map(|s| s.expose().as_bytes().to_vec());
        if link_key.is_none() {
            tracing::warn!(
                secret = %config.link_secret,
                "incident link secret not set: pages carry no acknowledge links"
            );
        }
        let manager = Arc::new(Self {
            db,
            levels,
            schedule,
            receivers: page,
            engine: DeliveryEngine::new(clock, settings.delivery.clone())?,
            ctx: RenderContext {
                environment: environment.to_owned(),
                external_url: settings.external_url.clone(),
            },
            link_key,
            link_ttl,
            audit,
            open_groups: Mutex::new(BTreeMap::new()),
            housekeeping_at: Mutex::new(None),
        });
        manager.refresh_groups().await?;
        Ok(manager)
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.engine.clock().now()
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    pub fn levels(&self) -> &Levels {
        &self.levels
    }

    async fn refresh_groups(&self) -> Result<(), IncidentError> {
        let rows = incident_groups::Entity::find().all(&self.db).await?;
        let mut groups = self.open_groups.lock().unwrap_or_else(|p| p.into_inner());
        *groups = rows
            .into_iter()
            .map(|r| (r.group_key, r.incident_id))
            .collect();
        Ok(())
    }

    pub async fn get(&self, id: Uuid) -> Result<Incident, IncidentError> {
        let row = incidents::Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .ok_or(IncidentError::NotFound(id))?;
        Incident::from_row(row)
    }

    /// Incidents, newest first; `open_only` leaves resolved ones out.
    pub async fn list(&self, open_only: bool, limit: u64) -> Result<Vec<Incident>, IncidentError> {
        self.list_at(open_only, None, limit).await
    }

    pub async fn timeline(&self, id: Uuid) -> Result<Vec<TimelineEntry>, IncidentError> {
        let rows = incident_log::Entity::find()
            .filter(incident_log::Column::IncidentId.eq(id))
            .order_by_asc(incident_log::Column::Id)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| TimelineEntry {
                at: r.at,
                kind: r.kind,
                actor: r.actor,
                detail: r.detail,
            })
            .collect())
    }

    /// Writes, in `txn`: the timeline row, the `incident.*` event (with its
    /// outbox row) and, when given, the audit row.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn record(
        &self,
        txn: &DatabaseTransaction,
        incident: &Incident,
        kind: &str,
        actor: &str,
        detail: Value,
        audit: Option<&AuditRecord>,
        now: DateTime<Utc>,
    ) -> Result<(), IncidentError> {
        incident_log::Entity::insert(incident_log::ActiveModel {
            incident_id: Set(incident.id),
            at: Set(now),
            kind: Set(kind.to_owned()),
            actor: Set(actor.to_owned()),
            detail: Set(detail.clone()),
            ..Default::default()
        })
        .exec_without_returning(txn)
        .await?;
        let event = NewEvent {
            kind: EventKind::parse("kind", &format!("incident.{kind}"))
                .map_err(|e| IncidentError::Invalid(e.to_string()))?,
            source: "alerter".into(),
            payload: json!({"incident": incident.json(), "actor": actor, "detail": detail}),
            tags: vec![format!("level:{}", incident.level)],
            cost_usd: None,
            proposal_id: None,
            mission_id: None,
            step_id: None,
        };
        opsloop_core::workflow::events::append_event_in(txn, event, now)
            .await
            .map_err(|e| IncidentError::Db(e.to_string()))?;
        if let Some(record) = audit {
            opsloop_core::store::entities::audit_events::Entity::insert(
                opsloop_core::store::entities::audit_events::ActiveModel {
                    actor: Set(record.actor.clone()),
                    action: Set(record.action.clone()),
                    subject: Set(record.subject.clone()),
                    before: Set(record.before.clone()),
                    after: Set(record.after.clone()),
                    reason: Set(record.reason.clone()),
                    created_at: Set(record.at),
                    ..Default::default()
                },
            )
            .exec_without_returning(txn)
            .await?;
        }
        Ok(())
    }

    pub(crate) fn audit_file(&self, record: &AuditRecord) {
        if let Some(audit) = &self.audit
            && let Err(error) = audit.append(record)
        {
            tracing::warn!(%error, "cannot append to the audit log");
        }
    }

    pub(crate) fn audit_record(
        actor: &str,
        action: &str,
        id: Uuid,
        reason: Option<String>,
        before: Option<&Incident>,
        after: Option<&Incident>,
        now: DateTime<Utc>,
    ) -> AuditRecord {
        AuditRecord {
            at: now,
            actor: actor.to_owned(),
            action: action.to_owned(),
            subject: format!("incident:{id}"),
            reason,
            before: before.map(Incident::json),
            after: after.map(Incident::json),
        }
    }

    pub(crate) async fn insert_incident(
        &self,
        txn: &DatabaseTransaction,
        incident: &Incident,
    ) -> Result<(), IncidentError> {
        incidents::Entity::insert(incidents::ActiveModel {
            id: Set(incident.id),
            title: Set(incident.title.clone()),
            level: Set(incident.level.as_str().to_owned()),
            state: Set(incident.state.as_str().to_owned()),
            group_key: Set(incident.group_key.clone()),
            labels: Set(serde_json::to_value(&incident.labels).unwrap_or_default()),
            alerts_firing: Set(i32::try_from(incident.alerts_firing).unwrap_or(i32::MAX)),
            alerts_resolved: Set(incident.alerts_resolved),
            opened_by: Set(incident.opened_by.clone()),
            opened_at: Set(incident.opened_at),
            acknowledged_at: Set(None),
            acknowledged_by: Set(None),
            resolved_at: Set(None),
            resolved_by: Set(None),
            escalation_step: Set(0),
            next_escalation_at: Set(incident.next_escalation_at),
            updated_at: Set(incident.opened_at),
        })
        .exec_without_returning(txn)
        .await?;
        Ok(())
    }

    /// Opens an incident by hand (`opsloop incident open`).
    pub async fn open(
        &self,
        level: Level,
        title: &str,
        actor: &str,
    ) -> Result<Incident, IncidentError> {
        self.open_labelled(level, title, LabelSet::new(), actor)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_incident(
        &self,
        level: Level,
        title: &str,
        group_key: Option<String>,
        labels: LabelSet,
        firing: u32,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Incident {
        Incident {
            id: Uuid::now_v7(),
            title: title.to_owned(),
            level,
            state: State::Triggered,
            group_key,
            labels,
            alerts_firing: firing,
            alerts_resolved: false,
            opened_by: actor.to_owned(),
            opened_at: now,
            acknowledged_at: None,
            acknowledged_by: None,
            resolved_at: None,
            resolved_by: None,
            escalation_step: 0,
            // The chain's first step is due at once.
            next_escalation_at: Some(now),
        }
    }

    /// Opens or joins incidents from the notifications a flush produced
    /// (called by the delivery lease's holder). Errors are logged: the
    /// alert notifications go out regardless.
    pub async fn observe(&self, notifications: &[Notification], now: DateTime<Utc>) {
        let mut seen = std::collections::BTreeSet::new();
        for n in notifications {
            let key = incident_group_key(&n.group_key).to_owned();
            if !seen.insert(key.clone()) {
                continue;
            }
            if let Err(error) = self.observe_group(&key, n, now).await {
                tracing::error!(group_key = %key, %error, "cannot update the incident of an alert group");
            }
        }
    }

    async fn observe_group(
        &self,
        key: &str,
        n: &Notification,
        now: DateTime<Utc>,
    ) -> Result<(), IncidentError> {
        let level = n
            .firing
            .iter()
            .filter_map(|a| Severity::of(&a.labels))
            .map(Level::of)
            .min();
        let known = self
            .open_groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied();
        let opens = level.is_some_and(|l| self.levels.get(l).open);
        if known.is_none() && !opens {
            return Ok(());
        }
        let txn = self.db.begin().await?;
        let held = incident_groups::Entity::find_by_id(key.to_owned())
            .one(&txn)
            .await?;
        let Some(held) = held else {
            let Some(level) = level.filter(|_| opens) else {
                return Ok(());
            };
            let title = group_title(n);
            let incident = self.new_incident(
                level,
                &title,
                Some(key.to_owned()),
                n.group_labels.clone(),
                n.firing.len() as u32,
                "alerter",
                now,
            );
            self.insert_incident(&txn, &incident).await?;
            let inserted = incident_groups::Entity::insert(incident_groups::ActiveModel {
                group_key: Set(key.to_owned()),
                incident_id: Set(incident.id),
            })
            .on_conflict(
                OnConflict::column(incident_groups::Column::GroupKey)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
            if inserted == 0 {
                // Another alerter opened it meanwhile: join next time.
                return Ok(());
            }
            let alerts = fingerprints(&n.firing);
            let record = Self::audit_record(
                "alerter",
                "incident.open",
                incident.id,
                Some(title.clone()),
                None,
                Some(&incident),
                now,
            );
            self.record(
                &txn,
                &incident,
                "opened",
                "alerter",
                json!({"group_key": key, "alerts": alerts}),
                Some(&record),
                now,
            )
            .await?;
            txn.commit().await?;
            self.audit_file(&record);
            self.open_groups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.to_owned(), incident.id);
            metrics::counter!("opsloop_incidents_opened_total", "level" => level.as_str())
                .increment(1);
            tracing::info!(incident = %incident.id, %level, group_key = key, "incident opened");
            return Ok(());
        };
        let row = incidents::Entity::find_by_id(held.incident_id)
            .one(&txn)
            .await?
            .ok_or(IncidentError::NotFound(held.incident_id))?;
        let before = Incident::from_row(row)?;
        let firing = n.firing.len() as u32;
        let all_resolved = firing == 0;
        if before.alerts_firing == firing && before.alerts_resolved == all_resolved {
            return Ok(());
        }
        incidents::Entity::update_many()
            .col_expr(incidents::Column::AlertsFiring, Expr::value(firing as i32))
            .col_expr(incidents::Column::AlertsResolved, Expr::value(all_resolved))
            .col_expr(incidents::Column::UpdatedAt, Expr::value(now))
            .filter(incidents::Column::Id.eq(before.id))
            .exec(&txn)
            .await?;
        let mut after = before.clone();
        after.alerts_firing = firing;
        after.alerts_resolved = all_resolved;
        let (kind, detail) = if all_resolved {
            (
                "alerts_resolved",
                json!({"alerts": fingerprints(&n.resolved)}),
            )
        } else {
            ("alerts_joined", json!({"alerts": fingerprints(&n.firing)}))
        };
        self.record(&txn, &after, kind, "alerter", detail, None, now)
            .await?;
        txn.commit().await?;
        if all_resolved && self.levels.get(before.level).auto_resolve && before.state.is_open() {
            self.transition(
                before.id,
                Action::Resolve,
                "auto-resolve",
                Some("every alert resolved".into()),
            )
            .await?;
        }
        Ok(())
    }

    /// Acknowledge, resolve or reopen, as `actor` (the token's name).
    pub async fn transition(
        &self,
        id: Uuid,
        action: Action,
        actor: &str,
        reason: Option<String>,
    ) -> Result<Incident, IncidentError> {
        let txn = self.db.begin().await?;
        let (incident, record) = self.transition_in(&txn, id, action, actor, reason).await?;
        txn.commit().await?;
        self.after_transition(&incident, action, &record).await;
        Ok(incident)
    }

    async fn transition_in(
        &self,
        txn: &DatabaseTransaction,
        id: Uuid,
        action: Action,
        actor: &str,
        reason: Option<String>,
    ) -> Result<(Incident, AuditRecord), IncidentError> {
        let now = self.now();
        let row = incidents::Entity::find_by_id(id)
            .one(txn)
            .await?
            .ok_or(IncidentError::NotFound(id))?;
        let before = Incident::from_row(row)?;
        let state = transition(before.state, action)?;
        let mut after = before.clone();
        after.state = state;
        let mut update = incidents::Entity::update_many()
            .col_expr(incidents::Column::State, Expr::value(state.as_str()))
            .col_expr(incidents::Column::UpdatedAt, Expr::value(now));
        match action {
            Action::Acknowledge => {
                after.acknowledged_at = Some(now);
                after.acknowledged_by = Some(actor.to_owned());
                after.next_escalation_at = None;
                update = update
                    .col_expr(incidents::Column::AcknowledgedAt, Expr::value(now))
                    .col_expr(incidents::Column::AcknowledgedBy, Expr::value(actor))
                    .col_expr(
                        incidents::Column::NextEscalationAt,
                        Expr::value(Option::<DateTime<Utc>>::None),
                    );
            }
            Action::Resolve => {
                after.resolved_at = Some(now);
                after.resolved_by = Some(actor.to_owned());
                after.next_escalation_at = None;
                update = update
                    .col_expr(incidents::Column::ResolvedAt, Expr::value(now))
                    .col_expr(incidents::Column::ResolvedBy, Expr::value(actor))
                    .col_expr(
                        incidents::Column::NextEscalationAt,
                        Expr::value(Option::<DateTime<Utc>>::None),
                    );
            }
            Action::Reopen => {
                after.resolved_at = None;
                after.resolved_by = None;
                after.acknowledged_at = None;
                after.acknowledged_by = None;
                after.escalation_step = 0;
                after.next_escalation_at = Some(now);
                update = update
                    .col_expr(
                        incidents::Column::ResolvedAt,
                        Expr::value(Option::<DateTime<Utc>>::None),
                    )
                    .col_expr(
                        incidents::Column::ResolvedBy,
                        Expr::value(Option::<String>::None),
                    )
                    .col_expr(
                        incidents::Column::AcknowledgedAt,
                        Expr::value(Option::<DateTime<Utc>>::None),
                    )
                    .col_expr(
                        incidents::Column::AcknowledgedBy,
                        Expr::value(Option::<String>::None),
                    )
                    .col_expr(incidents::Column::EscalationStep, Expr::value(0))
                    .col_expr(incidents::Column::NextEscalationAt, Expr::value(now));
            }
        }
        let changed = update
            .filter(incidents::Column::Id.eq(id))
            .filter(incidents::Column::State.eq(before.state.as_str()))
            .exec(txn)
            .await?;
        if changed.rows_affected != 1 {
            return Err(IncidentError::Conflict);
        }
        if let Some(key) = &before.group_key {
            match action {
                Action::Resolve => {
                    incident_groups::Entity::delete_many()
                        .filter(incident_groups::Column::GroupKey.eq(key.clone()))
                        .filter(incident_groups::Column::IncidentId.eq(id))
                        .exec(txn)
                        .await?;
                }
                Action::Reopen => {
                    incident_groups::Entity::insert(incident_groups::ActiveModel {
                        group_key: Set(key.clone()),
                        incident_id: Set(id),
                    })
                    .on_conflict(
                        OnConflict::column(incident_groups::Column::GroupKey)
                            .do_nothing()
                            .to_owned(),
                    )
                    .exec_without_returning(txn)
                    .await?;
                }
                Action::Acknowledge => {}
            }
        }
        let mut detail = json!({"from": before.state.as_str(), "to": state.as_str()});
        if let Some(tta) = after
            .time_to_acknowledge()
            .filter(|_| action == Action::Acknowledge)
        {
            let target = self.levels.get(after.level).response;
            detail["time_to_acknowledge_s"] = json!(tta.num_seconds());
            detail["within_target"] =
                json!(after.acknowledged_at <= Some(target.deadline(after.opened_at)));
        }
        if let Some(reason) = &reason {
            detail["reason"] = json!(reason);
        }
        let record = Self::audit_record(
            actor,
            &format!("incident.{}", action.as_str()),
            id,
            reason,
            Some(&before),
            Some(&after),
            now,
        );
        let kind = action.event_kind().trim_start_matches("incident.");
        self.record(txn, &after, kind, actor, detail, Some(&record), now)
            .await?;
        Ok((after, record))
    }

    async fn after_transition(&self, incident: &Incident, action: Action, record: &AuditRecord) {
        self.audit_file(record);
        let level = incident.level.as_str();
        match action {
            Action::Acknowledge => {
                if let Some(tta) = incident.time_to_acknowledge() {
                    metrics::histogram!("opsloop_incident_time_to_acknowledge_seconds", "level" => level)
                        .record(tta.num_milliseconds() as f64 / 1000.0);
                    let target = self.levels.get(incident.level).response;
                    if incident.acknowledged_at > Some(target.deadline(incident.opened_at)) {
                        metrics::counter!("opsloop_incident_response_breaches_total", "level" => level)
                            .increment(1);
                    }
                }
            }
            Action::Resolve => {
                self.open_groups
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|_, v| *v != incident.id);
                if let Some(resolved) = incident.resolved_at {
                    metrics::histogram!("opsloop_incident_time_to_resolve_seconds", "level" => level)
                        .record((resolved - incident.opened_at).num_milliseconds() as f64 / 1000.0);
                }
                self.send_resolve(incident).await;
            }
            Action::Reopen => {
                if let Some(key) = &incident.group_key {
                    self.open_groups
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(key.clone())
                        .or_insert(incident.id);
                }
            }
        }
        tracing::info!(incident = %incident.id, action = %action, actor = %record.actor, state = %incident.state, "incident changed");
    }

    /// Adds a note to the timeline.
    pub async fn note(&self, id: Uuid, actor: &str, text: &str) -> Result<(), IncidentError> {
        let text = text.trim();
        if text.is_empty() || text.chars().count() > 4000 {
            return Err(IncidentError::Invalid(
                "note: must be 1 to 4000 characters".into(),
            ));
        }
        let now = self.now();
        let incident = self.get(id).await?;
        let record = Self::audit_record(
            actor,
            "incident.note",
            id,
            Some(text.to_owned()),
            None,
            None,
            now,
        );
        let txn = self.db.begin().await?;
        self.record(
            &txn,
            &incident,
            "note",
            actor,
            json!({"text": text}),
            Some(&record),
            now,
        )
        .await?;
        txn.commit().await?;
        self.audit_file(&record);
        Ok(())
    }

    /// Runs the next escalation step now instead of at its time.
    pub async fn escalate(&self, id: Uuid, actor: &str) -> Result<Incident, IncidentError> {
        let now = self.now();
        let txn = self.db.begin().await?;
        let row = incidents::Entity::find_by_id(id)
            .one(&txn)
            .await?
            .ok_or(IncidentError::NotFound(id))?;
        let before = Incident::from_row(row)?;
        if !before.state.escalates() {
            return Err(IncidentError::Precondition {
                state: before.state,
                reason: "only a triggered or reopened incident escalates",
            });
        }
        if before.next_escalation_at.is_none() {
            return Err(IncidentError::Precondition {
                state: before.state,
                reason: "its escalation chain has run to the end",
            });
        }
        incidents::Entity::update_many()
            .col_expr(incidents::Column::NextEscalationAt, Expr::value(now))
            .col_expr(incidents::Column::UpdatedAt, Expr::value(now))
            .filter(incidents::Column::Id.eq(id))
            .exec(&txn)
            .await?;
        let mut after = before.clone();
        after.next_escalation_at = Some(now);
        let record = Self::audit_record(
            actor,
            "incident.escalate",
            id,
            None,
            Some(&before),
            Some(&after),
            now,
        );
        self.record(
            &txn,
            &after,
            "escalate_requested",
            actor,
            json!({"step": before.escalation_step}),
            Some(&record),
            now,
        )
        .await?;
        txn.commit().await?;
        self.audit_file(&record);
        Ok(after)
    }

    /// Drives escalations while this process holds the delivery lease,
    /// checking every `tick`, until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        leading: tokio::sync::watch::Receiver<bool>,
        shutdown: tokio_util::sync::CancellationToken,
        tick: std::time::Duration,
    ) -> anyhow::Result<()> {
        loop {
            let leader = *leading.borrow();
            if leader && let Err(error) = self.drive(self.now()).await {
                tracing::warn!(%error, "incident escalation pass failed; retrying");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(tick) => {}
            }
        }
        Ok(())
    }

    /// Runs every escalation step that is due (the lease holder calls this
    /// on each pass). Returns how many steps ran.
    pub async fn drive(&self, now: DateTime<Utc>) -> Result<usize, IncidentError> {
        self.refresh_groups().await?;
        let due = incidents::Entity::find()
            .filter(incidents::Column::NextEscalationAt.lte(now))
            .filter(
                incidents::Column::State
                    .is_in([State::Triggered.as_str(), State::Reopened.as_str()]),
            )
            .order_by_asc(incidents::Column::NextEscalationAt)
            .limit(100)
            .all(&self.db)
            .await?;
        let mut ran = 0;
        for row in due {
            let incident = Incident::from_row(row)?;
            match self.run_step(&incident).await {
                Ok(true) => ran += 1,
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(incident = %incident.id, %error, "escalation step failed; retried next pass");
                }
            }
        }
        self.housekeeping(now).await;
        Ok(ran)
    }

    async fn run_step(&self, incident: &Incident) -> Result<bool, IncidentError> {
        let Some(due) = incident.next_escalation_at else {
            return Ok(false);
        };
        let chain = &self.levels.get(incident.level).chain;
        let step = incident.escalation_step as usize;
        let next = advance(chain, step, due);
        let mut pages = Vec::new();
        for target in &next.notify {
            pages.extend(self.page(incident, *target, due).await);
        }
        let now = self.now();
        let txn = self.db.begin().await?;
        let moved = incidents::Entity::update_many()
            .col_expr(
                incidents::Column::EscalationStep,
                Expr::value(i32::try_from(next.next_step).unwrap_or(i32::MAX)),
            )
            .col_expr(
                incidents::Column::NextEscalationAt,
                Expr::value(next.next_at),
            )
            .col_expr(incidents::Column::UpdatedAt, Expr::value(now))
            .filter(incidents::Column::Id.eq(incident.id))
            .filter(incidents::Column::EscalationStep.eq(incident.escalation_step as i32))
            .filter(
                incidents::Column::State
                    .is_in([State::Triggered.as_str(), State::Reopened.as_str()]),
            )
            .exec(&txn)
            .await?;
        if moved.rows_affected != 1 {
            // Acknowledged (or moved by another holder) while paging.
            return Ok(false);
        }
        let detail = json!({
            "step": step,
            "due": due,
            "notify": next.notify.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            "pages": pages.iter().map(|p| json!({
                "receiver": p.receiver, "people": p.people, "delivered": p.delivered,
            })).collect::<Vec<_>>(),
            "next_at": next.next_at,
        });
        let mut after = incident.clone();
        after.escalation_step = next.next_step as u32;
        after.next_escalation_at = next.next_at;
        self.record(&txn, &after, "escalated", "alerter", detail, None, now)
            .await?;
        txn.commit().await?;
        for target in &next.notify {
            metrics::counter!("opsloop_incident_pages_total", "level" => incident.level.as_str(), "target" => target.as_str())
                .increment(1);
        }
        tracing::info!(incident = %incident.id, step, notify = ?next.notify, "escalation step ran");
        Ok(true)
    }

    /// The people a notify step names at `at`.
    pub fn people_for(&self, target: NotifyTarget, at: DateTime<Utc>) -> Vec<&Person> {
        let who = self.schedule.on_call(at);
        match target {
            NotifyTarget::Primary => who.primary.into_iter().collect(),
            NotifyTarget::Secondary => who.secondary.into_iter().collect(),
            NotifyTarget::Everyone => self.schedule.everyone(),
        }
    }

    /// A signed link for `action`, when the link key is set.
    pub fn link(&self, id: Uuid, action: Action, now: DateTime<Utc>) -> Option<String> {
        let key = self.link_key.as_ref()?;
        let nonce = hex::encode(rand::rng().random::<[u8; 16]>());
        let claims = LinkClaims {
            incident: id,
            action,
            expires: (now + self.link_ttl).timestamp(),
            nonce,
        };
        Some(claims.url(&self.ctx.external_url, key))
    }

    /// Sends one step's page to every page receiver.
    async fn page(
        &self,
        incident: &Incident,
        target: NotifyTarget,
        due: DateTime<Utc>,
    ) -> Vec<PageReport> {
        let now = self.now();
        let people = self.people_for(target, due);
        if people.is_empty() {
            // No schedule (or nobody in this role): nobody to page, and no
            // page to a channel saying so; the timeline records the step.
            tracing::warn!(incident = %incident.id, step = target.as_str(), "nobody on call to page");
            return Vec::new();
        }
        let names: Vec<String> = people.iter().map(|p| p.name.clone()).collect();
        let response = self.levels.get(incident.level).response;
        let ack = self.link(incident.id, Action::Acknowledge, now);
        let resolve = self.link(incident.id, Action::Resolve, now);
        let mut reports = Vec::new();
        for receiver in &self.receivers {
            let kind = receiver.format.kind();
            let mentions: Vec<String> = people.iter().map(|p| mention(kind, p)).collect();
            let notification = page_notification(
                incident,
                &receiver.name,
                target,
                &people,
                &mentions,
                response,
                ack.as_deref(),
                resolve.as_deref(),
                now,
            );
            let outcome = self
                .engine
                .deliver(receiver, &notification, &self.ctx)
                .await;
            if !outcome.delivered {
                tracing::error!(incident = %incident.id, receiver = %receiver.name, error = %outcome.detail, "page not delivered");
            }
            reports.push(PageReport {
                receiver: receiver.name.clone(),
                people: names.clone(),
                delivered: outcome.delivered,
            });
        }
        reports
    }

    /// PagerDuty hears the incident resolved (same key as its triggers).
    async fn send_resolve(&self, incident: &Incident) {
        let now = self.now();
        for receiver in &self.receivers {
            if receiver.format.kind() != ReceiverKind::Pagerduty {
                continue;
            }
            let alert = incident_alert(incident, LabelSet::new(), LabelSet::new(), now);
            let notification = Notification::new(
                &receiver.name,
                &incident_key(incident.id),
                LabelSet::new(),
                Vec::new(),
                vec![alert],
                now,
            );
            let outcome = self
                .engine
                .deliver(receiver, &notification, &self.ctx)
                .await;
            if !outcome.delivered {
                tracing::error!(incident = %incident.id, receiver = %receiver.name, error = %outcome.detail, "resolve not delivered");
            }
        }
    }

    /// Follows a signed link: verified, recorded as used and applied in one
    /// transaction. Refusals leave an audit row and the incident unchanged.
    pub async fn follow_link(
        &self,
        claims: &LinkClaims,
        signature: &str,
        now: DateTime<Utc>,
    ) -> Result<Incident, IncidentError> {
        let checked = match &self.link_key {
            Some(key) => verify(claims, signature, key, now),
            None => Err(LinkRefusal::BadSignature),
        };
        if let Err(refusal) = checked {
            self.refuse_link(claims, refusal, now).await;
            return Err(IncidentError::Link { refusal });
        }
        let actor = format!("signed-link:{}", claims.nonce);
        let txn = self.db.begin().await?;
        let fresh = incident_link_uses::Entity::insert(incident_link_uses::ActiveModel {
            nonce: Set(claims.nonce.clone()),
            incident_id: Set(claims.incident),
            action: Set(claims.action.as_str().to_owned()),
            used_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(incident_link_uses::Column::Nonce)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
        if fresh == 0 {
            drop(txn);
            self.refuse_link(claims, LinkRefusal::Reused, now).await;
            return Err(IncidentError::Link {
                refusal: LinkRefusal::Reused,
            });
        }
        let (incident, record) = self
            .transition_in(
                &txn,
                claims.incident,
                claims.action,
                &actor,
                Some("signed link".into()),
            )
            .await?;
        txn.commit().await?;
        self.after_transition(&incident, claims.action, &record)
            .await;
        Ok(incident)
    }

    async fn refuse_link(&self, claims: &LinkClaims, refusal: LinkRefusal, now: DateTime<Utc>) {
        metrics::counter!("opsloop_incident_links_refused_total", "reason" => refusal.as_str())
            .increment(1);
        let record = AuditRecord {
            at: now,
            actor: "signed-link".into(),
            action: "incident.link_refused".into(),
            subject: format!("incident:{}", claims.incident),
            reason: Some(format!("{} ({})", refusal.as_str(), claims.action.as_str())),
            before: None,
            after: None,
        };
        let written = opsloop_core::store::entities::audit_events::Entity::insert(
            opsloop_core::store::entities::audit_events::ActiveModel {
                actor: Set(record.actor.clone()),
                action: Set(record.action.clone()),
                subject: Set(record.subject.clone()),
                before: Set(None),
                after: Set(None),
                reason: Set(record.reason.clone()),
                created_at: Set(now),
                ..Default::default()
            },
        )
        .exec_without_returning(&self.db)
        .await;
        if let Err(error) = written {
            tracing::error!(%error, "cannot write the audit row of a refused link");
        }
        self.audit_file(&record);
        tracing::warn!(incident = %claims.incident, reason = refusal.as_str(), "incident link refused");
    }

    /// Incidents, newest first: `open_only` leaves resolved ones out,
    /// `level` keeps one level.
    pub async fn list_at(
        &self,
        open_only: bool,
        level: Option<Level>,
        limit: u64,
    ) -> Result<Vec<Incident>, IncidentError> {
        let mut query = incidents::Entity::find().order_by_desc(incidents::Column::OpenedAt);
        if open_only {
            query = query.filter(incidents::Column::State.ne(State::Resolved.as_str()));
        }
        if let Some(level) = level {
            query = query.filter(incidents::Column::Level.eq(level.as_str()));
        }
        query
            .limit(limit.clamp(1, 1000))
            .all(&self.db)
            .await?
            .into_iter()
            .map(Incident::from_row)
            .collect()
    }

    /// [`IncidentManager::open`] with labels (e.g. `service`), as
    /// `IncidentService.OpenIncident` does.
    pub async fn open_labelled(
        &self,
        level: Level,
        title: &str,
        labels: LabelSet,
        actor: &str,
    ) -> Result<Incident, IncidentError> {
        let title = title.trim();
        if title.is_empty() || title.chars().count() > 200 {
            return Err(IncidentError::Invalid(
                "title: must be 1 to 200 characters".into(),
            ));
        }
        if labels.len() > 64 {
            return Err(IncidentError::Invalid("labels: at most 64 labels".into()));
        }
        for (name, value) in &labels {
            if !crate::model::valid_label_name(name) {
                return Err(IncidentError::Invalid(format!(
                    "labels: {name:?} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)"
                )));
            }
            if value.is_empty() || value.len() > 4096 {
                return Err(IncidentError::Invalid(format!(
                    "labels.{name}: must be 1 to 4096 bytes"
                )));
            }
        }
        let now = self.now();
        let incident = self.new_incident(level, title, None, labels, 0, actor, now);
        let txn = self.db.begin().await?;
        self.insert_incident(&txn, &incident).await?;
        let record = Self::audit_record(
            actor,
            "incident.open",
            incident.id,
            None,
            None,
            Some(&incident),
            now,
        );
        self.record(
            &txn,
            &incident,
            "opened",
            actor,
            json!({"by_hand": true}),
            Some(&record),
            now,
        )
        .await?;
        txn.commit().await?;
        self.audit_file(&record);
        metrics::counter!("opsloop_incidents_opened_total", "level" => level.as_str()).increment(1);
        tracing::info!(incident = %incident.id, level = %level, actor, "incident opened by hand");
        Ok(incident)
    }
}

/// PagerDuty's dedup key and the pages' group key: one per incident.
pub fn incident_key(id: Uuid) -> String {
    format!("incident:{id}")
}

fn fingerprints(alerts: &[Alert]) -> Vec<String> {
    alerts.iter().map(|a| a.fingerprint().to_string()).collect()
}

fn group_title(n: &Notification) -> String {
    let name = n
        .common_labels
        .get(crate::model::ALERTNAME)
        .or_else(|| n.group_labels.get(crate::model::ALERTNAME))
        .cloned()
        .or_else(|| n.firing.first().map(|a| a.name().to_owned()))
        .unwrap_or_else(|| "alert".into());
    match n
        .common_labels
        .get("service")
        .or_else(|| n.group_labels.get("service"))
    {
        Some(service) => format!("{name} ({service})"),
        None => name,
    }
}

/// How a receiver mentions a person.
fn mention(kind: ReceiverKind, person: &Person) -> String {
    match kind {
        ReceiverKind::Slack => person
            .slack
            .as_ref()
            .map(|id| format!("<@{id}>"))
            .unwrap_or_else(|| person.name.clone()),
        ReceiverKind::Discord => person
            .discord
            .as_ref()
            .map(|id| format!("<@{id}>"))
            .unwrap_or_else(|| person.name.clone()),
        _ => person.name.clone(),
    }
}

fn incident_alert(
    incident: &Incident,
    extra_labels: LabelSet,
    annotations: LabelSet,
    now: DateTime<Utc>,
) -> Alert {
    let mut labels = incident.labels.clone();
    labels.insert(
        crate::model::ALERTNAME.to_owned(),
        format!("[{}] {}", incident.level, incident.title),
    );
    labels.insert(
        "severity".to_owned(),
        incident.level.severity().as_str().to_owned(),
    );
    labels.insert("incident".to_owned(), incident.id.to_string());
    labels.extend(extra_labels);
    Alert {
        labels,
        annotations,
        starts_at: incident.opened_at,
        ends_at: None,
        generator_url: None,
        source: "incident".into(),
        updated_at: now,
    }
}

#[allow(clippy::too_many_arguments)]
fn page_notification(
    incident: &Incident,
    receiver: &str,
    target: NotifyTarget,
    people: &[&Person],
    mentions: &[String],
    response: ResponseTime,
    ack: Option<&str>,
    resolve: Option<&str>,
    now: DateTime<Utc>,
) -> Notification {
    let who = if mentions.is_empty() {
        "nobody is on call".to_owned()
    } else {
        mentions.join(" ")
    };
    let summary = format!(
        "{who}: incident {} {} needs a response within {} ({})",
        incident.level,
        incident.title,
        response.describe(),
        target.as_str()
    );
    let mut description = format!("Incident {}", incident.id);
    if let Some(ack) = ack {
        description.push_str(&format!("\nAcknowledge: {ack}"));
    }
    if let Some(resolve) = resolve {
        description.push_str(&format!("\nResolve: {resolve}"));
    }
    let mut extra = LabelSet::new();
    extra.insert("oncall_step".into(), target.as_str().into());
    extra.insert(
        "oncall".into(),
        people
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
    );
    let targets: Vec<&str> = people
        .iter()
        .filter_map(|p| p.pagerduty.as_deref())
        .collect();
    if !targets.is_empty() {
        extra.insert("pagerduty_target".into(), targets.join(","));
    }
    let annotations = LabelSet::from([
        ("summary".to_owned(), summary),
        ("description".to_owned(), description),
    ]);
    let alert = incident_alert(incident, extra, annotations, now);
    Notification::new(
        receiver,
        &incident_key(incident.id),
        LabelSet::new(),
        vec![alert],
        Vec::new(),
        now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_incident_key_leaves_the_route_out() {
        assert_eq!(
            incident_group_key(r#"0.1:{alertname="Down",service="api"}"#),
            r#"{alertname="Down",service="api"}"#
        );
        assert_eq!(incident_group_key("plain"), "plain");
    }
}
