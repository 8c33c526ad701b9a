//! sea-orm entities, one module per table of the schema in `opsloop-migrations`.
//!
//! Conventions: ids are `Uuid` (a BLOB on SQLite), timestamps `DateTimeUtc`
//! (RFC 3339 text on SQLite, so always write them from Rust, never with SQL's
//! `CURRENT_TIMESTAMP`), JSON columns `Json` (`serde_json::Value`); status
//! columns are plain text that the domain types parse. Relations exist where
//! one row owns or refers to another (proposal → mission → steps → dead
//! letters, mission → events, rule → fires, insight → sources).

pub mod alert_messages_seen;
pub mod alerts;
pub mod api_tokens;
pub mod audit_events;
pub mod backups;
pub mod console_nonces;
pub mod cooldowns;
pub mod daily_step_counts;
pub mod event_cursors;
pub mod event_quarantine;
pub mod events;
pub mod heartbeat_runs;
pub mod insight_sources;
pub mod insights;
pub mod leases;
pub mod mission_steps;
pub mod missions;
pub mod notification_log;
pub mod outbox;
pub mod policy;
pub mod policy_history;
pub mod proposals;
pub mod reactions;
pub mod reports;
pub mod rollouts;
pub mod silences;
pub mod step_dead_letters;
pub mod trigger_fires;
pub mod trigger_rules;

/// The entities under their table's name in CamelCase, for `use …::prelude::*`.
pub mod prelude {
    pub use super::alert_messages_seen::Entity as AlertMessagesSeen;
    pub use super::alerts::Entity as Alerts;
    pub use super::api_tokens::Entity as ApiTokens;
    pub use super::audit_events::Entity as AuditEvents;
    pub use super::backups::Entity as Backups;
    pub use super::cooldowns::Entity as Cooldowns;
    pub use super::daily_step_counts::Entity as DailyStepCounts;
    pub use super::event_cursors::Entity as EventCursors;
    pub use super::event_quarantine::Entity as EventQuarantine;
    pub use super::events::Entity as Events;
    pub use super::heartbeat_runs::Entity as HeartbeatRuns;
    pub use super::insight_sources::Entity as InsightSources;
    pub use super::insights::Entity as Insights;
    pub use super::leases::Entity as Leases;
    pub use super::mission_steps::Entity as MissionSteps;
    pub use super::missions::Entity as Missions;
    pub use super::notification_log::Entity as NotificationLog;
    pub use super::outbox::Entity as Outbox;
    pub use super::policy::Entity as Policy;
    pub use super::policy_history::Entity as PolicyHistory;
    pub use super::proposals::Entity as Proposals;
    pub use super::reactions::Entity as Reactions;
    pub use super::reports::Entity as Reports;
    pub use super::rollouts::Entity as Rollouts;
    pub use super::silences::Entity as Silences;
    pub use super::step_dead_letters::Entity as StepDeadLetters;
    pub use super::trigger_fires::Entity as TriggerFires;
    pub use super::trigger_rules::Entity as TriggerRules;
}
