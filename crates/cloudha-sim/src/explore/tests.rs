//! Unit tests of `cloudha explore`: drawing, the `[explore]` table, shrinking, running.

use std::time::Duration;

use super::run::parallel;
use super::shrink::{SHRINK_BUDGET, shrink};
use super::*;

const BASE: &str = r#"
name = "explore base"
duration = "30m"

[[cluster]]
name = "kvm"
hypervisor = "kvm"
hosts = 4
vms_per_host = 2
capacity_per_host = 10

[[cluster]]
name = "xen"
hypervisor = "xenserver"
hosts = 2
vms_per_host = 1
capacity_per_host = 4

[[cluster]]
name = "vmw"
hypervisor = "vmware"
hosts = 1
capacity_per_host = 4

[[expect]]
alert = "host_down"
min = 5
"#;

fn explorer(extra: &str) -> Explorer {
    Explorer::parse(&format!("{BASE}{extra}"), "base.toml", false).unwrap_or_else(|e| panic!("{e}"))
}

fn refused(extra: &str, allow_lies: bool) -> ScenarioError {
    Explorer::parse(&format!("{BASE}{extra}"), "base.toml", allow_lies).expect_err("refused")
}

#[test]
fn kinds_come_from_the_enum_itself() {
    let kinds = fault_kinds();
    for (kind, name) in [
        (FaultKind::PowerOff, "power_off"),
        (FaultKind::VmCrash, "vm_crash"),
        (FaultKind::ManagerRestart, "manager_restart"),
        (FaultKind::PingDelay, "ping_delay"),
    ] {
        assert!(kinds.contains(&(kind, name)), "{kinds:?}");
    }
    assert!(kinds.len() >= 17, "{kinds:?}");
}

#[test]
fn every_drawn_schedule_is_a_valid_scenario_that_round_trips() {
    let e = explorer("");
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..400 {
        let s = e.draw(7, i);
        assert!((1..=4).contains(&s.faults.len()));
        for f in &s.faults {
            seen.insert(e.kind_name(f.kind));
            assert!(f.at < e.base.duration);
            if let Some(d) = f.duration {
                assert!(f.at + d <= e.base.duration, "{f:?}");
            }
            assert!(
                !is_lying(e.kind_name(f.kind)),
                "no lies without --allow-lies"
            );
        }
        let text = e.to_toml(&s, &[], "drawn");
        let back =
            Scenario::parse(&text, "drawn.toml").unwrap_or_else(|err| panic!("{err}\n{text}"));
        assert_eq!(back.faults, s.faults, "{text}");
        assert_eq!(back.seed, Some(s.seed));
    }
    for k in [
        "power_off",
        "vm_crash",
        "manager_restart",
        "ping_delay",
        "agent_crash",
    ] {
        assert!(seen.contains(k), "{k} never drawn: {seen:?}");
    }
}

#[test]
fn drawing_is_a_function_of_seed_and_index() {
    let e = explorer("");
    assert_eq!(e.draw(1, 5), e.draw(1, 5));
    assert_ne!(e.draw(1, 5), e.draw(2, 5));
    assert_ne!(e.draw(1, 5), e.draw(1, 6));
}

#[test]
fn the_explore_table_narrows_the_space() {
    let e = explorer(
        r#"
[explore]
faults = 2
kinds = ["vm_crash", "ping_delay"]
hosts = ["xen-h2", "kvm-h3"]
targets = [1, 3]
at = ["5m", "6m"]
duration = ["1m", "2m"]
heal = 1.0
delay = ["10s", "20s"]
"#,
    );
    for i in 0..200 {
        let s = e.draw(3, i);
        assert_eq!(s.faults.len(), 2);
        for f in &s.faults {
            assert!(f.at >= Duration::from_secs(300) && f.at <= Duration::from_secs(360));
            match f.kind {
                FaultKind::VmCrash => {
                    assert!(
                        f.vms
                            .iter()
                            .all(|v| v.starts_with("xen-h2-") || v.starts_with("kvm-h3-"))
                    );
                    assert!((1..=3).contains(&f.vms.len()));
                    assert_eq!(f.duration, None);
                }
                FaultKind::PingDelay => {
                    assert!(f.hosts.iter().all(|h| h == "xen-h2" || h == "kvm-h3"));
                    let d = f.duration.expect("heal = 1");
                    assert!(d >= Duration::from_secs(60) && d <= Duration::from_secs(120));
                    let delay = f.delay.expect("a delay");
                    assert!(delay >= Duration::from_secs(10) && delay <= Duration::from_secs(20));
                }
                other => panic!("{other:?} drawn"),
            }
        }
    }
}

#[test]
fn a_bad_explore_table_is_refused_with_its_line() {
    // The line of the key below `[explore]` in each case.
    let at = format!("base.toml:{}", BASE.lines().count() + 3);
    let at = at.as_str();
    let cases: &[(&str, bool, &[&str])] = &[
        (
            "\n[explore]\ncolour = 1\n",
            false,
            &[at, "unknown field `colour`"],
        ),
        (
            "\n[explore]\nfaults = [3, 1]\n",
            false,
            &[at, "`faults`: min is above max"],
        ),
        (
            "\n[explore]\nfaults = 0\n",
            false,
            &["`faults` must be within 1..=50"],
        ),
        (
            "\n[explore]\nkinds = [\"meteor\"]\n",
            false,
            &[at, "unknown fault kind `meteor`", "power_off"],
        ),
        (
            "\n[explore]\nhosts = [\"kvm-h9\"]\n",
            false,
            &["unknown host `kvm-h9`"],
        ),
        (
            "\n[explore]\nliars = []\n",
            true,
            &["`liars` must be a non-empty list"],
        ),
        (
            "\n[explore]\nat = [\"1m\", \"31m\"]\n",
            false,
            &["`at`: 31m is after the scenario's `duration` (30m)"],
        ),
        (
            "\n[explore]\nat = \"soon\"\n",
            false,
            &["`at` must be a duration"],
        ),
        (
            "\n[explore]\nduration = [\"0s\", \"1m\"]\n",
            false,
            &["greater than zero"],
        ),
        (
            "\n[explore]\nheal = 2\n",
            false,
            &["`heal` must be a probability"],
        ),
        (
            "\n[explore]\nkinds = [\"vm_crash\"]\nhosts = [\"kvm-h1\"]\n",
            false,
            &[],
        ),
    ];
    for (extra, lies, needles) in cases {
        let result = Explorer::parse(&format!("{BASE}{extra}"), "base.toml", *lies);
        if needles.is_empty() {
            assert!(result.is_ok(), "{extra}: {result:?}");
            continue;
        }
        let e = result.expect_err(extra).to_string();
        for n in *needles {
            assert!(e.contains(n), "{extra}: `{n}` not in `{e}`");
        }
    }
    let e = refused(
        "\n[explore]\nkinds = [\"vm_crash\"]\nhosts = [\"vmw-h1\"]\n",
        false,
    );
    assert!(e.message.contains("no fault kind can be drawn"), "{e}");
}

#[test]
fn lying_kinds_are_drawn_only_when_allowed_and_only_on_liars() {
    assert!(is_lying("bmc_lies") && is_lying("neighbour_lies") && is_lying("bmc_stuck"));
    assert!(!is_lying("power_off"));
    let lying: Vec<&str> = fault_kinds()
        .into_iter()
        .map(|(_, n)| n)
        .filter(|n| is_lying(n))
        .collect();
    if lying.is_empty() {
        return; // no lying kind in the enum yet
    }
    let e = refused(&format!("\n[explore]\nkinds = [\"{}\"]\n", lying[0]), false);
    assert!(e.message.contains("--allow-lies"), "{e}");
    let text = format!("{BASE}\n[explore]\nliars = [\"kvm-h2\"]\n");
    let e = Explorer::parse(&text, "base.toml", true).unwrap();
    let mut drawn = 0;
    for i in 0..400 {
        for f in e.draw(1, i).faults {
            if is_lying(e.kind_name(f.kind)) {
                drawn += 1;
                assert_eq!(f.hosts, ["kvm-h2"]);
            }
        }
    }
    assert!(drawn > 0);
}

/// A synthetic judge: fails iff a fault of `kind` hits `host`.
fn hits(s: &Schedule, kind: FaultKind, host: &str) -> bool {
    s.faults
        .iter()
        .any(|f| f.kind == kind && f.hosts.iter().any(|h| h == host))
}

#[test]
fn shrinking_reaches_the_minimal_schedule_of_a_synthetic_judge() {
    let e = explorer("\n[explore]\nfaults = [3, 6]\ntargets = [1, 4]\nat = [\"2m\", \"25m\"]\n");
    let mut shrunk = 0;
    for i in 0..300 {
        let start = e.draw(11, i);
        let Some(f) = start
            .faults
            .iter()
            .find(|f| f.kind == FaultKind::StorageLoss && f.hosts.len() > 1)
        else {
            continue;
        };
        let host = f.hosts[1].clone();
        let mut runs = 0;
        let minimal = shrink(&e.space, start.clone(), SHRINK_BUDGET, |s| {
            runs += 1;
            hits(s, FaultKind::StorageLoss, &host)
        });
        assert_eq!(minimal.faults.len(), 1, "{minimal:?}");
        let m = &minimal.faults[0];
        assert_eq!(m.kind, FaultKind::StorageLoss);
        assert_eq!(m.hosts, std::slice::from_ref(&host));
        assert_eq!(
            m.at,
            Duration::from_secs(120),
            "as early as the space allows"
        );
        assert_eq!(minimal.seed, start.seed);
        assert!(runs <= SHRINK_BUDGET);
        shrunk += 1;
    }
    assert!(shrunk >= 3, "too few starting points: {shrunk}");
}

#[test]
fn shrinking_bisects_to_the_earliest_failing_second() {
    // Fails iff kvm-h1 loses power at 7m or later while some agent of kvm-h2 is crashed.
    let e = explorer("\n[explore]\nat = [\"1m\", \"29m\"]\n");
    let fault = |at: u64, kind, host: &str| Fault {
        at: Duration::from_secs(at),
        kind,
        hosts: vec![host.to_owned(), "xen-h1".to_owned()],
        vms: vec![],
        duration: None,
        delay: None,
    };
    let start = Schedule {
        seed: 5,
        faults: vec![
            fault(900, FaultKind::AgentCrash, "kvm-h2"),
            fault(1000, FaultKind::NoCapacity, "kvm-h3"),
            fault(1500, FaultKind::PowerOff, "kvm-h1"),
        ],
    };
    let judge = |s: &Schedule| {
        s.faults.iter().any(|f| {
            f.kind == FaultKind::PowerOff
                && f.hosts.contains(&"kvm-h1".to_owned())
                && f.at >= Duration::from_secs(420)
        }) && hits(s, FaultKind::AgentCrash, "kvm-h2")
    };
    assert!(judge(&start));
    let minimal = shrink(&e.space, start, SHRINK_BUDGET, judge);
    assert_eq!(
        minimal.faults,
        vec![
            Fault {
                hosts: vec!["kvm-h2".into()],
                ..fault(60, FaultKind::AgentCrash, "kvm-h2")
            },
            Fault {
                hosts: vec!["kvm-h1".into()],
                ..fault(420, FaultKind::PowerOff, "kvm-h1")
            },
        ]
    );
}

#[test]
fn shrinking_stops_within_its_budget() {
    let e = explorer("");
    let start = e.draw(1, 0);
    let mut runs = 0;
    let out = shrink(&e.space, start.clone(), 7, |_| {
        runs += 1;
        runs % 2 == 0
    });
    assert_eq!(runs, 7);
    assert!(out.faults.len() <= start.faults.len());
}

#[test]
fn results_do_not_depend_on_the_number_of_threads() {
    let square = |i: usize| i * i;
    let one = parallel(50, 1, square, &|_| {});
    let four = parallel(50, 4, square, &|_| {});
    assert_eq!(one, four);
    assert_eq!(one[7], 49);
    assert!(parallel(0, 3, square, &|_| {}).is_empty());
}

#[test]
fn a_clean_run_is_deterministic_and_judges_invariants_only() {
    // The base expects 5 host_down alerts: an expectation that fails, and must be ignored.
    let e = explorer(
        "\n[explore]\nkinds = [\"power_off\", \"agent_crash\"]\nfaults = [1, 2]\nat = [\"6m\", \"9m\"]\nhosts = [\"kvm-h1\", \"kvm-h2\"]\n",
    );
    let options = ExploreOptions {
        schedules: 12,
        seed: 4,
        jobs: 2,
        shrink_limit: 5,
    };
    let a = e.run(&options, &|_| {});
    let b = e.run(&ExploreOptions { jobs: 1, ..options }, &|_| {});
    assert_eq!(a.summary("out"), b.summary("out"));
    assert!(a.ok(), "{}", a.summary("out"));
    assert!(a.summary("out").contains("12 schedules run"));
    assert!(a.summary("out").contains("files written: none"));
}

/// A real violation, whatever the manager does: a liveness bound no failover can meet, so
/// every power loss of a host with HA VMs violates `ha_liveness`.
const TIGHT: &str = r#"
name = "tight liveness bound"
duration = "20m"

[config]
"sim.liveness.bound" = "1m"

[[cluster]]
name = "kvm"
hypervisor = "kvm"
hosts = 3
vms_per_host = 2
capacity_per_host = 10

[explore]
faults = [1, 3]
kinds = ["power_off", "ping_loss", "no_capacity"]
at = ["6m", "12m"]
"#;

#[test]
fn a_violation_is_shrunk_to_a_file_that_reproduces_it() {
    let e = Explorer::parse(TIGHT, "tight.toml", false).unwrap();
    let options = ExploreOptions {
        schedules: 16,
        seed: 1,
        jobs: 2,
        shrink_limit: 3,
    };
    let outcome = e.run(&options, &|_| {});
    let summary = outcome.summary("out");
    assert!(!outcome.ok(), "{summary}");
    assert!(!outcome.findings.is_empty(), "{summary}");
    for f in &outcome.findings {
        assert!(f.schedule.faults.len() <= f.faults_before);
        if f.invariant == "ha_liveness" {
            assert_eq!(f.schedule.faults.len(), 1, "{}", f.text);
            assert_eq!(f.schedule.faults[0].kind, FaultKind::PowerOff);
            assert_eq!(f.schedule.faults[0].at, Duration::from_secs(360));
        }
        let scenario = Scenario::parse(&f.text, &f.file_name)
            .unwrap_or_else(|err| panic!("{err}\n{}", f.text));
        assert!(scenario.expects.is_empty());
        let report = crate::simulate(&scenario, scenario.seed.expect("a seed in the file"));
        let broken: Vec<&str> = report
            .invariants
            .all()
            .iter()
            .filter(|(_, i)| !i.ok)
            .map(|(n, _)| *n)
            .collect();
        assert!(
            broken.contains(&f.invariant.as_str()),
            "{}: {broken:?}\n{}",
            f.file_name,
            f.text
        );
    }
    let again = e.run(&ExploreOptions { jobs: 1, ..options }, &|_| {});
    assert_eq!(again.summary("out"), summary);
    let texts = |o: &Outcome| {
        o.findings
            .iter()
            .map(|f| (f.file_name.clone(), f.text.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&again), texts(&outcome));
}

/// The whole pipeline on a synthetic judge: counts by invariant, one finding per shape,
/// minimal schedules, progress in both phases, the shrink limit.
#[test]
fn findings_are_counted_shrunk_and_merged_by_shape() {
    let e = explorer(
        "\n[explore]\nfaults = [2, 5]\nkinds = [\"power_off\", \"agent_crash\", \"vm_crash\"]\nat = [\"3m\", \"20m\"]\ntargets = [1, 3]\n",
    );
    let judge = |s: &Schedule| {
        let mut v = Vec::new();
        if hits(s, FaultKind::PowerOff, "kvm-h2") {
            v.push(Violation {
                invariant: "no_double_run".into(),
                message: "kvm-h2 lost power".into(),
            });
        }
        if s.faults.iter().any(|f| f.kind == FaultKind::VmCrash) {
            v.push(Violation {
                invariant: "ha_liveness".into(),
                message: "a VM crashed".into(),
            });
        }
        v
    };
    let options = ExploreOptions {
        schedules: 60,
        seed: 2,
        jobs: 3,
        shrink_limit: 4,
    };
    let seen = std::sync::Mutex::new((0, 0));
    let outcome = e.run_with(
        &options,
        &|p| {
            let mut seen = seen.lock().unwrap();
            match p.phase {
                Phase::Running => seen.0 = seen.0.max(p.done),
                Phase::Shrinking => seen.1 = seen.1.max(p.done),
            }
        },
        &judge,
    );
    let expected =
        |pred: &dyn Fn(&Schedule) -> bool| (0..60).filter(|i| pred(&e.draw(2, *i))).count();
    let double = expected(&|s| hits(s, FaultKind::PowerOff, "kvm-h2"));
    let crash = expected(&|s| s.faults.iter().any(|f| f.kind == FaultKind::VmCrash));
    assert!(double > 4 && crash > 4, "{double} {crash}");
    let row = |name: &str| {
        outcome
            .by_invariant
            .iter()
            .find(|r| r.0 == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(row("no_double_run"), ("no_double_run".into(), double, 4));
    assert_eq!(row("ha_liveness"), ("ha_liveness".into(), crash, 4));
    assert_eq!(row("no_unsafe_start").1, 0);
    assert_eq!(*seen.lock().unwrap(), (60, 8));
    // Every power loss of kvm-h2 shrinks to the same single fault: one file; the VM
    // crashes differ only by VM and time: one file too.
    assert_eq!(outcome.findings.len(), 2, "{}", outcome.summary("out"));
    let finding = |name: &str| {
        outcome
            .findings
            .iter()
            .find(|f| f.invariant == name)
            .unwrap()
    };
    let double_run = finding("no_double_run");
    assert_eq!(double_run.similar, 3);
    assert_eq!(double_run.schedule.faults.len(), 1);
    assert_eq!(double_run.schedule.faults[0].hosts, ["kvm-h2"]);
    assert_eq!(double_run.schedule.faults[0].at, Duration::from_secs(180));
    let crashed = finding("ha_liveness");
    assert_eq!(crashed.schedule.faults.len(), 1);
    assert_eq!(crashed.schedule.faults[0].vms.len(), 1);
    let summary = outcome.summary("out");
    assert!(
        summary.contains(&format!(
            "no_double_run: violated by {double} schedules, {} not shrunk (--shrink-limit)",
            double - 4
        )),
        "{summary}"
    );
    assert!(summary.contains("files written: 2 in out"), "{summary}");
    assert!(summary.contains("(+3 similar)"), "{summary}");
    assert!(summary.ends_with("result: FAILED\n"));
}
