//! Failover at CloudStack's defaults (the safety issue's goal): a powered-off KVM host with
//! three neighbours, seeds 1..50; p50 and max of Down and of "every HA VM running elsewhere",
//! measured from the host's last ping (goal: T + 25 s and T + 30 s, T = 150 s), and of Down
//! measured from the fault. Virtual time: the figures do not depend on the machine.

use cloudha_sim::{Scenario, simulate};

fn main() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scenarios/kvm-failover-at-defaults.toml"
    );
    let text = std::fs::read_to_string(path).expect("the scenario");
    let scenario = Scenario::parse(&text, path).expect("a valid scenario");
    let t = scenario.config.liveness.ping_deadline().as_secs_f64();
    let (mut down, mut back, mut down_after_fault) = (Vec::new(), Vec::new(), Vec::new());
    for seed in 1..=50 {
        let report = simulate(&scenario, seed);
        let f = report.failover("kvm-h1").expect("a fault after a ping");
        down.push(f.down_s.expect("Down"));
        back.push(f.restarted_s.expect("restarted"));
        down_after_fault.push(f.down_s.expect("Down") - f.fault_s);
    }
    for (name, values, goal) in [
        ("failover::down_after_last_ping", down, Some(t + 25.0)),
        ("failover::vms_back_after_last_ping", back, Some(t + 30.0)),
        ("failover::down_after_fault", down_after_fault, None),
    ] {
        let (p50, max) = p50_max(values);
        let goal = goal.map_or(String::new(), |g| format!(", goal <= {g:.0} s"));
        println!("metric: {name} {p50:.1} s (p50; max {max:.1} s over seeds 1..50{goal})");
    }
}

fn p50_max(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}
