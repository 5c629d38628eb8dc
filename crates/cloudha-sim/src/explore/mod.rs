//! `cloudha explore`: random fault schedules on a base scenario's cloud, each run judged on the
//! invariants alone (the base file's faults and expectations are ignored), and every violation
//! shrunk (fewer faults, fewer hosts, earlier) to a minimal scenario file that `cloudha simulate`
//! reproduces. Syntax of the base file's optional `[explore]` table: docs/scenarios.md.
//!
//! Deterministic for a seed: schedule `i` is drawn from the seed and `i` alone, runs on any of
//! the worker threads, and results are ordered by schedule index; a shrink is a pure function
//! of its schedule. Each run builds its own current-thread runtime (`simulate`).

mod draw;
mod run;
mod shrink;
#[cfg(test)]
mod tests;

use crate::scenario::{Fault, FaultKind, Scenario, ScenarioError};
use crate::scenario_toml;

use draw::{BaseFile, Reader, Space, fault_kinds, line_of};

/// The pseudo-invariant under which a run that panicked is reported.
pub const SIMULATOR_PANIC: &str = "simulator_panic";

/// Whether a fault kind (by its file name) is a lying part: drawn only with `--allow-lies`,
/// and only on the `[explore]` table's `liars`.
pub fn is_lying(name: &str) -> bool {
    matches!(name, "bmc_lies" | "neighbour_lies" | "bmc_stuck")
}

/// One drawn schedule: the run's seed and its faults (in the order they are run and written).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// The seed of the run (written into the scenario file).
    pub seed: u64,
    /// The faults, by time.
    pub faults: Vec<Fault>,
}

/// One invariant a run broke, with its first violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name (or [`SIMULATOR_PANIC`]).
    pub invariant: String,
    /// Its first violation, in words.
    pub message: String,
}

/// How an explore run is done.
#[derive(Debug, Clone, Copy)]
pub struct ExploreOptions {
    /// How many schedules.
    pub schedules: usize,
    /// The seed every schedule is drawn from.
    pub seed: u64,
    /// Worker threads (at least 1).
    pub jobs: usize,
    /// At most this many violating schedules are shrunk per invariant (the first by index).
    pub shrink_limit: usize,
}

/// Which phase a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Running the drawn schedules.
    Running,
    /// Shrinking the violating ones.
    Shrinking,
}

/// Where an explore run is.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The phase.
    pub phase: Phase,
    /// Done in this phase.
    pub done: usize,
    /// To do in this phase.
    pub total: usize,
}

/// A minimal failing scenario.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The index of the schedule it was shrunk from.
    pub index: usize,
    /// The invariant it violates.
    pub invariant: String,
    /// Its first violation in the minimal run.
    pub message: String,
    /// Faults before shrinking.
    pub faults_before: usize,
    /// The minimal schedule.
    pub schedule: Schedule,
    /// Other violating schedules that shrank to the same shape (see [`Outcome::summary`]).
    pub similar: usize,
    /// A file name for it (`<invariant>-<index>.toml`).
    pub file_name: String,
    /// The scenario file.
    pub text: String,
}

/// What an explore run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The base file.
    pub file: String,
    /// The explore seed.
    pub seed: u64,
    /// Schedules run.
    pub schedules: usize,
    /// Schedules that violated at least one invariant.
    pub violating: usize,
    /// Per invariant (every one, in the report's order; a panic last when one happened): how
    /// many schedules violated it, and how many of those were shrunk.
    pub by_invariant: Vec<(String, usize, usize)>,
    /// Minimal failing scenarios, one per invariant and shape (kinds in order, and how many
    /// hosts or VMs each hits), the first by schedule index.
    pub findings: Vec<Finding>,
}

impl Outcome {
    /// No schedule violated an invariant.
    pub fn ok(&self) -> bool {
        self.violating == 0
    }

    /// The summary: schedules run, violations by invariant, the files (as written into
    /// `out_dir`). Deterministic for a seed (no wall time in it).
    pub fn summary(&self, out_dir: &str) -> String {
        let mut out = format!(
            "explore {} (seed {}): {} schedules run, {} violated an invariant\n",
            self.file, self.seed, self.schedules, self.violating
        );
        for (name, n, shrunk) in &self.by_invariant {
            if *n == 0 {
                out.push_str(&format!("  {name}: ok\n"));
            } else {
                let unshrunk = if shrunk < n {
                    format!(", {} not shrunk (--shrink-limit)", n - shrunk)
                } else {
                    String::new()
                };
                out.push_str(&format!(
                    "  {name}: violated by {n} schedule{}{unshrunk}\n",
                    if *n == 1 { "" } else { "s" }
                ));
            }
        }
        if self.findings.is_empty() {
            out.push_str("files written: none\n");
        } else {
            out.push_str(&format!(
                "files written: {} in {out_dir}\n",
                self.findings.len()
            ));
            for f in &self.findings {
                let n = f.schedule.faults.len();
                let similar = if f.similar > 0 {
                    format!(" (+{} similar)", f.similar)
                } else {
                    String::new()
                };
                out.push_str(&format!(
                    "  {}: {} fault{} (schedule {}, shrunk from {}){similar}: {}\n",
                    f.file_name,
                    n,
                    if n == 1 { "" } else { "s" },
                    f.index,
                    f.faults_before,
                    f.message
                ));
            }
        }
        out.push_str(if self.ok() {
            "result: ok\n"
        } else {
            "result: FAILED\n"
        });
        out
    }
}

/// Runs a schedule and names the invariants it broke.
type Judge<'a> = dyn Fn(&Schedule) -> Vec<Violation> + Sync + 'a;

/// A base scenario ready to explore.
#[derive(Debug, Clone)]
pub struct Explorer {
    file: String,
    base: Scenario,
    sections: String,
    space: Space,
    names: Vec<(FaultKind, &'static str)>,
    allow_lies: bool,
}

impl Explorer {
    /// Reads a base scenario file and its optional `[explore]` table; lying kinds are drawn
    /// only when `allow_lies`.
    ///
    /// # Errors
    /// [`ScenarioError`] with the file, line and what is wrong (in the scenario or in
    /// `[explore]`).
    pub fn parse(text: &str, file: &str, allow_lies: bool) -> Result<Self, ScenarioError> {
        let base = Scenario::parse(text, file)?;
        let reader = Reader { text, file };
        let sections = scenario_toml::cloud_sections(text).map_err(|e| reader.err(0, e))?;
        let raw: BaseFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            reader.err(line, format!("[explore]: {}", e.message()))
        })?;
        let names = fault_kinds();
        let mut space = Space::new(&base, &names, allow_lies);
        if let Some(table) = raw.explore {
            space.narrow(table.into_inner(), &reader, allow_lies)?;
        }
        space.finish(&base).map_err(|e| reader.err(0, e))?;
        Ok(Self {
            file: file.to_owned(),
            base,
            sections,
            space,
            names,
            allow_lies,
        })
    }

    /// The base scenario.
    pub fn base(&self) -> &Scenario {
        &self.base
    }

    /// A kind's name as files write it.
    fn kind_name(&self, kind: FaultKind) -> &'static str {
        self.names
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or("unknown", |(_, n)| n)
    }

    /// The base scenario with the schedule's faults, its seed, and no expectations.
    pub fn scenario(&self, schedule: &Schedule) -> Scenario {
        let mut s = self.base.clone();
        s.expects.clear();
        s.seed = Some(schedule.seed);
        s.faults = schedule.faults.clone();
        s.faults.sort_by_key(|f| f.at);
        s
    }

    /// The scenario file of a schedule, with comments saying where it came from.
    pub fn to_toml(&self, schedule: &Schedule, comments: &[String], name: &str) -> String {
        let mut faults = schedule.faults.clone();
        faults.sort_by_key(|f| f.at);
        scenario_toml::write(
            &scenario_toml::Header {
                comments,
                name,
                description: &format!(
                    "Found by `cloudha explore` on {} ({}).",
                    self.file, self.base.name
                ),
                duration: self.base.duration,
                seed: schedule.seed,
            },
            &self.sections,
            &faults,
            |f| self.kind_name(f.kind).to_owned(),
        )
    }
}
