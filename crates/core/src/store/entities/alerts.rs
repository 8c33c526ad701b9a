//! The `alerts` table: alerts the alerter knows, keyed by label fingerprint.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "alerts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub fingerprint: String,
    #[sea_orm(column_type = "JsonBinary")]
    pub labels: Json,
    #[sea_orm(column_type = "JsonBinary")]
    pub annotations: Json,
    #[sea_orm(column_type = "Text")]
    pub status: String,
    pub starts_at: DateTimeUtc,
    pub ends_at: Option<DateTimeUtc>,
    #[sea_orm(column_type = "Text")]
    pub generator_url: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub source: String,
    pub received_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
