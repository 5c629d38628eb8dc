//! VM-HA: the durable work queue, its workers, fencing and restarts (spec §5, §6, §7.3 and the
//! spec README's brake and fencing-proof rules). CloudStack's `HighAvailabilityManagerImpl`.

pub mod fence;
mod manager;
pub mod proof;
pub mod vm;
pub mod work;

pub use crate::oobm::{OobError, Oobm, OutOfBandManagement, PowerState};
pub use fence::{FenceOutcome, Fencer, NeighbourFencer, PowerFencer, XenPoolFencer};
pub use manager::{HaManager, HaPorts};
pub use proof::{DeathProof, ProofKind, SelfFenceTimings};
pub use vm::{
    InMemoryVms, OrchestratorError, Planner, StartError, StartParams, VmKind, VmOrchestrator,
    VmRecord,
};
pub use work::{HaWorkStore, InMemoryHaWorkStore, OwnerId, WorkEvent, WorkItem};

#[cfg(any(test, feature = "mock"))]
pub use crate::oobm::MockOutOfBandManagement;
#[cfg(any(test, feature = "mock"))]
pub use fence::MockFencer;
#[cfg(any(test, feature = "mock"))]
pub use vm::MockVmOrchestrator;
#[cfg(any(test, feature = "mock"))]
pub use work::MockHaWorkStore;
