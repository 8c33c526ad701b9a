//! `opsloop trigger add|list|update|rm`: the heartbeat's trigger rules through
//! `TriggerService` (conditions and actions are validated by the api).

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use opsloop_core::proto::v1::{
    CreateTriggerRequest, DeleteTriggerRequest, ListTriggersRequest, Trigger, UpdateTriggerRequest,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::client::{Connection, Daemon, Globals};
use crate::output::{self, OutputFormat, Table, fields, json_doc, ts, ts_json};

/// `opsloop trigger …`
#[derive(Subcommand)]
pub enum TriggerCommand {
    /// Create a trigger rule (admin token).
    Add(AddArgs),
    /// List trigger rules in name order.
    List {
        /// Only enabled rules.
        #[arg(long, conflicts_with = "disabled")]
        enabled: bool,
        /// Only disabled rules.
        #[arg(long)]
        disabled: bool,
        /// Most rules to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Cursor printed by a previous page.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Change a trigger rule by id or name (admin token); only the given
    /// fields change.
    Update(UpdateArgs),
    /// Delete a trigger rule by id or name (admin token).
    Rm {
        /// Trigger id, or its name.
        trigger: String,
    },
}

/// `opsloop trigger add`
#[derive(Args)]
pub struct AddArgs {
    /// Unique name, e.g. `no-posts-in-6h` (required unless --file gives one).
    #[arg(long)]
    name: Option<String>,
    /// What the rule is for.
    #[arg(long)]
    description: Option<String>,
    /// The condition as JSON, e.g. '{"type": "absence", "kind": "post.published", "window_seconds": 21600}'.
    #[arg(long, value_name = "JSON")]
    condition: Option<String>,
    /// The action (proposal template) as JSON: {title, agent, steps, parallel, metadata}.
    #[arg(long, value_name = "JSON")]
    action: Option<String>,
    /// Minimum time between two firings: seconds or 90s, 15m, 2h, 1d.
    #[arg(long, value_name = "DURATION")]
    cooldown: Option<String>,
    /// Create it disabled (kept, not evaluated).
    #[arg(long)]
    disabled: bool,
    /// A YAML or JSON file (`-` for stdin) with {name, description, enabled,
    /// condition, action, cooldown_seconds}; flags override its fields.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
}

/// `opsloop trigger update`
#[derive(Args)]
pub struct UpdateArgs {
    /// Trigger id, or its name.
    trigger: String,
    /// New name.
    #[arg(long)]
    name: Option<String>,
    /// New description.
    #[arg(long)]
    description: Option<String>,
    /// New condition as JSON.
    #[arg(long, value_name = "JSON")]
    condition: Option<String>,
    /// New action (proposal template) as JSON.
    #[arg(long, value_name = "JSON")]
    action: Option<String>,
    /// New minimum time between two firings: seconds or 90s, 15m, 2h, 1d.
    #[arg(long, value_name = "DURATION")]
    cooldown: Option<String>,
    /// Evaluate the rule again.
    #[arg(long, conflicts_with = "disable")]
    enable: bool,
    /// Keep the rule but stop evaluating it.
    #[arg(long)]
    disable: bool,
    /// Apply only if the rule's current version is this (compare-and-set).
    #[arg(long, value_name = "VERSION")]
    expected_version: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerFile {
    name: Option<String>,
    description: Option<String>,
    enabled: Option<bool>,
    condition: Option<Value>,
    action: Option<Value>,
    cooldown_seconds: Option<u64>,
}

/// Runs a `trigger` command.
pub async fn run(command: TriggerCommand, globals: &Globals) -> anyhow::Result<()> {
    match command {
        TriggerCommand::Add(args) => {
            let request = create_request(args, globals)?;
            let conn = Connection::open(globals, Daemon::Api).await?;
            let trigger = conn
                .triggers()
                .create_trigger(request)
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .trigger
                .ok_or_else(|| anyhow!("the api answered without a trigger"))?;
            print_trigger(&trigger, globals.output)
        }
        TriggerCommand::List {
            enabled,
            disabled,
            limit,
            page_token,
        } => {
            let filter = match (enabled, disabled) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let conn = Connection::open(globals, Daemon::Api).await?;
            let response = conn
                .triggers()
                .list_triggers(ListTriggersRequest {
                    enabled: filter,
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner();
            match globals.output {
                OutputFormat::Json => output::print_json(&json!({
                    "triggers": response.triggers.iter().map(trigger_json).collect::<Vec<_>>(),
                    "next_page_token": response.next_page_token,
                })),
                OutputFormat::Table => {
                    let mut table = Table::new(&[
                        "ID",
                        "NAME",
                        "ENABLED",
                        "COOLDOWN",
                        "FIRED",
                        "LAST FIRED",
                        "CONDITION",
                    ]);
                    for t in &response.triggers {
                        table.row(vec![
                            t.id.clone(),
                            t.name.clone(),
                            t.enabled.to_string(),
                            format!("{}s", t.cooldown_seconds),
                            t.fire_count.to_string(),
                            ts(t.last_fired_at.as_ref()),
                            t.condition_json.clone(),
                        ]);
                    }
                    table.print_or("no triggers");
                    crate::proposal::print_more(&response.next_page_token);
                    Ok(())
                }
            }
        }
        TriggerCommand::Update(args) => {
            let condition_json = args
                .condition
                .as_deref()
                .map(|text| crate::parse::json_arg("--condition", text))
                .transpose()?;
            let action_json = args
                .action
                .as_deref()
                .map(|text| crate::parse::json_arg("--action", text))
                .transpose()?;
            let cooldown_seconds = args
                .cooldown
                .as_deref()
                .map(|text| crate::parse::duration(text).context("--cooldown"))
                .transpose()?
                .map(|d| d.as_secs());
            let enabled = match (args.enable, args.disable) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            };
            let conn = Connection::open(globals, Daemon::Api).await?;
            let id = resolve_id(&conn, &args.trigger).await?;
            let trigger = conn
                .triggers()
                .update_trigger(UpdateTriggerRequest {
                    id,
                    name: args.name,
                    description: args.description,
                    enabled,
                    condition_json,
                    action_json,
                    cooldown_seconds,
                    expected_version: args.expected_version,
                    actor: globals.actor.clone(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .trigger
                .ok_or_else(|| anyhow!("the api answered without a trigger"))?;
            print_trigger(&trigger, globals.output)
        }
        TriggerCommand::Rm { trigger } => {
            let conn = Connection::open(globals, Daemon::Api).await?;
            let id = resolve_id(&conn, &trigger).await?;
            let deleted = conn
                .triggers()
                .delete_trigger(DeleteTriggerRequest {
                    id,
                    actor: globals.actor.clone(),
                })
                .await
                .map_err(|s| conn.error(s))?
                .into_inner()
                .trigger
                .ok_or_else(|| anyhow!("the api answered without a trigger"))?;
            match globals.output {
                OutputFormat::Json => {
                    output::print_json(&json!({ "deleted": trigger_json(&deleted) }))
                }
                OutputFormat::Table => {
                    outln!("deleted trigger {} ({})", deleted.name, deleted.id);
                    Ok(())
                }
            }
        }
    }
}

/// The id of a trigger given by id or by name (names are looked up).
async fn resolve_id(conn: &Connection, trigger: &str) -> anyhow::Result<String> {
    if looks_like_uuid(trigger) {
        return Ok(trigger.to_owned());
    }
    let mut page_token = String::new();
    loop {
        let response = conn
            .triggers()
            .list_triggers(ListTriggersRequest {
                enabled: None,
                page_size: 200,
                page_token: page_token.clone(),
            })
            .await
            .map_err(|s| conn.error(s))?
            .into_inner();
        if let Some(found) = response.triggers.iter().find(|t| t.name == trigger) {
            return Ok(found.id.clone());
        }
        if response.next_page_token.is_empty() {
            bail!("NOT_FOUND: no trigger named {trigger:?} — `opsloop trigger list` shows them");
        }
        page_token = response.next_page_token;
    }
}

fn looks_like_uuid(text: &str) -> bool {
    text.len() == 36
        && text.chars().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn read_file(path: &Path) -> anyhow::Result<TriggerFile> {
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
            .with_context(|| format!("--file {}: not valid YAML", path.display()))?
    };
    serde_json::from_value(value).with_context(|| {
        format!(
            "--file {}: expected {{name, description, enabled, condition, action, cooldown_seconds}}",
            path.display()
        )
    })
}

fn create_request(args: AddArgs, globals: &Globals) -> anyhow::Result<CreateTriggerRequest> {
    let file = args
        .file
        .as_deref()
        .map(read_file)
        .transpose()?
        .unwrap_or_default();
    let condition_json = match (&args.condition, file.condition) {
        (Some(text), _) => crate::parse::json_arg("--condition", text)?,
        (None, Some(value)) => value.to_string(),
        (None, None) => bail!("--condition is required (or a condition in --file)"),
    };
    let action_json = match (&args.action, file.action) {
        (Some(text), _) => crate::parse::json_arg("--action", text)?,
        (None, Some(value)) => value.to_string(),
        (None, None) => bail!("--action is required (or an action in --file)"),
    };
    let cooldown_seconds = match &args.cooldown {
        Some(text) => crate::parse::duration(text)
            .context("--cooldown")?
            .as_secs(),
        None => file.cooldown_seconds.unwrap_or(0),
    };
    Ok(CreateTriggerRequest {
        name: args
            .name
            .or(file.name)
            .ok_or_else(|| anyhow!("--name is required (or a name in --file)"))?,
        description: args.description.or(file.description).unwrap_or_default(),
        enabled: !args.disabled && file.enabled.unwrap_or(true),
        condition_json,
        action_json,
        cooldown_seconds,
        actor: globals.actor.clone(),
    })
}

fn print_trigger(t: &Trigger, format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => output::print_json(&trigger_json(t)),
        OutputFormat::Table => {
            out!(
                "{}",
                fields(&[
                    ("id", t.id.clone()),
                    ("name", t.name.clone()),
                    ("description", t.description.clone()),
                    ("enabled", t.enabled.to_string()),
                    ("cooldown", format!("{}s", t.cooldown_seconds)),
                    ("version", t.version.to_string()),
                    ("created", ts(t.created_at.as_ref())),
                    ("condition", output::pretty_doc(&t.condition_json)),
                    ("action", output::pretty_doc(&t.action_json)),
                ])
            );
            Ok(())
        }
    }
}

/// A trigger as stable JSON for scripts.
pub fn trigger_json(t: &Trigger) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "description": t.description,
        "enabled": t.enabled,
        "condition": json_doc(&t.condition_json),
        "action": json_doc(&t.action_json),
        "cooldown_seconds": t.cooldown_seconds,
        "last_fired_at": ts_json(t.last_fired_at.as_ref()),
        "fire_count": t.fire_count,
        "version": t.version,
        "created_by": t.created_by,
        "created_at": ts_json(t.created_at.as_ref()),
        "updated_at": ts_json(t.updated_at.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_told_from_names() {
        assert!(looks_like_uuid("0193a6f2-7c1e-7a11-9f00-0123456789ab"));
        assert!(!looks_like_uuid("no-posts-in-6h"));
        assert!(!looks_like_uuid("0193a6f2-7c1e-7a11-9f00-0123456789zz"));
    }
}
