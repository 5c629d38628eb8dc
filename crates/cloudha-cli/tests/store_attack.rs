//! Attacks on `cloudha simulate --store`: paths with characters a URL decodes, in-memory SQLite,
//! `--fresh` on what it must not delete, odd URLs.

mod common;

use std::path::Path;

use common::{TempDir, cloudha, root, text};

fn scenario(name: &str) -> String {
    root()
        .join("scenarios")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

fn report(path: &str) -> String {
    let json = std::fs::read_to_string(path).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    value["wall_ms"] = serde_json::Value::from(0);
    serde_json::to_string_pretty(&value).unwrap()
}

/// A file name with `%41` in it: the CLI checks (and with --fresh removes) the file it was
/// given, the store opens the name decoded (`A`): a second run over a database holding records
/// is not refused, and the records are not where the user said.
#[test]
fn a_percent_in_the_path_is_the_file_checked_and_the_file_written() {
    let dir = TempDir::new("percent");
    let s = scenario("kvm-host-power-loss.toml");
    let named = dir.path("run%41.db");
    let decoded = dir.path("runA.db");
    let url = format!("sqlite:{named}");
    let first = cloudha(&["simulate", &s, "--quiet", "--store", &url]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let again = cloudha(&["simulate", &s, "--quiet", "--store", &url]);
    let written_named = Path::new(&named).exists();
    let written_decoded = Path::new(&decoded).exists();
    assert_eq!(
        (again.status.code(), written_named, written_decoded),
        (Some(2), true, false),
        "the second run over a store holding records must be refused, and the records must be \
         in the file named: {}",
        text(&again)
    );
}

/// A `%` in the path is part of the file's name: a run over `a%2Eb.db` writes that file and
/// never touches `a.b.db`, which holds another run's records.
#[test]
fn a_percent_path_never_touches_the_decoded_file() {
    let dir = TempDir::new("percent-fresh");
    let s = scenario("kvm-host-power-loss.toml");
    let named = dir.path("a%2Eb.db");
    let decoded = dir.path("a.b.db");
    // A database holding records at the decoded name (an earlier run of `sqlite:…/a.b.db`).
    let first = cloudha(&[
        "simulate",
        &s,
        "--quiet",
        "--store",
        &format!("sqlite:{decoded}"),
    ]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let before = std::fs::read(&decoded).unwrap();
    assert!(!before.is_empty());
    let url = format!("sqlite:{named}");
    for args in [vec!["--store", &url], vec!["--store", &url, "--fresh"]] {
        let mut all = vec!["simulate", &s, "--quiet"];
        all.extend(args);
        let out = cloudha(&all);
        assert!(matches!(out.status.code(), Some(0 | 2)), "{}", text(&out));
        assert_eq!(
            std::fs::read(&decoded).unwrap(),
            before,
            "a run over `{url}` touched {decoded}"
        );
    }
    assert!(
        std::fs::metadata(&named).unwrap().len() > 0,
        "written where named"
    );
}

/// `sqlite::memory:`: each manager start opens the store again, and an in-memory database is a
/// new one each time: refused, or the report is the in-memory one.
#[test]
fn in_memory_sqlite_is_refused_or_gives_the_memory_report() {
    let dir = TempDir::new("memory");
    let s = scenario("manager-restart-mid-ha.toml");
    let mem = dir.path("mem.json");
    let durable = dir.path("durable.json");
    let a = cloudha(&["simulate", &s, "--json", &mem]);
    let b = cloudha(&[
        "simulate",
        &s,
        "--json",
        &durable,
        "--store",
        "sqlite::memory:",
    ]);
    if b.status.code() == Some(2) {
        return; // refused: fine
    }
    assert_eq!(a.status.code(), b.status.code(), "{}", text(&b));
    assert_eq!(report(&mem), report(&durable), "{}", text(&b));
    assert!(
        !root().join("crates/cloudha-cli/:memory:").exists() && !Path::new(":memory:").exists(),
        "a file named :memory: was created"
    );
}

/// Odd values for --store: each refused with exit 2 naming --store, never a panic, never a
/// file created somewhere unexpected.
#[test]
fn odd_store_values_are_refused_cleanly() {
    let dir = TempDir::new("odd");
    let s = scenario("kvm-host-power-loss.toml");
    let a_dir = dir.path("a-directory");
    std::fs::create_dir_all(&a_dir).unwrap();
    for url in [
        "sqlite:".to_owned(),
        "sqlite://".to_owned(),
        "sqlite:?".to_owned(),
        format!("sqlite:{a_dir}"),
        format!("sqlite:{a_dir}/"),
        "postgres://u:secret@127.0.0.1:1/db".to_owned(),
        "SQLITE:x.db".to_owned(),
        " sqlite:x.db".to_owned(),
        "file:x.db".to_owned(),
    ] {
        let out = cloudha(&["simulate", &s, "--quiet", "--store", &url]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{url}: {t}");
        assert!(!t.contains("panicked"), "{url}: {t}");
        assert!(!t.contains("secret"), "{url}: {t}");
    }
    // The directory is still there, untouched, even with --fresh.
    let out = cloudha(&[
        "simulate",
        &s,
        "--quiet",
        "--store",
        &format!("sqlite:{a_dir}"),
        "--fresh",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(Path::new(&a_dir).is_dir());
}

/// Paths with spaces, quotes, unicode and `#`: the run works and writes the file named.
#[test]
fn odd_characters_in_the_path_are_the_file_written() {
    let dir = TempDir::new("chars");
    let s = scenario("kvm-host-power-loss.toml");
    for name in [
        "with space.db",
        "qu'o\"te.db",
        "ünï ✓.db",
        "hash#tag.db",
        "semi;colon.db",
    ] {
        let path = dir.path(name);
        let out = cloudha(&[
            "simulate",
            &s,
            "--quiet",
            "--store",
            &format!("sqlite:{path}"),
        ]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        assert!(
            std::fs::metadata(&path)
                .map(|m| m.len() > 0)
                .unwrap_or(false),
            "{name}: not written where named; dir: {:?}",
            std::fs::read_dir(&dir.0)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        );
    }
}
