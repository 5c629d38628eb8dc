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

const WAIT: Duration = Duration::from_secs(60);
const RETRY: Duration = Duration::from_secs(100);

fn bounded_config() -> Config {
    let mut c = config();
    c.liveness.wait = WAIT;
    c.ha.restart_retry_interval = RETRY;
    c
}

fn notes(item: &WorkItem) -> Vec<String> {
    item.history.iter().map(|e| e.what.clone()).collect()
}

/// Every start call of `vm`: (key, repeated, placed).
fn keys(h: &H, vm: u64) -> Vec<(String, bool, Option<HostId>)> {
    h.vms
        .start_calls()
        .into_iter()
        .filter(|c| c.vm == VmId(vm))
        .map(|c| (c.params.key.to_string(), c.repeated, c.placed))
        .collect()
}

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

// ------------------------------------------------------------------------------------------
// Manager restarts.
// ------------------------------------------------------------------------------------------

/// A manager stopped (and a new one started over the same stores at once) at many points of the
/// start path, the start landing 150 s after it was asked: one start, same key throughout, the
/// VM force-stopped once, the item done.
#[tokio::test(start_paused = true)]
async fn a_restart_at_any_point_of_an_unknown_start_starts_once() {
    for stop_at in [
        1, 5, 30, 59, 61, 100, 149, 151, 160, 161, 170, 215, 221, 300,
    ] {
        let mut h = build(bounded_config(), 1).await;
        h.vms.set_start_mode(StartMode::Hang {
            lands_after: Some(Duration::from_secs(150)),
        });
        h.mark_down(FAILED).await;
        h.ha.start().await.unwrap();
        sleep(Duration::from_secs(stop_at)).await;
        h.ha.stop().await;
        let second = new_manager(
            &h.config, &h.agent, &h.vms, &h.work, &h.alerts, &h.verdict, &h.fencer,
        );
        second.start().await.unwrap();
        sleep(Duration::from_secs(1000)).await;
        let item = h.item(100);
        assert_eq!(
            item.step,
            WorkStep::Done,
            "stop at {stop_at}: {:?}",
            notes(&item)
        );
        assert_eq!(h.starts(100), 1, "stop at {stop_at}: {:?}", keys(&h, 100));
        let calls = keys(&h, 100);
        let first = &calls[0].0;
        assert!(
            calls.iter().all(|(k, _, _)| k == first),
            "stop at {stop_at}: one key: {calls:?}"
        );
        assert_eq!(h.calls(100), ["force_stop"], "stop at {stop_at}");
        assert_eq!(h.vm(100).state, VmState::Running);
        second.stop().await;
        h.agent.stop().await;
    }
}

/// The manager dies right after HA force-stopped the VM, before it recorded step Scheduled (the
/// save hangs; the manager is stopped meanwhile). The VM is Stopped by HA, on a recorded proof.
#[tokio::test(start_paused = true)]
async fn a_restart_between_force_stop_and_its_save_leaves_the_vm_stopped() {
    let mut h = build(bounded_config(), 1).await;
    h.mark_down(FAILED).await;
    let work = ScriptedWork::new(h.work.clone(), Fault::Hang, scheduled_after_force_stop);
    let first = manager_over(&h, OwnerId(7), work.clone(), h.vms.clone());
    first.start().await.unwrap();
    sleep(Duration::from_secs(5)).await;
    assert_eq!(work.fired(), [Fault::Hang]);
    assert_eq!(h.calls(100), ["force_stop"], "HA stopped the VM");
    assert_eq!(h.vm(100).state, VmState::Stopped);
    first.stop().await;

    let second = manager_over(&h, OwnerId(7), work.clone(), h.vms.clone());
    second.start().await.unwrap();
    sleep(Duration::from_secs(1000)).await;
    let item = h.item(100);
    // HA stopped the VM on its proof: the restart must end with the VM started, once.
    assert_eq!(
        (h.starts(100), h.vm(100).state),
        (1, VmState::Running),
        "{:?}",
        notes(&item)
    );
    assert_eq!(item.step, WorkStep::Done);
    second.stop().await;
    h.agent.stop().await;
}

/// The manager dies while a start is in flight (its outcome unknown, the key recorded) and the
/// failed host comes back Up before a new manager resumes the item.
#[tokio::test(start_paused = true)]
async fn a_restart_then_host_up_cancels_an_unknown_start() {
    let mut h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.mark_down(FAILED).await;
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(10)).await;
    h.ha.stop().await;
    let item = h.item(100);
    assert!(item.start_unknown && item.step == WorkStep::Scheduled);
    assert_eq!(h.calls(100), ["force_stop"]);
    // The start never landed. The failed host reconnects (fenced, it comes back empty).
    h.host_up(FAILED).await;
    h.vms.set_start_mode(StartMode::Answer);
    let second = new_manager(
        &h.config, &h.agent, &h.vms, &h.work, &h.alerts, &h.verdict, &h.fencer,
    );
    second.start().await.unwrap();
    sleep(Duration::from_secs(1000)).await;
    let item = h.item(100);
    assert_eq!(
        (h.starts(100), h.vm(100).state),
        (1, VmState::Running),
        "the VM HA stopped is started (same key): {:?}",
        notes(&item)
    );
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    let calls = keys(&h, 100);
    assert!(calls.iter().all(|(k, _, _)| *k == calls[0].0), "{calls:?}");
    second.stop().await;
    h.agent.stop().await;
}

/// Without a manager restart, the host coming back Up while a start is unknown does not cancel
/// the item (it is past Investigating): the start is settled and made once.
#[tokio::test(start_paused = true)]
async fn the_host_up_while_a_start_is_unknown_settles_the_start() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + Duration::from_secs(1)).await;
    assert!(h.item(100).start_unknown);
    h.host_up(FAILED).await;
    h.vms.set_start_mode(StartMode::Answer);
    sleep(RETRY).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(h.starts(100), 1);
    let calls = keys(&h, 100);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].0, calls[1].0, "the same key");
    h.shutdown().await;
}

// ------------------------------------------------------------------------------------------
// Claims moving, two managers.
// ------------------------------------------------------------------------------------------

/// Owner 7 is stuck in a start (it lands at 30 s, unanswered); its peer 8 releases 7's claims
/// and takes the item: it asks again with the same key (joining the start under way), never a
/// new one; 7's late write-back is refused.
#[tokio::test(start_paused = true)]
async fn a_claim_taken_over_while_a_start_is_unknown_asks_with_the_same_key() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang {
        lands_after: Some(Duration::from_secs(30)),
    });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(10)).await;
    let held = h.item(100);
    assert_eq!(held.owner, Some(OwnerId(7)));
    assert!(held.start_unknown);
    let b = peer(&h, OwnerId(8));
    b.start().await.unwrap();
    assert_eq!(b.release_peer(OwnerId(7)).await.unwrap(), 1);
    settle().await;
    assert_eq!(h.item(100).owner, Some(OwnerId(8)), "8 took the item");
    sleep(Duration::from_secs(1000)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(h.starts(100), 1);
    let calls = keys(&h, 100);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].0, calls[1].0, "8 asked with 7's key");
    assert!(calls[1].1, "and joined the start under way");
    assert_eq!(h.calls(100), ["force_stop"], "8 did not stop the VM again");
    b.stop().await;
    h.shutdown().await;
}

/// Two managers over the same stores and the same agent both follow the host's failure (each
/// schedules an item): one start.
#[tokio::test(start_paused = true)]
async fn two_managers_following_one_failure_start_the_vm_once() {
    let h = build(bounded_config(), 2).await;
    h.vms.set_start_mode(StartMode::Hang {
        lands_after: Some(Duration::from_secs(30)),
    });
    let b = peer(&h, OwnerId(8));
    h.ha.start().await.unwrap();
    b.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(2000)).await;
    for vm in [100, 101] {
        assert_eq!(h.starts(vm), 1, "vm {vm}: {:?}", keys(&h, vm));
        assert!(
            h.work.items_of(VmId(vm)).iter().all(|i| i.step.is_final()),
            "vm {vm}: {:?}",
            h.work.items_of(VmId(vm))
        );
    }
    b.stop().await;
    h.shutdown().await;
}

// ------------------------------------------------------------------------------------------
// Newer items, operator actions.
// ------------------------------------------------------------------------------------------

/// Item 1's start is in flight (it lands at 200 s; no answer). An operator restarts the VM on
/// their word (`schedule_restart(.., AlreadyKnown, ..)`): a newer item for a VM HA stopped.
#[tokio::test(start_paused = true)]
async fn an_operator_restart_while_a_start_is_unknown_does_not_start_twice() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang {
        lands_after: Some(Duration::from_secs(200)),
    });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + Duration::from_secs(1)).await;
    let older = h.item(100);
    assert!(older.start_unknown);
    h.vms.set_start_mode(StartMode::Answer);
    let newer =
        h.ha.schedule_restart(VmId(100), ProveDead::AlreadyKnown, WorkReason::HostDown)
            .await
            .expect("scheduled");
    sleep(Duration::from_secs(1000)).await;
    let calls = keys(&h, 100);
    assert_eq!(
        h.starts(100),
        1,
        "one start while the first one's outcome was unknown: {calls:?}; older {:?}; newer {:?}",
        notes(&h.work.item(older.id).unwrap()),
        notes(&h.work.item(newer).unwrap())
    );
    h.shutdown().await;
}

/// Item 1's start is lost (no answer, never lands). While it is being asked, an operator
/// schedules a restart proven first (`ProveDead::First`); that item waits (another item of the VM
/// is running) and is still pending at item 1's next round.
#[tokio::test(start_paused = true)]
async fn a_newer_item_does_not_strand_an_unknown_start() {
    let mut c = bounded_config();
    // Legit settings: an investigation retried less often than a restart.
    c.ha.investigate_retry_interval = Duration::from_secs(300);
    let h = build(c, 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(10)).await;
    assert!(h.item(100).start_unknown);
    h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
        .await
        .expect("scheduled");
    h.vms.set_start_mode(StartMode::Answer);
    sleep(Duration::from_secs(2000)).await;
    let items = h.work.items_of(VmId(100));
    let histories: Vec<Vec<String>> = items.iter().map(notes).collect();
    let settled = h.starts(100) == 1 && h.vm(100).state == VmState::Running;
    let open = items.iter().any(|i| !i.step.is_final());
    let gave_up = h.kinds().contains(&AlertKind::HaGaveUp);
    assert!(
        settled || open || gave_up,
        "the VM HA stopped is left stopped, silently: {histories:?}"
    );
    assert!(h.starts(100) <= 1);
    h.shutdown().await;
}

/// An operator stops the VM while HA's start is unknown (and still in flight): HA asks nothing
/// more (the VM changed); the start in flight is the orchestrator's.
#[tokio::test(start_paused = true)]
async fn an_operator_stop_while_a_start_is_unknown_makes_ha_ask_nothing_more() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + Duration::from_secs(1)).await;
    assert!(h.item(100).start_unknown);
    let stop =
        h.ha.schedule_stop(VmId(100), HostId(2), WorkType::Stop)
            .await
            .expect("scheduled");
    settle().await;
    assert_eq!(h.work.item(stop).unwrap().step, WorkStep::Done);
    h.vms.set_start_mode(StartMode::Answer);
    sleep(Duration::from_secs(1000)).await;
    let item = h.item_of_type(100, WorkType::Ha);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert!(
        notes(&item).last().unwrap().contains("not started again"),
        "{:?}",
        notes(&item)
    );
    assert_eq!(keys(&h, 100).len(), 1, "asked once");
    assert_eq!(h.starts(100), 0);
    h.shutdown().await;
}

/// An operator destroys the VM while HA's start is unknown: HA asks nothing more.
#[tokio::test(start_paused = true)]
async fn an_operator_destroy_while_a_start_is_unknown_makes_ha_ask_nothing_more() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + Duration::from_secs(1)).await;
    h.ha.schedule_destroy(VmId(100), None)
        .await
        .expect("scheduled");
    settle().await;
    h.vms.set_start_mode(StartMode::Answer);
    sleep(Duration::from_secs(1000)).await;
    assert_eq!(h.vm(100).state, VmState::Destroyed);
    let item = h.item_of_type(100, WorkType::Ha);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(keys(&h, 100).len(), 1, "asked once");
    h.shutdown().await;
}

/// An operator migration of a VM whose start is unknown has nothing to migrate, and the HA item
/// settles its start (same key) once.
#[tokio::test(start_paused = true)]
async fn an_operator_migration_while_a_start_is_unknown_changes_nothing() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + Duration::from_secs(1)).await;
    h.ha.schedule_migration(VmId(100), WorkReason::HostMaintenance)
        .await
        .expect("scheduled");
    settle().await;
    h.vms.set_start_mode(StartMode::Answer);
    sleep(Duration::from_secs(1000)).await;
    let item = h.item_of_type(100, WorkType::Ha);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(h.starts(100), 1);
    let calls = keys(&h, 100);
    assert!(calls.iter().all(|(k, _, _)| *k == calls[0].0), "{calls:?}");
    h.shutdown().await;
}

// ------------------------------------------------------------------------------------------
// The orchestrator.
// ------------------------------------------------------------------------------------------

/// The first start request is delayed in transit and arrives (at 200 s) after HA asked again
/// with the same key (about 161 s), which the orchestrator made at once: the late one starts
/// nothing.
#[tokio::test(start_paused = true)]
async fn a_start_delivered_after_the_same_key_was_asked_again_starts_nothing() {
    let h = build(bounded_config(), 1).await;
    let late = LateFirstVms::new(h.vms.inner.clone(), Duration::from_secs(200));
    let ha = manager_over(&h, OwnerId(7), h.work.clone(), late.clone());
    ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + RETRY + Duration::from_secs(5)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(late.made().len(), 1);
    sleep(Duration::from_secs(1000)).await;
    let made = late.made();
    assert_eq!(made.len(), 1, "{made:?}");
    let asked = late.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0], asked[1], "the same key");
    assert_eq!(h.vm(100).start_key, Some(asked[0]));
    ha.stop().await;
    h.agent.stop().await;
}

/// The VM's planner finds no room, the HA planner's start (a new attempt) goes unanswered and
/// lands at 200 s; the next round asks again with that key (by the VM's planner first: its full
/// cluster) and joins the start under way; a restart in between changes nothing.
#[tokio::test(start_paused = true)]
async fn the_ha_planner_fallback_with_an_unknown_start_starts_once() {
    let mut h = build(bounded_config(), 1).await;
    for host in [2, 3, 4] {
        h.vms.inner.set_capacity(HostId(host), 0);
    }
    let vms = Arc::new(HaPlannerMode {
        inner: h.vms.clone(),
        ha_mode: Mutex::new(StartMode::Hang {
            lands_after: Some(Duration::from_secs(200)),
        }),
    });
    h.mark_down(FAILED).await;
    let first = manager_over(&h, OwnerId(7), h.work.clone(), vms.clone());
    first.start().await.unwrap();
    sleep(Duration::from_secs(10)).await;
    let item = h.item(100);
    assert!(item.start_unknown);
    assert_eq!(item.start_attempts, 2, "{:?}", notes(&item));
    first.stop().await;
    *vms.ha_mode.lock().unwrap() = StartMode::Answer;
    let second = manager_over(&h, OwnerId(7), h.work.clone(), vms.clone());
    second.start().await.unwrap();
    sleep(Duration::from_secs(2000)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(h.starts(100), 1, "{:?}", keys(&h, 100));
    let id = item.id;
    let calls: Vec<(String, Planner, bool)> = h
        .vms
        .start_calls()
        .into_iter()
        .map(|c| (c.params.key.to_string(), c.params.planner, c.repeated))
        .collect();
    // Attempt 2 was in flight: asked again (the VM's planner: joined), never a third attempt.
    assert_eq!(
        calls[..3],
        [
            (format!("{id}/1"), Planner::Default, false),
            (format!("{id}/2"), Planner::Ha, false),
            (format!("{id}/2"), Planner::Default, true),
        ],
        "{calls:?}"
    );
    assert!(
        calls.iter().all(|(k, _, _)| *k != format!("{id}/3")),
        "{calls:?}"
    );
    assert_eq!(h.vm(100).start_key.map(|k| k.attempt), Some(2));
    assert_eq!(h.calls(100), ["force_stop"]);
    second.stop().await;
    h.agent.stop().await;
}

// ------------------------------------------------------------------------------------------
// Retries running out.
// ------------------------------------------------------------------------------------------

/// Every start goes unanswered and never lands: max.retries runs out while the outcome is
/// unknown. The item gives up honestly (the note says the outcome is unknown) and asks nothing
/// more; the key was never changed.
#[tokio::test(start_paused = true)]
async fn retries_running_out_while_a_start_is_unknown_give_up_honestly() {
    let mut c = bounded_config();
    c.ha.max_retries = 3;
    let h = build(c, 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(5000)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    let last = notes(&item).pop().unwrap();
    assert!(
        last.contains("giving up after 3 tries") && last.contains("outcome unknown"),
        "{last}"
    );
    assert!(h.kinds().contains(&AlertKind::HaGaveUp));
    let calls = keys(&h, 100);
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls.iter().all(|(k, _, _)| *k == calls[0].0), "{calls:?}");
    sleep(Duration::from_secs(5000)).await;
    assert_eq!(keys(&h, 100).len(), 3, "nothing asked after giving up");
    h.shutdown().await;
}

// ------------------------------------------------------------------------------------------
// The work store at the save right before the start.
// ------------------------------------------------------------------------------------------

/// The save recording the key fails (nothing written): no start this round; the next round asks
/// with the key once, and no try is spent.
#[tokio::test(start_paused = true)]
async fn a_failed_key_save_starts_nothing_and_the_next_round_starts_once() {
    let h = build(bounded_config(), 1).await;
    let work = ScriptedWork::new(h.work.clone(), Fault::Fail, key_save);
    let ha = manager_over(&h, OwnerId(7), work.clone(), h.vms.clone());
    ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(1)).await;
    assert_eq!(work.fired(), [Fault::Fail]);
    assert_eq!(keys(&h, 100).len(), 0, "no start without the key recorded");
    sleep(Duration::from_secs(1000)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(item.tries, 0, "{:?}", notes(&item));
    assert_eq!(h.starts(100), 1);
    assert_eq!(keys(&h, 100).len(), 1);
    assert_eq!(h.calls(100), ["force_stop"]);
    ha.stop().await;
    h.agent.stop().await;
}

/// The save recording the key lands, but its answer is lost: no start this round (correct), but
/// the item must not be lost.
#[tokio::test(start_paused = true)]
async fn a_key_save_that_lands_without_an_answer_does_not_strand_the_item() {
    let h = build(bounded_config(), 1).await;
    let work = ScriptedWork::new(h.work.clone(), Fault::LandThenFail, key_save);
    let ha = manager_over(&h, OwnerId(7), work.clone(), h.vms.clone());
    ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(1)).await;
    assert_eq!(work.fired(), [Fault::LandThenFail]);
    assert_eq!(keys(&h, 100).len(), 0, "no start on an unchecked claim");
    sleep(Duration::from_secs(3000)).await;
    let item = h.item(100);
    assert_eq!(
        (item.step, item.owner),
        (WorkStep::Done, None),
        "{:?}",
        notes(&item)
    );
    assert_eq!(h.starts(100), 1);
    ha.stop().await;
    h.agent.stop().await;
}

/// The same loss of an answer, at the save of step Scheduled right after the force-stop.
#[tokio::test(start_paused = true)]
async fn a_scheduled_save_that_lands_without_an_answer_does_not_strand_the_item() {
    let h = build(bounded_config(), 1).await;
    let work = ScriptedWork::new(
        h.work.clone(),
        Fault::LandThenFail,
        scheduled_after_force_stop,
    );
    let ha = manager_over(&h, OwnerId(7), work.clone(), h.vms.clone());
    ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(3000)).await;
    assert_eq!(work.fired(), [Fault::LandThenFail]);
    let item = h.item(100);
    assert_eq!(
        (item.step, item.owner, h.starts(100)),
        (WorkStep::Done, None, 1),
        "{:?}",
        notes(&item)
    );
    ha.stop().await;
    h.agent.stop().await;
}

/// A key save that hangs (cut at the store bound) and a manager restart meanwhile: the new
/// manager settles the start from the record, once; nothing was asked by the first.
#[tokio::test(start_paused = true)]
async fn a_key_save_that_hangs_then_a_restart_starts_once() {
    let mut h = build(bounded_config(), 1).await;
    h.mark_down(FAILED).await;
    let work = ScriptedWork::new(h.work.clone(), Fault::Hang, key_save);
    let first = manager_over(&h, OwnerId(7), work.clone(), h.vms.clone());
    first.start().await.unwrap();
    sleep(Duration::from_secs(5)).await;
    assert_eq!(work.fired(), [Fault::Hang]);
    first.stop().await;
    assert_eq!(keys(&h, 100).len(), 0);
    let second = manager_over(&h, OwnerId(7), work.clone(), h.vms.clone());
    second.start().await.unwrap();
    sleep(Duration::from_secs(1000)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(h.starts(100), 1);
    assert_eq!(h.calls(100), ["force_stop"]);
    second.stop().await;
    h.agent.stop().await;
}

// ------------------------------------------------------------------------------------------
// Keys.
// ------------------------------------------------------------------------------------------

/// Three more failures in a row (a new item each), each start landing with its answer lost:
/// every key sent is new unless repeated (a key names one start), each failure starts the VM
/// once, settled from the record.
#[tokio::test(start_paused = true)]
async fn keys_are_unique_across_items_and_each_failure_starts_once() {
    let h = build(bounded_config(), 1).await;
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(5)).await;
    // The VM runs on host 2 now; it fails there (answer lost), then again on wherever it went.
    let mut seen = HashSet::new();
    for round in 0..3 {
        let on = h.vm(100).host.expect("running");
        assert_ne!(on, FAILED, "round {round}");
        h.vms.set_start_mode(StartMode::LandsButSaysUnknown);
        h.host_down(on).await;
        sleep(Duration::from_secs(5)).await;
        h.vms.set_start_mode(StartMode::Answer);
        sleep(RETRY + Duration::from_secs(5)).await;
        let item = h.item(100);
        assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
        h.host_up(on).await;
    }
    let calls = keys(&h, 100);
    for (k, repeated, _) in &calls {
        assert!(seen.insert(k.clone()) || *repeated, "{calls:?}");
    }
    assert_eq!(h.starts(100), 4, "one per failure: {calls:?}");
    h.shutdown().await;
}

// ------------------------------------------------------------------------------------------
// The brake, a start under way.
// ------------------------------------------------------------------------------------------

/// A start goes unanswered (lost); then most of the cluster fails and the brake holds. The item
/// is braked (it asks nothing while the brake holds), and once the brake lifts it asks again
/// with the same key, once.
#[tokio::test(start_paused = true)]
async fn a_brake_while_a_start_is_unknown_holds_then_asks_with_the_same_key() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + Duration::from_secs(1)).await;
    assert!(h.item(100).start_unknown);
    h.host_down(HostId(3)).await;
    h.host_down(HostId(4)).await;
    assert!(h.ha.brake_holds(ClusterId(1)).is_some());
    h.vms.set_start_mode(StartMode::Answer);
    sleep(RETRY + Duration::from_secs(10)).await;
    let item = h.item(100);
    assert!(item.braked, "{:?}", notes(&item));
    assert_eq!(keys(&h, 100).len(), 1, "nothing asked under the brake");
    h.host_up(HostId(3)).await;
    h.host_up(HostId(4)).await;
    sleep(Duration::from_secs(600)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(h.starts(100), 1);
    let calls = keys(&h, 100);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].0, calls[1].0, "the same key");
    h.shutdown().await;
}

/// The orchestrator commits the key with the VM in Starting and stays there a while: the item
/// waits without spending tries and without asking again, and is done once the VM runs.
#[tokio::test(start_paused = true)]
async fn a_start_seen_under_way_is_waited_for_without_asking_again() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + Duration::from_secs(1)).await;
    let key = h.item(100).start_key().unwrap();
    h.vms.inner.update(VmId(100), |r| {
        r.state = VmState::Starting;
        r.host = Some(HostId(2));
        r.start_key = Some(key);
        r.update_count += 1;
    });
    h.vms.set_start_mode(StartMode::Answer);
    sleep(RETRY * 10).await;
    let item = h.item(100);
    assert!(!item.step.is_final(), "{:?}", notes(&item));
    assert!(item.start_unknown);
    assert_eq!(item.tries, 1, "waiting spends no try: {:?}", notes(&item));
    assert_eq!(keys(&h, 100).len(), 1, "not asked again");
    h.vms.inner.update(VmId(100), |r| {
        r.state = VmState::Running;
        r.update_count += 1;
    });
    sleep(RETRY + Duration::from_secs(1)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert!(
        notes(&item)
            .last()
            .unwrap()
            .contains(&format!("start {key} happened")),
        "{:?}",
        notes(&item)
    );
    assert_eq!(keys(&h, 100).len(), 1);
    h.shutdown().await;
}
