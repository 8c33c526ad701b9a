//! The `insight_sources` table: which insight each source event promoted (an event promotes once).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "insight_sources")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub event_id: Uuid,
    pub insight_id: Uuid,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::insights::Entity",
        from = "Column::InsightId",
        to = "super::insights::Column::Id"
    )]
    Insight,
}

impl Related<super::insights::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Insight.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
