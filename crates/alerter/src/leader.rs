//! Who delivers when two alerters run: a named lease row (`leases`), taken
//! when free or expired, renewed by its holder, with a fencing token that
//! grows on every change of holder. Both alerters take alerts in and persist
//! them; only the holder flushes groups and sends, so a standby takes over
//! within one lease time when the active one dies, from the database's state.

use chrono::{DateTime, Duration, Utc};
use opsloop_core::lease::{self, LeaseKeeper};
use sea_orm::DatabaseConnection;

use crate::store::StoreError;

pub const LEASE_NAME: &str = "alerter.delivery";

pub struct LeaderLease {
    db: DatabaseConnection,
    keeper: LeaseKeeper,
}

impl LeaderLease {
    pub fn new(db: DatabaseConnection, name: &str, holder: &str, ttl: Duration) -> Self {
        Self {
            db,
            keeper: LeaseKeeper::new(name, holder, ttl),
        }
    }

    pub fn holder(&self) -> &str {
        self.keeper.holder()
    }

    /// Takes or renews the lease; true while this process holds it. Asked
    /// on every wake-up of the delivery loop, it writes only when the lease
    /// is due for renewal, so an alert's path to the receiver does not wait
    /// on a lease write.
    pub async fn acquire(&self, now: DateTime<Utc>) -> Result<bool, StoreError> {
        Ok(self.keeper.hold(&self.db, now).await?.is_some())
    }

    /// Gives the lease up (graceful stop), so a standby need not wait.
    pub async fn release(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        Ok(self.keeper.release(&self.db, now).await?)
    }

    /// The current fencing token (tests and operators).
    pub async fn fencing_token(&self) -> Result<Option<i64>, StoreError> {
        Ok(lease::fencing_token(&self.db, self.keeper.name()).await?)
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
