//! The `backups` table: backups taken by the backup-agent and their verification state.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "backups")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(column_type = "Text")]
    pub target: String,
    #[sea_orm(column_type = "Text")]
    pub kind: String,
    #[sea_orm(column_type = "Text")]
    pub status: String,
    #[sea_orm(column_type = "Text")]
    pub object_key: Option<String>,
    pub size_bytes: Option<i64>,
    #[sea_orm(column_type = "Text")]
    pub sha256: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub compression: String,
    #[sea_orm(column_type = "JsonBinary")]
    pub manifest: Option<Json>,
    pub started_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
    #[sea_orm(column_type = "Text")]
    pub verify_status: Option<String>,
    pub verified_at: Option<DateTimeUtc>,
    pub verify_duration_ms: Option<i64>,
    #[sea_orm(column_type = "Text")]
    pub error: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
