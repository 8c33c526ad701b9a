//! `opsloop migrate`: applies (`up`) or rolls back (`down`) the schema on the
//! configured database, or prints which migrations are applied (`status`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use opsloop_core::config::ConfigSources;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store;

#[derive(Args)]
pub(crate) struct MigrateArgs {
    /// What to do.
    #[arg(value_enum, default_value_t = Direction::Up)]
    direction: Direction,
    /// Database URL; default: the secret `database_url`, then `database.url`.
    #[arg(long, env = "OPSLOOP_DATABASE_URL")]
    database_url: Option<String>,
    /// Required by `down`: without it, `down` only says what it would drop.
    #[arg(long)]
    confirm: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Direction {
    /// Apply every pending migration.
    Up,
    /// Roll back every migration (drops all opsloop tables).
    Down,
    /// List applied and pending migrations.
    Status,
}

pub(crate) fn run(config: Option<PathBuf>, args: MigrateArgs) -> ExitCode {
    let loaded = match opsloop_core::config::load(&ConfigSources::from_process(config.as_deref())) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("opsloop migrate: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("opsloop migrate: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let url = match args.database_url {
            Some(url) => url,
            None => match SecretStore::from_process().get("database_url")? {
                Some(secret) => secret.expose().to_owned(),
                None => loaded.settings.database.url.clone(),
            },
        };
        // Waits for an unreachable PostgreSQL like a daemon does (the
        // migrate unit at boot); Ctrl-C or SIGTERM ends the wait.
        let stop = tokio_util::sync::CancellationToken::new();
        opsloop_core::lifecycle::cancel_on_signals(stop.clone());
        let db =
            opsloop_core::daemon::connect_database(&url, &loaded.settings.database, &stop).await?;
        match args.direction {
            Direction::Up => {
                store::migrate_up(&db).await?;
                println!("migrations applied");
            }
            Direction::Down => {
                let applied: Vec<String> = store::migration_status(&db)
                    .await?
                    .into_iter()
                    .filter_map(|(name, applied)| applied.then_some(name))
                    .collect();
                let tables = tables(&db).await?;
                println!(
                    "`migrate down` rolls back {} applied migration(s) on {} and drops these tables with all their data: {}",
                    applied.len(),
                    redacted(&url),
                    if tables.is_empty() { "(none)".to_owned() } else { tables.join(", ") }
                );
                if !args.confirm {
                    return Ok(Outcome::NeedsConfirm);
                }
                store::migrate_down(&db).await?;
                println!("migrations rolled back");
            }
            Direction::Status => {
                for (name, applied) in store::migration_status(&db).await? {
                    println!("{}  {name}", if applied { "applied" } else { "pending" });
                }
            }
        }
        anyhow::Ok(Outcome::Done)
    });
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::NeedsConfirm) => {
            eprintln!(
                "opsloop migrate: nothing dropped; run `opsloop migrate down --confirm` to do it (take a backup first: `opsloop backup run`)"
            );
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("opsloop migrate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

enum Outcome {
    Done,
    NeedsConfirm,
}

/// The tables of the current schema (PostgreSQL) or database (SQLite).
async fn tables(db: &sea_orm::DatabaseConnection) -> anyhow::Result<Vec<String>> {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1"
        }
        _ => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY 1"
        }
    };
    let rows = db
        .query_all_raw(Statement::from_string(backend, sql))
        .await?;
    rows.iter()
        .map(|row| {
            row.try_get::<String>("", "name")
                .map_err(anyhow::Error::from)
        })
        .collect()
}

/// A database URL without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_never_carry_the_database_password() {
        assert_eq!(
            super::redacted("postgres://app:s3cret@db:5432/opsloop"),
            "postgres://app@db:5432/opsloop"
        );
        assert_eq!(
            super::redacted("sqlite://var/opsloop.db?mode=rwc"),
            "sqlite://var/opsloop.db?mode=rwc"
        );
    }
}
