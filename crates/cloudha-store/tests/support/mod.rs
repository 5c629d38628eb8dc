//! What the store test binaries share: a PostgreSQL schema and a SQLite file per test, each
//! removed when the test ends, passed or failed.
//!
//! PostgreSQL comes from `CLOUDHA_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When no server answers, a test says so loudly and
//! skips its PostgreSQL part, except under `CI=true`, where it fails.

#![allow(dead_code)] // each test binary uses its own part

use std::time::Duration;

use sqlx::Executor;

/// The server's URL.
pub(crate) fn postgres_url() -> String {
    std::env::var("CLOUDHA_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn admin(url: &str) -> Result<sqlx::AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
}

/// A schema of its own for one test: `url` works in it; dropped with the guard.
pub(crate) struct Schema {
    /// The server's URL with `search_path` set to the schema.
    pub(crate) url: String,
    server: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.server.clone(), self.name.clone());
        // Its own thread and runtime: a drop cannot await, and may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(pool) = admin(&url).await {
                    let _ = pool
                        .execute(format!("DROP SCHEMA IF EXISTS {name} CASCADE").as_str())
                        .await;
                    pool.close().await;
                }
            });
        })
        .join();
    }
}

/// A fresh schema named after `prefix` and `test`; `None` (said loudly) when no server
/// answers outside CI; under `CI=true`, a failure.
pub(crate) async fn schema(prefix: &str, test: &str) -> Option<Schema> {
    let server = postgres_url();
    let pool = match admin(&server).await {
        Ok(pool) => pool,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL at {server} does not answer ({e}); under CI=true that is a failure (set CLOUDHA_TEST_POSTGRES)"
            );
            eprintln!(
                "\n!!! SKIPPED the PostgreSQL part of `{test}`: nothing answers at {server} ({e}).\n!!! Start PostgreSQL (README, `.ci/postgres`) or set CLOUDHA_TEST_POSTGRES.\n"
            );
            return None;
        }
    };
    let name = format!("{prefix}_{test}_{}", std::process::id());
    pool.execute(format!("DROP SCHEMA IF EXISTS {name} CASCADE").as_str())
        .await
        .unwrap();
    pool.execute(format!("CREATE SCHEMA {name}").as_str())
        .await
        .unwrap();
    pool.close().await;
    let sep = if server.contains('?') { '&' } else { '?' };
    Some(Schema {
        url: format!("{server}{sep}options=-c%20search_path%3D{name}"),
        server,
        name,
    })
}

/// A SQLite file (with its `-wal` and `-shm`), absent at first, removed with the guard.
pub(crate) struct TempDb(std::path::PathBuf);

impl TempDb {
    /// A file named after `prefix` and `test` in the temporary directory.
    pub(crate) fn new(prefix: &str, test: &str) -> Self {
        let db =
            Self(std::env::temp_dir().join(format!("{prefix}-{test}-{}.db", std::process::id())));
        db.remove();
        db
    }

    /// Its `sqlite:` URL.
    pub(crate) fn url(&self) -> String {
        format!("sqlite:{}", self.0.display())
    }

    fn remove(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

impl std::ops::Deref for TempDb {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        self.remove();
    }
}
