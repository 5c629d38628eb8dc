//! Fencing (spec §6.3, §7.3, spec README "fencing proof"): the `Fencer` chain, the neighbour
//! fencer and the power fencer over the `OutOfBandManagement` port.

use std::sync::Arc;
use std::time::Duration;

use cloudha_protocol::{Answer, Command, FenceAnswer, FenceCommand, HostId, Status};

use super::vm::VmRecord;
use crate::host::{HostRecord, HostStore};
use crate::investigate::HostCommander;

/// What a fencer achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceOutcome {
    /// The VM's old copy cannot run any more; `evidence` says why we know.
    Fenced {
        /// The proof, in words.
        evidence: String,
    },
    /// This fencer tried and could not fence.
    Failed {
        /// Why.
        reason: String,
    },
    /// This fencer does not apply here (or has no proof); the chain goes on.
    NotApplicable {
        /// Why.
        reason: String,
    },
}

/// One link of the fence chain (CloudStack's `FenceBuilder`).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait Fencer: Send + Sync {
    /// The name recorded with the proof.
    fn name(&self) -> &'static str;

    /// Makes sure `vm` no longer runs on `host`.
    async fn fence(&self, vm: &VmRecord, host: &HostRecord) -> FenceOutcome;
}

/// A host's power as its BMC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// On.
    On,
    /// Off.
    Off,
    /// The BMC cannot tell.
    Unknown,
}

/// An out-of-band management error (BMC unreachable, refused, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("out-of-band management of host {host}: {reason}")]
pub struct OobError {
    /// The host.
    pub host: HostId,
    /// Why.
    pub reason: String,
}

/// Out-of-band power management (IPMI, Redfish).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait OutOfBandManagement: Send + Sync {
    /// The host's power state.
    ///
    /// # Errors
    /// The BMC did not answer.
    async fn power_status(&self, host: HostId) -> Result<PowerState, OobError>;

    /// Powers the host off.
    ///
    /// # Errors
    /// The BMC refused or did not answer.
    async fn power_off(&self, host: HostId) -> Result<(), OobError>;

    /// Resets the host.
    ///
    /// # Errors
    /// The BMC refused or did not answer.
    async fn power_reset(&self, host: HostId) -> Result<(), OobError>;
}

/// Wait of a FenceCommand to a neighbour.
pub const FENCE_WAIT: Duration = Duration::from_secs(60);

/// KVM's neighbour fencer (CloudStack's `KVMFencer`): asks the Up KVM neighbours whether the
/// host's heartbeat is dead. A dead heartbeat is a proof only where the host fences itself
/// independently of its agent; otherwise it is recorded and the chain goes on.
pub struct NeighbourFencer {
    commander: Arc<dyn HostCommander>,
    store: Arc<dyn HostStore>,
}

impl NeighbourFencer {
    /// Asks neighbours through `commander`; neighbours from `store`.
    pub fn new(commander: Arc<dyn HostCommander>, store: Arc<dyn HostStore>) -> Self {
        Self { commander, store }
    }
}

#[async_trait::async_trait]
impl Fencer for NeighbourFencer {
    fn name(&self) -> &'static str {
        "NeighbourFencer"
    }

    async fn fence(&self, vm: &VmRecord, host: &HostRecord) -> FenceOutcome {
        if !host.hypervisor.is_kvm_like() {
            return FenceOutcome::NotApplicable {
                reason: "not a KVM host".into(),
            };
        }
        let Some(cluster) = host.cluster else {
            return FenceOutcome::NotApplicable {
                reason: "host has no cluster".into(),
            };
        };
        let mut asked = 0;
        for n in self.store.in_cluster(cluster) {
            if n.id == host.id || n.status != Some(Status::Up) || !n.hypervisor.is_kvm_like() {
                continue;
            }
            asked += 1;
            let cmd = Command::Fence(FenceCommand {
                target: host.id,
                vm: Some(vm.id),
            });
            if let Ok(Answer::Fence(FenceAnswer {
                success: true,
                alive: false,
                ..
            })) = self.commander.send(n.id, cmd, FENCE_WAIT).await
            {
                let seen = format!("host {} sees the heartbeat of host {} dead", n.id, host.id);
                return if host.self_fence_independent {
                    FenceOutcome::Fenced {
                        evidence: format!(
                            "{seen}; the host fences itself independently of its agent"
                        ),
                    }
                } else {
                    FenceOutcome::NotApplicable {
                        reason: format!(
                            "{seen}, but its self-fence depends on its agent: no proof"
                        ),
                    }
                };
            }
        }
        FenceOutcome::Failed {
            reason: format!(
                "unable to fence off host {} after asking {asked} hosts",
                host.id
            ),
        }
    }
}

/// Fences by power: "already off" counts as fenced, "unknown" does not; an off is confirmed by
/// reading the power state back.
pub struct PowerFencer {
    oob: Arc<dyn OutOfBandManagement>,
}

impl PowerFencer {
    /// Fences through `oob`.
    pub fn new(oob: Arc<dyn OutOfBandManagement>) -> Self {
        Self { oob }
    }
}

#[async_trait::async_trait]
impl Fencer for PowerFencer {
    fn name(&self) -> &'static str {
        "PowerFencer"
    }

    async fn fence(&self, _vm: &VmRecord, host: &HostRecord) -> FenceOutcome {
        match self.oob.power_status(host.id).await {
            Ok(PowerState::Off) => {
                return FenceOutcome::Fenced {
                    evidence: format!("BMC reports host {} already off", host.id),
                };
            }
            Ok(PowerState::Unknown) => {
                return FenceOutcome::Failed {
                    reason: format!("BMC of host {} reports power unknown: not fenced", host.id),
                };
            }
            Err(e) => {
                return FenceOutcome::Failed {
                    reason: e.to_string(),
                };
            }
            Ok(PowerState::On) => {}
        }
        if let Err(e) = self.oob.power_off(host.id).await {
            return FenceOutcome::Failed {
                reason: e.to_string(),
            };
        }
        match self.oob.power_status(host.id).await {
            Ok(PowerState::Off) => FenceOutcome::Fenced {
                evidence: format!(
                    "host {} powered off through its BMC, confirmed off",
                    host.id
                ),
            },
            other => FenceOutcome::Failed {
                reason: format!("power-off of host {} not confirmed: {other:?}", host.id),
            },
        }
    }
}
