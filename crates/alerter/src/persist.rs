//! Writes alert state to the database off the dispatcher's lock, in the
//! order the dispatcher produced it: saves of merged alerts, notification
//! log rows and deletes of forgotten alerts go through one queue to one
//! writer task, which folds the saves and log rows waiting together into
//! one transaction of multi-row statements (group commit): a storm costs
//! a few commits a second, not one per alert or per delivery. A poster
//! awaits its save before it is answered, while the flush loop goes on:
//! an alert can reach its receiver before its row commits (if that commit
//! fails the poster hears so and sends again; the group dedupes it).

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
    Log {
        record: LogRecord,
        done: oneshot::Sender<Result<(), String>>,
    },
    Delete(Vec<Fingerprint>),
}

/// The handle of the writer task; the task ends when the handle is dropped.
pub struct Persister {
    queue: mpsc::UnboundedSender<Job>,
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
    /// Starts the writer task on the current runtime.
    pub fn start(store: AlertStore) -> Self {
        let (queue, jobs) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(write_loop(store, jobs, queued.clone()));
        Self { queue, queued }
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
            self.queue.send(Job::Save { alerts, at, done })
        {
            self.queued.fetch_sub(count, Ordering::Relaxed);
            let _ = done.send(Err("the alert writer has stopped".into()));
        }
        PendingSave(committed)
    }

    /// Queues a notification log row; it commits with the next batch.
    pub fn log(&self, record: LogRecord) -> PendingSave {
        let (done, committed) = oneshot::channel();
        if let Err(mpsc::error::SendError(Job::Log { done, .. })) =
            self.queue.send(Job::Log { record, done })
        {
            let _ = done.send(Err("the alert writer has stopped".into()));
        }
        PendingSave(committed)
    }

    /// Queues a delete of alerts the dispatcher forgot (after every save
    /// queued before it). Failures are logged; the rows are harmless (they
    /// are resolved alerts a restart would notify as resolved at most once).
    pub fn delete(&self, fingerprints: Vec<Fingerprint>) {
        if !fingerprints.is_empty() {
            let _ = self.queue.send(Job::Delete(fingerprints));
        }
    }
}

/// What one transaction will write, and who waits for it.
#[derive(Default)]
struct Batch {
    saves: Vec<QueuedSave>,
    logs: Vec<(LogRecord, oneshot::Sender<Result<(), String>>)>,
}

async fn write_loop(
    store: AlertStore,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    queued: Arc<AtomicUsize>,
) {
    let mut pending: Vec<Job> = Vec::new();
    while let Some(first) = jobs.recv().await {
        pending.push(first);
        while pending.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => pending.push(job),
                Err(_) => break,
            }
        }
        let mut batch = Batch::default();
        for job in pending.drain(..) {
            match job {
                Job::Save { alerts, at, done } => batch.saves.push((alerts, at, done)),
                Job::Log { record, done } => batch.logs.push((record, done)),
                Job::Delete(fingerprints) => {
                    flush(&store, &mut batch, &queued).await;
                    if let Err(error) = store.delete_alerts(&fingerprints).await {
                        tracing::warn!(%error, "cannot delete resolved alerts");
                    }
                }
            }
        }
        flush(&store, &mut batch, &queued).await;
    }
}

async fn flush(store: &AlertStore, batch: &mut Batch, queued: &AtomicUsize) {
    if batch.saves.is_empty() && batch.logs.is_empty() {
        return;
    }
    let stamped: Vec<(&Alert, DateTime<Utc>)> = batch
        .saves
        .iter()
        .flat_map(|(alerts, at, _)| alerts.iter().map(|alert| (alert, *at)))
        .collect();
    let count = stamped.len();
    let entries: Vec<_> = batch
        .logs
        .iter()
        .map(|(record, _)| record.entry())
        .collect();
    let result = store
        .write_batch(&stamped, &entries)
        .await
        .map_err(|error| error.to_string());
    drop(stamped);
    drop(entries);
    queued.fetch_sub(count, Ordering::Relaxed);
    if let Err(error) = &result {
        tracing::warn!(%error, alerts = count, log_rows = batch.logs.len(), "cannot save alerts");
    }
    for (_, _, done) in batch.saves.drain(..) {
        let _ = done.send(result.clone());
    }
    for (_, done) in batch.logs.drain(..) {
        let _ = done.send(result.clone());
    }
}
