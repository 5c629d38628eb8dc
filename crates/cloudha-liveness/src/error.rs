//! Errors of the manager.

use cloudha_ports::StoreError;
use cloudha_protocol::{HostId, TransitionError};

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

/// A manager operation that failed.
#[derive(Debug, thiserror::Error)]
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
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The component was stopped: it does not start again (make a new one).
    #[error("stopped: a stopped component does not start again")]
    Stopped,
}
