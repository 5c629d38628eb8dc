//! The safety issue's claims, judged on ground truth over many seeds.

use cloudha_sim::simulate;

use cloudha_sim::Scenario;

use crate::shipped;

/// Goal of the safety issue, at CloudStack's defaults (T = 150 s): Down within T + 25 s of
/// the host's last ping and its HA VMs running elsewhere within T + 30 s, for every seed.
#[test]
fn failover_at_cloudstack_defaults_meets_its_goal_on_seeds_1_to_50() {
    let scenario = shipped("kvm-failover-at-defaults.toml");
    let t = scenario.config.liveness.ping_deadline().as_secs_f64();
    for seed in 1..=50 {
        let report = simulate(&scenario, seed);
        assert!(report.ok(), "seed {seed}: {}", report.summary());
        let f = report.failover("kvm-h1").expect("a fault after a ping");
        let down = f
            .down_s
            .unwrap_or_else(|| panic!("seed {seed}: never Down"));
        let back = f
            .restarted_s
            .unwrap_or_else(|| panic!("seed {seed}: not every HA VM restarted"));
        assert!(
            down <= t + 25.0,
            "seed {seed}: Down {down} s after the last ping"
        );
        assert!(
            back <= t + 30.0,
            "seed {seed}: VMs back {back} s after the last ping"
        );
        assert!(
            down >= t,
            "seed {seed}: Down before the ping timeout ({down} s)"
        );
    }
}

/// The double run the issue reported: an independent self-fence, an agent crash or a
/// management partition, then the heartbeat storage fails. Never a VM twice, on any seed.
#[test]
fn independent_self_fence_never_runs_a_vm_twice() {
    for name in [
        "independent-self-fence-agent-crash.toml",
        "independent-self-fence-mgmt-partition.toml",
    ] {
        let scenario = shipped(name);
        for seed in 1..=40 {
            let report = simulate(&scenario, seed);
            assert!(
                report.invariants.no_double_run.ok && report.ok(),
                "{name} seed {seed}: {}",
                report.summary()
            );
        }
    }
}

/// A host that fences itself independently of its agent, cut off from everyone (its agent
/// crashed, its neighbours cannot reach it, its BMC does not answer) while it loses its
/// heartbeat storage: only its self-fence can prove its VMs dead.
const CUT_OFF_SELF_FENCE: &str = r#"
name = "independent self-fence, cut off, storage lost"
duration = "40m"
[config]
CONFIG
[[cluster]]
name = "kvm"
hypervisor = "kvm"
hosts = 4
vms_per_host = 2
capacity_per_host = 10
self_fence = "independent"
[[fault]]
at = "1m"
kind = "bmc_unreachable"
hosts = ["kvm-h2"]
[[fault]]
at = "6m"
kind = "neighbour_partition"
hosts = ["kvm-h2"]
[[fault]]
at = "6m"
kind = "agent_crash"
hosts = ["kvm-h2"]
[[fault]]
at = "6m"
kind = "storage_loss"
hosts = ["kvm-h2"]
"#;

/// What a wrong assumption costs: the simulated hosts write their heartbeat every 90 s (their
/// self-fence fires 140 s after the last good write) while the manager assumes 60 s (110 s).
/// The self-fence proof then comes 30 s early and a VM runs twice; telling the manager the
/// truth (`kvm.heartbeat.interval = "90s"`) makes the same run safe again, and its VMs still
/// come back.
#[test]
fn a_wrong_self_fence_assumption_is_seen_as_a_double_run() {
    let parse = |config: &str| {
        Scenario::parse(&CUT_OFF_SELF_FENCE.replace("CONFIG", config), "inline.toml")
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let wrong = parse("\"sim.heartbeat.interval\" = \"90s\"");
    let right = parse("\"sim.heartbeat.interval\" = \"90s\"\n\"kvm.heartbeat.interval\" = \"90s\"");
    let defaults = parse("");
    let mut doubled = 0;
    for seed in 1..=20 {
        if !simulate(&wrong, seed).invariants.no_double_run.ok {
            doubled += 1;
        }
        for (what, s) in [("matching assumption", &right), ("defaults", &defaults)] {
            let report = simulate(s, seed);
            assert!(report.ok(), "seed {seed}, {what}: {}", report.summary());
            assert!(
                report
                    .vms
                    .iter()
                    .filter(|v| v.name.starts_with("kvm-h2-"))
                    .all(|v| !v.restarts.is_empty()),
                "seed {seed}, {what}: the VMs of the cut-off host come back\n{}",
                report.summary()
            );
        }
    }
    assert!(
        doubled > 0,
        "the wrong assumption never showed a double run"
    );
}

/// One fence per failed host: the 20 VMs of one host cost at most 3 BMC calls, on every seed.
#[test]
fn twenty_vms_of_one_host_cost_at_most_three_bmc_calls() {
    let scenario = shipped("kvm-host-of-20-vms.toml");
    for seed in 1..=20 {
        let report = simulate(&scenario, seed);
        assert!(report.ok(), "seed {seed}: {}", report.summary());
        let calls = report
            .hosts
            .iter()
            .find(|h| h.name == "kvm-h1")
            .map(|h| h.bmc_calls);
        assert!(
            calls.is_some_and(|n| (1..=3).contains(&n)),
            "seed {seed}: {calls:?}"
        );
        let fenced = report
            .fences
            .iter()
            .filter(|f| f.host == "kvm-h1" && f.outcome == "fenced")
            .count();
        assert_eq!(
            fenced, 1,
            "seed {seed}: one fence for the host, not one per VM"
        );
    }
}
