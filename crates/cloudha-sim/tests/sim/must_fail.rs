//! The checker seen to fail: every must-fail scenario breaks the invariant it names, and the
//! one invariant no lying part can break is broken by a faulty port injected here.

use std::path::PathBuf;

use cloudha_sim::{INVARIANTS, Injected, Scenario, simulate, simulate_with};

fn must_fail() -> Vec<(PathBuf, Scenario)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/must-fail");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let s = Scenario::parse(&text, &f.display().to_string()).unwrap();
            (f, s)
        })
        .collect()
}

#[test]
fn every_must_fail_scenario_breaks_the_invariant_it_names_on_seeds_1_to_10() {
    let scenarios = must_fail();
    assert!(scenarios.len() >= 4);
    for (file, s) in &scenarios {
        let named = s
            .violates
            .as_deref()
            .unwrap_or_else(|| panic!("{} names no invariant (`violates`)", file.display()));
        for seed in 1..=10 {
            let report = simulate(s, seed);
            let broken = report
                .invariants
                .all()
                .into_iter()
                .find(|(n, _)| *n == named)
                .is_some_and(|(_, i)| !i.ok);
            assert!(
                broken,
                "{} seed {seed}: {named} held\n{}",
                file.display(),
                report.summary()
            );
        }
    }
}

const SCENARIO: &str = r#"
name = "half the VMs have HA"
duration = "35m"
[[cluster]]
name = "kvm"
hypervisor = "kvm"
hosts = 4
vms_per_host = 4
ha_fraction = 0.5
capacity_per_host = 20
[[fault]]
at = "6m"
kind = "power_off"
hosts = ["kvm-h1"]
"#;

/// `no_unwanted_restart` cannot be broken by a lying part of a scenario; an orchestrator whose
/// records claim every VM is HA-enabled breaks it. The same run without the fault holds.
#[test]
fn no_unwanted_restart_is_seen_to_fail_with_a_lying_orchestrator() {
    let s = Scenario::parse(SCENARIO, "inline.toml").unwrap();
    let honest = simulate(&s, 1);
    assert!(honest.ok(), "{}", honest.summary());
    let lying = simulate_with(&s, 1, Injected::ha_flag_lies());
    assert!(
        !lying.invariants.no_unwanted_restart.ok,
        "{}",
        lying.summary()
    );
}

/// Between the must-fail scenarios and the injected fault, every invariant is seen to fail.
#[test]
fn every_invariant_is_seen_to_fail() {
    let mut seen: Vec<String> = must_fail()
        .into_iter()
        .filter_map(|(_, s)| s.violates)
        .collect();
    seen.push("no_unwanted_restart".into());
    for inv in INVARIANTS {
        assert!(seen.iter().any(|s| s == inv), "{inv} is never seen to fail");
    }
}
