//! Ground truth: which hosts are powered, which agents live, which VM process runs where, and
//! the continuous invariant checks on every change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cloudha_protocol::{ClusterId, HostId, HypervisorType, VmId, VmState};

use crate::scenario::SimTimings;
use tokio::time::Instant;

/// One simulated host's ground truth.
#[derive(Debug, Clone)]
pub(crate) struct HostTruth {
    pub(crate) name: String,
    pub(crate) cluster: ClusterId,
    pub(crate) hypervisor: HypervisorType,
    pub(crate) capacity: u32,
    pub(crate) independent_self_fence: bool,
    pub(crate) powered: bool,
    pub(crate) agent_alive: bool,
    pub(crate) mgmt_partitioned: bool,
    pub(crate) neighbour_partitioned: bool,
    pub(crate) storage_ok: bool,
    pub(crate) ping_loss: bool,
    pub(crate) ping_delay: Option<Duration>,
    pub(crate) bmc_ok: bool,
    pub(crate) bmc_off_fails: bool,
    pub(crate) no_capacity: bool,
    /// The newest stamp of the host's heartbeat: the storage heartbeat of a KVM host, the pool
    /// heartbeat of a XenServer host (`None` for others).
    pub(crate) heartbeat: Option<Instant>,
}

impl HostTruth {
    pub(crate) fn kvm(&self) -> bool {
        self.hypervisor.is_kvm_like()
    }
}

/// One placement of a VM (ground truth).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Placement {
    pub(crate) at: Instant,
    pub(crate) host: Option<HostId>,
    pub(crate) state: VmState,
}

/// One simulated VM's ground truth.
#[derive(Debug, Clone)]
pub(crate) struct VmTruth {
    pub(crate) name: String,
    pub(crate) ha: bool,
    pub(crate) running_on: Option<HostId>,
    pub(crate) placements: Vec<Placement>,
    pub(crate) restarts: Vec<(Instant, Option<HostId>, HostId)>,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Violation {
    pub(crate) at: Instant,
    pub(crate) invariant: &'static str,
    pub(crate) detail: String,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) hosts: BTreeMap<HostId, HostTruth>,
    pub(crate) vms: BTreeMap<VmId, VmTruth>,
    /// Which VM processes run on each host (an index of `VmTruth::running_on`).
    pub(crate) processes: BTreeMap<HostId, BTreeSet<VmId>>,
    pub(crate) violations: Vec<Violation>,
    /// Calls each host's BMC received.
    pub(crate) bmc_calls: BTreeMap<HostId, u64>,
}

impl State {
    /// Adds a VM that runs on `host` from the start.
    pub(crate) fn add_vm(&mut self, id: VmId, vm: VmTruth) {
        if let Some(h) = vm.running_on {
            self.processes.entry(h).or_default().insert(id);
        }
        self.vms.insert(id, vm);
    }
}

/// The ground truth, shared by every simulated part.
#[derive(Debug)]
pub(crate) struct World {
    state: Mutex<State>,
    pub(crate) t0: Instant,
    pub(crate) force_ha: bool,
    pub(crate) timings: SimTimings,
}

impl World {
    pub(crate) fn new(t0: Instant, force_ha: bool, timings: SimTimings) -> Self {
        Self {
            state: Mutex::new(State::default()),
            t0,
            force_ha,
            timings,
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn host(&self, id: HostId) -> Option<HostTruth> {
        self.lock().hosts.get(&id).cloned()
    }

    pub(crate) fn with_host<T>(
        &self,
        id: HostId,
        f: impl FnOnce(&mut HostTruth) -> T,
    ) -> Option<T> {
        self.lock().hosts.get_mut(&id).map(f)
    }

    /// Can the manager reach this host's agent (for direct agents; connected agents also need
    /// their link)?
    pub(crate) fn reachable(&self, id: HostId) -> bool {
        self.host(id)
            .is_some_and(|h| h.powered && h.agent_alive && !h.mgmt_partitioned)
    }

    /// The VMs whose process runs on `host`.
    pub(crate) fn running_on(&self, host: HostId) -> Vec<VmId> {
        self.lock()
            .processes
            .get(&host)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// How many VM processes run on `host`.
    pub(crate) fn load(&self, host: HostId) -> usize {
        self.lock().processes.get(&host).map_or(0, BTreeSet::len)
    }

    /// The age of `host`'s newest heartbeat stamp at `now`, and whether a checker reads it as
    /// alive (not older than the staleness of its kind: `sim.heartbeat.staleness` for KVM,
    /// `sim.xen.heartbeat.staleness` for XenServer).
    pub(crate) fn heartbeat(&self, host: HostId, now: Instant) -> (Option<Duration>, bool) {
        let Some(h) = self.host(host) else {
            return (None, false);
        };
        let staleness = if h.kvm() {
            self.timings.heartbeat_staleness
        } else {
            self.timings.xen_heartbeat_staleness
        };
        let age = h.heartbeat.map(|t| now.saturating_duration_since(t));
        (age, age.is_some_and(|a| a <= staleness))
    }

    /// A VM process starts on `host`: checks the invariants.
    pub(crate) fn start_vm(&self, vm: VmId, host: HostId, ha_restart: bool) {
        let now = Instant::now();
        let mut s = self.lock();
        let powered = |s: &State, h: HostId| s.hosts.get(&h).is_some_and(|h| h.powered);
        let Some(v) = s.vms.get(&vm).cloned() else {
            return;
        };
        let mut violations = Vec::new();
        if let Some(old) = v.running_on
            && old != host
            && powered(&s, old)
        {
            let (old_name, new_name) = (s.hosts[&old].name.clone(), s.hosts[&host].name.clone());
            violations.push(Violation {
                at: now,
                invariant: "no_double_run",
                detail: format!("{} runs on {old_name} and {new_name}", v.name),
            });
            violations.push(Violation {
                at: now,
                invariant: "no_unsafe_start",
                detail: format!(
                    "{} started on {new_name} while its copy on {old_name} still runs",
                    v.name
                ),
            });
        }
        if ha_restart && !v.ha && !self.force_ha {
            violations.push(Violation {
                at: now,
                invariant: "no_unwanted_restart",
                detail: format!("{} has no HA but was restarted", v.name),
            });
        }
        s.violations.extend(violations);
        let from = v.placements.last().and_then(|p| p.host);
        if let Some(old) = v.running_on
            && let Some(set) = s.processes.get_mut(&old)
        {
            set.remove(&vm);
        }
        s.processes.entry(host).or_default().insert(vm);
        let v = s.vms.get_mut(&vm).expect("checked");
        v.running_on = Some(host);
        v.placements.push(Placement {
            at: now,
            host: Some(host),
            state: VmState::Running,
        });
        if ha_restart {
            v.restarts.push((now, from, host));
        }
    }

    /// A VM process stops (killed, crashed, its host lost power).
    pub(crate) fn stop_vm(&self, vm: VmId) {
        let now = Instant::now();
        let mut s = self.lock();
        let Some(v) = s.vms.get_mut(&vm) else { return };
        let Some(h) = v.running_on.take() else { return };
        v.placements.push(Placement {
            at: now,
            host: Some(h),
            state: VmState::Stopped,
        });
        if let Some(set) = s.processes.get_mut(&h) {
            set.remove(&vm);
        }
    }

    /// The host loses power: its VM processes die.
    pub(crate) fn power_off(&self, host: HostId) {
        for vm in self.running_on(host) {
            self.stop_vm(vm);
        }
        // The heartbeat file keeps its last stamp: it goes stale, it does not vanish.
        self.with_host(host, |h| h.powered = false);
    }
}
