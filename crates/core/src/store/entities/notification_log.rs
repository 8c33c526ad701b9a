//! The `notification_log` table: what was sent to which receiver for which group state.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "notification_log")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(column_type = "Text")]
    pub receiver: String,
    #[sea_orm(column_type = "Text")]
    pub group_key: String,
    #[sea_orm(column_type = "Text")]
    pub state_hash: String,
    #[sea_orm(column_type = "JsonBinary")]
    pub firing: Json,
    #[sea_orm(column_type = "JsonBinary")]
    pub resolved: Json,
    #[sea_orm(column_type = "Text")]
    pub status: String,
    pub attempts: i32,
    #[sea_orm(column_type = "Text")]
    pub last_error: Option<String>,
    pub created_at: DateTimeUtc,
    pub sent_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
