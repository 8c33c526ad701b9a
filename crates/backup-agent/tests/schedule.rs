//! The schedule with an injected clock, on a real agent: a run missed while
//! the agent was down is caught up exactly once at start, and a restart
//! right after does not run again.

mod common;

use common::*;
use opsloop_backup_agent::agent::{ScheduledBackup, ScheduledVerify, status};
use opsloop_backup_agent::schedule::ScheduledJob as _;
use opsloop_backup_agent::schedule::run_schedule;
use opsloop_core::store::testing::{fresh_postgres, fresh_sqlite};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_run_is_caught_up_once_at_start() {
    let source = fresh_sqlite().await;
    let catalog = fresh_postgres().await;
    let h = harness(&catalog, vec![("embedded", source.url.clone())], |_| {}).expect("agent");

    // The last backup ran on the 20th; the agent comes back on the 23rd,
    // three 02:00 JST runs later.
    h.clock.set(at("2026-11-20T10:00:00Z"));
    let first = h.agent.run_backup(None, true).await.expect("backup");
    assert_eq!(first.status, status::COMPLETED, "{:?}", first.error);
    h.clock.set(at("2026-11-23T10:00:00Z"));

    let start = |shutdown: CancellationToken| {
        let agent = h.agent.clone();
        let clock = h.clock.clone();
        tokio::spawn(async move {
            let job = ScheduledBackup::new(agent.clone(), "embedded");
            let config = agent.config();
            run_schedule(&config.schedule, clock.as_ref(), &job, true, shutdown).await;
        })
    };
    let shutdown = CancellationToken::new();
    let task = start(shutdown.clone());
    // It goes to sleep until the next 02:00 JST (17:00 UTC) only after the
    // catch-up run, and there was exactly one.
    assert_eq!(h.clock.sleeping_until().await, at("2026-11-23T17:00:00Z"));
    let rows = h
        .agent
        .list(Some("embedded"), None, None, 0, 10)
        .await
        .expect("list");
    assert_eq!(
        rows.len(),
        2,
        "one catch-up run for three missed occurrences"
    );
    assert_eq!(rows[0].started_at, at("2026-11-23T10:00:00Z"));
    assert_eq!(rows[0].status, status::COMPLETED, "{:?}", rows[0].error);
    shutdown.cancel();
    task.await.expect("loop stops");

    // A restart right after: the last run is current, nothing is caught up.
    let shutdown = CancellationToken::new();
    let task = start(shutdown.clone());
    assert_eq!(h.clock.sleeping_until().await, at("2026-11-23T17:00:00Z"));
    assert_eq!(
        h.agent
            .list(Some("embedded"), None, None, 0, 10)
            .await
            .expect("list")
            .len(),
        2
    );

    // The next occurrence runs on time.
    h.clock.set(at("2026-11-23T17:00:00Z"));
    assert_eq!(h.clock.sleeping_until().await, at("2026-11-24T17:00:00Z"));
    let rows = h
        .agent
        .list(Some("embedded"), None, None, 0, 10)
        .await
        .expect("list");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].started_at, at("2026-11-23T17:00:00Z"));
    shutdown.cancel();
    task.await.expect("loop stops");

    catalog.cleanup().await;
    source.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verify_schedule_verifies_the_newest_backup_of_each_target() {
    let source = fresh_sqlite().await;
    let catalog = fresh_postgres().await;
    let h = harness(&catalog, vec![("embedded", source.url.clone())], |s| {
        s.verify.schedule = Some("0 4 * * 0".into());
    })
    .expect("agent");
    assert!(h.agent.config().verify_schedule.is_some());
    h.clock.set(at("2026-11-20T10:00:00Z"));
    let older = h.agent.run_backup(None, true).await.expect("backup");
    h.clock.set(at("2026-11-21T10:00:00Z"));
    let newer = h.agent.run_backup(None, true).await.expect("backup");
    assert!(
        newer.verify_status.is_none(),
        "verify.after_backup is off here"
    );

    let job = ScheduledVerify::new(h.agent.clone());
    assert_eq!(job.last_started().await, None, "never caught up at start");
    job.run(at("2026-11-22T19:00:00Z")).await;
    assert_eq!(
        h.agent
            .get(newer.id)
            .await
            .expect("row")
            .verify_status
            .as_deref(),
        Some(status::VERIFIED)
    );
    assert_eq!(
        h.agent.get(older.id).await.expect("row").verify_status,
        None
    );

    catalog.cleanup().await;
    source.cleanup().await;
}
