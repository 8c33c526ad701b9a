//! Named leases in the `leases` table: one holder at a time per name, taken
//! when free or expired, renewed by its holder, with a fencing token that
//! grows every time the lease changes hands. The heartbeat's leader, the
//! alerter's delivery role and each backup target use one each.
//!
//! [`acquire`] is one statement (an upsert guarded by holder/expiry) on both
//! PostgreSQL and SQLite, so two processes racing for a free lease cannot
//! both win. [`LeaseKeeper`] keeps a held lease without writing on every
//! call: it renews once a third of the time to live has passed.

use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use sea_orm::{ConnectionTrait, DbErr};

use crate::store::stmt;
use crate::workflow::db_now;

/// A held lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// Grows each time the lease changes hands.
    pub fencing_token: i64,
    pub expires_at: DateTime<Utc>,
}

/// Takes or renews the lease `name` for `holder` until `now + ttl`. Granted
/// when free, expired or already `holder`'s; `None` while another holder's
/// lease runs.
pub async fn acquire(
    db: &impl ConnectionTrait,
    name: &str,
    holder: &str,
    ttl: Duration,
    now: DateTime<Utc>,
) -> Result<Option<LeaseGrant>, DbErr> {
    let now = db_now(now);
    let expires = db_now(now + ttl);
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "INSERT INTO leases (name, holder, expires_at, fencing_token, updated_at) \
             VALUES ($1, $2, $3, 1, $4) \
             ON CONFLICT (name) DO UPDATE SET \
               fencing_token = CASE WHEN leases.holder = excluded.holder \
                 THEN leases.fencing_token ELSE leases.fencing_token + 1 END, \
               holder = excluded.holder, expires_at = excluded.expires_at, \
               updated_at = excluded.updated_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at <= excluded.updated_at \
             RETURNING fencing_token",
            vec![name.into(), holder.into(), expires.into(), now.into()],
        ))
        .await?;
    row.map(|row| {
        Ok(LeaseGrant {
            fencing_token: row.try_get::<i64>("", "fencing_token")?,
            expires_at: expires,
        })
    })
    .transpose()
}

/// Gives `holder`'s lease up (a graceful stop) so another process need not
/// wait for it to run out. Harmless when the lease was already lost.
pub async fn release(
    db: &impl ConnectionTrait,
    name: &str,
    holder: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    db.execute_raw(stmt(
        db.get_database_backend(),
        "UPDATE leases SET expires_at = $3, updated_at = $3 WHERE name = $1 AND holder = $2",
        vec![name.into(), holder.into(), db_now(now).into()],
    ))
    .await?;
    Ok(())
}

/// The current holder of `name` and when its lease runs out (it may have).
pub async fn holder(
    db: &impl ConnectionTrait,
    name: &str,
) -> Result<Option<(String, DateTime<Utc>)>, DbErr> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT holder, expires_at FROM leases WHERE name = $1",
            vec![name.into()],
        ))
        .await?;
    row.map(|r| Ok((r.try_get("", "holder")?, r.try_get("", "expires_at")?)))
        .transpose()
}

/// Whether anyone holds `name` at `now`.
pub async fn is_held(
    db: &impl ConnectionTrait,
    name: &str,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    Ok(holder(db, name)
        .await?
        .is_some_and(|(_, expires_at)| expires_at > now))
}

/// The current fencing token of `name` (operators and tests).
pub async fn fencing_token(db: &impl ConnectionTrait, name: &str) -> Result<Option<i64>, DbErr> {
    let row = db
        .query_one_raw(stmt(
            db.get_database_backend(),
            "SELECT fencing_token FROM leases WHERE name = $1",
            vec![name.into()],
        ))
        .await?;
    row.map(|r| r.try_get::<i64>("", "fencing_token"))
        .transpose()
}

/// A lease one process keeps holding (or keeps trying to take), writing to
/// the database only when the lease is not held or a third of its time to
/// live has passed since the last renewal — so a loop that asks on every
/// wake-up costs nothing extra per wake-up.
pub struct LeaseKeeper {
    name: String,
    holder: String,
    ttl: Duration,
    /// The grant and when it was last renewed, while this process holds it.
    held: Mutex<Option<(LeaseGrant, DateTime<Utc>)>>,
}

impl LeaseKeeper {
    pub fn new(name: &str, holder: &str, ttl: Duration) -> Self {
        Self {
            name: name.to_owned(),
            holder: holder.to_owned(),
            ttl,
            held: Mutex::new(None),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether this process holds the lease at `now`, taking or renewing it
    /// in the database when due. A database error drops the cached grant, so
    /// the next call asks the database again.
    pub async fn hold(
        &self,
        db: &impl ConnectionTrait,
        now: DateTime<Utc>,
    ) -> Result<Option<LeaseGrant>, DbErr> {
        if let Some((grant, renewed_at)) = *self.lock() {
            let fresh = now >= renewed_at && now - renewed_at < self.ttl / 3;
            if fresh && now < grant.expires_at {
                return Ok(Some(grant));
            }
        }
        let result = acquire(db, &self.name, &self.holder, self.ttl, now).await;
        *self.lock() = match &result {
            Ok(Some(grant)) => Some((*grant, now)),
            _ => None,
        };
        result
    }

    /// Gives the lease up and forgets the grant.
    pub async fn release(
        &self,
        db: &impl ConnectionTrait,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        *self.lock() = None;
        release(db, &self.name, &self.holder, now).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(LeaseGrant, DateTime<Utc>)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{fresh_postgres, fresh_sqlite};

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("instant")
    }

    async fn one_holder_at_a_time(db: &sea_orm::DatabaseConnection) {
        let ttl = Duration::seconds(15);
        let a = acquire(db, "x", "a", ttl, t(0)).await.expect("a");
        assert_eq!(a.map(|g| g.fencing_token), Some(1));
        assert_eq!(acquire(db, "x", "b", ttl, t(1)).await.expect("b"), None);
        // Renewal by the holder keeps the token.
        let renewed = acquire(db, "x", "a", ttl, t(10)).await.expect("renew");
        assert_eq!(renewed.map(|g| g.fencing_token), Some(1));
        assert_eq!(acquire(db, "x", "b", ttl, t(20)).await.expect("b"), None);
        assert!(is_held(db, "x", t(24)).await.expect("held"));
        // a dies: b takes over once the lease has run out, with a new token.
        let b = acquire(db, "x", "b", ttl, t(25))
            .await
            .expect("b takes over");
        assert_eq!(b.map(|g| g.fencing_token), Some(2));
        assert_eq!(acquire(db, "x", "a", ttl, t(26)).await.expect("a"), None);
        // Releasing a lost lease is harmless; a graceful stop hands over.
        release(db, "x", "a", t(27)).await.expect("release lost");
        assert_eq!(
            holder(db, "x").await.expect("holder").map(|h| h.0),
            Some("b".to_owned())
        );
        release(db, "x", "b", t(27)).await.expect("release");
        assert!(!is_held(db, "x", t(27)).await.expect("held"));
        let a = acquire(db, "x", "a", ttl, t(27)).await.expect("a again");
        assert_eq!(a.map(|g| g.fencing_token), Some(3));
        assert_eq!(fencing_token(db, "x").await.expect("token"), Some(3));
    }

    #[tokio::test]
    async fn one_holder_at_a_time_on_sqlite() {
        let db = fresh_sqlite().await;
        one_holder_at_a_time(&db.db).await;
        db.cleanup().await;
    }

    #[tokio::test]
    async fn one_holder_at_a_time_on_postgres() {
        let db = fresh_postgres().await;
        one_holder_at_a_time(&db.db).await;
        db.cleanup().await;
    }

    #[tokio::test]
    async fn racing_processes_never_both_win_a_free_lease() {
        let db = fresh_postgres().await;
        let ttl = Duration::seconds(15);
        let mut racers = Vec::new();
        for i in 0..8 {
            let conn = db.db.clone();
            racers.push(tokio::spawn(async move {
                acquire(&conn, "race", &format!("p{i}"), ttl, t(0))
                    .await
                    .expect("acquire")
            }));
        }
        let mut winners = 0;
        for racer in racers {
            winners += usize::from(racer.await.expect("join").is_some());
        }
        assert_eq!(winners, 1);
        db.cleanup().await;
    }

    #[tokio::test]
    async fn keeper_renews_only_when_a_third_of_the_ttl_has_passed() {
        let db = fresh_sqlite().await;
        let keeper = LeaseKeeper::new("k", "a", Duration::seconds(30));
        assert!(keeper.hold(&db.db, t(0)).await.expect("take").is_some());
        // Within ttl/3 the database is not asked: its row still says t(30).
        assert!(keeper.hold(&db.db, t(9)).await.expect("cached").is_some());
        let (_, expires) = holder(&db.db, "k").await.expect("row").expect("held");
        assert_eq!(expires, t(30));
        // After ttl/3 it renews.
        assert!(keeper.hold(&db.db, t(10)).await.expect("renew").is_some());
        let (_, expires) = holder(&db.db, "k").await.expect("row").expect("held");
        assert_eq!(expires, t(40));
        // Someone else cannot take it meanwhile; after a release they can.
        let other = LeaseKeeper::new("k", "b", Duration::seconds(30));
        assert!(other.hold(&db.db, t(11)).await.expect("b").is_none());
        keeper.release(&db.db, t(12)).await.expect("release");
        assert!(other.hold(&db.db, t(12)).await.expect("b").is_some());
        assert!(keeper.hold(&db.db, t(13)).await.expect("a").is_none());
        db.cleanup().await;
    }
}
