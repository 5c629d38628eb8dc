//! Ground truth: which hosts are powered, which agents live, which VM processes run where, what
//! happened to each host over time, and the invariant checks judged on that truth alone.
//!
//! Nothing here reads what the manager believes, with one exception made on purpose: a start's
//! death proof (what the manager claims) is judged against the truth at that instant.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cloudha_ports::{ProofKind, ProofRecord, Timestamp, TokioClock};
use cloudha_protocol::{ClusterId, HostId, HypervisorType, VmId, VmState};
use tokio::time::Instant;

use crate::scenario::SimTimings;

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
    /// Lying parts: the BMC reports Off and accepts Off while the host runs on.
    pub(crate) bmc_lies: bool,
    /// Lying parts: the BMC reports On and ignores Off, whatever the truth.
    pub(crate) bmc_stuck: bool,
    /// Lying parts: every neighbour reports this host's heartbeat dead (and old) while it is
    /// fresh.
    pub(crate) neighbours_lie: bool,
    pub(crate) no_capacity: bool,
    /// When it last booted (powered on).
    pub(crate) booted_at: Instant,
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
    /// Its live processes, one entry per copy (a host twice is two copies on one host).
    pub(crate) copies: Vec<HostId>,
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

/// Why a VM's process stopped serving, in truth: the obligation `ha_liveness` judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Its host lost power (a fault, a self-reboot, a fence).
    Power,
    /// Its host is cut off: neither the manager (through the agent) nor any neighbour reaches it.
    CutOff,
    /// The VM process crashed on a live host.
    Crash,
}

/// One VM death, judged at its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Death {
    pub(crate) vm: VmId,
    pub(crate) host: HostId,
    pub(crate) at: Instant,
    pub(crate) cause: Cause,
    /// Placements of the VM recorded before the death (a restart is a Running one after).
    pub(crate) placements_before: usize,
}

/// A host's truth over time: (since, powered, reachable, cut off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reach {
    pub(crate) since: Instant,
    pub(crate) powered: bool,
    /// Reachable from a neighbour, or (with no neighbour to ask) from the management network.
    pub(crate) reachable: bool,
    /// Powered, but neither the manager (through its agent) nor a neighbour reaches it.
    pub(crate) cut_off: bool,
    /// Powered, and the manager reaches its agent.
    pub(crate) managed: bool,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) hosts: BTreeMap<HostId, HostTruth>,
    pub(crate) vms: BTreeMap<VmId, VmTruth>,
    /// Which VMs have a live process on each host (an index of `VmTruth::copies`).
    pub(crate) processes: BTreeMap<HostId, BTreeSet<VmId>>,
    pub(crate) violations: Vec<Violation>,
    /// Calls each host's BMC received.
    pub(crate) bmc_calls: BTreeMap<HostId, u64>,
    /// When each host lost power.
    pub(crate) power_offs: BTreeMap<HostId, Vec<Instant>>,
    /// Each host's reach over time (a new entry on every change).
    pub(crate) reach: BTreeMap<HostId, Vec<Reach>>,
    /// When each host was probed (by a neighbour, the BMC, or itself), newest last.
    pub(crate) probes: BTreeMap<HostId, Vec<Instant>>,
    /// The hosts of each cluster (static; reach is a matter of a host and its neighbours).
    pub(crate) members: BTreeMap<ClusterId, Vec<HostId>>,
}

impl State {
    /// Adds a VM that runs on `host` from the start.
    pub(crate) fn add_vm(&mut self, id: VmId, vm: VmTruth) {
        for h in &vm.copies {
            self.processes.entry(*h).or_default().insert(id);
        }
        self.vms.insert(id, vm);
    }

    fn others_reachable(&self, host: HostId, cluster: ClusterId) -> bool {
        self.members
            .get(&cluster)
            .into_iter()
            .flatten()
            .filter(|id| **id != host)
            .filter_map(|id| self.hosts.get(id))
            .any(|h| h.powered && !h.neighbour_partitioned)
    }

    /// The host's reach now.
    fn reach_of(&self, host: HostId, now: Instant) -> Option<Reach> {
        let h = self.hosts.get(&host)?;
        let neighbours = self.others_reachable(host, h.cluster);
        let reachable = h.powered
            && if neighbours {
                !h.neighbour_partitioned
            } else {
                !h.mgmt_partitioned
            };
        let manager_sees = h.agent_alive && !h.mgmt_partitioned;
        let neighbour_sees = neighbours && !h.neighbour_partitioned;
        Some(Reach {
            since: now,
            powered: h.powered,
            reachable,
            cut_off: h.powered && !manager_sees && !neighbour_sees,
            managed: h.powered && manager_sees,
        })
    }
}

/// The ground truth, shared by every simulated part.
#[derive(Debug)]
pub(crate) struct World {
    state: Mutex<State>,
    pub(crate) t0: Instant,
    /// The engine's clock: virtual time from `t0`, mapped onto [`SIM_EPOCH`].
    pub(crate) clock: TokioClock,
    pub(crate) force_ha: bool,
    pub(crate) timings: SimTimings,
}

/// The wall-clock time a simulation starts at (2026-01-01T00:00:00Z), whatever the day: the
/// engine's records carry wall-clock times, and a fixed epoch keeps runs deterministic.
pub(crate) const SIM_EPOCH: Timestamp = Timestamp::from_micros(1_767_225_600_000_000);

impl World {
    /// The virtual instant of an engine timestamp.
    pub(crate) fn instant(&self, at: Timestamp) -> Instant {
        self.t0 + at.saturating_duration_since(self.clock.epoch())
    }

    pub(crate) fn new(t0: Instant, force_ha: bool, timings: SimTimings) -> Self {
        Self {
            state: Mutex::new(State::default()),
            t0,
            clock: TokioClock::with_origin(SIM_EPOCH, t0),
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

    /// The VMs with a live process on `host`.
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

    /// Someone probed `host` (a neighbour's check, its BMC, itself).
    pub(crate) fn probe(&self, host: HostId) {
        self.lock()
            .probes
            .entry(host)
            .or_default()
            .push(Instant::now());
    }

    /// Records the reach of the clusters of `changed` hosts (every host when `None`) where it
    /// changed (after any change of power, agents or partitions). Returns the hosts that just
    /// became cut off.
    pub(crate) fn update_reach(&self, changed: Option<&[HostId]>) -> Vec<HostId> {
        let now = Instant::now();
        let mut s = self.lock();
        if s.members.is_empty() {
            let mut members: BTreeMap<ClusterId, Vec<HostId>> = BTreeMap::new();
            for (id, h) in &s.hosts {
                members.entry(h.cluster).or_default().push(*id);
            }
            s.members = members;
        }
        let ids: Vec<HostId> = match changed {
            None => s.hosts.keys().copied().collect(),
            Some(hosts) => {
                let clusters: BTreeSet<ClusterId> = hosts
                    .iter()
                    .filter_map(|h| s.hosts.get(h).map(|t| t.cluster))
                    .collect();
                clusters
                    .iter()
                    .flat_map(|c| s.members.get(c).cloned().unwrap_or_default())
                    .collect()
            }
        };
        let mut cut = Vec::new();
        for id in ids {
            let Some(r) = s.reach_of(id, now) else {
                continue;
            };
            let log = s.reach.entry(id).or_default();
            let last = log.last().copied();
            let changed = last.is_none_or(|l| {
                (l.powered, l.reachable, l.cut_off, l.managed)
                    != (r.powered, r.reachable, r.cut_off, r.managed)
            });
            if changed {
                if r.cut_off && !last.is_some_and(|l| l.cut_off) {
                    cut.push(id);
                }
                log.push(r);
            }
        }
        cut
    }

    /// Whether `host` is powered and reachable now (see [`Reach`]).
    pub(crate) fn live(&self, host: HostId) -> bool {
        let s = self.lock();
        s.reach_of(host, Instant::now())
            .is_some_and(|r| r.powered && r.reachable)
    }

    /// A VM process starts on `host`: checks `no_double_run`, `no_unwanted_restart` and, for an
    /// HA restart, that the death proof the manager recorded is true now (`no_unsafe_start`).
    pub(crate) fn start_vm(
        &self,
        vm: VmId,
        host: HostId,
        ha_restart: bool,
        proof: Option<&ProofRecord>,
    ) {
        let now = Instant::now();
        let mut s = self.lock();
        let Some(v) = s.vms.get(&vm).cloned() else {
            return;
        };
        let name_of =
            |s: &State, h: HostId| s.hosts.get(&h).map_or(h.to_string(), |h| h.name.clone());
        let new_name = name_of(&s, host);
        let mut violations = Vec::new();
        if !v.copies.is_empty() {
            let old: Vec<String> = v.copies.iter().map(|h| name_of(&s, *h)).collect();
            violations.push(Violation {
                at: now,
                invariant: "no_double_run",
                detail: format!(
                    "{} starts on {new_name} while a copy runs on {}",
                    v.name,
                    old.join(", ")
                ),
            });
        }
        if ha_restart {
            if let Some(why) = Self::false_proof(&s, &v, proof) {
                violations.push(Violation {
                    at: now,
                    invariant: "no_unsafe_start",
                    detail: format!("{} started on {new_name}: {why}", v.name),
                });
            }
            if !v.ha && !self.force_ha {
                violations.push(Violation {
                    at: now,
                    invariant: "no_unwanted_restart",
                    detail: format!("{} has no HA but was restarted", v.name),
                });
            }
        }
        s.violations.extend(violations);
        let from = v
            .placements
            .iter()
            .rev()
            .find(|p| p.state == VmState::Running)
            .and_then(|p| p.host);
        s.processes.entry(host).or_default().insert(vm);
        let v = s.vms.get_mut(&vm).expect("checked");
        v.copies.push(host);
        v.placements.push(Placement {
            at: now,
            host: Some(host),
            state: VmState::Running,
        });
        if ha_restart {
            v.restarts.push((now, from, host));
        }
    }

    /// Why `proof` is false in truth now (`None`: it holds), per kind of proof.
    fn false_proof(s: &State, v: &VmTruth, proof: Option<&ProofRecord>) -> Option<String> {
        let Some(proof) = proof else {
            return Some("no death proof was recorded".into());
        };
        let last_run = v
            .placements
            .iter()
            .rev()
            .find(|p| p.state == VmState::Running);
        match proof.kind {
            ProofKind::OperatorWord => None,
            ProofKind::DeadVerdict | ProofKind::VmReportedOff => {
                (!v.copies.is_empty()).then(|| {
                    format!(
                        "the proof ({}) says it is not running, but it runs",
                        proof.kind
                    )
                })
            }
            ProofKind::PowerFenced | ProofKind::PoolFenced | ProofKind::SelfFenced => {
                let Some(h) = proof.host else {
                    return Some(format!("the proof ({}) names no host", proof.kind));
                };
                // A VM that never ran has no copy to prove dead.
                let run = last_run?;
                if run.host != Some(h) {
                    return Some(format!(
                        "the proof ({}) is about host {h}, but its last copy started elsewhere",
                        proof.kind
                    ));
                }
                let cycled = s
                    .power_offs
                    .get(&h)
                    .is_some_and(|offs| offs.iter().any(|t| *t >= run.at));
                (!cycled).then(|| {
                    format!(
                        "the proof ({}: {}) is false: host {h} has not been off since the copy started",
                        proof.kind, proof.evidence
                    )
                })
            }
            _ => Some(format!("unknown proof kind {}", proof.kind)),
        }
    }

    /// Every process of the VM on `host` stops (the orchestrator stopped it there).
    pub(crate) fn stop_vm_on(&self, vm: VmId, host: HostId) {
        let now = Instant::now();
        let mut s = self.lock();
        let Some(v) = s.vms.get_mut(&vm) else { return };
        if !v.copies.contains(&host) {
            return;
        }
        v.copies.retain(|h| *h != host);
        v.placements.push(Placement {
            at: now,
            host: Some(host),
            state: VmState::Stopped,
        });
        if let Some(set) = s.processes.get_mut(&host) {
            set.remove(&vm);
        }
    }

    /// Every process of the VM stops (it crashed, it was destroyed). Returns the deaths to judge
    /// when `cause` is given.
    pub(crate) fn kill_vm(&self, vm: VmId, cause: Option<Cause>) -> Vec<Death> {
        let hosts: Vec<HostId> = self
            .lock()
            .vms
            .get(&vm)
            .map(|v| v.copies.clone())
            .unwrap_or_default();
        let mut deaths = Vec::new();
        for h in hosts {
            if let Some(cause) = cause {
                deaths.push(self.death(vm, h, cause));
            }
            self.stop_vm_on(vm, h);
        }
        deaths
    }

    /// A death of `vm` on `host`, now.
    pub(crate) fn death(&self, vm: VmId, host: HostId, cause: Cause) -> Death {
        let placements_before = self.lock().vms.get(&vm).map_or(0, |v| v.placements.len());
        Death {
            vm,
            host,
            at: Instant::now(),
            cause,
            placements_before,
        }
    }

    /// The host loses power: its VM processes die. Returns their deaths.
    pub(crate) fn power_off(&self, host: HostId) -> Vec<Death> {
        let mut deaths = Vec::new();
        if self.host(host).is_some_and(|h| h.powered) {
            for vm in self.running_on(host) {
                deaths.push(self.death(vm, host, Cause::Power));
                self.stop_vm_on(vm, host);
            }
            self.lock()
                .power_offs
                .entry(host)
                .or_default()
                .push(Instant::now());
        }
        // The heartbeat file keeps its last stamp: it goes stale, it does not vanish.
        self.with_host(host, |h| h.powered = false);
        deaths
    }
}
