//! Shared test wiring: an agent on a fresh catalogue database, an in-memory
//! bus, a temporary store and audit log, and a manual clock.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use opsloop_backup_agent::agent::{Agent, AgentDeps, AgentError};
use opsloop_backup_agent::config::{BackupConfig, BackupSettings, TargetSettings};
use opsloop_backup_agent::store::LocalStore;
use opsloop_core::audit::AuditLog;
use opsloop_core::bus::memory::MemoryBus;
use opsloop_core::bus::{Bus, BusMessage, QueueSpec, Subscription};
use opsloop_core::clock::ManualClock;
use opsloop_core::config::AuditSettings;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store::testing::TestDb;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

/// The PostgreSQL server tests create databases on.
pub(crate) const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub(crate) fn admin_url() -> String {
    std::env::var("OPSLOOP_TEST_PG_URL").unwrap_or_else(|_| ADMIN_URL.to_owned())
}

pub(crate) fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("valid instant")
        .with_timezone(&Utc)
}

pub(crate) struct Harness {
    pub agent: Arc<Agent>,
    /// The catalogue (the agent's own database, with its outbox).
    pub db: sea_orm::DatabaseConnection,
    pub bus: MemoryBus,
    pub store: LocalStore,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
}

impl Harness {
    /// Publishes what the agent wrote to the outbox (alerts), as the api's
    /// relay does in a deployment. Returns how many messages went out.
    pub(crate) async fn relay(&self) -> usize {
        opsloop_core::workflow::outbox::relay_once(&self.db, &self.bus, 1000)
            .await
            .expect("relay the outbox")
            .published
    }

    /// The next alert on `subscription`, relaying the outbox while waiting.
    pub(crate) async fn next_alert(&self, subscription: &mut Subscription) -> BusMessage {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            self.relay().await;
            if let Ok(Some(delivery)) =
                tokio::time::timeout(Duration::from_millis(50), subscription.next()).await
            {
                let message = delivery.message.clone();
                delivery.ack().await.expect("ack");
                return message;
            }
            assert!(std::time::Instant::now() < deadline, "an alert within 10 s");
        }
    }

    pub(crate) fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }
}

/// An agent whose catalogue is `catalog`, backing up `targets`.
pub(crate) fn harness(
    catalog: &TestDb,
    targets: Vec<(&str, String)>,
    tweak: impl FnOnce(&mut BackupSettings),
) -> Result<Harness, AgentError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = BackupSettings {
        targets: targets
            .into_iter()
            .map(|(name, url)| TargetSettings {
                name: name.to_owned(),
                url,
                password_secret: None,
                ..Default::default()
            })
            .collect(),
        store_dir: dir.path().join("backups"),
        // The schedule and retention tests were written for this zone (the
        // default is UTC); pinned so they keep testing a zone away from UTC.
        timezone: "Asia/Tokyo".into(),
        ..BackupSettings::default()
    };
    settings.verify.after_backup = false;
    settings.prune_after_backup = false;
    settings.verify.scratch_url = Some(admin_url());
    tweak(&mut settings);
    let config = BackupConfig::new(settings, &catalog.url).expect("valid settings");
    let bus = MemoryBus::new();
    let store = LocalStore::new(dir.path().join("backups"));
    let clock = Arc::new(ManualClock::new(at("2026-11-23T10:00:00Z")));
    let audit = Arc::new(AuditLog::new(&AuditSettings {
        log_path: dir.path().join("audit.jsonl"),
        ..AuditSettings::default()
    }));
    let agent = Agent::new(AgentDeps {
        config,
        db: catalog.db.clone(),
        bus: Arc::new(bus.clone()),
        audit,
        secrets: SecretStore::with_sources(None, dir.path(), Vec::new()),
        store: Arc::new(store.clone()),
        clock: clock.clone(),
    })?;
    Ok(Harness {
        agent,
        db: catalog.db.clone(),
        bus,
        store,
        clock,
        dir,
    })
}

pub(crate) async fn subscribe(bus: &MemoryBus, pattern: &str) -> Subscription {
    bus.subscribe(QueueSpec::new(
        format!("test.{}", uuid::Uuid::new_v4().simple()),
        &[pattern],
    ))
    .await
    .expect("subscribe")
}

/// The next message, or a panic after a generous bound.
pub(crate) async fn next_message(subscription: &mut Subscription) -> BusMessage {
    let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("a message within 10 s")
        .expect("bus open");
    let message = delivery.message.clone();
    delivery.ack().await.expect("ack");
    message
}

pub(crate) fn body(message: &BusMessage) -> serde_json::Value {
    serde_json::from_slice(&message.payload).expect("JSON body")
}

/// An empty PostgreSQL database (not migrated), dropped with the guard.
pub(crate) struct EmptyDb {
    pub name: String,
    pub url: String,
}

impl EmptyDb {
    pub(crate) async fn create() -> Self {
        let name = format!("opsloop_test_empty_{}", uuid::Uuid::new_v4().simple());
        admin_exec(&format!("CREATE DATABASE \"{name}\"")).await;
        let admin = admin_url();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub(crate) async fn drop_now(self) {
        admin_exec(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .await;
    }
}

pub(crate) async fn admin_exec(sql: &str) {
    let admin = sea_orm::Database::connect(admin_url())
        .await
        .expect("admin connection");
    admin.execute_unprepared(sql).await.expect(sql);
    let _ = admin.close().await;
}

/// Per user table: (rows, md5 of every row's text in order).
pub(crate) async fn table_fingerprints(url: &str) -> BTreeMap<String, (i64, String)> {
    let db = sea_orm::Database::connect(url).await.expect("connect");
    let tables = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename), schemaname || '.' || tablename \
             FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 2",
        ))
        .await
        .expect("tables");
    let mut out = BTreeMap::new();
    for row in tables {
        let quoted: String = row.try_get_by_index(0).expect("name");
        let plain: String = row.try_get_by_index(1).expect("name");
        let sql = format!(
            "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {quoted} t"
        );
        let r = db
            .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .expect("fingerprint")
            .expect("a row");
        let n: i64 = r.try_get_by_index(0).expect("count");
        let md5: String = r.try_get_by_index(1).expect("md5");
        out.insert(plain, (n, md5));
    }
    let _ = db.close().await;
    out
}

/// An executable shell script at `dir/name`.
pub(crate) fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}
