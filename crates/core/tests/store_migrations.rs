//! The schema on real PostgreSQL and SQLite: migrations up → down → up, the
//! seeded policy, uniqueness rules, the event sequence, and Uuid/JSON/timestamp
//! round trips through the entities. Each test gets its own fresh database.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SubsecRound, Utc};
use opsloop_core::store::entities::{
    events, mission_steps, missions, policy, policy_history, proposals,
};
use opsloop_core::store::testing::{TestDb, fresh_postgres, fresh_sqlite};
use opsloop_core::store::{self, TABLES, seed_policies};
use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, ModelTrait, PaginatorTrait, QueryFilter, QueryOrder, SqlErr, Statement,
};
use serde_json::json;
use uuid::Uuid;

/// Every named index the migrations create; both backends must have them all.
const INDEXES: &[&str] = &[
    "uq_proposals_dedupe_key",
    "idx_proposals_status_created_at",
    "idx_proposals_source_created_at",
    "uq_missions_proposal_id",
    "idx_missions_status_created_at",
    "uq_mission_steps_mission_id_seq",
    "idx_mission_steps_claim",
    "idx_mission_steps_status_lease_expires_at",
    "idx_mission_steps_status_finished_at",
    "idx_step_dead_letters_created_at",
    "uq_events_id",
    "idx_events_kind_seq",
    "idx_events_created_at",
    "idx_events_mission_id_seq",
    "idx_outbox_published_at_id",
    "idx_policy_history_key_id",
    "idx_audit_events_created_at",
    "uq_trigger_rules_name",
    "uq_trigger_fires_rule_id_window_key",
    "uq_event_quarantine_consumer_event_seq",
    "uq_reactions_event_id_pattern_id",
    "idx_reactions_status_created_at",
    "idx_reactions_pattern_id_target_created_at",
    "uq_insights_fingerprint",
    "idx_insights_created_at",
    "idx_insight_sources_insight_id",
    "idx_heartbeat_runs_started_at",
    "idx_reports_kind_period_start",
    "idx_alerts_status_updated_at",
    "idx_silences_ends_at",
    "idx_notification_log_receiver_group_key_created_at",
    "idx_alert_messages_seen_created_at",
    "idx_backups_target_started_at",
    "idx_probe_history_minute",
];

async fn names(db: &DatabaseConnection, sql: &str) -> BTreeSet<String> {
    let backend = db.get_database_backend();
    db.query_all_raw(Statement::from_string(backend, sql))
        .await
        .expect("catalog query")
        .into_iter()
        .map(|row| row.try_get_by_index::<String>(0).expect("name column"))
        .collect()
}

async fn table_names(db: &DatabaseConnection) -> BTreeSet<String> {
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
        _ => "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    };
    names(db, sql).await
}

async fn index_names(db: &DatabaseConnection) -> BTreeSet<String> {
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public'",
        _ => "SELECT name FROM sqlite_master WHERE type = 'index'",
    };
    names(db, sql).await
}

fn expected_tables() -> BTreeSet<String> {
    TABLES.iter().map(|t| (*t).to_owned()).collect()
}

async fn assert_fully_migrated(db: &DatabaseConnection) {
    let tables = table_names(db).await;
    for table in TABLES {
        assert!(tables.contains(*table), "table {table} missing: {tables:?}");
    }
    let indexes = index_names(db).await;
    for index in INDEXES {
        assert!(
            indexes.contains(*index),
            "index {index} missing: {indexes:?}"
        );
    }
    let status = store::migration_status(db).await.expect("status");
    // Every migration the migrator knows, each applied.
    assert_eq!(
        status.len(),
        <opsloop_migrations::Migrator as opsloop_migrations::MigratorTrait>::migrations().len(),
        "{status:?}"
    );
    assert!(status.len() >= 10, "{status:?}");
    assert!(status.iter().all(|(_, applied)| *applied), "{status:?}");
    assert_seeded(db).await;
}

async fn assert_seeded(db: &DatabaseConnection) {
    let rows: BTreeMap<String, policy::Model> = policy::Entity::find()
        .all(db)
        .await
        .expect("policy rows")
        .into_iter()
        .map(|row| (row.key.clone(), row))
        .collect();
    let seeds = seed_policies();
    assert_eq!(rows.len(), seeds.len());
    for (key, value) in seeds {
        let row = rows
            .get(key)
            .unwrap_or_else(|| panic!("policy {key} missing"));
        assert_eq!(row.value, value, "policy {key}");
        assert_eq!(row.version, 1, "policy {key}");
        assert_eq!(row.updated_by, "migration", "policy {key}");
    }
    // Spot-check values the loop depends on, independent of seed_policies().
    assert_eq!(rows["auto_approve"].value["enabled"], json!(true));
    assert_eq!(
        rows["step_gates"].value["kinds"]["post_tiktok"]["daily_cap"],
        json!(3)
    );
    assert_eq!(rows["cost_budget"].value["hard_daily_usd"], json!(100));
    assert_eq!(rows["emergency_stop"].value["engaged"], json!(false));

    let history = policy_history::Entity::find()
        .order_by_asc(policy_history::Column::Id)
        .all(db)
        .await
        .expect("policy history");
    assert_eq!(history.len(), rows.len());
    assert!(
        history
            .iter()
            .all(|h| h.actor == "migration" && h.old_value.is_none())
    );
}

async fn up_down_up(test_db: TestDb) {
    let db = &test_db.db;
    assert_fully_migrated(db).await;

    // Applying again is a no-op.
    store::migrate_up(db).await.expect("second up");
    assert_fully_migrated(db).await;

    store::migrate_down(db).await.expect("down");
    let left = table_names(db).await;
    assert!(left.is_empty(), "tables left after down: {left:?}");
    let status = store::migration_status(db)
        .await
        .expect("status after down");
    assert!(status.iter().all(|(_, applied)| !applied), "{status:?}");

    store::migrate_up(db).await.expect("up again");
    assert_fully_migrated(db).await;
    assert_eq!(table_names(db).await.len(), expected_tables().len() + 1); // + seaql_migrations

    test_db.cleanup().await;
}

#[tokio::test]
async fn postgres_migrations_up_down_up() {
    up_down_up(fresh_postgres().await).await;
}

#[tokio::test]
async fn sqlite_migrations_up_down_up() {
    up_down_up(fresh_sqlite().await).await;
}

#[tokio::test]
async fn postgres_and_sqlite_have_the_same_tables_and_indexes() {
    let pg = fresh_postgres().await;
    let lite = fresh_sqlite().await;
    assert_eq!(table_names(&pg.db).await, table_names(&lite.db).await);
    let named = |set: BTreeSet<String>| -> BTreeSet<String> {
        set.into_iter()
            .filter(|name| name.starts_with("idx_") || name.starts_with("uq_"))
            .collect()
    };
    assert_eq!(
        named(index_names(&pg.db).await),
        named(index_names(&lite.db).await)
    );
    pg.cleanup().await;
    lite.cleanup().await;
}

async fn concurrent_migrations_apply_once(test_db: TestDb) {
    store::migrate_down(&test_db.db).await.expect("down");
    let (a, b, c) = tokio::join!(
        store::migrate_up(&test_db.db),
        store::migrate_up(&test_db.db),
        store::migrate_up(&test_db.db)
    );
    a.expect("first");
    b.expect("second");
    c.expect("third");
    assert_fully_migrated(&test_db.db).await;
    test_db.cleanup().await;
}

#[tokio::test]
async fn postgres_concurrent_migrations_apply_once() {
    concurrent_migrations_apply_once(fresh_postgres().await).await;
}

#[tokio::test]
async fn sqlite_concurrent_migrations_apply_once() {
    concurrent_migrations_apply_once(fresh_sqlite().await).await;
}

#[tokio::test]
async fn sqlite_events_seq_is_integer_primary_key_autoincrement() {
    let test_db = fresh_sqlite().await;
    let sql = names(
        &test_db.db,
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'",
    )
    .await;
    let sql = sql.into_iter().next().expect("events DDL");
    let normalized = sql.to_lowercase().replace('"', "");
    assert!(
        normalized.contains("seq integer not null primary key autoincrement"),
        "{sql}"
    );
    test_db.cleanup().await;
}

fn now() -> DateTime<Utc> {
    // PostgreSQL keeps microseconds; compare at that precision everywhere.
    Utc::now().trunc_subsecs(6)
}

fn proposal(dedupe_key: Option<&str>) -> proposals::ActiveModel {
    let at = now();
    proposals::ActiveModel {
        id: Set(Uuid::new_v4()),
        dedupe_key: Set(dedupe_key.map(str::to_owned)),
        source: Set("api".into()),
        agent: Set(None),
        title: Set("a test proposal".into()),
        status: Set("pending".into()),
        rejection_reason: Set(None),
        rejection_detail: Set(None),
        steps: Set(json!([{"kind": "echo", "payload": {}}])),
        parallel: Set(false),
        metadata: Set(json!({})),
        policy_version: Set(10),
        trace_id: Set(None),
        decided_by: Set(None),
        decided_at: Set(None),
        created_at: Set(at),
        updated_at: Set(at),
    }
}

fn mission(proposal_id: Uuid) -> missions::ActiveModel {
    let at = now();
    missions::ActiveModel {
        id: Set(Uuid::new_v4()),
        proposal_id: Set(proposal_id),
        title: Set("a test mission".into()),
        status: Set("running".into()),
        parallel: Set(false),
        created_at: Set(at),
        updated_at: Set(at),
        finished_at: Set(None),
    }
}

fn event(kind: &str, mission_id: Option<Uuid>) -> events::ActiveModel {
    events::ActiveModel {
        seq: NotSet,
        id: Set(Uuid::new_v4()),
        kind: Set(kind.into()),
        source: Set("test".into()),
        proposal_id: Set(None),
        mission_id: Set(mission_id),
        step_id: Set(None),
        payload: Set(json!({"n": 1})),
        tags: Set(json!(["a", "b"])),
        cost_usd: Set(None),
        trace_id: Set(None),
        created_at: Set(now()),
    }
}

fn expect_violation(result: Result<impl std::fmt::Debug, DbErr>, what: &str) -> SqlErr {
    let error = result.expect_err(what);
    error
        .sql_err()
        .unwrap_or_else(|| panic!("{what}: not a constraint violation: {error}"))
}

async fn dedupe_key_is_unique_but_nulls_are_not(test_db: TestDb) {
    let db = &test_db.db;
    proposal(Some("retry-1"))
        .insert(db)
        .await
        .expect("first keyed");
    let violation = expect_violation(
        proposal(Some("retry-1")).insert(db).await,
        "second proposal with the same dedupe_key",
    );
    assert!(
        matches!(violation, SqlErr::UniqueConstraintViolation(_)),
        "{violation:?}"
    );
    for _ in 0..3 {
        proposal(None)
            .insert(db)
            .await
            .expect("proposal without key");
    }
    proposal(Some("retry-2"))
        .insert(db)
        .await
        .expect("another key");
    let without_key = proposals::Entity::find()
        .filter(proposals::Column::DedupeKey.is_null())
        .count(db)
        .await
        .expect("count");
    assert_eq!(without_key, 3);
    assert_eq!(proposals::Entity::find().count(db).await.expect("count"), 5);
    test_db.cleanup().await;
}

#[tokio::test]
async fn postgres_dedupe_key_is_unique_but_nulls_are_not() {
    dedupe_key_is_unique_but_nulls_are_not(fresh_postgres().await).await;
}

#[tokio::test]
async fn sqlite_dedupe_key_is_unique_but_nulls_are_not() {
    dedupe_key_is_unique_but_nulls_are_not(fresh_sqlite().await).await;
}

async fn one_mission_per_proposal(test_db: TestDb) {
    let db = &test_db.db;
    let p = proposal(None).insert(db).await.expect("proposal");
    mission(p.id).insert(db).await.expect("first mission");
    let violation = expect_violation(mission(p.id).insert(db).await, "second mission");
    assert!(
        matches!(violation, SqlErr::UniqueConstraintViolation(_)),
        "{violation:?}"
    );
    // Foreign keys are enforced on both backends (SQLite: foreign_keys=ON).
    let violation = expect_violation(
        mission(Uuid::new_v4()).insert(db).await,
        "mission of an unknown proposal",
    );
    assert!(
        matches!(violation, SqlErr::ForeignKeyConstraintViolation(_)),
        "{violation:?}"
    );
    // The relation proposal → mission works through the entities.
    let found = p
        .find_related(missions::Entity)
        .one(db)
        .await
        .expect("related")
        .expect("a mission");
    assert_eq!(found.proposal_id, p.id);
    test_db.cleanup().await;
}

#[tokio::test]
async fn postgres_one_mission_per_proposal() {
    one_mission_per_proposal(fresh_postgres().await).await;
}

#[tokio::test]
async fn sqlite_one_mission_per_proposal() {
    one_mission_per_proposal(fresh_sqlite().await).await;
}

async fn event_seq_is_monotonic(test_db: TestDb) {
    let db = &test_db.db;
    let mut seqs = Vec::new();
    for i in 0..20 {
        let inserted = event(&format!("test.kind{}", i % 3), None)
            .insert(db)
            .await
            .expect("event");
        seqs.push(inserted.seq);
    }
    assert!(seqs[0] >= 1, "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // Cursor reads: everything after a seq, in order.
    let after = events::Entity::find()
        .filter(events::Column::Seq.gt(seqs[9]))
        .order_by_asc(events::Column::Seq)
        .all(db)
        .await
        .expect("after cursor");
    assert_eq!(
        after.iter().map(|e| e.seq).collect::<Vec<_>>(),
        seqs[10..].to_vec()
    );

    // A deleted tail is never reused (AUTOINCREMENT / identity semantics).
    let last = *seqs.last().expect("some events");
    events::Entity::delete_many()
        .filter(events::Column::Seq.eq(last))
        .exec(db)
        .await
        .expect("delete last");
    let next = event("test.after_delete", None)
        .insert(db)
        .await
        .expect("event after delete");
    assert!(next.seq > last, "{} reused after {last}", next.seq);

    // event ids are unique
    let duplicate = event("test.dup", None);
    let mut again = event("test.dup", None);
    again.id = duplicate.id.clone();
    duplicate.insert(db).await.expect("first id");
    let violation = expect_violation(again.insert(db).await, "duplicate event id");
    assert!(
        matches!(violation, SqlErr::UniqueConstraintViolation(_)),
        "{violation:?}"
    );
    test_db.cleanup().await;
}

#[tokio::test]
async fn postgres_event_seq_is_monotonic() {
    event_seq_is_monotonic(fresh_postgres().await).await;
}

#[tokio::test]
async fn sqlite_event_seq_is_monotonic() {
    event_seq_is_monotonic(fresh_sqlite().await).await;
}

async fn values_round_trip(test_db: TestDb) {
    let db = &test_db.db;
    let decided_at: DateTime<Utc> = "2026-03-01T23:59:59.123456Z".parse().expect("timestamp");
    let steps = json!([
        {"kind": "post_x", "payload": {"text": "こんにちは 👋", "n": 3, "ratio": 0.25, "nested": {"list": [1, null, true]}}},
        {"kind": "echo", "payload": {}}
    ]);
    let mut p = proposal(Some("round-trip"));
    p.agent = Set(Some("agent-7".into()));
    p.steps = Set(steps.clone());
    p.metadata =
        Set(json!({"labels": {"team": "ops"}, "empty": [], "big": 9_007_199_254_740_991_i64}));
    p.decided_at = Set(Some(decided_at));
    p.trace_id = Set(Some("4bf92f3577b34da6a3ce929d0e0e4736".into()));
    let inserted = p.insert(db).await.expect("insert proposal");

    let found = proposals::Entity::find_by_id(inserted.id)
        .one(db)
        .await
        .expect("select")
        .expect("found");
    assert_eq!(found, inserted);
    assert_eq!(found.steps, steps);
    assert_eq!(found.decided_at, Some(decided_at));
    assert_eq!(found.dedupe_key.as_deref(), Some("round-trip"));

    // Lookups by Uuid and ordering by timestamp work through the entities.
    let by_key = proposals::Entity::find()
        .filter(proposals::Column::DedupeKey.eq("round-trip"))
        .one(db)
        .await
        .expect("by key")
        .expect("found by key");
    assert_eq!(by_key.id, inserted.id);

    let m = mission(inserted.id).insert(db).await.expect("mission");
    let at = now();
    let step = mission_steps::ActiveModel {
        id: Set(Uuid::new_v4()),
        mission_id: Set(m.id),
        seq: Set(0),
        kind: Set("post_x".into()),
        payload: Set(json!({"text": "hi"})),
        status: Set("succeeded".into()),
        attempt: Set(1),
        max_attempts: Set(3),
        lease_holder: Set(Some("worker-1".into())),
        lease_expires_at: Set(Some(at + chrono::Duration::seconds(300))),
        next_attempt_at: Set(None),
        result: Set(Some(
            json!({"url": "https://example.invalid/1", "ok": true}),
        )),
        error: Set(None),
        cost_usd: Set(Some(0.0125)),
        created_at: Set(at),
        started_at: Set(Some(at)),
        finished_at: Set(Some(at + chrono::Duration::milliseconds(1500))),
        updated_at: Set(at),
    }
    .insert(db)
    .await
    .expect("step");
    let steps_of_mission = m
        .find_related(mission_steps::Entity)
        .all(db)
        .await
        .expect("steps of mission");
    assert_eq!(steps_of_mission, vec![step.clone()]);
    assert_eq!(steps_of_mission[0].cost_usd, Some(0.0125));

    // Timestamp comparisons in queries (the claim and stale-recovery shapes).
    let stale = mission_steps::Entity::find()
        .filter(mission_steps::Column::LeaseExpiresAt.lt(at + chrono::Duration::seconds(301)))
        .filter(mission_steps::Column::LeaseExpiresAt.gt(at + chrono::Duration::seconds(299)))
        .all(db)
        .await
        .expect("by lease expiry");
    assert_eq!(stale.len(), 1);

    let e = event("mission.finished", Some(m.id))
        .insert(db)
        .await
        .expect("event");
    let found = events::Entity::find()
        .filter(events::Column::MissionId.eq(m.id))
        .one(db)
        .await
        .expect("event by mission")
        .expect("event found");
    assert_eq!(found, e);
    assert_eq!(found.tags, json!(["a", "b"]));

    test_db.cleanup().await;
}

#[tokio::test]
async fn postgres_values_round_trip() {
    values_round_trip(fresh_postgres().await).await;
}

#[tokio::test]
async fn sqlite_values_round_trip() {
    values_round_trip(fresh_sqlite().await).await;
}

async fn postgres_database_exists(name: &str) -> bool {
    let admin = store::connect(
        &std::env::var("OPSLOOP_TEST_PG_URL")
            .unwrap_or_else(|_| opsloop_core::store::testing::DEFAULT_ADMIN_URL.to_owned()),
        &store::PoolOptions::default(),
    )
    .await
    .expect("admin");
    let found = names(
        &admin,
        &format!("SELECT datname::text FROM pg_database WHERE datname = '{name}'"),
    )
    .await;
    admin.close().await.expect("close");
    !found.is_empty()
}

#[tokio::test]
async fn test_databases_are_removed_on_cleanup_and_on_drop() {
    let pg = fresh_postgres().await;
    let name = pg.name.clone();
    assert!(postgres_database_exists(&name).await);
    pg.cleanup().await;
    assert!(
        !postgres_database_exists(&name).await,
        "{name} still exists"
    );

    // A test that panics never reaches cleanup(): Drop removes the database.
    let pg = fresh_postgres().await;
    let name = pg.name.clone();
    drop(pg);
    assert!(
        !postgres_database_exists(&name).await,
        "{name} survived Drop"
    );

    let lite = fresh_sqlite().await;
    let path = std::env::temp_dir().join(format!("{}.db", lite.name));
    assert!(path.exists());
    lite.cleanup().await;
    assert!(!path.exists());
}

#[tokio::test]
#[should_panic(expected = "pg_ctlcluster --skip-systemctl-redirect")]
async fn unreachable_postgres_panics_with_the_start_command() {
    // Port 1 on loopback: nothing listens there.
    let _ =
        opsloop_core::store::testing::fresh_postgres_on("postgres://postgres@127.0.0.1:1/postgres")
            .await;
}
