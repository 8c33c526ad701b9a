//! `ProposalService`: Submit (the one entry point), Get, List, Approve, Reject.

use opsloop_core::domain::input::{DedupeKey, JsonDocument, NewProposal, ProposalSource, StepSpec};
use opsloop_core::domain::status::ProposalStatus;
use opsloop_core::proto::v1 as pb;
use opsloop_core::proto::v1::proposal_service_server::ProposalService;
use opsloop_core::workflow::{self, ProposalFilter};
use tonic::{Request, Response, Status};

use super::{Api, actor, invalid, required, respond};
use crate::convert;

fn source(value: i32) -> Result<ProposalSource, Status> {
    Ok(
        match convert::enum_field::<pb::ProposalSource>("source", value)? {
            pb::ProposalSource::Unspecified | pb::ProposalSource::Api => ProposalSource::Api,
            pb::ProposalSource::Trigger => ProposalSource::Trigger,
            pb::ProposalSource::Reaction => ProposalSource::Reaction,
            pb::ProposalSource::Manual => ProposalSource::Manual,
        },
    )
}

impl Api {
    fn parse_submit(&self, req: pb::SubmitProposalRequest) -> Result<NewProposal, Status> {
        let source = source(req.source)?;
        if req.steps.len() > self.limits.max_steps {
            return Err(invalid(opsloop_core::domain::ValidationError::new(
                "steps",
                format!("more than {} steps", self.limits.max_steps),
            )));
        }
        let steps = req
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                StepSpec::parse(i, &s.kind, &s.payload_json, s.max_attempts, &self.limits)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let dedupe_key = req
            .dedupe_key
            .as_deref()
            .map(|k| DedupeKey::parse("dedupe_key", k))
            .transpose()
            .map_err(invalid)?;
        let metadata = JsonDocument::parse("metadata_json", &req.metadata_json, &self.limits)
            .map_err(invalid)?
            .into_value();
        NewProposal {
            title: req.title,
            source,
            agent: req.agent,
            dedupe_key,
            steps,
            parallel: req.parallel,
            metadata,
            trace_id: None,
        }
        .validate(&self.limits)
        .map_err(invalid)
    }
}

/// Most proposals one `SubmitProposals` takes.
pub(super) const MAX_BATCH_PROPOSALS: usize = 1000;

impl Api {
    /// SQLite: wakes long polls for the steps of a mission just created.
    pub(crate) fn wake_new_mission(&self, view: &workflow::ProposalView) {
        if view.mission_id.is_some() {
            let steps = view.steps();
            self.wake(steps.iter().map(|s| s.kind.as_str()));
        }
    }
}

fn refused(index: usize, status: &Status) -> pb::SubmitProposalResult {
    pb::SubmitProposalResult {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        proposal: None,
        deduplicated: false,
        error: Some(status.message().to_owned()),
        error_code: opsloop_core::grpc::code_name(status.code()).to_owned(),
    }
}

#[tonic::async_trait]
impl ProposalService for Api {
    async fn submit_proposals(
        &self,
        request: Request<pb::SubmitProposalsRequest>,
    ) -> Result<Response<pb::SubmitProposalsResponse>, Status> {
        respond(async {
            let items = request.into_inner().proposals;
            if items.is_empty() || items.len() > MAX_BATCH_PROPOSALS {
                return Err(convert::invalid(
                    "proposals",
                    &format!("give 1 to {MAX_BATCH_PROPOSALS} proposals"),
                ));
            }
            let mut results: Vec<Option<pb::SubmitProposalResult>> = vec![None; items.len()];
            let mut parsed = Vec::with_capacity(items.len());
            let mut positions = Vec::with_capacity(items.len());
            for (index, item) in items.into_iter().enumerate() {
                match self.parse_submit(item) {
                    Ok(proposal) => {
                        parsed.push(proposal);
                        positions.push(index);
                    }
                    Err(status) => results[index] = Some(refused(index, &status)),
                }
            }
            let outcomes = if parsed.is_empty() {
                Vec::new()
            } else {
                workflow::submit_proposals_cached(&self.db, &self.policy, parsed, self.now())
                    .await?
            };
            for (index, outcome) in positions.into_iter().zip(outcomes) {
                results[index] = Some(match outcome {
                    Ok(out) => {
                        self.wake_new_mission(&out.proposal);
                        let mut proposal = convert::proposal(&out.proposal);
                        proposal.steps.clear();
                        proposal.metadata_json.clear();
                        pb::SubmitProposalResult {
                            index: u32::try_from(index).unwrap_or(u32::MAX),
                            proposal: Some(proposal),
                            deduplicated: out.deduplicated,
                            error: None,
                            error_code: String::new(),
                        }
                    }
                    Err(error) => refused(index, &Status::from(error)),
                });
            }
            Ok(pb::SubmitProposalsResponse {
                results: results.into_iter().flatten().collect(),
            })
        })
        .await
    }

    async fn submit_proposal(
        &self,
        request: Request<pb::SubmitProposalRequest>,
    ) -> Result<Response<pb::SubmitProposalResponse>, Status> {
        respond(async {
            let proposal = self.parse_submit(request.into_inner())?;
            let out =
                workflow::submit_proposal_cached(&self.db, &self.policy, proposal, self.now())
                    .await?;
            self.wake_new_mission(&out.proposal);
            Ok(pb::SubmitProposalResponse {
                proposal: Some(convert::proposal(&out.proposal)),
                deduplicated: out.deduplicated,
            })
        })
        .await
    }

    async fn get_proposal(
        &self,
        request: Request<pb::GetProposalRequest>,
    ) -> Result<Response<pb::GetProposalResponse>, Status> {
        respond(async {
            let id = convert::uuid("id", &request.get_ref().id)?;
            let view = workflow::get_proposal(&self.db, id).await?;
            Ok(pb::GetProposalResponse {
                proposal: Some(convert::proposal(&view)),
            })
        })
        .await
    }

    async fn list_proposals(
        &self,
        request: Request<pb::ListProposalsRequest>,
    ) -> Result<Response<pb::ListProposalsResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let status = match convert::enum_field::<pb::ProposalStatus>("status", req.status)? {
                pb::ProposalStatus::Unspecified => None,
                pb::ProposalStatus::Pending => Some(ProposalStatus::Pending),
                pb::ProposalStatus::Approved => Some(ProposalStatus::Approved),
                pb::ProposalStatus::Rejected => Some(ProposalStatus::Rejected),
                pb::ProposalStatus::Expired => Some(ProposalStatus::Expired),
            };
            let source = match convert::enum_field::<pb::ProposalSource>("source", req.source)? {
                pb::ProposalSource::Unspecified => None,
                _ => Some(source(req.source)?.as_str().to_owned()),
            };
            let limit = workflow::page_size(req.page_size);
            let filter = ProposalFilter {
                status,
                source,
                agent: req.agent,
                created_after: req
                    .created_after
                    .as_ref()
                    .map(|t| convert::from_ts("created_after", t))
                    .transpose()?,
                created_before: req
                    .created_before
                    .as_ref()
                    .map(|t| convert::from_ts("created_before", t))
                    .transpose()?,
                after: convert::parse_time_cursor(&req.page_token)?,
                limit,
            };
            let views = workflow::list_proposals(&self.db, &filter).await?;
            let next_page_token = match views.last() {
                Some(last) if views.len() as u64 == limit => {
                    convert::time_cursor(last.proposal.created_at, last.proposal.id)
                }
                _ => String::new(),
            };
            Ok(pb::ListProposalsResponse {
                proposals: views.iter().map(convert::proposal).collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn approve_proposal(
        &self,
        request: Request<pb::ApproveProposalRequest>,
    ) -> Result<Response<pb::ApproveProposalResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let id = convert::uuid("id", &req.id)?;
            let actor = actor(&req.actor, "admin")?;
            let comment = super::optional("comment", req.comment.as_deref().unwrap_or(""), 1000)?;
            let view = workflow::approve_proposal(
                &self.db,
                id,
                &actor,
                comment.as_deref(),
                self.audit(),
                self.now(),
            )
            .await?;
            self.wake_new_mission(&view);
            Ok(pb::ApproveProposalResponse {
                proposal: Some(convert::proposal(&view)),
            })
        })
        .await
    }

    async fn reject_proposal(
        &self,
        request: Request<pb::RejectProposalRequest>,
    ) -> Result<Response<pb::RejectProposalResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let id = convert::uuid("id", &req.id)?;
            let actor = actor(&req.actor, "admin")?;
            let reason = required("reason", &req.reason, 1000)?;
            let view =
                workflow::reject_proposal(&self.db, id, &actor, &reason, self.audit(), self.now())
                    .await?;
            Ok(pb::RejectProposalResponse {
                proposal: Some(convert::proposal(&view)),
            })
        })
        .await
    }
}
