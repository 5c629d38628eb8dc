//! Host and VM investigation: the `Investigator` port, the `HostCommander` port probes go
//! through, and the investigators of spec §6.1 / §6.2.
//!
//! Every probe is a command sent to some host through [`HostCommander`] with a bounded wait
//! (CheckOnHost 20 s, PingTest and CheckVirtualMachine 20 s), so a simulator or a real cloud
//! answers them alike; a host with no attache fails at once.
//!
//! The heartbeat investigators (KVM, XenServer) gather their evidence concurrently (the
//! host's own check, every neighbour's heartbeat check and ping test, the BMC's power reading)
//! and judge it with one pure function, `judge`, as soon as the evidence decides:
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

use cloudha_ports::{
    Finding, HostCommander, HostDirectory, HostRecord, HostVerdict, Investigator, PowerState,
    VmVerdict,
};

use crate::config::LivenessConfig;
use crate::oobm::Oobm;

/// Wait of a probe command.
pub(crate) const PROBE_WAIT: Duration = Duration::from_secs(20);

/// One neighbour's answer about a host's heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Beat {
    /// The neighbour.
    pub by: HostId,
    /// It sees the heartbeat alive.
    pub alive: bool,
    /// The heartbeat's age as it read it.
    pub age: Option<Duration>,
}

/// Everything a heartbeat investigation learned about a host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Evidence {
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
pub(crate) struct Rules {
    /// `ha.investigators.agreement`: dead answers needed (no alive one allowed).
    pub agreement: usize,
}

/// The verdict the evidence supports (see the module docs), with the evidence in words.
pub(crate) fn judge(e: &Evidence, rules: Rules) -> Finding {
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
pub struct Neighbours {
    pub(crate) commander: Arc<dyn HostCommander>,
    pub(crate) hosts: Arc<dyn HostDirectory>,
    pub(crate) oobm: Option<Arc<Oobm>>,
    pub(crate) agreement: usize,
}

impl Neighbours {
    /// Probes through `commander` to the hosts of `hosts`, and to the BMC through `oobm`;
    /// `agreement` dead answers are needed for Down.
    pub fn new(
        commander: Arc<dyn HostCommander>,
        hosts: Arc<dyn HostDirectory>,
        oobm: Option<Arc<Oobm>>,
        agreement: usize,
    ) -> Self {
        Self {
            commander,
            hosts,
            oobm,
            agreement,
        }
    }

    /// The commander probes go through.
    pub fn commander(&self) -> &dyn HostCommander {
        &*self.commander
    }

    /// The agreement (`ha.investigators.agreement`).
    pub fn agreement(&self) -> usize {
        self.agreement
    }

    /// The Up hosts of the host's cluster (other than itself) of a kind.
    pub fn of(&self, host: &HostRecord, same_kind: fn(HypervisorType) -> bool) -> Vec<HostId> {
        let Some(cluster) = host.cluster else {
            return Vec::new();
        };
        self.hosts
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
            .map_or_else(Vec::new, |c| self.hosts.in_cluster(c));
        let pod = host.pod.map_or_else(Vec::new, |p| self.hosts.in_pod(p));
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
    /// Probes through `commander`, neighbours from `hosts`, power through `oobm` (if any);
    /// `agreement` = `ha.investigators.agreement`.
    pub fn new(
        commander: Arc<dyn HostCommander>,
        hosts: Arc<dyn HostDirectory>,
        oobm: Option<Arc<Oobm>>,
        agreement: usize,
    ) -> Self {
        Self {
            neighbours: Neighbours {
                commander,
                hosts,
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
        match self.neighbours.hosts.status(host.id) {
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
    /// Probes through `commander`, neighbours from `hosts`, power through `oobm` (if any).
    pub fn new(
        commander: Arc<dyn HostCommander>,
        hosts: Arc<dyn HostDirectory>,
        oobm: Option<Arc<Oobm>>,
        agreement: usize,
    ) -> Self {
        Self {
            neighbours: Neighbours {
                commander,
                hosts,
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
            self.neighbours.hosts.status(host.id),
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
    hosts: Arc<dyn HostDirectory>,
}

impl PingInvestigator {
    /// Probes through `commander`, pod members from `hosts`.
    pub fn new(commander: Arc<dyn HostCommander>, hosts: Arc<dyn HostDirectory>) -> Self {
        Self { commander, hosts }
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
        for n in self.hosts.in_pod(pod) {
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
    config: &LivenessConfig,
    commander: &Arc<dyn HostCommander>,
    hosts: &Arc<dyn HostDirectory>,
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
                    Arc::clone(hosts),
                    oobm.cloned(),
                    m,
                )),
                "KVMInvestigator" => Arc::new(KvmInvestigator::new(
                    Arc::clone(commander),
                    Arc::clone(hosts),
                    oobm.cloned(),
                    m,
                )),
                "VMwareInvestigator" => Arc::new(VmwareInvestigator),
                "PingInvestigator" => Arc::new(PingInvestigator::new(
                    Arc::clone(commander),
                    Arc::clone(hosts),
                )),
                _ => return None,
            })
        })
        .collect()
}

/// Runs the chain: the first investigator with a finding wins; returns it with its name.
pub(crate) async fn investigate_host(
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
mod tests;
