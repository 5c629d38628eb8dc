//! HA work items and the `HaWorkStore` port (spec §5.1, §5.4, §5.6): claim semantics, one owner
//! at a time, release of a dead owner's claims, pending items back to Investigating at start.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use cloudha_protocol::{HostId, VmId, VmState, WorkId, WorkReason, WorkStep, WorkType};
use tokio::time::Instant;

use super::vm::VmRecord;

/// A management server (owner of claims). Keep it stable across restarts of the same server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(pub u64);

/// One entry of a work item's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkEvent {
    /// When.
    pub at: Instant,
    /// What happened: a step change, a verdict, a fence proof, a try.
    pub what: String,
}

/// One unit of HA work (CloudStack's `op_ha_work` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    /// Assigned by the store.
    pub id: WorkId,
    /// The VM.
    pub vm: VmId,
    /// What to do.
    pub work_type: WorkType,
    /// Where it is.
    pub step: WorkStep,
    /// The VM's host (current or last) when scheduled.
    pub host: Option<HostId>,
    /// The VM's state when scheduled (or last changed by this item).
    pub previous_state: VmState,
    /// The VM's update counter when scheduled (or last changed by this item).
    pub update_count: u64,
    /// Tries so far.
    pub tries: u32,
    /// Not before.
    pub time_to_try: Instant,
    /// Why.
    pub reason: WorkReason,
    /// Who holds the claim.
    pub owner: Option<OwnerId>,
    /// When it was claimed.
    pub taken: Option<Instant>,
    /// Held by the correlated-failure brake: not taken until the brake lifts.
    pub braked: bool,
    /// Why the VM's old copy cannot run any more (which fencer, what evidence; a dead verdict;
    /// the operator's word), once known.
    pub fence_proof: Option<String>,
    /// Everything that happened to it.
    pub history: Vec<WorkEvent>,
}

impl WorkItem {
    /// A new item for `vm` as it is now (id assigned on insert).
    pub fn new(work_type: WorkType, step: WorkStep, reason: WorkReason, vm: &VmRecord, host: Option<HostId>, now: Instant) -> Self {
        Self {
            id: WorkId(0),
            vm: vm.id,
            work_type,
            step,
            host,
            previous_state: vm.state,
            update_count: vm.update_count,
            tries: 0,
            time_to_try: now,
            reason,
            owner: None,
            taken: None,
            braked: false,
            fence_proof: None,
            history: vec![WorkEvent { at: now, what: format!("scheduled {work_type:?} ({reason:?}), step {step:?}") }],
        }
    }

    /// Appends to the history.
    pub fn note(&mut self, at: Instant, what: impl Into<String>) {
        self.history.push(WorkEvent { at, what: what.into() });
    }
}

/// Where work items live. Plain calls: an implementation over SQL runs each as one short
/// transaction (`take` is `SELECT … FOR UPDATE` of the first eligible row).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait HaWorkStore: Send + Sync {
    /// Stores a new item; returns its id.
    fn insert(&self, item: WorkItem) -> WorkId;

    /// Claims the first item (by time to try, then id) that has no owner, is due by `now`, is not
    /// final and not braked: stamps `owner` and `taken`.
    fn take(&self, owner: OwnerId, now: Instant) -> Option<WorkItem>;

    /// Writes an item back as it is (its `owner` field decides whether it stays claimed).
    fn update(&self, item: &WorkItem);

    /// One item.
    fn get(&self, id: WorkId) -> Option<WorkItem>;

    /// Every item of a VM, oldest first.
    fn for_vm(&self, vm: VmId) -> Vec<WorkItem>;

    /// Every item, oldest first.
    fn list(&self) -> Vec<WorkItem>;

    /// Releases the claims of `owner` on items not final. Returns how many.
    fn release_owner(&self, owner: OwnerId) -> usize;

    /// Unclaimed, not final items go back to step Investigating (re-checked before any action).
    /// Returns how many.
    fn mark_pending_investigating(&self, now: Instant) -> usize;

    /// Lifts the brake of the braked items of `vms`, making them due at `now`. Returns how many.
    fn unbrake(&self, now: Instant, vms: &[VmId]) -> usize;

    /// Deletes final items whose time to try is at or before `cutoff`. Returns how many.
    fn cleanup(&self, cutoff: Instant) -> usize;

    /// The earliest time to try of an unclaimed, unbraked, not final item.
    fn next_due(&self) -> Option<Instant>;
}

/// A `HaWorkStore` in memory.
#[derive(Debug, Default)]
pub struct InMemoryHaWorkStore {
    items: Mutex<BTreeMap<WorkId, WorkItem>>,
    next: Mutex<u64>,
}

impl InMemoryHaWorkStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<WorkId, WorkItem>> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn eligible(i: &WorkItem) -> bool {
    i.owner.is_none() && !i.step.is_final() && !i.braked
}

impl HaWorkStore for InMemoryHaWorkStore {
    fn insert(&self, mut item: WorkItem) -> WorkId {
        let id = {
            let mut n = self.next.lock().unwrap_or_else(PoisonError::into_inner);
            *n += 1;
            WorkId(*n)
        };
        item.id = id;
        self.map().insert(id, item);
        id
    }

    fn take(&self, owner: OwnerId, now: Instant) -> Option<WorkItem> {
        let mut map = self.map();
        let id = map
            .values()
            .filter(|i| eligible(i) && i.time_to_try <= now)
            .min_by_key(|i| (i.time_to_try, i.id))
            .map(|i| i.id)?;
        let item = map.get_mut(&id)?;
        item.owner = Some(owner);
        item.taken = Some(now);
        Some(item.clone())
    }

    fn update(&self, item: &WorkItem) {
        self.map().insert(item.id, item.clone());
    }

    fn get(&self, id: WorkId) -> Option<WorkItem> {
        self.map().get(&id).cloned()
    }

    fn for_vm(&self, vm: VmId) -> Vec<WorkItem> {
        self.map().values().filter(|i| i.vm == vm).cloned().collect()
    }

    fn list(&self) -> Vec<WorkItem> {
        self.map().values().cloned().collect()
    }

    fn release_owner(&self, owner: OwnerId) -> usize {
        let mut n = 0;
        for i in self.map().values_mut() {
            if i.owner == Some(owner) && !i.step.is_final() {
                i.owner = None;
                i.taken = None;
                n += 1;
            }
        }
        n
    }

    fn mark_pending_investigating(&self, now: Instant) -> usize {
        let mut n = 0;
        for i in self.map().values_mut() {
            if i.owner.is_none() && !i.step.is_final() {
                if i.step != WorkStep::Investigating {
                    i.note(now, format!("manager start: step {:?} -> Investigating", i.step));
                    i.step = WorkStep::Investigating;
                }
                n += 1;
            }
        }
        n
    }

    fn unbrake(&self, now: Instant, vms: &[VmId]) -> usize {
        let mut n = 0;
        for i in self.map().values_mut() {
            if i.braked && vms.contains(&i.vm) {
                i.braked = false;
                i.time_to_try = now;
                i.note(now, "brake lifted");
                n += 1;
            }
        }
        n
    }

    fn cleanup(&self, cutoff: Instant) -> usize {
        let mut map = self.map();
        let before = map.len();
        map.retain(|_, i| !(i.step.is_final() && i.time_to_try <= cutoff));
        before - map.len()
    }

    fn next_due(&self) -> Option<Instant> {
        self.map().values().filter(|i| eligible(i)).map(|i| i.time_to_try).min()
    }
}
