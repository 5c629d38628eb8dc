//! # cloudha-ha
//!
//! VM-HA: the durable work queue, its workers, fencing and restarts (spec §5, §6, §7.3 and the
//! spec README's brake and fencing-proof rules). CloudStack's `HighAvailabilityManagerImpl`.
//! It composes the rest: the agent manager (`cloudha-liveness`) hands it hosts proven Down,
//! and it works over the records and ports of `cloudha-ports`.

pub mod bounded;
pub mod config;
pub mod fence;
mod manager;
pub mod proof;
pub mod vm;

pub use bounded::{NoAnswer, STORE_CALL_BOUND};
pub use config::{Config, HaConfig};
pub use fence::{FenceOutcome, Fencer, NeighbourFencer, PowerFencer, XenPoolFencer};
pub use manager::{HaManager, HaPorts};
pub use proof::{DeathProof, FenceEvidence, ProveDead};
pub use vm::{
    Expunge, InMemoryVms, OrchestratorError, Planner, StartError, StartParams, VmOrchestrator,
};

#[cfg(any(test, feature = "mock"))]
pub use fence::MockFencer;
#[cfg(any(test, feature = "mock"))]
pub use vm::MockVmOrchestrator;
