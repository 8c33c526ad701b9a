//! Progress of work in flight (`GetProgress`): a backup is visible with its
//! target and stage while `pg_dump` runs (a `pg_dump` that pauses before
//! its output ends), then its verification on the same backup id (a
//! `pg_restore` that starts late), and
//! nothing once the work has ended.

mod common;

use std::time::Duration;

use common::*;
use opsloop_backup_agent::agent::status;
use opsloop_core::store::testing::fresh_postgres;
use opsloop_core::testing::eventually;

/// The real `pg_dump`, whose output pauses for 3 s before it ends.
const SLOW_PG_DUMP: &str = r#"
case "$1" in --version) exec pg_dump --version;; esac
pg_dump "$@" | { cat; sleep 3; }
"#;

/// The real `pg_restore`, starting 2 s late (a verification stays visible).
const SLOW_PG_RESTORE: &str = r#"
case "$1" in --version) exec pg_restore --version;; esac
sleep 2
exec pg_restore "$@"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_and_its_verification_show_their_stage_while_they_run() {
    let db = fresh_postgres().await;
    let tools = tempfile::tempdir().expect("tempdir");
    let slow_dump = script(tools.path(), "pg_dump", SLOW_PG_DUMP);
    let slow_restore = script(tools.path(), "pg_restore", SLOW_PG_RESTORE);
    let h = harness(&db, vec![("main", db.url.clone())], |s| {
        s.pg_dump_path = Some(slow_dump.clone());
        s.pg_restore_path = Some(slow_restore.clone());
    })
    .expect("agent");
    assert!(h.agent.progress(None, None).is_none(), "nothing runs yet");

    let running = h
        .agent
        .run_backup(Some("main"), false)
        .await
        .expect("starts");
    let seen = eventually("the backup in flight", Duration::from_secs(10), || async {
        h.agent
            .progress(None, Some("main"))
            .ok_or_else(|| "not visible yet".to_owned())
    })
    .await;
    assert_eq!(seen.backup_id, running.id);
    assert_eq!(
        (seen.operation, seen.stage, seen.target.as_str()),
        ("backup", "dump", "main")
    );
    assert!(
        h.agent.progress(None, Some("files")).is_none(),
        "another target"
    );
    assert_eq!(
        h.agent
            .progress(Some(running.id), None)
            .map(|s| s.operation),
        Some("backup"),
        "by id too"
    );

    let done = eventually("the backup finished", Duration::from_secs(30), || async {
        match h.agent.progress(Some(running.id), None) {
            None => Ok(()),
            Some(s) => Err(format!("{} {}", s.operation, s.stage)),
        }
    })
    .await;
    let () = done;
    let row = h.agent.get(running.id).await.expect("row");
    assert_eq!(row.status, status::COMPLETED, "{:?}", row.error);

    // A verification reports its stages on the same backup id.
    let agent = h.agent.clone();
    let id = running.id;
    let verifying = tokio::spawn(async move { agent.verify(id).await });
    let stages = eventually(
        "the verification in flight",
        Duration::from_secs(10),
        || async {
            h.agent
                .progress(Some(id), None)
                .filter(|s| s.operation == "verify")
                .ok_or_else(|| "not visible yet".to_owned())
        },
    )
    .await;
    assert!(
        ["fetch", "checksum", "restore", "compare", "cleanup"].contains(&stages.stage),
        "{}",
        stages.stage
    );
    let verified = verifying.await.expect("join").expect("verify");
    assert!(verified.report.passed, "{:?}", verified.report.error);
    assert!(
        h.agent.progress(Some(id), None).is_none(),
        "gone once verified"
    );
    db.cleanup().await;
}
