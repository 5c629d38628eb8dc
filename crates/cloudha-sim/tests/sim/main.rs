//! Tests of the simulated cloud through its public API: scenarios run with many seeds, and
//! scenarios edited in memory to show what a setting costs.

mod faults;
mod must_fail;
mod safety;
mod stores;

use std::path::PathBuf;

use cloudha_sim::Scenario;

/// A shipped scenario, parsed.
pub(crate) fn shipped(name: &str) -> Scenario {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../scenarios")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Scenario::parse(&text, name).unwrap_or_else(|e| panic!("{e}"))
}
