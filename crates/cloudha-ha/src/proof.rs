//! "No start without proof" (spec README principle 1) as a type: the sealed [`DeathProof`] that
//! [`VmOrchestrator::start`](crate::VmOrchestrator::start) requires, the [`FenceEvidence`] a
//! fencer reports instead of a proof, and [`ProveDead`], whether a restart must prove first.

use cloudha_ports::{ProofKind, ProofRecord, SelfFenceTimings, Timestamp, VmRecord, WorkItem};
use cloudha_protocol::{HostId, VmState};

/// How a fencer fenced a host, in its own words: evidence, not yet a proof.
///
/// [`Fencer`](crate::Fencer) is a port that embedders implement, so it cannot be given the power
/// to make a [`DeathProof`] (anything that can make one can start a VM). A fencer reports how it
/// fenced and what it saw; the HA manager makes the proof itself, only for a fencer of its own
/// chain and only for the host it asked that fencer to fence (the evidence names no host, so a
/// fencer cannot vouch for another one). One variant per kind of fence: a fencer can claim
/// neither a proof that is not a fence (a dead verdict, the operator's word) nor a heartbeat
/// fence without the timings it relied on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceEvidence {
    /// The host's BMC powered it off (or reported it already off), read back Off.
    Power {
        /// What was done and read.
        evidence: String,
    },
    /// A XenServer pool member saw the host's pool heartbeat stale past its self-reboot window,
    /// and the pool reset the VM's power state.
    Pool {
        /// Who saw what.
        evidence: String,
        /// The heartbeat's age and the deadline it was judged against.
        timings: SelfFenceTimings,
    },
    /// A neighbour saw the host's storage heartbeat stale past its self-fence deadline, and the
    /// host fences itself independently of its agent.
    SelfFence {
        /// Who saw what.
        evidence: String,
        /// The heartbeat's age and the deadline it was judged against.
        timings: SelfFenceTimings,
    },
}

impl FenceEvidence {
    /// The kind of proof it makes.
    pub fn kind(&self) -> ProofKind {
        match self {
            Self::Power { .. } => ProofKind::PowerFenced,
            Self::Pool { .. } => ProofKind::PoolFenced,
            Self::SelfFence { .. } => ProofKind::SelfFenced,
        }
    }

    /// The evidence, in words.
    pub fn evidence(&self) -> &str {
        match self {
            Self::Power { evidence }
            | Self::Pool { evidence, .. }
            | Self::SelfFence { evidence, .. } => evidence,
        }
    }

    /// The self-fence timings it relied on (self and pool fences).
    pub fn timings(&self) -> Option<SelfFenceTimings> {
        match self {
            Self::Power { .. } => None,
            Self::Pool { timings, .. } | Self::SelfFence { timings, .. } => Some(*timings),
        }
    }
}

/// As a proof shows it: `kind: evidence`, with the timings of a heartbeat fence.
impl std::fmt::Display for FenceEvidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind(), self.evidence())?;
        if let Some(t) = self.timings() {
            write!(
                f,
                " (heartbeat {:?} old, self-fence deadline {:?})",
                t.heartbeat_age, t.deadline
            )?;
        }
        Ok(())
    }
}

/// Why a VM's old copy cannot run any more: what [`VmOrchestrator::start`] requires.
///
/// Sealed. Only the HA manager makes one, on the paths that produce proof: a fencer of its
/// chain fenced the host ([`FenceEvidence`]), an investigator found the VM not running (a dead
/// verdict), the VM's own Up host reported it off, an operator declared its host dead. The one
/// other path is a restart resumed from the store: the proof recorded on the work item stands
/// again only if HA itself stopped the VM on it and the VM has not changed since. What a store
/// loads back is a [`ProofRecord`]: plain data, which starts nothing. A proof is not `Clone`
/// either: an orchestrator is lent one for the length of a start.
///
/// Outside code reads a proof it is lent:
///
/// ```
/// use cloudha_ha::DeathProof;
///
/// fn describe(proof: &DeathProof) -> String {
///     let record = proof.record();
///     assert_eq!((record.kind, record.host), (proof.kind(), proof.host()));
///     format!("{} at {}: {}", proof.kind(), proof.at(), proof.evidence())
/// }
/// ```
///
/// but cannot make one: not as a struct literal,
///
/// ```compile_fail,E0451
/// use cloudha_ha::DeathProof;
/// use cloudha_ports::{ProofKind, ProofRecord, Timestamp};
///
/// let record = ProofRecord {
///     kind: ProofKind::OperatorWord,
///     host: None,
///     evidence: "trust me".into(),
///     at: Timestamp::UNIX_EPOCH,
///     timings: None,
/// };
/// let proof = DeathProof { record };
/// ```
///
/// not through a constructor,
///
/// ```compile_fail,E0624
/// use cloudha_ha::DeathProof;
/// use cloudha_protocol::HostId;
///
/// let proof = DeathProof::operator_word(HostId(1));
/// ```
///
/// and not from a record loaded back from a store:
///
/// ```compile_fail,E0277
/// use cloudha_ha::DeathProof;
/// use cloudha_ports::{ProofKind, ProofRecord, Timestamp};
///
/// let record = ProofRecord {
///     kind: ProofKind::PowerFenced,
///     host: None,
///     evidence: "loaded back".into(),
///     at: Timestamp::UNIX_EPOCH,
///     timings: None,
/// };
/// let proof: DeathProof = record.into();
/// ```
///
/// [`VmOrchestrator::start`]: crate::VmOrchestrator::start
#[derive(Debug, PartialEq, Eq)]
pub struct DeathProof {
    record: ProofRecord,
}

impl DeathProof {
    fn new(
        kind: ProofKind,
        host: Option<HostId>,
        evidence: String,
        timings: Option<SelfFenceTimings>,
    ) -> Self {
        Self {
            record: ProofRecord::new(kind, host, evidence, Timestamp::UNIX_EPOCH, timings),
        }
    }

    /// A fencer of the HA manager's chain fenced `host`.
    pub(crate) fn fenced(host: HostId, fence: FenceEvidence) -> Self {
        let (kind, timings) = (fence.kind(), fence.timings());
        let evidence = match fence {
            FenceEvidence::Power { evidence }
            | FenceEvidence::Pool { evidence, .. }
            | FenceEvidence::SelfFence { evidence, .. } => evidence,
        };
        Self::new(kind, Some(host), evidence, timings)
    }

    /// An investigator found the VM not running on `host`.
    pub(crate) fn dead_verdict(host: HostId, evidence: impl Into<String>) -> Self {
        Self::new(ProofKind::DeadVerdict, Some(host), evidence.into(), None)
    }

    /// The VM's own Up host reported it off.
    pub(crate) fn vm_reported_off(host: Option<HostId>) -> Self {
        Self::new(
            ProofKind::VmReportedOff,
            host,
            "the VM was reported off by its own Up host".into(),
            None,
        )
    }

    /// An operator declared `host` dead.
    pub(crate) fn operator_word(host: HostId) -> Self {
        Self::new(
            ProofKind::OperatorWord,
            Some(host),
            format!("an operator declared host {host} dead"),
            None,
        )
    }

    /// The proof recorded on `item`, standing again for a restart resumed from the store: only
    /// if HA itself stopped the VM on it and the VM has not changed since. Either the item wrote
    /// the VM as HA stopped it (Stopped, on no host: the state and update counter the item last
    /// wrote), or the item recorded the proof and was about to force-stop the VM, which is now
    /// Stopped on no host, last on the host the proof is about, and not started since (no start
    /// key newer than the item's): the force-stop landed and the item's save after it did not
    /// (a crash in between). Anything else that touched the VM since (a host reporting it, a
    /// start) moved it on, and the record proves nothing any more.
    pub(crate) fn standing(item: &WorkItem, vm: &VmRecord) -> Option<Self> {
        let record = item.fence_proof.as_ref()?;
        let stopped = vm.id == item.vm && vm.state == VmState::Stopped && vm.host.is_none();
        let as_written = vm.state == item.previous_state && vm.update_count == item.update_count;
        let stop_unsaved = item.step == cloudha_protocol::WorkStep::Investigating
            && item.previous_state != VmState::Stopped
            && vm.update_count > item.update_count
            && item.host.is_some()
            && vm.last_host == item.host
            && record.host == item.host
            && item.start_attempts == 0
            && vm.start_key.is_none_or(|k| k.work < item.id);
        (stopped && (as_written || stop_unsaved)).then(|| Self {
            record: record.clone(),
        })
    }

    /// The same proof, for the next VM of its host (one fence proves every VM of the host dead).
    pub(crate) fn duplicate(&self) -> Self {
        Self {
            record: self.record.clone(),
        }
    }

    /// The proof as recorded at `at` (the HA manager stamps a proof when it records it).
    #[must_use]
    pub(crate) fn recorded_at(mut self, at: Timestamp) -> Self {
        self.record.at = at;
        self
    }

    /// The kind of proof.
    pub fn kind(&self) -> ProofKind {
        self.record.kind
    }

    /// The host whose copy of the VM is proven dead.
    pub fn host(&self) -> Option<HostId> {
        self.record.host
    }

    /// The evidence, in words.
    pub fn evidence(&self) -> &str {
        &self.record.evidence
    }

    /// When the proof was recorded on its work item (the epoch until then).
    pub fn at(&self) -> Timestamp {
        self.record.at
    }

    /// The self-fence timings it relied on (self and pool fences).
    pub fn timings(&self) -> Option<SelfFenceTimings> {
        self.record.timings
    }

    /// What it says, as plain data (what the work item, its history and reports keep).
    pub fn record(&self) -> ProofRecord {
        self.record.clone()
    }
}

impl std::fmt::Display for DeathProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.record.fmt(f)
    }
}

/// Whether a VM must be proven dead before HA restarts it (CloudStack's `investigate` flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProveDead {
    /// Prove it first: investigate the VM, and fence its host when no investigator knows (the
    /// usual case: its host went Down).
    First,
    /// Its death is already known, on the caller's word: its own Up host reported it off or,
    /// for [`WorkReason::HostDegraded`](cloudha_protocol::WorkReason::HostDegraded), an operator
    /// declared its host dead. The VM is force-stopped at once, and that word is recorded as
    /// the proof ([`ProofKind::VmReportedOff`], [`ProofKind::OperatorWord`]).
    AlreadyKnown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudha_protocol::{HypervisorType, VmId, WorkReason, WorkStep, WorkType};
    use std::time::Duration;

    fn stopped_vm(update_count: u64) -> VmRecord {
        {
            let mut r = VmRecord::new(VmId(7), "vm7", HypervisorType::Kvm);
            r.last_host = Some(HostId(1));
            r.update_count = update_count;
            r.ha_enabled = true;
            r
        }
    }

    #[test]
    fn fence_evidence_makes_a_proof_for_the_host_the_manager_named() {
        let timings = SelfFenceTimings::new(Duration::from_secs(120), Duration::from_secs(110));
        let cases = [
            (
                FenceEvidence::Power {
                    evidence: "read back off".into(),
                },
                ProofKind::PowerFenced,
                None,
            ),
            (
                FenceEvidence::Pool {
                    evidence: "pool heartbeat stale".into(),
                    timings,
                },
                ProofKind::PoolFenced,
                Some(timings),
            ),
            (
                FenceEvidence::SelfFence {
                    evidence: "storage heartbeat stale".into(),
                    timings,
                },
                ProofKind::SelfFenced,
                Some(timings),
            ),
        ];
        for (fence, kind, want_timings) in cases {
            let words = fence.evidence().to_owned();
            assert_eq!(fence.kind(), kind);
            let shown = fence.to_string();
            let proof = DeathProof::fenced(HostId(3), fence);
            assert_eq!(
                (
                    proof.kind(),
                    proof.host(),
                    proof.evidence(),
                    proof.timings()
                ),
                (kind, Some(HostId(3)), words.as_str(), want_timings)
            );
            assert_eq!(proof.to_string(), shown);
        }
    }

    #[test]
    fn the_record_says_what_the_proof_says() {
        let at = Timestamp::from_micros(1_000_000);
        let proof = DeathProof::operator_word(HostId(2)).recorded_at(at);
        let record = proof.record();
        assert_eq!(
            record,
            ProofRecord::new(
                ProofKind::OperatorWord,
                Some(HostId(2)),
                "an operator declared host 2 dead",
                at,
                None
            )
        );
        assert_eq!(proof.to_string(), record.to_string());
        assert_eq!(proof.duplicate(), proof);
    }

    /// A recorded proof stands again only for a VM HA stopped on it and nobody touched since.
    #[test]
    fn a_recorded_proof_stands_only_while_the_vm_is_as_ha_stopped_it() {
        let vm = stopped_vm(5);
        let mut item = WorkItem::new(
            WorkType::Ha,
            WorkStep::Scheduled,
            WorkReason::VmStoppedOnUpHost,
            &vm,
            Some(HostId(1)),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(DeathProof::standing(&item, &vm), None, "no proof recorded");
        let proof = DeathProof::vm_reported_off(Some(HostId(1)));
        item.fence_proof = Some(proof.record());
        assert_eq!(DeathProof::standing(&item, &vm), Some(proof));

        // The force-stop failed: the item wrote the VM as it was, Running on its host.
        let mut running = stopped_vm(5);
        running.state = VmState::Running;
        running.host = Some(HostId(1));
        let mut other = stopped_vm(5);
        other.id = VmId(8);
        for (vm, written, why) in [
            (stopped_vm(6), VmState::Stopped, "touched since"),
            (running, VmState::Running, "not stopped by HA"),
            (other, VmState::Stopped, "another VM"),
        ] {
            item.previous_state = written;
            assert_eq!(DeathProof::standing(&item, &vm), None, "{why}");
        }
    }
}
