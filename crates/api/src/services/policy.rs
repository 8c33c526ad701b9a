//! `PolicyService`: Get, Set (validated against the key's schema, audited),
//! List.

use opsloop_core::domain::input::JsonDocument;
use opsloop_core::proto::v1 as pb;
use opsloop_core::proto::v1::policy_service_server::PolicyService;
use opsloop_core::workflow::{self, PolicyChange};
use tonic::{Request, Response, Status};

use super::{Api, actor, invalid, optional, required, respond};
use crate::convert;

#[tonic::async_trait]
impl PolicyService for Api {
    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        respond(async {
            let key = required("key", &request.get_ref().key, 64)?;
            let policy = workflow::get_policy(&self.db, &key).await?;
            Ok(pb::GetPolicyResponse {
                policy: Some(convert::policy(&policy)),
            })
        })
        .await
    }

    async fn set_policy(
        &self,
        request: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::SetPolicyResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let key = required("key", &req.key, 64)?;
            if req.value_json.trim().is_empty() {
                return Err(convert::invalid("value_json", "must not be empty"));
            }
            let value = JsonDocument::parse("value_json", &req.value_json, &self.limits)
                .map_err(invalid)?
                .into_value();
            let actor = actor(&req.actor, "admin")?;
            let reason = optional("reason", &req.reason, 1000)?;
            let (policy, previous) = workflow::set_policy(
                &self.db,
                PolicyChange {
                    key: &key,
                    value,
                    actor: &actor,
                    reason: reason.as_deref(),
                    expected_version: req.expected_version,
                },
                self.audit(),
                self.now(),
            )
            .await?;
            Ok(pb::SetPolicyResponse {
                policy: Some(convert::policy(&policy)),
                previous_value_json: previous.map(|v| v.to_string()).unwrap_or_default(),
            })
        })
        .await
    }

    async fn list_policies(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let limit = workflow::page_size(req.page_size);
            let after = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
            let rows =
                workflow::list_policies(&self.db, req.key_prefix.as_deref(), after, limit).await?;
            let next_page_token = match rows.last() {
                Some(last) if rows.len() as u64 == limit => last.key.clone(),
                _ => String::new(),
            };
            Ok(pb::ListPoliciesResponse {
                policies: rows.iter().map(convert::policy).collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn get_policy_history(
        &self,
        request: Request<pb::GetPolicyHistoryRequest>,
    ) -> Result<Response<pb::GetPolicyHistoryResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let key = required("key", &req.key, 64)?;
            let rows = workflow::policy_history(&self.db, &key, workflow::page_size(req.page_size))
                .await?;
            Ok(pb::GetPolicyHistoryResponse {
                changes: rows.iter().map(convert::policy_change).collect(),
            })
        })
        .await
    }
}
