//! What a death proof says: why a VM's old copy cannot run any more, as plain data. HA starts a
//! VM elsewhere only with a proof (spec README principle 1), and records it on the work item, in
//! its history and in reports: the record is what this module holds.

use std::time::Duration;

use crate::time::Timestamp;
use cloudha_protocol::HostId;

/// What kind of proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProofKind {
    /// The host's BMC powered it off (or reported it already off), read back Off.
    PowerFenced,
    /// A XenServer pool member saw the host's pool heartbeat stale past its self-reboot window,
    /// and the pool reset the VMs' power state.
    PoolFenced,
    /// A neighbour saw the host's storage heartbeat stale past its self-fence deadline, and the
    /// host fences itself independently of its agent.
    SelfFenced,
    /// An investigator found the VM not running (its own host says so).
    DeadVerdict,
    /// The VM's own Up host reported it off (the second trigger).
    VmReportedOff,
    /// An operator declared the host dead.
    OperatorWord,
}

impl ProofKind {
    /// The snake_case name used in reports.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PowerFenced => "power_fenced",
            Self::PoolFenced => "pool_fenced",
            Self::SelfFenced => "self_fenced",
            Self::DeadVerdict => "dead_verdict",
            Self::VmReportedOff => "vm_reported_off",
            Self::OperatorWord => "operator_word",
        }
    }

    /// The kind named by [`ProofKind::as_str`] (what a durable store reads back).
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::PowerFenced,
            Self::PoolFenced,
            Self::SelfFenced,
            Self::DeadVerdict,
            Self::VmReportedOff,
            Self::OperatorWord,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for ProofKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The timings a self-fence proof relied on: what the heartbeat reader saw, and the deadline
/// by which the host must have fenced itself under the manager's assumed timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SelfFenceTimings {
    /// Age of the host's newest heartbeat when it was read.
    pub heartbeat_age: Duration,
    /// The self-fence deadline after the last good write (staleness plus the write-retry or
    /// self-reboot window, from config).
    pub deadline: Duration,
}

/// What a death proof said, as plain data: what HA writes on a work item (its `fence_proof`),
/// its history and its reports, and what a durable [`HaWorkStore`](crate::HaWorkStore) loads back.
///
/// A record starts nothing. The proof that lets HA start a VM elsewhere is `cloudha-ha`'s
/// `DeathProof`, which only the HA manager makes, on the paths that produce proof; nothing
/// turns a record into one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProofRecord {
    /// The kind of proof.
    pub kind: ProofKind,
    /// The host whose copy of the VM is proven dead.
    pub host: Option<HostId>,
    /// The evidence, in words.
    pub evidence: String,
    /// When the proof was recorded on its work item.
    pub at: Timestamp,
    /// The self-fence timings it relied on (self and pool fences).
    pub timings: Option<SelfFenceTimings>,
}

impl SelfFenceTimings {
    /// The heartbeat's age when read, and the deadline it was judged against.
    pub fn new(heartbeat_age: Duration, deadline: Duration) -> Self {
        Self {
            heartbeat_age,
            deadline,
        }
    }
}

impl ProofRecord {
    /// A record (what a durable store loads back; the HA manager makes its own from a proof).
    pub fn new(
        kind: ProofKind,
        host: Option<HostId>,
        evidence: impl Into<String>,
        at: Timestamp,
        timings: Option<SelfFenceTimings>,
    ) -> Self {
        Self {
            kind,
            host,
            evidence: evidence.into(),
            at,
            timings,
        }
    }
}

impl std::fmt::Display for ProofRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.evidence)?;
        if let Some(t) = self.timings {
            write!(
                f,
                " (heartbeat {:?} old, self-fence deadline {:?})",
                t.heartbeat_age, t.deadline
            )?;
        }
        Ok(())
    }
}
