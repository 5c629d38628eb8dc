//! Scenario files (TOML; see `docs/scenarios.md`): parsed, then checked into a typed
//! [`Scenario`]. Every error names the file, the line and what is wrong.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use cloudha_liveness::Config;
use cloudha_protocol::{Status, VmState};
use serde::Deserialize;
use toml::Spanned;

/// A scenario file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ScenarioError {
    /// The file.
    pub file: String,
    /// The line (1-based; 0 when unknown).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// The hypervisor of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hypervisor {
    /// KVM: connected agents, storage heartbeat.
    Kvm,
    /// XenServer: direct agents.
    Xenserver,
    /// VMware: direct agents; VMs left to vSphere HA.
    Vmware,
    /// CloudStack's simulator hypervisor: direct agents.
    Simulator,
}

/// Where VM root disks live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// Shared primary storage: VMs can restart elsewhere.
    Shared,
    /// Host-local storage: a VM's fate is its host's.
    Local,
}

/// How KVM hosts fence themselves when their heartbeat fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SelfFence {
    /// CloudStack's: the agent writes the heartbeat and reboots the host (dies with the agent).
    #[default]
    Agent,
    /// A watchdog independent of the agent.
    Independent,
}

/// A cluster of the simulated cloud.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Name; hosts are `<name>-h<i>`, VMs `<name>-h<i>-vm<j>`.
    pub name: String,
    /// Pod name.
    #[serde(default)]
    pub pod: Option<String>,
    /// Zone name.
    #[serde(default)]
    pub zone: Option<String>,
    /// Hypervisor.
    pub hypervisor: Hypervisor,
    /// Number of hosts.
    pub hosts: u32,
    /// VMs per host.
    #[serde(default)]
    pub vms_per_host: u32,
    /// Of each host's VMs, the first round(n × fraction) have HA.
    #[serde(default = "one")]
    pub ha_fraction: f64,
    /// Root disk storage.
    #[serde(default = "shared")]
    pub storage: Storage,
    /// VMs a host can run.
    pub capacity_per_host: u32,
    /// KVM self-fencing.
    #[serde(default)]
    pub self_fence: SelfFence,
}

fn one() -> f64 {
    1.0
}

fn shared() -> Storage {
    Storage::Shared
}

/// What a fault does (see `docs/scenarios.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The host stops at once; its link goes silent.
    PowerOff,
    /// The host boots; its agent connects again.
    PowerOn,
    /// The agent dies and its link closes; VMs keep running.
    AgentCrash,
    /// The agent starts again.
    AgentRestart,
    /// Manager↔host traffic dropped both ways.
    MgmtPartition,
    /// Ends a management partition.
    MgmtHeal,
    /// Host↔its cluster neighbours traffic dropped.
    NeighbourPartition,
    /// Ends a neighbour partition.
    NeighbourHeal,
    /// Heartbeat writes fail.
    StorageLoss,
    /// Heartbeat writes work again.
    StorageHeal,
    /// Only that host's pings are dropped.
    PingLoss,
    /// That host's pings are delayed by `delay`.
    PingDelay,
    /// The host's BMC does not answer.
    BmcUnreachable,
    /// The host's BMC carries out an Off but answers it with an error (a lost answer); power
    /// status reads still work.
    BmcOffFails,
    /// Lying part: the BMCs of those hosts report Off and accept Off while the hosts run on.
    BmcLies,
    /// Lying part: every neighbour reports the heartbeat of those hosts dead (CheckOnHost and
    /// Fence answers, ages included) while it is fresh.
    NeighbourLies,
    /// Lying part: the BMCs of those hosts report On and ignore Off, whatever the truth.
    BmcStuck,
    /// No VM can start on those hosts.
    NoCapacity,
    /// A VM process dies on a live host.
    VmCrash,
    /// The manager process restarts (stores survive).
    ManagerRestart,
}

impl FaultKind {
    /// The fault that undoes this one after its `duration`.
    pub const fn heal(self) -> Option<FaultKind> {
        Some(match self {
            Self::PowerOff => Self::PowerOn,
            Self::AgentCrash => Self::AgentRestart,
            Self::MgmtPartition => Self::MgmtHeal,
            Self::NeighbourPartition => Self::NeighbourHeal,
            Self::StorageLoss => Self::StorageHeal,
            Self::PingLoss
            | Self::PingDelay
            | Self::BmcUnreachable
            | Self::BmcOffFails
            | Self::BmcLies
            | Self::NeighbourLies
            | Self::BmcStuck
            | Self::NoCapacity => {
                return None;
            }
            _ => return None,
        })
    }

    pub(crate) fn needs(self) -> Target {
        match self {
            Self::VmCrash => Target::Vms,
            Self::ManagerRestart => Target::Nothing,
            _ => Target::Hosts,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Hosts,
    Vms,
    Nothing,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    at: String,
    kind: FaultKind,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    vms: Vec<String>,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    delay: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    host: Option<String>,
    vm: Option<String>,
    alert: Option<String>,
    status: Option<String>,
    state: Option<String>,
    by: Option<String>,
    after: Option<String>,
    never: Option<bool>,
    on: Option<String>,
    not_on: Option<String>,
    restarted: Option<bool>,
    min: Option<u64>,
    max: Option<u64>,
    proof: Option<String>,
    bmc_calls: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    duration: Spanned<String>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    config: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    cluster: Vec<Spanned<ClusterSpec>>,
    #[serde(default)]
    fault: Vec<Spanned<RawFault>>,
    #[serde(default)]
    expect: Vec<Spanned<RawExpect>>,
    #[serde(default)]
    violates: Option<Spanned<String>>,
    /// `[explore]`: read by `cloudha explore` (explore.rs); a run ignores it.
    #[serde(default, rename = "explore")]
    _explore: Option<serde::de::IgnoredAny>,
}

/// One fault, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// When, from the start.
    pub at: Duration,
    /// What.
    pub kind: FaultKind,
    /// Host names.
    pub hosts: Vec<String>,
    /// VM names.
    pub vms: Vec<String>,
    /// Heals after this long.
    pub duration: Option<Duration>,
    /// For `ping_delay`.
    pub delay: Option<Duration>,
}

/// One expectation, resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// The host enters `status` at some moment in [`after`, `by`].
    HostStatus {
        /// Host name.
        host: String,
        /// The status.
        status: Status,
        /// Earliest.
        after: Duration,
        /// Latest.
        by: Duration,
    },
    /// The host never enters `status`.
    HostNever {
        /// Host name.
        host: String,
        /// The status.
        status: Status,
    },
    /// The VM's last placement at or before `by` has `state` (and host).
    VmState {
        /// VM name.
        vm: String,
        /// Running or Stopped.
        state: VmState,
        /// When.
        by: Duration,
        /// On this host.
        on: Option<String>,
        /// Not on this host.
        not_on: Option<String>,
    },
    /// The VM is never restarted.
    VmNotRestarted {
        /// VM name.
        vm: String,
    },
    /// How many HA work items recorded a death proof of a kind.
    ProofCount {
        /// Proof kind (snake_case: power_fenced, pool_fenced, self_fenced, dead_verdict,
        /// vm_reported_off, operator_word).
        kind: String,
        /// At least.
        min: Option<u64>,
        /// At most.
        max: Option<u64>,
    },
    /// How many calls the host's BMC received (status, off, reset), in ground truth.
    BmcCalls {
        /// Host name.
        host: String,
        /// At least.
        min: Option<u64>,
        /// At most.
        max: Option<u64>,
    },
    /// How many alerts of a kind.
    AlertCount {
        /// Alert kind (snake_case).
        kind: String,
        /// At least.
        min: Option<u64>,
        /// At most.
        max: Option<u64>,
    },
}

/// What the simulated hosts really do (the `sim.*` keys of `[config]`). The manager's own
/// assumptions about the same timings are its `kvm.heartbeat.*` and `xen.heartbeat.*` keys;
/// both default to the same values, and a scenario may make them disagree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimTimings {
    /// `sim.heartbeat.interval`: a KVM host writes its storage heartbeat this often.
    pub heartbeat_interval: Duration,
    /// `sim.heartbeat.staleness`: a neighbour reads a KVM heartbeat older than this as dead.
    pub heartbeat_staleness: Duration,
    /// `sim.heartbeat.write.retries`: failed writes retried this often before the host reboots.
    pub heartbeat_write_retries: u32,
    /// `sim.heartbeat.retry.interval`: the pause between those retries.
    pub heartbeat_retry_interval: Duration,
    /// `sim.boot.time`: how long a host takes to boot after a self-reboot.
    pub boot_time: Duration,
    /// `sim.xen.heartbeat.interval`: a XenServer host writes its pool heartbeat this often.
    pub xen_heartbeat_interval: Duration,
    /// `sim.xen.heartbeat.staleness`: a pool member reads a pool heartbeat older than this as dead.
    pub xen_heartbeat_staleness: Duration,
    /// `sim.xen.self.reboot.timeout`: a XenServer host that could not write its pool heartbeat
    /// for this long reboots itself.
    pub xen_self_reboot_timeout: Duration,
}

impl Default for SimTimings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(60),
            heartbeat_staleness: Duration::from_secs(60),
            heartbeat_write_retries: 5,
            heartbeat_retry_interval: Duration::from_secs(10),
            boot_time: Duration::from_secs(300),
            xen_heartbeat_interval: Duration::from_secs(10),
            xen_heartbeat_staleness: Duration::from_secs(30),
            xen_self_reboot_timeout: Duration::from_secs(30),
        }
    }
}

impl SimTimings {
    /// Sets one `sim.*` key (other than `sim.liveness.bound`); `Ok(false)`: not a timing key.
    fn set(&mut self, key: &str, value: &toml::Value) -> Result<bool, String> {
        let duration = |v: &toml::Value| -> Result<Duration, String> {
            match v {
                toml::Value::String(s) => {
                    cloudha_protocol::duration::parse(s).map_err(|e| e.to_string())
                }
                toml::Value::Integer(n) if *n >= 0 => Ok(Duration::from_secs(*n as u64)),
                _ => Err("must be a duration such as \"60s\"".into()),
            }
        };
        let slot = match key {
            "sim.heartbeat.interval" => &mut self.heartbeat_interval,
            "sim.heartbeat.staleness" => &mut self.heartbeat_staleness,
            "sim.heartbeat.retry.interval" => &mut self.heartbeat_retry_interval,
            "sim.boot.time" => &mut self.boot_time,
            "sim.xen.heartbeat.interval" => &mut self.xen_heartbeat_interval,
            "sim.xen.heartbeat.staleness" => &mut self.xen_heartbeat_staleness,
            "sim.xen.self.reboot.timeout" => &mut self.xen_self_reboot_timeout,
            "sim.heartbeat.write.retries" => {
                self.heartbeat_write_retries = value
                    .as_integer()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n <= 1000)
                    .ok_or("must be a whole number from 0 to 1000")?;
                return Ok(true);
            }
            _ => return Ok(false),
        };
        let d = duration(value)?;
        if d.is_zero() && key != "sim.heartbeat.retry.interval" {
            return Err("must be greater than zero".into());
        }
        *slot = d;
        Ok(true)
    }
}

/// The simulator's own keys, for error messages.
pub const SIM_KEYS: &[&str] = &[
    "sim.liveness.bound",
    "sim.heartbeat.interval",
    "sim.heartbeat.staleness",
    "sim.heartbeat.write.retries",
    "sim.heartbeat.retry.interval",
    "sim.boot.time",
    "sim.xen.heartbeat.interval",
    "sim.xen.heartbeat.staleness",
    "sim.xen.self.reboot.timeout",
];

/// A checked scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Virtual run time.
    pub duration: Duration,
    /// Seed from the file.
    pub seed: Option<u64>,
    /// The manager config.
    pub config: Config,
    /// `sim.liveness.bound`.
    pub liveness_bound: Duration,
    /// What the simulated hosts really do (`sim.*` timing keys).
    pub sim: SimTimings,
    /// Clusters.
    pub clusters: Vec<ClusterSpec>,
    /// Faults, by time.
    pub faults: Vec<Fault>,
    /// Expectations.
    pub expects: Vec<Expect>,
    /// `violates`: a must-fail scenario names an invariant it must break (`cloudha simulate`
    /// still exits 1 on it; the must-fail test checks the invariant is among the broken).
    pub violates: Option<String>,
}

/// The invariants a `violates` key may name.
pub const INVARIANTS: &[&str] = &[
    "no_double_run",
    "no_unsafe_start",
    "ha_liveness",
    "no_unwanted_restart",
    "no_false_down",
];

/// Proof kinds a `proof` expectation may name.
pub const PROOF_KINDS: &[&str] = &[
    "power_fenced",
    "pool_fenced",
    "self_fenced",
    "dead_verdict",
    "vm_reported_off",
    "operator_word",
];

/// Alert kinds an expectation may name.
pub const ALERT_KINDS: &[&str] = &[
    "host_down",
    "host_disconnected",
    "host_alert",
    "lost_gateway",
    "brake_holds",
    "vm_stopped",
    "ha_restart",
    "ha_restart_failed",
    "fence_failed",
    "ha_gave_up",
    "ha_disabled",
];

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(0, |t| t.lines().count().max(1))
}

impl Scenario {
    /// Parses and checks scenario text; `file` names it in errors.
    ///
    /// # Errors
    /// [`ScenarioError`] with the file, line and what is wrong.
    pub fn parse(text: &str, file: &str) -> Result<Self, ScenarioError> {
        let err = |line: usize, message: String| ScenarioError {
            file: file.to_owned(),
            line,
            message,
        };
        let raw: RawScenario = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start + 1));
            err(line, e.message().to_owned())
        })?;
        let dur = |s: &str, line: usize, what: &str| {
            cloudha_protocol::duration::parse(s).map_err(|e| err(line, format!("`{what}`: {e}")))
        };
        let duration = dur(
            raw.duration.get_ref(),
            line_of(text, raw.duration.span().start + 1),
            "duration",
        )?;

        // [config]: sim keys first, the rest through the manager's own loader.
        let mut liveness_bound = Duration::from_secs(20 * 60);
        let mut sim = SimTimings::default();
        let mut table = toml::Table::new();
        for (key, value) in &raw.config {
            let line = line_of(text, value.span().start + 1);
            if key.starts_with("sim.") && key != "sim.liveness.bound" {
                match sim.set(key, value.get_ref()) {
                    Ok(true) => continue,
                    Ok(false) => {
                        return Err(err(
                            line,
                            format!(
                                "[config]: unknown simulator key `{key}` (known: {})",
                                SIM_KEYS.join(", ")
                            ),
                        ));
                    }
                    Err(why) => return Err(err(line, format!("[config]: `{key}` {why}"))),
                }
            }
            if key == "sim.liveness.bound" {
                let Some(s) = value.get_ref().as_str() else {
                    return Err(err(
                        line,
                        "`sim.liveness.bound` must be a duration string such as \"20m\"".into(),
                    ));
                };
                liveness_bound = dur(s, line, key)?;
            } else {
                table.insert(key.clone(), value.get_ref().clone());
            }
        }
        let config_text = table.to_string();
        let config = Config::from_toml(&config_text, "[config]").map_err(|e| {
            let key = raw
                .config
                .keys()
                .find(|k| e.to_string().contains(k.as_str()));
            let line = key
                .and_then(|k| raw.config.get(k))
                .map_or(0, |v| line_of(text, v.span().start + 1));
            err(line, format!("[config]: {e}"))
        })?;

        let mut clusters = Vec::new();
        let mut host_names = HashSet::new();
        let mut vm_names = HashSet::new();
        for c in &raw.cluster {
            let line = line_of(text, c.span().start + 1);
            let spec = c.get_ref().clone();
            if spec.hosts == 0 {
                return Err(err(
                    line,
                    format!("cluster `{}`: `hosts` must be at least 1", spec.name),
                ));
            }
            if !(0.0..=1.0).contains(&spec.ha_fraction) {
                return Err(err(
                    line,
                    format!(
                        "cluster `{}`: `ha_fraction` must be in 0..1, got {}",
                        spec.name, spec.ha_fraction
                    ),
                ));
            }
            if clusters.iter().any(|o: &ClusterSpec| o.name == spec.name) {
                return Err(err(
                    line,
                    format!("cluster `{}` is defined twice", spec.name),
                ));
            }
            for h in 1..=spec.hosts {
                host_names.insert(format!("{}-h{h}", spec.name));
                for v in 1..=spec.vms_per_host {
                    vm_names.insert(format!("{}-h{h}-vm{v}", spec.name));
                }
            }
            clusters.push(spec);
        }
        if clusters.is_empty() {
            return Err(err(0, "a scenario needs at least one [[cluster]]".into()));
        }
        config
            .check_clusters(clusters.iter().map(|c| (c.name.as_str(), c.hosts as usize)))
            .map_err(|e| {
                let line = raw
                    .config
                    .get("ha.investigators.agreement")
                    .map_or(0, |v| line_of(text, v.span().start + 1));
                err(line, format!("[config]: {e}"))
            })?;

        let mut faults = Vec::new();
        for f in &raw.fault {
            let line = line_of(text, f.span().start + 1);
            let r = f.get_ref();
            let at = dur(&r.at, line, "at")?;
            if at > duration {
                return Err(err(
                    line,
                    format!(
                        "fault `{:?}` at {} is after the scenario's `duration` ({})",
                        r.kind,
                        cloudha_protocol::duration::format(at),
                        cloudha_protocol::duration::format(duration)
                    ),
                ));
            }
            let need = r.kind.needs();
            match need {
                Target::Hosts if r.hosts.is_empty() => {
                    return Err(err(line, format!("fault `{:?}` needs `hosts`", r.kind)));
                }
                Target::Vms if r.vms.is_empty() => {
                    return Err(err(line, "fault `vm_crash` needs `vms`".into()));
                }
                Target::Nothing if !(r.hosts.is_empty() && r.vms.is_empty()) => {
                    return Err(err(
                        line,
                        "fault `manager_restart` takes no `hosts` or `vms`".into(),
                    ));
                }
                _ => {}
            }
            if let Some(h) = r.hosts.iter().find(|h| !host_names.contains(*h)) {
                return Err(err(line, format!("unknown host `{h}`")));
            }
            if let Some(v) = r.vms.iter().find(|v| !vm_names.contains(*v)) {
                return Err(err(line, format!("unknown VM `{v}`")));
            }
            if r.kind == FaultKind::PingDelay && r.delay.is_none() {
                return Err(err(line, "fault `ping_delay` needs `delay`".into()));
            }
            faults.push(Fault {
                at,
                kind: r.kind,
                hosts: r.hosts.clone(),
                vms: r.vms.clone(),
                duration: r
                    .duration
                    .as_deref()
                    .map(|d| dur(d, line, "duration"))
                    .transpose()?,
                delay: r
                    .delay
                    .as_deref()
                    .map(|d| dur(d, line, "delay"))
                    .transpose()?,
            });
        }
        faults.sort_by_key(|f| f.at);

        let mut expects = Vec::new();
        for e in &raw.expect {
            let line = line_of(text, e.span().start + 1);
            let r = e.get_ref();
            let by = r.by.as_deref().map(|d| dur(d, line, "by")).transpose()?;
            let after = r
                .after
                .as_deref()
                .map(|d| dur(d, line, "after"))
                .transpose()?
                .unwrap_or_default();
            let count = |what: &str| {
                if r.min.is_none() && r.max.is_none() {
                    return Err(err(
                        line,
                        format!("a {what} expectation needs `min` and/or `max`"),
                    ));
                }
                if let (Some(a), Some(b)) = (r.min, r.max)
                    && a > b
                {
                    return Err(err(line, format!("`min` ({a}) is above `max` ({b})")));
                }
                Ok(())
            };
            if let Some(kind) = &r.proof {
                if r.host.is_some() || r.vm.is_some() || r.alert.is_some() || r.bmc_calls.is_some()
                {
                    return Err(err(
                        line,
                        "a `proof` expectation takes only `min` and `max`".into(),
                    ));
                }
                if !PROOF_KINDS.contains(&kind.as_str()) {
                    return Err(err(
                        line,
                        format!(
                            "unknown proof kind `{kind}` (known: {})",
                            PROOF_KINDS.join(", ")
                        ),
                    ));
                }
                count("proof")?;
                expects.push(Expect::ProofCount {
                    kind: kind.clone(),
                    min: r.min,
                    max: r.max,
                });
                continue;
            }
            if let Some(host) = &r.bmc_calls {
                if r.host.is_some() || r.vm.is_some() || r.alert.is_some() {
                    return Err(err(
                        line,
                        "a `bmc_calls` expectation takes only `min` and `max`".into(),
                    ));
                }
                if !host_names.contains(host) {
                    return Err(err(line, format!("unknown host `{host}`")));
                }
                count("bmc_calls")?;
                expects.push(Expect::BmcCalls {
                    host: host.clone(),
                    min: r.min,
                    max: r.max,
                });
                continue;
            }
            let expect =
                match (&r.host, &r.vm, &r.alert) {
                    (Some(host), None, None) => {
                        if !host_names.contains(host) {
                            return Err(err(line, format!("unknown host `{host}`")));
                        }
                        let status: Status = r
                            .status
                            .as_deref()
                            .ok_or_else(|| err(line, "a host expectation needs `status`".into()))?
                            .parse()
                            .map_err(|e| err(line, format!("{e}")))?;
                        match (r.never, by) {
                            (Some(true), None) => Expect::HostNever {
                                host: host.clone(),
                                status,
                            },
                            (None | Some(false), Some(by)) => Expect::HostStatus {
                                host: host.clone(),
                                status,
                                after,
                                by,
                            },
                            _ => {
                                return Err(err(
                                    line,
                                    "a host expectation needs either `by` or `never = true`".into(),
                                ));
                            }
                        }
                    }
                    (None, Some(vm), None) => {
                        if !vm_names.contains(vm) {
                            return Err(err(line, format!("unknown VM `{vm}`")));
                        }
                        match (r.restarted, &r.state) {
                            (Some(false), None) => Expect::VmNotRestarted { vm: vm.clone() },
                            (None, Some(state)) => {
                                let state = match state.as_str() {
                                    "Running" => VmState::Running,
                                    "Stopped" => VmState::Stopped,
                                    other => {
                                        return Err(err(
                                            line,
                                            format!(
                                                "VM state must be Running or Stopped, got `{other}`"
                                            ),
                                        ));
                                    }
                                };
                                let by = by.ok_or_else(|| {
                                    err(line, "a VM state expectation needs `by`".into())
                                })?;
                                for h in [&r.on, &r.not_on].into_iter().flatten() {
                                    if !host_names.contains(h) {
                                        return Err(err(line, format!("unknown host `{h}`")));
                                    }
                                }
                                Expect::VmState {
                                    vm: vm.clone(),
                                    state,
                                    by,
                                    on: r.on.clone(),
                                    not_on: r.not_on.clone(),
                                }
                            }
                            _ => return Err(err(
                                line,
                                "a VM expectation needs `state` and `by`, or `restarted = false`"
                                    .into(),
                            )),
                        }
                    }
                    (None, None, Some(kind)) => {
                        if !ALERT_KINDS.contains(&kind.as_str()) {
                            return Err(err(
                                line,
                                format!(
                                    "unknown alert kind `{kind}` (known: {})",
                                    ALERT_KINDS.join(", ")
                                ),
                            ));
                        }
                        if r.min.is_none() && r.max.is_none() {
                            return Err(err(
                                line,
                                "an alert expectation needs `min` and/or `max`".into(),
                            ));
                        }
                        Expect::AlertCount {
                            kind: kind.clone(),
                            min: r.min,
                            max: r.max,
                        }
                    }
                    _ => {
                        return Err(err(
                            line,
                            "an expectation names exactly one of `host`, `vm` or `alert`".into(),
                        ));
                    }
                };
            expects.push(expect);
        }

        let violates = match raw.violates {
            None => None,
            Some(v) if INVARIANTS.contains(&v.get_ref().as_str()) => Some(v.into_inner()),
            Some(v) => {
                return Err(err(
                    line_of(text, v.span().start + 1),
                    format!(
                        "`violates` names no invariant: `{}` (known: {})",
                        v.get_ref(),
                        INVARIANTS.join(", ")
                    ),
                ));
            }
        };
        Ok(Scenario {
            name: raw.name,
            description: raw.description,
            duration,
            seed: raw.seed,
            config,
            liveness_bound,
            sim,
            clusters,
            faults,
            expects,
            violates,
        })
    }
}
