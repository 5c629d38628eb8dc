//! Errors of the ports.

use cloudha_protocol::{HostId, Status, WorkId};

use crate::work::OwnerId;

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
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
    /// No such work item.
    #[error("work item {0} is not known")]
    UnknownWork(WorkId),
    /// A work-item write refused: the writer no longer holds the claim, or the item changed
    /// since the writer read it (compare-and-set on owner and version). The writer must drop
    /// its copy: another owner may be acting on the item.
    #[error(
        "work item {work}: write by {writer:?} at version {version} refused (held by {holder:?} at version {current})"
    )]
    Stale {
        /// The item.
        work: WorkId,
        /// Who tried to write.
        writer: OwnerId,
        /// The version the writer read.
        version: u64,
        /// Who holds the claim now.
        holder: Option<OwnerId>,
        /// The version now.
        current: u64,
    },
    /// The backend failed (connection lost, I/O, timeout, ...): the operation may be retried.
    #[error("store backend: {what}")]
    Backend {
        /// What was being done.
        what: String,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// A backend failure while doing `what`.
    pub fn backend(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Backend {
            what: what.into(),
            source: Box::new(source),
        }
    }
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
