//! `opsloop migrate`: applies (`up`) or rolls back (`down`) the schema on the
//! configured database, or prints which migrations are applied (`status`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use opsloop_core::config::ConfigSources;
use opsloop_core::secrets::SecretStore;
use opsloop_core::store;

#[derive(Args)]
pub struct MigrateArgs {
    /// What to do.
    #[arg(value_enum, default_value_t = Direction::Up)]
    direction: Direction,
    /// Database URL; default: the secret `database_url`, then `database.url`.
    #[arg(long, env = "OPSLOOP_DATABASE_URL")]
    database_url: Option<String>,
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

pub fn run(config: Option<PathBuf>, args: MigrateArgs) -> ExitCode {
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
        let db = store::connect(&url, &store::PoolOptions::from(&loaded.settings.database)).await?;
        match args.direction {
            Direction::Up => {
                store::migrate_up(&db).await?;
                println!("migrations applied");
            }
            Direction::Down => {
                store::migrate_down(&db).await?;
                println!("migrations rolled back");
            }
            Direction::Status => {
                for (name, applied) in store::migration_status(&db).await? {
                    println!("{}  {name}", if applied { "applied" } else { "pending" });
                }
            }
        }
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("opsloop migrate: {error:#}");
            ExitCode::FAILURE
        }
    }
}
