//! The simulator's own faults: each at its instant, and refused when they cannot happen.

use cloudha_sim::{Scenario, simulate};

const BASE: &str = r#"
name = "faults"
duration = "30m"
[[cluster]]
name = "kvm"
hypervisor = "kvm"
hosts = 4
vms_per_host = 2
capacity_per_host = 10
"#;

#[test]
fn a_fault_after_the_duration_is_refused_naming_its_line() {
    let text =
        format!("{BASE}[[fault]]\nat = \"31m\"\nkind = \"power_off\"\nhosts = [\"kvm-h1\"]\n");
    let e = Scenario::parse(&text, "late.toml").unwrap_err();
    assert_eq!(e.line, 10, "the fault's [[fault]] line: {e}");
    assert!(
        e.to_string().contains("after the scenario's `duration`"),
        "{e}"
    );
    let at_end =
        format!("{BASE}[[fault]]\nat = \"30m\"\nkind = \"power_off\"\nhosts = [\"kvm-h1\"]\n");
    assert!(Scenario::parse(&at_end, "end.toml").is_ok());
}

/// A power loss timed during a manager's downtime happens at its own instant (the manager is
/// away from 6 to 11 minutes; the host loses power at 8), not when the manager is back.
#[test]
fn a_fault_during_a_manager_restart_happens_at_its_instant() {
    let text = format!(
        "{BASE}[[fault]]\nat = \"6m\"\nkind = \"manager_restart\"\nduration = \"5m\"\n\n[[fault]]\nat = \"8m\"\nkind = \"power_off\"\nhosts = [\"kvm-h1\"]\n"
    );
    let s = Scenario::parse(&text, "downtime.toml").unwrap();
    let report = simulate(&s, 1);
    let d = report
        .detections
        .iter()
        .find(|d| d.host == "kvm-h1")
        .expect("the power loss is seen");
    assert_eq!(d.fault_at_s, 480.0);
    let died = report
        .vms
        .iter()
        .find(|v| v.name == "kvm-h1-vm1")
        .and_then(|v| v.placements.iter().find(|p| p.state == "Stopped"))
        .map(|p| p.at_s);
    assert_eq!(died, Some(480.0), "the VM died with the power, at 8m");
    assert!(report.ok(), "{}", report.summary());
}
