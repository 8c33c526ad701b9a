//! Named leases in the `leases` table, so one backup at a time runs per
//! database across every agent process. Taking a lease bumps its fencing
//! token; an expired lease may be taken over.

use chrono::{DateTime, TimeDelta, Utc};
use opsloop_core::store::entities::leases;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Set, TryInsertResult,
};

/// The lease name guarding backups of `target`.
pub fn backup_lease(target: &str) -> String {
    format!("backup:{target}")
}

/// Takes `name` for `holder` until `now + ttl` when it is free, expired or
/// already `holder`'s. Returns the fencing token, or `None` when another
/// holder has it.
pub async fn try_acquire(
    db: &impl ConnectionTrait,
    name: &str,
    holder: &str,
    ttl: TimeDelta,
    now: DateTime<Utc>,
) -> Result<Option<i64>, DbErr> {
    let fresh = leases::ActiveModel {
        name: Set(name.to_owned()),
        holder: Set(holder.to_owned()),
        expires_at: Set(now + ttl),
        fencing_token: Set(1),
        updated_at: Set(now),
    };
    let inserted = leases::Entity::insert(fresh)
        .on_conflict_do_nothing_on([leases::Column::Name])
        .exec_without_returning(db)
        .await?;
    if matches!(inserted, TryInsertResult::Inserted(n) if n > 0) {
        return Ok(Some(1));
    }
    let taken = leases::Entity::update_many()
        .col_expr(leases::Column::Holder, Expr::value(holder.to_owned()))
        .col_expr(leases::Column::ExpiresAt, Expr::value(now + ttl))
        .col_expr(
            leases::Column::FencingToken,
            Expr::col(leases::Column::FencingToken).add(1),
        )
        .col_expr(leases::Column::UpdatedAt, Expr::value(now))
        .filter(leases::Column::Name.eq(name))
        .filter(
            Condition::any()
                .add(leases::Column::ExpiresAt.lt(now))
                .add(leases::Column::Holder.eq(holder)),
        )
        .exec(db)
        .await?;
    if taken.rows_affected == 0 {
        return Ok(None);
    }
    Ok(leases::Entity::find_by_id(name.to_owned())
        .one(db)
        .await?
        .map(|lease| lease.fencing_token))
}

/// Extends `holder`'s lease; false when it was lost.
pub async fn renew(
    db: &impl ConnectionTrait,
    name: &str,
    holder: &str,
    ttl: TimeDelta,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let renewed = leases::Entity::update_many()
        .col_expr(leases::Column::ExpiresAt, Expr::value(now + ttl))
        .col_expr(leases::Column::UpdatedAt, Expr::value(now))
        .filter(leases::Column::Name.eq(name))
        .filter(leases::Column::Holder.eq(holder))
        .exec(db)
        .await?;
    Ok(renewed.rows_affected > 0)
}

/// Gives the lease up (only `holder`'s).
pub async fn release(db: &impl ConnectionTrait, name: &str, holder: &str) -> Result<(), DbErr> {
    leases::Entity::delete_many()
        .filter(leases::Column::Name.eq(name))
        .filter(leases::Column::Holder.eq(holder))
        .exec(db)
        .await?;
    Ok(())
}

/// Whether someone holds `name` at `now`.
pub async fn is_held(
    db: &impl ConnectionTrait,
    name: &str,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    Ok(leases::Entity::find_by_id(name.to_owned())
        .one(db)
        .await?
        .is_some_and(|lease| lease.expires_at > now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_and_expired_leases_are_taken_over() {
        let test_db = opsloop_core::store::testing::fresh_sqlite().await;
        let db = &test_db.db;
        let now = Utc::now();
        let ttl = TimeDelta::seconds(60);
        let name = backup_lease("opsloop");
        assert_eq!(
            try_acquire(db, &name, "a", ttl, now)
                .await
                .expect("acquire"),
            Some(1)
        );
        assert_eq!(
            try_acquire(db, &name, "b", ttl, now)
                .await
                .expect("acquire"),
            None
        );
        assert!(is_held(db, &name, now).await.expect("held"));
        assert!(renew(db, &name, "a", ttl, now).await.expect("renew"));
        assert!(!renew(db, &name, "b", ttl, now).await.expect("renew"));
        let later = now + TimeDelta::seconds(120);
        assert_eq!(
            try_acquire(db, &name, "b", ttl, later)
                .await
                .expect("take over"),
            Some(2)
        );
        release(db, &name, "a")
            .await
            .expect("release of a lost lease is harmless");
        assert!(is_held(db, &name, later).await.expect("held"));
        release(db, &name, "b").await.expect("release");
        assert!(!is_held(db, &name, later).await.expect("held"));
        test_db.cleanup().await;
    }
}
