//! VM records (what the orchestrator knows of a VM).

use cloudha_protocol::{ClusterId, HostId, HypervisorType, VmId, VmState, WorkId, ZoneId};

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

/// The idempotency key of a start: the HA work item that asks for it and the attempt. The HA
/// manager records the key on the item before it asks, and sends the same key again, never a new
/// one, until it knows how the start it names ended (a start that did not answer in time may still
/// happen). An orchestrator commits the key with the VM record it starts and never starts a VM
/// again for a key it has seen: a repeated key gets the first start's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StartKey {
    /// The work item.
    pub work: WorkId,
    /// The attempt, from 1; a new attempt only after the previous one's outcome is known.
    pub attempt: u32,
}

impl std::fmt::Display for StartKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.work, self.attempt)
    }
}

impl std::str::FromStr for StartKey {
    type Err = String;

    /// `WORK/ATTEMPT`, as [`Display`](std::fmt::Display) writes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("start key {s:?}: expected WORK/ATTEMPT, two numbers");
        let (w, a) = s.split_once('/').ok_or_else(bad)?;
        Ok(Self {
            work: WorkId(w.parse().map_err(|_| bad())?),
            attempt: a.parse().map_err(|_| bad())?,
        })
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
    /// The key of the last start the orchestrator made of it (committed with the record), if
    /// any: how the HA manager learns that a start whose answer it lost did happen.
    pub start_key: Option<StartKey>,
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
            start_key: None,
        }
    }
}
