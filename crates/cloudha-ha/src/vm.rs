//! VM records and the `VmOrchestrator` port (start, stop, migrate, destroy), plus an in-memory
//! orchestrator with per-host capacity.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use cloudha_ports::{StartKey, VmRecord};
use cloudha_protocol::{HostId, VmId, VmState};

use crate::proof::DeathProof;

/// Which planner places a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planner {
    /// The VM's own planner: hosts of its cluster.
    Default,
    /// The emergency HA planner: any suitable host of its zone.
    Ha,
}

/// How to start a VM: where it may go, and why. Made by the HA manager.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StartParams {
    /// The hosts it may start on, in order of preference: all Up and enabled, never its failed
    /// host, filtered by `ha.tag` when set.
    pub candidates: Vec<HostId>,
    /// The planner that chose the candidates.
    pub planner: Planner,
    /// `ha.tag`, when set.
    pub ha_tag: Option<String>,
    /// A start by HA.
    pub ha_operation: bool,
    /// The start's idempotency key: commit it with the VM record, and never start the VM again
    /// for a key already seen (see [`StartKey`]).
    pub key: StartKey,
}

/// When a destroyed VM is expunged (its record removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expunge {
    /// At once (system VMs: secondary storage VMs and console proxies are recreated).
    Now,
    /// Not now: the VM stays Destroyed (CloudStack expunges it after `expunge.delay`).
    Later,
}

/// A start or migration that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// No candidate had room.
    #[error("insufficient capacity: {0}")]
    InsufficientCapacity(String),
    /// Any other failure (resource, concurrency) after which the VM is known not started.
    #[error("start failed: {0}")]
    Failed(String),
    /// It is not known whether the VM started (no answer in time, a lost connection): the HA
    /// manager reads the VM record before it asks again, with the same key.
    #[error("start outcome unknown: {0}")]
    OutcomeUnknown(String),
}

/// An orchestration call that failed, with the orchestrator's own error as its source when
/// there is one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("vm {vm}: {reason}")]
#[non_exhaustive]
pub struct OrchestratorError {
    /// The VM.
    pub vm: VmId,
    /// Why.
    pub reason: String,
    /// The orchestrator's error (a database, an RPC, ...).
    #[source]
    pub source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl OrchestratorError {
    /// An error without a source.
    pub fn new(vm: VmId, reason: impl Into<String>) -> Self {
        Self {
            vm,
            reason: reason.into(),
            source: None,
        }
    }

    /// The same error, caused by `source`.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(std::sync::Arc::new(source));
        self
    }
}

/// Runs VMs (CloudStack's `VirtualMachineManager`). Reads are plain calls (the ping path compares
/// power reports with them); actions are async.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait VmOrchestrator: Send + Sync {
    /// One VM.
    fn get(&self, vm: VmId) -> Option<VmRecord>;

    /// The VMs whose host or last host is `host`.
    fn vms_on_host(&self, host: HostId) -> Vec<VmRecord>;

    /// The VMs the records say are Running on `host` (ids only: the ping path compares them
    /// with power reports).
    fn running_on(&self, host: HostId) -> Vec<VmId>;

    /// Marks a VM stopped without asking its host (only after it is proven dead or fenced):
    /// state Stopped, host cleared, last host kept.
    ///
    /// # Errors
    /// Unknown VM.
    async fn force_stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError>;

    /// Stops a VM through its host.
    ///
    /// # Errors
    /// The host did not stop it.
    async fn stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError>;

    /// Starts a stopped VM on one of `params.candidates`; returns the host. Only with `proof`
    /// that its old copy cannot run any more: only the HA manager makes one (see
    /// [`DeathProof`]), so no start is written without one.
    ///
    /// Idempotent by `params.key`: commit the key with the VM record (it reads back as
    /// [`VmRecord::start_key`]), and answer a start whose key was already seen (made, or still
    /// in flight) with that start's outcome instead of starting the VM again. Start only a VM
    /// whose record is stopped (CloudStack's Stopped → Starting state transition), so a start
    /// that lands late finds the VM started by another and fails. The HA manager
    /// bounds each start by `wait`; a start that does not answer in time is one whose outcome is
    /// unknown, and the same key is sent again only after the VM record shows it did not land.
    ///
    /// # Errors
    /// [`StartError::InsufficientCapacity`] when no candidate has room.
    async fn start(
        &self,
        vm: VmId,
        params: StartParams,
        proof: &DeathProof,
    ) -> Result<HostId, StartError>;

    /// Live-migrates a VM away from `from` to one of `candidates`.
    ///
    /// # Errors
    /// [`StartError`].
    async fn migrate_away(
        &self,
        vm: VmId,
        from: HostId,
        candidates: Vec<HostId>,
    ) -> Result<HostId, StartError>;

    /// Destroys a VM, and expunges it (removes its record) when `expunge` says now.
    ///
    /// # Errors
    /// The destroy failed.
    async fn destroy(&self, vm: VmId, expunge: Expunge) -> Result<(), OrchestratorError>;
}

/// A `VmOrchestrator` in memory: VM records and per-host capacity (VMs a host can run). Starting
/// takes the first candidate with room.
#[derive(Debug, Default)]
pub struct InMemoryVms {
    vms: Mutex<Vms>,
    capacity: Mutex<HashMap<HostId, usize>>,
}

/// Records plus an index by host (current, else last), so `vms_on_host` does not scan the fleet.
#[derive(Debug, Default)]
struct Vms {
    by_id: HashMap<VmId, VmRecord>,
    by_host: HashMap<HostId, std::collections::BTreeSet<VmId>>,
    running: HashMap<HostId, usize>,
}

impl Vms {
    fn key(r: &VmRecord) -> Option<HostId> {
        r.host.or(r.last_host)
    }

    fn unindex(&mut self, r: &VmRecord) {
        if let Some(h) = Self::key(r)
            && let Some(set) = self.by_host.get_mut(&h)
        {
            set.remove(&r.id);
        }
        if let (Some(h), VmState::Running) = (r.host, r.state)
            && let Some(n) = self.running.get_mut(&h)
        {
            *n = n.saturating_sub(1);
        }
    }

    fn index(&mut self, r: &VmRecord) {
        if let Some(h) = Self::key(r) {
            self.by_host.entry(h).or_default().insert(r.id);
        }
        if let (Some(h), VmState::Running) = (r.host, r.state) {
            *self.running.entry(h).or_default() += 1;
        }
    }

    fn put(&mut self, r: VmRecord) {
        if let Some(old) = self.by_id.remove(&r.id) {
            self.unindex(&old);
        }
        self.index(&r);
        self.by_id.insert(r.id, r);
    }

    /// Changes one record through `f`, keeping the indexes right.
    fn change<T>(&mut self, vm: VmId, f: impl FnOnce(&mut VmRecord) -> T) -> Option<T> {
        let mut r = self.by_id.remove(&vm)?;
        self.unindex(&r);
        let out = f(&mut r);
        self.index(&r);
        self.by_id.insert(vm, r);
        Some(out)
    }
}

impl InMemoryVms {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a VM.
    pub fn upsert(&self, vm: VmRecord) {
        self.lock().put(vm);
    }

    /// Sets how many VMs `host` can run.
    pub fn set_capacity(&self, host: HostId, vms: usize) {
        self.capacity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(host, vms);
    }

    /// Every VM, by id.
    pub fn all(&self) -> Vec<VmRecord> {
        let mut v: Vec<_> = self.lock().by_id.values().cloned().collect();
        v.sort_by_key(|v| v.id);
        v
    }

    /// Sets a VM's state and host directly (what a power report or an outside actor does).
    pub fn set_state(&self, vm: VmId, state: VmState, host: Option<HostId>) {
        self.lock().change(vm, |r| {
            if r.host.is_some() {
                r.last_host = r.host;
            }
            r.state = state;
            r.host = host;
            r.update_count += 1;
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vms> {
        self.vms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes one record through `f` (what an outside actor does), keeping the indexes right;
    /// `None` when the VM is unknown.
    pub fn update<T>(&self, vm: VmId, f: impl FnOnce(&mut VmRecord) -> T) -> Option<T> {
        self.lock().change(vm, f)
    }

    /// What a start with `key` already did, if the record carries that key: the host it started
    /// on, or an error when the VM has stopped since (a key starts a VM at most once).
    pub fn seen_start(&self, vm: VmId, key: StartKey) -> Option<Result<HostId, StartError>> {
        Self::seen(&self.lock(), vm, key)
    }

    /// Why a start of `vm` with `key` must not be made, as its answer: the key was seen (that
    /// start's answer), or the VM's record is not stopped. `None`: the start may be made.
    pub fn start_refusal(&self, vm: VmId, key: StartKey) -> Option<Result<HostId, StartError>> {
        Self::refusal(&self.lock(), vm, key)
    }

    fn refusal(vms: &Vms, vm: VmId, key: StartKey) -> Option<Result<HostId, StartError>> {
        Self::seen(vms, vm, key).or_else(|| {
            let r = vms.by_id.get(&vm)?;
            (r.state != VmState::Stopped || r.host.is_some()).then(|| {
                Err(StartError::Failed(format!(
                    "vm {vm} is {:?}, not stopped: not started",
                    r.state
                )))
            })
        })
    }

    fn seen(vms: &Vms, vm: VmId, key: StartKey) -> Option<Result<HostId, StartError>> {
        let r = vms.by_id.get(&vm)?;
        (r.start_key == Some(key)).then(|| match (r.state, r.host) {
            (VmState::Running | VmState::Starting, Some(h)) => Ok(h),
            (state, _) => Err(StartError::Failed(format!(
                "start {key} was made already; the VM is {state:?} since"
            ))),
        })
    }

    fn place(
        &self,
        vm: VmId,
        candidates: &[HostId],
        key: Option<StartKey>,
    ) -> Result<HostId, StartError> {
        let mut vms = self.lock();
        if let Some(refused) = key.and_then(|k| Self::refusal(&vms, vm, k)) {
            return refused;
        }
        let caps = self.capacity.lock().unwrap_or_else(PoisonError::into_inner);
        let room = |h: &HostId| {
            vms.running.get(h).copied().unwrap_or(0) < caps.get(h).copied().unwrap_or(usize::MAX)
        };
        let Some(&host) = candidates.iter().find(|h| room(h)) else {
            return Err(StartError::InsufficientCapacity(format!(
                "no room for vm {vm} on {} candidates",
                candidates.len()
            )));
        };
        vms.change(vm, |r| {
            if r.host.is_some() {
                r.last_host = r.host;
            }
            r.host = Some(host);
            r.state = VmState::Running;
            r.update_count += 1;
            if key.is_some() {
                r.start_key = key;
            }
        })
        .ok_or_else(|| StartError::Failed(format!("vm {vm} unknown")))?;
        Ok(host)
    }
}

#[async_trait::async_trait]
impl VmOrchestrator for InMemoryVms {
    fn get(&self, vm: VmId) -> Option<VmRecord> {
        self.lock().by_id.get(&vm).cloned()
    }

    fn vms_on_host(&self, host: HostId) -> Vec<VmRecord> {
        let vms = self.lock();
        vms.by_host
            .get(&host)
            .into_iter()
            .flatten()
            .filter_map(|id| vms.by_id.get(id).cloned())
            .collect()
    }

    fn running_on(&self, host: HostId) -> Vec<VmId> {
        let vms = self.lock();
        vms.by_host
            .get(&host)
            .into_iter()
            .flatten()
            .filter(|id| {
                vms.by_id
                    .get(id)
                    .is_some_and(|v| v.host == Some(host) && v.state == VmState::Running)
            })
            .copied()
            .collect()
    }

    async fn force_stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError> {
        self.lock()
            .change(vm, |r| {
                if r.host.is_some() {
                    r.last_host = r.host;
                }
                r.host = None;
                r.state = VmState::Stopped;
                r.update_count += 1;
                r.clone()
            })
            .ok_or_else(|| OrchestratorError::new(vm, "unknown VM"))
    }

    async fn stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError> {
        self.force_stop(vm).await
    }

    async fn start(
        &self,
        vm: VmId,
        params: StartParams,
        _proof: &DeathProof,
    ) -> Result<HostId, StartError> {
        self.place(vm, &params.candidates, Some(params.key))
    }

    async fn migrate_away(
        &self,
        vm: VmId,
        from: HostId,
        candidates: Vec<HostId>,
    ) -> Result<HostId, StartError> {
        let c: Vec<HostId> = candidates.into_iter().filter(|h| *h != from).collect();
        self.place(vm, &c, None)
    }

    async fn destroy(&self, vm: VmId, expunge: Expunge) -> Result<(), OrchestratorError> {
        let mut vms = self.lock();
        if expunge == Expunge::Now {
            if let Some(old) = vms.by_id.remove(&vm) {
                vms.unindex(&old);
            }
        } else {
            vms.change(vm, |r| {
                r.state = VmState::Destroyed;
                r.host = None;
                r.update_count += 1;
            });
        }
        Ok(())
    }
}
