//! Errors of the manager.

use cloudha_protocol::{HostId, Status, TransitionError};

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text is not valid TOML for the config (unknown key, wrong type, ...).
    #[error("{origin}: {message}")]
    Parse {
        /// Where the text came from.
        origin: String,
        /// The parser's message, with line and key.
        message: String,
    },
    /// A value breaks a rule.
    #[error("invalid `{key}`: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

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

/// A manager operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// §4.2 has no transition for the host's status and the event.
    #[error("host {host}: {source}")]
    Transition {
        /// The host.
        host: HostId,
        /// The refused transition.
        #[source]
        source: TransitionError,
    },
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
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
