//! Database metrics of every pool opened by [`super::connect`]:
//!
//! - `opsloop_db_query_duration_seconds{operation}`: a histogram of every
//!   statement's time (sea-orm's per-connection metric callback), `operation`
//!   being the statement's first keyword (`select`, `insert`, `update`,
//!   `delete`, `other`);
//! - `opsloop_db_pool_connections_in_use` and `opsloop_db_pool_connections_max`:
//!   gauges of the process's pools, summed, sampled by [`sample_pools`] on each
//!   `/metrics` scrape (`telemetry::render_metrics`).
//!
//! The registry holds weak references: a pool stops being counted once every
//! clone of its `DatabaseConnection` is dropped (tests open many).

use std::sync::{Arc, Mutex, Weak};

use sea_orm::{DatabaseConnection, DbBackend};

pub const QUERY_DURATION: &str = "opsloop_db_query_duration_seconds";
pub const POOL_IN_USE: &str = "opsloop_db_pool_connections_in_use";
pub const POOL_MAX: &str = "opsloop_db_pool_connections_max";

enum Pool {
    Postgres(sea_orm::sqlx::PgPool),
    Sqlite(sea_orm::sqlx::SqlitePool),
}

/// One pool as seen by the gauges; kept alive by the connection's metric
/// callback, so it lives exactly as long as the connection.
struct PoolProbe {
    pool: Pool,
    max: u32,
}

impl PoolProbe {
    fn in_use(&self) -> u32 {
        let (size, idle, closed) = match &self.pool {
            Pool::Postgres(p) => (p.size(), p.num_idle(), p.is_closed()),
            Pool::Sqlite(p) => (p.size(), p.num_idle(), p.is_closed()),
        };
        if closed {
            return 0;
        }
        size.saturating_sub(u32::try_from(idle).unwrap_or(u32::MAX))
    }
}

static POOLS: Mutex<Vec<Weak<PoolProbe>>> = Mutex::new(Vec::new());

/// The statement's kind for the `operation` label: a small fixed set, so
/// the label's cardinality stays bounded whatever SQL runs.
pub fn operation(sql: &str) -> &'static str {
    let word = sql
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default();
    match word.to_ascii_lowercase().as_str() {
        "select" | "with" => "select",
        "insert" => "insert",
        "update" => "update",
        "delete" => "delete",
        _ => "other",
    }
}

/// Installs the query-duration callback on `db` and registers its pool for
/// the pool gauges.
pub fn instrument(db: &mut DatabaseConnection, max_connections: u32) {
    let pool = match db.get_database_backend() {
        DbBackend::Postgres => Pool::Postgres(db.get_postgres_connection_pool().clone()),
        DbBackend::Sqlite => Pool::Sqlite(db.get_sqlite_connection_pool().clone()),
        _ => return,
    };
    let probe = Arc::new(PoolProbe {
        pool,
        max: max_connections,
    });
    if let Ok(mut pools) = POOLS.lock() {
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(&probe));
    }
    db.set_metric_callback(move |info| {
        // The probe lives as long as this callback, i.e. the connection.
        let _keep = &probe;
        metrics::histogram!(QUERY_DURATION, "operation" => operation(&info.statement.sql))
            .record(info.elapsed.as_secs_f64());
    });
}

/// Sets the pool gauges from every live pool of the process (summed).
/// Does nothing when no pool was opened (a process without a database).
pub fn sample_pools() {
    let Ok(mut pools) = POOLS.lock() else {
        return;
    };
    pools.retain(|p| p.strong_count() > 0);
    let live: Vec<Arc<PoolProbe>> = pools.iter().filter_map(Weak::upgrade).collect();
    drop(pools);
    if live.is_empty() {
        return;
    }
    let in_use: u32 = live.iter().map(|p| p.in_use()).sum();
    let max: u32 = live.iter().map(|p| p.max).sum();
    metrics::gauge!(POOL_IN_USE).set(f64::from(in_use));
    metrics::gauge!(POOL_MAX).set(f64::from(max));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_a_small_fixed_set() {
        assert_eq!(operation("SELECT 1"), "select");
        assert_eq!(operation("  select * from x"), "select");
        assert_eq!(operation("WITH a AS (SELECT 1) SELECT * FROM a"), "select");
        assert_eq!(operation("(SELECT 1) UNION (SELECT 2)"), "select");
        assert_eq!(operation("INSERT INTO x VALUES ($1)"), "insert");
        assert_eq!(operation("UPDATE x SET a = 1"), "update");
        assert_eq!(operation("DELETE FROM x"), "delete");
        assert_eq!(operation("CREATE TABLE x ()"), "other");
        assert_eq!(operation(""), "other");
    }

    #[tokio::test]
    async fn statements_and_the_pool_show_up_on_metrics() {
        use sea_orm::ConnectionTrait;
        let _ = crate::telemetry::prometheus();
        let db = crate::store::testing::fresh_sqlite().await;
        db.db
            .execute_unprepared("SELECT 1")
            .await
            .expect("a statement");
        let text = crate::telemetry::render_metrics();
        assert!(
            text.contains("opsloop_db_query_duration_seconds_bucket{operation=\"select\""),
            "{text}"
        );
        assert!(
            text.contains("# HELP opsloop_db_query_duration_seconds "),
            "{text}"
        );
        assert!(
            text.contains("# TYPE opsloop_db_pool_connections_in_use gauge"),
            "{text}"
        );
        let max = text
            .lines()
            .find_map(|l| l.strip_prefix("opsloop_db_pool_connections_max "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("pool max gauge");
        assert!(max >= 1.0, "{text}");
        db.cleanup().await;
    }
}
