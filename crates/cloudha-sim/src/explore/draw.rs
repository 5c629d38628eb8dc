//! The space schedules are drawn from (every fault kind, narrowed by the base file's
//! `[explore]` table), the reading of that table, and the drawing of one schedule.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Explorer, Schedule, is_lying};
use crate::rng::Rng;
use crate::scenario::{Fault, FaultKind, Scenario, ScenarioError, Target};

/// Every fault kind with its file name, read from `FaultKind`'s own serde derive (the variant
/// list it hands a deserializer), so a kind added to the enum is drawn here without a second
/// list to keep in step.
pub(super) fn fault_kinds() -> Vec<(FaultKind, &'static str)> {
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
pub(super) struct Space {
    faults: (usize, usize),
    kinds: Vec<Kind>,
    hosts: Vec<String>,
    liars: Vec<String>,
    vms: Vec<String>,
    targets: (usize, usize),
    pub(super) at: (Duration, Duration),
    lasting: (Duration, Duration),
    heal: f64,
    delay: (Duration, Duration),
    run: Duration,
}

impl Space {
    /// The defaults on `base`'s cloud: every kind (lying ones when allowed), every host.
    pub(super) fn new(
        base: &Scenario,
        names: &[(FaultKind, &'static str)],
        allow_lies: bool,
    ) -> Self {
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
                (base.config.liveness.ping_interval * 2).min(base.duration),
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
    pub(super) fn narrow(
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
    pub(super) fn finish(&mut self, base: &Scenario) -> Result<(), String> {
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
pub(super) struct Reader<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a str,
}

impl Reader<'_> {
    pub(super) fn err(&self, line: usize, message: impl std::fmt::Display) -> ScenarioError {
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
pub(super) struct RawExplore {
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
pub(super) struct BaseFile {
    #[serde(default)]
    pub(super) explore: Option<Spanned<RawExplore>>,
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(0, |t| t.matches('\n').count() + 1)
}

impl Explorer {
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
}
