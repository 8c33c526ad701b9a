//! Writes alert state to the database off the dispatcher's lock, in the
//! order the dispatcher produced it. Two writer tasks, each committing on a
//! pool connection of its own per transaction: one for alert rows (saves of merged alerts and deletes of
//! forgotten ones, one queue), one for notification log rows. Each folds
//! what waits together into one transaction of multi-row statements (group
//! commit): a storm costs a few commits a second, not one per alert or per
//! delivery, and a post never waits behind log rows (nor a delivery's log
//! row behind a backlog of posted alerts). A poster awaits its save before
//! it is answered, while the flush loop goes on: an alert can reach its
//! receiver before its row commits (if that commit fails the poster hears
//! so and sends again; the group dedupes it).
//!
//! Durability: a poster is answered 200 once its batch has committed. By
//! default (`alerter.commit_fsync = false`) that commit does not wait for
//! PostgreSQL's disk flush ([`crate::store::AlertStore::with_commit_fsync`]):
//! a committed row survives any death of the alerter (kill -9 included),
//! and only a crash of the database host can lose the last commits (about
//! 600 ms at PostgreSQL's defaults), which Prometheus re-sends. With
//! `commit_fsync = true` every answer waits for the fsync as well.

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::model::{Alert, Fingerprint};
use crate::store::{AlertStore, LogRecord, StoreError};

/// Most queued writes folded into one transaction.
const MAX_BATCH: usize = 1024;

/// A save waiting for its transaction: the alerts, their instant, and who
/// waits for the commit.
type QueuedSave = (
    Vec<Alert>,
    DateTime<Utc>,
    oneshot::Sender<Result<(), String>>,
);

enum Job {
    Save {
        alerts: Vec<Alert>,
        at: DateTime<Utc>,
        done: oneshot::Sender<Result<(), String>>,
    },
    Delete(Vec<Fingerprint>),
}

/// A notification log row waiting for its transaction, and who waits.
type LogJob = (LogRecord, oneshot::Sender<Result<(), String>>);

/// The handles of the writer tasks; the tasks end when the handle is
/// dropped. Alert rows (saves and deletes, in the dispatcher's order) and
/// notification log rows go to two writers, each with its own transactions, so a
/// post never waits behind log rows and a delivery's log row never waits
/// behind a backlog of posted alerts (the two tables are independent: a
/// log row names a group and fingerprints, not alert rows).
pub struct Persister {
    alerts: mpsc::UnboundedSender<Job>,
    logs: mpsc::UnboundedSender<LogJob>,
    /// Alerts queued and not yet committed (for back-pressure).
    queued: Arc<AtomicUsize>,
}

/// A save in flight.
pub struct PendingSave(oneshot::Receiver<Result<(), String>>);

impl PendingSave {
    /// Waits until the alerts are committed (or their transaction failed).
    pub async fn committed(self) -> Result<(), StoreError> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(StoreError::Batch(message)),
            Err(_) => Err(StoreError::WriterStopped),
        }
    }
}

impl Persister {
    /// Starts the writer tasks on the current runtime.
    pub fn start(store: AlertStore) -> Self {
        let (alerts, jobs) = mpsc::unbounded_channel();
        let (logs, log_jobs) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(write_loop(store.clone(), jobs, queued.clone()));
        tokio::spawn(log_loop(store, log_jobs));
        Self {
            alerts,
            logs,
            queued,
        }
    }

    /// Alerts queued and not yet committed.
    pub fn queued_alerts(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Queues a save of `alerts` (call it while holding the dispatcher, so
    /// the queue's order is the dispatcher's).
    pub fn save(&self, alerts: Vec<Alert>, at: DateTime<Utc>) -> PendingSave {
        let (done, committed) = oneshot::channel();
        let count = alerts.len();
        self.queued.fetch_add(count, Ordering::Relaxed);
        if let Err(mpsc::error::SendError(Job::Save { done, .. })) =
            self.alerts.send(Job::Save { alerts, at, done })
        {
            self.queued.fetch_sub(count, Ordering::Relaxed);
            let _ = done.send(Err("the alert writer has stopped".into()));
        }
        PendingSave(committed)
    }

    /// Queues a notification log row; it commits with the next batch of
    /// log rows.
    pub fn log(&self, record: LogRecord) -> PendingSave {
        let (done, committed) = oneshot::channel();
        if let Err(mpsc::error::SendError((_, done))) = self.logs.send((record, done)) {
            let _ = done.send(Err("the notification log writer has stopped".into()));
        }
        PendingSave(committed)
    }

    /// Queues a delete of alerts the dispatcher forgot (after every save
    /// queued before it). Failures are logged; the rows are harmless (they
    /// are resolved alerts a restart would notify as resolved at most once).
    pub fn delete(&self, fingerprints: Vec<Fingerprint>) {
        if !fingerprints.is_empty() {
            let _ = self.alerts.send(Job::Delete(fingerprints));
        }
    }
}

/// Waits for the next job, then takes what else is already queued (up to
/// `MAX_BATCH`) into `batch`: the group commit of both writers. False once
/// the queue is closed and empty.
async fn next_batch<T>(jobs: &mut mpsc::UnboundedReceiver<T>, batch: &mut Vec<T>) -> bool {
    let Some(first) = jobs.recv().await else {
        return false;
    };
    batch.push(first);
    while batch.len() < MAX_BATCH {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    true
}

/// The alert rows' writer: saves waiting together commit in one
/// transaction; a delete commits after the saves queued before it.
async fn write_loop(
    store: AlertStore,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    queued: Arc<AtomicUsize>,
) {
    let mut pending: Vec<Job> = Vec::new();
    let mut saves: Vec<QueuedSave> = Vec::new();
    while next_batch(&mut jobs, &mut pending).await {
        for job in pending.drain(..) {
            match job {
                Job::Save { alerts, at, done } => saves.push((alerts, at, done)),
                Job::Delete(fingerprints) => {
                    flush_saves(&store, &mut saves, &queued).await;
                    if let Err(error) = store.delete_alerts(&fingerprints).await {
                        tracing::warn!(%error, "cannot delete resolved alerts");
                    }
                }
            }
        }
        flush_saves(&store, &mut saves, &queued).await;
    }
}

async fn flush_saves(store: &AlertStore, saves: &mut Vec<QueuedSave>, queued: &AtomicUsize) {
    if saves.is_empty() {
        return;
    }
    let stamped: Vec<(&Alert, DateTime<Utc>)> = saves
        .iter()
        .flat_map(|(alerts, at, _)| alerts.iter().map(|alert| (alert, *at)))
        .collect();
    let count = stamped.len();
    let result = store
        .write_batch(&stamped, &[])
        .await
        .map_err(|error| error.to_string());
    drop(stamped);
    queued.fetch_sub(count, Ordering::Relaxed);
    if let Err(error) = &result {
        tracing::warn!(%error, alerts = count, "cannot save alerts");
    }
    for (_, _, done) in saves.drain(..) {
        let _ = done.send(result.clone());
    }
}

/// The notification log's writer: rows waiting together commit in one
/// transaction, in queue order.
async fn log_loop(store: AlertStore, mut jobs: mpsc::UnboundedReceiver<LogJob>) {
    let mut batch: Vec<LogJob> = Vec::new();
    while next_batch(&mut jobs, &mut batch).await {
        let entries: Vec<_> = batch.iter().map(|(record, _)| record.entry()).collect();
        let result = store
            .write_batch(&[], &entries)
            .await
            .map_err(|error| error.to_string());
        drop(entries);
        if let Err(error) = &result {
            tracing::warn!(%error, log_rows = batch.len(), "cannot write the notification log");
        }
        for (_, done) in batch.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use opsloop_core::store::testing::{fresh_postgres, fresh_sqlite};

    use super::*;
    use crate::group::NotifiedState;
    use crate::model::tests::{alert, at};
    use crate::store::LogStatus;

    fn record(key: &str, firing: &[Fingerprint]) -> LogRecord {
        LogRecord {
            receiver: "hook".into(),
            group_key: key.into(),
            state: NotifiedState {
                firing: firing.iter().copied().collect(),
                resolved: BTreeSet::new(),
                at: at(10),
            },
            status: LogStatus::Sent,
            attempts: 1,
            last_error: None,
            at: at(10),
        }
    }

    /// Saves, log rows and a delete queued together commit in queue order
    /// (the delete after the save before it), whatever the durability.
    async fn writes_in_queue_order(store: AlertStore) {
        let persister = Persister::start(store.clone());
        let a = alert(&[("alertname", "A")], 0);
        let b = alert(&[("alertname", "B")], 0);
        let mut b_later = b.clone();
        b_later.annotations.insert("summary".into(), "later".into());
        let saved = persister.save(vec![a.clone(), b.clone()], at(5));
        let again = persister.save(vec![b_later.clone()], at(6));
        let logged = persister.log(record("{}:A", &[a.fingerprint()]));
        assert!(persister.queued_alerts() <= 3);
        saved.committed().await.expect("first save");
        again.committed().await.expect("second save");
        logged.committed().await.expect("log row");
        assert_eq!(persister.queued_alerts(), 0, "nothing left queued");
        let mut loaded = store.load_alerts().await.expect("load");
        loaded.sort_by_key(|x| x.labels.get("alertname").cloned());
        assert_eq!(loaded.len(), 2);
        assert_eq!(
            loaded[1].annotations.get("summary").map(String::as_str),
            Some("later"),
            "the later state of an alert wins"
        );
        let rows = store.log_rows("hook").await.expect("log rows");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].status, "sent");

        persister.delete(vec![a.fingerprint()]);
        persister.delete(Vec::new());
        // A save queued after the delete commits after it.
        persister
            .save(vec![b_later], at(7))
            .committed()
            .await
            .expect("save after the delete");
        let left: Vec<Fingerprint> = store
            .load_alerts()
            .await
            .expect("load")
            .iter()
            .map(Alert::fingerprint)
            .collect();
        assert_eq!(left, vec![b.fingerprint()]);
    }

    #[tokio::test]
    async fn postgres_without_fsync_commits_in_queue_order() {
        let db = fresh_postgres().await;
        let store = AlertStore::new(db.db.clone()).with_commit_fsync(false);
        assert!(!store.commit_fsync());
        writes_in_queue_order(store).await;
        db.cleanup().await;
    }

    #[tokio::test]
    async fn sqlite_with_fsync_commits_in_queue_order() {
        let db = fresh_sqlite().await;
        let store = AlertStore::new(db.db.clone());
        assert!(store.commit_fsync(), "durable unless told otherwise");
        writes_in_queue_order(store).await;
        db.cleanup().await;
    }

    #[tokio::test]
    async fn a_stopped_writer_fails_what_is_queued() {
        let db = fresh_sqlite().await;
        let store = AlertStore::new(db.db.clone());
        // Built without its tasks: the queues have no reader.
        let (alerts, jobs) = mpsc::unbounded_channel();
        drop(jobs);
        let (logs, log_jobs) = mpsc::unbounded_channel();
        drop(log_jobs);
        let persister = Persister {
            alerts,
            logs,
            queued: Arc::new(AtomicUsize::new(0)),
        };
        let failed = persister
            .save(vec![alert(&[("alertname", "A")], 0)], at(1))
            .committed()
            .await;
        assert!(matches!(failed, Err(StoreError::Batch(_))), "{failed:?}");
        assert_eq!(persister.queued_alerts(), 0);
        let failed = persister.log(record("{}:A", &[])).committed().await;
        assert!(failed.is_err());
        persister.delete(vec![alert(&[("alertname", "A")], 0).fingerprint()]);
        drop(store);
        db.cleanup().await;
    }
}
