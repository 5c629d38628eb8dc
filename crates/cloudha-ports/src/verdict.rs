//! What investigators find (host and VM verdicts), the `Investigator` port and the
//! `HostCommander` port their probes go through.

use std::time::Duration;

use cloudha_protocol::{Answer, Command, HostId, Status, VmId};

use crate::error::CommandError;
use crate::host::HostRecord;

/// A host verdict. "Don't know" is `None` where a verdict is optional; it never becomes Down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostVerdict {
    /// The host is up.
    Up,
    /// The host is proven down (its VMs may restart elsewhere).
    Down,
    /// The host is alive but its agent is not.
    Disconnected,
    /// The host needs attention.
    Alert,
}

impl HostVerdict {
    /// The matching status.
    pub const fn status(self) -> Status {
        match self {
            Self::Up => Status::Up,
            Self::Down => Status::Down,
            Self::Disconnected => Status::Disconnected,
            Self::Alert => Status::Alert,
        }
    }
}

/// What an investigator found about a host: the verdict and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finding {
    /// The verdict.
    pub verdict: HostVerdict,
    /// The evidence, in words (who answered what).
    pub evidence: String,
    /// No answer of the host itself can change the verdict (its power is confirmed off, or it
    /// answered Up itself): the manager need not wait for its own probes of the host.
    pub settled: bool,
}

impl Finding {
    /// A finding that the host's own probes could still overturn.
    pub fn new(verdict: HostVerdict, evidence: impl Into<String>) -> Self {
        Self {
            verdict,
            evidence: evidence.into(),
            settled: false,
        }
    }

    /// A finding no answer of the host itself can change.
    pub fn settled(verdict: HostVerdict, evidence: impl Into<String>) -> Self {
        Self {
            settled: true,
            ..Self::new(verdict, evidence)
        }
    }
}

/// A VM verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmVerdict {
    /// The VM runs.
    Alive,
    /// The VM does not run.
    Dead,
    /// Cannot tell (CloudStack's `UnknownVM`): the next investigator is asked.
    Unknown,
}

/// Sends a command to a host and waits (bounded) for its answer.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait HostCommander: Send + Sync {
    /// Sends `command` to `host`, waiting at most `wait`.
    ///
    /// # Errors
    /// [`CommandError`]: no attache (at once), timeout, disconnect.
    async fn send(
        &self,
        host: HostId,
        command: Command,
        wait: Duration,
    ) -> Result<Answer, CommandError>;
}

/// One link of the investigation chain (CloudStack's `Investigator`).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait Investigator: Send + Sync {
    /// The name used in `ha.investigators.order` and in reasons.
    fn name(&self) -> &'static str;

    /// What it found about the host, or `None` for "don't know" (the next one is asked).
    async fn host_status(&self, host: &HostRecord) -> Option<Finding>;

    /// Whether `vm` still runs on `host`.
    async fn vm_alive(&self, vm: VmId, host: &HostRecord) -> VmVerdict;
}
