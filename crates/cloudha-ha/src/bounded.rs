//! Bounds on the ports the HA manager calls that may hang: the work store (every call), the
//! fencers and the orchestrator (actions). A call that does not answer in time fails like any
//! other failure of that port (a store backend error, a failed fence, a failed stop), so a hung
//! BMC, database or orchestrator never holds a worker forever.
//!
//! A start is the exception in what its timeout means: a start that does not answer may still
//! happen, so it is not a failure but [`StartError::OutcomeUnknown`]. The HA manager keeps the
//! start's key, reads the VM record in its next round, and asks again with the same key only if
//! the start did not land (the orchestrator answers a key it has seen without starting again).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cloudha_ports::{HaWorkStore, HostRecord, OwnerId, StoreError, Timestamp, VmRecord, WorkItem};
use cloudha_protocol::{HostId, VmId, WorkId};

use crate::fence::{FenceOutcome, Fencer};
use crate::proof::DeathProof;
use crate::vm::{Expunge, OrchestratorError, StartError, StartParams, VmOrchestrator};

/// How long a work-store call may take.
pub const STORE_CALL_BOUND: Duration = Duration::from_secs(30);

/// A call that did not answer within its bound.
#[derive(Debug, thiserror::Error)]
#[error("no answer within {0:?}")]
#[non_exhaustive]
pub struct NoAnswer(pub Duration);

async fn bounded<T>(bound: Duration, fut: impl Future<Output = T>) -> Result<T, NoAnswer> {
    tokio::time::timeout(bound, fut)
        .await
        .map_err(|_| NoAnswer(bound))
}

/// The work store, every call bounded by [`STORE_CALL_BOUND`]: an unanswered call is a
/// [`StoreError::Backend`] (retried like any other), and a write that lands late is refused by
/// the version check on the next save.
pub(crate) struct BoundedWork {
    pub(crate) inner: Arc<dyn HaWorkStore>,
    pub(crate) bound: Duration,
}

impl BoundedWork {
    async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        bounded(self.bound, fut)
            .await
            .unwrap_or_else(|e| Err(StoreError::backend(what, e)))
    }
}

#[async_trait::async_trait]
impl HaWorkStore for BoundedWork {
    async fn insert(&self, item: WorkItem) -> Result<WorkId, StoreError> {
        self.call("insert", self.inner.insert(item)).await
    }
    async fn take(&self, owner: OwnerId, now: Timestamp) -> Result<Option<WorkItem>, StoreError> {
        self.call("take", self.inner.take(owner, now)).await
    }
    async fn update(&self, writer: OwnerId, item: &WorkItem) -> Result<u64, StoreError> {
        self.call("update", self.inner.update(writer, item)).await
    }
    async fn get(&self, id: WorkId) -> Result<Option<WorkItem>, StoreError> {
        self.call("get", self.inner.get(id)).await
    }
    async fn for_vm(&self, vm: VmId) -> Result<Vec<WorkItem>, StoreError> {
        self.call("for_vm", self.inner.for_vm(vm)).await
    }
    async fn list(&self) -> Result<Vec<WorkItem>, StoreError> {
        self.call("list", self.inner.list()).await
    }
    async fn pending(&self) -> Result<usize, StoreError> {
        self.call("pending", self.inner.pending()).await
    }
    async fn release_owner(&self, owner: OwnerId) -> Result<usize, StoreError> {
        self.call("release_owner", self.inner.release_owner(owner))
            .await
    }
    async fn mark_pending_investigating(&self, now: Timestamp) -> Result<usize, StoreError> {
        self.call(
            "mark_pending_investigating",
            self.inner.mark_pending_investigating(now),
        )
        .await
    }
    async fn unbrake(&self, now: Timestamp, vms: &[VmId]) -> Result<usize, StoreError> {
        self.call("unbrake", self.inner.unbrake(now, vms)).await
    }
    async fn cleanup(&self, cutoff: Timestamp) -> Result<usize, StoreError> {
        self.call("cleanup", self.inner.cleanup(cutoff)).await
    }
    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        self.call("next_due", self.inner.next_due()).await
    }
}

/// A fencer bounded by `bound` (`wait`): no answer is a failed fence (no proof, no start).
pub(crate) struct BoundedFencer {
    pub(crate) inner: Arc<dyn Fencer>,
    pub(crate) bound: Duration,
}

#[async_trait::async_trait]
impl Fencer for BoundedFencer {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn fence(&self, vm: &VmRecord, host: &HostRecord) -> FenceOutcome {
        bounded(self.bound, self.inner.fence(vm, host))
            .await
            .unwrap_or_else(|e| FenceOutcome::Failed {
                reason: format!("{}: {e}", self.inner.name()),
            })
    }
}

/// The orchestrator with its actions bounded by `bound` (`wait`): a start without an answer is
/// [`StartError::OutcomeUnknown`] (see the module's docs); reads pass through.
pub(crate) struct BoundedVms {
    pub(crate) inner: Arc<dyn VmOrchestrator>,
    pub(crate) bound: Duration,
}

impl BoundedVms {
    async fn call<T>(
        &self,
        vm: VmId,
        what: &str,
        fut: impl Future<Output = Result<T, OrchestratorError>>,
    ) -> Result<T, OrchestratorError> {
        bounded(self.bound, fut)
            .await
            .unwrap_or_else(|e| Err(OrchestratorError::new(vm, format!("{what}: {e}"))))
    }
}

#[async_trait::async_trait]
impl VmOrchestrator for BoundedVms {
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
        self.call(vm, "force stop", self.inner.force_stop(vm)).await
    }
    async fn stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError> {
        self.call(vm, "stop", self.inner.stop(vm)).await
    }
    async fn start(
        &self,
        vm: VmId,
        params: StartParams,
        proof: &DeathProof,
    ) -> Result<HostId, StartError> {
        let key = params.key;
        bounded(self.bound, self.inner.start(vm, params, proof))
            .await
            .unwrap_or_else(|e| Err(StartError::OutcomeUnknown(format!("start {key}: {e}"))))
    }
    async fn migrate_away(
        &self,
        vm: VmId,
        from: HostId,
        candidates: Vec<HostId>,
    ) -> Result<HostId, StartError> {
        bounded(self.bound, self.inner.migrate_away(vm, from, candidates))
            .await
            .unwrap_or_else(|e| Err(StartError::Failed(format!("migration: {e}"))))
    }
    async fn destroy(&self, vm: VmId, expunge: Expunge) -> Result<(), OrchestratorError> {
        self.call(vm, "destroy", self.inner.destroy(vm, expunge))
            .await
    }
}
