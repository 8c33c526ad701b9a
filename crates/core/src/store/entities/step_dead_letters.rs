//! The `step_dead_letters` table: steps that failed for good, with their last attempt, error and payload, and their retry once an operator asked for one.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "step_dead_letters")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub step_id: Uuid,
    pub mission_id: Uuid,
    #[sea_orm(column_type = "Text")]
    pub kind: String,
    pub attempt: i32,
    #[sea_orm(column_type = "Text")]
    pub error: String,
    #[sea_orm(column_type = "JsonBinary")]
    pub payload: Json,
    pub created_at: DateTimeUtc,
    /// The proposal a retry created (`RetryDeadLetter`), once retried.
    pub retried_proposal_id: Option<Uuid>,
    #[sea_orm(column_type = "Text")]
    pub retried_by: Option<String>,
    pub retried_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::mission_steps::Entity",
        from = "Column::StepId",
        to = "super::mission_steps::Column::Id"
    )]
    Step,
}

impl Related<super::mission_steps::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Step.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
