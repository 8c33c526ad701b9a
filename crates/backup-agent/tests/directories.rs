//! Directory sets: archived as tar + zstd through the same pipeline, with
//! file count and bytes in the manifest; verified by unpacking; restored
//! into an empty directory (a non-empty one needs force); tampering fails
//! verification.

mod common;

use common::*;
use opsloop_backup_agent::agent::{AgentError, status};
use opsloop_backup_agent::archive::FileStats;
use opsloop_backup_agent::config::DirectorySetSettings;
use opsloop_backup_agent::store::BackupStore as _;
use opsloop_core::store::testing::fresh_sqlite;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_set_is_backed_up_verified_and_restored() {
    let catalog = fresh_sqlite().await;
    let files = tempfile::tempdir().expect("tempdir");
    let artifacts = files.path().join("var/artifacts");
    let logs = files.path().join("var/logs");
    std::fs::create_dir_all(artifacts.join("2026/11")).expect("mkdir");
    std::fs::create_dir_all(&logs).expect("mkdir");
    std::fs::write(artifacts.join("2026/11/report.json"), br#"{"ok":true}"#).expect("write");
    std::fs::write(artifacts.join("image.bin"), vec![42u8; 50_000]).expect("write");
    std::fs::write(logs.join("audit_events.jsonl"), b"{\"action\":\"x\"}\n").expect("write");

    let h = harness(&catalog, vec![], |s| {
        s.directories = vec![DirectorySetSettings {
            name: "files".into(),
            paths: vec![artifacts.clone(), logs.clone()],
        }];
    })
    .expect("agent");
    let row = h
        .agent
        .run_backup(Some("files"), true)
        .await
        .expect("backup");
    assert_eq!(row.status, status::COMPLETED, "{:?}", row.error);
    assert_eq!(row.kind, "directory");
    let manifest = h
        .store
        .manifest("files", row.id)
        .await
        .expect("read")
        .expect("manifest");
    assert_eq!(
        manifest.files,
        Some(FileStats {
            files: 3,
            bytes: 11 + 50_000 + 15
        })
    );
    assert!(manifest.object_key.ends_with(".tar.zst"));

    let verified = h.agent.verify(row.id).await.expect("verify");
    assert!(verified.report.passed, "{:?}", verified.report.error);

    let dest = h.dir.path().join("restored");
    let restored = h
        .agent
        .restore(
            row.id,
            &format!("dir:{}", dest.display()),
            true,
            false,
            "test-admin",
        )
        .await
        .expect("restore");
    assert_eq!(restored.report.row_counts["files"], 3);
    let image = dest
        .join(opsloop_backup_agent::archive::archive_name(&artifacts))
        .join("image.bin");
    assert_eq!(
        std::fs::read(image).expect("restored file"),
        vec![42u8; 50_000]
    );
    let again = h
        .agent
        .restore(
            row.id,
            &format!("dir:{}", dest.display()),
            true,
            false,
            "test-admin",
        )
        .await;
    assert!(
        matches!(again, Err(AgentError::RestoreRefused(_))),
        "{:?}",
        again.err()
    );

    // Tampering is caught by the checksum.
    let object = h.store.path_of(&manifest.object_key).expect("path");
    let mut bytes = std::fs::read(&object).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&object, bytes).expect("write");
    let verified = h.agent.verify(row.id).await.expect("verify");
    assert!(!verified.report.passed && !verified.report.checksum_ok);

    catalog.cleanup().await;
}
