//! Backups that go wrong: a hanging `pg_dump` is killed with its process
//! group and reported; a dump that dies mid-stream and a crashed agent's
//! partial upload never become backups and are swept; a missing `pg_dump` is
//! a clear error at start; a `pg_dump` older than the server is refused before
//! it runs, naming both versions; one backup at a time per target.

mod common;

use std::collections::HashSet;
use std::io::Write as _;
use std::time::{Duration, Instant};

use common::*;
use opsloop_backup_agent::agent::{AgentError, status};
use opsloop_backup_agent::lease;
use opsloop_backup_agent::pipeline::PipelineError;
use opsloop_backup_agent::schedule::Clock as _;
use opsloop_backup_agent::store::{BackupStore, object_key};
use opsloop_core::store::entities::backups;
use opsloop_core::store::testing::fresh_postgres;
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use uuid::Uuid;

/// A fake `pg_dump`: answers `--version`, writes part of a dump and a line
/// of stderr, then sleeps in a child process that holds stdout open.
const HANGING_PG_DUMP: &str = r#"
case "$1" in --version) echo "pg_dump (PostgreSQL) 15.99"; exit 0;; esac
echo "pg_dump: dumping contents of table public.huge" >&2
printf 'PGDMP-partial-output'
sleep 300 &
echo $! > "$(dirname "$0")/sleeper.pid"
wait
"#;

fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie waiting for a reaper is dead too.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_dump_is_killed_with_its_process_group_and_reported() {
    let db = fresh_postgres().await;
    let tools = tempfile::tempdir().expect("tempdir");
    let fake = script(tools.path(), "pg_dump", HANGING_PG_DUMP);
    let h = harness(&db, vec![("main", db.url.clone())], |s| {
        s.pg_dump_path = Some(fake.clone());
        s.dump_timeout_secs = 2;
    })
    .expect("agent");
    let mut alerts = subscribe(&h.bus, "alert.#").await;

    let started = Instant::now();
    let running = h
        .agent
        .run_backup(Some("main"), false)
        .await
        .expect("starts");
    assert_eq!(running.status, status::RUNNING);
    // One backup at a time per target.
    let second = h.agent.run_backup(Some("main"), false).await;
    assert!(
        matches!(second, Err(AgentError::AlreadyRunning(_))),
        "{:?}",
        second.err()
    );
    let status: tonic::Status = AgentError::AlreadyRunning("main".into()).into();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);

    let alert = h.next_alert(&mut alerts).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "killed at the timeout"
    );
    assert_eq!(alert.routing_key, "alert.high");
    assert_eq!(body(&alert)["labels"]["alertname"], "BackupFailed");

    let row = h.agent.get(running.id).await.expect("row");
    assert_eq!(row.status, status::FAILED);
    let error = row.error.unwrap_or_default();
    assert!(error.contains("did not finish within"), "{error}");
    assert!(
        error.contains("dumping contents of table public.huge"),
        "stderr tail reported: {error}"
    );

    // The whole group died, including the grandchild holding stdout.
    let sleeper: u32 = std::fs::read_to_string(tools.path().join("sleeper.pid"))
        .expect("sleeper pid")
        .trim()
        .parse()
        .expect("pid");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_gone(sleeper) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(process_gone(sleeper), "the sleeping grandchild was killed");

    // Nothing half-written is left or listed; the lease is free again.
    assert!(h.store.manifests().await.expect("list").is_empty());
    assert!(
        h.store
            .sweep(&HashSet::new())
            .await
            .expect("sweep")
            .is_empty(),
        "no leftovers"
    );
    assert!(
        !lease::is_held(&db.db, &lease::backup_lease("main"), h.clock.now())
            .await
            .expect("lease")
    );

    // A caller that gives up waiting (a cancelled call) does not abort the
    // backup halfway: it still ends, is reported and frees its lease.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        h.agent.run_backup(Some("main"), true),
    )
    .await;
    assert!(gave_up.is_err(), "still running when the caller left");
    let alert = h.next_alert(&mut alerts).await;
    assert_eq!(body(&alert)["labels"]["alertname"], "BackupFailed");
    assert!(
        !lease::is_held(&db.db, &lease::backup_lease("main"), h.clock.now())
            .await
            .expect("lease"),
        "lease released after an abandoned call"
    );
    let again = h.agent.run_backup(Some("main"), false).await;
    assert!(again.is_ok(), "not stuck as running: {:?}", again.err());
    let _ = h.next_alert(&mut alerts).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_that_dies_mid_stream_never_becomes_a_backup() {
    let db = fresh_postgres().await;
    let tools = tempfile::tempdir().expect("tempdir");
    let fake = script(
        tools.path(),
        "pg_dump",
        r#"case "$1" in --version) echo "pg_dump (PostgreSQL) 15.99"; exit 0;; esac
head -c 200000 /dev/urandom
echo "pg_dump: error: connection to server lost" >&2
exit 1"#,
    );
    let h = harness(&db, vec![("main", db.url.clone())], |s| {
        s.pg_dump_path = Some(fake.clone())
    })
    .expect("agent");
    let row = h.agent.run_backup(Some("main"), true).await.expect("runs");
    assert_eq!(row.status, status::FAILED);
    let error = row.error.unwrap_or_default();
    assert!(
        error.contains("pg_dump failed") && error.contains("connection to server lost"),
        "{error}"
    );
    assert!(
        h.store.manifests().await.expect("list").is_empty(),
        "not a backup"
    );
    assert!(
        h.store
            .sweep(&HashSet::new())
            .await
            .expect("sweep")
            .is_empty(),
        "partial object removed"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_upload_is_never_listed_and_is_swept_at_start() {
    let db = fresh_postgres().await;
    let h = harness(
        &db,
        vec![("main", db.url.clone()), ("other", db.url.clone())],
        |_| {},
    )
    .expect("agent");

    // An agent crashed mid-upload: a running row, a partial object, and an
    // object that was completed but never got its manifest.
    let crashed = Uuid::now_v7();
    backups::ActiveModel {
        id: Set(crashed),
        target: Set("main".into()),
        kind: Set("postgres".into()),
        status: Set(status::RUNNING.into()),
        object_key: Set(None),
        size_bytes: Set(None),
        sha256: Set(None),
        compression: Set("zstd:3".into()),
        manifest: Set(None),
        started_at: Set(at("2026-11-23T09:00:00Z")),
        finished_at: Set(None),
        verify_status: Set(None),
        verified_at: Set(None),
        verify_duration_ms: Set(None),
        error: Set(None),
    }
    .insert(&db.db)
    .await
    .expect("insert crashed row");
    let mut partial = h
        .store
        .begin_upload(&object_key("main", crashed, "pgdump.zst"))
        .await
        .expect("begin");
    partial.write_all(b"PGDMP half of a dump").expect("write");
    partial.flush().expect("flush");
    std::mem::forget(partial);
    let unmanifested = Uuid::now_v7();
    let mut orphan = h
        .store
        .begin_upload(&object_key("main", unmanifested, "pgdump.zst"))
        .await
        .expect("begin");
    orphan
        .write_all(b"complete bytes, no manifest")
        .expect("write");
    orphan.commit().expect("commit");

    // Meanwhile another agent is really taking a backup of "other".
    let live = Uuid::now_v7();
    lease::acquire(
        &db.db,
        &lease::backup_lease("other"),
        "another-agent",
        chrono::TimeDelta::minutes(5),
        h.clock.now(),
    )
    .await
    .expect("lease")
    .expect("acquired");
    backups::ActiveModel {
        id: Set(live),
        target: Set("other".into()),
        kind: Set("postgres".into()),
        status: Set(status::RUNNING.into()),
        compression: Set("zstd:3".into()),
        started_at: Set(at("2026-11-23T09:59:00Z")),
        ..Default::default()
    }
    .insert(&db.db)
    .await
    .expect("insert live row");
    let mut live_upload = h
        .store
        .begin_upload(&object_key("other", live, "pgdump.zst"))
        .await
        .expect("begin");
    live_upload.write_all(b"in progress").expect("write");
    live_upload.flush().expect("flush");

    assert!(
        h.store.manifests().await.expect("list").is_empty(),
        "never listed as backups"
    );
    let listed = h
        .agent
        .list(None, None, Some(status::COMPLETED), 0, 10)
        .await
        .expect("list");
    assert!(listed.is_empty());

    h.agent.recover().await.expect("recover");
    let crashed_row = h.agent.get(crashed).await.expect("row");
    assert_eq!(crashed_row.status, status::FAILED);
    assert!(
        crashed_row
            .error
            .unwrap_or_default()
            .contains("agent stopped")
    );
    assert_eq!(
        h.agent.get(live).await.expect("row").status,
        status::RUNNING,
        "live backup untouched"
    );
    let remaining: Vec<String> = std::fs::read_dir(h.store.root().join("main"))
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(remaining.is_empty(), "swept: {remaining:?}");
    live_upload
        .commit()
        .expect("the live upload survived the sweep");
    assert_eq!(
        backups::Entity::find()
            .all(&db.db)
            .await
            .expect("rows")
            .len(),
        2,
        "rows are kept as history"
    );
    db.cleanup().await;
}

#[tokio::test]
async fn a_missing_pg_dump_is_a_clear_error_at_start() {
    let db = opsloop_core::store::testing::fresh_sqlite().await;
    let missing = std::path::PathBuf::from("/nonexistent/bin/pg_dump");
    let err = harness(
        &db,
        vec![("main", "postgres://postgres@127.0.0.1:5432/x".into())],
        |s| s.pg_dump_path = Some(missing.clone()),
    )
    .err()
    .expect("refused at start");
    assert!(
        matches!(
            err,
            AgentError::Pipeline(PipelineError::ToolMissing {
                tool: "pg_dump",
                ..
            })
        ),
        "{err}"
    );
    let line = err.to_string();
    assert!(
        line.contains("pg_dump not found") && line.contains("/nonexistent/bin/pg_dump"),
        "{line}"
    );
    assert!(
        line.contains("backup.pg_dump_path"),
        "says what to set: {line}"
    );

    // A SQLite-only agent does not need the PostgreSQL tools.
    assert!(
        harness(&db, vec![("embedded", db.url.clone())], |s| s
            .pg_dump_path =
            Some(missing.clone()))
        .is_ok()
    );
    db.cleanup().await;
}

/// The `pg_dump` on PATH (the real client the other tests use).
fn real_pg_dump() -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("pg_dump"))
        .find(|p| p.is_file())
        .expect("pg_dump on PATH: apt-get install postgresql-client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_dump_older_than_the_server_fails_with_both_versions_and_a_target_can_have_its_own() {
    let db = fresh_postgres().await;
    let tools = tempfile::tempdir().expect("tempdir");
    // A client one major version behind the server: it must never run.
    let ran = tools.path().join("ran");
    let old = script(
        tools.path(),
        "pg_dump",
        &format!(
            r#"case "$1" in --version) echo "pg_dump (PostgreSQL) 9.6.24"; exit 0;; esac
touch {}
exit 1"#,
            ran.display()
        ),
    );
    let real = real_pg_dump();
    let h = harness(
        &db,
        vec![("legacy", db.url.clone()), ("modern", db.url.clone())],
        |s| {
            s.pg_dump_path = Some(old.clone());
            s.targets[1].pg_dump_path = Some(real.clone());
        },
    )
    .expect("agent");

    let row = h
        .agent
        .run_backup(Some("legacy"), true)
        .await
        .expect("runs");
    assert_eq!(row.status, status::FAILED);
    let error = row.error.unwrap_or_default();
    let server_major = {
        let version: String = sea_orm::ConnectionTrait::query_one_raw(
            &db.db,
            sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SHOW server_version".to_owned(),
            ),
        )
        .await
        .expect("query")
        .expect("row")
        .try_get_by_index(0)
        .expect("version");
        version.split('.').next().unwrap_or_default().to_owned()
    };
    assert!(
        error.contains("pg_dump 9.6.24 is older than the server (PostgreSQL ")
            && error.contains(&format!(
                "install the PostgreSQL {server_major} client or newer"
            ))
            && error.contains("backup.pg_dump_path"),
        "{error}"
    );
    assert!(!ran.exists(), "the old pg_dump was never run to dump");
    assert!(
        h.store.manifests().await.expect("list").is_empty(),
        "nothing stored"
    );

    // The target with its own (current) client is backed up as usual.
    let row = h
        .agent
        .run_backup(Some("modern"), true)
        .await
        .expect("runs");
    assert_eq!(row.status, status::COMPLETED, "{:?}", row.error);
    db.cleanup().await;
}
