//! The `proposals` table: requests to run steps, judged by the gates and then approved, rejected or expired.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "proposals")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(column_type = "Text", unique)]
    pub dedupe_key: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub source: String,
    #[sea_orm(column_type = "Text")]
    pub agent: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub title: String,
    #[sea_orm(column_type = "Text")]
    pub status: String,
    #[sea_orm(column_type = "Text")]
    pub rejection_reason: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub rejection_detail: Option<String>,
    #[sea_orm(column_type = "JsonBinary")]
    pub steps: Json,
    pub parallel: bool,
    #[sea_orm(column_type = "JsonBinary")]
    pub metadata: Json,
    pub policy_version: i64,
    #[sea_orm(column_type = "Text")]
    pub trace_id: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_one = "super::missions::Entity")]
    Mission,
}

impl Related<super::missions::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Mission.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
