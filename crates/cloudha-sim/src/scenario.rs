//! Scenario files (TOML; see `docs/scenarios.md`): parsed, then checked into a typed
//! [`Scenario`]. Every error names the file, the line and what is wrong.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use cloudha_manager::Config;
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
            Self::PingLoss | Self::PingDelay | Self::BmcUnreachable | Self::NoCapacity => {
                return None;
            }
            _ => return None,
        })
    }

    fn needs(self) -> Target {
        match self {
            Self::VmCrash => Target::Vms,
            Self::ManagerRestart => Target::Nothing,
            _ => Target::Hosts,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Target {
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
    /// Clusters.
    pub clusters: Vec<ClusterSpec>,
    /// Faults, by time.
    pub faults: Vec<Fault>,
    /// Expectations.
    pub expects: Vec<Expect>,
}

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
        let mut table = toml::Table::new();
        for (key, value) in &raw.config {
            let line = line_of(text, value.span().start + 1);
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

        let mut faults = Vec::new();
        for f in &raw.fault {
            let line = line_of(text, f.span().start + 1);
            let r = f.get_ref();
            let at = dur(&r.at, line, "at")?;
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

        Ok(Scenario {
            name: raw.name,
            description: raw.description,
            duration,
            seed: raw.seed,
            config,
            liveness_bound,
            clusters,
            faults,
            expects,
        })
    }
}
