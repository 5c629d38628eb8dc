//! Project automation, run as `cargo xtask <task>`:
//!
//! - `ci`: format check, clippy (warnings denied, all targets), every test, rustdoc (warnings
//!   denied) and the tidy check. This is what `.ci/run` runs.
//! - `bench`: every benchmark at full size, then a summary table.
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
        Some("tidy") => tidy::check(&root()).map_err(|problems| problems.join("\n")),
        _ => Err("usage: cargo xtask <ci | bench [FILTER] | tidy>".to_owned()),
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
    eprintln!("xtask ci: all steps passed");
    // The closing line CI reads: every test binary's counts added up.
    println!("tests: {} passed, {} failed", totals.0, totals.1);
    Ok(())
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
