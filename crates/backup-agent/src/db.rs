//! Database plumbing the agent needs beyond the shared store: PostgreSQL
//! URLs with their password split off (passwords go to a passfile, never
//! argv), one-connection handles to the databases it backs up, verifies and
//! restores, and row counting.

use std::collections::BTreeMap;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};

use opsloop_core::secrets::Secret;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    BadUrl(String),
    #[error("database {database}: {reason}")]
    Query { database: String, reason: String },
}

/// A `postgres://` URL split into its parts; the password is kept apart
/// and redacted.
#[derive(Debug, Clone)]
pub struct PgUrl {
    user: String,
    password: Option<Secret>,
    /// `host[:port]`, possibly empty (local socket).
    authority: String,
    database: String,
    /// The query string without the leading `?`.
    query: String,
}

impl PgUrl {
    pub fn parse(url: &str) -> Result<Self, DbError> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| DbError::BadUrl("must start with postgres://".into()))?;
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (server, database) = before_query.split_once('/').unwrap_or((before_query, ""));
        let (userinfo, authority) = match server.rsplit_once('@') {
            Some((u, a)) => (u, a),
            None => ("", server),
        };
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        Ok(Self {
            user: percent_decode(user),
            password: password.map(|p| Secret::new(percent_decode(p))),
            authority: authority.to_owned(),
            database: percent_decode(database),
            query: query.to_owned(),
        })
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// Replaces the password (from a secret).
    pub fn with_password(mut self, password: Option<Secret>) -> Self {
        if password.is_some() {
            self.password = password;
        }
        self
    }

    /// The same server, another database.
    pub fn with_database(&self, database: &str) -> Self {
        Self {
            database: database.to_owned(),
            ..self.clone()
        }
    }

    fn render(&self, password: Option<&str>) -> String {
        let mut out = String::from("postgres://");
        if !self.user.is_empty() {
            out.push_str(&percent_encode(&self.user));
            if let Some(p) = password {
                out.push(':');
                out.push_str(&percent_encode(p));
            }
            out.push('@');
        }
        out.push_str(&self.authority);
        out.push('/');
        out.push_str(&percent_encode(&self.database));
        if !self.query.is_empty() {
            out.push('?');
            out.push_str(&self.query);
        }
        out
    }

    /// The URL without its password: safe for argv and logs.
    pub fn without_password(&self) -> String {
        self.render(None)
    }

    /// The URL with its password, for this process's own connections only.
    pub fn connection_string(&self) -> String {
        self.render(self.password.as_ref().map(Secret::expose))
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A one-connection handle (no pool warm-up, no logging of statements).
pub async fn connect_one(url: &str, label: &str) -> Result<DatabaseConnection, DbError> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(1)
        .min_connections(0)
        .connect_timeout(std::time::Duration::from_secs(10))
        .sqlx_logging(false);
    Database::connect(options)
        .await
        .map_err(|e| DbError::Query {
            database: label.to_owned(),
            reason: e.to_string(),
        })
}

fn query_error(database: &str) -> impl Fn(sea_orm::DbErr) -> DbError + '_ {
    move |e| DbError::Query {
        database: database.to_owned(),
        reason: e.to_string(),
    }
}

/// The first column of every row of `sql`, as text.
pub async fn strings(
    db: &impl ConnectionTrait,
    label: &str,
    sql: &str,
) -> Result<Vec<String>, DbError> {
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            sql.to_owned(),
        ))
        .await
        .map_err(query_error(label))?;
    rows.iter()
        .map(|row| {
            row.try_get_by_index::<String>(0)
                .map_err(query_error(label))
        })
        .collect()
}

/// The first column of the first row of `sql`.
pub async fn scalar_string(
    db: &impl ConnectionTrait,
    label: &str,
    sql: &str,
) -> Result<String, DbError> {
    strings(db, label, sql)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| DbError::Query {
            database: label.to_owned(),
            reason: format!("no result from {sql}"),
        })
}

/// Rows per user table, keyed `schema.table` (`main.table` in SQLite).
pub async fn row_counts(
    db: &impl ConnectionTrait,
    label: &str,
) -> Result<BTreeMap<String, i64>, DbError> {
    let backend = db.get_database_backend();
    let tables: Vec<(String, String)> = match backend {
        DbBackend::Postgres => {
            let names = strings(
                db,
                label,
                "SELECT schemaname || '.' || tablename FROM pg_tables \
                 WHERE schemaname NOT IN ('pg_catalog', 'information_schema') \
                 AND schemaname NOT LIKE 'pg_temp%' ORDER BY 1",
            )
            .await?;
            names
                .into_iter()
                .filter_map(|n| n.split_once('.').map(|(s, t)| (s.to_owned(), t.to_owned())))
                .collect()
        }
        _ => strings(
            db,
            label,
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY 1",
        )
        .await?
        .into_iter()
        .map(|t| ("main".to_owned(), t))
        .collect(),
    };
    let mut counts = BTreeMap::new();
    for (schema, table) in tables {
        let sql = format!(
            "SELECT count(*) FROM {}.{}",
            quote_ident(&schema),
            quote_ident(&table)
        );
        let row = db
            .query_one_raw(Statement::from_string(backend, sql))
            .await
            .map_err(query_error(label))?;
        let n = match row {
            Some(row) => row.try_get_by_index::<i64>(0).map_err(query_error(label))?,
            None => 0,
        };
        counts.insert(format!("{schema}.{table}"), n);
    }
    Ok(counts)
}

/// An SQL identifier, quoted (PostgreSQL and SQLite agree on `"…"`).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The file of a `sqlite:` URL (`sqlite://var/opsloop.db?mode=rwc` →
/// `var/opsloop.db`).
pub fn sqlite_path(url: &str) -> Result<std::path::PathBuf, DbError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| DbError::BadUrl("must start with sqlite:".into()))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Err(DbError::BadUrl(
            "an in-memory SQLite database cannot be backed up".into(),
        ));
    }
    Ok(std::path::PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_split_off_urls() {
        let url =
            PgUrl::parse("postgres://opsloop:s%3Acret@db.internal:5432/opsloop?sslmode=require")
                .expect("valid");
        assert_eq!(url.password().map(Secret::expose), Some("s:cret"));
        assert_eq!(
            url.without_password(),
            "postgres://opsloop@db.internal:5432/opsloop?sslmode=require"
        );
        assert_eq!(
            url.connection_string(),
            "postgres://opsloop:s%3Acret@db.internal:5432/opsloop?sslmode=require"
        );
        assert_eq!(
            url.with_database("postgres").without_password(),
            "postgres://opsloop@db.internal:5432/postgres?sslmode=require"
        );
        let bare = PgUrl::parse("postgresql://localhost/x").expect("valid");
        assert!(bare.password().is_none());
        assert_eq!(bare.without_password(), "postgres://localhost/x");
        assert!(PgUrl::parse("mysql://x").is_err());
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite://var/opsloop.db?mode=rwc").expect("path"),
            std::path::PathBuf::from("var/opsloop.db")
        );
        assert_eq!(
            sqlite_path("sqlite:///tmp/x.db").expect("path"),
            std::path::PathBuf::from("/tmp/x.db")
        );
        assert!(sqlite_path("sqlite::memory:").is_err());
    }
}
