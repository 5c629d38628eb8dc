//! The queue: the brake and its watcher, the cleanup, the workers' dispatch, one item's
//! processing and its saves (a claim check before every action), and placement candidates.

use super::*;
use std::sync::atomic::Ordering;

impl HaInner {
    /// Why the brake holds for `cluster` at `now`, if it does.
    pub(super) fn brake(&self, cluster: Option<ClusterId>, now: Instant) -> Option<String> {
        let released = cluster.is_some_and(|c| lock(&self.released).contains(&c));
        if let Some(start) = self.started_at.get()
            && now < *start + self.config.ha_startup_grace
            && !released
        {
            return Some(format!(
                "startup grace: {:?} left",
                (*start + self.config.ha_startup_grace) - now
            ));
        }
        let c = cluster?;
        let hosts: Vec<HostRecord> = self
            .hosts
            .in_cluster(c)
            .into_iter()
            .filter(|h| !h.resource_state.is_out_of_service())
            .collect();
        let size = hosts.len();
        let suspect = hosts
            .iter()
            .filter(|h| h.status != Some(Status::Up) || self.agent.is_suspect(h.id))
            .count();
        // A correlated failure takes at least two hosts: one failed host of a one-host cluster
        // (100 % suspect) is an ordinary failure, not a partition of the manager.
        if suspect >= 2 && suspect as f64 > self.config.ha_brake_fraction * size as f64 {
            if released {
                return None;
            }
            return Some(format!(
                "{suspect} of {size} hosts of cluster {c} are suspect (more than ha.brake.fraction = {})",
                self.config.ha_brake_fraction
            ));
        }
        // The fraction fell back: an operator's release has served its purpose.
        if released {
            lock(&self.released).remove(&c);
        }
        None
    }

    pub(super) async fn lift_brakes(&self, now: Instant) {
        let clusters: Vec<ClusterId> = lock(&self.braked).keys().copied().collect();
        let mut woke = false;
        for c in clusters {
            if self.brake(Some(c), now).is_some() {
                continue;
            }
            let vms: Vec<VmId> = lock(&self.braked)
                .remove(&c)
                .into_iter()
                .flatten()
                .collect();
            match self.ports.work.unbrake(self.now(), &vms).await {
                Ok(n) => {
                    tracing::info!(cluster = %c, items = n, "brake lifted");
                    woke |= n > 0;
                }
                Err(e) => {
                    // Held until the next round.
                    tracing::error!(cluster = %c, error = %ErrorChain(&e), "cannot lift the brake");
                    lock(&self.braked).entry(c).or_default().extend(vms);
                }
            }
        }
        if woke {
            self.wake.notify_one();
        }
    }

    pub(super) async fn brake_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(
            self.liveness
                .ping_monitor_resolution
                .max(Duration::from_secs(1)),
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            self.lift_brakes(Instant::now()).await;
        }
    }

    pub(super) async fn cleanup_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.time_between_cleanup);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let cutoff = self.now() - self.config.time_between_failures;
            match self.ports.work.cleanup(cutoff).await {
                Ok(n) => tracing::debug!(removed = n, "HA work cleanup"),
                Err(e) => tracing::warn!(error = %ErrorChain(&e), "HA work cleanup failed"),
            }
        }
    }

    /// What a start does to the queue before any worker runs: this server's old claims
    /// released, braked items unbraked (the brake is evaluated again), pending items back to
    /// Investigating.
    pub(super) async fn resume(&self) -> Result<(), StoreError> {
        let now = self.now();
        let work = &self.ports.work;
        let released = work.release_owner(self.owner).await?;
        let braked: Vec<VmId> = work
            .list()
            .await?
            .iter()
            .filter(|i| i.braked)
            .map(|i| i.vm)
            .collect();
        work.unbrake(now, &braked).await?;
        let pending = work.mark_pending_investigating(now).await?;
        tracing::info!(released, pending, "HA manager started");
        Ok(())
    }

    /// [`Self::resume`] again and again, with a growing pause, until the store takes it.
    pub(super) async fn resume_until_done(&self) {
        let mut pause = STORE_RETRY;
        loop {
            tokio::time::sleep(pause).await;
            match self.resume().await {
                Ok(()) => return,
                Err(e) => {
                    pause = (pause * 2).min(STORE_RETRY_MAX);
                    tracing::error!(error = %ErrorChain(&e), "HA manager start: still cannot resume pending work; workers wait for the store, retrying in {pause:?}");
                }
            }
        }
    }

    /// [`Self::reconcile_down_hosts`] again and again, with a growing pause, until it has read
    /// the work of every VM it looks at.
    pub(super) async fn reconcile_until_complete(self: Arc<Self>) {
        let mut pause = STORE_RETRY;
        loop {
            tokio::time::sleep(pause).await;
            if self.reconcile_down_hosts().await {
                return;
            }
            pause = (pause * 2).min(STORE_RETRY_MAX);
        }
    }

    /// Inserts the items the store did not take, oldest first, as soon as it takes them again
    /// (a growing pause between rounds); says how many wait, and when they are stored. Each
    /// round tries every item: one the store keeps refusing holds up no other.
    pub(super) async fn unstored_loop(self: Arc<Self>) {
        loop {
            self.unstored_wake.notified().await;
            let mut pause = STORE_RETRY;
            loop {
                let waiting: Vec<(u64, WorkItem)> = lock(&self.unstored).iter().cloned().collect();
                if waiting.is_empty() {
                    break;
                }
                let mut stored = HashSet::new();
                let mut failed = None;
                for (seq, item) in waiting {
                    match self.ports.work.insert(item.clone()).await {
                        Ok(id) => {
                            stored.insert(seq);
                            tracing::info!(vm = %item.vm, work = %id, "HA work stored now that the store is back");
                            self.wake.notify_one();
                        }
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                }
                lock(&self.unstored).retain(|(seq, _)| !stored.contains(seq));
                match failed {
                    None => pause = STORE_RETRY,
                    Some(e) => {
                        let waiting = lock(&self.unstored).len();
                        tracing::error!(waiting, error = %ErrorChain(&e), "HA work store: {waiting} new items wait in memory; retrying in {pause:?}");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(STORE_RETRY_MAX);
                    }
                }
            }
        }
    }

    /// After a claim that got no answer: the items the store says this server holds and no
    /// worker of it processes are handed back (each write checks the version, so an item a
    /// worker just let go is left alone). Done once the store has answered.
    async fn release_orphans(&self) {
        if !self.claims_unsure.swap(false, Ordering::SeqCst) {
            return;
        }
        let items = match self.ports.work.list().await {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "cannot look for claims without an answer; trying again");
                self.claims_unsure.store(true, Ordering::SeqCst);
                return;
            }
        };
        for mut item in items {
            if item.owner != Some(self.owner)
                || item.step.is_final()
                || lock(&self.working).contains(&item.id)
            {
                continue;
            }
            item.owner = None;
            item.taken = None;
            item.note(
                self.now(),
                "released: claimed by a take whose answer was lost",
            );
            match self.ports.work.update(self.owner, &item).await {
                Ok(_) => {
                    tracing::warn!(work = %item.id, "a claim whose answer was lost: released");
                    self.wake.notify_one();
                }
                Err(StoreError::Stale { .. } | StoreError::UnknownWork(_)) => {}
                Err(e) => {
                    tracing::warn!(work = %item.id, error = %ErrorChain(&e), "cannot release a claim without an answer; trying again");
                    self.claims_unsure.store(true, Ordering::SeqCst);
                }
            }
        }
    }

    pub(super) async fn dispatch_loop(self: Arc<Self>) {
        let mut pause = STORE_RETRY;
        loop {
            let Ok(permit) = Arc::clone(&self.slots).acquire_owned().await else {
                return;
            };
            let now = self.now();
            let taken = self.ports.work.take(self.owner, now).await;
            if let Ok(item) = &taken {
                pause = STORE_RETRY;
                if let Some(item) = item {
                    lock(&self.working).insert(item.id);
                }
                self.release_orphans().await;
            }
            match taken {
                Ok(Some(item)) => {
                    let me = Arc::clone(&self);
                    let span = tracing::info_span!("ha_work", work = %item.id, vm = %item.vm);
                    self.tasks.spawn(
                        self.tasks.token().child_token(),
                        async move {
                            let id = item.id;
                            me.process(item).await;
                            lock(&me.working).remove(&id);
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Ok(None) => {
                    drop(permit);
                    let idle = self.config.time_to_sleep;
                    let wait = match self.ports.work.next_due().await {
                        Ok(next) => {
                            next.map_or(idle, |t| t.saturating_duration_since(now).min(idle))
                        }
                        Err(e) => {
                            tracing::warn!(error = %ErrorChain(&e), "HA work store: cannot read the next due item");
                            idle.min(STORE_RETRY)
                        }
                    };
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                Err(e) => {
                    drop(permit);
                    // The claim may have landed without its answer.
                    self.claims_unsure.store(true, Ordering::SeqCst);
                    tracing::error!(error = %ErrorChain(&e), "HA work store: cannot take work; retrying in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(STORE_RETRY_MAX);
                }
            }
        }
    }

    pub(super) async fn process(self: &Arc<Self>, mut item: WorkItem) {
        let now = self.now();
        let outcome = if self.liveness.vm_ha_enabled {
            match item.work_type {
                WorkType::Ha => self.restart(&mut item).await,
                WorkType::Migration => self.migrate(&mut item).await,
                WorkType::Destroy => self.destroy(&mut item).await,
                _ => self.stop(&mut item).await,
            }
        } else {
            Outcome::Retry {
                at: now + self.retry_interval(item.work_type),
                count: false,
                why: "VM-HA disabled".into(),
            }
        };
        let now = self.now();
        match outcome {
            Outcome::Lost(why) => {
                tracing::warn!(work = %item.id, "claim lost: {why}; the item is left to its new owner");
                self.wake.notify_one();
                return;
            }
            Outcome::Done(why) => {
                item.step = WorkStep::Done;
                item.note(now, format!("done: {why}"));
            }
            Outcome::Cancelled(why) => {
                item.step = WorkStep::Cancelled;
                item.note(now, format!("cancelled: {why}"));
            }
            Outcome::Retry { at, count, why } => {
                if count {
                    item.tries += 1;
                }
                if item.tries >= self.config.max_retries {
                    item.step = WorkStep::Done;
                    item.note(now, format!("giving up after {} tries: {why}", item.tries));
                    let vm = self.ports.vms.get(item.vm);
                    self.alert(
                        AlertKind::HaGaveUp,
                        item.host,
                        Some(item.vm),
                        vm.as_ref().and_then(|v| v.cluster),
                        format!(
                            "HA gave up on VM {} after {} tries: {why}",
                            vm.map_or(item.vm.to_string(), |v| v.name),
                            item.tries
                        ),
                    );
                } else {
                    item.time_to_try = at;
                    item.note(
                        now,
                        format!(
                            "try {} failed: {why}; next at +{:?}",
                            item.tries,
                            at.saturating_duration_since(now)
                        ),
                    );
                }
            }
            Outcome::Braked(cluster, why) => {
                item.braked = true;
                item.note(now, format!("braked: {why}"));
                let first = {
                    let mut braked = lock(&self.braked);
                    let first = !braked.contains_key(&cluster);
                    braked.entry(cluster).or_default().insert(item.vm);
                    first
                };
                if first {
                    self.alert(AlertKind::BrakeHolds, None, None, Some(cluster), format!("HA brake holds for cluster {cluster}: {why}; no fencing or restart there until it lifts"));
                }
            }
        }
        item.owner = None;
        item.taken = None;
        self.write_back(&item).await;
        self.wake.notify_one();
    }

    /// Writes a processed item back, releasing the claim. A backend failure is retried (with a
    /// growing pause, until it succeeds or the manager stops): the item is never dropped. A
    /// refused write (the claim moved to another owner) is dropped: the new owner decides.
    pub(super) async fn write_back(&self, item: &WorkItem) {
        let mut pause = STORE_RETRY;
        let mut item = item.clone();
        loop {
            match self.ports.work.update(self.owner, &item).await {
                Ok(_) => return,
                Err(StoreError::Stale {
                    holder: Some(holder),
                    current,
                    ..
                }) if holder == self.owner && current != item.version => {
                    // Still our claim: a write of ours landed without its answer.
                    tracing::warn!(work = %item.id, "a save landed without its answer; writing back at version {current}");
                    item.version = current;
                }
                Err(e @ (StoreError::Stale { .. } | StoreError::UnknownWork(_))) => {
                    tracing::warn!(work = %item.id, error = %ErrorChain(&e), "write-back refused: the claim moved");
                    return;
                }
                Err(e) => {
                    tracing::error!(work = %item.id, error = %ErrorChain(&e), "write-back failed; retrying in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(STORE_RETRY_MAX);
                }
            }
        }
    }

    /// Saves an item mid-processing (still claimed) and so checks the claim before an action.
    /// A refused write means the claim moved: processing stops at once, writing nothing. A
    /// backend failure means the claim cannot be checked: no action now, the item is tried
    /// again later without spending a try (the write-back retries until the store is back).
    pub(super) async fn save(&self, item: &mut WorkItem) -> Result<(), Outcome> {
        let mut result = self.ports.work.update(self.owner, item).await;
        if let Err(StoreError::Stale {
            holder: Some(holder),
            current,
            ..
        }) = result
            && holder == self.owner
        {
            // Still our claim: a write of ours landed without its answer (every write since our
            // take is ours). Written again over it.
            tracing::warn!(work = %item.id, "a save landed without its answer; writing again at version {current}");
            item.version = current;
            result = self.ports.work.update(self.owner, item).await;
        }
        match result {
            Ok(version) => {
                item.version = version;
                Ok(())
            }
            Err(e @ (StoreError::Stale { .. } | StoreError::UnknownWork(_))) => {
                Err(Outcome::Lost(e.to_string()))
            }
            Err(e) => Err(Outcome::Retry {
                at: self.now() + self.config.investigate_retry_interval,
                count: false,
                why: format!("cannot check the claim: {}", ErrorChain(&e)),
            }),
        }
    }

    pub(super) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Inserts a new item; a backend failure is retried a few times (bounded: scheduling runs
    /// in investigation and ping flows). An item the store still does not take is kept in
    /// memory and inserted by the `ha_unstored` task once the store is back (an alert says
    /// so); while items wait there, a new one waits behind them without trying, so order is
    /// kept and a scheduling flow is not held by a store that is away. `None` unless stored now.
    pub(super) async fn insert(&self, item: WorkItem) -> Option<WorkId> {
        if !lock(&self.unstored).is_empty() {
            self.keep_unstored(item, "earlier items wait for the store");
            return None;
        }
        let mut pause = STORE_RETRY;
        for attempt in 1..=INSERT_TRIES {
            match self.ports.work.insert(item.clone()).await {
                Ok(id) => return Some(id),
                Err(e) if attempt < INSERT_TRIES => {
                    tracing::warn!(vm = %item.vm, error = %ErrorChain(&e), "cannot store HA work; retrying in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(STORE_RETRY_MAX);
                }
                Err(e) => {
                    let why = ErrorChain(&e).to_string();
                    self.keep_unstored(item, &why);
                    return None;
                }
            }
        }
        None
    }

    fn keep_unstored(&self, item: WorkItem, why: &str) {
        tracing::error!(vm = %item.vm, why, "HA work cannot be stored now: kept in memory and stored once the store is back");
        self.alert(
            AlertKind::HaRestartFailed,
            item.host,
            Some(item.vm),
            None,
            format!(
                "HA work for VM {} cannot be stored yet ({why}): this manager keeps it and stores it once the store is back (if it stops first, a manager start schedules again the VMs of Down hosts)",
                item.vm
            ),
        );
        let seq = self.unstored_seq.fetch_add(1, Ordering::SeqCst);
        lock(&self.unstored).push_back((seq, item));
        self.unstored_wake.notify_one();
    }

    /// The item's VM as it is now, or the outcome when the item is not needed any more: the VM
    /// is gone, or (`checkAndCancelWorkIfNeeded`) its host is Up again.
    pub(super) fn current_vm(&self, item: &WorkItem) -> Result<VmRecord, Outcome> {
        let Some(vm) = self.ports.vms.get(item.vm) else {
            return Err(Outcome::Done("VM gone".into()));
        };
        if self.cancelled(item, &vm) {
            return Err(Outcome::Cancelled("its host is Up again".into()));
        }
        Ok(vm)
    }

    /// `checkAndCancelWorkIfNeeded`: an item still investigating a host that is Up again is
    /// not needed. Not one HA has acted on already (a resumed item goes back to Investigating):
    /// it stopped the VM on a proof, or asked for a start whose outcome is unknown; that VM is
    /// HA's to start, whatever its old host does now.
    pub(super) fn cancelled(&self, item: &WorkItem, vm: &VmRecord) -> bool {
        item.step == WorkStep::Investigating
            && !item.start_unknown
            && DeathProof::standing(item, vm).is_none()
            && item.reason.is_cancellable()
            && item.reason != WorkReason::HostDegraded
            && item
                .host
                .is_some_and(|h| self.hosts.status(h) == Some(Status::Up))
    }

    pub(super) fn retry(&self, interval: Duration, why: impl Into<String>) -> Outcome {
        Outcome::Retry {
            at: self.now() + interval,
            count: true,
            why: why.into(),
        }
    }

    pub(super) fn candidates(
        &self,
        vm: &VmRecord,
        failed: Option<HostId>,
        planner: Planner,
    ) -> Vec<HostId> {
        let pool = match (planner, vm.cluster) {
            (Planner::Default, Some(c)) => self.hosts.in_cluster(c),
            _ => self
                .hosts
                .list()
                .into_iter()
                .filter(|h| h.zone == vm.zone)
                .collect(),
        };
        pool.into_iter()
            .filter(|h| {
                h.status == Some(Status::Up)
                    && h.resource_state == ResourceState::Enabled
                    && h.host_type == HostType::Routing
                    && h.hypervisor == vm.hypervisor
                    && Some(h.id) != failed
                    && self
                        .config
                        .ha_tag
                        .as_ref()
                        .is_none_or(|t| h.tags.contains(t))
            })
            .map(|h| h.id)
            .collect()
    }
}
