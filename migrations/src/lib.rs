//! The opsloop schema as sea-orm migrations: one [`Migrator`] that builds (and
//! tears down) every table on PostgreSQL and SQLite alike, plus the seeded
//! policy values ([`seed_policies`]).
//!
//! Conventions every migration follows, so both backends behave the same:
//! - tables and indexes are built with sea-query's schema builder, never raw SQL;
//! - ids are `uuid`, timestamps `timestamp with time zone` (text on SQLite), JSON
//!   is `jsonb` (text on SQLite);
//! - timestamps have no database default: the application always writes them,
//!   so SQLite never mixes `CURRENT_TIMESTAMP`'s format with RFC 3339 text
//!   (which would break ordering comparisons);
//! - status columns are plain text validated by the domain types, not CHECK
//!   constraints, because widening a CHECK on SQLite means rebuilding the table;
//! - every migration runs in a transaction, on SQLite too.

use sea_orm_migration::prelude::*;

mod m0001_loop;
mod m0002_heartbeat;
mod m0003_alerter;
mod m0004_backup;
mod m0005_seed_policy;
mod m0006_event_window_index;
mod m0007_claim_order_index;
mod m0008_api_tokens;
mod m0009_incidents;
mod m0010_probes;
mod m0011_probe_daily;
mod m0012_step_kind_pauses;
mod m0013_dead_letter_retries;
mod m0014_governance;
mod m0015_rollouts;
mod m0016_starter_trigger_rules;
mod m0017_usage_unreachable;
mod m0018_console_nonces;

pub use m0005_seed_policy::seed_policies;
pub use m0016_starter_trigger_rules::starter_trigger_rules;
// Re-exported so the store can run the migrator without its own dependency
// on sea-orm-migration.
pub use sea_orm_migration::{MigrationStatus, MigratorTrait};

/// Applies and rolls back the whole opsloop schema.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_loop::Migration),
            Box::new(m0002_heartbeat::Migration),
            Box::new(m0003_alerter::Migration),
            Box::new(m0004_backup::Migration),
            Box::new(m0005_seed_policy::Migration),
            Box::new(m0006_event_window_index::Migration),
            Box::new(m0007_claim_order_index::Migration),
            Box::new(m0008_api_tokens::Migration),
            Box::new(m0009_incidents::Migration),
            Box::new(m0010_probes::Migration),
            Box::new(m0011_probe_daily::Migration),
            Box::new(m0012_step_kind_pauses::Migration),
            Box::new(m0013_dead_letter_retries::Migration),
            Box::new(m0014_governance::Migration),
            Box::new(m0015_rollouts::Migration),
            Box::new(m0016_starter_trigger_rules::Migration),
            Box::new(m0017_usage_unreachable::Migration),
            Box::new(m0018_console_nonces::Migration),
        ]
    }
}

/// Names of every table the migrations create, in creation order. Tests and
/// the backup-agent (per-table row counts) use it.
pub const TABLES: &[&str] = &[
    // m0001_loop
    "proposals",
    "missions",
    "mission_steps",
    "step_dead_letters",
    "daily_step_counts",
    "events",
    "outbox",
    "policy",
    "policy_history",
    "audit_events",
    // m0002_heartbeat
    "trigger_rules",
    "trigger_fires",
    "event_cursors",
    "event_quarantine",
    "reactions",
    "insights",
    "insight_sources",
    "heartbeat_runs",
    "leases",
    "cooldowns",
    "reports",
    // m0003_alerter
    "alerts",
    "silences",
    "notification_log",
    "alert_messages_seen",
    // m0004_backup
    "backups",
    // m0008_api_tokens
    "api_tokens",
    // m0009_incidents
    "incidents",
    "incident_groups",
    "incident_log",
    "incident_link_uses",
    // m0010_probes
    "probe_state",
    "probe_cert_notices",
    "probe_history",
    // m0011_probe_daily
    "probe_daily",
    // m0012_step_kind_pauses
    "step_kind_pauses",
    "probe_definitions",
    // m0014_governance
    "resource_rates",
    "resource_usage",
    // m0015_rollouts
    "rollouts",
    // m0018_console_nonces
    "console_nonces",
];

/// A plain (non-unique) index named `name` on `table(columns…)`.
pub(crate) fn index<T, C>(
    name: &str,
    table: T,
    columns: impl IntoIterator<Item = C>,
) -> IndexCreateStatement
where
    T: IntoTableRef,
    C: IntoIndexColumn,
{
    let mut stmt = Index::create();
    stmt.name(name).table(table);
    for column in columns {
        stmt.col(column);
    }
    stmt.take()
}

/// A unique index named `name` on `table(columns…)`. Unique indexes (rather
/// than column constraints) keep names stable across backends, so conflict
/// handling and error messages can rely on them.
pub(crate) fn unique_index<T, C>(
    name: &str,
    table: T,
    columns: impl IntoIterator<Item = C>,
) -> IndexCreateStatement
where
    T: IntoTableRef,
    C: IntoIndexColumn,
{
    let mut stmt = index(name, table, columns);
    stmt.unique();
    stmt
}

/// Drops the tables in the order given (children before parents).
pub(crate) async fn drop_tables<T>(
    manager: &SchemaManager<'_>,
    tables: impl IntoIterator<Item = T>,
) -> Result<(), DbErr>
where
    T: IntoTableRef,
{
    for table in tables {
        manager
            .drop_table(Table::drop().table(table).if_exists().take())
            .await?;
    }
    Ok(())
}
