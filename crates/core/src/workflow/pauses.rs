//! Step kinds paused for claiming: the per-dependency form of the
//! emergency stop. A source (today `probe:<name>`, an upstream probe that is
//! down) holds rows in `step_kind_pauses`, one per kind; the claim statement
//! hands out nothing of a kind with any row (see `missions::not_paused_pg`).
//! Several sources may pause one kind; each lifts only its own rows, so the
//! kind is claimable again once every source has recovered.

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;
use serde::Serialize;

use super::{Result, db_now, stmt};

/// One kind paused by one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KindPause {
    pub kind: String,
    /// Who paused it, e.g. `probe:payments-api`.
    pub source: String,
    /// Why, for operators (`opsloop health`).
    pub reason: String,
    pub since: DateTime<Utc>,
}

/// What [`sync_source_pauses`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PauseChange {
    /// Kinds this source paused now (they were not paused by it before).
    pub paused: Vec<String>,
    /// Kinds this source no longer pauses.
    pub resumed: Vec<String>,
}

impl PauseChange {
    pub fn is_empty(&self) -> bool {
        self.paused.is_empty() && self.resumed.is_empty()
    }
}

/// Makes `source` pause exactly `kinds` (none: lifts all of its pauses),
/// keeping the `since` of pauses that already stand. Idempotent; run it in
/// the transaction that records why.
pub async fn sync_source_pauses(
    db: &impl ConnectionTrait,
    source: &str,
    kinds: &[String],
    reason: &str,
    now: DateTime<Utc>,
) -> Result<PauseChange> {
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(stmt(
            backend,
            "SELECT kind FROM step_kind_pauses WHERE source = $1",
            vec![source.into()],
        ))
        .await?;
    let held = rows
        .iter()
        .map(|r| r.try_get::<String>("", "kind"))
        .collect::<std::result::Result<Vec<String>, _>>()?;
    let mut change = PauseChange::default();
    for kind in &held {
        if !kinds.contains(kind) {
            db.execute_raw(stmt(
                backend,
                "DELETE FROM step_kind_pauses WHERE source = $1 AND kind = $2",
                vec![source.into(), kind.as_str().into()],
            ))
            .await?;
            change.resumed.push(kind.clone());
        }
    }
    let now = db_now(now);
    for kind in kinds {
        if held.contains(kind) || change.paused.contains(kind) {
            continue;
        }
        let inserted = db
            .execute_raw(stmt(
                backend,
                "INSERT INTO step_kind_pauses (kind, source, reason, since) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (kind, source) DO NOTHING",
                vec![
                    kind.as_str().into(),
                    source.into(),
                    reason.into(),
                    now.into(),
                ],
            ))
            .await?
            .rows_affected();
        if inserted == 1 {
            change.paused.push(kind.clone());
        }
    }
    change.paused.sort();
    change.resumed.sort();
    Ok(change)
}

/// Every standing pause, by kind then source.
pub async fn paused_kinds(db: &impl ConnectionTrait) -> Result<Vec<KindPause>> {
    let rows = db
        .query_all_raw(stmt(
            db.get_database_backend(),
            "SELECT kind, source, reason, since FROM step_kind_pauses ORDER BY kind, source",
            vec![],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok(KindPause {
                kind: row.try_get("", "kind")?,
                source: row.try_get("", "source")?,
                reason: row.try_get("", "reason")?,
                since: row.try_get("", "since")?,
            })
        })
        .collect()
}
