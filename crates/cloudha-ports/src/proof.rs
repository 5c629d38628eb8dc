//! The death proof: why a VM's old copy cannot run any more. HA starts a VM elsewhere only with
//! one (spec README principle 1), records it on the work item, in its history and in reports.

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
}

impl std::fmt::Display for ProofKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The timings a self-fence proof relied on: what the heartbeat reader saw, and the deadline
/// by which the host must have fenced itself under the manager's assumed timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelfFenceTimings {
    /// Age of the host's newest heartbeat when it was read.
    pub heartbeat_age: Duration,
    /// The self-fence deadline after the last good write (staleness plus the write-retry or
    /// self-reboot window, from config).
    pub deadline: Duration,
}

/// Why a VM's old copy cannot run any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeathProof {
    kind: ProofKind,
    host: Option<HostId>,
    evidence: String,
    at: Timestamp,
    timings: Option<SelfFenceTimings>,
}

impl DeathProof {
    fn new(kind: ProofKind, host: Option<HostId>, evidence: String) -> Self {
        Self {
            kind,
            host,
            evidence,
            at: Timestamp::UNIX_EPOCH,
            timings: None,
        }
    }

    /// `host` was powered off through its BMC (or reported already off), confirmed off.
    pub fn power_fenced(host: HostId, evidence: impl Into<String>) -> Self {
        Self::new(ProofKind::PowerFenced, Some(host), evidence.into())
    }

    /// `host`'s pool heartbeat is stale past its self-reboot window; the pool reset the VM.
    pub fn pool_fenced(
        host: HostId,
        evidence: impl Into<String>,
        timings: SelfFenceTimings,
    ) -> Self {
        Self {
            timings: Some(timings),
            ..Self::new(ProofKind::PoolFenced, Some(host), evidence.into())
        }
    }

    /// `host`'s storage heartbeat is stale past its self-fence deadline (independent self-fence).
    pub fn self_fenced(
        host: HostId,
        evidence: impl Into<String>,
        timings: SelfFenceTimings,
    ) -> Self {
        Self {
            timings: Some(timings),
            ..Self::new(ProofKind::SelfFenced, Some(host), evidence.into())
        }
    }

    /// An investigator found the VM not running on `host`.
    pub fn dead_verdict(host: HostId, evidence: impl Into<String>) -> Self {
        Self::new(ProofKind::DeadVerdict, Some(host), evidence.into())
    }

    /// The VM's own Up host reported it off.
    pub fn vm_reported_off(host: Option<HostId>) -> Self {
        Self::new(
            ProofKind::VmReportedOff,
            host,
            "the VM was reported off by its own Up host".into(),
        )
    }

    /// An operator declared `host` dead.
    pub fn operator_word(host: HostId) -> Self {
        Self::new(
            ProofKind::OperatorWord,
            Some(host),
            format!("an operator declared host {host} dead"),
        )
    }

    /// The kind of proof.
    pub fn kind(&self) -> ProofKind {
        self.kind
    }

    /// The host whose copy of the VM is proven dead.
    pub fn host(&self) -> Option<HostId> {
        self.host
    }

    /// The evidence, in words.
    pub fn evidence(&self) -> &str {
        &self.evidence
    }

    /// When the proof was recorded on its work item (the epoch until then).
    pub fn at(&self) -> Timestamp {
        self.at
    }

    /// The proof as recorded at `at` (the HA manager stamps a proof when it records it).
    #[must_use]
    pub fn recorded_at(mut self, at: Timestamp) -> Self {
        self.at = at;
        self
    }

    /// The self-fence timings it relied on (self and pool fences).
    pub fn timings(&self) -> Option<SelfFenceTimings> {
        self.timings
    }
}

impl std::fmt::Display for DeathProof {
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
