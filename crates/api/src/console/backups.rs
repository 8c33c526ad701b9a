//! The console's backups beyond the list: a restore preview (what a
//! restore of one backup brings back, table by table, beside the rows the
//! loop's database holds now) and verification on demand through the
//! backup-agent's gRPC `BackupService` (`[api.console] backup_grpc_url`,
//! else `backup.grpc_addr` of the same configuration; bearer token the
//! `console_backup_token` secret, else `console_alerter_token`). Restores
//! themselves stay with `opsloop backup restore`: they need a database URL
//! with credentials, which a web form should not carry.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use opsloop_core::proto::v1 as pb;
use opsloop_core::store::entities::backups;
use pb::backup_service_client::BackupServiceClient;
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr, Statement};

use super::peer::{GrpcPeer, PeerCallError, PeerKind};

/// How long a verification may take (it restores into a scratch database).
const VERIFY_TIMEOUT: StdDuration = StdDuration::from_secs(600);

/// The backup-agent, as the console's backups pages call it.
pub const BACKUP_AGENT: PeerKind = PeerKind {
    daemon: "backup-agent",
    setting: "backup_grpc_url",
    secret: "console_backup_token",
};

/// A client of the backup-agent's `BackupService`; connects on first use.
#[derive(Debug, Clone)]
pub struct BackupClient {
    peer: GrpcPeer,
}

impl BackupClient {
    pub fn new(peer: GrpcPeer) -> Self {
        Self { peer }
    }

    /// No backup-agent: every call says how to configure one.
    pub fn disabled() -> Self {
        Self::new(GrpcPeer::disabled(BACKUP_AGENT))
    }

    /// Verifies backup `id` now: checksum, restore into a scratch
    /// database, row counts against the manifest, timed per stage.
    pub async fn verify(&self, id: &str) -> Result<pb::VerifyBackupResponse, PeerCallError> {
        let mut client = BackupServiceClient::new(self.peer.channel()?);
        client
            .verify_backup(self.peer.request(
                pb::VerifyBackupRequest { id: id.to_owned() },
                VERIFY_TIMEOUT,
            ))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.peer.failed(s))
    }
}

/// One table of a restore preview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRows {
    /// `schema.table`, as the manifest names it.
    pub table: String,
    /// Rows in the backup.
    pub in_backup: i64,
    /// Rows the loop's database holds now (PostgreSQL's live-row
    /// statistics, an estimate); None: no such table here, or not known.
    pub now: Option<i64>,
}

/// What a restore of one backup would bring back.
#[derive(Debug, Clone, PartialEq)]
pub struct RestorePreview {
    pub backup: backups::Model,
    /// The database it was taken from, without credentials.
    pub database: Option<String>,
    /// e.g. `pg_dump` → `pg_dump (PostgreSQL) 15.20`.
    pub tool_versions: BTreeMap<String, String>,
    pub encryption: Option<String>,
    pub tables: Vec<TableRows>,
    /// Whether the `now` column was read (PostgreSQL only).
    pub compared: bool,
    /// `opsloop backup restore …` with a placeholder for the target URL.
    pub command: String,
}

/// The preview of `backup` against the rows of the loop's database now
/// (`now`: `schema.table` → live rows; None on SQLite).
pub fn preview(backup: backups::Model, now: Option<&BTreeMap<String, i64>>) -> RestorePreview {
    let manifest = backup.manifest.clone().unwrap_or(serde_json::Value::Null);
    let text = |key: &str| {
        manifest
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let tool_versions = manifest
        .get("tool_versions")
        .and_then(|v| v.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let tables = manifest
        .get("row_counts")
        .and_then(|v| v.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(table, rows)| {
                    Some(TableRows {
                        table: table.clone(),
                        in_backup: rows.as_i64()?,
                        now: now.and_then(|n| n.get(table).copied()),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let command = format!(
        "opsloop backup restore {} --target-url \"$OPSLOOP_RESTORE_TARGET_URL\" --confirm",
        backup.id
    );
    RestorePreview {
        database: text("database"),
        encryption: text("encryption"),
        tool_versions,
        tables,
        compared: now.is_some(),
        command,
        backup,
    }
}

/// Live rows per `schema.table` of the loop's database, from PostgreSQL's
/// statistics (one cheap query; exact counts could scan millions of
/// events). None on SQLite.
pub async fn live_rows(db: &DatabaseConnection) -> Result<Option<BTreeMap<String, i64>>, DbErr> {
    if db.get_database_backend() != DatabaseBackend::Postgres {
        return Ok(None);
    }
    let rows = db
        .query_all_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            "SELECT schemaname || '.' || relname AS name, n_live_tup AS rows FROM pg_stat_user_tables",
        ))
        .await?;
    let mut out = BTreeMap::new();
    for row in rows {
        let name: String = row.try_get("", "name")?;
        let count: i64 = row.try_get("", "rows")?;
        out.insert(name, count);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn backup(manifest: Option<serde_json::Value>) -> backups::Model {
        backups::Model {
            id: uuid::Uuid::nil(),
            target: "opsloop".into(),
            kind: "postgres".into(),
            status: "completed".into(),
            object_key: Some("opsloop/x.dump.zst".into()),
            size_bytes: Some(2048),
            sha256: Some("ab".repeat(32)),
            compression: "zstd:3".into(),
            manifest,
            started_at: Utc::now(),
            finished_at: Some(Utc::now()),
            verify_status: None,
            verified_at: None,
            verify_duration_ms: None,
            error: None,
        }
    }

    #[test]
    fn a_preview_lists_the_manifest_tables_beside_the_rows_now() {
        let manifest = serde_json::json!({
            "database": "postgres://db:5432/opsloop",
            "tool_versions": {"pg_dump": "pg_dump (PostgreSQL) 15.20"},
            "row_counts": {"public.missions": 12, "public.events": 340, "public.gone": 1},
            "encryption": "age"
        });
        let now = BTreeMap::from([
            ("public.missions".to_owned(), 15),
            ("public.events".to_owned(), 400),
        ]);
        let p = preview(backup(Some(manifest)), Some(&now));
        assert_eq!(p.database.as_deref(), Some("postgres://db:5432/opsloop"));
        assert_eq!(p.encryption.as_deref(), Some("age"));
        assert_eq!(p.tool_versions["pg_dump"], "pg_dump (PostgreSQL) 15.20");
        assert!(p.compared);
        assert_eq!(
            p.tables,
            vec![
                TableRows {
                    table: "public.events".into(),
                    in_backup: 340,
                    now: Some(400)
                },
                TableRows {
                    table: "public.gone".into(),
                    in_backup: 1,
                    now: None
                },
                TableRows {
                    table: "public.missions".into(),
                    in_backup: 12,
                    now: Some(15)
                },
            ]
        );
        assert!(
            p.command.starts_with("opsloop backup restore 00000000-"),
            "{}",
            p.command
        );
        assert!(p.command.ends_with("--confirm"));
    }

    #[test]
    fn a_backup_without_a_manifest_previews_nothing() {
        let p = preview(backup(None), None);
        assert!(p.tables.is_empty() && !p.compared && p.database.is_none());
    }

    #[tokio::test]
    async fn a_disabled_client_says_how_to_configure_it() {
        let err = BackupClient::disabled().verify("x").await.unwrap_err();
        assert!(err.to_string().contains("backup_grpc_url"), "{err}");
    }
}
