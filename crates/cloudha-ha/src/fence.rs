//! Fencing (spec §6.3, §7.3, spec README "fencing proof"): the `Fencer` chain; the KVM
//! neighbour fencer and the XenServer pool fencer, which turn a heartbeat stale past the host's
//! self-fence deadline into a proof; and the power fencer over [`Oobm`].

use std::sync::Arc;
use std::time::Duration;

use cloudha_protocol::{Answer, Command, FenceAnswer, FenceCommand, HostId, HypervisorType, VmId};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::config::Config;
use cloudha_liveness::investigate::Neighbours;
use cloudha_liveness::oobm::Oobm;
use cloudha_ports::{
    Clock, HostCommander, HostDirectory, HostRecord, PowerState, SelfFenceTimings, Timestamp,
    VmRecord,
};

use crate::proof::FenceEvidence;

/// What a fencer achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FenceOutcome {
    /// The VM's old copy cannot run any more: how the host was fenced, which the HA manager
    /// turns into the proof (see [`FenceEvidence`] for why a fencer makes no proof itself).
    Fenced(FenceEvidence),
    /// This fencer tried and could not fence.
    Failed {
        /// Why.
        reason: String,
    },
    /// This fencer does not apply here (or has no proof); the chain goes on.
    NotApplicable {
        /// Why.
        reason: String,
    },
    /// The host shows signs of life (a neighbour sees its heartbeat beating): nothing may fence
    /// it now, and the chain stops; the work is retried after a new investigation.
    Alive {
        /// Who saw what.
        reason: String,
    },
}

impl FenceOutcome {
    /// A short name of the outcome for logs and reports: `fenced`, `failed`, `no_proof`,
    /// `alive` (a wrapper that records outcomes needs no match of its own).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Fenced(_) => "fenced",
            Self::Failed { .. } => "failed",
            Self::NotApplicable { .. } => "no_proof",
            Self::Alive { .. } => "alive",
        }
    }
}

/// The evidence of a fence, or the reason there is none.
impl std::fmt::Display for FenceOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fenced(evidence) => evidence.fmt(f),
            Self::Failed { reason } | Self::NotApplicable { reason } | Self::Alive { reason } => {
                f.write_str(reason)
            }
        }
    }
}

/// One link of the fence chain (CloudStack's `FenceBuilder`).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait Fencer: Send + Sync {
    /// The name recorded with the proof.
    fn name(&self) -> &'static str;

    /// Makes sure `vm` no longer runs on `host`.
    async fn fence(&self, vm: &VmRecord, host: &HostRecord) -> FenceOutcome;
}

/// Wait of a FenceCommand to a neighbour.
pub const FENCE_WAIT: Duration = Duration::from_secs(60);

/// What one neighbour said of the target's heartbeat in answer to a FenceCommand.
enum Seen {
    /// Dead, with the age it read (if it gave one).
    Dead(Option<Duration>),
    /// Still beating.
    Alive(String),
    /// The neighbour could not check (no storage, no answer).
    Unknown(String),
}

async fn ask_fence(
    commander: &dyn HostCommander,
    via: HostId,
    target: HostId,
    vm: Option<VmId>,
) -> Seen {
    let cmd = Command::Fence(FenceCommand { target, vm });
    match commander.send(via, cmd, FENCE_WAIT).await {
        Ok(Answer::Fence(FenceAnswer {
            success: true,
            alive: false,
            heartbeat_age_ms,
            ..
        })) => Seen::Dead(heartbeat_age_ms.map(Duration::from_millis)),
        Ok(Answer::Fence(a)) if a.alive => Seen::Alive(format!("host {via}: {}", a.details)),
        Ok(Answer::Fence(a)) => Seen::Unknown(format!("host {via}: {}", a.details)),
        Ok(other) => Seen::Unknown(format!("host {via}: unexpected answer {other:?}")),
        Err(e) => Seen::Unknown(format!("host {via}: {e}")),
    }
}

/// One neighbour's verdict on a self-fence.
enum Stale {
    /// The heartbeat is stale past the deadline (its age then), with the words.
    Proof(Duration, String),
    /// The neighbour sees the heartbeat beating.
    Alive(String),
    /// No proof from this neighbour, and why.
    NoProof(String),
}

/// The target's last connect, and the clock that tells when a heartbeat stamp was written.
#[derive(Clone, Copy)]
struct Connect<'a> {
    since: Option<Timestamp>,
    clock: &'a dyn Clock,
}

/// Asks one neighbour whether the target's heartbeat is dead and, if it is but not yet past
/// `deadline`, waits until it must be and asks again. A proof needs the heartbeat's age, read
/// past the deadline (an age-less "dead" proves no timing: the heartbeat may have come back and
/// died again in between), and a stamp written after the host's last connect (`since`: a stamp
/// from before it came back says nothing of its watchdog now).
async fn stale_past_deadline(
    commander: &dyn HostCommander,
    via: HostId,
    target: HostId,
    vm: Option<VmId>,
    deadline: Duration,
    connect: Connect<'_>,
) -> Stale {
    let Connect { since, clock } = connect;
    let before_connect = |age: Duration| {
        since.is_some_and(|c| {
            let now = clock.now();
            // A stamp older than the clock can tell is older than any connect.
            now.as_micros() < age.as_micros() as u64 || now - age < c
        })
    };
    let first = match ask_fence(commander, via, target, vm).await {
        Seen::Dead(age) => age,
        Seen::Alive(why) => return Stale::Alive(why),
        Seen::Unknown(why) => return Stale::NoProof(why),
    };
    if let Some(age) = first {
        if before_connect(age) {
            return Stale::NoProof(format!(
                "host {via}: the heartbeat ({age:?} old) predates the host's last connect"
            ));
        }
        if age > deadline {
            return Stale::Proof(
                age,
                format!("host {via} sees the heartbeat of host {target} dead"),
            );
        }
    }
    // Dead, but maybe not for long enough: the host may still be retrying its writes. Read it
    // again once the deadline must have passed.
    let wait = first
        .map_or(deadline, |age| deadline.saturating_sub(age))
        .saturating_add(Duration::from_secs(1));
    tokio::time::sleep(wait).await;
    match ask_fence(commander, via, target, vm).await {
        Seen::Dead(Some(age)) if age > deadline && !before_connect(age) => Stale::Proof(
            age,
            format!(
                "host {via} sees the heartbeat of host {target} dead, read again past the deadline"
            ),
        ),
        Seen::Dead(Some(age)) => Stale::NoProof(format!(
            "host {via}: heartbeat {age:?} old at the re-read (deadline {deadline:?})"
        )),
        Seen::Dead(None) => Stale::NoProof(format!(
            "host {via}: no heartbeat age given: the self-fence timing cannot be proven"
        )),
        Seen::Alive(why) => Stale::Alive(why),
        Seen::Unknown(why) => Stale::NoProof(why),
    }
}

/// Asks every neighbour at once and judges as investigation does: any neighbour seeing the
/// heartbeat alive vetoes; a proof needs `agreement` neighbours seeing it stale past the
/// deadline. Returns the youngest age among the proofs (the weakest, so the safest to report).
async fn neighbours_agree(
    commander: &dyn HostCommander,
    neighbours: &[HostId],
    target: HostId,
    vm: Option<VmId>,
    deadline: Duration,
    connect: Connect<'_>,
    agreement: usize,
) -> Result<(Duration, String), FenceOutcome> {
    let mut asks: FuturesUnordered<_> = neighbours
        .iter()
        .map(|n| stale_past_deadline(commander, *n, target, vm, deadline, connect))
        .collect();
    let (mut proofs, mut why) = (Vec::new(), Vec::new());
    while let Some(r) = asks.next().await {
        match r {
            Stale::Proof(age, words) => proofs.push((age, words)),
            Stale::Alive(who) => {
                return Err(FenceOutcome::Alive {
                    reason: format!("{who}: the heartbeat of host {target} beats"),
                });
            }
            Stale::NoProof(e) => why.push(e),
        }
    }
    if proofs.len() >= agreement.max(1) {
        let (age, words) = proofs
            .into_iter()
            .min_by_key(|(age, _)| *age)
            .expect("at least one");
        return Ok((age, words));
    }
    Err(FenceOutcome::Failed {
        reason: format!(
            "unable to fence off host {target} after asking {} hosts ({} proof(s), {} needed): [{}]",
            neighbours.len(),
            proofs.len(),
            agreement.max(1),
            why.join("; ")
        ),
    })
}

/// What the heartbeat fencers share: the hosts to ask, the self-fence deadline they judge
/// against, the agreement they need.
struct HeartbeatFence {
    neighbours: Neighbours,
    deadline: Duration,
    clock: Arc<dyn Clock>,
}

impl HeartbeatFence {
    fn new(
        commander: Arc<dyn HostCommander>,
        hosts: Arc<dyn HostDirectory>,
        clock: Arc<dyn Clock>,
        config: &Config,
        deadline: Duration,
    ) -> Self {
        Self {
            neighbours: Neighbours::new(
                commander,
                hosts,
                None,
                config.liveness.ha_investigators_agreement as usize,
            ),
            deadline,
            clock,
        }
    }

    /// Asks the Up hosts of `host`'s cluster of a kind: the timings the proof relies on and
    /// what was seen, or the outcome when there is no proof.
    async fn ask(
        &self,
        vm: &VmRecord,
        host: &HostRecord,
        same_kind: fn(HypervisorType) -> bool,
    ) -> Result<(SelfFenceTimings, String), FenceOutcome> {
        let asked = self.neighbours.of(host, same_kind);
        let (age, seen) = neighbours_agree(
            self.neighbours.commander(),
            &asked,
            host.id,
            Some(vm.id),
            self.deadline,
            Connect {
                since: host.connected_at,
                clock: &*self.clock,
            },
            self.neighbours.agreement(),
        )
        .await?;
        Ok((SelfFenceTimings::new(age, self.deadline), seen))
    }
}

/// KVM's neighbour fencer (CloudStack's `KVMFencer`, with cloudha's rule): asks the Up KVM
/// neighbours whether the host's heartbeat is dead. That is a proof only where the host fences
/// itself independently of its agent, and only once the heartbeat is stale past the self-fence
/// deadline (`kvm.heartbeat.*`, [`HaConfig::kvm_self_fence_deadline`](crate::HaConfig::kvm_self_fence_deadline)); otherwise the chain
/// goes on (power).
pub struct NeighbourFencer(HeartbeatFence);

impl NeighbourFencer {
    /// Asks neighbours through `commander`; neighbours from `hosts`; heartbeat stamps judged
    /// against host connects by `clock`; timings from `config`.
    pub fn new(
        commander: Arc<dyn HostCommander>,
        hosts: Arc<dyn HostDirectory>,
        clock: Arc<dyn Clock>,
        config: &Config,
    ) -> Self {
        Self(HeartbeatFence::new(
            commander,
            hosts,
            clock,
            config,
            config.ha.kvm_self_fence_deadline(),
        ))
    }
}

#[async_trait::async_trait]
impl Fencer for NeighbourFencer {
    fn name(&self) -> &'static str {
        "NeighbourFencer"
    }

    async fn fence(&self, vm: &VmRecord, host: &HostRecord) -> FenceOutcome {
        if !host.hypervisor.is_kvm_like() {
            return FenceOutcome::NotApplicable {
                reason: "not a KVM host".into(),
            };
        }
        if !host.self_fence_independent {
            return FenceOutcome::NotApplicable {
                reason: "its self-fence depends on its agent: a dead heartbeat proves no fence"
                    .into(),
            };
        }
        match self.0.ask(vm, host, HypervisorType::is_kvm_like).await {
            Ok((timings, seen)) => FenceOutcome::Fenced(FenceEvidence::SelfFence {
                evidence: format!("{seen}; the host fences itself independently of its agent"),
                timings,
            }),
            Err(outcome) => outcome,
        }
    }
}

/// The XenServer pool fencer (CloudStack's `XenServerFencer`): an Up host of the same pool
/// checks the host's pool heartbeat and resets the VM's power state in the pool (the
/// FenceCommand). A proof only once the pool heartbeat is stale past the host's self-reboot
/// window ([`HaConfig::xen_self_fence_deadline`](crate::HaConfig::xen_self_fence_deadline)).
pub struct XenPoolFencer(HeartbeatFence);

impl XenPoolFencer {
    /// Asks pool members through `commander`; members from `hosts`; heartbeat stamps judged
    /// against host connects by `clock`; timings from `config`.
    pub fn new(
        commander: Arc<dyn HostCommander>,
        hosts: Arc<dyn HostDirectory>,
        clock: Arc<dyn Clock>,
        config: &Config,
    ) -> Self {
        Self(HeartbeatFence::new(
            commander,
            hosts,
            clock,
            config,
            config.ha.xen_self_fence_deadline(),
        ))
    }
}

fn is_xen(h: HypervisorType) -> bool {
    h == HypervisorType::XenServer
}

#[async_trait::async_trait]
impl Fencer for XenPoolFencer {
    fn name(&self) -> &'static str {
        "XenPoolFencer"
    }

    async fn fence(&self, vm: &VmRecord, host: &HostRecord) -> FenceOutcome {
        if !is_xen(host.hypervisor) {
            return FenceOutcome::NotApplicable {
                reason: "not a XenServer host".into(),
            };
        }
        match self.0.ask(vm, host, is_xen).await {
            Ok((timings, seen)) => FenceOutcome::Fenced(FenceEvidence::Pool {
                evidence: format!("{seen} (pool heartbeat); the pool reset the VM's power state"),
                timings,
            }),
            Err(outcome) => outcome,
        }
    }
}

/// Fences by power: "already off" counts as fenced, "unknown" does not; an Off (whether it
/// answered, errored or timed out) is confirmed only by reading the power state back. Reuses a
/// fresh reading ([`cloudha_liveness::oobm::POWER_READING_FRESH`]) instead of asking again: at most three
/// BMC calls per host and round, the investigation's reading included.
pub struct PowerFencer {
    oobm: Arc<Oobm>,
}

impl PowerFencer {
    /// Fences through `oobm` (share it with the investigators).
    pub fn new(oobm: Arc<Oobm>) -> Self {
        Self { oobm }
    }
}

#[async_trait::async_trait]
impl Fencer for PowerFencer {
    fn name(&self) -> &'static str {
        "PowerFencer"
    }

    async fn fence(&self, _vm: &VmRecord, host: &HostRecord) -> FenceOutcome {
        let h = host.id;
        if let Some(at) = self.oobm.off_since(h, host.connected_at) {
            return FenceOutcome::Fenced(FenceEvidence::Power {
                evidence: format!(
                    "the BMC read host {h} off {:?} ago, and it has not connected since",
                    self.oobm.clock().now().saturating_duration_since(at)
                ),
            });
        }
        // What we know of its power: a fresh reading; or, when a reading just failed, nothing;
        // or a reading now.
        let reading = match self.oobm.fresh(h, host.connected_at) {
            Some(r) => Ok(r.state),
            None if self.oobm.failed_recently(h, host.connected_at) => Err(None),
            None => self.oobm.power_status(h).await.map_err(Some),
        };
        match reading {
            Ok(PowerState::Off) => {
                return FenceOutcome::Fenced(FenceEvidence::Power {
                    evidence: format!("the BMC reports host {h} already off"),
                });
            }
            Ok(PowerState::Unknown) => {
                return FenceOutcome::Failed {
                    reason: format!("the BMC of host {h} reports power unknown: not fenced"),
                };
            }
            Err(Some(e)) => {
                return FenceOutcome::Failed {
                    reason: e.to_string(),
                };
            }
            // On, or not known because the investigation's reading just failed: power it off
            // (as CloudStack does) rather than spend a call to fail again; the read-back decides.
            Ok(PowerState::On) | Err(None) => {}
        }
        let off = self.oobm.power_off(h).await;
        match (self.oobm.power_status(h).await, off) {
            (Ok(PowerState::Off), Ok(())) => FenceOutcome::Fenced(FenceEvidence::Power {
                evidence: format!("host {h} powered off through its BMC, read back off"),
            }),
            (Ok(PowerState::Off), Err(e)) => FenceOutcome::Fenced(FenceEvidence::Power {
                evidence: format!(
                    "the power-off of host {h} failed ({e}), but the BMC reads it off"
                ),
            }),
            (back, off) => FenceOutcome::Failed {
                reason: format!(
                    "power-off of host {h} not confirmed (off: {}, read back: {})",
                    off.map_or_else(|e| e.to_string(), |()| "sent".into()),
                    back.map_or_else(|e| e.to_string(), |s| format!("{s:?}"))
                ),
            },
        }
    }
}
