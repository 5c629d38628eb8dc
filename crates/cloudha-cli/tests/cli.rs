//! The real `cloudha` binary: every scenario under `scenarios/` passes, broken scenario files
//! exit 2 naming the problem, equal runs give equal reports, and the other subcommands work.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cloudha(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloudha"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

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
        assert_eq!(out.status.code(), Some(2), "{}: {}", f.display(), text(&out));
        let t = text(&out);
        if f.ends_with("agreement-beyond-cluster.toml") {
            for needle in ["agreement-beyond-cluster.toml:6:", "ha.investigators.agreement", "`pair`"] {
                assert!(t.contains(needle), "{needle} in {t}");
            }
        }
    }
}
