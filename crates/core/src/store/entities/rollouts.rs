//! The `rollouts` table: staged rollouts, their current phase and newest
//! go/no-go report (see `workflow::rollouts`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "rollouts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(column_type = "Text")]
    pub name: String,
    #[sea_orm(column_type = "JsonBinary")]
    pub spec: Json,
    #[sea_orm(column_type = "Text")]
    pub status: String,
    pub phase_index: i32,
    pub phase_started_at: DateTimeUtc,
    #[sea_orm(column_type = "Text", nullable)]
    pub active_slot: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub last_verdict: Option<String>,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub last_report: Option<Json>,
    #[sea_orm(column_type = "Text")]
    pub created_by: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
