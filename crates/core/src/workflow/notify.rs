//! Wake-ups for long-polling claims: "a step of kind K may have become
//! claimable". On PostgreSQL the transactions that make a step claimable
//! (submit and approve, the completion of a step of a sequential mission, a
//! retry, the heartbeat's lease recovery) send `NOTIFY opsloop_steps, 'K'`
//! (see `notify_sql`); PostgreSQL delivers it at commit, to every api
//! replica's [`listen`] task, which bumps that replica's [`StepNotifier`]. On
//! SQLite the api calls [`StepNotifier::notify`] itself after such a change
//! (one process owns the file). A waiting claim wakes only for its kinds.
//! The hot paths (the one-statement submit and completion) send theirs in a
//! statement of their own right after the commit (`notify_after`): a
//! `NOTIFY` inside a transaction serializes its commit with every other
//! notifying commit.
//!
//! What a wake costs: one claim statement per waiting claim of that kind. An
//! idle fleet gets no wake-ups, so each worker issues one claim statement
//! per wait period (the one at the start of its long poll).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::{DatabaseConnection, DbBackend};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The one PostgreSQL channel; the payload is a step kind (empty: any kind).
pub const STEPS_CHANNEL: &str = "opsloop_steps";

/// A scalar subquery that sends one notification per row of `from` (an SQL
/// `FROM …` clause) with the kind `kind_expr`, and counts them; for folding
/// into a statement's select list. PostgreSQL sends them at commit, once per
/// distinct payload.
pub(crate) fn notify_sql(kind_expr: &str, from: &str) -> String {
    format!("(SELECT count(pg_notify('{STEPS_CHANNEL}', {kind_expr})::text) {from})")
}

/// After a commit (PostgreSQL): tells every api replica that steps of
/// `kinds` may be claimable, in a statement of its own. The hot paths (the
/// one-statement submit and completion) use it instead of a `NOTIFY` in
/// their own transaction: PostgreSQL serializes the commits of notifying
/// transactions on one lock held through the commit's WAL flush, which
/// capped a lean submit at about a fifth of its rate (1,700 → 310/s with
/// pgbench, 16 clients); a notification sent alone writes no WAL and
/// waits for no flush. The change is committed already, so a failure here
/// is only logged: waiting claims then look again at the end of their wait
/// period, as after a lost connection. Nothing on other backends (the api
/// notifies in process there).
pub(crate) async fn notify_after<S: AsRef<str>>(db: &impl sea_orm::ConnectionTrait, kinds: &[S]) {
    if db.get_database_backend() != DbBackend::Postgres {
        return;
    }
    let mut distinct: Vec<&str> = kinds.iter().map(AsRef::as_ref).collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.is_empty() {
        return;
    }
    let rows: Vec<String> = (1..=distinct.len())
        .map(|i| format!("(${i}::text)"))
        .collect();
    let sql = format!(
        "SELECT {} AS n",
        notify_sql("w.k", &format!("FROM (VALUES {}) AS w(k)", rows.join(", ")))
    );
    let values = distinct.iter().map(|k| (*k).to_owned().into()).collect();
    if let Err(error) = db
        .query_one_raw(crate::store::stmt(DbBackend::Postgres, &sql, values))
        .await
    {
        tracing::warn!(%error, "could not announce claimable steps; long polls look again at the end of their wait");
    }
}

/// Inside a PostgreSQL transaction: notify that the queued steps matching
/// `condition` (on `mission_steps s`, with `values` bound) may be claimable.
/// Nothing on other backends (the api notifies in process there).
pub(crate) async fn notify_in(
    tx: &impl sea_orm::ConnectionTrait,
    condition: &str,
    values: Vec<sea_orm::Value>,
) -> Result<(), sea_orm::DbErr> {
    if tx.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let sql = format!(
        "SELECT {} AS n",
        notify_sql(
            "s.kind",
            &format!("FROM mission_steps s WHERE s.status = 'queued' AND {condition}")
        )
    );
    tx.query_one_raw(crate::store::stmt(DbBackend::Postgres, &sql, values))
        .await?;
    Ok(())
}

/// One process's wake-up board: a generation counter per step kind (and
/// one for "any kind"), and a [`Notify`] that wakes every waiter on any
/// change, each of which then checks its own kinds.
#[derive(Debug, Clone, Default)]
pub struct StepNotifier {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    any: u64,
    kinds: HashMap<String, u64>,
    closed: bool,
}

/// Why [`StepNotifier::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A step of one of the kinds may have become claimable.
    Notified,
    /// The deadline passed with no such news.
    TimedOut,
    /// The process is shutting down.
    Closed,
}

/// A waiter's view of the board: where the counters of its kinds stood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(u64);

impl StepNotifier {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the counters of `kinds` stand now. Take it *before* the claim
    /// that found nothing: news arriving between the claim and the wait is
    /// then not missed.
    pub fn stamp<S: AsRef<str>>(&self, kinds: &[S]) -> Stamp {
        let state = self.lock();
        let mut sum = state.any;
        for kind in kinds {
            sum = sum.wrapping_add(state.kinds.get(kind.as_ref()).copied().unwrap_or(0));
        }
        Stamp(sum)
    }

    /// A step of `kind` may have become claimable.
    pub fn notify(&self, kind: &str) {
        {
            let mut state = self.lock();
            let counter = state.kinds.entry(kind.to_owned()).or_insert(0);
            *counter = counter.wrapping_add(1);
        }
        self.inner.changed.notify_waiters();
    }

    /// Anything may have become claimable (an empty payload, or news lost
    /// while the listener reconnected).
    pub fn notify_all(&self) {
        {
            let mut state = self.lock();
            state.any = state.any.wrapping_add(1);
        }
        self.inner.changed.notify_waiters();
    }

    /// Ends every wait (shutdown); later waits return at once.
    pub fn close(&self) {
        self.lock().closed = true;
        self.inner.changed.notify_waiters();
    }

    /// Waits until the counters of `kinds` moved past `since`, the
    /// `deadline` passes, or the notifier is closed.
    pub async fn wait<S: AsRef<str>>(&self, kinds: &[S], since: Stamp, deadline: Instant) -> Wake {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            // Registered before the check: a notify between the check and
            // the await is not lost.
            changed.as_mut().enable();
            if self.lock().closed {
                return Wake::Closed;
            }
            if self.stamp(kinds) != since {
                return Wake::Notified;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Wake::TimedOut;
            }
        }
    }
}

/// Listens on [`STEPS_CHANNEL`] (PostgreSQL only; returns at once on other
/// backends) and feeds `notifier` until `shutdown`, then closes it. Holds
/// one connection of the pool. A lost connection is reconnected; since
/// news may have been lost meanwhile, every waiter is woken to look again.
pub async fn listen(db: DatabaseConnection, notifier: StepNotifier, shutdown: CancellationToken) {
    if db.get_database_backend() != DbBackend::Postgres {
        shutdown.cancelled().await;
        notifier.close();
        return;
    }
    let pool = db.get_postgres_connection_pool().clone();
    let mut backoff =
        crate::domain::Doubling::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let session = async {
            let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(STEPS_CHANNEL).await?;
            tracing::debug!(channel = STEPS_CHANNEL, "listening for claimable steps");
            // Anything sent before LISTEN took effect is not lost to a
            // waiter that started earlier.
            notifier.notify_all();
            loop {
                match listener.try_recv().await? {
                    Some(note) if note.payload().is_empty() => notifier.notify_all(),
                    Some(note) => notifier.notify(note.payload()),
                    None => {
                        tracing::warn!("step notification connection lost; reconnecting");
                        notifier.notify_all();
                    }
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), sea_orm::sqlx::Error>(())
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            result = session => {
                if let Err(error) = result {
                    tracing::warn!(%error, "step notifications unavailable; long polls fall back to their wait period");
                }
                notifier.notify_all();
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    notifier.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_wakes_only_for_its_kinds_and_times_out_otherwise() {
        let board = StepNotifier::new();
        let kinds = ["draft".to_owned()];
        let since = board.stamp(&kinds);
        board.notify("analyze");
        let deadline = Instant::now() + Duration::from_millis(100);
        assert_eq!(board.wait(&kinds, since, deadline).await, Wake::TimedOut);

        let since = board.stamp(&kinds);
        let waiter = {
            let board = board.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                board.wait(&["draft"], since, deadline).await
            })
        };
        tokio::task::yield_now().await;
        board.notify("draft");
        assert_eq!(waiter.await.expect("joined"), Wake::Notified);
    }

    #[tokio::test]
    async fn news_between_stamp_and_wait_is_not_lost() {
        let board = StepNotifier::new();
        let since = board.stamp(&["notify"]);
        board.notify("notify");
        let deadline = Instant::now() + Duration::from_secs(30);
        assert_eq!(
            board.wait(&["notify"], since, deadline).await,
            Wake::Notified
        );
        let since = board.stamp(&["notify"]);
        board.notify_all();
        assert_eq!(
            board.wait(&["notify"], since, deadline).await,
            Wake::Notified
        );
    }

    #[tokio::test]
    async fn close_ends_waits() {
        let board = StepNotifier::new();
        let since = board.stamp(&["x"]);
        let waiter = {
            let board = board.clone();
            tokio::spawn(async move {
                board
                    .wait(&["x"], since, Instant::now() + Duration::from_secs(30))
                    .await
            })
        };
        tokio::task::yield_now().await;
        board.close();
        assert_eq!(waiter.await.expect("joined"), Wake::Closed);
    }
}
