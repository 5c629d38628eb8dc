//! VM records (what the orchestrator knows of a VM).

use cloudha_protocol::{ClusterId, HostId, HypervisorType, VmId, VmState, ZoneId};

/// The kind of a VM; system VMs are restarted first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum VmKind {
    /// A virtual router.
    DomainRouter,
    /// The console proxy.
    ConsoleProxy,
    /// The secondary storage VM.
    SecondaryStorageVm,
    /// A user VM.
    User,
}

impl VmKind {
    /// System VMs (restarted before user VMs).
    pub const fn is_system(self) -> bool {
        !matches!(self, Self::User)
    }
}

/// What the orchestrator knows of a VM. Build one with [`VmRecord::new`] and set fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VmRecord {
    /// The VM.
    pub id: VmId,
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: VmKind,
    /// The host it runs on (`None` when stopped).
    pub host: Option<HostId>,
    /// The host it last ran on.
    pub last_host: Option<HostId>,
    /// Its state.
    pub state: VmState,
    /// Incremented by every change of the record (CloudStack's `updated`).
    pub update_count: u64,
    /// The offering has HA.
    pub ha_enabled: bool,
    /// Its root disk is on the host's local storage (its fate is the host's: never restarted elsewhere).
    pub local_root_disk: bool,
    /// Its hypervisor.
    pub hypervisor: HypervisorType,
    /// Its cluster.
    pub cluster: Option<ClusterId>,
    /// Its zone.
    pub zone: Option<ZoneId>,
}

impl VmRecord {
    /// A stopped user VM on no host, without HA, with no cluster or zone; set the rest.
    pub fn new(id: VmId, name: impl Into<String>, hypervisor: HypervisorType) -> Self {
        Self {
            id,
            name: name.into(),
            kind: VmKind::User,
            host: None,
            last_host: None,
            state: VmState::Stopped,
            update_count: 0,
            ha_enabled: false,
            local_root_disk: false,
            hypervisor,
            cluster: None,
            zone: None,
        }
    }
}
