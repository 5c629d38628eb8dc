//! Adversarial tests of bounded, idempotent HA starts (`StartKey`, `start_unknown`): manager
//! restarts at each point of the start path, claims moving while a start is unknown, newer items,
//! operator actions, an orchestrator delivering a start late, the HA planner fallback, retries
//! running out and a work store that fails (or lands a write whose answer is lost) at the save
//! right before a start.
//!
//! The invariant under attack: a VM never runs twice (never two successful, non-repeated starts of
//! one VM for one failure; never a start while its old copy may run), and no work item is lost
//! (every item ends final or keeps being retried), nor a VM HA stopped left stopped silently.
//!

use std::collections::HashSet;
use std::sync::Mutex;

use cloudha_testkit::StartMode;

use super::*;

mod operators;
mod restarts;
mod store;

// The bounded rig and its readers are `start_unknown`'s.
use super::start_unknown::{RETRY, WAIT, bounded_config, keys, notes};

/// A manager over the rig's agent, alerts, investigator and fencer, with its own owner, work
/// store and orchestrator.
fn manager_over(
    h: &H,
    owner: OwnerId,
    work: Arc<dyn HaWorkStore>,
    vms: Arc<dyn VmOrchestrator>,
) -> HaManager {
    HaManager::new(
        h.config.ha.clone(),
        owner,
        &h.agent,
        HaPorts::new(work, vms, vec![h.fencer.clone()], h.alerts.clone())
            .with_investigators(vec![h.verdict.clone()]),
    )
}

impl H {
    /// The latest item of `work_type` for `vm`.
    fn item_of_type(&self, vm: u64, work_type: WorkType) -> WorkItem {
        self.work
            .items_of(VmId(vm))
            .into_iter()
            .rfind(|i| i.work_type == work_type)
            .expect("an item of that type")
    }
}

/// A second manager of the rig (same stores, same orchestrator) as `owner`.
fn peer(h: &H, owner: OwnerId) -> HaManager {
    manager_over(h, owner, h.work.clone(), h.vms.clone())
}

// ------------------------------------------------------------------------------------------
// A work store that fails one chosen update.
// ------------------------------------------------------------------------------------------

/// What happens to the chosen update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// A backend error; nothing written.
    Fail,
    /// Written, but the answer is lost: a backend error (a commit whose acknowledgement did not
    /// come back; a bounded call cut at its bound after the database committed).
    LandThenFail,
    /// Never answers; nothing written.
    Hang,
}

type Pick = Box<dyn Fn(&WorkItem, &WorkItem) -> bool + Send + Sync>;

/// The in-memory store of the rig, failing once, as `fault` says, the first update for which
/// `pick(stored, written)` holds.
struct ScriptedWork {
    inner: Arc<InMemoryHaWorkStore>,
    armed: Mutex<Option<(Pick, Fault)>>,
    fired: Mutex<Vec<Fault>>,
}

impl ScriptedWork {
    fn new(
        inner: Arc<InMemoryHaWorkStore>,
        fault: Fault,
        pick: impl Fn(&WorkItem, &WorkItem) -> bool + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            inner,
            armed: Mutex::new(Some((Box::new(pick), fault))),
            fired: Mutex::new(Vec::new()),
        })
    }

    fn fired(&self) -> Vec<Fault> {
        self.fired.lock().unwrap().clone()
    }

    fn backend(what: &str) -> StoreError {
        StoreError::backend(
            what,
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset"),
        )
    }
}

#[async_trait::async_trait]
impl HaWorkStore for ScriptedWork {
    async fn insert(&self, item: WorkItem) -> Result<WorkId, StoreError> {
        self.inner.insert(item).await
    }
    async fn take(&self, owner: OwnerId, now: Timestamp) -> Result<Option<WorkItem>, StoreError> {
        self.inner.take(owner, now).await
    }
    async fn update(&self, writer: OwnerId, item: &WorkItem) -> Result<u64, StoreError> {
        let fault = {
            let mut armed = self.armed.lock().unwrap();
            let stored = self.inner.item(item.id);
            match (&*armed, stored) {
                (Some((pick, fault)), Some(stored)) if pick(&stored, item) => {
                    let fault = *fault;
                    *armed = None;
                    self.fired.lock().unwrap().push(fault);
                    Some(fault)
                }
                _ => None,
            }
        };
        match fault {
            None => self.inner.update(writer, item).await,
            Some(Fault::Fail) => Err(Self::backend("update")),
            Some(Fault::LandThenFail) => {
                self.inner.update(writer, item).await?;
                Err(Self::backend("update"))
            }
            Some(Fault::Hang) => std::future::pending().await,
        }
    }
    async fn get(&self, id: WorkId) -> Result<Option<WorkItem>, StoreError> {
        self.inner.get(id).await
    }
    async fn for_vm(&self, vm: VmId) -> Result<Vec<WorkItem>, StoreError> {
        self.inner.for_vm(vm).await
    }
    async fn list(&self) -> Result<Vec<WorkItem>, StoreError> {
        self.inner.list().await
    }
    async fn pending(&self) -> Result<usize, StoreError> {
        self.inner.pending().await
    }
    async fn release_owner(&self, owner: OwnerId) -> Result<usize, StoreError> {
        self.inner.release_owner(owner).await
    }
    async fn mark_pending_investigating(&self, now: Timestamp) -> Result<usize, StoreError> {
        self.inner.mark_pending_investigating(now).await
    }
    async fn unbrake(&self, now: Timestamp, vms: &[VmId]) -> Result<usize, StoreError> {
        self.inner.unbrake(now, vms).await
    }
    async fn cleanup(&self, cutoff: Timestamp) -> Result<usize, StoreError> {
        self.inner.cleanup(cutoff).await
    }
    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        self.inner.next_due().await
    }
}

/// The save that records the start's key, right before the start.
fn key_save(stored: &WorkItem, written: &WorkItem) -> bool {
    written.start_unknown && !stored.start_unknown
}

/// The save of step Scheduled right after HA force-stopped the VM.
fn scheduled_after_force_stop(stored: &WorkItem, written: &WorkItem) -> bool {
    stored.step == WorkStep::Investigating
        && written.step == WorkStep::Scheduled
        && written
            .history
            .last()
            .is_some_and(|e| e.what.contains("force-stopped"))
}

// ------------------------------------------------------------------------------------------
// Orchestrators for the attacks.
// ------------------------------------------------------------------------------------------

/// An orchestrator whose first start request is delayed in transit (a queue, a slow RPC): the
/// caller never hears of it, the orchestrator does not know of it until it arrives `delay` later,
/// then handles it like any request: idempotent by key (the VM record's key). Later requests
/// arrive at once. Counts the starts it made.
struct LateFirstVms {
    inner: Arc<InMemoryVms>,
    delay: Duration,
    first: Mutex<bool>,
    asked: Mutex<Vec<StartKey>>,
    made: Arc<Mutex<Vec<(StartKey, HostId)>>>,
}

impl LateFirstVms {
    fn new(inner: Arc<InMemoryVms>, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner,
            delay,
            first: Mutex::new(true),
            asked: Mutex::new(Vec::new()),
            made: Arc::new(Mutex::new(Vec::new())),
        })
    }

    fn made(&self) -> Vec<(StartKey, HostId)> {
        self.made.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl VmOrchestrator for LateFirstVms {
    fn get(&self, vm: VmId) -> Option<VmRecord> {
        self.inner.get(vm)
    }
    fn vms_on_host(&self, host: HostId) -> Vec<VmRecord> {
        self.inner.vms_on_host(host)
    }
    fn running_on(&self, host: HostId) -> Vec<VmId> {
        self.inner.running_on(host)
    }
    async fn force_stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError> {
        self.inner.force_stop(vm).await
    }
    async fn stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError> {
        self.inner.stop(vm).await
    }
    async fn start(
        &self,
        vm: VmId,
        params: StartParams,
        proof: &DeathProof,
    ) -> Result<HostId, StartError> {
        let key = params.key;
        self.asked.lock().unwrap().push(key);
        if std::mem::replace(&mut *self.first.lock().unwrap(), false) {
            let (inner, made, delay) = (self.inner.clone(), self.made.clone(), self.delay);
            tokio::spawn(async move {
                sleep(delay).await;
                // Arrives now: a key the record carries starts nothing.
                if inner.seen_start(vm, key).is_some() {
                    return;
                }
                let on = params.candidates.first().copied();
                if let Some(on) = on {
                    inner.update(vm, |r| {
                        if r.host.is_some() {
                            r.last_host = r.host;
                        }
                        r.host = Some(on);
                        r.state = VmState::Running;
                        r.start_key = Some(key);
                        r.update_count += 1;
                    });
                    made.lock().unwrap().push((key, on));
                }
            });
            return std::future::pending().await;
        }
        if let Some(seen) = self.inner.seen_start(vm, key) {
            return seen;
        }
        let on = self.inner.start(vm, params, proof).await?;
        self.made.lock().unwrap().push((key, on));
        Ok(on)
    }
    async fn migrate_away(
        &self,
        vm: VmId,
        from: HostId,
        candidates: Vec<HostId>,
    ) -> Result<HostId, StartError> {
        self.inner.migrate_away(vm, from, candidates).await
    }
    async fn destroy(&self, vm: VmId, expunge: Expunge) -> Result<(), OrchestratorError> {
        self.inner.destroy(vm, expunge).await
    }
}

/// The rig's recording orchestrator, answering starts by the VM's own planner at once (so a full
/// cluster says InsufficientCapacity) and those by the HA planner as `ha_mode` says.
struct HaPlannerMode {
    inner: Arc<RecordingVms>,
    ha_mode: Mutex<StartMode>,
}

#[async_trait::async_trait]
impl VmOrchestrator for HaPlannerMode {
    fn get(&self, vm: VmId) -> Option<VmRecord> {
        self.inner.get(vm)
    }
    fn vms_on_host(&self, host: HostId) -> Vec<VmRecord> {
        self.inner.vms_on_host(host)
    }
    fn running_on(&self, host: HostId) -> Vec<VmId> {
        self.inner.running_on(host)
    }
    async fn force_stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError> {
        self.inner.force_stop(vm).await
    }
    async fn stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError> {
        self.inner.stop(vm).await
    }
    async fn start(
        &self,
        vm: VmId,
        params: StartParams,
        proof: &DeathProof,
    ) -> Result<HostId, StartError> {
        let mode = match params.planner {
            Planner::Ha => *self.ha_mode.lock().unwrap(),
            Planner::Default => StartMode::Answer,
        };
        self.inner.set_start_mode(mode);
        self.inner.start(vm, params, proof).await
    }
    async fn migrate_away(
        &self,
        vm: VmId,
        from: HostId,
        candidates: Vec<HostId>,
    ) -> Result<HostId, StartError> {
        self.inner.migrate_away(vm, from, candidates).await
    }
    async fn destroy(&self, vm: VmId, expunge: Expunge) -> Result<(), OrchestratorError> {
        self.inner.destroy(vm, expunge).await
    }
}
