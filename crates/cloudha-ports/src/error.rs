//! Errors of the ports.

use cloudha_protocol::{HostId, Status};

/// A host store operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No such host.
    #[error("host {0} is not known")]
    UnknownHost(HostId),
    /// The record changed since it was read (optimistic update lost).
    #[error(
        "host {host}: status changed concurrently (expected {expected:?} at update {update_count})"
    )]
    Conflict {
        /// The host.
        host: HostId,
        /// The status the writer expected.
        expected: Option<Status>,
        /// The update counter the writer expected.
        update_count: u64,
    },
}

/// A command to a host that got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The host has no attache: failed at once.
    #[error("host {0} has no attache")]
    NoAttache(HostId),
    /// The request failed (timeout, disconnect, ...).
    #[error(transparent)]
    Request(#[from] cloudha_attache::RequestError),
}
