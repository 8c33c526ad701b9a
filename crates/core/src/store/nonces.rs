//! Nonces spent once across every process sharing the database (the
//! console's signed-out sessions and submitted CSRF tokens): the first
//! [`spend`] of a key wins, every later one — on any replica — learns it
//! was already spent. Keys are kept until `expires_at`, then swept.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Set};

use super::entities::console_nonces::{ActiveModel, Column, Entity};

/// Spends `key` until `expires_at`: true the first time, false when it
/// was already spent (and has not expired). Sweeps keys expired at `now`.
pub async fn spend(
    db: &impl ConnectionTrait,
    key: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    Entity::delete_many()
        .filter(Column::ExpiresAt.lte(now))
        .exec(db)
        .await?;
    let inserted = Entity::insert(ActiveModel {
        key: Set(key.to_owned()),
        expires_at: Set(expires_at),
    })
    .on_conflict(OnConflict::column(Column::Key).do_nothing().to_owned())
    .exec_without_returning(db)
    .await?;
    Ok(inserted == 1)
}

/// Whether `key` was spent and has not expired at `now`.
pub async fn is_spent(
    db: &impl ConnectionTrait,
    key: &str,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    Ok(Entity::find_by_id(key.to_owned())
        .filter(Column::ExpiresAt.gt(now))
        .one(db)
        .await?
        .is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{fresh_postgres, fresh_sqlite};
    use chrono::Duration;

    async fn spends_once(db: &sea_orm::DatabaseConnection) {
        let now = Utc::now();
        let until = now + Duration::hours(1);
        assert!(!is_spent(db, "csrf:a", now).await.expect("read"));
        assert!(spend(db, "csrf:a", until, now).await.expect("spend"));
        assert!(
            !spend(db, "csrf:a", until, now).await.expect("again"),
            "spent once"
        );
        assert!(is_spent(db, "csrf:a", now).await.expect("read"));
        // Once expired it is swept and no longer counts.
        let later = until + Duration::seconds(1);
        assert!(!is_spent(db, "csrf:a", later).await.expect("read"));
        assert!(
            spend(db, "csrf:b", later + Duration::hours(1), later)
                .await
                .expect("spend")
        );
        assert!(
            Entity::find_by_id("csrf:a".to_owned())
                .one(db)
                .await
                .expect("find")
                .is_none(),
            "swept"
        );
    }

    #[tokio::test]
    async fn a_nonce_is_spent_once_on_postgres() {
        let db = fresh_postgres().await;
        spends_once(&db.db).await;
        db.cleanup().await;
    }

    #[tokio::test]
    async fn a_nonce_is_spent_once_on_sqlite() {
        let db = fresh_sqlite().await;
        spends_once(&db.db).await;
        db.cleanup().await;
    }
}
