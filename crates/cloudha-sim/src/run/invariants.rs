//! The checker's own verdicts on the truth: `ha_liveness` (each obliged VM death judged at its
//! deadline, its clock paused by the startup grace and the brake's condition) and
//! `no_false_down` (a host declared Down while powered and reachable).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cloudha_ha::VmOrchestrator;
use cloudha_liveness::StatusChange;
use cloudha_protocol::{HostId, HypervisorType, Status, VmId, VmState};
use tokio::time::Instant;

use super::{Cloud, at_s, lock};
use crate::report::clock;
use crate::world::{Cause, Death};

impl Cloud {
    /// `ha_liveness`: the verdicts given at the deadlines, and the deaths whose deadline the
    /// run did not reach ("not judged", never silently passed).
    pub(super) fn liveness(&self, state: &crate::world::State) -> (Vec<String>, Vec<String>) {
        let judged = lock(&self.judged);
        let broken = judged
            .iter()
            .filter_map(|(_, v)| v.as_ref().err().cloned())
            .collect();
        let done: std::collections::HashSet<(VmId, HostId, Instant)> =
            judged.iter().map(|(d, _)| (d.vm, d.host, d.at)).collect();
        let not_judged = lock(&self.deaths)
            .iter()
            .filter(|d| !done.contains(&(d.vm, d.host, d.at)))
            .map(|d| {
                format!(
                    "{} ({:?} on {} at {})",
                    state.vms.get(&d.vm).map_or("?", |v| v.name.as_str()),
                    d.cause,
                    state.hosts.get(&d.host).map_or("?", |h| h.name.as_str()),
                    clock(at_s(&self.world, d.at))
                )
            })
            .collect();
        (broken, not_judged)
    }

    /// Whether a death is an obligation at all: an HA VM, whose restart elsewhere the rules
    /// allow (shared root disk, no hypervisor HA of its own, VM-HA enabled; a crash on a live
    /// host only with `ha.vm.restart.hostup`).
    pub(super) fn obliged(&self, d: &Death) -> bool {
        let config = &self.scenario.config;
        let Some(rec) = self.records.get(d.vm) else {
            return false;
        };
        let ha = self.world.lock().vms.get(&d.vm).is_some_and(|v| v.ha);
        ha && config.liveness.vm_ha_enabled
            && !rec.local_root_disk
            && !rec.hypervisor.has_native_ha()
            && (d.cause != Cause::Crash || config.ha.ha_vm_restart_hostup)
    }

    /// Waits for the death's deadline (`sim.liveness.bound`, paused while the startup grace or
    /// the brake's own condition holds in truth) and judges it on the truth then.
    pub(super) async fn judge(self: Arc<Self>, d: Death) {
        let bound = self.scenario.liveness_bound;
        let mut deadline = d.at + bound;
        loop {
            tokio::time::sleep_until(deadline).await;
            let next = d.at + bound + self.paused(&d, deadline);
            if next <= deadline {
                break;
            }
            deadline = next;
        }
        let verdict = self.obligation(&d);
        lock(&self.judged).push((d, verdict));
    }

    /// How long, between the death and `until`, the clock of its obligation was paused: the
    /// startup grace after each manager start, and the brake's condition holding in truth for
    /// the VM's cluster (more than `ha.brake.fraction` of its hosts, and at least two, really
    /// without power or out of the manager's reach: what the brake guards against is the
    /// manager's own partition).
    fn paused(&self, d: &Death, until: Instant) -> Duration {
        let grace = self.scenario.config.ha.ha_startup_grace;
        let starts = lock(&self.starts).clone();
        let cluster = self
            .records
            .get(d.vm)
            .and_then(|r| r.cluster)
            .or_else(|| self.world.host(d.host).map(|h| h.cluster));
        let state = self.world.lock();
        let members: Vec<HostId> = cluster
            .and_then(|c| state.members.get(&c).cloned())
            .unwrap_or_default();
        let mut cuts: Vec<Instant> = vec![d.at, until];
        for s in &starts {
            cuts.push(*s);
            cuts.push(*s + grace);
        }
        for m in &members {
            cuts.extend(state.reach.get(m).into_iter().flatten().map(|r| r.since));
        }
        cuts.retain(|t| *t >= d.at && *t <= until);
        cuts.sort();
        cuts.dedup();
        let failed_at = |m: &HostId, t: Instant| {
            state
                .reach
                .get(m)
                .and_then(|log| log.iter().rev().find(|r| r.since <= t))
                .is_some_and(|r| !r.powered || !r.managed)
        };
        let fraction = self.scenario.config.ha.ha_brake_fraction;
        let mut paused = Duration::ZERO;
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let in_grace = starts.iter().any(|s| a >= *s && a < *s + grace);
            let failed = members.iter().filter(|m| failed_at(m, a)).count();
            let braked = failed >= 2 && failed as f64 > fraction * members.len() as f64;
            if in_grace || braked {
                paused += b - a;
            }
        }
        paused
    }

    /// The obligation of a death at its deadline, judged on the truth now: met (the VM ran
    /// again, or its cut-off host is back with the VM on it), excused (no host can take it; no
    /// proof is obtainable under the spec's rules), or broken.
    fn obligation(&self, d: &Death) -> Result<String, String> {
        let state = self.world.lock();
        let (Some(v), Some(host)) = (state.vms.get(&d.vm), state.hosts.get(&d.host)) else {
            return Ok("gone".into());
        };
        let when = clock(at_s(&self.world, d.at));
        if let Some(p) = v.placements[d.placements_before.min(v.placements.len())..]
            .iter()
            .find(|p| p.state == VmState::Running)
        {
            return Ok(format!(
                "running again at {}",
                clock(at_s(&self.world, p.at))
            ));
        }
        let cut_now = state
            .reach
            .get(&d.host)
            .and_then(|l| l.last())
            .is_some_and(|r| r.cut_off);
        if d.cause == Cause::CutOff && v.copies.contains(&d.host) && !cut_now {
            return Ok("its host is reachable again, the VM on it".into());
        }
        // Another copy still runs where it can serve (started before this death: a double run
        // is no_double_run's business, not a lack of liveness).
        let serving = |h: &HostId| {
            *h != d.host
                && state
                    .reach
                    .get(h)
                    .and_then(|l| l.last())
                    .is_some_and(|r| r.powered && !r.cut_off)
        };
        if v.copies.iter().any(serving) {
            return Ok("another copy of it runs".into());
        }
        // Excuse: no host of its zone and hypervisor can take it, in truth (its cluster's
        // hosts are looked at first: most often one of them has room).
        let zone = self.zones.get(&d.host);
        let in_cluster = state
            .members
            .get(&host.cluster)
            .cloned()
            .unwrap_or_default();
        let candidates = in_cluster.iter().copied().chain(
            self.zones
                .iter()
                .filter(|(_, z)| Some(*z) == zone)
                .map(|(id, _)| *id),
        );
        let room = candidates
            .filter_map(|id| state.hosts.get(&id).map(|h| (id, h)))
            .any(|(id, h)| {
                id != d.host
                    && self.zones.get(&id) == zone
                    && h.hypervisor == host.hypervisor
                    && h.powered
                    && h.agent_alive
                    && !h.mgmt_partitioned
                    && !h.no_capacity
                    && (state.processes.get(&id).map_or(0, |p| p.len()) as u32) < h.capacity
            });
        if !room {
            return Ok("excused: no host can take it".into());
        }
        // Excuse: no proof obtainable under the spec's rules (the BMC unreachable and no
        // self-fence that a neighbour could vouch for; the host not back).
        let back = host.powered && host.agent_alive && !host.mgmt_partitioned;
        let reach = state.reach.get(&d.host).and_then(|l| l.last()).copied();
        if back
            && (host.ping_loss
                || host
                    .ping_delay
                    .is_some_and(|d| d >= self.scenario.config.liveness.ping_interval))
        {
            return Ok(
                "excused: its host's pings, and with them its VM reports, do not get through"
                    .into(),
            );
        }
        if !back && reach.is_some_and(|r| r.powered && r.reachable) {
            return Ok("excused: its host runs and its neighbours reach it, but the manager cannot: the rules allow no Down".into());
        }
        let beating = host.heartbeat.is_some_and(|t| {
            let staleness = if host.kvm() {
                self.scenario.sim.heartbeat_staleness
            } else {
                self.scenario.sim.xen_heartbeat_staleness
            };
            Instant::now().saturating_duration_since(t) <= staleness
        });
        if !back && cut_now && beating {
            return Ok(
                "excused: its cut-off host's heartbeat beats: the rules allow no Down".into(),
            );
        }
        let neighbour_up = |storage: bool| {
            in_cluster
                .iter()
                .filter_map(|id| state.hosts.get(id).map(|h| (id, h)))
                .any(|(id, h)| {
                    *id != d.host
                        && h.powered
                        && !h.neighbour_partitioned
                        && (!storage || h.storage_ok)
                })
        };
        let self_fence = !host.powered
            && ((host.kvm() && host.independent_self_fence && neighbour_up(true))
                || (host.hypervisor == HypervisorType::XenServer && neighbour_up(false)));
        let judgeable = host.kvm() || host.hypervisor == HypervisorType::XenServer || back;
        if !judgeable {
            return Ok("excused: no investigator can prove a host of this hypervisor down".into());
        }
        if !(back || host.bmc_ok || self_fence) {
            return Ok(
                "excused: no proof obtainable (BMC unreachable, no self-fence to vouch for)".into(),
            );
        }
        Err(format!(
            "{} ({:?} on {} at {when}) not running again within {}",
            v.name,
            d.cause,
            host.name,
            cloudha_protocol::duration::format(self.scenario.liveness_bound)
        ))
    }

    /// `no_false_down`: a host declared Down although it stayed powered and reachable for the
    /// whole window from the investigation's first probe to the verdict.
    pub(super) fn false_downs(
        &self,
        state: &crate::world::State,
        history: &BTreeMap<HostId, Vec<StatusChange>>,
    ) -> Vec<String> {
        /// How far back an investigation's probes may start (CheckHealth's 50 s, and slack).
        const WINDOW: Duration = Duration::from_secs(55);
        let mut out = Vec::new();
        for (host, changes) in history {
            for c in changes
                .iter()
                .filter(|c| c.to == Status::Down && c.from != Some(Status::Down))
            {
                let t = self.world.instant(c.at);
                let start = state
                    .probes
                    .get(host)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|p| *p <= t && *p + WINDOW >= t)
                    .min()
                    .unwrap_or(t);
                let log = state.reach.get(host).map(Vec::as_slice).unwrap_or_default();
                let at_start = log.iter().rev().find(|r| r.since <= start);
                let within = log.iter().filter(|r| r.since > start && r.since <= t);
                let live = |r: &crate::world::Reach| r.powered && r.reachable;
                if at_start.is_some_and(live) && within.clone().all(live) {
                    out.push(format!(
                        "at {}: {} declared Down although powered and reachable since {} ({})",
                        clock(at_s(&self.world, t)),
                        state.hosts.get(host).map_or("?", |h| h.name.as_str()),
                        clock(at_s(&self.world, start)),
                        c.reason
                    ));
                }
            }
        }
        out
    }
}
