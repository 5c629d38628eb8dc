//! The `cloudha` binary.
//!
//! - `cloudha simulate SCENARIO.toml [--json OUT] [--seed N | --seeds A..B] [--quiet]
//!   [--store sqlite:PATH|postgres://… [--fresh]]`: runs a scenario on the simulated cloud (the
//!   managers' records in memory, or in a durable store); exit 0 when every expectation and
//!   invariant holds, 1 when one failed, 2 on bad input or a store that failed.
//! - `cloudha explore BASE.toml --schedules N [--seed S] [--out DIR] [--allow-lies]`: random
//!   fault schedules on the base scenario's cloud, judged on the invariants; every violation is
//!   shrunk to a minimal scenario file in DIR. Exit 0 when none, 1 when one, 2 on bad input.
//! - `cloudha fsm host-status [--format table|json]`: the host status transition table.
//! - `cloudha config --defaults` / `cloudha config --check FILE`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

mod explore;
mod store;

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
        /// Keep the managers' records in a durable store, `sqlite:PATH` or `postgres://…`
        /// (default: in memory). The report is the same; a `manager_restart` reloads
        /// everything from the database. With --seeds, one database per seed (`PATH-seedN`,
        /// or the schema `cloudha_seed_N`).
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// Replace what the store holds (refused otherwise when it holds records).
        #[arg(long, requires = "store")]
        fresh: bool,
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
            store,
            fresh,
        } => simulate(
            &scenario,
            json.as_deref(),
            seed,
            seeds.as_deref(),
            quiet,
            store.as_deref().map(|url| (url, fresh)),
        ),
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

/// The durable store of a `simulate` run: its URL, and the runtime its connections live on.
struct DurableStore {
    url: String,
    per_seed: bool,
    runtime: tokio::runtime::Runtime,
}

impl DurableStore {
    fn target(&self, seed: u64) -> Result<store::Target, String> {
        store::Target::parse(&self.url, self.per_seed.then_some(seed))
    }
}

/// Runs one seed, timing it on the wall clock (the binary's business, not the library's).
fn timed(
    scenario: &cloudha_sim::Scenario,
    seed: u64,
    durable: Option<&DurableStore>,
) -> Result<cloudha_sim::Report, String> {
    #[allow(clippy::disallowed_types, clippy::disallowed_methods)]
    let wall = std::time::Instant::now();
    let mut report = match durable {
        None => cloudha_sim::simulate(scenario, seed),
        Some(d) => {
            let target = d.target(seed)?;
            let name = target.name();
            let provider = Arc::new(store::SqlProvider::new(target, d.runtime.handle().clone()));
            let report = cloudha_sim::simulate_on(scenario, seed, provider);
            report.map_err(|e| format!("seed {seed}: the run over {name} is void: {e}"))?
        }
    };
    report.wall_ms = u64::try_from(wall.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
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
    store: Option<(&str, bool)>,
) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return bad_input(format!("{}: {e}", path.display())),
    };
    let scenario = match cloudha_sim::Scenario::parse(&text, &path.display().to_string()) {
        Ok(s) => s,
        Err(e) => return bad_input(e),
    };
    let range = match seeds {
        None => None,
        Some(range) => match range
            .split_once("..")
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        {
            Some((a, b)) => Some(a..b),
            None => return bad_input(format!("--seeds: expected A..B, got `{range}`")),
        },
    };
    let single = seed.or(scenario.seed).unwrap_or(1);
    let durable = match store {
        None => None,
        Some((url, fresh)) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("cloudha-store")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return bad_input(format!("--store: cannot start its runtime: {e}")),
            };
            let durable = DurableStore {
                url: url.to_owned(),
                per_seed: range.is_some(),
                runtime,
            };
            // Every seed's database is checked before any seed runs.
            let seeds: Vec<u64> = range.clone().map_or(vec![single], Iterator::collect);
            for s in seeds {
                if let Err(e) = durable
                    .target(s)
                    .and_then(|t| t.prepare(durable.runtime.handle(), fresh))
                {
                    return bad_input(e);
                }
            }
            Some(durable)
        }
    };
    if let Some(range) = range {
        let mut failed = 0;
        for s in range {
            let report = match timed(&scenario, s, durable.as_ref()) {
                Ok(report) => report,
                Err(e) => return bad_input(e),
            };
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
    let report = match timed(&scenario, single, durable.as_ref()) {
        Ok(report) => report,
        Err(e) => return bad_input(e),
    };
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
