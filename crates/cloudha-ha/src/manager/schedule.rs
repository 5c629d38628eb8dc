//! Scheduling: a host's VMs when it goes Down (the status follower), one VM's restart, stops,
//! migrations and destroys, the second trigger (power reports), and alerts.

use super::*;

impl HaInner {
    /// Raises an alert about `host` (cluster, pod and zone from its record) and/or a VM.
    /// `vm.ha.alerts.enabled = false` mutes only the "VM-HA disabled" alerts (CloudStack).
    pub(super) fn alert(
        &self,
        kind: AlertKind,
        host: Option<HostId>,
        vm: Option<VmId>,
        cluster: Option<ClusterId>,
        message: String,
    ) {
        if kind == AlertKind::HaDisabled && !self.liveness.vm_ha_alerts_enabled {
            return;
        }
        let rec = host.and_then(|h| self.hosts.get(h));
        self.ports.alerts.raise({
            let mut r = Alert::new(kind, message);
            r.host = host;
            r.vm = vm;
            r.cluster = cluster.or(rec.as_ref().and_then(|r| r.cluster));
            r.pod = rec.as_ref().and_then(|r| r.pod);
            r.zone = rec.as_ref().and_then(|r| r.zone);
            r
        });
    }

    pub(super) fn retry_interval(&self, t: WorkType) -> Duration {
        match t {
            WorkType::Ha => self.config.restart_retry_interval,
            WorkType::Migration => self.config.migrate_retry_interval,
            _ => self.config.stop_retry_interval,
        }
    }

    pub(super) async fn schedule_for_host(
        self: &Arc<Self>,
        host: &HostRecord,
        reason: WorkReason,
        prove: ProveDead,
    ) {
        if host.host_type != HostType::Routing {
            return;
        }
        if host.hypervisor.has_native_ha() {
            tracing::info!(host.id = %host.id, "VMs left to the hypervisor's own HA");
            return;
        }
        let mut vms = self.ports.vms.vms_on_host(host.id);
        vms.retain(|v| v.host == Some(host.id));
        vms.sort_by_key(|v| (!v.kind.is_system(), v.id));
        let names: Vec<&str> = vms
            .iter()
            .filter(|v| v.ha_enabled)
            .map(|v| v.name.as_str())
            .collect();
        if !self.liveness.vm_ha_enabled {
            self.alert(
                AlertKind::HaDisabled,
                Some(host.id),
                None,
                host.cluster,
                format!(
                    "Host {} is down; VM-HA is disabled: no restart of {}",
                    host.name,
                    names.join(", ")
                ),
            );
            return;
        }
        self.alert(
            AlertKind::HostDown,
            Some(host.id),
            None,
            host.cluster,
            format!(
                "Host {} is down; HA VMs to restart: [{}]",
                host.name,
                names.join(", ")
            ),
        );
        for vm in vms {
            if vm.local_root_disk {
                tracing::info!(vm = %vm.id, "root disk on local storage: its fate is its host's");
                continue;
            }
            self.schedule_restart(vm.id, prove, reason).await;
        }
    }

    pub(super) async fn schedule_restart(
        self: &Arc<Self>,
        vm: VmId,
        prove: ProveDead,
        reason: WorkReason,
    ) -> Option<WorkId> {
        let mut rec = self.ports.vms.get(vm)?;
        if rec.hypervisor.has_native_ha() {
            return None;
        }
        if !self.liveness.vm_ha_enabled {
            // CloudStack: VM-HA disabled ⇒ alert only; nothing force-stopped or scheduled.
            self.alert(
                AlertKind::HaDisabled,
                rec.host,
                Some(vm),
                rec.cluster,
                format!(
                    "VM {} needs HA, but VM-HA is disabled: nothing is done",
                    rec.name
                ),
            );
            return None;
        }
        let wants_ha = rec.ha_enabled || self.config.force_ha;
        if prove == ProveDead::AlreadyKnown {
            if !wants_ha {
                self.alert(
                    AlertKind::VmStopped,
                    rec.host,
                    Some(vm),
                    rec.cluster,
                    format!("VM {} stopped unexpectedly", rec.name),
                );
            }
            match self.ports.vms.force_stop(vm).await {
                Ok(r) => rec = r,
                Err(e) => tracing::warn!(vm = %vm, error = %e, "force stop failed"),
            }
            if !wants_ha {
                return None;
            }
        }
        let now = self.now();
        // A VM that failed recently inherits its tries (CloudStack's "cannot schedule new").
        let others = match self.ports.work.for_vm(vm).await {
            Ok(others) => others,
            Err(e) => {
                tracing::error!(vm = %vm, error = %ErrorChain(&e), "cannot read the VM's HA work");
                Vec::new()
            }
        };
        let tries = others
            .into_iter()
            .filter(|i| {
                i.work_type == WorkType::Ha
                    && i.time_to_try + self.config.time_between_failures >= now
            })
            .map(|i| i.tries)
            .max()
            .unwrap_or(0);
        let step = match prove {
            ProveDead::First => WorkStep::Investigating,
            ProveDead::AlreadyKnown => WorkStep::Scheduled,
        };
        let mut item = WorkItem::new(
            WorkType::Ha,
            step,
            reason,
            &rec,
            rec.host.or(rec.last_host),
            now,
        );
        item.tries = tries;
        if prove == ProveDead::AlreadyKnown {
            item.fence_proof = Some(
                match (reason, item.host) {
                    (WorkReason::HostDegraded, Some(h)) => DeathProof::operator_word(h),
                    (_, h) => DeathProof::vm_reported_off(h),
                }
                .recorded_at(now)
                .record(),
            );
        }
        let id = self.insert(item).await?;
        tracing::info!(vm = %vm, work = %id, ?reason, "scheduled HA restart");
        self.wake.notify_one();
        Some(id)
    }

    pub(super) async fn schedule_simple(
        &self,
        vm: VmId,
        host: Option<HostId>,
        work_type: WorkType,
        reason: WorkReason,
    ) -> Option<WorkId> {
        if !self.liveness.vm_ha_enabled {
            tracing::warn!(vm = %vm, ?work_type, "VM-HA disabled: not scheduled");
            return None;
        }
        let rec = self.ports.vms.get(vm)?;
        if work_type == WorkType::Stop {
            let others = match self.ports.work.for_vm(vm).await {
                Ok(others) => others,
                Err(e) => {
                    tracing::error!(vm = %vm, error = %ErrorChain(&e), "cannot read the VM's work: not scheduled");
                    return None;
                }
            };
            if others
                .iter()
                .any(|i| i.work_type == WorkType::Stop && !i.step.is_final())
            {
                return None;
            }
        }
        let item = WorkItem::new(
            work_type,
            WorkStep::Scheduled,
            reason,
            &rec,
            host,
            self.now(),
        );
        let id = self.insert(item).await?;
        self.wake.notify_one();
        Some(id)
    }

    /// Whether HA work already answers for `vm` as it is now on the Down `host`: an item not
    /// final, or a final one for this host that left the VM as it is (it gave up, or found
    /// nothing to do). An item of an earlier failure that the VM has moved on from since (it
    /// was started, and is on this host again) answers for nothing now.
    fn covered(items: &[WorkItem], vm: &VmRecord, host: HostId) -> bool {
        items.iter().any(|i| {
            !i.step.is_final()
                || (i.host == Some(host)
                    && i.previous_state == vm.state
                    && i.update_count == vm.update_count)
        })
    }

    /// At start: every VM the records place on a Down host and that no HA work answers for (the
    /// Down reached no HA manager: none was running, or it stopped before scheduling; see
    /// [`Self::covered`]) is scheduled, proven dead first.
    ///
    /// Returns whether it read the work of every VM it looked at (else, it is run again).
    pub(super) async fn reconcile_down_hosts(self: &Arc<Self>) -> bool {
        if !self.liveness.vm_ha_enabled {
            return true;
        }
        let mut complete = true;
        let down = self.hosts.list().into_iter().filter(|h| {
            h.status == Some(Status::Down)
                && h.host_type == HostType::Routing
                && !h.hypervisor.has_native_ha()
        });
        for host in down {
            let mut found = Vec::new();
            for vm in self.ports.vms.vms_on_host(host.id) {
                if vm.host != Some(host.id) || vm.local_root_disk {
                    continue;
                }
                if lock(&self.unstored).iter().any(|(_, i)| i.vm == vm.id) {
                    continue; // scheduled already; waits for the store
                }
                match self.ports.work.for_vm(vm.id).await {
                    Ok(items) if !Self::covered(&items, &vm, host.id) => found.push(vm),
                    Ok(_) => {}
                    Err(e) => {
                        complete = false;
                        tracing::error!(vm = %vm.id, error = %ErrorChain(&e), "start: cannot read the VM's work; it is looked at again shortly");
                    }
                }
            }
            if found.is_empty() {
                continue;
            }
            found.sort_by_key(|v| (!v.kind.is_system(), v.id));
            let names: Vec<&str> = found.iter().map(|v| v.name.as_str()).collect();
            self.alert(
                AlertKind::HostDown,
                Some(host.id),
                None,
                host.cluster,
                format!(
                    "Host {} was found Down at start with VMs no HA work took; restarting: [{}]",
                    host.name,
                    names.join(", ")
                ),
            );
            for vm in &found {
                self.schedule_restart(vm.id, ProveDead::First, WorkReason::HostDown)
                    .await;
            }
        }
        complete
    }

    pub(super) async fn status_loop(self: Arc<Self>, mut changes: StatusChanges) {
        while let Some(change) = changes.recv().await {
            match change.to {
                Status::Down if change.from != Some(Status::Down) => {
                    let Some(rec) = self.hosts.get(change.host) else {
                        continue;
                    };
                    self.schedule_for_host(&rec, WorkReason::HostDown, ProveDead::First)
                        .await;
                }
                Status::Up if change.event == cloudha_protocol::Event::Ready => {
                    let states = lock(&self.connecting).remove(&change.host);
                    if let Some(states) = states {
                        self.power_report(change.host, &states);
                    }
                }
                _ => {}
            }
        }
    }

    /// The second trigger: an HA VM the records say runs on `host` is reported off (or missing
    /// for longer than T) by that Up host.
    pub(super) fn power_report(self: &Arc<Self>, host: HostId, states: &[VmStateReport]) {
        if !self.config.ha_vm_restart_hostup {
            return;
        }
        let now = Instant::now();
        for vm in self.ports.vms.running_on(host) {
            let power = states.iter().find(|s| s.vm == vm).map(|s| s.power);
            let off = match power {
                Some(VmPowerState::PowerOn) => {
                    if !lock(&self.missing).is_empty() {
                        lock(&self.missing).remove(&vm);
                    }
                    false
                }
                Some(VmPowerState::PowerOff) => true,
                None | Some(VmPowerState::PowerReportMissing) => {
                    let since = *lock(&self.missing).entry(vm).or_insert(now);
                    now.saturating_duration_since(since) > self.liveness.ping_deadline()
                }
                Some(_) => false,
            };
            if !off {
                continue;
            }
            lock(&self.missing).remove(&vm);
            // One scheduling in flight per VM: the ping path does not await the store.
            if !lock(&self.reporting).insert(vm) {
                continue;
            }
            let me = Arc::clone(self);
            self.tasks
                .spawn(self.tasks.token().child_token(), async move {
                    match me.ports.work.for_vm(vm).await {
                        Ok(items) if items.iter().any(|i| !i.step.is_final()) => {}
                        Ok(_) => {
                            me.schedule_restart(vm, ProveDead::AlreadyKnown, WorkReason::VmStoppedOnUpHost)
                                .await;
                        }
                        Err(e) => {
                            tracing::error!(vm = %vm, error = %ErrorChain(&e), "power report: cannot read the VM's work; the next report retries");
                        }
                    }
                    lock(&me.reporting).remove(&vm);
                });
        }
    }
}
