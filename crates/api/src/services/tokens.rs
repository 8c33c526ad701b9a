//! `TokenService`: create, list and revoke named tokens (admin only, by the
//! access table). The secret is returned once by `CreateToken`; the store
//! keeps its hash. Create and revoke are audited with the caller's token
//! name and take effect in this process at once, on other replicas within
//! `opsloop_core::auth::REFRESH_INTERVAL`.

use opsloop_core::auth::{self, Role, TokenError};
use opsloop_core::grpc::{from_timestamp, timestamp};
use opsloop_core::proto::v1 as pb;
use opsloop_core::proto::v1::token_service_server::TokenService;
use opsloop_core::store::entities::api_tokens;
use tonic::{Request, Response, Status};

use super::{Api, actor, respond};

fn status(error: TokenError) -> Status {
    match &error {
        TokenError::InvalidName(_) => Status::invalid_argument(error.to_string()),
        TokenError::NameTaken(_) => Status::already_exists(error.to_string()),
        TokenError::NotFound(_) => Status::not_found(error.to_string()),
        TokenError::Bootstrap(..) => Status::failed_precondition(error.to_string()),
        TokenError::Db(inner) => {
            tracing::error!(error = %inner, "token store failed");
            Status::unavailable("the database is unavailable")
        }
    }
}

fn token(row: &api_tokens::Model) -> pb::Token {
    pb::Token {
        name: row.name.clone(),
        role: row.role.clone(),
        created_at: Some(timestamp(row.created_at)),
        expires_at: row.expires_at.map(timestamp),
        last_used_at: row.last_used_at.map(timestamp),
        revoked_at: row.revoked_at.map(timestamp),
        created_by: row.created_by.clone(),
        bootstrap: false,
    }
}

impl Api {
    /// Makes a change visible to this process's access checks at once.
    async fn reload_tokens(&self) {
        if let Err(error) = self.auth.refresh().await {
            tracing::warn!(%error, "cannot reload the api_tokens table after a change");
        }
    }
}

#[tonic::async_trait]
impl TokenService for Api {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let role = Role::parse(&req.role).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "role: {:?} is not one of admin, agent, alert_sender, viewer",
                    req.role
                ))
            })?;
            let now = self.now();
            let expires_at = req
                .expires_at
                .as_ref()
                .map(|t| from_timestamp("expires_at", t))
                .transpose()?;
            if expires_at.is_some_and(|at| at <= now) {
                return Err(Status::invalid_argument(
                    "expires_at: must be in the future",
                ));
            }
            let by = actor("", "admin")?;
            let (row, secret) = auth::create_token(
                &self.db,
                &req.name,
                role,
                expires_at,
                &by,
                self.audit(),
                now,
            )
            .await
            .map_err(status)?;
            self.reload_tokens().await;
            Ok(pb::CreateTokenResponse {
                token: Some(token(&row)),
                secret,
            })
        })
        .await
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        respond(async {
            let mut tokens: Vec<pb::Token> = self
                .auth
                .bootstrap_names()
                .into_iter()
                .map(|(name, role)| pb::Token {
                    name,
                    role: role.as_str().to_owned(),
                    created_by: "secret".into(),
                    bootstrap: true,
                    ..Default::default()
                })
                .collect();
            let rows = auth::list_tokens(&self.db).await.map_err(status)?;
            tokens.extend(rows.iter().map(token));
            Ok(pb::ListTokensResponse { tokens })
        })
        .await
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        respond(async {
            let req = request.into_inner();
            let by = actor("", "admin")?;
            let row = auth::revoke_token(&self.db, &req.name, &by, self.audit(), self.now())
                .await
                .map_err(status)?;
            self.reload_tokens().await;
            Ok(pb::RevokeTokenResponse {
                token: Some(token(&row)),
            })
        })
        .await
    }
}
