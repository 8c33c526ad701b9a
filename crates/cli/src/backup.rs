//! `opsloop backup now|list|verify|restore|prune --dry-run`: the
//! backup-agent's `BackupService` (default endpoint http://127.0.0.1:50053, or
//! $OPSLOOP_BACKUP_ENDPOINT).

use anyhow::{anyhow, bail};
use clap::{Subcommand, ValueEnum};
use opsloop_core::proto::v1::{
    Backup, BackupKind, BackupStatus, ListBackupsRequest, PreviewRetentionRequest, RestoreRequest,
    RetentionDecision, RunBackupRequest, VerifyBackupRequest,
};
use serde_json::{Value, json};

use crate::client::{Connection, Daemon, Globals};
use crate::output::{
    self, OutputFormat, Table, enum_label, fields, json_doc, opt, opt_json, ts, ts_json,
};
use crate::progress::{self, Watch};

/// `opsloop backup …`
#[derive(Subcommand)]
pub enum BackupCommand {
    /// Take a backup now and wait for it to finish (on a terminal, its
    /// stage and bytes stored are shown while it runs).
    Now {
        /// Target to back up (a configured database or directory set). Default: the database.
        #[arg(long)]
        target: Option<String>,
        /// Return as soon as the backup has started instead of waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// List backups, newest first, with age, size and verification state.
    List {
        /// Only backups of this target.
        #[arg(long)]
        target: Option<String>,
        /// Only backups of this kind.
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        /// Only backups with this status.
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// Most backups to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Cursor printed by a previous page.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Verify a backup: checksum, restore into a scratch database, compare row counts.
    Verify {
        /// Backup id.
        id: String,
    },
    /// Restore a backup into a database (admin token; audited).
    Restore {
        /// Backup id.
        id: String,
        /// Connection URL of the database to restore into (never echoed back).
        #[arg(long, env = "OPSLOOP_RESTORE_TARGET_URL", hide_env_values = true)]
        target_url: String,
        /// Confirm the restore (required).
        #[arg(long)]
        confirm: bool,
        /// Restore even when the target database is not empty.
        #[arg(long)]
        force: bool,
    },
    /// Show what retention would keep and remove, and why (nothing is deleted).
    Prune {
        /// Only show the decision; required: pruning itself runs on the agent's schedule.
        #[arg(long, required = true)]
        dry_run: bool,
        /// Target whose backups to judge. Default: the database.
        #[arg(long)]
        target: Option<String>,
    },
}

/// A backup kind on the command line.
#[derive(Clone, Copy, ValueEnum)]
pub enum KindArg {
    Postgres,
    Sqlite,
    Directory,
}

/// A backup status on the command line.
#[derive(Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Running,
    Completed,
    Failed,
}

/// Runs a `backup` command.
pub async fn run(command: BackupCommand, globals: &Globals) -> anyhow::Result<()> {
    match command {
        BackupCommand::Now { target, no_wait } => {
            let conn = Connection::open(globals, Daemon::BackupAgent).await?;
            let watch = Watch::NewBackup(target.clone());
            let draw = !no_wait && progress::wanted(globals.output);
            let mut client = conn.backups();
            let call = client.run_backup(RunBackupRequest {
                target,
                wait: !no_wait,
            });
            let backup = progress::while_running(&conn, watch, draw, call)
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .backup
                .ok_or_else(|| anyhow!("the backup-agent answered without a backup"))?;
            print_backup(&backup, globals.output)?;
            if backup.status() == BackupStatus::Failed {
                bail!(
                    "the backup failed: {}",
                    output::one_line(backup.error.as_deref().unwrap_or("no detail"))
                );
            }
            Ok(())
        }
        BackupCommand::List {
            target,
            kind,
            status,
            limit,
            page_token,
        } => {
            let kind = match kind {
                None => BackupKind::Unspecified,
                Some(KindArg::Postgres) => BackupKind::Postgres,
                Some(KindArg::Sqlite) => BackupKind::Sqlite,
                Some(KindArg::Directory) => BackupKind::Directory,
            };
            let status = match status {
                None => BackupStatus::Unspecified,
                Some(StatusArg::Running) => BackupStatus::Running,
                Some(StatusArg::Completed) => BackupStatus::Completed,
                Some(StatusArg::Failed) => BackupStatus::Failed,
            };
            let conn = Connection::open(globals, Daemon::BackupAgent).await?;
            let response = conn
                .backups()
                .list_backups(ListBackupsRequest {
                    target,
                    kind: kind as i32,
                    status: status as i32,
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "backups": response.backups.iter().map(backup_json).collect::<Vec<_>>(),
                    "next_page_token": response.next_page_token,
                })),
                OutputFormat::Table => {
                    let mut table = Table::new(&[
                        "ID", "TARGET", "KIND", "STATUS", "STARTED", "AGE", "SIZE", "VERIFIED",
                    ]);
                    for b in &response.backups {
                        table.row(vec![
                            b.id.clone(),
                            b.target.clone(),
                            kind_word(b),
                            status_word(b),
                            ts(b.started_at.as_ref()),
                            age(b),
                            b.size_bytes.map_or_else(|| "-".into(), size),
                            verification_word(b),
                        ]);
                    }
                    table.print_or("no backups");
                    crate::proposal::print_more(&response.next_page_token);
                    Ok(())
                }
            }
        }
        BackupCommand::Verify { id } => {
            let conn = Connection::open(globals, Daemon::BackupAgent).await?;
            let watch = Watch::Backup(id.clone());
            let mut client = conn.backups();
            let call = client.verify_backup(VerifyBackupRequest { id });
            let r = progress::while_running(&conn, watch, progress::wanted(globals.output), call)
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "backup": r.backup.as_ref().map_or(Value::Null, backup_json),
                    "passed": r.passed,
                    "checksum_ok": r.checksum_ok,
                    "stages": r.stages.iter().map(|s| json!({"stage": s.stage, "duration_ms": s.duration_ms})).collect::<Vec<_>>(),
                    "mismatches": r.mismatches.iter().map(|m| json!({"table": m.table, "expected": m.expected, "actual": m.actual})).collect::<Vec<_>>(),
                    "duration_ms": r.duration_ms,
                    "error": opt_json(r.error.as_deref()),
                }))?,
                OutputFormat::Table => {
                    out!(
                        "{}",
                        fields(&[
                            (
                                "backup",
                                r.backup
                                    .as_ref()
                                    .map_or_else(|| "-".into(), |b| b.id.clone())
                            ),
                            ("passed", if r.passed { "yes".into() } else { "NO".into() }),
                            (
                                "checksum",
                                if r.checksum_ok {
                                    "ok".into()
                                } else {
                                    "MISMATCH".into()
                                }
                            ),
                            ("duration", format!("{} ms", r.duration_ms)),
                            ("error", opt(r.error.as_deref())),
                        ])
                    );
                    let mut stages = Table::new(&["STAGE", "MS"]);
                    for s in &r.stages {
                        stages.row(vec![s.stage.clone(), s.duration_ms.to_string()]);
                    }
                    if !stages.is_empty() {
                        outln!();
                        out!("{}", stages.render());
                    }
                    let mut mismatches = Table::new(&["TABLE", "EXPECTED ROWS", "RESTORED ROWS"]);
                    for m in &r.mismatches {
                        mismatches.row(vec![
                            m.table.clone(),
                            m.expected.to_string(),
                            m.actual.to_string(),
                        ]);
                    }
                    if !mismatches.is_empty() {
                        outln!();
                        out!("{}", mismatches.render());
                    }
                }
            }
            if !r.passed {
                bail!(
                    "verification failed: {}",
                    output::one_line(r.error.as_deref().unwrap_or("see above"))
                );
            }
            Ok(())
        }
        BackupCommand::Restore {
            id,
            target_url,
            confirm,
            force,
        } => {
            if !confirm {
                bail!("restore overwrites the target database: add --confirm to go ahead");
            }
            let conn = Connection::open(globals, Daemon::BackupAgent).await?;
            let watch = Watch::Backup(id.clone());
            let mut client = conn.backups();
            let call = client.restore(RestoreRequest {
                backup_id: id,
                target_url,
                confirm,
                force,
                actor: globals.actor.clone(),
            });
            let r = progress::while_running(&conn, watch, progress::wanted(globals.output), call)
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            let rows: std::collections::BTreeMap<_, _> = r.row_counts.iter().collect();
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "backup": r.backup.as_ref().map_or(Value::Null, backup_json),
                    "target": r.target_redacted,
                    "duration_ms": r.duration_ms,
                    "row_counts": rows,
                })),
                OutputFormat::Table => {
                    out!(
                        "{}",
                        fields(&[
                            (
                                "restored",
                                r.backup
                                    .as_ref()
                                    .map_or_else(|| "-".into(), |b| b.id.clone())
                            ),
                            ("into", r.target_redacted.clone()),
                            ("duration", format!("{} ms", r.duration_ms)),
                        ])
                    );
                    let mut table = Table::new(&["TABLE", "ROWS"]);
                    for (name, count) in rows {
                        table.row(vec![name.clone(), count.to_string()]);
                    }
                    if !table.is_empty() {
                        outln!();
                        out!("{}", table.render());
                    }
                    Ok(())
                }
            }
        }
        BackupCommand::Prune { dry_run: _, target } => {
            let conn = Connection::open(globals, Daemon::BackupAgent).await?;
            let r = conn
                .backups()
                .preview_retention(PreviewRetentionRequest { target })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            let decision = |d: &RetentionDecision| {
                json!({
                    "backup": d.backup.as_ref().map_or(Value::Null, backup_json),
                    "reasons": d.reasons,
                })
            };
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "keep": r.keep.iter().map(decision).collect::<Vec<_>>(),
                    "remove": r.remove.iter().map(decision).collect::<Vec<_>>(),
                    "policy": json_doc(&r.policy_json),
                    "refused_reason": opt_json(r.refused_reason.as_deref()),
                    "evaluated_at": ts_json(r.evaluated_at.as_ref()),
                })),
                OutputFormat::Table => {
                    if let Some(reason) = &r.refused_reason {
                        outln!("pruning would be REFUSED: {reason}");
                    }
                    outln!(
                        "retention as of {}: {}",
                        ts(r.evaluated_at.as_ref()),
                        output::one_line(&r.policy_json)
                    );
                    outln!();
                    let mut table =
                        Table::new(&["ACTION", "ID", "STARTED", "STATUS", "VERIFIED", "WHY"])
                            .max_cell(240);
                    for (action, list) in [("keep", &r.keep), ("remove", &r.remove)] {
                        for d in list {
                            let b = d.backup.clone().unwrap_or_default();
                            table.row(vec![
                                action.into(),
                                b.id.clone(),
                                ts(b.started_at.as_ref()),
                                status_word(&b),
                                verification_word(&b),
                                d.reasons.join("; "),
                            ]);
                        }
                    }
                    table.print_or("no backups to judge");
                    Ok(())
                }
            }
        }
    }
}

fn kind_word(b: &Backup) -> String {
    enum_label(b.kind().as_str_name(), "BACKUP_KIND_")
}

fn status_word(b: &Backup) -> String {
    enum_label(b.status().as_str_name(), "BACKUP_STATUS_")
}

fn verification_word(b: &Backup) -> String {
    enum_label(b.verification().as_str_name(), "VERIFICATION_STATE_")
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Time since the backup started: `45m`, `3h`, `2d`.
fn age(b: &Backup) -> String {
    let Some(started) = b.started_at.as_ref().and_then(output::to_datetime) else {
        return "-".into();
    };
    let seconds = chrono::Utc::now()
        .signed_duration_since(started)
        .num_seconds()
        .max(0);
    match seconds {
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn print_backup(b: &Backup, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => output::print_json(&backup_json(b)),
        OutputFormat::Table => {
            out!(
                "{}",
                fields(&[
                    ("id", b.id.clone()),
                    ("target", b.target.clone()),
                    ("kind", kind_word(b)),
                    ("status", status_word(b)),
                    ("error", opt(b.error.as_deref())),
                    ("started", ts(b.started_at.as_ref())),
                    ("finished", ts(b.finished_at.as_ref())),
                    ("size", b.size_bytes.map_or_else(|| "-".into(), size)),
                    ("sha256", opt(b.sha256.as_deref())),
                    ("compression", b.compression.clone()),
                    ("encrypted", b.encrypted.to_string()),
                    ("object", b.object_key.clone()),
                    ("verified", verification_word(b)),
                ])
            );
            Ok(())
        }
    }
}

/// A backup as stable JSON for scripts.
pub fn backup_json(b: &Backup) -> Value {
    json!({
        "id": b.id,
        "target": b.target,
        "kind": kind_word(b),
        "status": status_word(b),
        "started_at": ts_json(b.started_at.as_ref()),
        "finished_at": ts_json(b.finished_at.as_ref()),
        "size_bytes": b.size_bytes,
        "sha256": opt_json(b.sha256.as_deref()),
        "compression": b.compression,
        "encrypted": b.encrypted,
        "object_key": b.object_key,
        "verification": verification_word(b),
        "verified_at": ts_json(b.verified_at.as_ref()),
        "verify_duration_ms": b.verify_duration_ms,
        "verify_error": opt_json(b.verify_error.as_deref()),
        "error": opt_json(b.error.as_deref()),
        "manifest": json_doc(&b.manifest_json),
    })
}

#[cfg(test)]
mod tests {
    use super::size;

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
