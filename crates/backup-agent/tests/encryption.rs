//! At-rest encryption to age recipients: an encrypted backup verifies and
//! restores with the identities secret, its stored bytes hold no plaintext,
//! and a key rotation keeps old backups readable while their identity is
//! kept in the secret — and only then.

mod common;

use std::sync::Arc;

use age::secrecy::ExposeSecret as _;
use common::*;
use opsloop_backup_agent::agent::{Agent, AgentDeps, status};
use opsloop_backup_agent::config::{BackupConfig, BackupSettings, TargetSettings};
use opsloop_backup_agent::service::BackupGrpc;
use opsloop_backup_agent::store::BackupStore as _;
use opsloop_core::audit::AuditLog;
use opsloop_core::config::AuditSettings;
use opsloop_core::proto::v1::ListBackupsRequest;
use opsloop_core::proto::v1::backup_service_server::BackupService as _;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store::testing::{fresh_postgres, fresh_sqlite};
use sea_orm::ConnectionTrait;

const MARKER: &str = "plaintext-marker-7f3c9a1e-do-not-leak";
const SECRET: &str = "backup_age_identities";

fn key_line(identity: &age::x25519::Identity) -> String {
    identity.to_string().expose_secret().to_owned()
}

fn write_identities(h: &Harness, lines: &[String]) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = h.dir.path().join(SECRET);
    std::fs::write(&path, format!("# age identities\n{}\n", lines.join("\n"))).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// A second agent on `h`'s catalogue, store and secrets, with `recipients`.
fn agent_with(
    h: &Harness,
    catalog: &opsloop_core::store::testing::TestDb,
    url: &str,
    recipients: Vec<String>,
) -> Arc<Agent> {
    let mut settings = BackupSettings {
        targets: vec![TargetSettings {
            name: "embedded".into(),
            url: url.to_owned(),
            password_secret: None,
            ..Default::default()
        }],
        store_dir: h.dir.path().join("backups"),
        ..BackupSettings::default()
    };
    settings.verify.after_backup = false;
    settings.prune_after_backup = false;
    settings.encryption.recipients = recipients;
    let config = BackupConfig::new(settings, &catalog.url).expect("valid settings");
    Agent::new(AgentDeps {
        config,
        db: catalog.db.clone(),
        bus: Arc::new(h.bus.clone()),
        audit: Arc::new(AuditLog::new(&AuditSettings {
            log_path: h.dir.path().join("audit.jsonl"),
            ..AuditSettings::default()
        })),
        secrets: SecretStore::with_sources(None, h.dir.path(), Vec::new()),
        store: Arc::new(h.store.clone()),
        clock: h.clock.clone(),
    })
    .expect("agent")
}

async fn seeded_sqlite() -> opsloop_core::store::testing::TestDb {
    let source = fresh_sqlite().await;
    source
        .db
        .execute_unprepared(&format!(
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
             INSERT INTO notes (body) SELECT 'note ' || i FROM n;
             INSERT INTO notes (body) VALUES ('{MARKER}');"
        ))
        .await
        .expect("seed");
    source
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_sqlite_backup_verifies_restores_and_hides_plaintext() {
    let source = seeded_sqlite().await;
    let catalog = fresh_postgres().await;
    let key = age::x25519::Identity::generate();
    let public = key.to_public().to_string();
    let h = harness(&catalog, vec![("embedded", source.url.clone())], |s| {
        s.encryption.recipients = vec![public.clone()];
    })
    .expect("agent");

    let row = h.agent.run_backup(None, true).await.expect("backup runs");
    assert_eq!(row.status, status::COMPLETED, "{:?}", row.error);
    let manifest = h
        .store
        .manifest("embedded", row.id)
        .await
        .expect("read")
        .expect("manifest");
    assert_eq!(manifest.encryption.as_deref(), Some("age"));
    assert_eq!(manifest.recipients, vec![public.clone()]);
    assert_eq!(manifest.row_counts["main.notes"], 501);
    assert!(manifest.object_key.ends_with(".sqlite.zst.age"));
    let manifest_json = serde_json::to_string(&manifest).expect("json");
    assert!(!manifest_json.contains("AGE-SECRET-KEY"), "{manifest_json}");

    // The stored object is age, not zstd, and holds no plaintext.
    let stored = std::fs::read(h.dir.path().join("backups").join(&manifest.object_key))
        .expect("stored object");
    assert!(stored.starts_with(b"age-encryption.org/v1\n"));
    assert!(
        !stored.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
        "the marker leaked into the stored object"
    );
    assert!(zstd::decode_all(&stored[..]).is_err(), "not plain zstd");

    // Without the identities secret: a clear error naming it.
    let verified = h.agent.verify(row.id).await.expect("verification runs");
    assert!(!verified.report.passed);
    assert!(verified.report.checksum_ok, "checksum before decryption");
    let error = verified.report.error.clone().unwrap_or_default();
    assert!(error.contains(SECRET), "{error}");

    write_identities(&h, &[key_line(&key)]);
    let verified = h.agent.verify(row.id).await.expect("verification runs");
    assert!(verified.report.passed, "{:?}", verified.report.error);

    let restored_path = h.dir.path().join("restored.db");
    let restored = h
        .agent
        .restore(
            row.id,
            &format!("sqlite://{}", restored_path.display()),
            true,
            false,
            "test-admin",
        )
        .await
        .expect("restore");
    assert_eq!(restored.report.row_counts, manifest.row_counts);
    let restored_bytes = std::fs::read(&restored_path).expect("restored file");
    assert!(
        restored_bytes
            .windows(MARKER.len())
            .any(|w| w == MARKER.as_bytes()),
        "the restored database holds the marker row"
    );

    // The API says the backup is encrypted.
    let grpc = BackupGrpc::new(h.agent.clone());
    let listed = grpc
        .list_backups(tonic::Request::new(ListBackupsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.backups.len(), 1);
    assert!(listed.backups[0].encrypted);

    catalog.cleanup().await;
    source.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_keeps_old_backups_readable_with_their_identity() {
    let source = seeded_sqlite().await;
    let catalog = fresh_postgres().await;
    let (one, two) = (
        age::x25519::Identity::generate(),
        age::x25519::Identity::generate(),
    );
    let h = harness(&catalog, vec![("embedded", source.url.clone())], |s| {
        s.encryption.recipients = vec![one.to_public().to_string()];
    })
    .expect("agent");
    let a = h.agent.run_backup(None, true).await.expect("backup A");
    assert_eq!(a.status, status::COMPLETED, "{:?}", a.error);

    // Rotate: the config now names key 2 only; A is not rewritten.
    h.clock.set(at("2026-11-23T11:00:00Z"));
    let rotated = agent_with(&h, &catalog, &source.url, vec![two.to_public().to_string()]);
    let b = rotated.run_backup(None, true).await.expect("backup B");
    assert_eq!(b.status, status::COMPLETED, "{:?}", b.error);
    let manifest_b = h
        .store
        .manifest("embedded", b.id)
        .await
        .expect("read")
        .expect("manifest");
    assert_eq!(manifest_b.recipients, vec![two.to_public().to_string()]);

    // Both identities kept: both verify.
    write_identities(&h, &[key_line(&two), key_line(&one)]);
    for id in [a.id, b.id] {
        let verified = rotated.verify(id).await.expect("verification runs");
        assert!(verified.report.passed, "{id}: {:?}", verified.report.error);
    }

    // Key 1 dropped: A no longer decrypts (a clear error), B still does.
    write_identities(&h, &[key_line(&two)]);
    let verified = rotated.verify(a.id).await.expect("verification runs");
    assert!(!verified.report.passed);
    assert!(verified.report.checksum_ok);
    let error = verified.report.error.clone().unwrap_or_default();
    assert!(error.contains(SECRET), "{error}");
    assert!(error.contains(&one.to_public().to_string()), "{error}");
    let verified = rotated.verify(b.id).await.expect("verification runs");
    assert!(verified.report.passed, "{:?}", verified.report.error);

    catalog.cleanup().await;
    source.cleanup().await;
}

#[tokio::test]
async fn a_bad_recipient_is_a_config_error_naming_it() {
    let settings = BackupSettings {
        encryption: opsloop_backup_agent::config::EncryptionSettings {
            recipients: vec![
                age::x25519::Identity::generate().to_public().to_string(),
                "age1notakey".into(),
            ],
        },
        ..BackupSettings::default()
    };
    let err = BackupConfig::new(settings, "sqlite://x.db").expect_err("invalid");
    assert!(
        err.to_string().contains("backup.encryption.recipients[1]"),
        "{err}"
    );
}
