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

/// An out-of-band management error (BMC unreachable, refused, timed out, ...), with the
/// driver's own error as its source when there is one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("out-of-band management of host {host}: {reason}")]
#[non_exhaustive]
pub struct OobError {
    /// The host.
    pub host: HostId,
    /// Why.
    pub reason: String,
    /// The driver's error (an HTTP or I/O error, ...).
    #[source]
    pub source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl OobError {
    /// An error without a source.
    pub fn new(host: HostId, reason: impl Into<String>) -> Self {
        Self {
            host,
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
