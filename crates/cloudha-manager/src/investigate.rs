//! Host and VM investigation: the `Investigator` port, the `HostCommander` port probes go
//! through, and the investigators of spec §6.1 / §6.2.
//!
//! Every probe is a command sent to some host through [`HostCommander`] with a bounded wait
//! (CheckOnHost 20 s, PingTest and CheckVirtualMachine 20 s), so a simulator or a real cloud
//! answers them alike; a host with no attache fails at once.

use std::sync::Arc;
use std::time::Duration;

use cloudha_protocol::{
    Answer, CheckOnHostAnswer, CheckOnHostCommand, CheckVirtualMachineCommand, Command, HostId,
    HostType, HypervisorType, PingTestCommand, Status, VmId, VmPowerState,
};

use crate::error::CommandError;
use crate::host::{HostRecord, HostStore};

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

    /// The host's state, or `None` for "don't know".
    async fn host_status(&self, host: &HostRecord) -> Option<HostVerdict>;

    /// Whether `vm` still runs on `host`.
    async fn vm_alive(&self, vm: VmId, host: &HostRecord) -> VmVerdict;
}

/// Wait of a probe command.
pub const PROBE_WAIT: Duration = Duration::from_secs(20);

/// Combines neighbour answers about a host's heartbeat: `m` = `ha.investigators.agreement`.
/// With `m == 1` the first definite answer wins (CloudStack). Otherwise "alive" needs `m`
/// agreeing answers, and "dead" needs `m` agreeing answers and no "alive" at all: one neighbour
/// that still sees the heartbeat forbids Down.
fn consensus(answers: &[bool], m: usize) -> Option<bool> {
    if m <= 1 {
        return answers.first().copied();
    }
    let alive = answers.iter().filter(|a| **a).count();
    let dead = answers.len() - alive;
    if alive >= m {
        Some(true)
    } else if dead >= m && alive == 0 {
        Some(false)
    } else {
        None
    }
}

async fn check_on_host(commander: &dyn HostCommander, via: HostId, target: HostId) -> Option<bool> {
    match commander
        .send(
            via,
            Command::CheckOnHost(CheckOnHostCommand { target }),
            PROBE_WAIT,
        )
        .await
    {
        Ok(Answer::CheckOnHost(CheckOnHostAnswer {
            success: true,
            alive,
            ..
        })) => Some(alive),
        _ => None,
    }
}

/// Asks the Up neighbours (same cluster, `kind`-like hypervisor) about `host`'s heartbeat, until
/// `m` answers agree (or the first definite one when `m == 1`).
async fn ask_neighbours(
    commander: &dyn HostCommander,
    store: &dyn HostStore,
    host: &HostRecord,
    same_kind: fn(HypervisorType) -> bool,
    m: usize,
) -> Option<bool> {
    let cluster = host.cluster?;
    let mut answers = Vec::new();
    for n in store.in_cluster(cluster) {
        if n.id == host.id || n.status != Some(Status::Up) || !same_kind(n.hypervisor) {
            continue;
        }
        if let Some(alive) = check_on_host(commander, n.id, host.id).await {
            answers.push(alive);
            if let Some(v) = consensus(&answers, m)
                && (m <= 1 || v)
            {
                return Some(v);
            }
        }
    }
    consensus(&answers, m)
}

/// CloudStack's `CheckOnAgentInvestigator` ("Simple"): no host verdict; the VM's power state from
/// its own host (`CheckVirtualMachine`).
pub struct SimpleInvestigator {
    commander: Arc<dyn HostCommander>,
}

impl SimpleInvestigator {
    /// Probes through `commander`.
    pub fn new(commander: Arc<dyn HostCommander>) -> Self {
        Self { commander }
    }
}

#[async_trait::async_trait]
impl Investigator for SimpleInvestigator {
    fn name(&self) -> &'static str {
        "SimpleInvestigator"
    }

    async fn host_status(&self, _host: &HostRecord) -> Option<HostVerdict> {
        None
    }

    async fn vm_alive(&self, vm: VmId, host: &HostRecord) -> VmVerdict {
        match self
            .commander
            .send(
                host.id,
                Command::CheckVirtualMachine(CheckVirtualMachineCommand { vm }),
                PROBE_WAIT,
            )
            .await
        {
            Ok(Answer::CheckVirtualMachine(a)) if a.success => match a.power {
                VmPowerState::PowerOn => VmVerdict::Alive,
                VmPowerState::PowerOff => VmVerdict::Dead,
                _ => VmVerdict::Unknown,
            },
            _ => VmVerdict::Unknown,
        }
    }
}

/// The Up neighbours of a host, asked about its heartbeat through the commander.
struct Neighbours {
    commander: Arc<dyn HostCommander>,
    store: Arc<dyn HostStore>,
    agreement: usize,
}

impl Neighbours {
    async fn heartbeat(
        &self,
        host: &HostRecord,
        same_kind: fn(HypervisorType) -> bool,
    ) -> Option<bool> {
        ask_neighbours(
            &*self.commander,
            &*self.store,
            host,
            same_kind,
            self.agreement,
        )
        .await
    }
}

/// The KVM rule of §6.2: the host's own heartbeat check, then its Up KVM neighbours'.
/// Neighbour sees it alive and the host itself gave no proof ⇒ Disconnected; neighbour sees it
/// dead ⇒ Down; nobody can tell ⇒ don't know.
pub struct KvmInvestigator {
    neighbours: Neighbours,
}

impl KvmInvestigator {
    /// Probes through `commander`, neighbours from `store`; `agreement` = `ha.investigators.agreement`.
    pub fn new(
        commander: Arc<dyn HostCommander>,
        store: Arc<dyn HostStore>,
        agreement: usize,
    ) -> Self {
        Self {
            neighbours: Neighbours {
                commander,
                store,
                agreement,
            },
        }
    }
}

#[async_trait::async_trait]
impl Investigator for KvmInvestigator {
    fn name(&self) -> &'static str {
        "KVMInvestigator"
    }

    async fn host_status(&self, host: &HostRecord) -> Option<HostVerdict> {
        if !host.hypervisor.is_kvm_like() {
            return None;
        }
        // The host itself: its heartbeat alive ⇒ Up at once. Otherwise its own word proves
        // nothing (it may not answer at all): the neighbours decide.
        if check_on_host(&*self.neighbours.commander, host.id, host.id).await == Some(true) {
            return Some(HostVerdict::Up);
        }
        match self
            .neighbours
            .heartbeat(host, HypervisorType::is_kvm_like)
            .await
        {
            Some(true) => Some(HostVerdict::Disconnected),
            Some(false) => Some(HostVerdict::Down),
            // No neighbour could tell: don't know (newer CloudStack), never Down.
            None => None,
        }
    }

    async fn vm_alive(&self, _vm: VmId, host: &HostRecord) -> VmVerdict {
        if !host.hypervisor.is_kvm_like() {
            return VmVerdict::Unknown;
        }
        match self.neighbours.store.status(host.id) {
            Some(Status::Up) => VmVerdict::Alive,
            _ => VmVerdict::Unknown,
        }
    }
}

/// The XenServer check of §6.1: other Xen hosts of the cluster check the host; dead ⇒ Down,
/// alive ⇒ don't know.
pub struct XenServerInvestigator {
    neighbours: Neighbours,
}

impl XenServerInvestigator {
    /// Probes through `commander`, neighbours from `store`.
    pub fn new(
        commander: Arc<dyn HostCommander>,
        store: Arc<dyn HostStore>,
        agreement: usize,
    ) -> Self {
        Self {
            neighbours: Neighbours {
                commander,
                store,
                agreement,
            },
        }
    }
}

fn is_xen(h: HypervisorType) -> bool {
    h == HypervisorType::XenServer
}

#[async_trait::async_trait]
impl Investigator for XenServerInvestigator {
    fn name(&self) -> &'static str {
        "XenServerInvestigator"
    }

    async fn host_status(&self, host: &HostRecord) -> Option<HostVerdict> {
        if !is_xen(host.hypervisor) {
            return None;
        }
        match self.neighbours.heartbeat(host, is_xen).await {
            Some(false) => Some(HostVerdict::Down),
            _ => None,
        }
    }

    async fn vm_alive(&self, _vm: VmId, host: &HostRecord) -> VmVerdict {
        match (
            is_xen(host.hypervisor),
            self.neighbours.store.status(host.id),
        ) {
            (true, Some(Status::Up)) => VmVerdict::Alive,
            _ => VmVerdict::Unknown,
        }
    }
}

/// The "Ping" investigator of §6.1: other Up routing hosts of the pod ping the host. Reachable
/// ⇒ Disconnected (host alive, agent dead), never Down; nobody reaches it ⇒ don't know.
pub struct PingInvestigator {
    commander: Arc<dyn HostCommander>,
    store: Arc<dyn HostStore>,
}

impl PingInvestigator {
    /// Probes through `commander`, pod members from `store`.
    pub fn new(commander: Arc<dyn HostCommander>, store: Arc<dyn HostStore>) -> Self {
        Self { commander, store }
    }
}

#[async_trait::async_trait]
impl Investigator for PingInvestigator {
    fn name(&self) -> &'static str {
        "PingInvestigator"
    }

    async fn host_status(&self, host: &HostRecord) -> Option<HostVerdict> {
        let pod = host.pod?;
        for n in self.store.in_pod(pod) {
            if n.id == host.id || n.status != Some(Status::Up) || n.host_type != HostType::Routing {
                continue;
            }
            let probe = Command::PingTest(PingTestCommand { target: host.id });
            if let Ok(a) = self.commander.send(n.id, probe, PROBE_WAIT).await
                && a.success()
            {
                return Some(HostVerdict::Disconnected);
            }
        }
        None
    }

    async fn vm_alive(&self, _vm: VmId, _host: &HostRecord) -> VmVerdict {
        VmVerdict::Unknown
    }
}

/// Builds the chain named by `order` (names from [`crate::config::INVESTIGATORS`]).
pub fn chain(
    order: &[String],
    commander: &Arc<dyn HostCommander>,
    store: &Arc<dyn HostStore>,
    agreement: u32,
) -> Vec<Arc<dyn Investigator>> {
    let m = agreement as usize;
    order
        .iter()
        .filter_map(|name| -> Option<Arc<dyn Investigator>> {
            Some(match name.as_str() {
                "SimpleInvestigator" => Arc::new(SimpleInvestigator::new(Arc::clone(commander))),
                "XenServerInvestigator" => Arc::new(XenServerInvestigator::new(
                    Arc::clone(commander),
                    Arc::clone(store),
                    m,
                )),
                "KVMInvestigator" => Arc::new(KvmInvestigator::new(
                    Arc::clone(commander),
                    Arc::clone(store),
                    m,
                )),
                "PingInvestigator" => Arc::new(PingInvestigator::new(
                    Arc::clone(commander),
                    Arc::clone(store),
                )),
                _ => return None,
            })
        })
        .collect()
}

/// Runs the chain: the first investigator with a host verdict wins; returns it with its name.
pub async fn investigate_host(
    chain: &[Arc<dyn Investigator>],
    host: &HostRecord,
) -> Option<(HostVerdict, &'static str)> {
    for inv in chain {
        if let Some(v) = inv.host_status(host).await {
            return Some((v, inv.name()));
        }
    }
    None
}

/// Runs the chain for a VM: the first definite answer wins; all unknown ⇒ `Unknown`.
pub async fn investigate_vm(
    chain: &[Arc<dyn Investigator>],
    vm: VmId,
    host: &HostRecord,
) -> (VmVerdict, Option<&'static str>) {
    for inv in chain {
        match inv.vm_alive(vm, host).await {
            VmVerdict::Unknown => {}
            v => return (v, Some(inv.name())),
        }
    }
    (VmVerdict::Unknown, None)
}

#[cfg(test)]
mod tests {
    use super::consensus;

    #[test]
    fn consensus_rules() {
        for (answers, m, want) in [
            (&[][..], 1, None),
            (&[true][..], 1, Some(true)),
            (&[false, true][..], 1, Some(false)),
            (&[false][..], 2, None),
            (&[false, false][..], 2, Some(false)),
            (&[false, true, false][..], 2, None),
            (&[true, true][..], 2, Some(true)),
            (&[true, false, true][..], 2, Some(true)),
        ] {
            assert_eq!(consensus(answers, m), want, "{answers:?} m={m}");
        }
    }
}
