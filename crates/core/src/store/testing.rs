//! Throwaway databases for tests: a freshly created and migrated PostgreSQL
//! database or SQLite file per test, so suites run in parallel and twice in a
//! row without seeing each other's rows.
//!
//! PostgreSQL is expected on `postgres://postgres@127.0.0.1:5432/postgres`
//! (override with `OPSLOOP_TEST_PG_URL`). When it is unreachable the helper
//! panics with the command that starts it: tests never skip silently.

use std::path::PathBuf;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};

use super::{PoolOptions, StoreError, connect, migrate_up};

/// Administrative connection used to create and drop test databases.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Environment variable overriding [`DEFAULT_ADMIN_URL`].
pub const ADMIN_URL_ENV: &str = "OPSLOOP_TEST_PG_URL";

const START_POSTGRES: &str =
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";

/// A migrated database owned by one test. Call [`TestDb::cleanup`] at the end;
/// if the test panics first, `Drop` removes the database on a best-effort basis.
pub struct TestDb {
    /// Pool connected to the test database.
    pub db: DatabaseConnection,
    /// URL of the test database (for daemons started as processes).
    pub url: String,
    /// Database name (PostgreSQL) or file stem (SQLite).
    pub name: String,
    location: Location,
    cleaned: bool,
}

enum Location {
    Postgres { admin_url: String },
    Sqlite { path: PathBuf },
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("url", &super::redact_url(&self.url))
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn pool_options() -> PoolOptions {
    PoolOptions {
        max_connections: 5,
        min_connections: 0,
        connect_timeout: Duration::from_secs(5),
        acquire_timeout: Duration::from_secs(10),
    }
}

fn admin_url() -> String {
    std::env::var(ADMIN_URL_ENV).unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

async fn connect_admin(admin_url: &str) -> Result<DatabaseConnection, StoreError> {
    let options = PoolOptions {
        max_connections: 1,
        min_connections: 0,
        connect_timeout: Duration::from_secs(5),
        acquire_timeout: Duration::from_secs(10),
    };
    connect(admin_url, &options).await
}

/// `url` with its database name replaced by `database` (query string kept).
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[authority_start..]
        .find('/')
        .map(|i| authority_start + i)
        .unwrap_or(base.len());
    format!("{}/{database}{query}", &base[..authority_end])
}

/// Creates `opsloop_test_<uuid>` on the test PostgreSQL server, migrates it
/// and returns it. Panics, naming the start command, if PostgreSQL is down.
pub async fn fresh_postgres() -> TestDb {
    fresh_postgres_on(&admin_url()).await
}

/// [`fresh_postgres`] on the server behind `admin_url` (a database URL whose
/// user may `CREATE DATABASE`).
pub async fn fresh_postgres_on(admin_url: &str) -> TestDb {
    let admin_url = admin_url.to_owned();
    let admin = match connect_admin(&admin_url).await {
        Ok(admin) => admin,
        Err(error) => panic!(
            "PostgreSQL for tests is not reachable: {error}.\n\
             Start it with: {START_POSTGRES}\n\
             or point {ADMIN_URL_ENV} at a server where the user may CREATE DATABASE."
        ),
    };
    let name = format!("opsloop_test_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|error| panic!("creating test database {name}: {error}"));
    // Best effort: the pool is dropped either way.
    let _ = admin.close().await;

    let url = with_database(&admin_url, &name);
    let mut test_db = TestDb {
        // Filled in below; a placeholder keeps Drop able to clean up if
        // connecting or migrating panics.
        db: DatabaseConnection::default(),
        url: url.clone(),
        name,
        location: Location::Postgres { admin_url },
        cleaned: false,
    };
    test_db.db = connect(&url, &pool_options())
        .await
        .unwrap_or_else(|error| panic!("connecting to the test database: {error}"));
    migrate_up(&test_db.db)
        .await
        .unwrap_or_else(|error| panic!("migrating the test database: {error}"));
    test_db
}

/// Creates a migrated SQLite database in a uniquely named file under the
/// system temp directory.
pub async fn fresh_sqlite() -> TestDb {
    let name = format!("opsloop_test_{}", uuid::Uuid::new_v4().simple());
    let path = std::env::temp_dir().join(format!("{name}.db"));
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut test_db = TestDb {
        db: DatabaseConnection::default(),
        url: url.clone(),
        name,
        location: Location::Sqlite { path },
        cleaned: false,
    };
    test_db.db = connect(&url, &pool_options())
        .await
        .unwrap_or_else(|error| panic!("opening the test SQLite database: {error}"));
    migrate_up(&test_db.db)
        .await
        .unwrap_or_else(|error| panic!("migrating the test SQLite database: {error}"));
    test_db
}

impl TestDb {
    /// The backend this test database runs on.
    pub fn backend(&self) -> DbBackend {
        match self.location {
            Location::Postgres { .. } => DbBackend::Postgres,
            Location::Sqlite { .. } => DbBackend::Sqlite,
        }
    }

    /// Closes the pool and removes the database (PostgreSQL: `DROP DATABASE …
    /// WITH (FORCE)`; SQLite: the file and its WAL/SHM companions).
    pub async fn cleanup(mut self) {
        self.cleaned = true;
        let db = std::mem::take(&mut self.db);
        let _ = db.close().await;
        remove(&self.location, &self.name).await;
    }
}

async fn remove(location: &Location, name: &str) {
    match location {
        Location::Postgres { admin_url } => {
            if let Ok(admin) = connect_admin(admin_url).await {
                let _ = admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await;
                let _ = admin.close().await;
            }
        }
        Location::Sqlite { path } => {
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.clone().into_os_string();
                file.push(suffix);
                let _ = std::fs::remove_file(file);
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // A test that panicked before `cleanup`: drop the database from a
        // separate thread with its own runtime (we may be inside one).
        let location = match &self.location {
            Location::Postgres { admin_url } => Location::Postgres {
                admin_url: admin_url.clone(),
            },
            Location::Sqlite { path } => Location::Sqlite { path: path.clone() },
        };
        let name = self.name.clone();
        let worker = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(remove(&location, &name));
            }
        });
        let _ = worker.join();
    }
}

/// One single-step mission of `kind` (one attempt) submitted, claimed and
/// finished at `at` through the workflow, succeeded or failed: evidence for
/// tests that judge outcomes (rollout criteria, reports). `kind` must be
/// auto-approved by the policy in force.
pub async fn run_one_step_mission(
    db: &DatabaseConnection,
    kind: &str,
    succeed: bool,
    at: chrono::DateTime<chrono::Utc>,
) {
    use crate::domain::input::{NewProposal, ProposalSource, StepKind, StepSpec};
    use crate::workflow::{self, ClaimOutcome};
    let kind = StepKind::parse("kind", kind).expect("a step kind");
    let proposal = NewProposal {
        title: "test mission".into(),
        source: ProposalSource::Api,
        agent: "tester".into(),
        dedupe_key: None,
        steps: vec![StepSpec {
            kind: kind.clone(),
            payload: serde_json::json!({}),
            max_attempts: Some(1),
        }],
        parallel: false,
        metadata: serde_json::json!({}),
        trace_id: None,
    };
    workflow::submit_proposal(db, proposal, at)
        .await
        .expect("submit");
    let ClaimOutcome::Claimed(step) = workflow::claim_step(db, "tester", &[kind], None, at)
        .await
        .expect("claim")
    else {
        panic!("nothing to claim: is the kind auto-approved?");
    };
    if succeed {
        workflow::complete_step(db, step.id, "tester", 1, serde_json::json!({}), None, at)
            .await
            .expect("complete");
    } else {
        workflow::fail_step(
            db,
            step.id,
            "tester",
            1,
            "failed on purpose",
            true,
            None,
            at,
        )
        .await
        .expect("fail");
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "t2"),
            "postgres://u:p@h/t2?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "t3"),
            "postgres://h:5432/t3"
        );
    }
}
