//! Trigger rule CRUD for the heartbeat: conditions and actions are validated
//! (known condition types with their required fields; an action is a
//! proposal template with valid step kinds) before anything is stored, and
//! every change is audited.

use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ConnectionTrait, DatabaseConnection, EntityTrait, Set};
use serde_json::{Value, json};
use uuid::Uuid;

use super::proposals::{audit_file, audit_row};
use super::{Result, WorkflowError, begin_write, db_now, stmt};
use crate::audit::{AuditLog, AuditRecord};
use crate::domain::input::{ValidationError, text};
use crate::domain::rule_spec::{ConditionSpec, ProposalTemplate};
use crate::store::entities::trigger_rules;

/// Validates a trigger condition ([`ConditionSpec`]), naming the offending path.
pub fn validate_condition(field: &str, condition: &Value) -> Result<(), ValidationError> {
    ConditionSpec::parse(field, condition).map(drop)
}

/// Validates a trigger action ([`ProposalTemplate`]), naming the offending path.
pub fn validate_action(field: &str, action: &Value) -> Result<(), ValidationError> {
    ProposalTemplate::parse(field, action).map(drop)
}

/// A new trigger rule.
#[derive(Debug, Clone)]
pub struct NewTrigger {
    pub name: String,
    pub enabled: bool,
    pub condition: Value,
    pub action: Value,
    pub cooldown_seconds: u64,
}

/// Changes to a trigger rule; `None` keeps the field.
#[derive(Debug, Clone, Default)]
pub struct TriggerUpdate {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub condition: Option<Value>,
    pub action: Option<Value>,
    pub cooldown_seconds: Option<u64>,
    /// Compare-and-set on [`trigger_version`].
    pub expected_version: Option<i64>,
}

/// A trigger's version: the microsecond of its last change (every change
/// sets `updated_at`; the table has no counter of its own).
pub fn trigger_version(rule: &trigger_rules::Model) -> i64 {
    rule.updated_at.timestamp_micros()
}

fn cooldown(value: u64) -> Result<i64, ValidationError> {
    i64::try_from(value)
        .ok()
        .filter(|v| *v <= 365 * 86_400)
        .ok_or_else(|| ValidationError::new("cooldown_seconds", "must be at most one year"))
}

async fn name_taken(db: &impl ConnectionTrait, name: &str, except: Option<Uuid>) -> Result<bool> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT id FROM trigger_rules WHERE name = $1",
            vec![name.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => Some(row.try_get::<Uuid>("", "id")?) != except,
        None => false,
    })
}

fn audit_record(
    actor: &str,
    action: &str,
    id: Uuid,
    before: Option<Value>,
    after: Option<Value>,
    now: DateTime<Utc>,
) -> AuditRecord {
    AuditRecord {
        at: now,
        actor: actor.to_owned(),
        action: action.to_owned(),
        subject: format!("trigger/{id}"),
        reason: None,
        before,
        after,
    }
}

fn rule_json(rule: &trigger_rules::Model) -> Value {
    json!({"name": rule.name, "enabled": rule.enabled, "condition": rule.condition,
           "action": rule.action, "cooldown_seconds": rule.cooldown_seconds})
}

/// CreateTrigger.
pub async fn create_trigger(
    db: &DatabaseConnection,
    rule: NewTrigger,
    actor: &str,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<trigger_rules::Model> {
    let now = db_now(now);
    let name = text("name", &rule.name, 128)?;
    validate_condition("condition_json", &rule.condition)?;
    validate_action("action_json", &rule.action)?;
    let cooldown = cooldown(rule.cooldown_seconds)?;
    let tx = begin_write(db).await?;
    if name_taken(&tx, &name, None).await? {
        return Err(WorkflowError::AlreadyExists(format!(
            "trigger {name:?} exists"
        )));
    }
    let stored = trigger_rules::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set(name),
        enabled: Set(rule.enabled),
        condition: Set(rule.condition),
        action: Set(rule.action),
        cooldown_seconds: Set(cooldown),
        last_fired_at: Set(None),
        fire_count: Set(0),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&tx)
    .await?;
    let record = audit_record(
        actor,
        "trigger.create",
        stored.id,
        None,
        Some(rule_json(&stored)),
        now,
    );
    audit_row(&tx, &record).await?;
    tx.commit().await?;
    audit_file(audit, &record);
    Ok(stored)
}

/// ListTriggers in name order after `after_name`.
pub async fn list_triggers(
    db: &impl ConnectionTrait,
    enabled: Option<bool>,
    after_name: Option<&str>,
    limit: u64,
) -> Result<Vec<trigger_rules::Model>> {
    let mut sql = String::from("SELECT * FROM trigger_rules WHERE name > $1");
    let mut values: Vec<sea_orm::Value> = vec![after_name.unwrap_or("").into()];
    if let Some(enabled) = enabled {
        values.push(enabled.into());
        sql.push_str(" AND enabled = $2");
    }
    sql.push_str(&format!(" ORDER BY name LIMIT {}", limit.clamp(1, 1000)));
    Ok(trigger_rules::Entity::find()
        .from_raw_sql(stmt(db.get_database_backend(), &sql, values))
        .all(db)
        .await?)
}

/// UpdateTrigger: only the given fields change.
pub async fn update_trigger(
    db: &DatabaseConnection,
    id: Uuid,
    update: TriggerUpdate,
    actor: &str,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<trigger_rules::Model> {
    let now = db_now(now);
    if let Some(c) = &update.condition {
        validate_condition("condition_json", c)?;
    }
    if let Some(a) = &update.action {
        validate_action("action_json", a)?;
    }
    let tx = begin_write(db).await?;
    let current = trigger_rules::Entity::find_by_id(id)
        .one(&tx)
        .await?
        .ok_or_else(|| WorkflowError::not_found("trigger", id))?;
    if let Some(expected) = update.expected_version
        && trigger_version(&current) != expected
    {
        return Err(WorkflowError::Conflict(format!(
            "trigger {id} is at version {}, not {expected}",
            trigger_version(&current)
        )));
    }
    let before = rule_json(&current);
    let current_updated_at = current.updated_at;
    let mut active: trigger_rules::ActiveModel = current.into();
    if let Some(name) = update.name {
        let name = text("name", &name, 128)?;
        if name_taken(&tx, &name, Some(id)).await? {
            return Err(WorkflowError::AlreadyExists(format!(
                "trigger {name:?} exists"
            )));
        }
        active.name = Set(name);
    }
    if let Some(enabled) = update.enabled {
        active.enabled = Set(enabled);
    }
    if let Some(c) = update.condition {
        active.condition = Set(c);
    }
    if let Some(a) = update.action {
        active.action = Set(a);
    }
    if let Some(c) = update.cooldown_seconds {
        active.cooldown_seconds = Set(cooldown(c)?);
    }
    // Strictly later than the last change, so the version always moves.
    let updated_at = if now > current_updated_at {
        now
    } else {
        current_updated_at + chrono::Duration::microseconds(1)
    };
    active.updated_at = Set(updated_at);
    let stored = active.update(&tx).await?;
    let record = audit_record(
        actor,
        "trigger.update",
        id,
        Some(before),
        Some(rule_json(&stored)),
        now,
    );
    audit_row(&tx, &record).await?;
    tx.commit().await?;
    audit_file(audit, &record);
    Ok(stored)
}

/// DeleteTrigger: returns the rule as it was.
pub async fn delete_trigger(
    db: &DatabaseConnection,
    id: Uuid,
    actor: &str,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<trigger_rules::Model> {
    let now = db_now(now);
    let tx = begin_write(db).await?;
    let current = trigger_rules::Entity::find_by_id(id)
        .one(&tx)
        .await?
        .ok_or_else(|| WorkflowError::not_found("trigger", id))?;
    trigger_rules::Entity::delete_by_id(id).exec(&tx).await?;
    let record = audit_record(
        actor,
        "trigger.delete",
        id,
        Some(rule_json(&current)),
        None,
        now,
    );
    audit_row(&tx, &record).await?;
    tx.commit().await?;
    audit_file(audit, &record);
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_validated_with_paths() {
        let ok = [
            json!({"type": "absence", "kind": "post.published", "window_seconds": 21600}),
            json!({"type": "event_count", "kind": "x", "window_seconds": 60, "min_count": 3}),
            json!({"type": "any", "conditions": [{"type": "stalled_missions", "older_than_seconds": 600}]}),
        ];
        for c in ok {
            validate_condition("condition_json", &c).expect("valid");
        }
        let bad = [
            (json!({}), "condition_json.type"),
            (json!({"type": "nope"}), "condition_json.type"),
            (json!({"type": "absence"}), "condition_json.window_seconds"),
            (
                json!({"type": "all", "conditions": []}),
                "condition_json.conditions",
            ),
            (
                json!({"type": "all", "conditions": [{"type": "absence", "window_seconds": 0}]}),
                "condition_json.conditions[0].window_seconds",
            ),
        ];
        for (c, field) in bad {
            let err = validate_condition("condition_json", &c).expect_err("invalid");
            assert_eq!(err.field, field, "{c}");
        }
        validate_action(
            "action_json",
            &json!({"title": "t", "steps": [{"kind": "echo"}]}),
        )
        .expect("valid action");
        let err = validate_action(
            "action_json",
            &json!({"title": "t", "steps": [{"kind": "Bad"}]}),
        )
        .expect_err("bad kind");
        assert_eq!(err.field, "action_json.steps[0].kind");
    }
}
