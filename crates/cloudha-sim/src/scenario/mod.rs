//! Scenario files (TOML; see `docs/scenarios.md`): parsed, then checked into a typed
//! [`Scenario`]. Every error names the file, the line and what is wrong.

mod expect;
mod fault;
mod parse;
mod timings;

use std::time::Duration;

use cloudha_ha::Config;
use serde::Deserialize;

pub use expect::{ALERT_KINDS, Expect, PROOF_KINDS};
pub(crate) use fault::Target;
pub use fault::{Fault, FaultKind};
pub use timings::{SIM_KEYS, SimTimings};

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
