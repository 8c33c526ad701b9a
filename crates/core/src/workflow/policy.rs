//! Policy reads and changes: every change validated against the key's
//! schema, written with a history row (whose id is the new global policy
//! version), an audit row, an event and the audit file line. The emergency
//! stop is a policy key with its own audited engage/release.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, Set,
};
use serde_json::json;

use super::events::{EventRecord, write_event};
use super::proposals::{audit_file, audit_row};
use super::{Result, WorkflowError, begin_write, db_now, for_update, stmt};
use crate::audit::{AuditLog, AuditRecord};
use crate::domain::policy::{EmergencyStop, PolicyKey, PolicyValue};
use crate::store::entities::{policy, policy_history};

/// One policy.
pub async fn get_policy(db: &impl ConnectionTrait, key: &str) -> Result<policy::Model> {
    policy::Entity::find_by_id(key.to_owned())
        .one(db)
        .await?
        .ok_or_else(|| WorkflowError::not_found("policy", key))
}

/// Policies in key order, after `after_key`, with an optional prefix.
pub async fn list_policies(
    db: &impl ConnectionTrait,
    prefix: Option<&str>,
    after_key: Option<&str>,
    limit: u64,
) -> Result<Vec<policy::Model>> {
    let mut like = String::new();
    for c in prefix.unwrap_or("").chars() {
        if matches!(c, '%' | '_' | '\\') {
            like.push('\\');
        }
        like.push(c);
    }
    like.push('%');
    let rows = policy::Entity::find()
        .from_raw_sql(stmt(
            db.get_database_backend(),
            &format!(
                "SELECT * FROM policy WHERE key > $1 AND key LIKE $2 ESCAPE '\\' ORDER BY key LIMIT {}",
                limit.clamp(1, 1000)
            ),
            vec![after_key.unwrap_or("").into(), like.into()],
        ))
        .all(db)
        .await?;
    Ok(rows)
}

/// A policy's changes, newest first (`policy_history`: old and new value,
/// actor, reason, time; the id is the global policy version the change
/// made). An empty list for a key that exists but never changed; NOT_FOUND
/// for a key that does not exist.
pub async fn policy_history(
    db: &impl ConnectionTrait,
    key: &str,
    limit: u64,
) -> Result<Vec<policy_history::Model>> {
    use sea_orm::{ColumnTrait, QueryFilter, QueryOrder, QuerySelect};
    get_policy(db, key).await?;
    Ok(policy_history::Entity::find()
        .filter(policy_history::Column::Key.eq(key))
        .order_by_desc(policy_history::Column::Id)
        .limit(limit.clamp(1, 1000))
        .all(db)
        .await?)
}

/// A policy change to make.
#[derive(Debug, Clone)]
pub struct PolicyChange<'a> {
    pub key: &'a str,
    pub value: serde_json::Value,
    pub actor: &'a str,
    pub reason: Option<&'a str>,
    /// Compare-and-set on the key's current version.
    pub expected_version: Option<i64>,
}

/// SetPolicy: validates, then writes value, history, audit and event in one
/// transaction. Returns the policy after and the value before.
pub async fn set_policy(
    db: &DatabaseConnection,
    change: PolicyChange<'_>,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<(policy::Model, Option<serde_json::Value>)> {
    let key = PolicyKey::parse(change.key)?;
    let value = PolicyValue::parse(&key, &change.value)?;
    if let PolicyValue::Pricing(pricing) = &value {
        // A price for a resource no policy names is a typo, not a price.
        let resources = super::load_policy(db).await?.resources;
        if let Some(name) = pricing.0.keys().find(|n| !resources.0.contains_key(*n)) {
            return Err(crate::domain::input::ValidationError::new(
                format!("value_json.{name}"),
                format!("unknown resource {name:?}: add it to the resources policy first"),
            )
            .into());
        }
    }
    write_policy(db, &key, change, "policy.set", audit, now).await
}

async fn write_policy(
    db: &DatabaseConnection,
    key: &PolicyKey,
    change: PolicyChange<'_>,
    action: &str,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<(policy::Model, Option<serde_json::Value>)> {
    let tx = begin_write(db).await?;
    let (stored, before, record) = write_policy_in(&tx, key, change, action, now).await?;
    tx.commit().await?;
    audit_file(audit, &record);
    Ok((stored, before))
}

/// A validated policy change inside the caller's transaction `tx` (history,
/// row, `policy.changed` event, audit row); the caller commits and then
/// writes the returned record to the audit file.
pub(super) async fn write_policy_in(
    tx: &DatabaseTransaction,
    key: &PolicyKey,
    change: PolicyChange<'_>,
    action: &str,
    now: DateTime<Utc>,
) -> Result<(policy::Model, Option<serde_json::Value>, AuditRecord)> {
    let now = db_now(now);
    let backend = tx.get_database_backend();
    let current = policy::Entity::find()
        .from_raw_sql(stmt(
            backend,
            &format!("SELECT * FROM policy WHERE key = $1{}", for_update(backend)),
            vec![key.as_str().into()],
        ))
        .one(tx)
        .await?;
    if current.is_none() && !matches!(key, PolicyKey::Toggle(_)) {
        return Err(WorkflowError::not_found("policy", key.as_str()));
    }
    if let Some(expected) = change.expected_version {
        let actual = current.as_ref().map(|c| c.version).unwrap_or(0);
        if actual != expected {
            return Err(WorkflowError::Conflict(format!(
                "policy {} is at version {actual}, not {expected}",
                key.as_str()
            )));
        }
    }
    let before = current.as_ref().map(|c| c.value.clone());
    let history = policy_history::ActiveModel {
        id: sea_orm::ActiveValue::NotSet,
        key: Set(key.as_str().to_owned()),
        old_value: Set(before.clone()),
        new_value: Set(change.value.clone()),
        actor: Set(change.actor.to_owned()),
        reason: Set(change.reason.map(str::to_owned)),
        created_at: Set(now),
    }
    .insert(tx)
    .await?;
    let row = policy::ActiveModel {
        key: Set(key.as_str().to_owned()),
        value: Set(change.value.clone()),
        version: Set(history.id),
        updated_at: Set(now),
        updated_by: Set(change.actor.to_owned()),
    };
    let stored = if current.is_some() {
        row.update(tx).await?
    } else {
        row.insert(tx).await?
    };
    write_event(
        tx,
        EventRecord::api(
            "policy.changed",
            json!({"key": key.as_str(), "version": history.id, "actor": change.actor,
                   "reason": change.reason}),
        ),
        now,
    )
    .await?;
    if let PolicyKey::EmergencyStop = key {
        let engaged = change
            .value
            .get("engaged")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        let kind = if engaged {
            "emergency_stop.engaged"
        } else {
            "emergency_stop.released"
        };
        write_event(
            tx,
            EventRecord::api(
                kind,
                json!({"actor": change.actor, "reason": change.reason}),
            ),
            now,
        )
        .await?;
    }
    let record = AuditRecord {
        at: now,
        actor: change.actor.to_owned(),
        action: action.to_owned(),
        subject: format!("policy/{}", key.as_str()),
        reason: change.reason.map(str::to_owned),
        before: before.clone(),
        after: Some(change.value),
    };
    audit_row(tx, &record).await?;
    tracing::info!(
        key = key.as_str(),
        version = history.id,
        actor = change.actor,
        "policy changed"
    );
    Ok((stored, before, record))
}

/// The emergency stop's state after an engage or release.
#[derive(Debug, Clone, PartialEq)]
pub struct EmergencyStopChange {
    pub state: EmergencyStop,
    pub changed_at: Option<DateTime<Utc>>,
    /// False when it already was in the asked state (nothing written).
    pub changed: bool,
}

async fn current_stop(db: &impl ConnectionTrait) -> Result<(EmergencyStop, DateTime<Utc>)> {
    let row = get_policy(db, "emergency_stop").await?;
    let state = serde_json::from_value(row.value.clone())
        .map_err(|e| WorkflowError::Corrupt(format!("emergency_stop: {e}")))?;
    Ok((state, row.updated_at))
}

/// The emergency stop's current state and when it last changed.
pub async fn emergency_stop_state(
    db: &impl ConnectionTrait,
) -> Result<(EmergencyStop, DateTime<Utc>)> {
    current_stop(db).await
}

async fn set_stop(
    db: &DatabaseConnection,
    engaged: bool,
    actor: &str,
    reason: &str,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<EmergencyStopChange> {
    let (state, changed_at) = current_stop(db).await?;
    if state.engaged == engaged {
        return Ok(EmergencyStopChange {
            state,
            changed_at: Some(changed_at),
            changed: false,
        });
    }
    let now = db_now(now);
    let state = EmergencyStop {
        engaged,
        reason: Some(reason.to_owned()),
        actor: Some(actor.to_owned()),
        engaged_at: engaged.then_some(now),
    };
    let value = serde_json::to_value(&state)
        .map_err(|e| WorkflowError::Corrupt(format!("emergency_stop: {e}")))?;
    let action = if engaged {
        "emergency_stop.engage"
    } else {
        "emergency_stop.release"
    };
    write_policy(
        db,
        &PolicyKey::EmergencyStop,
        PolicyChange {
            key: "emergency_stop",
            value,
            actor,
            reason: Some(reason),
            expected_version: None,
        },
        action,
        audit,
        now,
    )
    .await?;
    tracing::warn!(engaged, actor, reason, "emergency stop changed");
    Ok(EmergencyStopChange {
        state,
        changed_at: Some(now),
        changed: true,
    })
}

/// Engages the emergency stop (idempotent, audited).
pub async fn engage_emergency_stop(
    db: &DatabaseConnection,
    actor: &str,
    reason: &str,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<EmergencyStopChange> {
    set_stop(db, true, actor, reason, audit, now).await
}

/// Releases the emergency stop (idempotent, audited).
pub async fn release_emergency_stop(
    db: &DatabaseConnection,
    actor: &str,
    reason: &str,
    audit: Option<&AuditLog>,
    now: DateTime<Utc>,
) -> Result<EmergencyStopChange> {
    set_stop(db, false, actor, reason, audit, now).await
}
