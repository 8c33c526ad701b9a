//! The `trigger_fires` table: the fire ledger, one row per (rule, fact window).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "trigger_fires")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub rule_id: Uuid,
    #[sea_orm(column_type = "Text")]
    pub window_key: String,
    #[sea_orm(column_type = "Text")]
    pub outcome: String,
    pub proposal_id: Option<Uuid>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::trigger_rules::Entity",
        from = "Column::RuleId",
        to = "super::trigger_rules::Column::Id"
    )]
    Rule,
}

impl Related<super::trigger_rules::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Rule.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
