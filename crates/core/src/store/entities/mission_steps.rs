//! The `mission_steps` table: one unit of work of a mission, claimed by workers under a lease.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "mission_steps")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub mission_id: Uuid,
    pub seq: i32,
    #[sea_orm(column_type = "Text")]
    pub kind: String,
    #[sea_orm(column_type = "JsonBinary")]
    pub payload: Json,
    #[sea_orm(column_type = "Text")]
    pub status: String,
    pub attempt: i32,
    pub max_attempts: i32,
    #[sea_orm(column_type = "Text")]
    pub lease_holder: Option<String>,
    pub lease_expires_at: Option<DateTimeUtc>,
    pub next_attempt_at: Option<DateTimeUtc>,
    #[sea_orm(column_type = "JsonBinary")]
    pub result: Option<Json>,
    #[sea_orm(column_type = "Text")]
    pub error: Option<String>,
    pub cost_usd: Option<f64>,
    pub created_at: DateTimeUtc,
    pub started_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::missions::Entity",
        from = "Column::MissionId",
        to = "super::missions::Column::Id"
    )]
    Mission,
    #[sea_orm(has_many = "super::step_dead_letters::Entity")]
    DeadLetters,
}

impl Related<super::missions::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Mission.def()
    }
}

impl Related<super::step_dead_letters::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::DeadLetters.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
