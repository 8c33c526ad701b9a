//! `opsloop.v1.BackupService` over gRPC: parses requests (bad input is
//! `INVALID_ARGUMENT` naming the field), calls the [`Agent`] and maps rows
//! and reports to the contract's messages.

use std::sync::Arc;

use opsloop_core::proto::v1::backup_service_server::BackupService;
use opsloop_core::proto::v1::{
    Backup, BackupKind, BackupStatus, GetProgressRequest, GetProgressResponse, ListBackupsRequest,
    ListBackupsResponse, PreviewRetentionRequest, PreviewRetentionResponse, RestoreRequest,
    RestoreResponse, RetentionDecision, RowCountMismatch, RunBackupRequest, RunBackupResponse,
    StageDuration, VerificationState, VerifyBackupRequest, VerifyBackupResponse,
};
use opsloop_core::store::entities::backups;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::agent::{Agent, AgentError, status};

const DEFAULT_PAGE_SIZE: u64 = 50;
const MAX_PAGE_SIZE: u64 = 500;

/// The gRPC face of the agent.
pub struct BackupGrpc {
    agent: Arc<Agent>,
}

impl BackupGrpc {
    pub fn new(agent: Arc<Agent>) -> Self {
        Self { agent }
    }
}

use opsloop_core::grpc::timestamp;

fn parse_id(field: &'static str, value: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(value).map_err(|_| {
        Status::from(AgentError::InvalidArgument {
            field,
            reason: format!("{value:?} is not a UUID"),
        })
    })
}

/// A `backups` row as the contract's `Backup`.
pub fn to_proto(row: &backups::Model) -> Backup {
    let kind = match row.kind.as_str() {
        "postgres" => BackupKind::Postgres,
        "sqlite" => BackupKind::Sqlite,
        "directory" => BackupKind::Directory,
        _ => BackupKind::Unspecified,
    };
    let backup_status = match row.status.as_str() {
        status::RUNNING => BackupStatus::Running,
        status::COMPLETED | status::PRUNED => BackupStatus::Completed,
        status::FAILED => BackupStatus::Failed,
        _ => BackupStatus::Unspecified,
    };
    let verification = match row.verify_status.as_deref() {
        Some(status::VERIFIED) => VerificationState::Passed,
        Some(status::VERIFY_FAILED) => VerificationState::Failed,
        _ => VerificationState::Unverified,
    };
    Backup {
        id: row.id.to_string(),
        target: row.target.clone(),
        kind: kind as i32,
        status: backup_status as i32,
        started_at: Some(timestamp(row.started_at)),
        finished_at: row.finished_at.map(timestamp),
        size_bytes: row.size_bytes.map(|n| n.max(0) as u64),
        sha256: row.sha256.clone(),
        compression: row.compression.clone(),
        encrypted: row
            .manifest
            .as_ref()
            .and_then(|m| m.get("encryption"))
            .and_then(|e| e.as_str())
            .is_some(),
        object_key: row.object_key.clone().unwrap_or_default(),
        verification: verification as i32,
        verified_at: row.verified_at.map(timestamp),
        verify_duration_ms: row.verify_duration_ms.map(|n| n.max(0) as u64),
        verify_error: None,
        error: row.error.clone(),
        manifest_json: row
            .manifest
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl BackupService for BackupGrpc {
    async fn run_backup(
        &self,
        request: Request<RunBackupRequest>,
    ) -> Result<Response<RunBackupResponse>, Status> {
        let request = request.into_inner();
        let row = self
            .agent
            .run_backup(
                request.target.as_deref().filter(|t| !t.is_empty()),
                request.wait,
            )
            .await?;
        Ok(Response::new(RunBackupResponse {
            backup: Some(to_proto(&row)),
        }))
    }

    async fn list_backups(
        &self,
        request: Request<ListBackupsRequest>,
    ) -> Result<Response<ListBackupsResponse>, Status> {
        let request = request.into_inner();
        let kind = match BackupKind::try_from(request.kind) {
            Ok(BackupKind::Unspecified) => None,
            Ok(BackupKind::Postgres) => Some("postgres"),
            Ok(BackupKind::Sqlite) => Some("sqlite"),
            Ok(BackupKind::Directory) => Some("directory"),
            Err(_) => return Err(Status::invalid_argument("kind: unknown value")),
        };
        let status_filter = match BackupStatus::try_from(request.status) {
            Ok(BackupStatus::Unspecified) => None,
            Ok(BackupStatus::Running) => Some(status::RUNNING),
            Ok(BackupStatus::Completed) => Some(status::COMPLETED),
            Ok(BackupStatus::Failed) => Some(status::FAILED),
            Err(_) => return Err(Status::invalid_argument("status: unknown value")),
        };
        let offset: u64 = if request.page_token.is_empty() {
            0
        } else {
            request.page_token.parse().map_err(|_| {
                Status::invalid_argument("page_token: not a token from a previous response")
            })?
        };
        let limit = match u64::from(request.page_size) {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        // One extra row tells whether another page follows.
        let mut rows = self
            .agent
            .list(
                request.target.as_deref().filter(|t| !t.is_empty()),
                kind,
                status_filter,
                offset,
                limit + 1,
            )
            .await?;
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        Ok(Response::new(ListBackupsResponse {
            next_page_token: if more {
                (offset + limit).to_string()
            } else {
                String::new()
            },
            backups: rows.iter().map(to_proto).collect(),
        }))
    }

    async fn verify_backup(
        &self,
        request: Request<VerifyBackupRequest>,
    ) -> Result<Response<VerifyBackupResponse>, Status> {
        let id = parse_id("id", &request.into_inner().id)?;
        let verified = self.agent.verify(id).await?;
        let report = verified.report;
        let mut backup = to_proto(&verified.row);
        backup.verify_error = report.error.clone();
        Ok(Response::new(VerifyBackupResponse {
            backup: Some(backup),
            passed: report.passed,
            checksum_ok: report.checksum_ok,
            stages: report
                .stages
                .iter()
                .map(|(stage, took)| StageDuration {
                    stage: (*stage).to_owned(),
                    duration_ms: took.as_millis() as u64,
                })
                .collect(),
            mismatches: report
                .mismatches
                .iter()
                .map(|m| RowCountMismatch {
                    table: m.table.clone(),
                    expected: m.expected,
                    actual: m.actual,
                })
                .collect(),
            duration_ms: report.duration.as_millis() as u64,
            error: report.error,
        }))
    }

    async fn restore(
        &self,
        request: Request<RestoreRequest>,
    ) -> Result<Response<RestoreResponse>, Status> {
        let request = request.into_inner();
        let id = parse_id("backup_id", &request.backup_id)?;
        if request.target_url.is_empty() {
            return Err(Status::invalid_argument("target_url: required"));
        }
        let restored = self
            .agent
            .restore(
                id,
                &request.target_url,
                request.confirm,
                request.force,
                &request.actor,
            )
            .await?;
        Ok(Response::new(RestoreResponse {
            backup: Some(to_proto(&restored.row)),
            target_redacted: restored.target_redacted,
            duration_ms: restored.report.duration.as_millis() as u64,
            row_counts: restored.report.row_counts.into_iter().collect(),
        }))
    }

    async fn get_progress(
        &self,
        request: Request<GetProgressRequest>,
    ) -> Result<Response<GetProgressResponse>, Status> {
        let r = request.into_inner();
        let id = match r.backup_id.trim() {
            "" => None,
            raw => Some(parse_id("backup_id", raw)?),
        };
        let target = Some(r.target.trim()).filter(|t| !t.is_empty());
        let Some(now) = self.agent.progress(id, target) else {
            return Err(Status::not_found(match (id, target) {
                (Some(id), _) => format!("nothing runs for backup {id} on this agent"),
                (None, Some(t)) => format!("no backup of {t} is being taken on this agent"),
                (None, None) => "no backup is being taken on this agent".to_owned(),
            }));
        };
        Ok(Response::new(GetProgressResponse {
            backup_id: now.backup_id.to_string(),
            operation: now.operation.to_owned(),
            target: now.target,
            stage: now.stage.to_owned(),
            bytes: now.bytes,
            elapsed_ms: now.elapsed.as_millis() as u64,
        }))
    }

    async fn preview_retention(
        &self,
        request: Request<PreviewRetentionRequest>,
    ) -> Result<Response<PreviewRetentionResponse>, Status> {
        let request = request.into_inner();
        let preview = self
            .agent
            .preview_retention(request.target.as_deref().filter(|t| !t.is_empty()))
            .await?;
        let decide = |decisions: &[crate::retention::Decision]| -> Vec<RetentionDecision> {
            decisions
                .iter()
                .filter_map(|d| {
                    preview.rows.get(&d.id).map(|row| RetentionDecision {
                        backup: Some(to_proto(row)),
                        reasons: d.reasons.clone(),
                    })
                })
                .collect()
        };
        let config = self.agent.config();
        let policy = serde_json::json!({
            "retention": config.settings.retention,
            "timezone": config.settings.timezone,
        });
        Ok(Response::new(PreviewRetentionResponse {
            keep: decide(&preview.plan.keep),
            remove: decide(&preview.plan.remove),
            policy_json: policy.to_string(),
            refused_reason: preview.plan.refused.clone(),
            evaluated_at: Some(timestamp(preview.evaluated_at)),
        }))
    }
}
