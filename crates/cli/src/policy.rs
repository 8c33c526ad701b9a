//! `opsloop policy get|set|list|history`: the key → JSON policy table
//! through `PolicyService`; every change is validated and audited by the
//! api, and its history kept.

use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use opsloop_core::proto::v1::{
    GetPolicyHistoryRequest, GetPolicyRequest, ListPoliciesRequest, Policy, PolicyChange,
    SetPolicyRequest,
};
use serde_json::{Value, json};

use crate::client::{Connection, Daemon, Globals};
use crate::output::{self, OutputFormat, Table, fields, json_doc, ts, ts_json};

/// `opsloop policy …`
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Show one policy's value and revision.
    Get {
        /// Policy key, e.g. `auto_approve`.
        key: String,
    },
    /// Replace a policy's value (admin token; validated and audited).
    Set {
        /// Policy key, e.g. `tiktok_autopost`.
        key: String,
        /// The new value as JSON, e.g. '{"enabled": true}' (or use --file).
        #[arg(value_name = "JSON", required_unless_present = "file")]
        value: Option<String>,
        /// Read the value from a JSON or YAML file (`-` for stdin).
        #[arg(long, value_name = "PATH", conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Why the change is made (audit log).
        #[arg(long)]
        reason: String,
        /// Apply only if the key's current version is this (compare-and-set).
        #[arg(long, value_name = "VERSION")]
        expected_version: Option<i64>,
    },
    /// List policies in key order.
    List {
        /// Only keys starting with this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// Most policies to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Cursor printed by a previous page.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// A key's changes, newest first: version, when, who, why, old → new.
    History {
        /// Policy key, e.g. `cost_budget`.
        key: String,
        /// Most changes to show.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// Runs a `policy` command.
pub async fn run(command: PolicyCommand, globals: &Globals) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Get { key } => {
            let conn = Connection::open(globals, Daemon::Api).await?;
            let policy = conn
                .policies()
                .get_policy(GetPolicyRequest { key })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .policy
                .ok_or_else(|| anyhow!("the api answered without a policy"))?;
            match globals.output {
                OutputFormat::Json => output::print_json(&policy_json(&policy)),
                OutputFormat::Table => {
                    out!("{}", policy_fields(&policy));
                    Ok(())
                }
            }
        }
        PolicyCommand::Set {
            key,
            value,
            file,
            reason,
            expected_version,
        } => {
            let value_json = match (value, file) {
                (Some(text), _) => crate::parse::json_arg("value", &text)?,
                (None, Some(path)) => read_value(&path)?,
                (None, None) => bail!("give the value as JSON, or --file"),
            };
            let conn = Connection::open(globals, Daemon::Api).await?;
            let response = conn
                .policies()
                .set_policy(SetPolicyRequest {
                    key,
                    value_json,
                    actor: globals.actor.clone(),
                    reason,
                    expected_version,
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            let policy = response
                .policy
                .ok_or_else(|| anyhow!("the api answered without a policy"))?;
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "policy": policy_json(&policy),
                    "previous_value": json_doc(&response.previous_value_json),
                })),
                OutputFormat::Table => {
                    out!("{}", policy_fields(&policy));
                    out!(
                        "{}",
                        fields(&[(
                            "previous",
                            output::pretty_doc(&response.previous_value_json)
                        )])
                    );
                    Ok(())
                }
            }
        }
        PolicyCommand::List {
            prefix,
            limit,
            page_token,
        } => {
            let conn = Connection::open(globals, Daemon::Api).await?;
            let response = conn
                .policies()
                .list_policies(ListPoliciesRequest {
                    key_prefix: prefix,
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "policies": response.policies.iter().map(policy_json).collect::<Vec<_>>(),
                    "next_page_token": response.next_page_token,
                })),
                OutputFormat::Table => {
                    let mut table = Table::new(&["KEY", "VERSION", "UPDATED", "BY", "VALUE"]);
                    for p in &response.policies {
                        table.row(vec![
                            p.key.clone(),
                            p.version.to_string(),
                            ts(p.updated_at.as_ref()),
                            p.updated_by.clone(),
                            p.value_json.clone(),
                        ]);
                    }
                    table.print_or("no policies");
                    crate::proposal::print_more(&response.next_page_token);
                    Ok(())
                }
            }
        }
        PolicyCommand::History { key, limit } => history(key, limit, globals).await,
    }
}

async fn history(key: String, limit: u32, globals: &Globals) -> anyhow::Result<()> {
    let conn = Connection::open(globals, Daemon::Api).await?;
    let changes = conn
        .policies()
        .get_policy_history(GetPolicyHistoryRequest {
            key: key.clone(),
            page_size: limit,
        })
        .await
        .map_err(|s| conn.error(s))?
        .into_inner()
        .changes;
    match globals.output {
        OutputFormat::Json => output::print_json(&json!({
            "key": key,
            "changes": changes.iter().map(change_json).collect::<Vec<_>>(),
        })),
        OutputFormat::Table => {
            let mut table = Table::new(&["VERSION", "CHANGED", "BY", "REASON", "OLD", "NEW"]);
            for c in &changes {
                table.row(vec![
                    c.version.to_string(),
                    ts(c.changed_at.as_ref()),
                    c.actor.clone(),
                    c.reason.clone().unwrap_or_else(|| "-".into()),
                    c.old_value_json.clone().unwrap_or_else(|| "-".into()),
                    c.new_value_json.clone(),
                ]);
            }
            table.print_or(&format!("{key} has not changed since it was seeded"));
            Ok(())
        }
    }
}

fn change_json(c: &PolicyChange) -> Value {
    json!({
        "version": c.version,
        "key": c.key,
        "old_value": c.old_value_json.as_deref().map(json_doc),
        "new_value": json_doc(&c.new_value_json),
        "actor": c.actor,
        "reason": c.reason,
        "changed_at": ts_json(c.changed_at.as_ref()),
    })
}

pub(crate) fn read_value(path: &PathBuf) -> anyhow::Result<String> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("--file -: reading stdin")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("--file {}: cannot read it", path.display()))?
    };
    let value: Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)
            .with_context(|| format!("--file {}: not valid JSON", path.display()))?
    } else {
        serde_yaml_ng::from_str(&text)
            .with_context(|| format!("--file {}: not valid YAML or JSON", path.display()))?
    };
    Ok(value.to_string())
}

fn policy_fields(p: &Policy) -> String {
    fields(&[
        ("key", p.key.clone()),
        ("description", p.description.clone()),
        ("version", p.version.to_string()),
        ("updated", ts(p.updated_at.as_ref())),
        ("updated by", p.updated_by.clone()),
        ("value", output::pretty_doc(&p.value_json)),
    ])
}

/// A policy as stable JSON for scripts.
pub fn policy_json(p: &Policy) -> Value {
    json!({
        "key": p.key,
        "value": json_doc(&p.value_json),
        "version": p.version,
        "description": p.description,
        "updated_by": p.updated_by,
        "updated_at": ts_json(p.updated_at.as_ref()),
    })
}
