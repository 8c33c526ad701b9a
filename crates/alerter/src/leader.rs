//! Who delivers when two alerters run: a named lease row (`leases`), taken
//! when free or expired, renewed by its holder, with a fencing token that
//! grows on every change of holder. Both alerters take alerts in and persist
//! them; only the holder flushes groups and sends, so a standby takes over
//! within one lease time when the active one dies, from the database's state.

use chrono::{DateTime, Duration, Utc};
use opsloop_core::store::entities::leases;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

use crate::store::StoreError;

pub const LEASE_NAME: &str = "alerter.delivery";

pub struct LeaderLease {
    db: DatabaseConnection,
    name: String,
    holder: String,
    ttl: Duration,
}

impl LeaderLease {
    pub fn new(db: DatabaseConnection, name: &str, holder: &str, ttl: Duration) -> Self {
        Self {
            db,
            name: name.to_owned(),
            holder: holder.to_owned(),
            ttl,
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes or renews the lease; true while this process holds it.
    pub async fn acquire(&self, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let expires_at = now + self.ttl;
        let inserted = leases::Entity::insert(leases::ActiveModel {
            name: Set(self.name.clone()),
            holder: Set(self.holder.clone()),
            expires_at: Set(expires_at),
            fencing_token: Set(1),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(leases::Column::Name)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        if inserted == 1 {
            return Ok(true);
        }
        let renewed = leases::Entity::update_many()
            .col_expr(leases::Column::ExpiresAt, Expr::value(expires_at))
            .col_expr(leases::Column::UpdatedAt, Expr::value(now))
            .filter(leases::Column::Name.eq(&self.name))
            .filter(leases::Column::Holder.eq(&self.holder))
            .filter(leases::Column::ExpiresAt.gt(now))
            .exec(&self.db)
            .await?;
        if renewed.rows_affected == 1 {
            return Ok(true);
        }
        let taken = leases::Entity::update_many()
            .col_expr(leases::Column::Holder, Expr::value(self.holder.clone()))
            .col_expr(leases::Column::ExpiresAt, Expr::value(expires_at))
            .col_expr(leases::Column::UpdatedAt, Expr::value(now))
            .col_expr(
                leases::Column::FencingToken,
                Expr::col(leases::Column::FencingToken).add(1),
            )
            .filter(leases::Column::Name.eq(&self.name))
            .filter(leases::Column::ExpiresAt.lte(now))
            .exec(&self.db)
            .await?;
        Ok(taken.rows_affected == 1)
    }

    /// Gives the lease up (graceful stop), so a standby need not wait.
    pub async fn release(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        leases::Entity::update_many()
            .col_expr(leases::Column::ExpiresAt, Expr::value(now))
            .col_expr(leases::Column::UpdatedAt, Expr::value(now))
            .filter(leases::Column::Name.eq(&self.name))
            .filter(leases::Column::Holder.eq(&self.holder))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// The current fencing token (tests and operators).
    pub async fn fencing_token(&self) -> Result<Option<i64>, StoreError> {
        Ok(leases::Entity::find_by_id(self.name.clone())
            .one(&self.db)
            .await?
            .map(|row| row.fencing_token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsloop_core::store::testing::fresh_sqlite;

    #[tokio::test]
    async fn one_holder_at_a_time_and_takeover_after_expiry() {
        let db = fresh_sqlite().await;
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).expect("t0");
        let ttl = Duration::seconds(15);
        let a = LeaderLease::new(db.db.clone(), LEASE_NAME, "a", ttl);
        let b = LeaderLease::new(db.db.clone(), LEASE_NAME, "b", ttl);
        assert!(a.acquire(t0).await.expect("a"));
        assert!(!b.acquire(t0).await.expect("b"));
        assert!(
            a.acquire(t0 + Duration::seconds(10))
                .await
                .expect("a renews")
        );
        assert!(
            !b.acquire(t0 + Duration::seconds(20))
                .await
                .expect("renewed")
        );
        assert_eq!(a.fencing_token().await.expect("token"), Some(1));
        // a dies: b takes over once the lease has run out.
        assert!(
            b.acquire(t0 + Duration::seconds(25))
                .await
                .expect("b takes over")
        );
        assert_eq!(b.fencing_token().await.expect("token"), Some(2));
        assert!(
            !a.acquire(t0 + Duration::seconds(26))
                .await
                .expect("a lost it")
        );
        // A graceful stop hands over at once.
        b.release(t0 + Duration::seconds(27))
            .await
            .expect("release");
        assert!(
            a.acquire(t0 + Duration::seconds(27))
                .await
                .expect("a again")
        );
        assert_eq!(a.fencing_token().await.expect("token"), Some(3));
        db.cleanup().await;
    }
}
