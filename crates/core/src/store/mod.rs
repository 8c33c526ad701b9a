//! The store: one connection pool to PostgreSQL or SQLite, the schema's
//! migrations, a liveness ping, and the sea-orm entities of every table.
//!
//! Both backends behave the same through this module. SQLite (the embedded
//! default) is opened in WAL mode with foreign keys on and a 5 s busy timeout,
//! and its file and parent directories are created on first use. On
//! PostgreSQL, migrations take an advisory lock, so several daemons starting at
//! once apply them exactly once.

pub mod entities;
pub mod nonces;
pub mod observe;
pub mod probe_history;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use opsloop_migrations::Migrator;
use opsloop_migrations::{MigrationStatus, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

use crate::config::DatabaseSettings;

pub use opsloop_migrations::{TABLES, seed_policies, starter_trigger_rules};

/// How long a SQLite connection waits for another writer before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// PostgreSQL advisory lock key held while migrations run ("opsloop" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x006f_7073_6c6f_6f70;

/// Size and timeouts of the connection pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOptions {
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// Connections kept open while idle.
    pub min_connections: u32,
    /// Bound on opening one connection.
    pub connect_timeout: Duration,
    /// Bound on waiting for a free connection from the pool.
    pub acquire_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            min_connections: 1,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

impl From<&DatabaseSettings> for PoolOptions {
    fn from(settings: &DatabaseSettings) -> Self {
        Self {
            max_connections: settings.max_connections,
            min_connections: settings.min_connections,
            connect_timeout: Duration::from_millis(settings.connect_timeout_ms),
            acquire_timeout: Duration::from_millis(settings.acquire_timeout_ms),
        }
    }
}

/// What went wrong talking to the database, in an operator's words. URLs in
/// messages have their password removed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "database URL {url} is not supported: use postgres://user@host:port/db or sqlite://path/to/file.db"
    )]
    UnsupportedUrl { url: String },
    #[error("database URL {url} is malformed: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot create the directory {path} for the SQLite database: {source}")]
    CreateDirectory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to the database at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error(
        "the database at {url} refused the login: {reason} (check the user, password and database name in database_url)"
    )]
    Rejected { url: String, reason: String },
    #[error("applying database migrations failed: {0}")]
    MigrateUp(#[source] DbErr),
    #[error("rolling back database migrations failed: {0}")]
    MigrateDown(#[source] DbErr),
    #[error("reading the migration status failed: {0}")]
    MigrationStatus(#[source] DbErr),
    #[error("the database did not answer a ping: {0}")]
    Ping(#[source] DbErr),
    #[error("database error: {0}")]
    Db(#[from] DbErr),
}

/// Opens a connection pool to `url` (`postgres://…` or `sqlite:…`), failing
/// fast when the database cannot be reached within `opts.connect_timeout`.
pub async fn connect(url: &str, opts: &PoolOptions) -> Result<DatabaseConnection, StoreError> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(opts.max_connections.max(1))
        .min_connections(opts.min_connections.min(opts.max_connections.max(1)))
        .connect_timeout(opts.connect_timeout)
        .acquire_timeout(opts.acquire_timeout)
        // Statements are traced by our own spans; sqlx's per-statement log
        // lines would drown the JSON logs.
        .sqlx_logging(false);

    let pool_error = |error: DbErr| StoreError::Connect {
        url: redact_url(url),
        reason: error.to_string(),
    };
    let mut db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        options.set_application_name("opsloop");
        // The probe and the pool's first connection run side by side, so a
        // healthy start pays one connection set-up (TLS and login are most
        // of a daemon's start-up), not two in a row; a failed probe ends the
        // start at once with its reason.
        let probe = probe_postgres(url, opts.connect_timeout);
        let pool = Database::connect(options);
        tokio::pin!(probe, pool);
        tokio::select! {
            probed = &mut probe => {
                probed?;
                pool.await.map_err(pool_error)?
            }
            connected = &mut pool => match connected {
                Ok(db) => db,
                Err(error) => {
                    probe.await?;
                    return Err(pool_error(error));
                }
            },
        }
    } else if url.starts_with("sqlite:") {
        prepare_sqlite(url, &mut options)?;
        Database::connect(options).await.map_err(pool_error)?
    } else {
        return Err(StoreError::UnsupportedUrl {
            url: redact_url(url),
        });
    };
    observe::instrument(&mut db, opts.max_connections.max(1));
    Ok(db)
}

/// One direct connection attempt before the pool is built. The pool retries
/// refused connections until its acquire timeout and then reports only "pool
/// timed out"; the probe fails at once with the real reason (connection
/// refused, authentication failed, database does not exist, …).
/// SQLSTATEs of a login the server refuses for good: invalid authorization
/// (28000), invalid password (28P01), unknown database (3D000).
const REJECTING_SQLSTATES: [&str; 3] = ["28000", "28P01", "3D000"];

async fn probe_postgres(url: &str, timeout: Duration) -> Result<(), StoreError> {
    use sea_orm::sqlx::Connection;
    use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection};

    let options = PgConnectOptions::from_str(url).map_err(|error| StoreError::InvalidUrl {
        url: redact_url(url),
        reason: error.to_string(),
    })?;
    let unreachable = |reason: String| StoreError::Connect {
        url: redact_url(url),
        reason,
    };
    match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await {
        Ok(Ok(connection)) => {
            // Closing politely is best effort; the probe already succeeded.
            let _ = connection.close().await;
            Ok(())
        }
        Ok(Err(error)) => {
            // The server answered and said no: waiting will not change that.
            let rejected = matches!(&error, sea_orm::sqlx::Error::Database(db)
                if db.code().is_some_and(|code| REJECTING_SQLSTATES.contains(&code.as_ref())));
            if rejected {
                Err(StoreError::Rejected {
                    url: redact_url(url),
                    reason: error.to_string(),
                })
            } else {
                Err(unreachable(error.to_string()))
            }
        }
        Err(_) => Err(unreachable(format!(
            "no answer within {} ms (database.connect_timeout_ms)",
            timeout.as_millis()
        ))),
    }
}

/// Creates the SQLite file's parent directories and sets the connection
/// pragmas (WAL, foreign keys, busy timeout, create if missing).
fn prepare_sqlite(url: &str, options: &mut ConnectOptions) -> Result<(), StoreError> {
    let parsed = SqliteConnectOptions::from_str(url).map_err(|error| StoreError::InvalidUrl {
        url: redact_url(url),
        reason: error.to_string(),
    })?;
    let params = url.split_once('?').map(|(_, query)| query).unwrap_or("");
    let in_memory = url.contains(":memory:") || has_param(params, "mode", "memory");
    let read_only = has_param(params, "mode", "ro");

    if in_memory {
        // Each pooled connection would otherwise see its own empty database
        // once the shared one is recycled: keep exactly one, forever.
        options
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None);
    } else if !read_only
        && let Some(parent) = parsed.get_filename().parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDirectory {
            path: parent.to_path_buf(),
            source,
        })?;
    }

    options.map_sqlx_sqlite_opts(move |opts| {
        let opts = opts
            .foreign_keys(true)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .synchronous(SqliteSynchronous::Normal);
        let opts = if in_memory {
            opts
        } else {
            opts.journal_mode(SqliteJournalMode::Wal)
        };
        if read_only {
            opts
        } else {
            opts.create_if_missing(true)
        }
    });
    Ok(())
}

fn has_param(params: &str, key: &str, value: &str) -> bool {
    params
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .any(|(k, v)| k == key && v == value)
}

/// `url` with the password (if any) replaced by `***`, fit for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Applies every pending migration. Safe to call from several processes at
/// once: on PostgreSQL the whole run holds an advisory lock in one
/// transaction; on SQLite it runs in one `BEGIN IMMEDIATE` transaction.
///
/// A schema already current is found by one read of the bookkeeping table
/// and left alone (no lock, no write: a daemon's start stays fast, and works
/// on a read-only replica).
pub async fn migrate_up(db: &DatabaseConnection) -> Result<(), StoreError> {
    if schema_is_current(db).await {
        return Ok(());
    }
    let txn = begin_migration(db).await.map_err(StoreError::MigrateUp)?;
    Migrator::up(&txn, None)
        .await
        .map_err(StoreError::MigrateUp)?;
    txn.commit().await.map_err(StoreError::MigrateUp)
}

/// Whether the applied migrations are exactly this binary's (one query). A
/// missing bookkeeping table, an unreadable answer, a migration missing or
/// one this binary does not know (a newer schema, which the full run
/// reports) all say no.
async fn schema_is_current(db: &DatabaseConnection) -> bool {
    let statement = sea_orm::Statement::from_string(
        db.get_database_backend(),
        "SELECT version FROM seaql_migrations",
    );
    let Ok(rows) = db.query_all_raw(statement).await else {
        return false;
    };
    let mut applied = std::collections::BTreeSet::new();
    for row in rows {
        match row.try_get::<String>("", "version") {
            Ok(version) => applied.insert(version),
            Err(_) => return false,
        };
    }
    let known: std::collections::BTreeSet<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    applied == known
}

/// Rolls back every migration and removes the migration bookkeeping table:
/// afterwards the database holds no opsloop table at all.
pub async fn migrate_down(db: &DatabaseConnection) -> Result<(), StoreError> {
    let txn = begin_migration(db).await.map_err(StoreError::MigrateDown)?;
    Migrator::reset(&txn)
        .await
        .map_err(StoreError::MigrateDown)?;
    txn.commit().await.map_err(StoreError::MigrateDown)
}

/// Every known migration's name and whether it has been applied, oldest first.
pub async fn migration_status(db: &DatabaseConnection) -> Result<Vec<(String, bool)>, StoreError> {
    let migrations = Migrator::get_migration_with_status_read_only(db)
        .await
        .map_err(StoreError::MigrationStatus)?;
    Ok(migrations
        .into_iter()
        .map(|m| (m.name().to_owned(), m.status() == MigrationStatus::Applied))
        .collect())
}

/// Opens the transaction a migration run happens in, serialised against
/// other processes migrating the same database.
async fn begin_migration(db: &DatabaseConnection) -> Result<sea_orm::DatabaseTransaction, DbErr> {
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let txn = db.begin().await?;
            txn.execute_unprepared(&format!(
                "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
            ))
            .await?;
            Ok(txn)
        }
        _ => {
            db.begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await
        }
    }
}

/// Round trip to the database (`SELECT 1` through the pool); returns how long
/// it took, including waiting for a free connection.
pub async fn ping(db: &DatabaseConnection) -> Result<Duration, StoreError> {
    let started = Instant::now();
    db.ping().await.map_err(StoreError::Ping)?;
    Ok(started.elapsed())
}

/// Opens a write transaction: `BEGIN IMMEDIATE` on SQLite, so writers are
/// serialized up front instead of failing with `SQLITE_BUSY` when a read
/// turns into a write; a plain transaction on PostgreSQL.
pub async fn begin_write(db: &DatabaseConnection) -> Result<sea_orm::DatabaseTransaction, DbErr> {
    let options = if db.get_database_backend() == DbBackend::Sqlite {
        TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        }
    } else {
        TransactionOptions::default()
    };
    db.begin_with_options(options).await
}

/// ` FOR UPDATE` on PostgreSQL; nothing on SQLite, where the immediate
/// transaction of [`begin_write`] already excludes other writers.
pub fn for_update(backend: DbBackend) -> &'static str {
    if backend == DbBackend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    }
}

/// A raw statement with `$n` placeholders (both sqlx drivers take them).
pub fn stmt(backend: DbBackend, sql: &str, values: Vec<sea_orm::Value>) -> sea_orm::Statement {
    sea_orm::Statement::from_sql_and_values(backend, sql, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/opsloop?sslmode=require"),
            "postgres://app:***@db:5432/opsloop?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/postgres"
        );
        assert_eq!(
            redact_url("sqlite://var/opsloop.db?mode=rwc"),
            "sqlite://var/opsloop.db?mode=rwc"
        );
    }

    /// A current schema is read, not migrated: a daemon starting while
    /// another process holds the migration lock (a write transaction on
    /// SQLite) is not held up by it; a missing migration is noticed.
    #[tokio::test]
    async fn a_current_schema_is_checked_by_one_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("current.db").display()
        );
        let first = connect(&url, &PoolOptions::default())
            .await
            .expect("connect");
        assert!(
            !schema_is_current(&first).await,
            "an empty file has no schema"
        );
        migrate_up(&first).await.expect("migrate");
        assert!(schema_is_current(&first).await);
        let held = begin_migration(&first)
            .await
            .expect("hold the migration lock");
        let second = connect(&url, &PoolOptions::default())
            .await
            .expect("connect");
        let started = tokio::time::timeout(Duration::from_secs(2), migrate_up(&second)).await;
        assert!(
            matches!(started, Ok(Ok(()))),
            "a current schema needs no lock: {started:?}"
        );
        held.rollback().await.expect("release");
        first
            .execute_unprepared(
                "DELETE FROM seaql_migrations WHERE version = (SELECT MAX(version) FROM seaql_migrations)",
            )
            .await
            .expect("forget the newest migration");
        assert!(!schema_is_current(&first).await, "one missing");
    }

    #[test]
    fn reads_query_parameters() {
        assert!(has_param("mode=rwc&cache=shared", "mode", "rwc"));
        assert!(!has_param("mode=rwc", "mode", "ro"));
        assert!(!has_param("", "mode", "memory"));
    }

    #[tokio::test]
    async fn rejects_unknown_schemes_with_a_redacted_url() {
        let err = connect("mysql://root:pw@localhost/x", &PoolOptions::default())
            .await
            .expect_err("mysql is not supported");
        let message = err.to_string();
        assert!(
            message.contains("mysql://root:***@localhost/x"),
            "{message}"
        );
        assert!(!message.contains("pw@"), "{message}");
    }

    #[tokio::test]
    async fn sqlite_creates_parent_directories_and_uses_wal() {
        let dir =
            std::env::temp_dir().join(format!("opsloop_store_{}", uuid::Uuid::new_v4().simple()));
        let file = dir.join("nested").join("opsloop.db");
        let url = format!("sqlite://{}", file.display());
        let db = connect(&url, &PoolOptions::default())
            .await
            .expect("connect sqlite");
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Sqlite,
                "PRAGMA journal_mode",
            ))
            .await
            .expect("pragma")
            .expect("a row");
        let mode: String = row.try_get_by_index(0).expect("journal_mode");
        assert_eq!(mode.to_lowercase(), "wal");
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Sqlite,
                "PRAGMA foreign_keys",
            ))
            .await
            .expect("pragma")
            .expect("a row");
        let on: i64 = row.try_get_by_index(0).expect("foreign_keys");
        assert_eq!(on, 1);
        assert!(ping(&db).await.is_ok());
        db.close().await.expect("close");
        assert!(file.exists());
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
    }
}
