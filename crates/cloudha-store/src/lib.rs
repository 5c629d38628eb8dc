//! # cloudha-store
//!
//! Durable stores behind the store ports of `cloudha-ports` ([`HostStore`](cloudha_ports::HostStore),
//! [`HaWorkStore`](cloudha_ports::HaWorkStore)), on sqlx with runtime-checked queries (building needs
//! no database):
//!
//! - **SQLite**, the embedded default: `sqlite:PATH`, one file, created on first use, WAL journal,
//!   one connection (a single writer: every claim is one statement on that connection);
//! - **PostgreSQL**, for a fleet of managers: `postgres://…`; a claim is
//!   `SELECT … FOR UPDATE SKIP LOCKED` inside the claiming `UPDATE`.
//!
//! The schema is embedded and migrated at [`SqlStore::open`]; a database whose schema is newer
//! than this build is refused ([`OpenError::SchemaTooNew`]). Every work-item write checks owner
//! and version (the claim version is the fencing token); a work item's history is append-only
//! (its own table); every host status change is also appended to `host_status_history`.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use cloudha_ports::HaWorkStore;
//! let store = cloudha_store::SqlStore::open("sqlite:cloudha.db").await?;
//! println!("{} pending", store.pending().await?);
//! # Ok(()) }
//! ```

mod codec;
mod hosts;
mod work;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// The migrations, in order: (version, SQLite text, PostgreSQL text).
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    include_str!("../migrations/sqlite/0001_initial.sql"),
    include_str!("../migrations/postgres/0001_initial.sql"),
)];

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// A store that could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The URL is neither `sqlite:PATH` nor `postgres://…`.
    #[error("store `{url}`: not a store URL (use `sqlite:PATH` or `postgres://USER@HOST:PORT/DB`)")]
    BadUrl {
        /// The URL given (without its password).
        url: String,
    },
    /// The database could not be reached, read or written.
    #[error("store `{url}`: {what}")]
    Database {
        /// The URL (without its password).
        url: String,
        /// What was being done.
        what: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database was written by a newer cloudha.
    #[error(
        "store `{url}`: its schema is version {found}, newer than this cloudha's {supported}: run a cloudha at least as new as the one that wrote it"
    )]
    SchemaTooNew {
        /// The URL (without its password).
        url: String,
        /// The database's schema version.
        found: i64,
        /// This build's.
        supported: i64,
    },
}

/// A durable store over SQLite or PostgreSQL: implements
/// [`HostStore`](cloudha_ports::HostStore) and [`HaWorkStore`](cloudha_ports::HaWorkStore).
/// Cheap to clone (a pool).
#[derive(Debug, Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

/// `url` without the password of its user part.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((auth, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

impl SqlStore {
    /// Opens (SQLite: creates on first use) the store at `url` and brings its schema to
    /// [`SCHEMA_VERSION`].
    ///
    /// # Errors
    /// [`OpenError`] naming the store (never its password) and what failed.
    pub async fn open(url: &str) -> Result<Self, OpenError> {
        sqlx::any::install_default_drivers();
        let shown = redact(url);
        let (backend, connect_url) = if let Some(path) = url.strip_prefix("sqlite:") {
            if path.is_empty() || path.starts_with("//") && path.len() <= 2 {
                return Err(OpenError::BadUrl { url: shown });
            }
            let sep = if path.contains('?') { '&' } else { '?' };
            (Backend::Sqlite, format!("sqlite:{path}{sep}mode=rwc"))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(OpenError::BadUrl { url: shown });
        };
        let db = |what: &'static str| {
            let url = shown.clone();
            move |source| OpenError::Database { url, what, source }
        };
        let options = AnyConnectOptions::from_str(&connect_url)
            .map_err(db("reading the URL"))?
            .log_statements(tracing::log::LevelFilter::Trace);
        // One direct connection first: an unreachable server or an unreadable file fails at
        // once, not after the pool's acquire timeout.
        let mut probe = options.connect().await.map_err(db("connecting"))?;
        // A read of the schema: a file that is not a database fails here.
        let read = match backend {
            Backend::Sqlite => "SELECT COUNT(*) FROM sqlite_master",
            Backend::Postgres => "SELECT 1",
        };
        probe
            .execute(read)
            .await
            .map_err(db("reading the database"))?;
        sqlx::Connection::close(probe)
            .await
            .map_err(db("connecting"))?;
        let pool = match backend {
            Backend::Sqlite => AnyPoolOptions::new()
                // One connection: one writer, and every claim is one statement on it.
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        Ok(())
                    })
                })
                .connect_with(options)
                .await
                .map_err(db("opening the database"))?,
            Backend::Postgres => AnyPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await
                .map_err(db("connecting"))?,
        };
        let store = Self {
            pool,
            backend,
            url: shown,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL, without its password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Closes every connection (pending writes are committed or not: each is a transaction).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The schema version of the database.
    ///
    /// # Errors
    /// The backend's.
    pub async fn schema_version(&self) -> Result<i64, sqlx::Error> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM cloudha_schema")
            .fetch_one(&self.pool)
            .await?;
        Ok(v.unwrap_or(0))
    }

    async fn migrate(&self) -> Result<(), OpenError> {
        let db = |what: &'static str| {
            let url = self.url.clone();
            move |source| OpenError::Database { url, what, source }
        };
        sqlx::query("CREATE TABLE IF NOT EXISTS cloudha_schema (version BIGINT NOT NULL)")
            .execute(&self.pool)
            .await
            .map_err(db("creating the schema table"))?;
        let found = self
            .schema_version()
            .await
            .map_err(db("reading the schema version"))?;
        if found > SCHEMA_VERSION {
            return Err(OpenError::SchemaTooNew {
                url: self.url.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        for (version, sqlite, postgres) in MIGRATIONS {
            if *version <= found {
                continue;
            }
            let text = match self.backend {
                Backend::Sqlite => sqlite,
                Backend::Postgres => postgres,
            };
            let mut tx = self.pool.begin().await.map_err(db("migrating"))?;
            for statement in statements(text) {
                sqlx::query(statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("migrating"))?;
            }
            sqlx::query("INSERT INTO cloudha_schema (version) VALUES ($1)")
                .bind(*version)
                .execute(&mut *tx)
                .await
                .map_err(db("migrating"))?;
            tx.commit().await.map_err(db("migrating"))?;
            tracing::info!(store = %self.url, version, "schema migrated");
        }
        Ok(())
    }
}

/// The statements of a migration: split on `;` at line ends, comments dropped.
fn statements(text: &str) -> impl Iterator<Item = &str> {
    text.split(";\n").map(str::trim).filter(|s| {
        s.lines()
            .any(|l| !l.trim().is_empty() && !l.trim().starts_with("--"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h:5432/db"), "postgres://u@h:5432/db");
        assert_eq!(redact("sqlite:x.db"), "sqlite:x.db");
    }

    #[test]
    fn migrations_split_into_statements() {
        for (_, sqlite, postgres) in MIGRATIONS {
            assert_eq!(statements(sqlite).count(), statements(postgres).count());
            assert!(statements(sqlite).all(|s| !s.ends_with(';')));
        }
    }
}
