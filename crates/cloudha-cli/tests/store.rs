//! `cloudha simulate --store`: every scenario gives the report it gives in memory, byte for byte
//! (but the wall time), over SQLite and over PostgreSQL; a store that holds records is refused
//! unless `--fresh`; one database per seed; bad URLs and unusable stores exit 2 naming the store.

use std::path::PathBuf;
use std::process::Output;

mod common;

use common::{TempDir, cloudha, root, text};

#[path = "../../cloudha-store/tests/support/mod.rs"]
mod support;

/// Every scenario file of `scenarios/` and `scenarios/must-fail/`.
fn scenarios() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["scenarios", "scenarios/must-fail"] {
        files.extend(
            std::fs::read_dir(root().join(dir))
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml")),
        );
    }
    files.sort();
    assert!(files.len() >= 30, "found {}", files.len());
    files
}

/// The report without its wall time.
fn report(path: &str) -> String {
    let json = std::fs::read_to_string(path).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    value["wall_ms"] = serde_json::Value::from(0);
    serde_json::to_string_pretty(&value).unwrap()
}

/// Runs every scenario in memory and over `store(i)` (emptied first when `fresh`) and compares
/// exit codes, output and reports.
fn same_reports_over(dir: &TempDir, fresh: bool, store: impl Fn(usize) -> String) {
    let memory = dir.path("memory.json");
    let durable = dir.path("durable.json");
    for (i, file) in scenarios().iter().enumerate() {
        let file = file.to_str().unwrap();
        let _ = std::fs::remove_file(&memory);
        let _ = std::fs::remove_file(&durable);
        let a = cloudha(&["simulate", file, "--json", &memory]);
        let url = store(i);
        let mut args = vec!["simulate", file, "--json", &durable, "--store", &url];
        if fresh {
            args.push("--fresh");
        }
        let b = cloudha(&args);
        assert_eq!(
            a.status.code(),
            b.status.code(),
            "{file} over {url}:\n{}",
            text(&b)
        );
        assert_eq!(
            report(&memory),
            report(&durable),
            "{file}: the report over {url} differs from the in-memory one"
        );
        let timeline = |o: &Output| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.contains(" ms"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            timeline(&a),
            timeline(&b),
            "{file}: the printed run differs"
        );
    }
}

#[test]
fn every_scenario_reports_the_same_over_sqlite_as_in_memory() {
    let dir = TempDir::new("same-sqlite");
    same_reports_over(&dir, false, |i| {
        format!("sqlite:{}", dir.path(&format!("s{i}.db")))
    });
    // The files hold what the managers wrote: hosts and their status history.
    let db = dir.0.join("s0.db");
    assert!(std::fs::metadata(&db).unwrap().len() > 0);
}

#[test]
fn every_scenario_reports_the_same_over_postgres_as_in_memory() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Some(schema) = rt.block_on(support::schema("cli", "same")) else {
        return;
    };
    let dir = TempDir::new("same-postgres");
    // One schema for all, emptied before each run by --fresh.
    same_reports_over(&dir, true, |_| schema.url.clone());
    let again = cloudha(&[
        "simulate",
        root()
            .join("scenarios/kvm-host-power-loss.toml")
            .to_str()
            .unwrap(),
        "--store",
        &schema.url,
    ]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(
        text(&again).contains("holds cloudha records") && text(&again).contains("--fresh"),
        "{}",
        text(&again)
    );
}

#[test]
fn a_store_holding_records_is_refused_unless_fresh() {
    let dir = TempDir::new("fresh");
    let scenario = root().join("scenarios/kvm-host-power-loss.toml");
    let scenario = scenario.to_str().unwrap();
    let url = format!("sqlite:{}", dir.path("run.db"));
    let first = cloudha(&["simulate", scenario, "--quiet", "--store", &url]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let again = cloudha(&["simulate", scenario, "--quiet", "--store", &url]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(
        text(&again).contains(&url) && text(&again).contains("--fresh"),
        "{}",
        text(&again)
    );
    let fresh = cloudha(&["simulate", scenario, "--quiet", "--store", &url, "--fresh"]);
    assert_eq!(fresh.status.code(), Some(0), "{}", text(&fresh));
    // A file that is no database at all is refused the same way, and replaced with --fresh.
    let junk = dir.path("junk.db");
    std::fs::write(&junk, b"not a database").unwrap();
    let junk_url = format!("sqlite:{junk}");
    let refused = cloudha(&["simulate", scenario, "--quiet", "--store", &junk_url]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    let replaced = cloudha(&[
        "simulate", scenario, "--quiet", "--store", &junk_url, "--fresh",
    ]);
    assert_eq!(replaced.status.code(), Some(0), "{}", text(&replaced));
    // --fresh needs a store.
    let alone = cloudha(&["simulate", scenario, "--fresh"]);
    assert_eq!(alone.status.code(), Some(2), "{}", text(&alone));
}

#[test]
fn each_seed_has_a_database_of_its_own_all_checked_before_any_runs() {
    let dir = TempDir::new("seeds");
    let scenario = root().join("scenarios/kvm-host-power-loss.toml");
    let scenario = scenario.to_str().unwrap();
    let url = format!("sqlite:{}", dir.path("run.db"));
    let out = cloudha(&["simulate", scenario, "--seeds", "1..3", "--store", &url]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for seed in [1, 2] {
        let file = dir.0.join(format!("run-seed{seed}.db"));
        assert!(
            std::fs::metadata(&file).unwrap().len() > 0,
            "{}",
            file.display()
        );
    }
    assert!(!dir.0.join("run.db").exists());
    // Seed 3's file is taken: nothing runs, seed 4's file is not created.
    std::fs::write(dir.0.join("run-seed3.db"), b"x").unwrap();
    let out = cloudha(&["simulate", scenario, "--seeds", "3..5", "--store", &url]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("run-seed3.db"), "{}", text(&out));
    assert!(!dir.0.join("run-seed4.db").exists());
}

#[test]
fn unusable_stores_exit_2_naming_the_store_and_never_a_password() {
    let dir = TempDir::new("bad");
    let scenario = root().join("scenarios/kvm-host-power-loss.toml");
    let scenario = scenario.to_str().unwrap();
    for (url, needle) in [
        ("mysql://u:secret@h/db".to_owned(), "not a store URL"),
        ("cloudha.db".to_owned(), "not a store URL"),
        (
            format!("sqlite:{}", dir.path("no/such/dir/x.db")),
            "no/such/dir/x.db",
        ),
        (
            // Nothing listens on port 1.
            "postgres://u:secret@127.0.0.1:1/db".to_owned(),
            "127.0.0.1:1",
        ),
    ] {
        let out = cloudha(&["simulate", scenario, "--quiet", "--store", &url]);
        assert_eq!(out.status.code(), Some(2), "{url}: {}", text(&out));
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(needle), "{url}: {said}");
        assert!(!said.contains("secret"), "{url}: {said}");
        assert!(!said.contains("panicked"), "{url}: {said}");
    }
}
