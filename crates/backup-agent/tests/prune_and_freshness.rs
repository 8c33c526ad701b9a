//! Retention applied for real (objects deleted, rows marked pruned, a
//! `backup.pruned` event; refused while the newest backup failed), the
//! freshness warning (once per episode), and the slow-restore warning.

mod common;

use chrono::TimeDelta;
use common::*;
use opsloop_backup_agent::agent::status;
use opsloop_backup_agent::retention::RetentionPolicy;
use opsloop_backup_agent::schedule::Clock as _;
use opsloop_backup_agent::store::BackupStore as _;
use opsloop_core::bus::{Bus as _, QueueSpec};
use opsloop_core::store::entities::backups;
use opsloop_core::store::testing::{fresh_postgres, fresh_sqlite};
use sea_orm::{ActiveModelTrait, Set};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_what_retention_removes_and_refuses_after_a_failure() {
    let source = fresh_sqlite().await;
    let catalog = fresh_postgres().await;
    let h = harness(&catalog, vec![("embedded", source.url.clone())], |s| {
        s.retention = RetentionPolicy {
            keep_last: 0,
            keep_daily: 2,
            keep_weekly: 0,
            keep_monthly: 0,
            keep_within: None,
        };
    })
    .expect("agent");
    // 02:00 JST on the 18th … 22nd.
    let mut ids = Vec::new();
    for day in 17..=21 {
        h.clock.set(at(&format!("2026-11-{day}T17:00:00Z")));
        let row = h.agent.run_backup(None, true).await.expect("backup");
        assert_eq!(row.status, status::COMPLETED, "{:?}", row.error);
        ids.push(row.id);
    }
    // The 19th's backup is the newest verified one.
    assert!(h.agent.verify(ids[1]).await.expect("verify").report.passed);

    let preview = h.agent.preview_retention(None).await.expect("preview");
    let kept: Vec<_> = preview.plan.keep.iter().map(|d| d.id).collect();
    let removed: Vec<_> = preview.plan.remove.iter().map(|d| d.id).collect();
    assert_eq!(kept, vec![ids[4], ids[3], ids[1]]);
    assert_eq!(removed, vec![ids[2], ids[0]]);

    let mut events = subscribe(&h.bus, "backup.#").await;
    h.agent.prune(None).await.expect("prune");
    let pruned = next_message(&mut events).await;
    assert_eq!(pruned.routing_key, "backup.pruned");
    assert_eq!(body(&pruned)["removed"].as_array().map(Vec::len), Some(2));
    let mut in_store: Vec<_> = h
        .store
        .manifests()
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.id)
        .collect();
    in_store.sort();
    let mut expected = kept.clone();
    expected.sort();
    assert_eq!(in_store, expected, "removed objects deleted from the store");
    assert_eq!(
        h.agent.get(ids[0]).await.expect("row").status,
        status::PRUNED
    );
    assert_eq!(
        h.agent
            .list(None, None, None, 0, 10)
            .await
            .expect("list")
            .len(),
        3,
        "pruned backups are not listed"
    );

    // The newest backup failed: pruning is refused, nothing removed.
    backups::ActiveModel {
        id: Set(uuid::Uuid::now_v7()),
        target: Set("embedded".into()),
        kind: Set("sqlite".into()),
        status: Set(status::FAILED.into()),
        compression: Set("zstd:3".into()),
        started_at: Set(at("2026-11-22T17:00:00Z")),
        error: Set(Some("disk full".into())),
        ..Default::default()
    }
    .insert(&catalog.db)
    .await
    .expect("failed row");
    h.clock.set(at("2026-11-30T17:00:00Z"));
    let refused = h.agent.prune(None).await.expect("prune");
    assert!(refused.plan.refused.is_some());
    assert_eq!(h.store.manifests().await.expect("list").len(), 3);

    catalog.cleanup().await;
    source.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_backup_warns_once_per_episode() {
    let source = fresh_sqlite().await;
    let catalog = fresh_postgres().await;
    let h = harness(&catalog, vec![("embedded", source.url.clone())], |_| {}).expect("agent");
    let queue = format!("test.freshness.{}", uuid::Uuid::new_v4().simple());
    let mut alerts = h
        .bus
        .subscribe(QueueSpec::new(queue.clone(), &["alert.#"]))
        .await
        .expect("subscribe");

    // A fresh install without any backup is not stale yet.
    h.agent.check_freshness().await.expect("new");
    h.relay().await;
    assert_eq!(h.bus.depth(&queue), 0, "no backup yet, but just started");

    let row = h.agent.run_backup(None, true).await.expect("backup");
    assert_eq!(row.status, status::COMPLETED, "{:?}", row.error);
    h.agent.check_freshness().await.expect("fresh");
    h.relay().await;
    assert_eq!(h.bus.depth(&queue), 0, "fresh: no alert");

    h.clock.set(h.clock.now() + TimeDelta::hours(27));
    h.agent.check_freshness().await.expect("stale");
    h.agent.check_freshness().await.expect("still stale");
    h.relay().await;
    assert_eq!(h.bus.depth(&queue), 1, "one warning per episode");
    let alert = h.next_alert(&mut alerts).await;
    assert_eq!(alert.routing_key, "alert.warning");
    let alert = body(&alert);
    assert_eq!(alert["labels"]["alertname"], "BackupStale");
    assert_eq!(alert["labels"]["severity"], "warning");
    assert_eq!(alert["labels"]["service"], "backup-agent");
    assert!(
        alert["annotations"]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("27 h old")
    );

    // A new backup ends the episode; the next staleness warns again.
    h.agent.run_backup(None, true).await.expect("backup");
    h.agent.check_freshness().await.expect("fresh again");
    h.relay().await;
    assert_eq!(h.bus.depth(&queue), 0);
    h.clock.set(h.clock.now() + TimeDelta::hours(30));
    h.agent.check_freshness().await.expect("stale again");
    h.relay().await;
    assert_eq!(h.bus.depth(&queue), 1);

    catalog.cleanup().await;
    source.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_over_max_duration_warns() {
    let source = fresh_sqlite().await;
    let catalog = fresh_postgres().await;
    let h = harness(&catalog, vec![("embedded", source.url.clone())], |s| {
        s.verify.max_duration_secs = 0;
    })
    .expect("agent");
    let row = h.agent.run_backup(None, true).await.expect("backup");
    let mut alerts = subscribe(&h.bus, "alert.#").await;
    let verified = h.agent.verify(row.id).await.expect("verify");
    assert!(verified.report.passed, "{:?}", verified.report.error);
    let alert = h.next_alert(&mut alerts).await;
    assert_eq!(alert.routing_key, "alert.warning");
    assert_eq!(body(&alert)["labels"]["alertname"], "BackupRestoreSlow");
    catalog.cleanup().await;
    source.cleanup().await;
}
