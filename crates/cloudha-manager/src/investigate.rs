//! Host and VM investigation: the `Investigator` port, the `HostCommander` port probes go
//! through, and the investigators of spec §6.1 / §6.2.
//!
//! Every probe is a command sent to some host through [`HostCommander`] with a bounded wait
//! (CheckOnHost 20 s, PingTest and CheckVirtualMachine 20 s), so a simulator or a real cloud
//! answers them alike; a host with no attache fails at once.
//!
//! The heartbeat investigators (KVM, XenServer) gather their [`Evidence`] concurrently (the
//! host's own check, every neighbour's heartbeat check and ping test, the BMC's power reading)
//! and judge it with one pure function, [`judge`], as soon as the evidence decides:
//! - the host's own heartbeat check answers alive ⇒ Up;
//! - any neighbour sees the heartbeat alive ⇒ Disconnected (the first alive neighbour vetoes
//!   Down, CloudStack's rule; with `ha.investigators.agreement` = m > 1 likewise);
//! - the BMC reports the host Off ⇒ Down (evidence independent of the agent);
//! - at least m neighbours answered, all "dead" ⇒ Down only if at least one neighbour answered
//!   a ping test to the host and none reached it; otherwise Disconnected. Where the agent
//!   writes the heartbeat, a restarting agent stops the heartbeat of a live host; where the
//!   host's own watchdog (or XenServer's pool) writes it, a dead heartbeat on a reachable host
//!   means its self-fence has not fired yet. Either way the host still runs: never Down.
//! - nobody could vouch either way ⇒ Disconnected (CloudStack), never Down.

use std::sync::Arc;
use std::time::Duration;

use cloudha_protocol::{
    Answer, CheckOnHostAnswer, CheckOnHostCommand, CheckVirtualMachineCommand, Command, HostId,
    HostType, HypervisorType, PingTestCommand, Status, VmId, VmPowerState,
};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::config::Config;
use crate::error::CommandError;
use crate::host::{HostRecord, HostStore};
use crate::oobm::{Oobm, PowerState};

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

/// Wait of a probe command.
pub const PROBE_WAIT: Duration = Duration::from_secs(20);

/// One neighbour's answer about a host's heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// The neighbour.
    pub by: HostId,
    /// It sees the heartbeat alive.
    pub alive: bool,
    /// The heartbeat's age as it read it.
    pub age: Option<Duration>,
}

/// Everything a heartbeat investigation learned about a host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The host's own heartbeat check: `Some(alive)` when it answered.
    pub own: Option<bool>,
    /// The neighbours that answered a heartbeat check.
    pub beats: Vec<Beat>,
    /// The neighbours that answered a ping test to the host: (who, reached it).
    pub pings: Vec<(HostId, bool)>,
    /// Each neighbour's ping test to another neighbour, its control: (who, reached it). A
    /// neighbour that reaches nobody says nothing about the host by not reaching it.
    pub controls: Vec<(HostId, bool)>,
    /// The BMC's reading, when it answered.
    pub power: Option<PowerState>,
}

/// How evidence is judged for one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// `ha.investigators.agreement`: dead answers needed (no alive one allowed).
    pub agreement: usize,
}

/// The verdict the evidence supports (see the module docs), with the evidence in words.
pub fn judge(e: &Evidence, rules: Rules) -> Finding {
    let m = rules.agreement.max(1);
    if e.own == Some(true) {
        return Finding::settled(
            HostVerdict::Up,
            "the host's own heartbeat check answers alive",
        );
    }
    if let Some(b) = e.beats.iter().find(|b| b.alive) {
        return Finding::new(
            HostVerdict::Disconnected,
            format!("host {} sees the heartbeat alive", b.by),
        );
    }
    if e.power == Some(PowerState::Off) {
        return Finding::settled(HostVerdict::Down, "the BMC reports the host off");
    }
    let dead = e.beats.len();
    let reached = e.pings.iter().filter(|(_, r)| *r).count();
    // A "not reached" counts only from a neighbour that reached its control.
    let missed = e
        .pings
        .iter()
        .filter(|(by, r)| !*r && e.controls.contains(&(*by, true)))
        .count();
    if dead >= m {
        let seen = format!("{dead} neighbour(s) see the heartbeat dead");
        if reached == 0 && missed > 0 {
            return Finding::new(
                HostVerdict::Down,
                format!(
                    "{seen} and none reaches the host ({missed} that reach another host miss it)"
                ),
            );
        }
        let why = if reached > 0 {
            format!("{reached} neighbour(s) reach the host")
        } else if e.pings.is_empty() {
            "no neighbour could ping the host".to_owned()
        } else {
            "the neighbours that miss it reach no other host either".to_owned()
        };
        return Finding::new(
            HostVerdict::Disconnected,
            format!("{seen}, but {why}: no proof the host is dead"),
        );
    }
    Finding::new(
        HostVerdict::Disconnected,
        if dead == 0 {
            "no neighbour could vouch for the host".to_owned()
        } else {
            format!("only {dead} dead answer(s), {m} needed")
        },
    )
}

/// Whether the evidence gathered so far already decides, while `pending_beats` neighbour
/// heartbeat checks are still out: an Up from the host itself, an alive neighbour, or the BMC's
/// Off once every heartbeat check is in (an alive answer would still veto it).
fn decided(e: &Evidence, pending_beats: usize) -> bool {
    e.own == Some(true)
        || e.beats.iter().any(|b| b.alive)
        || (e.power == Some(PowerState::Off) && pending_beats == 0)
}

async fn check_on_host(
    commander: &dyn HostCommander,
    via: HostId,
    target: HostId,
) -> Option<(bool, Option<Duration>)> {
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
            heartbeat_age_ms,
            ..
        })) => Some((alive, heartbeat_age_ms.map(Duration::from_millis))),
        _ => None,
    }
}

async fn ping_test(commander: &dyn HostCommander, via: HostId, target: HostId) -> Option<bool> {
    let probe = Command::PingTest(PingTestCommand { target });
    commander
        .send(via, probe, PROBE_WAIT)
        .await
        .ok()
        .map(|a| a.success())
}

/// Which hosts each neighbour pings as its controls (two at most; one answer is enough): the
/// other neighbours in turn from the next one (so one blind neighbour does not blind the
/// others), then the rest of the cluster and the pod. A neighbour that reaches none of its
/// controls cannot show that it reaches anyone: its misses prove nothing.
struct Controls {
    ring: Vec<HostId>,
    others: Vec<HostId>,
}

/// Controls pinged per neighbour.
const CONTROLS: usize = 2;

impl Controls {
    fn new(neighbours: &[HostId], others: Vec<HostId>) -> Self {
        Self {
            ring: neighbours.to_vec(),
            others,
        }
    }

    fn controls_for(&self, n: HostId) -> Vec<HostId> {
        let Some(i) = self.ring.iter().position(|h| *h == n) else {
            return Vec::new();
        };
        let ring = (1..self.ring.len()).map(|k| self.ring[(i + k) % self.ring.len()]);
        let mut out: Vec<HostId> = Vec::with_capacity(CONTROLS);
        for h in ring.chain(self.others.iter().copied()) {
            if out.len() == CONTROLS {
                break;
            }
            if h != n && !out.contains(&h) {
                out.push(h);
            }
        }
        out
    }
}

enum Probe {
    Own(Option<bool>),
    Beat(HostId, Option<(bool, Option<Duration>)>),
    Ping(HostId, Option<bool>),
    Control(HostId, Option<bool>),
    Power(Option<PowerState>),
}

/// The probes a heartbeat investigator sends: through the commander to the host and its Up
/// neighbours of the same kind, and to the BMC.
pub(crate) struct Neighbours {
    pub(crate) commander: Arc<dyn HostCommander>,
    pub(crate) store: Arc<dyn HostStore>,
    pub(crate) oobm: Option<Arc<Oobm>>,
    pub(crate) agreement: usize,
}

impl Neighbours {
    /// The Up hosts of the host's cluster (other than itself) of a kind.
    pub(crate) fn of(
        &self,
        host: &HostRecord,
        same_kind: fn(HypervisorType) -> bool,
    ) -> Vec<HostId> {
        let Some(cluster) = host.cluster else {
            return Vec::new();
        };
        self.store
            .in_cluster(cluster)
            .into_iter()
            .filter(|n| n.id != host.id && n.status == Some(Status::Up) && same_kind(n.hypervisor))
            .map(|n| n.id)
            .collect()
    }

    /// Controls of last resort: the other routing hosts of the host's cluster, whatever their
    /// status (a control only has to answer a ping), then the Up routing hosts of its pod.
    fn control_hosts(&self, host: &HostRecord) -> Vec<HostId> {
        let cluster = host
            .cluster
            .map_or_else(Vec::new, |c| self.store.in_cluster(c));
        let pod = host.pod.map_or_else(Vec::new, |p| self.store.in_pod(p));
        let pod_up = pod.into_iter().filter(|n| n.status == Some(Status::Up));
        let mut out: Vec<HostId> = Vec::new();
        for n in cluster.into_iter().chain(pod_up) {
            if n.id != host.id && n.host_type == HostType::Routing && !out.contains(&n.id) {
                out.push(n.id);
            }
        }
        out
    }

    /// Sends every probe at once and collects answers until the evidence decides or every
    /// probe has answered or timed out (each is bounded).
    async fn gather(
        &self,
        host: &HostRecord,
        same_kind: fn(HypervisorType) -> bool,
        ask_self: bool,
    ) -> Evidence {
        let commander = &*self.commander;
        let target = host.id;
        let neighbours = self.of(host, same_kind);
        let controls = Controls::new(&neighbours, self.control_hosts(host));
        let mut probes: FuturesUnordered<
            std::pin::Pin<Box<dyn std::future::Future<Output = Probe> + Send + '_>>,
        > = FuturesUnordered::new();
        if ask_self {
            probes.push(Box::pin(async move {
                Probe::Own(
                    check_on_host(commander, target, target)
                        .await
                        .map(|(a, _)| a),
                )
            }));
        }
        for &n in &neighbours {
            probes.push(Box::pin(async move {
                Probe::Beat(n, check_on_host(commander, n, target).await)
            }));
            probes.push(Box::pin(async move {
                Probe::Ping(n, ping_test(commander, n, target).await)
            }));
            for control in controls.controls_for(n) {
                probes.push(Box::pin(async move {
                    Probe::Control(n, ping_test(commander, n, control).await)
                }));
            }
        }
        if let Some(oobm) = &self.oobm {
            probes.push(Box::pin(async move {
                // Bounded by the Oobm's own bound: a reading cut short here would be read
                // again by the fence, one BMC call too many.
                Probe::Power(oobm.power_status(target).await.ok())
            }));
        }
        let mut e = Evidence::default();
        let mut pending_beats = neighbours.len();
        while let Some(p) = probes.next().await {
            match p {
                Probe::Own(a) => e.own = a,
                Probe::Beat(by, a) => {
                    pending_beats -= 1;
                    if let Some((alive, age)) = a {
                        e.beats.push(Beat { by, alive, age });
                    }
                }
                Probe::Ping(by, a) => e.pings.extend(a.map(|r| (by, r))),
                Probe::Control(by, a) => e.controls.extend(a.map(|r| (by, r))),
                Probe::Power(p) => e.power = p,
            }
            if decided(&e, pending_beats) {
                break;
            }
        }
        e
    }
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

    async fn host_status(&self, _host: &HostRecord) -> Option<Finding> {
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

/// The KVM rule of §6.2 with cloudha's fixes (module docs): the host's own heartbeat check, its
/// Up KVM neighbours' heartbeat checks and ping tests, and the BMC, all at once.
pub struct KvmInvestigator {
    neighbours: Neighbours,
}

impl KvmInvestigator {
    /// Probes through `commander`, neighbours from `store`, power through `oobm` (if any);
    /// `agreement` = `ha.investigators.agreement`.
    pub fn new(
        commander: Arc<dyn HostCommander>,
        store: Arc<dyn HostStore>,
        oobm: Option<Arc<Oobm>>,
        agreement: usize,
    ) -> Self {
        Self {
            neighbours: Neighbours {
                commander,
                store,
                oobm,
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

    async fn host_status(&self, host: &HostRecord) -> Option<Finding> {
        if !host.hypervisor.is_kvm_like() {
            return None;
        }
        let e = self
            .neighbours
            .gather(host, HypervisorType::is_kvm_like, true)
            .await;
        Some(judge(
            &e,
            Rules {
                agreement: self.neighbours.agreement,
            },
        ))
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

fn is_xen(h: HypervisorType) -> bool {
    h == HypervisorType::XenServer
}

/// The XenServer check of §6.1: other Xen hosts of the pool check the host's pool heartbeat
/// (written by the host itself, not by the agent), with the ping tests and the BMC as for KVM.
pub struct XenServerInvestigator {
    neighbours: Neighbours,
}

impl XenServerInvestigator {
    /// Probes through `commander`, neighbours from `store`, power through `oobm` (if any).
    pub fn new(
        commander: Arc<dyn HostCommander>,
        store: Arc<dyn HostStore>,
        oobm: Option<Arc<Oobm>>,
        agreement: usize,
    ) -> Self {
        Self {
            neighbours: Neighbours {
                commander,
                store,
                oobm,
                agreement,
            },
        }
    }
}

#[async_trait::async_trait]
impl Investigator for XenServerInvestigator {
    fn name(&self) -> &'static str {
        "XenServerInvestigator"
    }

    async fn host_status(&self, host: &HostRecord) -> Option<Finding> {
        if !is_xen(host.hypervisor) {
            return None;
        }
        // A direct agent: the manager polls it, there is no agent on the host to ask.
        let e = self.neighbours.gather(host, is_xen, false).await;
        Some(judge(
            &e,
            Rules {
                agreement: self.neighbours.agreement,
            },
        ))
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

/// CloudStack's `VMwareInvestigator`: a VMware host's fate is vCenter's. It answers
/// Disconnected, never Down, so a dead VMware host goes to Alert and vSphere HA restarts its VMs.
#[derive(Debug, Default, Clone, Copy)]
pub struct VmwareInvestigator;

#[async_trait::async_trait]
impl Investigator for VmwareInvestigator {
    fn name(&self) -> &'static str {
        "VMwareInvestigator"
    }

    async fn host_status(&self, host: &HostRecord) -> Option<Finding> {
        (host.hypervisor == HypervisorType::VMware).then(|| {
            Finding::new(
                HostVerdict::Disconnected,
                "a VMware host is left to vCenter: never Down",
            )
        })
    }

    async fn vm_alive(&self, _vm: VmId, _host: &HostRecord) -> VmVerdict {
        VmVerdict::Unknown
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

    async fn host_status(&self, host: &HostRecord) -> Option<Finding> {
        let pod = host.pod?;
        let mut asks = FuturesUnordered::new();
        for n in self.store.in_pod(pod) {
            if n.id == host.id || n.status != Some(Status::Up) || n.host_type != HostType::Routing {
                continue;
            }
            let commander = &*self.commander;
            asks.push(async move { (n.id, ping_test(commander, n.id, host.id).await) });
        }
        while let Some((by, reached)) = asks.next().await {
            if reached == Some(true) {
                return Some(Finding::new(
                    HostVerdict::Disconnected,
                    format!("host {by} reaches the host"),
                ));
            }
        }
        None
    }

    async fn vm_alive(&self, _vm: VmId, _host: &HostRecord) -> VmVerdict {
        VmVerdict::Unknown
    }
}

/// Builds the chain named by `ha.investigators.order` (names from
/// [`crate::config::INVESTIGATORS`]), probing through `commander` and reading power through
/// `oobm` when there is one.
pub fn chain(
    config: &Config,
    commander: &Arc<dyn HostCommander>,
    store: &Arc<dyn HostStore>,
    oobm: Option<&Arc<Oobm>>,
) -> Vec<Arc<dyn Investigator>> {
    let m = config.ha_investigators_agreement as usize;
    config
        .ha_investigators_order
        .iter()
        .filter_map(|name| -> Option<Arc<dyn Investigator>> {
            Some(match name.as_str() {
                "SimpleInvestigator" => Arc::new(SimpleInvestigator::new(Arc::clone(commander))),
                "XenServerInvestigator" => Arc::new(XenServerInvestigator::new(
                    Arc::clone(commander),
                    Arc::clone(store),
                    oobm.cloned(),
                    m,
                )),
                "KVMInvestigator" => Arc::new(KvmInvestigator::new(
                    Arc::clone(commander),
                    Arc::clone(store),
                    oobm.cloned(),
                    m,
                )),
                "VMwareInvestigator" => Arc::new(VmwareInvestigator),
                "PingInvestigator" => Arc::new(PingInvestigator::new(
                    Arc::clone(commander),
                    Arc::clone(store),
                )),
                _ => return None,
            })
        })
        .collect()
}

/// Runs the chain: the first investigator with a finding wins; returns it with its name.
pub async fn investigate_host(
    chain: &[Arc<dyn Investigator>],
    host: &HostRecord,
) -> Option<(Finding, &'static str)> {
    for inv in chain {
        if let Some(f) = inv.host_status(host).await {
            return Some((f, inv.name()));
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
    use super::*;

    fn beat(by: u64, alive: bool) -> Beat {
        Beat {
            by: HostId(by),
            alive,
            age: None,
        }
    }

    /// One row: evidence, rules, expected verdict.
    struct Row {
        name: &'static str,
        own: Option<bool>,
        beats: &'static [bool],
        pings: &'static [bool],
        power: Option<PowerState>,
        agreement: usize,
        /// Neighbours (by index) whose control ping fails: they reach nobody.
        blind: &'static [usize],
        want: HostVerdict,
        settled: bool,
    }

    const fn row(name: &'static str, want: HostVerdict) -> Row {
        Row {
            name,
            own: None,
            beats: &[],
            pings: &[],
            power: None,
            agreement: 1,
            blind: &[],
            want,
            settled: false,
        }
    }

    #[test]
    fn judge_table() {
        use HostVerdict::*;
        use PowerState::*;
        let rows = [
            Row {
                own: Some(true),
                beats: &[false],
                power: Some(Off),
                settled: true,
                ..row("own alive: Up whatever else", Up)
            },
            Row {
                beats: &[false, true, false],
                pings: &[false],
                power: Some(Off),
                ..row(
                    "first alive neighbour vetoes Down, even with the BMC off",
                    Disconnected,
                )
            },
            Row {
                power: Some(Off),
                settled: true,
                ..row("nobody answers but the BMC says off: Down", Down)
            },
            Row {
                ..row(
                    "nobody answers: Disconnected, never Down (CloudStack)",
                    Disconnected,
                )
            },
            Row {
                own: Some(false),
                ..row("the host's own 'dead' proves nothing alone", Disconnected)
            },
            Row {
                beats: &[false],
                pings: &[false],
                ..row("dead heartbeat and unreachable: Down", Down)
            },
            Row {
                beats: &[false, false],
                pings: &[true, false],
                power: Some(On),
                ..row(
                    "agent restart: heartbeat dead, host reachable, BMC on",
                    Disconnected,
                )
            },
            Row {
                beats: &[false],
                ..row(
                    "dead heartbeat, nobody could ping, agent writes it",
                    Disconnected,
                )
            },
            Row {
                beats: &[false],
                power: Some(Unknown),
                ..row("BMC unknown is no evidence", Disconnected)
            },
            Row {
                beats: &[false],
                pings: &[true],
                ..row(
                    "whoever writes the heartbeat, a reachable host still runs (a self-fence not fired yet)",
                    Disconnected,
                )
            },
            Row {
                beats: &[false],
                pings: &[false],
                blind: &[0],
                ..row(
                    "the only neighbour reaches nobody: its miss proves nothing",
                    Disconnected,
                )
            },
            Row {
                beats: &[false, false],
                pings: &[false, false],
                blind: &[0],
                ..row("one blind neighbour, one that sees: Down", Down)
            },
            Row {
                beats: &[false],
                pings: &[false],
                agreement: 2,
                ..row("agreement 2: one dead answer is not enough", Disconnected)
            },
            Row {
                beats: &[false, false],
                pings: &[false],
                agreement: 2,
                ..row("agreement 2: two dead answers", Down)
            },
            Row {
                beats: &[false, false, true],
                pings: &[false],
                agreement: 2,
                ..row("agreement 2: an alive answer still vetoes", Disconnected)
            },
        ];
        for r in rows {
            let e = Evidence {
                own: r.own,
                beats: r
                    .beats
                    .iter()
                    .enumerate()
                    .map(|(i, a)| beat(i as u64 + 10, *a))
                    .collect(),
                pings: r
                    .pings
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (HostId(i as u64 + 10), *a))
                    .collect(),
                controls: (0..r.pings.len())
                    .map(|i| (HostId(i as u64 + 10), !r.blind.contains(&i)))
                    .collect(),
                power: r.power,
            };
            let f = judge(
                &e,
                Rules {
                    agreement: r.agreement,
                },
            );
            assert_eq!(f.verdict, r.want, "{}: {}", r.name, f.evidence);
            assert_eq!(f.settled, r.settled, "{}: settled", r.name);
        }
    }

    #[test]
    fn each_neighbour_pings_the_next_ones_then_the_rest_as_controls() {
        let h = |v: &[u64]| v.iter().map(|i| HostId(*i)).collect::<Vec<_>>();
        let c = Controls::new(&h(&[1, 2, 3]), h(&[4, 5]));
        assert_eq!(c.controls_for(HostId(1)), h(&[2, 3]));
        assert_eq!(c.controls_for(HostId(2)), h(&[3, 1]));
        assert_eq!(c.controls_for(HostId(3)), h(&[1, 2]));
        assert_eq!(
            c.controls_for(HostId(9)),
            h(&[]),
            "not a neighbour: no controls"
        );
        let lone = Controls::new(&h(&[1]), h(&[1, 4, 5]));
        assert_eq!(lone.controls_for(HostId(1)), h(&[4, 5]), "never itself");
        let pair = Controls::new(&h(&[1, 2]), h(&[2, 9]));
        assert_eq!(pair.controls_for(HostId(1)), h(&[2, 9]), "no host twice");
        let none = Controls::new(&h(&[1]), h(&[]));
        assert_eq!(none.controls_for(HostId(1)), h(&[]));
    }

    #[tokio::test(start_paused = true)]
    async fn the_simple_investigator_asks_the_vms_own_host() {
        use cloudha_protocol::{CheckVirtualMachineAnswer, GenericAnswer};
        let vm_answer = |success, power| {
            Answer::CheckVirtualMachine(CheckVirtualMachineAnswer {
                success,
                power,
                details: String::new(),
            })
        };
        for (answer, want) in [
            (vm_answer(true, VmPowerState::PowerOn), VmVerdict::Alive),
            (vm_answer(true, VmPowerState::PowerOff), VmVerdict::Dead),
            (vm_answer(false, VmPowerState::PowerOff), VmVerdict::Unknown),
            (vm_answer(false, VmPowerState::PowerOn), VmVerdict::Unknown),
            (
                vm_answer(true, VmPowerState::PowerReportMissing),
                VmVerdict::Unknown,
            ),
            (
                Answer::Generic(GenericAnswer {
                    success: true,
                    details: String::new(),
                }),
                VmVerdict::Unknown,
            ),
        ] {
            let mut commander = MockHostCommander::new();
            let a = answer.clone();
            commander
                .expect_send()
                .withf(|host, c, _| {
                    *host == HostId(7)
                        && matches!(c, Command::CheckVirtualMachine(v) if v.vm == VmId(3))
                })
                .times(1)
                .returning(move |_, _, _| Ok(a.clone()));
            let inv = SimpleInvestigator::new(Arc::new(commander));
            assert_eq!(inv.name(), "SimpleInvestigator");
            let host = HostRecord::new(HostId(7), "h7", HypervisorType::Kvm);
            assert_eq!(inv.vm_alive(VmId(3), &host).await, want, "{answer:?}");
            assert_eq!(inv.host_status(&host).await, None);
        }
    }

    fn up(
        id: u64,
        hv: HypervisorType,
        pod: u64,
        status: Option<Status>,
        t: HostType,
    ) -> HostRecord {
        let mut r = HostRecord::new(HostId(id), format!("h{id}"), hv);
        r.pod = Some(cloudha_protocol::PodId(pod));
        r.cluster = Some(cloudha_protocol::ClusterId(pod));
        r.status = status;
        r.host_type = t;
        r
    }

    #[test]
    fn the_chain_follows_the_configured_order_by_cloudstacks_names() {
        let store: Arc<dyn HostStore> = Arc::new(crate::host::InMemoryHostStore::new());
        let commander: Arc<dyn HostCommander> = Arc::new(MockHostCommander::new());
        let config = Config::default();
        let names: Vec<&str> = chain(&config, &commander, &store, None)
            .iter()
            .map(|i| i.name())
            .collect();
        assert_eq!(names, crate::config::INVESTIGATORS);
        let reversed = Config {
            ha_investigators_order: crate::config::INVESTIGATORS
                .iter()
                .rev()
                .map(|s| (*s).to_owned())
                .collect(),
            ..Config::default()
        };
        let names: Vec<&str> = chain(&reversed, &commander, &store, None)
            .iter()
            .map(|i| i.name())
            .collect();
        let mut want = crate::config::INVESTIGATORS.to_vec();
        want.reverse();
        assert_eq!(names, want);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_investigators_call_a_vm_alive_only_on_an_up_host_of_their_kind() {
        let store = Arc::new(crate::host::InMemoryHostStore::new());
        let commander: Arc<dyn HostCommander> = Arc::new(MockHostCommander::new());
        let kvm = KvmInvestigator::new(commander.clone(), store.clone(), None, 1);
        let xen = XenServerInvestigator::new(commander, store.clone(), None, 1);
        for (hv, status, kvm_says, xen_says) in [
            (
                HypervisorType::Kvm,
                Some(Status::Up),
                VmVerdict::Alive,
                VmVerdict::Unknown,
            ),
            (
                HypervisorType::Kvm,
                Some(Status::Alert),
                VmVerdict::Unknown,
                VmVerdict::Unknown,
            ),
            (
                HypervisorType::XenServer,
                Some(Status::Up),
                VmVerdict::Unknown,
                VmVerdict::Alive,
            ),
            (
                HypervisorType::XenServer,
                Some(Status::Down),
                VmVerdict::Unknown,
                VmVerdict::Unknown,
            ),
            (
                HypervisorType::VMware,
                Some(Status::Up),
                VmVerdict::Unknown,
                VmVerdict::Unknown,
            ),
        ] {
            let h = up(1, hv, 1, status, HostType::Routing);
            store.upsert(h.clone());
            assert_eq!(
                kvm.vm_alive(VmId(1), &h).await,
                kvm_says,
                "KVM on {hv:?} {status:?}"
            );
            assert_eq!(
                xen.vm_alive(VmId(1), &h).await,
                xen_says,
                "Xen on {hv:?} {status:?}"
            );
        }
    }

    /// The Ping investigator: the other Up routing hosts of the pod ping the host; the first
    /// that reaches it ⇒ Disconnected; nobody ⇒ don't know.
    #[tokio::test(start_paused = true)]
    async fn the_ping_investigator_asks_the_up_routing_hosts_of_the_pod() {
        let store = Arc::new(crate::host::InMemoryHostStore::new());
        let target = up(
            1,
            HypervisorType::Kvm,
            1,
            Some(Status::Alert),
            HostType::Routing,
        );
        store.upsert(target.clone());
        store.upsert(up(
            2,
            HypervisorType::Kvm,
            1,
            Some(Status::Up),
            HostType::Routing,
        ));
        store.upsert(up(
            3,
            HypervisorType::Kvm,
            1,
            Some(Status::Down),
            HostType::Routing,
        ));
        store.upsert(up(
            4,
            HypervisorType::Kvm,
            1,
            Some(Status::Up),
            HostType::ConsoleProxy,
        ));
        store.upsert(up(
            5,
            HypervisorType::Kvm,
            2,
            Some(Status::Up),
            HostType::Routing,
        ));
        for (reached, want) in [(true, Some(HostVerdict::Disconnected)), (false, None)] {
            let mut commander = MockHostCommander::new();
            commander
                .expect_send()
                .withf(|via, c, _| {
                    *via == HostId(2) && matches!(c, Command::PingTest(p) if p.target == HostId(1))
                })
                .times(1)
                .returning(move |_, _, _| {
                    Ok(Answer::Generic(cloudha_protocol::GenericAnswer {
                        success: reached,
                        details: String::new(),
                    }))
                });
            let inv = PingInvestigator::new(Arc::new(commander), store.clone());
            assert_eq!(inv.name(), "PingInvestigator");
            let got = inv.host_status(&target).await.map(|f| f.verdict);
            assert_eq!(got, want, "reached: {reached}");
            assert_eq!(inv.vm_alive(VmId(1), &target).await, VmVerdict::Unknown);
        }
        let mut no_pod = target.clone();
        no_pod.pod = None;
        let inv = PingInvestigator::new(Arc::new(MockHostCommander::new()), store.clone());
        assert_eq!(
            inv.host_status(&no_pod).await,
            None,
            "no pod: nobody to ask"
        );
    }

    /// Controls of last resort: the host's cluster whatever the status (a control only has to
    /// answer a ping), then the Up routing hosts of its pod; never the host, never twice, never
    /// a system VM host.
    #[test]
    fn control_hosts_are_the_cluster_then_the_up_hosts_of_the_pod() {
        let store = Arc::new(crate::host::InMemoryHostStore::new());
        let target = up(
            1,
            HypervisorType::Kvm,
            1,
            Some(Status::Alert),
            HostType::Routing,
        );
        let mut other_pod_same_cluster = up(
            2,
            HypervisorType::Kvm,
            1,
            Some(Status::Down),
            HostType::Routing,
        );
        other_pod_same_cluster.pod = Some(cloudha_protocol::PodId(9));
        let mut pod_only_up = up(
            3,
            HypervisorType::Kvm,
            1,
            Some(Status::Up),
            HostType::Routing,
        );
        pod_only_up.cluster = Some(cloudha_protocol::ClusterId(5));
        let mut pod_only_down = up(
            4,
            HypervisorType::Kvm,
            1,
            Some(Status::Down),
            HostType::Routing,
        );
        pod_only_down.cluster = Some(cloudha_protocol::ClusterId(5));
        let proxy = up(
            6,
            HypervisorType::Kvm,
            1,
            Some(Status::Up),
            HostType::ConsoleProxy,
        );
        for h in [
            target.clone(),
            other_pod_same_cluster,
            pod_only_up,
            pod_only_down,
            proxy,
        ] {
            store.upsert(h);
        }
        let n = Neighbours {
            commander: Arc::new(MockHostCommander::new()),
            store,
            oobm: None,
            agreement: 1,
        };
        assert_eq!(n.control_hosts(&target), vec![HostId(2), HostId(3)]);
    }

    /// Every verdict says why: the evidence in words names what decided it.
    #[test]
    fn the_evidence_says_why() {
        let dead = |n: u64| (10..10 + n).map(|i| beat(i, false)).collect::<Vec<_>>();
        let one = Rules { agreement: 1 };
        for (e, rules, want) in [
            (
                Evidence {
                    beats: dead(1),
                    pings: vec![(HostId(10), true)],
                    ..Evidence::default()
                },
                one,
                "1 neighbour(s) reach the host",
            ),
            (
                Evidence {
                    beats: dead(1),
                    ..Evidence::default()
                },
                one,
                "no neighbour could ping the host",
            ),
            (
                Evidence {
                    beats: dead(1),
                    pings: vec![(HostId(10), false)],
                    controls: vec![(HostId(10), false)],
                    ..Evidence::default()
                },
                one,
                "reach no other host either",
            ),
            (
                Evidence::default(),
                one,
                "no neighbour could vouch for the host",
            ),
            (
                Evidence {
                    beats: dead(1),
                    ..Evidence::default()
                },
                Rules { agreement: 2 },
                "only 1 dead answer(s), 2 needed",
            ),
            (
                Evidence {
                    beats: dead(2),
                    pings: vec![(HostId(10), false)],
                    controls: vec![(HostId(10), true)],
                    ..Evidence::default()
                },
                one,
                "2 neighbour(s) see the heartbeat dead and none reaches the host (1 that reach another host miss it)",
            ),
        ] {
            let f = judge(&e, rules);
            assert!(f.evidence.contains(want), "{want:?} in {:?}", f.evidence);
        }
    }

    #[test]
    fn decided_waits_for_every_heartbeat_before_trusting_the_bmc() {
        let mut e = Evidence {
            power: Some(PowerState::Off),
            ..Evidence::default()
        };
        assert!(!decided(&e, 1), "an alive answer could still veto");
        assert!(decided(&e, 0));
        e.power = Some(PowerState::On);
        assert!(!decided(&e, 0));
        e.beats.push(beat(2, true));
        assert!(decided(&e, 3), "an alive neighbour decides at once");
        let own = Evidence {
            own: Some(true),
            ..Evidence::default()
        };
        assert!(decided(&own, 5));
    }
}
