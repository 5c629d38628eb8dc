//! `simulate --store URL [--fresh]`: the managers' records in a durable store.
//!
//! The store lives on a real-time runtime of its own ([`Outside`]), so the simulation's paused
//! time stands still while the database answers. A `manager_restart` closes the store (the
//! crashed manager's connections go) and opens it again, so the new manager reads everything
//! back from the database. With `--seeds`, each seed has a database of its own: a file per
//! seed for SQLite (`run.db` → `run-seed3.db`), a schema per seed for PostgreSQL
//! (`cloudha_seed_3`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use cloudha_sim::{Failure, Outside, StoreProvider, Stores, wait_outside};
use cloudha_store::SqlStore;

/// Where one seed's run keeps its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, in its default schema or in a schema of its own.
    Postgres { url: String, schema: Option<String> },
}

impl Target {
    /// The target of `url` for `seed` (`Some` with `--seeds`: a database per seed).
    ///
    /// # Errors
    /// `url` is no store URL.
    pub(crate) fn parse(url: &str, seed: Option<u64>) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() || path.contains('?') {
                return Err(format!(
                    "--store `{url}`: expected `sqlite:PATH` (a file path, no options)"
                ));
            }
            if path.starts_with(":memory:") {
                return Err(format!(
                    "--store `{url}`: an in-memory SQLite database does not outlive a manager restart; leave --store out for an in-memory run, or name a file"
                ));
            }
            let path = PathBuf::from(path);
            return Ok(Self::Sqlite(match seed {
                None => path,
                Some(seed) => per_seed(&path, seed),
            }));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres {
                url: url.to_owned(),
                schema: seed.map(|s| format!("cloudha_seed_{s}")),
            });
        }
        Err(format!(
            "--store `{}`: not a store URL (use `sqlite:PATH` or `postgres://USER@HOST:PORT/DB`)",
            shown(url)
        ))
    }

    /// How it is named in messages (never with a password).
    pub(crate) fn name(&self) -> String {
        match self {
            Self::Sqlite(path) => format!("sqlite:{}", path.display()),
            Self::Postgres { url, schema: None } => shown(url),
            Self::Postgres {
                url,
                schema: Some(s),
            } => format!("{} (schema {s})", shown(url)),
        }
    }

    /// Makes the target ready for a run: refuses one that holds records unless `fresh`, which
    /// removes them (a SQLite file and its `-wal` and `-shm`; a PostgreSQL database's cloudha
    /// records).
    ///
    /// # Errors
    /// What is in the way, and what to do.
    pub(crate) fn prepare(
        &self,
        runtime: &tokio::runtime::Handle,
        fresh: bool,
    ) -> Result<(), String> {
        match self {
            Self::Sqlite(path) => {
                let used = std::fs::metadata(path)
                    .map(|m| m.len() > 0)
                    .unwrap_or(false);
                if used && !fresh {
                    return Err(format!(
                        "--store {}: the file exists and is not empty; pass --fresh to replace it, or name another file",
                        self.name()
                    ));
                }
                if fresh {
                    for companion in companions(path) {
                        match std::fs::remove_file(&companion) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => {
                                return Err(format!(
                                    "--store {}: cannot remove {}: {e}",
                                    self.name(),
                                    companion.display()
                                ));
                            }
                        }
                    }
                }
                // Created now: a path that cannot be a database fails before any run.
                let store = self.open(runtime)?;
                wait_outside(runtime, async move { store.close().await });
                Ok(())
            }
            Self::Postgres { .. } => {
                let store = self.open(runtime)?;
                let target = self.clone();
                let checked = wait_outside(runtime, async move {
                    let answer = match store.is_empty().await {
                        Ok(true) => Ok(()),
                        Ok(false) if fresh => store.clear().await.map_err(|e| {
                            format!("--store {}: clearing it: {}", target.name(), chain(&e))
                        }),
                        Ok(false) => Err(format!(
                            "--store {}: the database holds cloudha records; pass --fresh to delete them, or name another database",
                            target.name()
                        )),
                        Err(e) => Err(format!(
                            "--store {}: reading it: {}",
                            target.name(),
                            chain(&e)
                        )),
                    };
                    store.close().await;
                    answer
                });
                checked.unwrap_or_else(|| Err("the store's runtime ended".into()))
            }
        }
    }

    fn open(&self, runtime: &tokio::runtime::Handle) -> Result<SqlStore, String> {
        let target = self.clone();
        let opened = wait_outside(runtime, async move {
            match &target {
                Target::Sqlite(path) => SqlStore::open(&format!("sqlite:{}", path.display())).await,
                Target::Postgres { url, schema: None } => SqlStore::open(url).await,
                Target::Postgres {
                    url,
                    schema: Some(schema),
                } => SqlStore::open_in_schema(url, schema).await,
            }
        });
        match opened {
            Some(Ok(store)) => Ok(store),
            Some(Err(e)) => Err(chain(&e)),
            None => Err("the store's runtime ended".into()),
        }
    }
}

/// `path` with `-seedN` before its extension.
fn per_seed(path: &Path, seed: u64) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-seed{seed}.{}", ext.to_string_lossy()),
        None => format!("{stem}-seed{seed}"),
    };
    path.with_file_name(name)
}

/// A SQLite file and its companions.
fn companions(path: &Path) -> [PathBuf; 3] {
    ["", "-wal", "-shm"].map(|suffix| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    })
}

/// `url` without the password of its user part.
fn shown(url: &str) -> String {
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

/// An error with its sources, `: `-separated (a source whose text is already said is left out).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let said = s.to_string();
        if !text.contains(&said) {
            text.push_str(&format!(": {said}"));
        }
        source = s.source();
    }
    text
}

/// The stores of one seed's run over a [`Target`]: each manager start opens the store again.
pub(crate) struct SqlProvider {
    target: Target,
    runtime: tokio::runtime::Handle,
    current: Mutex<Option<SqlStore>>,
    failure: Failure,
}

impl SqlProvider {
    pub(crate) fn new(target: Target, runtime: tokio::runtime::Handle) -> Self {
        Self {
            target,
            runtime,
            current: Mutex::new(None),
            failure: Failure::default(),
        }
    }

    fn close_current(&self) {
        let old = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(old) = old {
            wait_outside(&self.runtime, async move { old.close().await });
        }
    }
}

impl StoreProvider for SqlProvider {
    fn open(&self) -> Result<Stores, String> {
        // The manager before has crashed: its connections go with it.
        self.close_current();
        let store = self.target.open(&self.runtime)?;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(store.clone());
        let outside = Arc::new(Outside::new(
            Arc::new(store),
            self.runtime.clone(),
            self.target.name(),
            self.failure.clone(),
        ));
        Ok(Stores {
            hosts: outside.clone(),
            work: outside,
        })
    }

    fn failure(&self) -> Option<String> {
        self.failure.get()
    }
}

impl Drop for SqlProvider {
    fn drop(&mut self) {
        self.close_current();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_seed_has_a_database_of_its_own() {
        assert_eq!(
            Target::parse("sqlite:out/run.db", Some(3)).unwrap(),
            Target::Sqlite("out/run-seed3.db".into())
        );
        assert_eq!(
            Target::parse("sqlite:run", Some(1)).unwrap(),
            Target::Sqlite("run-seed1".into())
        );
        assert_eq!(
            Target::parse("sqlite:run.db", None).unwrap(),
            Target::Sqlite("run.db".into())
        );
        assert_eq!(
            Target::parse("postgres://u:pw@h/db", Some(2)).unwrap(),
            Target::Postgres {
                url: "postgres://u:pw@h/db".into(),
                schema: Some("cloudha_seed_2".into())
            }
        );
    }

    #[test]
    fn bad_urls_are_named_without_their_password() {
        for url in [
            "mysql://u:secret@h/db",
            "run.db",
            "sqlite:",
            "sqlite:x.db?mode=ro",
        ] {
            let e = Target::parse(url, None).unwrap_err();
            assert!(e.contains("--store"), "{e}");
            assert!(!e.contains("secret"), "{e}");
        }
        let t = Target::parse("postgres://u:secret@h/db", Some(1)).unwrap();
        assert!(!t.name().contains("secret"), "{}", t.name());
    }
}
