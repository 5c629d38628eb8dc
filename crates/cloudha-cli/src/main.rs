//! The `cloudha` binary.
//!
//! - `cloudha simulate SCENARIO.toml [--json OUT] [--seed N | --seeds A..B] [--quiet]`: runs a
//!   scenario on the simulated cloud; exit 0 when every expectation and invariant holds, 1 when
//!   one failed, 2 on bad input.
//! - `cloudha explore BASE.toml --schedules N [--seed S] [--out DIR] [--allow-lies]`: random
//!   fault schedules on the base scenario's cloud, judged on the invariants; every violation is
//!   shrunk to a minimal scenario file in DIR. Exit 0 when none, 1 when one, 2 on bad input.
//! - `cloudha fsm host-status [--format table|json]`: the host status transition table.
//! - `cloudha config --defaults` / `cloudha config --check FILE`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod explore;

#[derive(Parser)]
#[command(
    name = "cloudha",
    version,
    about = "CloudStack-style host liveness and VM HA, simulated and tuned"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a scenario on the simulated cloud and judge it.
    Simulate {
        /// The scenario file (TOML; see docs/scenarios.md).
        scenario: PathBuf,
        /// Write the JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// The seed (default: the scenario's, else 1).
        #[arg(long, conflicts_with = "seeds")]
        seed: Option<u64>,
        /// Run every seed of a range `A..B` (B excluded), one line per seed.
        #[arg(long)]
        seeds: Option<String>,
        /// Print only the summary.
        #[arg(long)]
        quiet: bool,
    },
    /// Draw random fault schedules on a base scenario's cloud, judge the invariants, and shrink
    /// every violation to a minimal scenario file.
    Explore {
        /// The base scenario (TOML; its optional `[explore]` table narrows what is drawn; its
        /// faults and expectations are ignored).
        base: PathBuf,
        /// How many schedules to draw and run.
        #[arg(long)]
        schedules: usize,
        /// The seed the schedules are drawn from (default: the scenario's, else 1).
        #[arg(long)]
        seed: Option<u64>,
        /// Where minimal failing scenarios are written (created when needed).
        #[arg(long, default_value = "explore-out")]
        out: PathBuf,
        /// Also draw the lying fault kinds (bmc_lies, neighbour_lies, bmc_stuck).
        #[arg(long)]
        allow_lies: bool,
        /// Worker threads (default: every core).
        #[arg(long)]
        jobs: Option<usize>,
        /// Shrink at most this many violating schedules per invariant (the first ones).
        #[arg(long, default_value_t = 20)]
        shrink_limit: usize,
    },
    /// State machines.
    Fsm {
        #[command(subcommand)]
        which: Fsm,
    },
    /// Configuration keys.
    Config {
        /// Print every key with its default and meaning.
        #[arg(long, conflicts_with = "check")]
        defaults: bool,
        /// Check a config file (TOML with CloudStack's key names).
        #[arg(long)]
        check: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Fsm {
    /// The host status transition table (spec §4.2).
    HostStatus {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Simulate {
            scenario,
            json,
            seed,
            seeds,
            quiet,
        } => simulate(&scenario, json.as_deref(), seed, seeds.as_deref(), quiet),
        Cmd::Explore {
            base,
            schedules,
            seed,
            out,
            allow_lies,
            jobs,
            shrink_limit,
        } => explore::run(&explore::Args {
            base,
            schedules,
            seed,
            out,
            allow_lies,
            jobs,
            shrink_limit,
        }),
        Cmd::Fsm {
            which: Fsm::HostStatus { format },
        } => {
            fsm(format);
            ExitCode::SUCCESS
        }
        Cmd::Config { defaults, check } => config(defaults, check.as_deref()),
    }
}

/// Runs one seed, timing it on the wall clock (the binary's business, not the library's).
fn timed(scenario: &cloudha_sim::Scenario, seed: u64) -> cloudha_sim::Report {
    #[allow(clippy::disallowed_types, clippy::disallowed_methods)]
    let wall = std::time::Instant::now();
    let mut report = cloudha_sim::simulate(scenario, seed);
    report.wall_ms = u64::try_from(wall.elapsed().as_millis()).unwrap_or(u64::MAX);
    report
}

fn bad_input(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("cloudha: {message}");
    ExitCode::from(2)
}

fn simulate(
    path: &std::path::Path,
    json: Option<&std::path::Path>,
    seed: Option<u64>,
    seeds: Option<&str>,
    quiet: bool,
) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return bad_input(format!("{}: {e}", path.display())),
    };
    let scenario = match cloudha_sim::Scenario::parse(&text, &path.display().to_string()) {
        Ok(s) => s,
        Err(e) => return bad_input(e),
    };
    if let Some(range) = seeds {
        let Some((a, b)) = range
            .split_once("..")
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        else {
            return bad_input(format!("--seeds: expected A..B, got `{range}`"));
        };
        let mut failed = 0;
        for s in a..b {
            let report = timed(&scenario, s);
            let broken: Vec<String> = report
                .invariants
                .all()
                .iter()
                .filter(|(_, i)| !i.ok)
                .map(|(n, _)| (*n).to_owned())
                .chain(
                    report
                        .expectations
                        .iter()
                        .filter(|e| !e.ok)
                        .map(|e| e.text.clone()),
                )
                .collect();
            if broken.is_empty() {
                println!("seed {s}: ok ({} ms)", report.wall_ms);
            } else {
                failed += 1;
                println!("seed {s}: FAILED: {}", broken.join("; "));
            }
        }
        return if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    let seed = seed.or(scenario.seed).unwrap_or(1);
    let report = timed(&scenario, seed);
    if !quiet {
        print!("{}", report.timeline());
    }
    print!("{}", report.summary());
    if let Some(out) = json
        && let Err(e) = std::fs::write(out, report.to_json())
    {
        return bad_input(format!("{}: {e}", out.display()));
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn fsm(format: Format) {
    let table = cloudha_protocol::TRANSITIONS;
    match format {
        Format::Table => {
            println!("{:<14} {:<22} TO", "FROM", "EVENT");
            for t in table {
                println!(
                    "{:<14} {:<22} {}",
                    t.from.map_or("(null)", |s| s.as_str()),
                    t.event.as_str(),
                    t.to
                );
            }
        }
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(table).unwrap_or_default()
        ),
    }
}

fn config(defaults: bool, check: Option<&std::path::Path>) -> ExitCode {
    if let Some(path) = check {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return bad_input(format!("{}: {e}", path.display())),
        };
        return match cloudha_ha::Config::from_toml(&text, &path.display().to_string()) {
            Ok(c) => {
                println!(
                    "{}: ok (ping timeout T = {})",
                    path.display(),
                    cloudha_protocol::duration::format(c.liveness.ping_deadline())
                );
                ExitCode::SUCCESS
            }
            Err(e) => bad_input(e),
        };
    }
    if !defaults {
        return bad_input("config: give --defaults or --check FILE");
    }
    println!("{:<44} {:<22} MEANING", "KEY", "DEFAULT");
    for k in cloudha_ha::Config::keys() {
        println!("{:<44} {:<22} {}", k.key, k.default, k.meaning);
    }
    let (key, default, meaning) = (
        "sim.liveness.bound",
        "20m",
        "(scenarios only) every HA VM of a host proven Down runs again within this",
    );
    println!("{key:<44} {default:<22} {meaning}");
    ExitCode::SUCCESS
}
