//! The running alerter: the thin I/O shell around the pure pipeline. It takes
//! alerts in (HTTP, bus, gRPC), persists them, asks the dispatcher what is
//! due, hands notifications to the delivery engine, and records every outcome
//! in the notification log — sent, or dead-lettered with an error line and a
//! metric.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use opsloop_core::audit::{AuditLog, AuditRecord};
use opsloop_core::secrets::SecretStore;
use sea_orm::DatabaseConnection;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::AlerterSettings;
use crate::delivery::{Clock, DeliveryEngine, DeliveryQueues, Offered, Outcome};
use crate::dispatch::{AlertView, Dispatcher};
use crate::group::Notification;
use crate::inhibit::InhibitRule;
use crate::leader::{LEASE_NAME, LeaderLease};
use crate::model::{Alert, AlertError, Fingerprint, LabelSet, PostableAlert, Severity};
use crate::persist::Persister;
use crate::receivers::{self, BuiltReceivers, RenderContext};
use crate::route::{Route, parse_duration};
use crate::silence::{NewSilence, Silence, SilenceError, SilenceState};
use crate::store::{AlertStore, LogRecord, LogStatus, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AlerterError {
    #[error("alerts[{index}].{source}")]
    InvalidAlert { index: usize, source: AlertError },
    #[error("{0}")]
    InvalidSilence(#[from] SilenceError),
    #[error("silence {0} not found")]
    SilenceNotFound(Uuid),
    #[error("silence {0} is already expired")]
    SilenceExpired(Uuid),
    #[error("receiver {0:?} is not configured (or its secret is not set)")]
    UnknownReceiver(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Back-pressure: the alerts were not taken (or not known to be saved)
    /// in time; the sender should retry after the pause.
    #[error("the alerter is busy ({reason}); retry in {retry_after_secs} s")]
    Busy {
        reason: &'static str,
        retry_after_secs: u64,
    },
}

/// What a dispatcher is built from, kept to rebuild it from the database
/// when this process takes over delivery.
#[derive(Clone)]
struct Blueprint {
    route: Route,
    inhibit_rules: Vec<InhibitRule>,
    enabled: BTreeSet<String>,
    send_resolved: BTreeSet<String>,
}

impl Blueprint {
    /// A dispatcher holding what the database holds: the notification log,
    /// the silences and the alerts.
    async fn load(&self, store: &AlertStore, now: DateTime<Utc>) -> Result<Dispatcher, StoreError> {
        let mut dispatcher = Dispatcher::new(
            self.route.clone(),
            self.inhibit_rules.clone(),
            self.enabled.clone(),
            self.send_resolved.clone(),
        );
        dispatcher.restore_log(
            store
                .last_sent(now - chrono::Duration::days(LOG_LOOKBACK_DAYS))
                .await?,
        );
        dispatcher.set_silences(store.load_silences().await?);
        for alert in store.load_alerts().await? {
            dispatcher.ingest(alert, now);
        }
        dispatcher.prune_log();
        Ok(dispatcher)
    }
}

/// Where the lease holder's last sync from the database stands.
#[derive(Debug, Default, Clone, Copy)]
struct SyncMark {
    /// When it ran.
    at: Option<DateTime<Utc>>,
    /// The newest `updated_at` it read.
    newest: Option<DateTime<Utc>>,
}

pub struct Alerter {
    blueprint: Blueprint,
    lease: Option<LeaderLease>,
    /// [`ROLE_UNKNOWN`], [`ROLE_LEADER`] or [`ROLE_STANDBY`].
    role: AtomicU8,
    /// True while this process delivers (the bus consumer follows it).
    leading: watch::Sender<bool>,
    /// When the holder last re-read alerts and silences other alerters
    /// took in, and the newest `updated_at` it saw.
    last_sync: tokio::sync::Mutex<SyncMark>,
    dispatcher: tokio::sync::Mutex<Dispatcher>,
    /// Writes alert rows in the dispatcher's order, off its lock.
    persister: Persister,
    store: AlertStore,
    engine: DeliveryEngine,
    receivers: BuiltReceivers,
    ctx: RenderContext,
    resolve_timeout: chrono::Duration,
    tick: Duration,
    seen_retention: chrono::Duration,
    wake: Notify,
    /// Flushed notifications waiting for, or holding, one of their
    /// receiver's delivery slots. Changed only while the dispatcher is
    /// locked (lock order: dispatcher, then queues), so a flush never sees
    /// a group's delivery as finished before the dispatcher has recorded
    /// it: a group is notified again only after its log entry moved on.
    queues: Mutex<DeliveryQueues>,
    /// When the alert gauges were last computed (they cost a pass over
    /// every alert, inhibition included).
    gauges_at: Mutex<Option<DateTime<Utc>>>,
    tracker: TaskTracker,
    /// Cancelled when deliveries still in flight past the shutdown grace
    /// are to be abandoned.
    abandon: CancellationToken,
    audit: Option<Arc<AuditLog>>,
    /// Opens and joins incidents from flushed groups, when attached.
    incidents: std::sync::OnceLock<Arc<crate::incidents::IncidentManager>>,
}

/// How far back the notification log is read at start: longer than any
/// sensible repeat_interval.
const LOG_LOOKBACK_DAYS: i64 = 7;

/// Longest a post waits to be taken in (merged and committed) before it is
/// answered 503 with Retry-After: never a hang, whatever the load.
const ACCEPT_WITHIN: Duration = Duration::from_secs(5);

/// Alerts queued for the writer beyond which posts are refused with 429
/// and Retry-After until the database catches up.
const MAX_QUEUED_ALERTS: usize = 100_000;

/// Why a post was refused when the writer is far behind (answered 429).
pub const BUSY_QUEUE_FULL: &str = "too many alerts waiting to be saved";

/// What Retry-After says when a post is refused.
const RETRY_AFTER_SECS: u64 = 1;

/// On shutdown, how long deliveries in flight may finish; the rest are
/// abandoned unsent and unlogged, so the next start sends them (their
/// alerts are in the database). Inside the daemon's default drain bound.
const DELIVERY_GRACE: Duration = Duration::from_secs(4);

/// After the grace, how long abandoned deliveries may take to unwind
/// (those already answered wait for their log row).
const ABANDON_WAIT: Duration = Duration::from_secs(2);

/// How often the alert gauges are recomputed.
const GAUGE_EVERY: chrono::Duration = chrono::Duration::seconds(5);

/// How long notification log rows (dead letters included) are kept.
const LOG_RETENTION_DAYS: i64 = 30;

/// Before the first step.
const ROLE_UNKNOWN: u8 = 0;
const ROLE_LEADER: u8 = 1;
const ROLE_STANDBY: u8 = 2;

/// How often the lease holder re-reads what a standby took in.
const SYNC_EVERY: chrono::Duration = chrono::Duration::seconds(5);
/// How far behind the newest seen `updated_at` a sync reads again (commits
/// land out of order; other processes' clocks differ).
const SYNC_OVERLAP: chrono::Duration = chrono::Duration::seconds(30);

fn config_error(key: &str, reason: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("invalid configuration: alerter.{key}: {reason}")
}

/// For errors that already start with the key under `alerter.`.
fn config_error_at(reason: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("invalid configuration: alerter.{reason}")
}

impl Alerter {
    /// Compiles the config, resolves receivers from secrets and restores
    /// alerts, silences and the notification log from the database.
    pub async fn start(
        settings: &AlerterSettings,
        db: DatabaseConnection,
        secrets: &SecretStore,
        environment: &str,
        clock: Arc<dyn Clock>,
        audit: Option<Arc<AuditLog>>,
    ) -> anyhow::Result<Arc<Self>> {
        let route = Route::compile(&settings.route).map_err(config_error_at)?;
        let inhibit_rules = settings
            .inhibit_rules
            .iter()
            .enumerate()
            .map(|(i, c)| {
                InhibitRule::compile(c).map_err(|e| config_error(&format!("inhibit_rules[{i}]"), e))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let resolve_timeout = parse_duration(&settings.resolve_timeout)
            .map_err(|e| config_error("resolve_timeout", e))?;
        let receivers = receivers::build(&settings.receivers, secrets, settings.local_output)
            .map_err(config_error_at)?;
        let configured: BTreeSet<String> =
            settings.receivers.iter().map(|r| r.name.clone()).collect();
        if let Some(missing) = route
            .receivers()
            .into_iter()
            .find(|r| !configured.contains(r))
        {
            return Err(config_error(
                "route",
                format!("receiver {missing:?} is not defined in alerter.receivers"),
            ));
        }
        for (name, why) in &receivers.disabled {
            tracing::info!(receiver = %name, reason = %why, "receiver disabled");
        }
        let enabled = receivers.names();
        tracing::info!(receivers = ?enabled, "receivers enabled");
        let send_resolved = receivers
            .enabled
            .iter()
            .filter(|r| r.send_resolved)
            .map(|r| r.name.clone())
            .collect();
        let engine = DeliveryEngine::with_pool(
            clock,
            settings.delivery.clone(),
            settings.max_in_flight_per_receiver,
        )?;
        let store = AlertStore::new(db.clone()).with_commit_fsync(settings.commit_fsync);
        let blueprint = Blueprint {
            route,
            inhibit_rules,
            enabled,
            send_resolved,
        };
        let now = engine.clock().now();
        let dispatcher = blueprint.load(&store, now).await?;
        tracing::info!(
            alerts = dispatcher.alert_count(),
            "restored alerts from the database"
        );
        let lease = (settings.lease_ttl_ms > 0).then(|| {
            LeaderLease::new(
                db,
                LEASE_NAME,
                &Uuid::new_v4().to_string(),
                chrono::Duration::milliseconds(settings.lease_ttl_ms as i64),
            )
        });

        Ok(Arc::new(Self {
            blueprint,
            lease,
            role: AtomicU8::new(ROLE_UNKNOWN),
            leading: watch::Sender::new(false),
            last_sync: tokio::sync::Mutex::new(SyncMark::default()),
            dispatcher: tokio::sync::Mutex::new(dispatcher),
            persister: Persister::start(store.clone()),
            store,
            engine,
            receivers,
            ctx: RenderContext {
                environment: environment.to_owned(),
                external_url: settings.external_url.clone(),
            },
            resolve_timeout,
            tick: Duration::from_millis(settings.tick_ms.max(10)),
            seen_retention: chrono::Duration::hours(settings.seen_retention_hours as i64),
            wake: Notify::new(),
            queues: Mutex::new(DeliveryQueues::new(settings.max_in_flight_per_receiver)),
            gauges_at: Mutex::new(None),
            tracker: TaskTracker::new(),
            abandon: CancellationToken::new(),
            audit,
            incidents: std::sync::OnceLock::new(),
        }))
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.engine.clock().now()
    }

    /// Hands flushed groups to the incident manager from now on.
    pub fn attach_incidents(&self, manager: Arc<crate::incidents::IncidentManager>) {
        if self.incidents.set(manager).is_err() {
            tracing::warn!("an incident manager is already attached");
        }
    }

    pub fn store(&self) -> &AlertStore {
        &self.store
    }

    pub fn receivers(&self) -> &BuiltReceivers {
        &self.receivers
    }

    fn convert(
        &self,
        posted: Vec<PostableAlert>,
        source: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Alert>, AlerterError> {
        posted
            .into_iter()
            .enumerate()
            .map(|(index, p)| {
                p.into_alert(source, now, self.resolve_timeout)
                    .map_err(|source| AlerterError::InvalidAlert { index, source })
            })
            .collect()
    }

    /// Takes in posted alerts (all or none): validated, merged, persisted.
    /// Answers within `ACCEPT_WITHIN` whatever the load: when the writer
    /// is far behind or the commit does not come in time, the caller hears
    /// [`AlerterError::Busy`] (a retry of the same alerts is harmless).
    pub async fn post_alerts(
        &self,
        posted: Vec<PostableAlert>,
        source: &str,
    ) -> Result<usize, AlerterError> {
        let now = self.now();
        let alerts = self.convert(posted, source, now)?;
        let count = alerts.len();
        if self.persister.queued_alerts() + count > MAX_QUEUED_ALERTS {
            metrics::counter!("opsloop_alerter_posts_refused_total", "reason" => "queue_full")
                .increment(1);
            return Err(AlerterError::Busy {
                reason: BUSY_QUEUE_FULL,
                retry_after_secs: RETRY_AFTER_SECS,
            });
        }
        let accept = async {
            let saved = {
                let mut dispatcher = self.dispatcher.lock().await;
                let merged: Vec<Alert> = alerts
                    .into_iter()
                    .map(|a| dispatcher.ingest(a, now))
                    .collect();
                // Queued while the dispatcher is held, so rows are written
                // in the order the dispatcher merged them.
                self.persister.save(merged, now)
            };
            // The flush need not wait for the commit: the poster hears back
            // only once the alerts are saved, and retries if they are not.
            self.wake.notify_one();
            saved.committed().await
        };
        match tokio::time::timeout(ACCEPT_WITHIN, accept).await {
            Ok(result) => result?,
            Err(_) => {
                metrics::counter!("opsloop_alerter_posts_refused_total", "reason" => "timeout")
                    .increment(1);
                return Err(AlerterError::Busy {
                    reason: "the alerts were not saved in time",
                    retry_after_secs: RETRY_AFTER_SECS,
                });
            }
        }
        metrics::counter!("opsloop_alerter_alerts_received_total", "source" => source.to_owned())
            .increment(count as u64);
        Ok(count)
    }

    /// Takes in the alerts of one bus message, once per message id. Returns
    /// false when the message was seen before.
    pub async fn receive_message(
        &self,
        message_id: &str,
        payload: &[u8],
    ) -> Result<bool, AlerterError> {
        let now = self.now();
        let posted = crate::model::parse_bus_payload(payload)
            .map_err(|source| AlerterError::InvalidAlert { index: 0, source })?;
        let alerts = self.convert(posted, "bus", now)?;
        let count = alerts.len();
        {
            let mut dispatcher = self.dispatcher.lock().await;
            // Merge on a copy first: a duplicate must not touch the state.
            let merged: Vec<Alert> = alerts
                .iter()
                .map(|a| match dispatcher.alert(&a.fingerprint()) {
                    Some(known) => {
                        let mut known = known.clone();
                        known.merge(a.clone(), now);
                        known
                    }
                    None => a.clone(),
                })
                .collect();
            if !self
                .store
                .save_message_alerts(message_id, &merged, now)
                .await?
            {
                tracing::debug!(message_id, "duplicate alert message ignored");
                return Ok(false);
            }
            for alert in alerts {
                dispatcher.ingest(alert, now);
            }
        }
        metrics::counter!("opsloop_alerter_alerts_received_total", "source" => "bus")
            .increment(count as u64);
        self.wake.notify_one();
        Ok(true)
    }

    /// One pass of the loop: hold (or wait for) the delivery lease; the
    /// holder flushes, a standby keeps its silences fresh. Returns whether
    /// this process delivers.
    pub async fn step(self: &Arc<Self>) -> Result<bool, StoreError> {
        let now = self.now();
        let leader = match &self.lease {
            None => true,
            Some(lease) => lease.acquire(now).await?,
        };
        let role = if leader { ROLE_LEADER } else { ROLE_STANDBY };
        let previous = self.role.swap(role, Ordering::SeqCst);
        metrics::gauge!("opsloop_alerter_leader").set(if leader { 1.0 } else { 0.0 });
        if previous == ROLE_STANDBY && leader {
            // Take over from the database: what the previous holder sent
            // is in the log, what it held is in the alerts table.
            let fresh = self.blueprint.load(&self.store, now).await?;
            *self.dispatcher.lock().await = fresh;
            tracing::info!("took over the delivery lease: this alerter delivers");
        } else if previous != ROLE_STANDBY && !leader {
            tracing::info!("another alerter holds the delivery lease: standing by");
            // The holder rebuilds what waited here from the database.
            let _dispatcher = self.dispatcher.lock().await;
            let mut queues = self.lock_queues();
            queues.clear_waiting();
            publish_depths(&queues);
        }
        self.leading.send_replace(leader);
        if leader {
            if self.lease.is_some() {
                self.sync_from_store(now).await?;
            }
            self.tick().await?;
        } else {
            let silences = self.store.load_silences().await?;
            self.dispatcher.lock().await.set_silences(silences);
        }
        Ok(leader)
    }

    /// Whether this process delivers, as it changes.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// The lease holder picks up alerts and silences other alerters wrote
    /// (an HTTP post that reached only the standby).
    async fn sync_from_store(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut mark = self.last_sync.lock().await;
        if let Some(at) = mark.at
            && now - at < SYNC_EVERY
        {
            return Ok(());
        }
        let since = mark.newest.map(|newest| newest - SYNC_OVERLAP);
        let alerts = self.store.load_alerts_updated_since(since).await?;
        let silences = self.store.load_silences().await?;
        let newest = alerts.iter().map(|a| a.updated_at).max().or(mark.newest);
        let mut dispatcher = self.dispatcher.lock().await;
        for alert in alerts {
            let known = dispatcher.alert(&alert.fingerprint()).cloned();
            if known.as_ref() != Some(&alert) {
                dispatcher.ingest(alert, now);
            }
        }
        dispatcher.set_silences(silences);
        *mark = SyncMark {
            at: Some(now),
            newest,
        };
        Ok(())
    }

    /// One pass: flush due groups, queue their deliveries and start those
    /// their receivers have room for, persist what the dispatcher forgot,
    /// refresh the gauges.
    pub async fn tick(self: &Arc<Self>) -> Result<(), StoreError> {
        let now = self.now();
        let observe = self.incidents.get();
        let (work, observed, ready) = {
            let mut dispatcher = self.dispatcher.lock().await;
            let mut work = dispatcher.due(now);
            let refresh = {
                let mut last = self.gauges_at.lock().unwrap_or_else(|p| p.into_inner());
                let due = last.is_none_or(|at| now - at >= GAUGE_EVERY || at > now);
                if due {
                    *last = Some(now);
                }
                due
            };
            if refresh {
                self.update_gauges(&dispatcher, now);
            }
            let observed = match observe {
                Some(_) if !work.notify.is_empty() => work.notify.clone(),
                _ => Vec::new(),
            };
            // Queued under the dispatcher's lock (see `queues`).
            let mut queues = self.lock_queues();
            for notification in std::mem::take(&mut work.notify) {
                // Busy: the group's previous delivery is unconfirmed; its
                // next flush after that sends whatever changed. Either way
                // the group sleeps until the outcome (or a change) wakes it.
                dispatcher.park(&notification.receiver, &notification.group_key, now);
                let _: Offered = queues.offer(notification);
            }
            let ready = queues.start_ready();
            publish_depths(&queues);
            (work, observed, ready)
        };
        self.launch(ready);
        self.delete_forgotten(work.forgotten);
        if let Some(incidents) = observe
            && !observed.is_empty()
        {
            incidents.observe(&observed, now).await;
        }
        for ((receiver, group_key), state) in work.record {
            // Queued with the next batch; a failure is logged by the writer
            // (the in-memory log has moved on either way).
            drop(self.persister.log(LogRecord {
                receiver,
                group_key,
                state,
                status: LogStatus::Sent,
                attempts: 0,
                last_error: None,
                at: now,
            }));
        }
        Ok(())
    }

    fn lock_queues(&self) -> std::sync::MutexGuard<'_, DeliveryQueues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts notifications that hold a delivery slot on the wire.
    fn launch(self: &Arc<Self>, ready: Vec<Notification>) {
        for notification in ready {
            let this = self.clone();
            let span = tracing::info_span!(
                "deliver",
                receiver = %notification.receiver,
                group_key = %notification.group_key
            );
            self.tracker
                .spawn(async move { this.deliver(notification).instrument(span).await });
        }
    }

    /// Deletes the rows of alerts the dispatcher forgot, after any save
    /// queued before (which may hold an older state of one of them).
    fn delete_forgotten(&self, forgotten: Vec<Fingerprint>) {
        self.persister.delete(forgotten);
    }

    fn update_gauges(&self, dispatcher: &Dispatcher, now: DateTime<Utc>) {
        let counts = dispatcher.counts(now);
        metrics::gauge!("opsloop_alerter_alerts_active").set(counts.firing as f64);
        metrics::gauge!("opsloop_alerter_alerts_silenced").set(counts.silenced as f64);
        metrics::gauge!("opsloop_alerter_alerts_inhibited").set(counts.inhibited as f64);
    }

    /// Delivers one notification, records the outcome, then frees its
    /// slot and starts the receiver's next waiting notifications. The slot
    /// is held until the log row commits, so at most the bound of a
    /// receiver's deliveries are ever unconfirmed: that is all a kill -9
    /// can make a receiver hear twice.
    async fn deliver(self: &Arc<Self>, notification: Notification) {
        let Some(receiver) = self.receivers.get(&notification.receiver) else {
            let mut dispatcher = self.dispatcher.lock().await;
            dispatcher.undelivered(&notification, self.now());
            let mut queues = self.lock_queues();
            queues.finish(&notification.receiver, &notification.group_key);
            let ready = queues.start_ready();
            publish_depths(&queues);
            drop(queues);
            self.launch(ready);
            return;
        };
        let outcome = tokio::select! {
            outcome = self.engine.deliver(receiver, &notification, &self.ctx) => outcome,
            _ = self.abandon.cancelled() => {
                // Shutting down past the grace: not logged, so the next
                // start (which reloads the alerts) sends it. If the
                // receiver already had it, it hears it twice: the
                // at-least-once window of an unconfirmed delivery.
                tracing::warn!(
                    receiver = %notification.receiver,
                    group_key = %notification.group_key,
                    "delivery abandoned at shutdown; the next start sends it"
                );
                return;
            }
        };
        let now = self.now();
        let status = if outcome.delivered {
            LogStatus::Sent
        } else {
            LogStatus::DeadLetter
        };
        let logged = self
            .persister
            .log(LogRecord {
                receiver: notification.receiver.clone(),
                group_key: notification.group_key.clone(),
                state: notification.state.clone(),
                status,
                attempts: outcome.attempts,
                last_error: (!outcome.delivered).then(|| outcome.detail.clone()),
                at: now,
            })
            .committed()
            .await;
        if let Err(error) = &logged {
            tracing::error!(receiver = %notification.receiver, %error, "cannot write the notification log");
        }
        if outcome.delivered {
            tracing::info!(
                receiver = %notification.receiver,
                group_key = %notification.group_key,
                firing = notification.firing.len(),
                resolved = notification.resolved.len(),
                attempts = outcome.attempts,
                "notification sent"
            );
        } else {
            metrics::counter!(
                "opsloop_alerter_dead_letters_total",
                "receiver" => notification.receiver.clone()
            )
            .increment(1);
            tracing::error!(
                receiver = %notification.receiver,
                group_key = %notification.group_key,
                firing = notification.firing.len(),
                attempts = outcome.attempts,
                http_status = outcome.http_status,
                error = %outcome.detail,
                "notification dead-lettered"
            );
        }
        // Recorded and the slot freed in one step under the dispatcher (see
        // `queues`).
        let (forgotten, ready) = {
            let mut dispatcher = self.dispatcher.lock().await;
            let forgotten = if outcome.delivered {
                dispatcher.delivered(&notification, now)
            } else {
                // Parked since its flush: it flushes (and tries) again.
                dispatcher.undelivered(&notification, now);
                Vec::new()
            };
            let mut queues = self.lock_queues();
            queues.finish(&notification.receiver, &notification.group_key);
            let ready = queues.start_ready();
            publish_depths(&queues);
            (forgotten, ready)
        };
        self.delete_forgotten(forgotten);
        self.launch(ready);
    }

    /// Runs the flush loop until `shutdown`, then waits for deliveries in
    /// flight (the daemon's drain bound applies).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut last_prune = self.now();
        loop {
            if let Err(error) = self.step().await {
                tracing::warn!(%error, "alerter tick failed; retrying");
            }
            let now = self.now();
            if now - last_prune > chrono::Duration::hours(1) {
                last_prune = now;
                if let Err(error) = self.store.prune_seen(now - self.seen_retention).await {
                    tracing::warn!(%error, "cannot prune seen message ids");
                }
                let log_horizon = now - chrono::Duration::days(LOG_RETENTION_DAYS);
                if let Err(error) = self.store.prune_log(log_horizon).await {
                    tracing::warn!(%error, "cannot prune the notification log");
                }
            }
            let next = self.dispatcher.lock().await.next_wakeup();
            let wait = next
                .and_then(|at| (at - now).to_std().ok())
                .unwrap_or(self.tick)
                .min(self.tick);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let stopping = std::time::Instant::now();
        {
            let _dispatcher = self.dispatcher.lock().await;
            let left = self.lock_queues().stop();
            tracing::info!(
                waiting = left,
                in_flight = self.tracker.len(),
                "stopping: no new deliveries; those waiting for a slot are left for the next start"
            );
        }
        self.tracker.close();
        if tokio::time::timeout(DELIVERY_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = self.tracker.len(),
                "stopping: deliveries still in flight after the grace are abandoned"
            );
            self.abandon.cancel();
            // What is left waits for its log row or the dispatcher (the
            // HTTP requests were dropped): bounded, so the exit stays
            // within the drain bound whatever the database does.
            if tokio::time::timeout(ABANDON_WAIT, self.tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    left = self.tracker.len(),
                    "stopping: deliveries not confirmed in time; the next start may send them again"
                );
            }
        }
        tracing::info!(
            took_ms = stopping.elapsed().as_millis() as u64,
            "stopping: deliveries settled"
        );
        if let Some(lease) = &self.lease
            && let Err(error) = lease.release(self.now()).await
        {
            tracing::warn!(%error, "cannot release the delivery lease");
        }
        Ok(())
    }

    /// Waits for deliveries in flight (tests).
    pub async fn settle(&self) {
        while !self.tracker.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn alerts(&self) -> Vec<AlertView> {
        let now = self.now();
        self.dispatcher.lock().await.views(now)
    }

    pub async fn silences(&self) -> Vec<Silence> {
        self.dispatcher.lock().await.silences().to_vec()
    }

    /// Reads the dispatcher's state under its lock, at the current instant
    /// (the read APIs, e.g. `GET /api/v2/alerts/groups`). Keep `read` short:
    /// the pipeline waits for it.
    pub async fn inspect<R>(&self, read: impl FnOnce(&Dispatcher, DateTime<Utc>) -> R) -> R {
        let now = self.now();
        let dispatcher = self.dispatcher.lock().await;
        read(&dispatcher, now)
    }

    /// The audit record of a silence change.
    fn audit_record(
        &self,
        actor: &str,
        action: &str,
        before: Option<&Silence>,
        after: &Silence,
    ) -> AuditRecord {
        let now = self.now();
        let json = |s: &Silence| {
            serde_json::to_value(crate::silence::ApiSilence::from_silence(s, now))
                .unwrap_or_default()
        };
        AuditRecord {
            at: now,
            actor: actor.to_owned(),
            action: action.to_owned(),
            subject: format!("silence:{}", after.id),
            reason: Some(after.comment.clone()),
            before: before.map(json),
            after: Some(json(after)),
        }
    }

    /// Appends to the audit log file (the database copy is written with
    /// the change).
    fn audit_file(&self, record: &AuditRecord) {
        if let Some(audit) = &self.audit
            && let Err(error) = audit.append(record)
        {
            tracing::warn!(%error, "cannot append to the audit log");
        }
    }

    /// Creates a silence, or replaces the one named by `id`.
    pub async fn create_silence(
        &self,
        request: NewSilence,
        id: Option<Uuid>,
    ) -> Result<Silence, AlerterError> {
        let now = self.now();
        let mut dispatcher = self.dispatcher.lock().await;
        let mut silences = dispatcher.silences().to_vec();
        let id = match id {
            Some(id) if silences.iter().any(|s| s.id == id) => id,
            Some(id) => return Err(AlerterError::SilenceNotFound(id)),
            None => Uuid::new_v4(),
        };
        let silence = request.into_silence(id, now)?;
        let before = silences.iter().find(|s| s.id == id).cloned();
        let action = if before.is_some() {
            "silence.update"
        } else {
            "silence.create"
        };
        let record = self.audit_record(&silence.created_by, action, before.as_ref(), &silence);
        self.store.save_silence(&silence, Some(&record)).await?;
        silences.retain(|s| s.id != id);
        silences.push(silence.clone());
        dispatcher.set_silences(silences);
        drop(dispatcher);
        self.audit_file(&record);
        tracing::info!(silence_id = %silence.id, created_by = %silence.created_by, "silence created");
        self.wake.notify_one();
        Ok(silence)
    }

    /// Ends a silence now.
    pub async fn expire_silence(&self, id: Uuid, actor: &str) -> Result<Silence, AlerterError> {
        let now = self.now();
        let mut dispatcher = self.dispatcher.lock().await;
        let mut silences = dispatcher.silences().to_vec();
        let silence = silences
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or(AlerterError::SilenceNotFound(id))?;
        if silence.state(now) == SilenceState::Expired {
            return Err(AlerterError::SilenceExpired(id));
        }
        let before = silence.clone();
        silence.expire(now);
        let expired = silence.clone();
        let record = self.audit_record(actor, "silence.expire", Some(&before), &expired);
        self.store.save_silence(&expired, Some(&record)).await?;
        dispatcher.set_silences(silences);
        drop(dispatcher);
        self.audit_file(&record);
        tracing::info!(silence_id = %id, actor, "silence expired");
        self.wake.notify_one();
        Ok(expired)
    }

    /// Sends a synthetic alert straight to one receiver.
    pub async fn test_receiver(
        &self,
        name: &str,
        severity: Severity,
        message: Option<String>,
    ) -> Result<Outcome, AlerterError> {
        let receiver = self
            .receivers
            .get(name)
            .ok_or_else(|| AlerterError::UnknownReceiver(name.to_owned()))?;
        let now = self.now();
        let labels: LabelSet = [
            ("alertname", "OpsloopReceiverTest"),
            ("severity", severity.as_str()),
            ("service", "opsloop-alerter"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let annotations = LabelSet::from([(
            "summary".to_owned(),
            message.unwrap_or_else(|| format!("Test notification from opsloop to receiver {name}")),
        )]);
        let alert = Alert {
            labels: labels.clone(),
            annotations,
            starts_at: now,
            ends_at: Some(now + chrono::Duration::minutes(5)),
            generator_url: None,
            source: "test".into(),
            updated_at: now,
        };
        let group_key = format!("test:{}", Uuid::new_v4());
        let notification =
            Notification::new(name, &group_key, labels, vec![alert], Vec::new(), now);
        Ok(self
            .engine
            .deliver(receiver, &notification, &self.ctx)
            .await)
    }
}

/// The delivery queue gauges, per receiver.
fn publish_depths(queues: &DeliveryQueues) {
    for (receiver, waiting, in_flight) in queues.depths() {
        metrics::gauge!("opsloop_alerter_delivery_queue_depth", "receiver" => receiver.clone())
            .set(waiting as f64);
        metrics::gauge!("opsloop_alerter_deliveries_in_flight", "receiver" => receiver)
            .set(in_flight as f64);
    }
}
