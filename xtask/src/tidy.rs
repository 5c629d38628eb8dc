//! The tidy check: crate edges follow the allow-list, and every crate and module starts with
//! `//!` docs. Also an ordinary `#[test]`, so `cargo test` enforces it.

use std::fs;
use std::path::{Path, PathBuf};

/// Which cloudha crates each package may depend on (any kind of dependency; the crates of
/// [`DEV_ONLY`] as dev-dependencies only). A new edge is an API change: add it here deliberately.
const ALLOWED_EDGES: &[(&str, &[&str])] = &[
    ("cloudha-protocol", &[]),
    ("cloudha-attache", &["cloudha-protocol"]),
    ("cloudha-registry", &["cloudha-protocol"]),
    ("cloudha-ports", &["cloudha-protocol", "cloudha-attache"]),
    (
        "cloudha-liveness",
        &[
            "cloudha-protocol",
            "cloudha-attache",
            "cloudha-registry",
            "cloudha-ports",
            "cloudha-testkit",
        ],
    ),
    (
        "cloudha-ha",
        &[
            "cloudha-protocol",
            "cloudha-attache",
            "cloudha-registry",
            "cloudha-ports",
            "cloudha-liveness",
            "cloudha-testkit",
        ],
    ),
    (
        "cloudha-sim",
        &[
            "cloudha-protocol",
            "cloudha-attache",
            "cloudha-registry",
            "cloudha-ports",
            "cloudha-liveness",
            "cloudha-ha",
        ],
    ),
    ("cloudha-store", &["cloudha-protocol", "cloudha-ports"]),
    // Dev-only (`DEV_ONLY`): the crates it is built over take it as a dev-dependency alone.
    (
        "cloudha-testkit",
        &[
            "cloudha-protocol",
            "cloudha-attache",
            "cloudha-registry",
            "cloudha-ports",
            "cloudha-liveness",
            "cloudha-ha",
        ],
    ),
    ("cloudha-cli", ALL),
    ("cloudha-tests", ALL),
    ("xtask", &[]),
];

const ALL: &[&str] = &[
    "cloudha-protocol",
    "cloudha-attache",
    "cloudha-registry",
    "cloudha-ports",
    "cloudha-liveness",
    "cloudha-ha",
    "cloudha-sim",
    "cloudha-store",
    "cloudha-cli",
    "cloudha-testkit",
];

/// Crates a package of the allow-list may take only as a dev-dependency (for its tests, benches
/// and examples), never as a dependency: test fakes, built over the very crates whose tests use
/// them.
const DEV_ONLY: &[&str] = &["cloudha-testkit"];

/// Runs every tidy rule over the workspace at `root`; the error lists every problem.
pub(crate) fn check(root: &Path) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    for manifest in manifests(root) {
        check_edges(root, &manifest, &mut problems);
    }
    for dir in ["crates", "xtask", "tests"] {
        for file in rust_files(&root.join(dir)) {
            check_module_docs(root, &file, &mut problems);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn manifests(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("xtask/Cargo.toml"), root.join("tests/Cargo.toml")];
    if let Ok(entries) = fs::read_dir(root.join("crates")) {
        let mut crates: Vec<_> = entries
            .flatten()
            .map(|e| e.path().join("Cargo.toml"))
            .collect();
        crates.sort();
        out.extend(crates);
    }
    out.retain(|p| p.exists());
    out
}

fn check_edges(root: &Path, manifest: &Path, problems: &mut Vec<String>) {
    let rel = manifest
        .strip_prefix(root)
        .unwrap_or(manifest)
        .display()
        .to_string();
    let Ok(text) = fs::read_to_string(manifest) else {
        problems.push(format!("{rel}: cannot read"));
        return;
    };
    let (name, deps) = parse_manifest(&text);
    let Some(name) = name else {
        problems.push(format!("{rel}: no package name"));
        return;
    };
    if manifest
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        != Some(name.as_str())
        && rel.starts_with("crates/")
    {
        problems.push(format!(
            "{rel}: directory name must equal the crate name `{name}`"
        ));
    }
    let Some((_, allowed)) = ALLOWED_EDGES.iter().find(|(n, _)| *n == name) else {
        problems.push(format!(
            "{rel}: crate `{name}` is not in the tidy allow-list"
        ));
        return;
    };
    for (section, dep) in deps {
        // A crate may name itself as a dev-dependency to turn its `mock` feature on in its tests.
        let own_mocks = dep == name && section == "dev-dependencies";
        if DEV_ONLY.contains(&dep.as_str()) && section != "dev-dependencies" {
            problems.push(format!(
                "{rel}: `{name}` may take `{dep}` only as a dev-dependency (found in [{section}])"
            ));
        }
        if dep.starts_with("cloudha-") && !allowed.contains(&dep.as_str()) && !own_mocks {
            problems.push(format!(
                "{rel}: `{name}` may not depend on `{dep}` (in [{section}]); allowed: {allowed:?}"
            ));
        }
    }
}

/// The package name and every (section, dependency name) of a manifest.
fn parse_manifest(text: &str) -> (Option<String>, Vec<(String, String)>) {
    let mut section = String::new();
    let mut name = None;
    let mut deps = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_owned();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if section == "package" && key == "name" {
            name = Some(value.trim().trim_matches('"').to_owned());
        }
        if section.ends_with("dependencies") && !section.starts_with("workspace") {
            let dep = key.split('.').next().unwrap_or(key).trim_matches('"');
            deps.push((section.clone(), dep.to_owned()));
        }
    }
    (name, deps)
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn check_module_docs(root: &Path, file: &Path, problems: &mut Vec<String>) {
    let rel = file.strip_prefix(root).unwrap_or(file).display();
    let Ok(text) = fs::read_to_string(file) else {
        problems.push(format!("{rel}: cannot read"));
        return;
    };
    let first = text.lines().map(str::trim).find(|l| !l.is_empty());
    if !first.is_some_and(|l| l.starts_with("//!")) {
        problems.push(format!(
            "{rel}: must begin with `//!` docs saying what the module is"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_is_tidy() {
        if let Err(problems) = check(&crate::root()) {
            panic!("tidy found problems:\n{}", problems.join("\n"));
        }
    }

    #[test]
    fn edges_outside_the_allow_list_are_found() {
        let (name, deps) = parse_manifest(
            "[package]\nname = \"cloudha-attache\"\n[dependencies]\ncloudha-registry.workspace = true\n\
             tokio = \"1\"\n[dev-dependencies]\ncloudha-manager = { path = \"x\" }\n",
        );
        assert_eq!(name.as_deref(), Some("cloudha-attache"));
        assert_eq!(
            deps,
            vec![
                ("dependencies".to_owned(), "cloudha-registry".to_owned()),
                ("dependencies".to_owned(), "tokio".to_owned()),
                ("dev-dependencies".to_owned(), "cloudha-manager".to_owned()),
            ]
        );
        let dir = std::env::temp_dir().join(format!("cloudha-tidy-{}", std::process::id()));
        let crate_dir = dir.join("crates/cloudha-attache");
        fs::create_dir_all(crate_dir.join("src")).unwrap();
        fs::write(
            crate_dir.join("Cargo.toml"),
            "[package]\nname = \"cloudha-attache\"\n[dependencies]\ncloudha-registry = \"1\"\n",
        )
        .unwrap();
        fs::write(crate_dir.join("src/lib.rs"), "pub fn undocumented() {}\n").unwrap();
        let problems = check(&dir).unwrap_err();
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("may not depend on `cloudha-registry`"));
        assert!(problems[1].contains("must begin with `//!`"));
    }

    #[test]
    fn the_testkit_is_a_dev_dependency_only() {
        let dir = std::env::temp_dir().join(format!("cloudha-tidy-dev-{}", std::process::id()));
        let crate_dir = dir.join("crates/cloudha-ha");
        fs::create_dir_all(&crate_dir).unwrap();
        fs::write(
            crate_dir.join("Cargo.toml"),
            "[package]\nname = \"cloudha-ha\"\n[dependencies]\ncloudha-testkit.workspace = true\n\
             [dev-dependencies]\ncloudha-testkit = { workspace = true, features = [\"ha\"] }\n",
        )
        .unwrap();
        let problems = check(&dir).unwrap_err();
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("may take `cloudha-testkit` only as a dev-dependency"),
            "{problems:?}"
        );
    }
}
