//! HA work items and the `HaWorkStore` port (spec §5.1, §5.4, §5.6): claim semantics, one owner
//! at a time, release of a dead owner's claims, pending items back to Investigating at start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};

use cloudha_protocol::{HostId, VmId, VmState, WorkId, WorkReason, WorkStep, WorkType};

use crate::error::StoreError;
use crate::proof::ProofRecord;
use crate::time::Timestamp;
use crate::vm::VmRecord;

/// A management server (owner of claims). Keep it stable across restarts of the same server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(pub u64);

/// One entry of a work item's history.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkEvent {
    /// When.
    pub at: Timestamp,
    /// What happened: a step change, a verdict, a fence proof, a try.
    pub what: String,
}

impl WorkEvent {
    /// An entry.
    pub fn new(at: Timestamp, what: impl Into<String>) -> Self {
        Self {
            at,
            what: what.into(),
        }
    }
}

/// One unit of HA work (CloudStack's `op_ha_work` row). Build one with [`WorkItem::new`] and set
/// fields (a durable store loading a row sets every field).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    pub time_to_try: Timestamp,
    /// Why.
    pub reason: WorkReason,
    /// Who holds the claim.
    pub owner: Option<OwnerId>,
    /// When it was claimed.
    pub taken: Option<Timestamp>,
    /// Bumped by the store on every write: a write carrying an older version is refused.
    pub version: u64,
    /// Held by the correlated-failure brake: not taken until the brake lifts.
    pub braked: bool,
    /// Why the VM's old copy cannot run any more (a power, pool or self fence, a dead verdict,
    /// the VM reported off by its Up host, the operator's word), once known: the record of the
    /// proof, which by itself starts nothing.
    pub fence_proof: Option<ProofRecord>,
    /// Starts asked for so far: the attempt of the latest [`StartKey`](crate::vm::StartKey).
    pub start_attempts: u32,
    /// The latest start's outcome is not known (recorded before the start is asked for, cleared
    /// when its answer comes): the next round reads the VM record first and, if the start did not
    /// happen, asks again with the same key.
    pub start_unknown: bool,
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
        now: Timestamp,
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
            version: 0,
            braked: false,
            fence_proof: None,
            start_attempts: 0,
            start_unknown: false,
            history: vec![WorkEvent {
                at: now,
                what: format!("scheduled {work_type:?} ({reason:?}), step {step:?}"),
            }],
        }
    }

    /// The key of the latest start asked for, if any.
    pub fn start_key(&self) -> Option<crate::vm::StartKey> {
        (self.start_attempts > 0).then_some(crate::vm::StartKey {
            work: self.id,
            attempt: self.start_attempts,
        })
    }

    /// Appends to the history.
    pub fn note(&mut self, at: Timestamp, what: impl Into<String>) {
        self.history.push(WorkEvent {
            at,
            what: what.into(),
        });
    }
}

/// Where work items live (CloudStack's `op_ha_work`). Every call is async and may fail; an
/// implementation over SQL runs each as one short transaction (`take` is `SELECT … FOR UPDATE
/// SKIP LOCKED` of the first eligible row). Every write bumps the item's `version`.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait HaWorkStore: Send + Sync {
    /// Stores a new item; returns its id.
    ///
    /// # Errors
    /// `Backend`.
    async fn insert(&self, item: WorkItem) -> Result<WorkId, StoreError>;

    /// Claims the first item (by time to try, then id) that has no owner, is due by `now`, is not
    /// final and not braked: stamps `owner` and `taken`.
    ///
    /// # Errors
    /// `Backend`.
    async fn take(&self, owner: OwnerId, now: Timestamp) -> Result<Option<WorkItem>, StoreError>;

    /// Writes back an item `writer` has claimed, as it is (its `owner` field decides whether it
    /// stays claimed). Compare-and-set: refused with [`StoreError::Stale`] unless the stored item
    /// is claimed by `writer` at `item.version`, so a slow former owner cannot overwrite a newer
    /// owner's write. Returns the new version.
    ///
    /// # Errors
    /// `Stale`, `UnknownWork`, `Backend`.
    async fn update(&self, writer: OwnerId, item: &WorkItem) -> Result<u64, StoreError>;

    /// One item.
    ///
    /// # Errors
    /// `Backend`.
    async fn get(&self, id: WorkId) -> Result<Option<WorkItem>, StoreError>;

    /// Every item of a VM, oldest first.
    ///
    /// # Errors
    /// `Backend`.
    async fn for_vm(&self, vm: VmId) -> Result<Vec<WorkItem>, StoreError>;

    /// Every item, oldest first.
    ///
    /// # Errors
    /// `Backend`.
    async fn list(&self) -> Result<Vec<WorkItem>, StoreError>;

    /// How many items are not final.
    ///
    /// # Errors
    /// `Backend`.
    async fn pending(&self) -> Result<usize, StoreError>;

    /// Releases the claims of `owner` on items not final. Returns how many.
    ///
    /// # Errors
    /// `Backend`.
    async fn release_owner(&self, owner: OwnerId) -> Result<usize, StoreError>;

    /// Unclaimed, not final items go back to step Investigating (re-checked before any action).
    /// Returns how many.
    ///
    /// # Errors
    /// `Backend`.
    async fn mark_pending_investigating(&self, now: Timestamp) -> Result<usize, StoreError>;

    /// Lifts the brake of the braked items of `vms`, making them due at `now`. Returns how many.
    ///
    /// # Errors
    /// `Backend`.
    async fn unbrake(&self, now: Timestamp, vms: &[VmId]) -> Result<usize, StoreError>;

    /// Deletes final items whose time to try is at or before `cutoff`. Returns how many.
    ///
    /// # Errors
    /// `Backend`.
    async fn cleanup(&self, cutoff: Timestamp) -> Result<usize, StoreError>;

    /// The earliest time to try of an unclaimed, unbraked, not final item.
    ///
    /// # Errors
    /// `Backend`.
    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError>;
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
    due: BTreeSet<(Timestamp, WorkId)>,
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
                item.version += 1;
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

    /// One item, without awaiting.
    pub fn item(&self, id: WorkId) -> Option<WorkItem> {
        self.lock().by_id.get(&id).cloned()
    }

    /// How many items are not final, without awaiting.
    pub fn pending_count(&self) -> usize {
        self.lock().pending
    }

    /// The items of a VM, oldest first, without awaiting.
    pub fn items_of(&self, vm: VmId) -> Vec<WorkItem> {
        let items = self.lock();
        items
            .by_vm
            .get(&vm)
            .into_iter()
            .flatten()
            .filter_map(|id| items.by_id.get(id).cloned())
            .collect()
    }

    /// Every item, oldest first, without awaiting (for reports over the in-memory store).
    pub fn items(&self) -> Vec<WorkItem> {
        self.lock().by_id.values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Items> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn eligible(i: &WorkItem) -> bool {
    i.owner.is_none() && !i.step.is_final() && !i.braked
}

#[async_trait::async_trait]
impl HaWorkStore for InMemoryHaWorkStore {
    async fn insert(&self, mut item: WorkItem) -> Result<WorkId, StoreError> {
        let mut items = self.lock();
        items.next += 1;
        item.id = WorkId(items.next);
        item.version = 0;
        let id = item.id;
        items.put(item);
        Ok(id)
    }

    async fn take(&self, owner: OwnerId, now: Timestamp) -> Result<Option<WorkItem>, StoreError> {
        let mut items = self.lock();
        let Some(&(at, id)) = items.due.first() else {
            return Ok(None);
        };
        if at > now {
            return Ok(None);
        }
        let Some(mut item) = items.by_id.get(&id).cloned() else {
            return Ok(None);
        };
        item.owner = Some(owner);
        item.taken = Some(now);
        item.version += 1;
        items.put(item.clone());
        Ok(Some(item))
    }

    async fn update(&self, writer: OwnerId, item: &WorkItem) -> Result<u64, StoreError> {
        let mut items = self.lock();
        let stored = items
            .by_id
            .get(&item.id)
            .ok_or(StoreError::UnknownWork(item.id))?;
        if stored.owner != Some(writer) || stored.version != item.version {
            return Err(StoreError::Stale {
                work: item.id,
                writer,
                version: item.version,
                holder: stored.owner,
                current: stored.version,
            });
        }
        let mut item = item.clone();
        // The history is append-only: the stored events stay, the writer's further ones are
        // added (a writer whose copy lost events cannot erase them).
        let kept = stored.history.len();
        if item.history.get(..kept) != Some(&stored.history[..]) {
            let mut history = stored.history.clone();
            history.extend(item.history.drain(..).skip(kept));
            item.history = history;
        }
        item.version += 1;
        let version = item.version;
        items.put(item);
        Ok(version)
    }

    async fn get(&self, id: WorkId) -> Result<Option<WorkItem>, StoreError> {
        Ok(self.lock().by_id.get(&id).cloned())
    }

    async fn for_vm(&self, vm: VmId) -> Result<Vec<WorkItem>, StoreError> {
        Ok(self.items_of(vm))
    }

    async fn list(&self) -> Result<Vec<WorkItem>, StoreError> {
        Ok(self.items())
    }

    async fn pending(&self) -> Result<usize, StoreError> {
        Ok(self.lock().pending)
    }

    async fn release_owner(&self, owner: OwnerId) -> Result<usize, StoreError> {
        Ok(self.lock().change_all(
            |i| i.owner == Some(owner) && !i.step.is_final(),
            |i| {
                i.owner = None;
                i.taken = None;
            },
        ))
    }

    async fn mark_pending_investigating(&self, now: Timestamp) -> Result<usize, StoreError> {
        Ok(self.lock().change_all(
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
        ))
    }

    async fn unbrake(&self, now: Timestamp, vms: &[VmId]) -> Result<usize, StoreError> {
        Ok(self.lock().change_all(
            |i| i.braked && vms.contains(&i.vm),
            |i| {
                i.braked = false;
                i.time_to_try = now;
                i.note(now, "brake lifted");
            },
        ))
    }

    async fn cleanup(&self, cutoff: Timestamp) -> Result<usize, StoreError> {
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
        Ok(old.len())
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        Ok(self.lock().due.first().map(|(at, _)| *at))
    }
}
