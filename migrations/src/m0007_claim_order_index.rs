//! ClaimStep reads the oldest queued step in `(created_at, mission_id, seq)`
//! order. With only `(status, kind, next_attempt_at, created_at)` the
//! planner had to collect and sort every queued step of the worker's kinds
//! (321 ms at 100k queued steps, seconds under 16 concurrent workers); this
//! index lets it walk queued steps in claim order and stop at the first one
//! that is claimable and not locked (0.15 ms).

use sea_orm_migration::prelude::*;

use crate::index;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum MissionSteps {
    Table,
    Status,
    CreatedAt,
    MissionId,
    Seq,
}

const INDEX: &str = "idx_mission_steps_claim_order";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(index(
                INDEX,
                MissionSteps::Table,
                [
                    MissionSteps::Status,
                    MissionSteps::CreatedAt,
                    MissionSteps::MissionId,
                    MissionSteps::Seq,
                ],
            ))
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(INDEX)
                    .table(MissionSteps::Table)
                    .to_owned(),
            )
            .await
    }
}
