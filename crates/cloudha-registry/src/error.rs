//! Errors of the registry.

use cloudha_protocol::{HostId, ListenerId};

/// What a refused connect asks the manager to do with the host (CloudStack's
/// `ConnectionException` flavours, §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// A setup error: disconnect the host (event `AgentDisconnected`) and fail the connect.
    Disconnect,
    /// Stop the agent: shut it down (event `ShutdownRequested`), e.g. a version change.
    Shutdown,
}

/// A listener refused a host's connect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connect refused ({refusal:?}): {reason}")]
pub struct ConnectError {
    /// What to do with the host.
    pub refusal: Refusal,
    /// Why.
    pub reason: String,
}

impl ConnectError {
    /// A setup error: the host is disconnected.
    pub fn disconnect(reason: impl Into<String>) -> Self {
        Self {
            refusal: Refusal::Disconnect,
            reason: reason.into(),
        }
    }

    /// The agent must shut down.
    pub fn shutdown(reason: impl Into<String>) -> Self {
        Self {
            refusal: Refusal::Shutdown,
            reason: reason.into(),
        }
    }
}

/// The connect dispatch stopped at a refusal (or at a listener that failed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host {host}: listener {listener} refused the connect: {error}")]
pub struct ConnectRefused {
    /// The host.
    pub host: HostId,
    /// The listener that refused.
    pub listener: ListenerId,
    /// Its refusal. A listener that panicked or overran its budget counts as a `Disconnect` refusal.
    pub error: ConnectError,
}
