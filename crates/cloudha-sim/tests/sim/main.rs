//! Tests of the simulated cloud through its public API: scenarios run with many seeds, and
//! scenarios edited in memory to show what a setting costs.

mod safety;

use std::path::PathBuf;

use cloudha_sim::Scenario;

/// A shipped scenario, parsed.
pub(crate) fn shipped(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Scenario::parse(&text, name).unwrap_or_else(|e| panic!("{e}"))
}

/// A shipped scenario's text with `[config]` lines added (the file must have no `[config]`).
pub(crate) fn with_config(name: &str, config: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("[config]"), "{name} already has a [config] table");
    let first_table = text.find("\n[").expect("a table");
    let edited = format!(
        "{}\n\n[config]\n{config}\n{}",
        &text[..first_table],
        &text[first_table..]
    );
    Scenario::parse(&edited, name).unwrap_or_else(|e| panic!("{e}"))
}
