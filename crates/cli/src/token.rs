//! `opsloop token create|list|revoke`: named API tokens through the api's
//! `TokenService` (admin). `create` prints the secret once; the api keeps
//! only its hash. A rotation is create → deploy → revoke.

use anyhow::{Context, anyhow};
use clap::Subcommand;
use opsloop_core::proto::v1::token_service_client::TokenServiceClient;
use opsloop_core::proto::v1::{CreateTokenRequest, ListTokensRequest, RevokeTokenRequest, Token};
use serde_json::{Value, json};

use crate::client::{Connection, Daemon, Globals};
use crate::output::{self, OutputFormat, Table, fields, ts, ts_json};

/// `opsloop token …`
#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown once: store it now).
    Create {
        /// A unique name: 1 to 64 of a-z, 0-9, '-', '_', '.' (audit logs show it).
        #[arg(long)]
        name: String,
        /// admin, agent, alert_sender or viewer.
        #[arg(long)]
        role: String,
        /// Expires after this long (`30d`, `12h`, `1w`); never by default.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token: refused by every daemon within seconds.
    Revoke {
        /// The token's name.
        name: String,
    },
}

fn client(conn: &Connection) -> TokenServiceClient<crate::client::AuthChannel> {
    conn.tokens()
}

/// Runs a `token` command.
pub async fn run(command: TokenCommand, globals: &Globals) -> anyhow::Result<()> {
    let conn = Connection::open(globals, Daemon::Api).await?;
    match command {
        TokenCommand::Create {
            name,
            role,
            expires,
        } => {
            let expires_at = expires
                .map(|text| -> anyhow::Result<_> {
                    let after = crate::parse::duration(&text).context("--expires")?;
                    let after = chrono::TimeDelta::from_std(after)
                        .map_err(|_| anyhow!("--expires: {text:?} is too long"))?;
                    Ok(opsloop_core::grpc::timestamp(chrono::Utc::now() + after))
                })
                .transpose()?;
            let response = client(&conn)
                .create_token(CreateTokenRequest {
                    name,
                    role,
                    expires_at,
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            let token = response
                .token
                .ok_or_else(|| anyhow!("the api answered without a token"))?;
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "token": token_json(&token),
                    "secret": response.secret,
                })),
                OutputFormat::Table => {
                    out!("{}", token_fields(&token));
                    out!("{}", fields(&[("secret", response.secret)]));
                    outln!("Store the secret now: it is not shown again.");
                    Ok(())
                }
            }
        }
        TokenCommand::List => {
            let response = client(&conn)
                .list_tokens(ListTokensRequest {})
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "tokens": response.tokens.iter().map(token_json).collect::<Vec<_>>(),
                })),
                OutputFormat::Table => {
                    let mut table = Table::new(&[
                        "NAME",
                        "ROLE",
                        "STATE",
                        "CREATED",
                        "EXPIRES",
                        "LAST USED",
                        "BY",
                    ]);
                    for t in &response.tokens {
                        table.row(vec![
                            t.name.clone(),
                            t.role.clone(),
                            state(t).to_owned(),
                            ts(t.created_at.as_ref()),
                            ts(t.expires_at.as_ref()),
                            ts(t.last_used_at.as_ref()),
                            t.created_by.clone(),
                        ]);
                    }
                    table.print_or("no tokens: the daemons are open (dev mode)");
                    Ok(())
                }
            }
        }
        TokenCommand::Revoke { name } => {
            let response = client(&conn)
                .revoke_token(RevokeTokenRequest { name })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            let token = response
                .token
                .ok_or_else(|| anyhow!("the api answered without a token"))?;
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({"token": token_json(&token)})),
                OutputFormat::Table => {
                    out!("{}", token_fields(&token));
                    Ok(())
                }
            }
        }
    }
}

fn state(t: &Token) -> &'static str {
    if t.bootstrap {
        "bootstrap"
    } else if t.revoked_at.is_some() {
        "revoked"
    } else if t
        .expires_at
        .as_ref()
        .is_some_and(|e| e.seconds <= chrono::Utc::now().timestamp())
    {
        "expired"
    } else {
        "active"
    }
}

fn token_fields(t: &Token) -> String {
    fields(&[
        ("name", t.name.clone()),
        ("role", t.role.clone()),
        ("state", state(t).to_owned()),
        ("created", ts(t.created_at.as_ref())),
        ("expires", ts(t.expires_at.as_ref())),
        ("revoked", ts(t.revoked_at.as_ref())),
        ("created by", t.created_by.clone()),
    ])
}

/// A token as stable JSON for scripts (never the secret).
pub fn token_json(t: &Token) -> Value {
    json!({
        "name": t.name,
        "role": t.role,
        "state": state(t),
        "bootstrap": t.bootstrap,
        "created_at": ts_json(t.created_at.as_ref()),
        "expires_at": ts_json(t.expires_at.as_ref()),
        "last_used_at": ts_json(t.last_used_at.as_ref()),
        "revoked_at": ts_json(t.revoked_at.as_ref()),
        "created_by": t.created_by,
    })
}
