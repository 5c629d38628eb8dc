//! The real `cloudha` binary: every scenario under `scenarios/` passes, broken scenario files
//! exit 2 naming the problem, equal runs give equal reports, and the other subcommands work.

use std::path::PathBuf;

mod common;

use common::{cloudha, root, text};

#[test]
fn every_scenario_passes() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("scenarios"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "at least ten scenarios, found {}",
        files.len()
    );
    for f in files {
        let out = cloudha(&["simulate", "--quiet", f.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}:\n{}",
            f.display(),
            text(&out)
        );
        assert!(text(&out).contains("result: ok"));
    }
}

#[test]
fn broken_scenarios_exit_2_naming_file_line_and_problem() {
    let dir = std::env::temp_dir().join(format!("cloudha-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = "name = \"x\"\nduration = \"10m\"\n\n[[cluster]]\nname = \"c\"\nhypervisor = \"kvm\"\nhosts = 2\nvms_per_host = 1\ncapacity_per_host = 4\n";
    for (name, body, needles) in [
        (
            "unknown-key.toml",
            format!("{base}colour = \"red\"\n"),
            &["unknown-key.toml:10", "unknown field `colour`"][..],
        ),
        (
            "bad-duration.toml",
            base.replace("\"10m\"", "\"10 minutes\""),
            &[
                "bad-duration.toml:2",
                "duration",
                "invalid duration `10 minutes`",
            ][..],
        ),
        (
            "unknown-host.toml",
            format!("{base}\n[[fault]]\nat = \"1m\"\nkind = \"power_off\"\nhosts = [\"c-h9\"]\n"),
            &["unknown-host.toml:11", "unknown host `c-h9`"][..],
        ),
        (
            "unknown-kind.toml",
            format!("{base}\n[[fault]]\nat = \"1m\"\nkind = \"meteor\"\nhosts = [\"c-h1\"]\n"),
            &["unknown-kind.toml:13", "meteor"][..],
        ),
        (
            "bad-config.toml",
            format!("{base}\n[config]\n\"ping.interval\" = \"0s\"\n"),
            &["bad-config.toml:12", "ping.interval", "greater than zero"][..],
        ),
        (
            "bad-config-key.toml",
            format!("{base}\n[config]\n\"ping.intervall\" = \"60s\"\n"),
            &["bad-config-key.toml:12", "ping.intervall"][..],
        ),
        (
            "bad-status.toml",
            format!("{base}\n[[expect]]\nhost = \"c-h1\"\nstatus = \"Dead\"\nby = \"5m\"\n"),
            &["bad-status.toml:11", "unknown status name `Dead`"][..],
        ),
        (
            "bad-fraction.toml",
            base.replace("vms_per_host = 1", "vms_per_host = 1\nha_fraction = 2.0"),
            &["bad-fraction.toml:4", "ha_fraction"][..],
        ),
        (
            "not-toml.toml",
            "name = \n".to_owned(),
            &["not-toml.toml:1"][..],
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        let out = cloudha(&["simulate", path.to_str().unwrap()]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {t}");
        for n in needles {
            assert!(t.contains(n), "{name}: `{t}` should mention `{n}`");
        }
    }
    let out = cloudha(&["simulate", "/nonexistent/scenario.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_expectation_exits_1_and_says_which() {
    let dir = std::env::temp_dir().join(format!("cloudha-cli-fail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wrong.toml");
    std::fs::write(
        &path,
        "name = \"wrong\"\nduration = \"5m\"\n[[cluster]]\nname = \"c\"\nhypervisor = \"kvm\"\nhosts = 2\nvms_per_host = 1\ncapacity_per_host = 4\n[[expect]]\nhost = \"c-h1\"\nstatus = \"Down\"\nby = \"5m\"\n",
    )
    .unwrap();
    let out = cloudha(&["simulate", "--quiet", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("expect host c-h1 enters Down between 0s and 5m: FAILED"),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn same_scenario_and_seed_give_byte_identical_reports() {
    let dir = std::env::temp_dir().join(format!("cloudha-cli-det-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let scenario = root().join("scenarios/kvm-agent-crash.toml");
    let mut reports = Vec::new();
    for (i, seed) in ["5", "5", "6"].iter().enumerate() {
        let out_path = dir.join(format!("r{i}.json"));
        let out = cloudha(&[
            "simulate",
            "--quiet",
            "--seed",
            seed,
            "--json",
            out_path.to_str().unwrap(),
            scenario.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let json = std::fs::read_to_string(&out_path).unwrap();
        // wall_ms aside
        let stable: String = json
            .lines()
            .filter(|l| !l.trim_start().starts_with("\"wall_ms\""))
            .collect::<Vec<_>>()
            .join("\n");
        reports.push(stable);
    }
    assert_eq!(reports[0], reports[1], "same seed, same bytes");
    assert_ne!(reports[0], reports[2], "another seed, another run");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn seeds_run_one_line_per_seed() {
    let scenario = root().join("scenarios/vm-crash-live-host.toml");
    let out = cloudha(&["simulate", "--seeds", "1..4", scenario.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("seed 1: ok"));
    let out = cloudha(&["simulate", "--seeds", "x", scenario.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn fsm_and_config_subcommands() {
    let out = cloudha(&["fsm", "host-status", "--format", "json"]);
    assert!(out.status.success());
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = table.as_array().unwrap();
    assert_eq!(rows.len(), cloudha_protocol::TRANSITIONS.len());
    assert_eq!(
        rows[0],
        serde_json::json!({"from": null, "event": "AgentConnected", "to": "Connecting"})
    );
    let out = cloudha(&["fsm", "host-status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("Up             PingTimeout            Alert")
    );

    let out = cloudha(&["config", "--defaults"]);
    let t = text(&out);
    assert!(out.status.success());
    for key in [
        "ping.interval",
        "ping.timeout",
        "alert.wait",
        "ha.workers",
        "ha.brake.fraction",
        "sim.liveness.bound",
    ] {
        assert!(t.contains(key), "{key} listed");
    }
    let dir = std::env::temp_dir().join(format!("cloudha-cli-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "\"ping.interval\" = \"30s\"\n\"ping.timeout\" = 3\n").unwrap();
    let out = cloudha(&["config", "--check", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("T = 1m30s"));
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "\"ping.timeout\" = 0\n").unwrap();
    let out = cloudha(&["config", "--check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("ping.timeout"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refused_scenarios_exit_2_naming_key_cluster_and_line() {
    let dir = root().join("scenarios/refused");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for f in files {
        let out = cloudha(&["simulate", "--quiet", f.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: {}",
            f.display(),
            text(&out)
        );
        let t = text(&out);
        if f.ends_with("agreement-beyond-cluster.toml") {
            for needle in [
                "agreement-beyond-cluster.toml:6:",
                "ha.investigators.agreement",
                "`pair`",
            ] {
                assert!(t.contains(needle), "{needle} in {t}");
            }
        }
    }
}

/// `cloudha explore`: exit codes, summary, determinism, and minimal scenarios that `simulate`
/// reproduces. Self-contained: its own helpers and temporary directories.
mod explore {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    fn cloudha(args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cloudha"))
            .args(args)
            .output()
            .expect("the binary runs")
    }

    fn stdout(o: &Output) -> String {
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn all(o: &Output) -> String {
        format!("{}{}", stdout(o), String::from_utf8_lossy(&o.stderr))
    }

    /// A fresh directory of this test's own.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("cloudha-explore-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(dir: &Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    fn files(dir: &Path) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            std::fs::read_to_string(e.path()).unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Power losses and agent crashes of KVM hosts, after the startup grace: handled safely.
    const CLEAN: &str = r#"
name = "clean base"
duration = "20m"

[[cluster]]
name = "kvm"
hypervisor = "kvm"
hosts = 4
vms_per_host = 2
capacity_per_host = 10

[[expect]]
alert = "host_down"
min = 99

[explore]
faults = [1, 2]
kinds = ["power_off", "agent_crash"]
at = ["6m", "9m"]
"#;

    /// A liveness bound no failover can meet: every power loss of a host with HA VMs violates
    /// `ha_liveness`, the shortest such schedule being one power loss.
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
    fn explore_exits_0_when_no_schedule_violates_an_invariant() {
        let dir = scratch("clean");
        let base = write(&dir, "clean.toml", CLEAN);
        let out_dir = dir.join("out");
        let out = cloudha(&[
            "explore",
            &base,
            "--schedules",
            "16",
            "--seed",
            "3",
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        let t = stdout(&out);
        assert_eq!(out.status.code(), Some(0), "{}", all(&out));
        assert!(
            t.contains("(seed 3): 16 schedules run, 0 violated an invariant"),
            "{t}"
        );
        for name in [
            "no_double_run",
            "no_unsafe_start",
            "ha_liveness",
            "no_unwanted_restart",
        ] {
            assert!(t.contains(&format!("  {name}: ok\n")), "{name}: {t}");
        }
        assert!(
            t.contains("files written: none") && t.ends_with("result: ok\n"),
            "{t}"
        );
        assert!(
            !out_dir.exists(),
            "no directory without a file to put in it"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn explore_exits_1_on_a_violation_and_its_minimal_scenario_reproduces_it() {
        let dir = scratch("tight");
        let base = write(&dir, "tight.toml", TIGHT);
        let out_dir = dir.join("found");
        let out = cloudha(&[
            "explore",
            &base,
            "--schedules",
            "12",
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        let t = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{}", all(&out));
        assert!(t.contains("  ha_liveness: violated by "), "{t}");
        assert!(t.ends_with("result: FAILED\n"), "{t}");
        let written = files(&out_dir);
        assert!(!written.is_empty(), "{t}");
        assert!(
            t.contains(&format!(
                "files written: {} in {}",
                written.len(),
                out_dir.display()
            )),
            "{t}"
        );
        for (name, text) in &written {
            assert!(t.contains(&format!("  {name}: ")), "{name} listed: {t}");
            let invariant = name.split('-').next().unwrap();
            if invariant == "ha_liveness" {
                assert_eq!(
                    text.matches("[[fault]]").count(),
                    1,
                    "shrunk to one fault:\n{text}"
                );
                assert!(
                    text.contains("kind = \"power_off\"") && text.contains("at = \"6m\""),
                    "{text}"
                );
            }
            let file = out_dir.join(name);
            let sim = cloudha(&["simulate", "--quiet", file.to_str().unwrap()]);
            assert_eq!(sim.status.code(), Some(1), "{name}:\n{}", all(&sim));
            assert!(
                stdout(&sim).contains(&format!("invariant {invariant}: FAILED")),
                "{name}:\n{}",
                all(&sim)
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn explore_is_deterministic_for_a_seed_whatever_the_threads() {
        let dir = scratch("determinism");
        let base = write(&dir, "tight.toml", TIGHT);
        let run = |jobs: &str| {
            let out_dir = dir.join(format!("out-{jobs}"));
            let out = cloudha(&[
                "explore",
                &base,
                "--schedules",
                "20",
                "--seed",
                "9",
                "--jobs",
                jobs,
                "--out",
                out_dir.to_str().unwrap(),
            ]);
            assert_eq!(out.status.code(), Some(1), "{}", all(&out));
            let summary = stdout(&out).replace(out_dir.to_str().unwrap(), "OUT");
            (summary, files(&out_dir))
        };
        let (one, two, again) = (run("1"), run("2"), run("3"));
        assert_eq!(one, two);
        assert_eq!(one, again);
        let other = cloudha(&[
            "explore",
            &base,
            "--schedules",
            "20",
            "--seed",
            "10",
            "--out",
            dir.join("other").to_str().unwrap(),
        ]);
        assert_ne!(
            stdout(&other).replace("seed 10", "seed 9"),
            one.0,
            "the seed matters"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn explore_exits_2_on_bad_input_naming_the_problem() {
        let dir = scratch("bad");
        let base = write(&dir, "clean.toml", CLEAN);
        let tight = write(&dir, "tight.toml", TIGHT);
        let explore_line = CLEAN.lines().position(|l| l == "[explore]").unwrap() + 1;
        let typo = write(
            &dir,
            "typo.toml",
            &CLEAN.replace("faults = [1, 2]", "fautls = [1, 2]"),
        );
        let liar = write(
            &dir,
            "liar.toml",
            &CLEAN.replace("\"agent_crash\"]", "\"agent_crash\", \"bmc_lies\"]"),
        );
        let host = write(&dir, "host.toml", &format!("{CLEAN}hosts = [\"kvm-h7\"]\n"));
        let broken = write(
            &dir,
            "broken.toml",
            &CLEAN.replace("hosts = 4", "hosts = 0"),
        );
        let not_a_dir = write(&dir, "plain-file", "");
        let cases: Vec<(Vec<&str>, Vec<String>)> = vec![
            (
                vec!["explore", "/nonexistent/base.toml", "--schedules", "5"],
                vec!["/nonexistent/base.toml".into()],
            ),
            (
                vec!["explore", &typo, "--schedules", "5"],
                vec![
                    format!("typo.toml:{}", explore_line + 1),
                    "unknown field `fautls`".into(),
                ],
            ),
            (
                vec!["explore", &liar, "--schedules", "5"],
                vec!["liar.toml:".into(), "bmc_lies".into()],
            ),
            (
                vec!["explore", &host, "--schedules", "5"],
                vec!["host.toml:".into(), "unknown host `kvm-h7`".into()],
            ),
            (
                vec!["explore", &broken, "--schedules", "5"],
                vec!["broken.toml:".into(), "`hosts` must be at least 1".into()],
            ),
            (
                vec!["explore", &base, "--schedules", "0"],
                vec!["--schedules must be at least 1".into()],
            ),
            (vec!["explore", &base], vec!["--schedules".into()]),
            (
                vec!["explore", &tight, "--schedules", "3", "--out", &not_a_dir],
                vec!["plain-file".into()],
            ),
        ];
        for (args, needles) in cases {
            let out = cloudha(&args);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", all(&out));
            for n in needles {
                assert!(
                    all(&out).contains(&n),
                    "{args:?}: `{n}` not in {}",
                    all(&out)
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn must_fail_scenarios_exit_1_with_their_invariant_broken() {
    let dir = root().join("scenarios/must-fail");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for f in files {
        let text_of_file = std::fs::read_to_string(&f).unwrap();
        let named = text_of_file
            .lines()
            .find_map(|l| l.strip_prefix("violates = "))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("{} names no invariant", f.display()));
        let out = cloudha(&["simulate", "--quiet", f.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: {}",
            f.display(),
            text(&out)
        );
        assert!(
            text(&out).contains(&format!("invariant {named}: FAILED")),
            "{}: {named} not broken:\n{}",
            f.display(),
            text(&out)
        );
    }
}

/// A base with one host whose BMC may lie: explore with `--allow-lies` finds a violation and
/// shrinks it to at most two faults, which `simulate` reproduces; without the flag a lying kind
/// in `[explore]` is refused.
#[test]
fn explore_with_lies_finds_a_violation_and_shrinks_it_to_two_faults_at_most() {
    const LIAR: &str = r#"
name = "a host whose BMC may lie"
duration = "30m"

[[cluster]]
name = "kvm"
hypervisor = "kvm"
hosts = 4
vms_per_host = 2
capacity_per_host = 10

[explore]
kinds = ["bmc_lies", "agent_crash", "power_off", "mgmt_partition"]
hosts = ["kvm-h2"]
liars = ["kvm-h2"]
at = ["6m", "10m"]
"#;
    let dir = std::env::temp_dir().join(format!("cloudha-cli-liar-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("liar.toml");
    std::fs::write(&base, LIAR).unwrap();
    let base = base.to_str().unwrap();
    let refused = cloudha(&["explore", base, "--schedules", "5"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "a lying kind needs --allow-lies: {}",
        text(&refused)
    );
    let out_dir = dir.join("found");
    let out = cloudha(&[
        "explore",
        base,
        "--schedules",
        "60",
        "--allow-lies",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let mut written: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    written.sort();
    assert!(!written.is_empty(), "{}", text(&out));
    for f in written {
        let body = std::fs::read_to_string(&f).unwrap();
        let faults = body.matches("[[fault]]").count();
        assert!(
            (1..=2).contains(&faults),
            "{}: {faults} faults\n{body}",
            f.display()
        );
        assert!(
            body.contains("bmc_lies"),
            "{}: the lie is needed\n{body}",
            f.display()
        );
        let again = cloudha(&["simulate", "--quiet", f.to_str().unwrap()]);
        assert_eq!(
            again.status.code(),
            Some(1),
            "{}: {}",
            f.display(),
            text(&again)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
