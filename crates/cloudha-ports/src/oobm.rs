//! Out-of-band management (IPMI, Redfish, fence agents): the `OutOfBandManagement` port.

use cloudha_protocol::HostId;

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

/// An out-of-band management error (BMC unreachable, refused, timed out, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("out-of-band management of host {host}: {reason}")]
pub struct OobError {
    /// The host.
    pub host: HostId,
    /// Why.
    pub reason: String,
}

/// Out-of-band power management of hosts (IPMI, Redfish).
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
