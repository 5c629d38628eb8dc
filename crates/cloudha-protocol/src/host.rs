//! Host descriptors: what kind of host it is, its hypervisor and its resource state.
//!
//! Names on the wire are CloudStack's (`Routing`, `XenServer`, `PrepareForMaintenance`).

use serde::{Deserialize, Serialize};

/// The kind of a managed host (CloudStack's `Host.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HostType {
    /// A hypervisor host that runs VMs.
    Routing,
    /// A storage host.
    Storage,
    /// The console proxy system VM's agent.
    ConsoleProxy,
    /// Secondary storage (NFS/object store) host record.
    SecondaryStorage,
    /// The secondary storage system VM's agent.
    #[serde(rename = "SecondaryStorageVM")]
    SecondaryStorageVm,
    /// Command executor inside the secondary storage VM.
    SecondaryStorageCmdExecutor,
    /// A traffic monitor appliance.
    TrafficMonitor,
    /// An external firewall appliance.
    ExternalFirewall,
    /// An external load balancer appliance.
    ExternalLoadBalancer,
    /// Local secondary storage.
    LocalSecondaryStorage,
    /// An L2 network appliance.
    L2Networking,
}

impl HostType {
    /// System-VM agent types: behind on ping means "disconnect without investigation"
    /// (CloudStack's MonitorTask), and host investigation answers Alert for them.
    pub const fn is_system_vm(self) -> bool {
        matches!(
            self,
            Self::ConsoleProxy | Self::SecondaryStorageVm | Self::SecondaryStorageCmdExecutor
        )
    }

    /// Types the behind-on-ping monitor does not track (CloudStack skips them on connect).
    pub const fn is_ping_untracked(self) -> bool {
        matches!(self, Self::TrafficMonitor | Self::SecondaryStorage)
    }
}

/// The hypervisor of a routing host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HypervisorType {
    /// KVM: connected agent, storage heartbeat.
    #[serde(rename = "KVM")]
    Kvm,
    /// LXC (treated like KVM by investigators and fencers).
    #[serde(rename = "LXC")]
    Lxc,
    /// XenServer / XCP-ng: direct agent.
    XenServer,
    /// VMware vSphere: direct agent; VMs are left to vSphere HA.
    VMware,
    /// Hyper-V: VMs are left to the hypervisor's own HA.
    Hyperv,
    /// CloudStack's simulator hypervisor: direct agent.
    Simulator,
    /// Bare metal.
    BareMetal,
    /// Oracle VM 3.
    Ovm3,
    /// Not a hypervisor host.
    None,
}

impl HypervisorType {
    /// Hypervisors whose VMs are restarted by their own HA, not by cloudha (CloudStack skips them).
    pub const fn has_native_ha(self) -> bool {
        matches!(self, Self::VMware | Self::Hyperv)
    }

    /// KVM-like hosts: storage heartbeat investigation and neighbour fencing apply.
    pub const fn is_kvm_like(self) -> bool {
        matches!(self, Self::Kvm | Self::Lxc)
    }
}

/// The administrative resource state of a host (CloudStack's `ResourceState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub enum ResourceState {
    /// Being created.
    Creating,
    /// Normal operation.
    #[default]
    Enabled,
    /// Disabled by the operator.
    Disabled,
    /// Maintenance requested; VMs are being moved away.
    PrepareForMaintenance,
    /// Preparing for maintenance failed.
    ErrorInPrepareForMaintenance,
    /// In maintenance.
    Maintenance,
    /// Maintenance failed.
    ErrorInMaintenance,
    /// Marked degraded by the operator (CloudStack's `declareHostAsDegraded`).
    Degraded,
}

impl ResourceState {
    /// Hosts the monitor disconnects without investigation when they fall behind on ping,
    /// and that count neither as suspect nor towards a cluster's size for the brake.
    pub const fn is_out_of_service(self) -> bool {
        matches!(
            self,
            Self::Disabled | Self::Maintenance | Self::ErrorInMaintenance
        )
    }
}
