//! HA work items and the `HaWorkStore` port (spec §5.1, §5.4, §5.6): claim semantics, one owner
//! at a time, release of a dead owner's claims, pending items back to Investigating at start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};

use cloudha_protocol::{HostId, VmId, VmState, WorkId, WorkReason, WorkStep, WorkType};
use tokio::time::Instant;

use crate::proof::DeathProof;
use crate::vm::VmRecord;

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
    /// Why the VM's old copy cannot run any more (a power, pool or self fence, a dead verdict,
    /// the VM reported off by its Up host, the operator's word), once known.
    pub fence_proof: Option<DeathProof>,
    /// Everything that happened to it.
    pub history: Vec<WorkEvent>,
}

impl WorkItem {
    /// A new item for `vm` as it is now (id assigned on insert).
    pub fn new(
        work_type: WorkType,
        step: WorkStep,
        reason: WorkReason,
        vm: &VmRecord,
        host: Option<HostId>,
        now: Instant,
    ) -> Self {
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
            history: vec![WorkEvent {
                at: now,
                what: format!("scheduled {work_type:?} ({reason:?}), step {step:?}"),
            }],
        }
    }

    /// Appends to the history.
    pub fn note(&mut self, at: Instant, what: impl Into<String>) {
        self.history.push(WorkEvent {
            at,
            what: what.into(),
        });
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

    /// How many items are not final.
    fn pending(&self) -> usize;

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

/// A `HaWorkStore` in memory, indexed by due time and by VM so that taking work and looking up a
/// VM's items do not scan the queue.
#[derive(Debug, Default)]
pub struct InMemoryHaWorkStore {
    inner: Mutex<Items>,
}

#[derive(Debug, Default)]
struct Items {
    next: u64,
    by_id: BTreeMap<WorkId, WorkItem>,
    /// Eligible items (no owner, not final, not braked) by time to try.
    due: BTreeSet<(Instant, WorkId)>,
    by_vm: HashMap<VmId, Vec<WorkId>>,
    pending: usize,
}

impl Items {
    fn unindex(&mut self, i: &WorkItem) {
        self.due.remove(&(i.time_to_try, i.id));
        if !i.step.is_final() {
            self.pending -= 1;
        }
    }

    fn put(&mut self, item: WorkItem) {
        if let Some(old) = self.by_id.remove(&item.id) {
            self.unindex(&old);
        } else {
            self.by_vm.entry(item.vm).or_default().push(item.id);
        }
        if eligible(&item) {
            self.due.insert((item.time_to_try, item.id));
        }
        if !item.step.is_final() {
            self.pending += 1;
        }
        self.by_id.insert(item.id, item);
    }

    fn remove(&mut self, id: WorkId) {
        if let Some(old) = self.by_id.remove(&id) {
            self.unindex(&old);
            if let Some(ids) = self.by_vm.get_mut(&old.vm) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    self.by_vm.remove(&old.vm);
                }
            }
        }
    }

    /// Changes every item matching `pick` through `f`, keeping the indexes right.
    fn change_all(
        &mut self,
        pick: impl Fn(&WorkItem) -> bool,
        mut f: impl FnMut(&mut WorkItem),
    ) -> usize {
        let ids: Vec<WorkId> = self
            .by_id
            .values()
            .filter(|i| pick(i))
            .map(|i| i.id)
            .collect();
        for id in &ids {
            if let Some(mut item) = self.by_id.get(id).cloned() {
                f(&mut item);
                self.put(item);
            }
        }
        ids.len()
    }
}

impl InMemoryHaWorkStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Items> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn eligible(i: &WorkItem) -> bool {
    i.owner.is_none() && !i.step.is_final() && !i.braked
}

impl HaWorkStore for InMemoryHaWorkStore {
    fn insert(&self, mut item: WorkItem) -> WorkId {
        let mut items = self.lock();
        items.next += 1;
        item.id = WorkId(items.next);
        let id = item.id;
        items.put(item);
        id
    }

    fn take(&self, owner: OwnerId, now: Instant) -> Option<WorkItem> {
        let mut items = self.lock();
        let &(at, id) = items.due.first()?;
        if at > now {
            return None;
        }
        let mut item = items.by_id.get(&id)?.clone();
        item.owner = Some(owner);
        item.taken = Some(now);
        items.put(item.clone());
        Some(item)
    }

    fn update(&self, item: &WorkItem) {
        self.lock().put(item.clone());
    }

    fn get(&self, id: WorkId) -> Option<WorkItem> {
        self.lock().by_id.get(&id).cloned()
    }

    fn for_vm(&self, vm: VmId) -> Vec<WorkItem> {
        let items = self.lock();
        items
            .by_vm
            .get(&vm)
            .into_iter()
            .flatten()
            .filter_map(|id| items.by_id.get(id).cloned())
            .collect()
    }

    fn list(&self) -> Vec<WorkItem> {
        self.lock().by_id.values().cloned().collect()
    }

    fn pending(&self) -> usize {
        self.lock().pending
    }

    fn release_owner(&self, owner: OwnerId) -> usize {
        self.lock().change_all(
            |i| i.owner == Some(owner) && !i.step.is_final(),
            |i| {
                i.owner = None;
                i.taken = None;
            },
        )
    }

    fn mark_pending_investigating(&self, now: Instant) -> usize {
        self.lock().change_all(
            |i| i.owner.is_none() && !i.step.is_final(),
            |i| {
                if i.step != WorkStep::Investigating {
                    i.note(
                        now,
                        format!("manager start: step {:?} -> Investigating", i.step),
                    );
                    i.step = WorkStep::Investigating;
                }
            },
        )
    }

    fn unbrake(&self, now: Instant, vms: &[VmId]) -> usize {
        self.lock().change_all(
            |i| i.braked && vms.contains(&i.vm),
            |i| {
                i.braked = false;
                i.time_to_try = now;
                i.note(now, "brake lifted");
            },
        )
    }

    fn cleanup(&self, cutoff: Instant) -> usize {
        let mut items = self.lock();
        let old: Vec<WorkId> = items
            .by_id
            .values()
            .filter(|i| i.step.is_final() && i.time_to_try <= cutoff)
            .map(|i| i.id)
            .collect();
        for id in &old {
            items.remove(*id);
        }
        old.len()
    }

    fn next_due(&self) -> Option<Instant> {
        self.lock().due.first().map(|(at, _)| *at)
    }
}
