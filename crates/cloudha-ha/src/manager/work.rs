//! The work itself: restart (prove dead, fence once per host, force-stop, start with the proof),
//! migrate, stop and destroy.

use super::*;

impl HaInner {
    pub(super) async fn restart(self: &Arc<Self>, item: &mut WorkItem) -> Outcome {
        let others = match self.ports.work.for_vm(item.vm).await {
            Ok(others) => others,
            Err(e) => {
                return Outcome::Retry {
                    at: self.now() + self.config.investigate_retry_interval,
                    count: false,
                    why: format!("cannot read the VM's HA work: {}", ErrorChain(&e)),
                };
            }
        };
        let vm = match self.current_vm(item) {
            Ok(vm) => vm,
            Err(outcome) => return outcome,
        };
        // A start whose outcome is unknown is settled before anything else: until then the
        // VM may be starting, whatever newer work says.
        if item.start_unknown {
            if let Some(outcome) = self.unknown_start(item, &vm, &others) {
                return outcome;
            }
        } else {
            if others
                .iter()
                .any(|o| o.work_type == WorkType::Ha && o.id > item.id && !o.step.is_final())
            {
                return Outcome::Done("a newer HA item exists for the VM".into());
            }
            if let Some(o) = others.iter().find(|o| {
                o.work_type == WorkType::Ha
                    && o.id != item.id
                    && o.start_unknown
                    && !o.step.is_final()
            }) {
                return Outcome::Retry {
                    at: self.now() + self.config.restart_retry_interval,
                    count: false,
                    why: format!(
                        "the outcome of start {} of item {} is unknown: no other start until it is settled",
                        o.start_key().map_or_else(String::new, |k| k.to_string()),
                        o.id
                    ),
                };
            }
        }
        if others.iter().any(|o| {
            o.work_type == WorkType::Ha
                && o.id != item.id
                && o.owner.is_some()
                && !o.step.is_final()
        }) {
            return self.retry(
                self.config.investigate_retry_interval,
                "another HA item for the VM is running",
            );
        }
        let standing = DeathProof::standing(item, &vm);
        if standing.is_none()
            && (vm.state != item.previous_state || vm.update_count != item.update_count)
        {
            return Outcome::Done(format!(
                "VM changed since scheduling ({:?} now, {:?} then)",
                vm.state, item.previous_state
            ));
        }
        let host = item.host.and_then(|h| self.hosts.get(h));
        let cluster = vm.cluster.or(host.as_ref().and_then(|h| h.cluster));
        if item.reason != WorkReason::HostDegraded
            && let Some(why) = self.brake(cluster, Instant::now())
        {
            return Outcome::Braked(cluster.unwrap_or(ClusterId(0)), why);
        }
        let proof = if item.step == WorkStep::Investigating {
            // A VM HA stopped on a recorded proof (a resumed item) is not investigated again,
            // nor stopped again: its record is as HA left it, and a start of it whose answer
            // was lost may still land, so the record is not written over.
            if let Some(proof) = standing {
                item.previous_state = vm.state;
                item.update_count = vm.update_count;
                item.step = WorkStep::Scheduled;
                item.note(
                    self.now(),
                    "stopped by HA on a standing proof; step Scheduled",
                );
                if let Err(outcome) = self.save(item).await {
                    return outcome;
                }
                proof
            } else {
                let proof = match &host {
                    Some(host) if vm.host != Some(host.id) => {
                        return Outcome::Done("VM no longer on the host".into());
                    }
                    Some(host) => match self.prove_dead(item, &vm, host).await {
                        Ok(proof) => proof,
                        Err(outcome) => return outcome,
                    },
                    None => {
                        return self.retry(
                            self.config.restart_retry_interval,
                            "no record of the VM's host: it cannot be proven dead",
                        );
                    }
                };
                // The proof is recorded, and the claim checked, before acting: a worker whose
                // claim moved while it fenced must not touch the VM.
                if let Err(outcome) = self.save(item).await {
                    return outcome;
                }
                match self.ports.vms.force_stop(vm.id).await {
                    Ok(r) => {
                        item.previous_state = r.state;
                        item.update_count = r.update_count;
                    }
                    Err(e) => {
                        return self.retry(
                            self.config.restart_retry_interval,
                            format!("force stop failed: {e}"),
                        );
                    }
                }
                item.step = WorkStep::Scheduled;
                item.note(self.now(), "force-stopped; step Scheduled");
                if let Err(outcome) = self.save(item).await {
                    return outcome;
                }
                proof
            }
        } else {
            // Scheduled: HA stopped the VM on a proof, in an earlier try or when scheduling.
            let Some(proof) = DeathProof::standing(item, &vm) else {
                return Outcome::Done(
                    "no death proof stands: the VM is not as HA stopped it".into(),
                );
            };
            proof
        };
        let Some(vm) = self.ports.vms.get(item.vm) else {
            return Outcome::Done("VM gone".into());
        };
        if !vm.ha_enabled && !self.config.force_ha {
            return Outcome::Done("VM is not HA-enabled: it stays stopped".into());
        }
        let host_up = host
            .as_ref()
            .is_some_and(|h| self.hosts.status(h.id) == Some(Status::Up));
        if !host_up && vm.local_root_disk {
            return Outcome::Done("root disk on local storage: cannot restart elsewhere".into());
        }
        let failed = item.host.filter(|_| !host_up);
        let mut params = StartParams {
            candidates: self.candidates(&vm, failed, Planner::Default),
            planner: Planner::Default,
            ha_tag: self.config.ha_tag.clone(),
            ha_operation: true,
            key: Self::start_key(item),
        };
        // The key is recorded and the claim checked right before the start (a fencing token):
        // never two starts.
        if let Err(outcome) = self.save(item).await {
            return outcome;
        }
        let mut result = self.ports.vms.start(vm.id, params.clone(), &proof).await;
        if matches!(result, Err(StartError::InsufficientCapacity(_))) {
            item.start_unknown = false;
            item.note(
                self.now(),
                "insufficient capacity with the VM's planner; trying the HA planner",
            );
            params.candidates = self.candidates(&vm, failed, Planner::Ha);
            params.planner = Planner::Ha;
            params.key = Self::start_key(item);
            if let Err(outcome) = self.save(item).await {
                return outcome;
            }
            result = self.ports.vms.start(vm.id, params, &proof).await;
        }
        match result {
            Ok(on) => {
                item.start_unknown = false;
                self.started(item, &vm, on);
                Outcome::Done(format!("started on host {on}"))
            }
            Err(StartError::OutcomeUnknown(why)) => {
                let key = item.start_key().map_or_else(String::new, |k| k.to_string());
                self.alert(
                    AlertKind::HaRestartFailed,
                    item.host,
                    Some(vm.id),
                    vm.cluster,
                    format!(
                        "Start of VM {} (key {key}) did not answer: {why}; \
                         its record is read before the start is asked again",
                        vm.name
                    ),
                );
                self.retry(
                    self.config.restart_retry_interval,
                    format!("start {key}: outcome unknown ({why})"),
                )
            }
            Err(e) => {
                item.start_unknown = false;
                self.alert(
                    AlertKind::HaRestartFailed,
                    item.host,
                    Some(vm.id),
                    vm.cluster,
                    format!("Unable to restart VM {}: {e}", vm.name),
                );
                if let Some(now) = self.ports.vms.get(vm.id) {
                    item.previous_state = now.state;
                    item.update_count = now.update_count;
                }
                self.retry(self.config.restart_retry_interval, e.to_string())
            }
        }
    }

    /// The key of the start about to be asked for: the same as the last one while its outcome is
    /// unknown, else a new attempt. Marks the outcome unknown until an answer comes.
    fn start_key(item: &mut WorkItem) -> StartKey {
        if !item.start_unknown || item.start_attempts == 0 {
            item.start_attempts += 1;
        }
        item.start_unknown = true;
        StartKey {
            work: item.id,
            attempt: item.start_attempts,
        }
    }

    fn started(&self, item: &WorkItem, vm: &VmRecord, on: HostId) {
        let from = item.host.map_or("?".into(), |h| h.to_string());
        self.alert(
            AlertKind::HaRestart,
            Some(on),
            Some(vm.id),
            vm.cluster,
            format!(
                "HA starting VM {} on host {on} (was on host {from})",
                vm.name
            ),
        );
    }

    /// The latest start of the item went unanswered (no answer in time, or the manager stopped
    /// while asking): the VM record says whether it happened. `None`: it did not, and the VM is
    /// as HA left it, so the restart goes on and asks again with the same key.
    fn unknown_start(
        &self,
        item: &mut WorkItem,
        vm: &VmRecord,
        others: &[WorkItem],
    ) -> Option<Outcome> {
        let key = item.start_key()?;
        if vm.start_key == Some(key) {
            item.start_unknown = false;
            return Some(match (vm.state, vm.host) {
                (VmState::Running, Some(on)) => {
                    self.started(item, vm, on);
                    Outcome::Done(format!("start {key} happened: running on host {on}"))
                }
                (VmState::Starting, _) => {
                    item.start_unknown = true;
                    Outcome::Retry {
                        at: self.now() + self.config.restart_retry_interval,
                        count: false,
                        why: format!("start {key} is under way"),
                    }
                }
                (state, _) => Outcome::Done(format!(
                    "start {key} happened; the VM is {state:?} since: not started again"
                )),
            });
        }
        if vm.state != item.previous_state || vm.update_count != item.update_count {
            // Stopped again on no host, last on the failed host, by a newer restart of it (an
            // operator's, which force-stops the records when scheduled): the start may still
            // land, so it is asked again with its key (the orchestrator starts only a stopped
            // VM, once per key) and the newer item waits for it. A stop alone is the operator's
            // word: nothing more is asked.
            let restart_wanted = others
                .iter()
                .any(|o| o.work_type == WorkType::Ha && o.id > item.id && !o.step.is_final());
            let stopped_again = restart_wanted
                && vm.state == VmState::Stopped
                && vm.host.is_none()
                && item.host.is_some()
                && vm.last_host == item.host;
            if !stopped_again {
                return Some(Outcome::Done(format!(
                    "the VM changed while the outcome of start {key} was unknown ({:?} now): \
                     not started again",
                    vm.state
                )));
            }
            item.previous_state = vm.state;
            item.update_count = vm.update_count;
            item.note(
                self.now(),
                format!("the VM was stopped again while start {key} was unknown"),
            );
        }
        item.note(
            self.now(),
            format!("start {key} did not land (the VM is as HA left it): asking again, same key"),
        );
        None
    }

    /// Proves the VM's old copy cannot run: investigators, then the host's fence (one per host,
    /// shared by its VMs). Records the proof, and returns it.
    pub(super) async fn prove_dead(
        &self,
        item: &mut WorkItem,
        vm: &VmRecord,
        host: &HostRecord,
    ) -> Result<DeathProof, Outcome> {
        let now = self.now();
        if item.reason == WorkReason::HostDegraded {
            let proof = DeathProof::operator_word(host.id).recorded_at(now);
            item.note(now, format!("no fencing: {proof}"));
            item.fence_proof = Some(proof.record());
            return Ok(proof);
        }
        let (verdict, by) = investigate::investigate_vm(&self.investigators, vm.id, host).await;
        item.note(
            now,
            format!("VM verdict {verdict:?} by {}", by.unwrap_or("nobody")),
        );
        match verdict {
            VmVerdict::Alive => {
                return Err(if self.hosts.status(host.id) == Some(Status::Up) {
                    Outcome::Done("VM alive and its host is Up: no restart needed".into())
                } else {
                    self.retry(
                        self.config.investigate_retry_interval,
                        "VM alive but its host is not Up",
                    )
                });
            }
            VmVerdict::Dead => {
                let proof = DeathProof::dead_verdict(
                    host.id,
                    format!(
                        "{} found the VM not running on host {}",
                        by.unwrap_or("?"),
                        host.id
                    ),
                )
                .recorded_at(now);
                item.note(now, format!("proof: {proof}"));
                item.fence_proof = Some(proof.record());
                return Ok(proof);
            }
            VmVerdict::Unknown => {}
        }
        match self.fence_host(vm, host).await {
            (Ok(proof), reused) => {
                let how = if reused {
                    "host already fenced"
                } else {
                    "fenced"
                };
                item.note(self.now(), format!("{how}: {proof}"));
                let proof = proof.recorded_at(self.now());
                item.fence_proof = Some(proof.record());
                Ok(proof)
            }
            (Err(why), _) => {
                item.note(self.now(), format!("not fenced: {why}"));
                Err(self.retry(
                    self.config.restart_retry_interval,
                    format!("no fencer could fence the host: {why}"),
                ))
            }
        }
    }

    /// Fences `host` once for all its VMs: a proof is reused until the host's status changes
    /// (it reconnects or comes back Up); a failure is reused for the rest of its retry round,
    /// so its "Unable to fence off host" alert is raised once per host and round. Returns the
    /// outcome and whether it was reused.
    pub(super) async fn fence_host(
        &self,
        vm: &VmRecord,
        host: &HostRecord,
    ) -> (Result<DeathProof, String>, bool) {
        let slot = Arc::clone(lock(&self.fences).entry(host.id).or_default());
        let mut last = slot.lock().await;
        let now = Instant::now();
        let current = self
            .hosts
            .get(host.id)
            .map_or(host.update_count, |h| h.update_count);
        if let Some(f) = last.as_ref()
            && f.update_count == current
        {
            match &f.outcome {
                Ok(proof) => return (Ok(proof.duplicate()), true),
                Err((at, why)) if now < *at + self.config.restart_retry_interval => {
                    return (Err(why.clone()), true);
                }
                Err(_) => {}
            }
        }
        let mut reasons = Vec::new();
        let mut outcome = None;
        let mut alive = false;
        for fencer in &self.ports.fencers {
            match fencer.fence(vm, host).await {
                // The fencer's evidence becomes a proof here, for the host it was asked to fence.
                FenceOutcome::Fenced(evidence) => {
                    outcome = Some((fencer.name(), DeathProof::fenced(host.id, evidence)));
                    break;
                }
                FenceOutcome::Failed { reason } | FenceOutcome::NotApplicable { reason } => {
                    reasons.push(format!("{}: {reason}", fencer.name()));
                }
                FenceOutcome::Alive { reason } => {
                    // Signs of life: no fencer may act on this host now.
                    reasons.push(format!("{}: {reason}; the chain stops", fencer.name()));
                    alive = true;
                    break;
                }
            }
        }
        if let Some((by, proof)) = &outcome {
            tracing::info!(host.id = %host.id, fencer = by, %proof, "host fenced");
        }
        let result = outcome
            .map(|(_, proof)| proof)
            .ok_or_else(|| reasons.join("; "));
        if let Err(why) = &result
            && !alive
        {
            self.alert(
                AlertKind::FenceFailed,
                Some(host.id),
                None,
                host.cluster,
                format!(
                    "Unable to fence off host {}: {why}; its HA VMs wait (next try in {:?})",
                    host.name, self.config.restart_retry_interval
                ),
            );
        }
        // A pool fence resets the power state of one VM in the pool: each VM needs its own.
        if !matches!(&result, Ok(p) if p.kind() == ProofKind::PoolFenced) {
            *last = Some(HostFence {
                update_count: current,
                outcome: result
                    .as_ref()
                    .map(DeathProof::duplicate)
                    .map_err(|why| (now, why.clone())),
            });
        }
        (result, false)
    }

    pub(super) async fn migrate(&self, item: &mut WorkItem) -> Outcome {
        let vm = match self.current_vm(item) {
            Ok(vm) => vm,
            Err(outcome) => return outcome,
        };
        let Some(from) = item.host.or(vm.host) else {
            return Outcome::Done("VM has no host".into());
        };
        item.step = WorkStep::Migrating;
        if let Err(outcome) = self.save(item).await {
            return outcome;
        }
        let candidates = self.candidates(&vm, Some(from), Planner::Default);
        match self.ports.vms.migrate_away(vm.id, from, candidates).await {
            Ok(to) => Outcome::Done(format!("migrated to host {to}")),
            Err(StartError::InsufficientCapacity(e)) => self.retry(
                self.config.migrate_retry_interval,
                format!("insufficient capacity: {e}"),
            ),
            Err(e) => self.retry(self.config.migrate_retry_interval, e.to_string()),
        }
    }

    pub(super) async fn stop(&self, item: &mut WorkItem) -> Outcome {
        let vm = match self.current_vm(item) {
            Ok(vm) => vm,
            Err(outcome) => return outcome,
        };
        // The claim is checked before acting on the VM.
        if let Err(outcome) = self.save(item).await {
            return outcome;
        }
        let changed = vm.state != item.previous_state
            || vm.update_count != item.update_count
            || vm.host.is_none()
            || vm.host != item.host;
        let result = match item.work_type {
            WorkType::Stop => self.ports.vms.stop(vm.id).await,
            _ if changed => return Outcome::Done("VM changed since scheduling".into()),
            WorkType::CheckStop => self.ports.vms.stop(vm.id).await,
            _ => self.ports.vms.force_stop(vm.id).await,
        };
        match result {
            Ok(_) => Outcome::Done("stopped".into()),
            Err(e) => self.retry(self.config.stop_retry_interval, e.to_string()),
        }
    }

    pub(super) async fn destroy(&self, item: &mut WorkItem) -> Outcome {
        let vm = match self.current_vm(item) {
            Ok(vm) => vm,
            Err(outcome) => return outcome,
        };
        if let Err(outcome) = self.save(item).await {
            return outcome;
        }
        let expunge = if matches!(vm.kind, VmKind::SecondaryStorageVm | VmKind::ConsoleProxy) {
            Expunge::Now
        } else {
            Expunge::Later
        };
        if expunge == Expunge::Later && item.previous_state == VmState::Destroyed {
            return Outcome::Done("already destroyed".into());
        }
        if item.previous_state == VmState::Running
            && let Err(e) = self.ports.vms.force_stop(vm.id).await
        {
            return self.retry(self.config.stop_retry_interval, e.to_string());
        }
        if item.previous_state == VmState::Expunging {
            return self.retry(self.config.stop_retry_interval, "VM still expunging");
        }
        match self.ports.vms.destroy(vm.id, expunge).await {
            Ok(()) => Outcome::Done("destroyed".into()),
            Err(e) => self.retry(self.config.stop_retry_interval, e.to_string()),
        }
    }
}
