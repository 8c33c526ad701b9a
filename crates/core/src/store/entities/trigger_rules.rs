//! The `trigger_rules` table: rules the heartbeat evaluates into proposals.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "trigger_rules")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(column_type = "Text", unique)]
    pub name: String,
    pub enabled: bool,
    #[sea_orm(column_type = "JsonBinary")]
    pub condition: Json,
    #[sea_orm(column_type = "JsonBinary")]
    pub action: Json,
    pub cooldown_seconds: i64,
    pub last_fired_at: Option<DateTimeUtc>,
    pub fire_count: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::trigger_fires::Entity")]
    Fires,
}

impl Related<super::trigger_fires::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Fires.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
