//! The report assembled from a run's records: each host's transitions, each VM's placements,
//! restarts and death proofs, fences, alerts, fault detections, and the invariants' verdicts.

use std::collections::{BTreeMap, HashMap};

use cloudha_liveness::StatusChange;
use cloudha_protocol::{HostId, Status, VmId};

use super::{Cloud, at_s, lock};
use crate::report::*;
use crate::scenario::FaultKind;
use crate::world::SIM_EPOCH;

impl Cloud {
    pub(super) fn report(&self, seed: u64, items: &[cloudha_ports::WorkItem]) -> Report {
        if let Some(i) = lock(&self.instance).as_ref() {
            self.save_history(&i.agent);
        }
        let world = &self.world;
        let name_of: HashMap<HostId, String> =
            self.names.iter().map(|(n, id)| (*id, n.clone())).collect();
        let host_name = |h: Option<HostId>| h.and_then(|h| name_of.get(&h).cloned());
        let history = lock(&self.history).clone();
        let hosts: Vec<HostReport> = self
            .names
            .iter()
            .map(|(name, id)| HostReport {
                name: name.clone(),
                transitions: history
                    .get(id)
                    .into_iter()
                    .flatten()
                    .map(|c| TransitionReport {
                        at_s: at_s(world, world.instant(c.at)),
                        from: c.from.map(|s| s.to_string()),
                        event: c.event.to_string(),
                        to: c.to.to_string(),
                        reason: c.reason.clone(),
                    })
                    .collect(),
                bmc_calls: world.lock().bmc_calls.get(id).copied().unwrap_or(0),
            })
            .collect();
        let mut proofs: BTreeMap<VmId, Vec<ProofReport>> = BTreeMap::new();
        for item in items {
            if let Some(p) = &item.fence_proof {
                proofs.entry(item.vm).or_default().push(ProofReport {
                    at_s: p.at.saturating_duration_since(SIM_EPOCH).as_millis() as f64 / 1000.0,
                    kind: p.kind.to_string(),
                    host: host_name(p.host),
                    evidence: p.evidence.clone(),
                    heartbeat_age_s: p.timings.map(|t| t.heartbeat_age.as_secs_f64()),
                    deadline_s: p.timings.map(|t| t.deadline.as_secs_f64()),
                });
            }
        }
        let state = world.lock();
        let vms: Vec<VmReport> = self
            .vm_names
            .iter()
            .filter_map(|(name, id)| {
                let v = state.vms.get(id)?;
                Some(VmReport {
                    name: name.clone(),
                    ha: v.ha,
                    placements: v
                        .placements
                        .iter()
                        .map(|p| PlacementReport {
                            at_s: at_s(world, p.at),
                            host: host_name(p.host),
                            state: format!("{:?}", p.state),
                        })
                        .collect(),
                    restarts: v
                        .restarts
                        .iter()
                        .map(|(at, from, to)| RestartReport {
                            at_s: at_s(world, *at),
                            from_host: host_name(*from),
                            to_host: host_name(Some(*to)).unwrap_or_default(),
                        })
                        .collect(),
                    proofs: proofs.remove(id).unwrap_or_default(),
                })
            })
            .collect();
        let fences = lock(&self.fences)
            .iter()
            .map(|f| FenceReport {
                at_s: at_s(world, f.at),
                host: host_name(Some(f.host)).unwrap_or_default(),
                method: f.method.into(),
                outcome: f.outcome.into(),
                evidence: f.evidence.clone(),
            })
            .collect();
        let alerts_raw = lock(&self.alerts.0).clone();
        let alerts: Vec<AlertReport> = alerts_raw
            .iter()
            .map(|a| AlertReport {
                at_s: at_s(world, a.at),
                kind: a.alert.kind.as_str().into(),
                host: host_name(a.alert.host),
                message: a.alert.message.clone(),
            })
            .collect();
        let detections = lock(&self.faults_seen)
            .iter()
            .filter(|(_, k, _, _)| {
                matches!(
                    k,
                    FaultKind::PowerOff
                        | FaultKind::AgentCrash
                        | FaultKind::MgmtPartition
                        | FaultKind::StorageLoss
                        | FaultKind::PingLoss
                        | FaultKind::PingDelay
                )
            })
            .map(|(id, kind, at, last_ping)| {
                let changes = history.get(id).map(Vec::as_slice).unwrap_or_default();
                let after: Vec<&StatusChange> = changes
                    .iter()
                    .filter(|c| world.instant(c.at) >= *at)
                    .collect();
                Detection {
                    host: host_name(Some(*id)).unwrap_or_default(),
                    fault: format!("{kind:?}"),
                    fault_at_s: at_s(world, *at),
                    last_ping_s: last_ping.map(|t| at_s(world, t)),
                    flagged_at_s: after
                        .iter()
                        .find(|c| c.from != Some(c.to))
                        .map(|c| at_s(world, world.instant(c.at))),
                    down_at_s: after
                        .iter()
                        .find(|c| c.to == Status::Down)
                        .map(|c| at_s(world, world.instant(c.at))),
                }
            })
            .collect();

        let mut invariants = Invariants::default();
        for v in &state.violations {
            let inv = match v.invariant {
                "no_double_run" => &mut invariants.no_double_run,
                "no_unsafe_start" => &mut invariants.no_unsafe_start,
                "no_false_down" => &mut invariants.no_false_down,
                _ => &mut invariants.no_unwanted_restart,
            };
            inv.violations
                .push(format!("at {}: {}", clock(at_s(world, v.at)), v.detail));
        }
        invariants
            .no_false_down
            .violations
            .extend(self.false_downs(&state, &history));
        let (broken, not_judged) = self.liveness(&state);
        invariants.ha_liveness.violations = broken;
        invariants.ha_liveness.not_judged = not_judged;
        for (_, inv) in invariants.all_mut() {
            inv.ok = inv.violations.is_empty();
        }
        let expectations = self.expectations(&hosts, &vms, &alerts);
        drop(state);
        Report {
            scenario: self.scenario.name.clone(),
            seed,
            virtual_duration_s: self.scenario.duration.as_millis() as f64 / 1000.0,
            wall_ms: 0,
            hosts,
            vms,
            fences,
            detections,
            alerts,
            invariants,
            expectations,
        }
    }
}
