//! `TriggerService`: CRUD of the heartbeat's trigger rules (validated,
//! audited).

use opsloop_core::domain::input::JsonDocument;
use opsloop_core::proto::v1 as pb;
use opsloop_core::proto::v1::trigger_service_server::TriggerService;
use opsloop_core::workflow;
use opsloop_core::workflow::triggers::{NewTrigger, TriggerUpdate};
use tonic::{Request, Response, Status};

use super::{Api, actor, invalid, required, respond};
use crate::convert;

impl Api {
    fn json(&self, field: &str, text: &str) -> Result<serde_json::Value, Status> {
        if text.trim().is_empty() {
            return Err(convert::invalid(field, "must not be empty"));
        }
        JsonDocument::parse(field, text, &self.limits)
            .map(JsonDocument::into_value)
            .map_err(invalid)
    }
}

/// Keeps the description inside the action document (the table has no
/// column of its own for it).
fn with_description(mut action: serde_json::Value, description: &str) -> serde_json::Value {
    if !description.is_empty()
        && let Some(map) = action.as_object_mut()
    {
        map.insert("description".into(), description.into());
    }
    action
}

#[tonic::async_trait]
impl TriggerService for Api {
    async fn create_trigger(
        &self,
        request: Request<pb::CreateTriggerRequest>,
    ) -> Result<Response<pb::CreateTriggerResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let rule = NewTrigger {
                name: required("name", &req.name, 128)?,
                enabled: req.enabled,
                condition: self.json("condition_json", &req.condition_json)?,
                action: with_description(
                    self.json("action_json", &req.action_json)?,
                    &req.description,
                ),
                cooldown_seconds: req.cooldown_seconds,
            };
            let actor = actor(&req.actor, "admin")?;
            let stored = workflow::triggers::create_trigger(
                &self.db,
                rule,
                &actor,
                self.audit(),
                self.now(),
            )
            .await?;
            Ok(pb::CreateTriggerResponse {
                trigger: Some(convert::trigger(&stored)),
            })
        })
        .await
    }

    async fn list_triggers(
        &self,
        request: Request<pb::ListTriggersRequest>,
    ) -> Result<Response<pb::ListTriggersResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let limit = workflow::page_size(req.page_size);
            let after = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
            let rows =
                workflow::triggers::list_triggers(&self.db, req.enabled, after, limit).await?;
            let next_page_token = match rows.last() {
                Some(last) if rows.len() as u64 == limit => last.name.clone(),
                _ => String::new(),
            };
            Ok(pb::ListTriggersResponse {
                triggers: rows.iter().map(convert::trigger).collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn update_trigger(
        &self,
        request: Request<pb::UpdateTriggerRequest>,
    ) -> Result<Response<pb::UpdateTriggerResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let id = convert::uuid("id", &req.id)?;
            let update = TriggerUpdate {
                name: req.name,
                enabled: req.enabled,
                condition: req
                    .condition_json
                    .as_deref()
                    .map(|c| self.json("condition_json", c))
                    .transpose()?,
                action: req
                    .action_json
                    .as_deref()
                    .map(|a| self.json("action_json", a))
                    .transpose()?
                    .map(|a| with_description(a, req.description.as_deref().unwrap_or(""))),
                cooldown_seconds: req.cooldown_seconds,
                expected_version: req.expected_version,
            };
            let actor = actor(&req.actor, "admin")?;
            let stored = workflow::triggers::update_trigger(
                &self.db,
                id,
                update,
                &actor,
                self.audit(),
                self.now(),
            )
            .await?;
            Ok(pb::UpdateTriggerResponse {
                trigger: Some(convert::trigger(&stored)),
            })
        })
        .await
    }

    async fn delete_trigger(
        &self,
        request: Request<pb::DeleteTriggerRequest>,
    ) -> Result<Response<pb::DeleteTriggerResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let id = convert::uuid("id", &req.id)?;
            let actor = actor(&req.actor, "admin")?;
            let stored =
                workflow::triggers::delete_trigger(&self.db, id, &actor, self.audit(), self.now())
                    .await?;
            Ok(pb::DeleteTriggerResponse {
                trigger: Some(convert::trigger(&stored)),
            })
        })
        .await
    }
}
