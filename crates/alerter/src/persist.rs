//! Writes alert state to the database off the dispatcher's lock, in the
//! order the dispatcher produced it: saves of merged alerts and deletes of
//! forgotten ones go through one queue to one writer task, which folds the
//! saves waiting together into one transaction (group commit). A poster
//! awaits its save before it is answered, while the flush loop goes on:
//! an alert can reach its receiver before its row commits (if that commit
//! fails the poster hears so and sends again; the group dedupes it).

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::model::{Alert, Fingerprint};
use crate::store::{AlertStore, StoreError};

/// Most queued writes folded into one transaction.
const MAX_BATCH: usize = 256;

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

/// The handle of the writer task; the task ends when the handle is dropped.
pub struct Persister {
    queue: mpsc::UnboundedSender<Job>,
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
        tokio::spawn(write_loop(store, jobs));
        Self { queue }
    }

    /// Queues a save of `alerts` (call it while holding the dispatcher, so
    /// the queue's order is the dispatcher's).
    pub fn save(&self, alerts: Vec<Alert>, at: DateTime<Utc>) -> PendingSave {
        let (done, committed) = oneshot::channel();
        if let Err(mpsc::error::SendError(Job::Save { done, .. })) =
            self.queue.send(Job::Save { alerts, at, done })
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

async fn write_loop(store: AlertStore, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut pending: Vec<Job> = Vec::new();
    while let Some(first) = jobs.recv().await {
        pending.push(first);
        while pending.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => pending.push(job),
                Err(_) => break,
            }
        }
        let mut saves: Vec<QueuedSave> = Vec::new();
        for job in pending.drain(..) {
            match job {
                Job::Save { alerts, at, done } => saves.push((alerts, at, done)),
                Job::Delete(fingerprints) => {
                    flush_saves(&store, &mut saves).await;
                    if let Err(error) = store.delete_alerts(&fingerprints).await {
                        tracing::warn!(%error, "cannot delete resolved alerts");
                    }
                }
            }
        }
        flush_saves(&store, &mut saves).await;
    }
}

async fn flush_saves(store: &AlertStore, saves: &mut Vec<QueuedSave>) {
    if saves.is_empty() {
        return;
    }
    let stamped: Vec<(&Alert, DateTime<Utc>)> = saves
        .iter()
        .flat_map(|(alerts, at, _)| alerts.iter().map(|alert| (alert, *at)))
        .collect();
    let result = store
        .save_alerts_at(&stamped)
        .await
        .map_err(|error| error.to_string());
    drop(stamped);
    if let Err(error) = &result {
        tracing::warn!(%error, alerts = saves.len(), "cannot save alerts");
    }
    for (_, _, done) in saves.drain(..) {
        let _ = done.send(result.clone());
    }
}
