//! Project automation, run as `cargo xtask <task>`:
//!
//! - `ci`: format check, clippy (warnings denied, all targets), every test, rustdoc (warnings
//!   denied), the tidy check, and `cloudha explore` with a few hundred schedules on each explore
//!   base. This is what `.ci/run` runs.
//! - `bench`: every benchmark at full size, then a summary table.
//! - `soak`: `cloudha explore` (release build) with 10,000 schedules on each explore base, and
//!   the crash test (`tests/crash`) with 1,000 SIGKILLs instead of `ci`'s 100.
//! - `mutants [FILE...]`: cargo-mutants over the liveness and HA code (verdicts, the fence
//!   chain, the proof, the brake, work processing), tested by the whole workspace's tests; one
//!   to two hours here, so never part of `ci`. Installs cargo-mutants when it is missing.
//! - `tidy`: only the tidy check (crate edges, `//!` docs).

mod bench;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench::run(&args[1..]),
        Some("soak") => soak(),
        Some("mutants") => mutants(&args[1..]),
        Some("tidy") => tidy::check(&root()).map_err(|problems| problems.join("\n")),
        _ => Err(
            "usage: cargo xtask <ci | bench [FILTER] | soak | mutants [FILE...] | tidy>".to_owned(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root.
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the root")
        .to_path_buf()
}

fn ci() -> Result<(), String> {
    let root = root();
    step("tidy", || tidy::check(&root).map_err(|p| p.join("\n")))?;
    step("fmt", || cargo(&["fmt", "--all", "--", "--check"], &[]))?;
    step("clippy", || {
        cargo(
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ],
            &[],
        )
    })?;
    let mut totals = (0, 0);
    step("test", || {
        totals = cargo_test(&["test", "--workspace", "--all-features"])?;
        Ok(())
    })?;
    step("doc", || {
        cargo(
            &["doc", "--workspace", "--no-deps", "--all-features"],
            &[("RUSTDOCFLAGS", "-D warnings")],
        )
    })?;
    step("examples", || {
        cargo(&["build", "--workspace", "--examples"], &[])?;
        cargo(
            &[
                "run",
                "--quiet",
                "-p",
                "cloudha-ha",
                "--example",
                "embedder",
            ],
            &[],
        )
    })?;
    step("explore", || explore_all(CI_SCHEDULES, "ci", false))?;
    eprintln!("xtask ci: all steps passed");
    // The closing line CI reads: every test binary's counts added up.
    println!("tests: {} passed, {} failed", totals.0, totals.1);
    Ok(())
}

/// The base scenarios `cloudha explore` runs on in `ci` and `soak`.
const EXPLORE_BASES: &[&str] = &[
    "scenarios/kvm-host-power-loss.toml",
    "scenarios/explore/mixed-base.toml",
];

/// Schedules per base in `ci` (the debug binary the tests built) and in `soak` (release).
const CI_SCHEDULES: u32 = 300;
const SOAK_SCHEDULES: u32 = 10_000;

/// The files `mutants` mutates by default: where verdicts, fences, proofs, the brake and the
/// processing of HA work live.
const MUTANT_FILES: &[&str] = &[
    "crates/cloudha-liveness/src/investigate/mod.rs",
    "crates/cloudha-liveness/src/oobm.rs",
    "crates/cloudha-ha/src/fence.rs",
    "crates/cloudha-ha/src/proof.rs",
    "crates/cloudha-ha/src/bounded.rs",
    "crates/cloudha-ha/src/manager/queue.rs",
    "crates/cloudha-ha/src/manager/schedule.rs",
    "crates/cloudha-ha/src/manager/work.rs",
];

/// `cargo mutants` on `files` (default [`MUTANT_FILES`]), every mutant tested by the whole
/// workspace (the simulator's scenarios catch what a unit test does not). The surviving
/// mutants are in `mutants.out/missed.txt`.
fn mutants(files: &[String]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let installed = Command::new(&cargo)
        .args(["mutants", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("xtask mutants: installing cargo-mutants from crates.io");
        let status = Command::new(&cargo)
            .args(["install", "cargo-mutants", "--locked"])
            .status()
            .map_err(|e| format!("cannot run cargo install: {e}"))?;
        if !status.success() {
            return Err("cargo install cargo-mutants failed".into());
        }
    }
    let mut cmd = Command::new(&cargo);
    cmd.args(["mutants", "--test-workspace=true", "--no-shuffle"])
        .current_dir(root());
    let files: Vec<&str> = if files.is_empty() {
        MUTANT_FILES.to_vec()
    } else {
        files.iter().map(String::as_str).collect()
    };
    for f in files {
        cmd.args(["--file", f]);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run cargo mutants: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "cargo mutants exited with {status}: the surviving mutants are in mutants.out/missed.txt"
        ))
    }
}

/// SIGKILLs of the crash test in `soak` (`ci` runs its default, 100).
const SOAK_CRASH_KILLS: &str = "1000";

fn soak() -> Result<(), String> {
    let explored = explore_all(SOAK_SCHEDULES, "soak", true);
    eprintln!("xtask soak: the crash test with {SOAK_CRASH_KILLS} kills");
    let crashed = cargo(
        &[
            "test",
            "--release",
            "-p",
            "cloudha-tests",
            "--test",
            "crash",
            "--",
            "--nocapture",
        ],
        &[("CLOUDHA_CRASH_KILLS", SOAK_CRASH_KILLS)],
    );
    explored?;
    crashed?;
    eprintln!(
        "xtask soak: no schedule violated an invariant; nothing lost or doubled under kill -9"
    );
    Ok(())
}

/// [`explore`] on every base (all of them, even after a failure); the failures, one a line.
fn explore_all(schedules: u32, what: &str, release: bool) -> Result<(), String> {
    let mut failed = Vec::new();
    for base in EXPLORE_BASES {
        eprintln!("xtask {what}: explore {base}, {schedules} schedules");
        if let Err(e) = explore(base, schedules, what, release) {
            failed.push(e);
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("\n"))
    }
}

/// `cloudha explore BASE --schedules N --seed 1`, its minimal failing scenarios written to
/// `target/explore/<what>/<base name>/` (emptied first); fails when explore exits non-zero.
fn explore(base: &str, schedules: u32, what: &str, release: bool) -> Result<(), String> {
    let stem = Path::new(base)
        .file_stem()
        .map_or_else(|| "base".into(), |s| s.to_string_lossy().into_owned());
    let out = root().join("target/explore").join(what).join(stem);
    let _ = std::fs::remove_dir_all(&out);
    let out = out.display().to_string();
    let n = schedules.to_string();
    let mut args = vec!["run", "--quiet", "-p", "cloudha-cli"];
    if release {
        args.push("--release");
    }
    args.extend([
        "--",
        "explore",
        base,
        "--schedules",
        &n,
        "--seed",
        "1",
        "--out",
        &out,
    ]);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .args(&args)
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(format!(
            "explore on {base}: an invariant was violated; minimal scenarios in {out}"
        )),
        _ => Err(format!(
            "explore on {base}: cargo {} exited with {status}",
            args.join(" ")
        )),
    }
}

/// Runs `cargo test`, echoing its output, and adds up the `test result:` lines.
fn cargo_test(args: &[&str]) -> Result<(u64, u64), String> {
    use std::io::{BufRead, BufReader, Write};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut child = Command::new(cargo)
        .args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let mut totals = (0, 0);
    if let Some(out) = child.stdout.take() {
        let mut stdout = std::io::stdout().lock();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = writeln!(stdout, "{line}");
            if let Some((passed, failed)) = parse_result(&line) {
                totals.0 += passed;
                totals.1 += failed;
            }
        }
    }
    let status = child.wait().map_err(|e| format!("cargo test: {e}"))?;
    if status.success() {
        Ok(totals)
    } else {
        Err(format!("cargo {} exited with {status}", args.join(" ")))
    }
}

/// `test result: ok. 18 passed; 0 failed; ...` → (18, 0).
fn parse_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| -> Option<u64> {
        rest.split(';').find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(word)?
                .trim()
                .parse()
                .ok()
        })
    };
    Some((count("passed")?, count("failed")?))
}

fn step(name: &str, f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    eprintln!("xtask ci: {name}");
    f().map_err(|e| format!("step `{name}` failed: {e}"))
}

pub(crate) fn cargo(args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo {} exited with {status}", args.join(" ")))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_cargo_test_result_lines() {
        assert_eq!(
            super::parse_result(
                "test result: ok. 18 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.16s"
            ),
            Some((18, 0))
        );
        assert_eq!(
            super::parse_result("test result: FAILED. 5 passed; 1 failed; 0 ignored"),
            Some((5, 1))
        );
        assert_eq!(super::parse_result("running 3 tests"), None);
    }
}
