//! `cloudha explore`: random fault schedules on a base scenario's cloud, each run judged on the
//! invariants alone (the base file's faults and expectations are ignored), and every violation
//! shrunk (fewer faults, fewer hosts, earlier) to a minimal scenario file that `cloudha simulate`
//! reproduces. Syntax of the base file's optional `[explore]` table: docs/scenarios.md.
//!
//! Deterministic for a seed: schedule `i` is drawn from the seed and `i` alone, runs on any of
//! the worker threads, and results are ordered by schedule index; a shrink is a pure function
//! of its schedule. Each run builds its own current-thread runtime (`simulate`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::report::Invariants;
use crate::rng::Rng;
use crate::scenario::{Fault, FaultKind, Scenario, ScenarioError, Target};
use crate::scenario_toml;

/// The pseudo-invariant under which a run that panicked is reported.
pub const SIMULATOR_PANIC: &str = "simulator_panic";

/// Runs a shrink may spend on one violation.
const SHRINK_BUDGET: usize = 160;

/// Whether a fault kind (by its file name) is a lying part: drawn only with `--allow-lies`,
/// and only on the `[explore]` table's `liars`.
pub fn is_lying(name: &str) -> bool {
    matches!(name, "bmc_lies" | "neighbour_lies" | "bmc_stuck")
}

/// Every fault kind with its file name, read from `FaultKind`'s own serde derive (the variant
/// list it hands a deserializer), so a kind added to the enum is drawn here without a second
/// list to keep in step.
fn fault_kinds() -> Vec<(FaultKind, &'static str)> {
    use serde::de::{self, Visitor, value::StrDeserializer};

    /// Carries the variant names out of `deserialize_enum`.
    #[derive(Debug)]
    struct Caught(Option<&'static [&'static str]>);
    impl std::fmt::Display for Caught {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("variant names")
        }
    }
    impl std::error::Error for Caught {}
    impl de::Error for Caught {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Caught(None)
        }
    }
    struct Names;
    impl<'de> de::Deserializer<'de> for Names {
        type Error = Caught;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Caught> {
            Err(Caught(None))
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Caught> {
            Err(Caught(Some(variants)))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map struct
            identifier ignored_any
        }
    }
    let names = match FaultKind::deserialize(Names) {
        Err(Caught(Some(names))) => names,
        _ => &[],
    };
    let mut kinds: Vec<(FaultKind, &'static str)> = Vec::new();
    for name in names {
        let kind = FaultKind::deserialize(StrDeserializer::<de::value::Error>::new(name));
        if let Ok(kind) = kind
            && !kinds.iter().any(|(k, _)| *k == kind)
        {
            kinds.push((kind, name));
        }
    }
    kinds
}

/// What a kind's faults aim at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aim {
    Hosts,
    Vms,
    Nothing,
}

/// A kind the explorer may draw.
#[derive(Debug, Clone, Copy)]
struct Kind {
    kind: FaultKind,
    name: &'static str,
    aim: Aim,
    lying: bool,
    /// Takes a `duration` (heals after it, or for `manager_restart`, the downtime). Healing
    /// kinds (`power_on`, `mgmt_heal`, ...) and `vm_crash` are instants.
    lasts: bool,
}

/// The space schedules are drawn from: the defaults, narrowed by `[explore]`.
#[derive(Debug, Clone)]
struct Space {
    faults: (usize, usize),
    kinds: Vec<Kind>,
    hosts: Vec<String>,
    liars: Vec<String>,
    vms: Vec<String>,
    targets: (usize, usize),
    at: (Duration, Duration),
    lasting: (Duration, Duration),
    heal: f64,
    delay: (Duration, Duration),
    run: Duration,
}

impl Space {
    /// The defaults on `base`'s cloud: every kind (lying ones when allowed), every host.
    fn new(base: &Scenario, names: &[(FaultKind, &'static str)], allow_lies: bool) -> Self {
        let heals: Vec<FaultKind> = names.iter().filter_map(|(k, _)| k.heal()).collect();
        let kinds = names
            .iter()
            .map(|&(kind, name)| {
                let aim = match kind.needs() {
                    Target::Hosts => Aim::Hosts,
                    Target::Vms => Aim::Vms,
                    Target::Nothing => Aim::Nothing,
                };
                Kind {
                    kind,
                    name,
                    aim,
                    lying: is_lying(name),
                    lasts: aim != Aim::Vms && !heals.contains(&kind),
                }
            })
            .filter(|k| !k.lying || allow_lies)
            .collect();
        let hosts = host_names(base).map(|(host, _)| host).collect();
        Self {
            faults: (1, 4),
            kinds,
            hosts,
            liars: Vec::new(),
            vms: Vec::new(),
            targets: (1, 2),
            // From the time every agent has connected (each connects at an offset within the
            // first ping interval): a fault before the cloud is up tests nothing HA does.
            at: (
                (base.config.ping_interval * 2).min(base.duration),
                base.duration.saturating_sub(Duration::from_secs(1)),
            ),
            lasting: (Duration::from_secs(10), Duration::from_secs(600)),
            heal: 0.75,
            delay: (Duration::from_secs(1), Duration::from_secs(180)),
            run: base.duration,
        }
    }

    /// Applies the `[explore]` table. `liars` is left empty when the table does not name them
    /// (`finish` makes them the hosts).
    fn narrow(
        &mut self,
        t: RawExplore,
        r: &Reader<'_>,
        allow_lies: bool,
    ) -> Result<(), ScenarioError> {
        if let Some(v) = &t.faults {
            self.faults = r.counts(v, "faults")?;
            if self.faults.0 == 0 || self.faults.1 > 50 {
                return Err(r.at(v, "`faults` must be within 1..=50"));
            }
        }
        if let Some(v) = &t.targets {
            self.targets = r.counts(v, "targets")?;
            if self.targets.0 == 0 {
                return Err(r.at(v, "`targets` must be at least 1"));
            }
        }
        if let Some(v) = &t.kinds {
            let all: Vec<&str> = fault_kinds().iter().map(|(_, n)| *n).collect();
            let chosen = r
                .names(v, "kinds", "fault kind", |n| all.contains(&n))
                .map_err(|mut e| {
                    if e.message.contains("unknown fault kind") {
                        e.message = format!("{} (known: {})", e.message, all.join(", "));
                    }
                    e
                })?;
            if let Some(lie) = chosen.iter().find(|n| is_lying(n))
                && !allow_lies
            {
                return Err(r.at(
                    v,
                    &format!("`kinds`: `{lie}` is a lying kind; pass --allow-lies to draw it"),
                ));
            }
            self.kinds.retain(|k| chosen.iter().any(|n| n == k.name));
        }
        let every_host = self.hosts.clone();
        let in_host_order = |list: Vec<String>| -> Vec<String> {
            every_host
                .iter()
                .filter(|h| list.contains(h))
                .cloned()
                .collect()
        };
        if let Some(v) = &t.hosts {
            let named = r.names(v, "hosts", "host", |n| every_host.iter().any(|h| h == n))?;
            self.hosts = in_host_order(named);
        }
        if let Some(v) = &t.liars {
            let named = r.names(v, "liars", "host", |n| every_host.iter().any(|h| h == n))?;
            self.liars = in_host_order(named);
        }
        if let Some(v) = &t.at {
            self.at = r.durations(v, "at")?;
            if self.at.1 > self.run {
                return Err(r.at(
                    v,
                    &format!(
                        "`at`: {} is after the scenario's `duration` ({})",
                        cloudha_protocol::duration::format(self.at.1),
                        cloudha_protocol::duration::format(self.run)
                    ),
                ));
            }
        }
        if let Some(v) = &t.duration {
            self.lasting = r.durations(v, "duration")?;
            if self.lasting.0.is_zero() {
                return Err(r.at(v, "`duration` must be greater than zero"));
            }
        }
        if let Some(v) = &t.delay {
            self.delay = r.durations(v, "delay")?;
        }
        if let Some(v) = &t.heal {
            self.heal = match v.get_ref() {
                toml::Value::Float(f) => Some(*f),
                toml::Value::Integer(n) => Some(*n as f64),
                _ => None,
            }
            .filter(|p| (0.0..=1.0).contains(p))
            .ok_or_else(|| r.at(v, "`heal` must be a probability from 0 to 1"))?;
        }
        Ok(())
    }

    /// Liars default to the hosts; the VMs are those of the hosts; kinds with nothing to hit
    /// are dropped. An error when no kind is left.
    fn finish(&mut self, base: &Scenario) -> Result<(), String> {
        if self.liars.is_empty() {
            self.liars = self.hosts.clone();
        }
        self.vms = host_names(base)
            .filter(|(host, _)| self.hosts.contains(host))
            .flat_map(|(host, vms)| (1..=vms).map(move |v| format!("{host}-vm{v}")))
            .collect();
        let (hosts, vms, liars) = (
            !self.hosts.is_empty(),
            !self.vms.is_empty(),
            !self.liars.is_empty(),
        );
        self.kinds.retain(|k| match k.aim {
            Aim::Hosts if k.lying => liars,
            Aim::Hosts => hosts,
            Aim::Vms => vms,
            Aim::Nothing => true,
        });
        if self.kinds.is_empty() {
            return Err(
                "[explore]: no fault kind can be drawn (vm_crash needs hosts with VMs)".into(),
            );
        }
        Ok(())
    }
}

/// Every host of the base's cloud, in order, with its number of VMs.
fn host_names(base: &Scenario) -> impl Iterator<Item = (String, u32)> + '_ {
    base.clusters
        .iter()
        .flat_map(|c| (1..=c.hosts).map(move |h| (format!("{}-h{h}", c.name), c.vms_per_host)))
}

/// Reads the values of `[explore]`; every error names the file and the value's line.
struct Reader<'a> {
    text: &'a str,
    file: &'a str,
}

impl Reader<'_> {
    fn err(&self, line: usize, message: impl std::fmt::Display) -> ScenarioError {
        ScenarioError {
            file: self.file.to_owned(),
            line,
            message: message.to_string(),
        }
    }

    /// An error about value `v` of `[explore]`.
    fn at(&self, v: &Spanned<toml::Value>, message: &str) -> ScenarioError {
        self.err(
            line_of(self.text, v.span().start),
            format!("[explore] {message}"),
        )
    }

    /// `[min, max]` or one value of items read by `item`.
    fn range(
        &self,
        v: &Spanned<toml::Value>,
        key: &str,
        what: &str,
        item: impl Fn(&toml::Value) -> Option<u64>,
    ) -> Result<(u64, u64), ScenarioError> {
        let bad = || self.at(v, &format!("`{key}` must be {what} or [min, max] of them"));
        let (lo, hi) = match v.get_ref() {
            toml::Value::Array(a) if a.len() == 2 => {
                (item(&a[0]).ok_or_else(bad)?, item(&a[1]).ok_or_else(bad)?)
            }
            one => {
                let n = item(one).ok_or_else(bad)?;
                (n, n)
            }
        };
        if lo > hi {
            return Err(self.at(v, &format!("`{key}`: min is above max")));
        }
        Ok((lo, hi))
    }

    fn counts(&self, v: &Spanned<toml::Value>, key: &str) -> Result<(usize, usize), ScenarioError> {
        let whole = |v: &toml::Value| v.as_integer().and_then(|n| u64::try_from(n).ok());
        let (lo, hi) = self.range(v, key, "a whole number", whole)?;
        Ok((lo as usize, hi as usize))
    }

    fn durations(
        &self,
        v: &Spanned<toml::Value>,
        key: &str,
    ) -> Result<(Duration, Duration), ScenarioError> {
        let ms = |v: &toml::Value| {
            v.as_str()
                .and_then(|s| cloudha_protocol::duration::parse(s).ok())
                .and_then(|d| u64::try_from(d.as_millis()).ok())
        };
        let (lo, hi) = self.range(v, key, "a duration such as \"5m\"", ms)?;
        Ok((Duration::from_millis(lo), Duration::from_millis(hi)))
    }

    /// A non-empty list of names that `known` accepts, without repeats.
    fn names(
        &self,
        v: &Spanned<toml::Value>,
        key: &str,
        what: &str,
        known: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, ScenarioError> {
        let list = v
            .get_ref()
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                self.at(
                    v,
                    &format!("`{key}` must be a non-empty list of {what} names"),
                )
            })?;
        let mut out: Vec<String> = Vec::new();
        for item in list {
            let name = item
                .as_str()
                .ok_or_else(|| self.at(v, &format!("`{key}`: {item} is not a name")))?;
            if !known(name) {
                return Err(self.at(v, &format!("`{key}`: unknown {what} `{name}`")));
            }
            if !out.iter().any(|o| o == name) {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }
}

/// The `[explore]` table as written (each value checked by hand, for messages with lines).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExplore {
    faults: Option<Spanned<toml::Value>>,
    kinds: Option<Spanned<toml::Value>>,
    hosts: Option<Spanned<toml::Value>>,
    liars: Option<Spanned<toml::Value>>,
    targets: Option<Spanned<toml::Value>>,
    at: Option<Spanned<toml::Value>>,
    duration: Option<Spanned<toml::Value>>,
    heal: Option<Spanned<toml::Value>>,
    delay: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
struct BaseFile {
    #[serde(default)]
    explore: Option<Spanned<RawExplore>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(0, |t| t.matches('\n').count() + 1)
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

    /// Schedule `index` of the run seeded `seed`.
    pub fn draw(&self, seed: u64, index: usize) -> Schedule {
        let s = &self.space;
        let mut rng = Rng(Rng(seed).next() ^ Rng(!(index as u64)).next());
        let run_seed = rng.next() >> 34;
        let n = rng.range(s.faults.0, s.faults.1);
        let mut faults = Vec::with_capacity(n);
        for _ in 0..n {
            let k = s.kinds[rng.range(0, s.kinds.len() - 1)];
            let at = rng.duration(s.at.0, s.at.1);
            let targets = rng.range(s.targets.0, s.targets.1);
            let (hosts, vms) = match k.aim {
                Aim::Hosts if k.lying => (rng.pick(&s.liars, targets), Vec::new()),
                Aim::Hosts => (rng.pick(&s.hosts, targets), Vec::new()),
                Aim::Vms => (Vec::new(), rng.pick(&s.vms, targets)),
                Aim::Nothing => (Vec::new(), Vec::new()),
            };
            let duration = if k.lasts && rng.chance(s.heal) {
                let hi = s.lasting.1.min(s.run.saturating_sub(at));
                (hi >= s.lasting.0).then(|| rng.duration(s.lasting.0, hi))
            } else {
                None
            };
            let delay =
                (k.kind == FaultKind::PingDelay).then(|| rng.duration(s.delay.0, s.delay.1));
            faults.push(Fault {
                at,
                kind: k.kind,
                hosts,
                vms,
                duration,
                delay,
            });
        }
        faults.sort_by_key(|f| f.at);
        Schedule {
            seed: run_seed,
            faults,
        }
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

    /// Runs a schedule; the invariants it broke (a panic counts as [`SIMULATOR_PANIC`]).
    pub fn judge(&self, schedule: &Schedule) -> Vec<Violation> {
        let scenario = self.scenario(schedule);
        match catch_unwind(AssertUnwindSafe(|| {
            crate::simulate(&scenario, schedule.seed)
        })) {
            Ok(report) => report
                .invariants
                .all()
                .iter()
                .filter(|(_, i)| !i.ok)
                .map(|(name, i)| Violation {
                    invariant: (*name).to_owned(),
                    message: i.violations.first().cloned().unwrap_or_default(),
                })
                .collect(),
            Err(payload) => vec![Violation {
                invariant: SIMULATOR_PANIC.to_owned(),
                message: payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned()),
            }],
        }
    }

    /// Shrinks a schedule that violates `invariant` to a minimal one that still does; returns
    /// it with the violation's message in the minimal run.
    pub fn shrink(&self, schedule: Schedule, invariant: &str) -> (Schedule, Option<String>) {
        self.shrink_with(schedule, invariant, &|s| self.judge(s))
    }

    fn shrink_with(
        &self,
        schedule: Schedule,
        invariant: &str,
        judge: &Judge<'_>,
    ) -> (Schedule, Option<String>) {
        let mut message = None;
        let minimal = shrink(&self.space, schedule, SHRINK_BUDGET, |s| {
            match judge(s).into_iter().find(|v| v.invariant == invariant) {
                Some(v) => {
                    message = Some(v.message);
                    true
                }
                None => false,
            }
        });
        (minimal, message)
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

    /// Draws and runs `options.schedules` schedules on `options.jobs` threads, then shrinks
    /// the violating ones; `progress` is told as schedules finish (from any thread).
    pub fn run(&self, options: &ExploreOptions, progress: &(dyn Fn(Progress) + Sync)) -> Outcome {
        self.run_with(options, progress, &|s| self.judge(s))
    }

    /// [`Explorer::run`] with another judge (tests give a synthetic one).
    fn run_with(
        &self,
        options: &ExploreOptions,
        progress: &(dyn Fn(Progress) + Sync),
        judge: &Judge<'_>,
    ) -> Outcome {
        let total = options.schedules;
        let verdicts = parallel(
            total,
            options.jobs,
            |i| judge(&self.draw(options.seed, i)),
            &|done| {
                progress(Progress {
                    phase: Phase::Running,
                    done,
                    total,
                });
            },
        );

        let mut order: Vec<String> = Invariants::default()
            .all()
            .iter()
            .map(|(n, _)| (*n).to_owned())
            .collect();
        for v in verdicts.iter().flatten() {
            if !order.contains(&v.invariant) {
                order.push(v.invariant.clone());
            }
        }
        let mut by_invariant: Vec<(String, usize, usize)> =
            order.iter().map(|n| (n.clone(), 0, 0)).collect();
        let mut jobs: Vec<(usize, String)> = Vec::new();
        for (i, found) in verdicts.iter().enumerate() {
            for v in found {
                if let Some(row) = by_invariant.iter_mut().find(|r| r.0 == v.invariant) {
                    row.1 += 1;
                    if row.2 < options.shrink_limit {
                        row.2 += 1;
                        jobs.push((i, v.invariant.clone()));
                    }
                }
            }
        }

        let shrunk = parallel(
            jobs.len(),
            options.jobs,
            |j| {
                let (index, invariant) = &jobs[j];
                let start = self.draw(options.seed, *index);
                let before = start.faults.len();
                let (minimal, message) = self.shrink_with(start, invariant, judge);
                (before, minimal, message)
            },
            &|done| {
                progress(Progress {
                    phase: Phase::Shrinking,
                    done,
                    total: jobs.len(),
                });
            },
        );

        let mut findings: Vec<Finding> = Vec::new();
        for ((index, invariant), (before, minimal, message)) in jobs.into_iter().zip(shrunk) {
            let message = message.unwrap_or_else(|| {
                verdicts[index]
                    .iter()
                    .find(|v| v.invariant == invariant)
                    .map(|v| v.message.clone())
                    .unwrap_or_default()
            });
            if let Some(f) = findings
                .iter_mut()
                .find(|f| f.invariant == invariant && shape(&f.schedule) == shape(&minimal))
            {
                f.similar += 1;
                continue;
            }
            let file_name = format!("{invariant}-{index}.toml");
            let comments = vec![
                format!(
                    "Found by `cloudha explore {} --seed {}{}`: schedule {index}, shrunk from {before} fault(s) to {}.",
                    self.file,
                    options.seed,
                    if self.allow_lies { " --allow-lies" } else { "" },
                    minimal.faults.len()
                ),
                format!("Violates `{invariant}`: {message}"),
                format!("Reproduce: cloudha simulate {file_name}"),
            ];
            let name = format!(
                "{}: {invariant} (explore seed {}, schedule {index})",
                self.base.name, options.seed
            );
            let text = self.to_toml(&minimal, &comments, &name);
            findings.push(Finding {
                index,
                invariant,
                message,
                faults_before: before,
                schedule: minimal,
                similar: 0,
                file_name,
                text,
            });
        }
        Outcome {
            file: self.file.clone(),
            seed: options.seed,
            schedules: total,
            violating: verdicts.iter().filter(|v| !v.is_empty()).count(),
            by_invariant: by_invariant
                .into_iter()
                .filter(|(name, n, _)| *n > 0 || name != SIMULATOR_PANIC)
                .collect(),
            findings,
        }
    }
}

/// What two minimal schedules must share to count as one finding: the same kinds in the same
/// order, each on as many hosts or VMs (which hosts, the times, durations and the run's seed
/// may differ: a power loss of kvm-h1 and one of kvm-h2 are the same finding).
fn shape(s: &Schedule) -> Vec<(FaultKind, usize, usize)> {
    s.faults
        .iter()
        .map(|f| (f.kind, f.hosts.len(), f.vms.len()))
        .collect()
}

/// `f(0..n)` on `jobs` scoped threads pulling indices from one counter; results in index
/// order, whatever the threads' timing. `tick(done)` after each item.
fn parallel<T: Send>(
    n: usize,
    jobs: usize,
    f: impl Fn(usize) -> T + Sync,
    tick: &(dyn Fn(usize) + Sync),
) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let mut results: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs.clamp(1, n.max(1)))
            .map(|w| {
                let (next, done, f) = (&next, &done, &f);
                std::thread::Builder::new()
                    .name(format!("explore-{w}"))
                    .spawn_scoped(scope, move || {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                break mine;
                            }
                            mine.push((i, f(i)));
                            tick(done.fetch_add(1, Ordering::Relaxed) + 1);
                        }
                    })
                    .expect("a worker thread")
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| match w.join() {
                Ok(mine) => mine,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, t)| t).collect()
}

/// Shrinks `start` while `fails` holds: fewer faults, then fewer hosts (or VMs) per fault,
/// then each fault as early as the space allows (a bisection to the second), repeated until a
/// pass changes nothing or `budget` runs are spent. Greedy: the result is minimal in the
/// sense that no single one of those steps keeps it failing.
fn shrink(
    space: &Space,
    start: Schedule,
    budget: usize,
    mut fails: impl FnMut(&Schedule) -> bool,
) -> Schedule {
    let runs = std::cell::Cell::new(0);
    let mut check = |s: &Schedule| {
        if runs.get() >= budget {
            return false;
        }
        runs.set(runs.get() + 1);
        fails(s)
    };
    let mut best = start;
    // Faults already moved as early as they go (by value: positions shift as faults go).
    let mut settled: Vec<Fault> = Vec::new();
    loop {
        let before = best.clone();
        let mut i = 0;
        while i < best.faults.len() {
            let mut c = best.clone();
            c.faults.remove(i);
            if check(&c) {
                best = c;
            } else {
                i += 1;
            }
        }
        for i in 0..best.faults.len() {
            let mut j = 0;
            while best.faults[i].hosts.len() + best.faults[i].vms.len() > 1 {
                let f = &best.faults[i];
                if j >= f.hosts.len() + f.vms.len() {
                    break;
                }
                let mut c = best.clone();
                let g = &mut c.faults[i];
                if j < g.hosts.len() {
                    g.hosts.remove(j);
                } else {
                    g.vms.remove(j - g.hosts.len());
                }
                if check(&c) {
                    best = c;
                } else {
                    j += 1;
                }
            }
        }
        for i in 0..best.faults.len() {
            if settled.contains(&best.faults[i]) || best.faults[i].at <= space.at.0 {
                continue;
            }
            let with_at = |best: &Schedule, at: Duration| {
                let mut c = best.clone();
                c.faults[i].at = at;
                c
            };
            let (mut lo, mut hi) = (space.at.0, best.faults[i].at);
            let c = with_at(&best, lo);
            if check(&c) {
                best = c;
            } else {
                while hi.saturating_sub(lo) > Duration::from_secs(1) {
                    let mid = lo + Duration::from_secs(hi.saturating_sub(lo).as_secs() / 2);
                    let c = with_at(&best, mid);
                    if check(&c) {
                        best = c;
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
            }
            settled.push(best.faults[i].clone());
        }
        if best == before || runs.get() >= budget {
            break;
        }
    }
    best.faults.sort_by_key(|f| f.at);
    best
}

#[cfg(test)]
mod tests {
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
        Explorer::parse(&format!("{BASE}{extra}"), "base.toml", false)
            .unwrap_or_else(|e| panic!("{e}"))
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
                        assert!(
                            delay >= Duration::from_secs(10) && delay <= Duration::from_secs(20)
                        );
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
        let e =
            explorer("\n[explore]\nfaults = [3, 6]\ntargets = [1, 4]\nat = [\"2m\", \"25m\"]\n");
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
}
