//! Building the simulated cloud from a scenario, running it in paused time, and judging it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cloudha_attache::{AgentClient, AgentConfig, AgentHandle, ServerResource, Tasks};
use cloudha_ha::{
    Fencer, HaManager, HaPorts, InMemoryVms, NeighbourFencer, PowerFencer, VmOrchestrator,
    XenPoolFencer,
};
use cloudha_liveness::{AgentManager, Oobm, Ports, StatusChange};
use cloudha_ports::{
    HostRecord, HostStore, InMemoryHaWorkStore, InMemoryHostStore, OwnerId, VmKind, VmRecord,
};
use cloudha_protocol::*;
use cloudha_registry::Registry;
use cloudha_registry::{Interest, ListenerRegistry};
use tokio::time::Instant;

use crate::cloud::{
    FenceRecord, ManagerSlot, PingLog, RecordingAlerts, RecordingFencer, SimBmc, SimConnector,
    SimResource, SimVms,
};
use crate::report::*;
use crate::rng::Rng;
use crate::scenario::{Expect, FaultKind, Hypervisor, Scenario, SelfFence, Storage};
use crate::world::{Cause, Death, HostTruth, Placement, SIM_EPOCH, VmTruth, World};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Instance {
    agent: AgentManager,
    tasks: Tasks,
    registry: Arc<Registry>,
}

/// A host fault as it happened: the host, the kind, when, and the host's last ping before it.
type FaultSeen = (HostId, FaultKind, Instant, Option<Instant>);

/// Everything a run shares.
struct Cloud {
    scenario: Scenario,
    world: Arc<World>,
    hosts: Arc<InMemoryHostStore>,
    work: Arc<InMemoryHaWorkStore>,
    records: Arc<InMemoryVms>,
    vms: Arc<SimVms>,
    alerts: Arc<RecordingAlerts>,
    fences: Arc<Mutex<Vec<FenceRecord>>>,
    bmc: Arc<SimBmc>,
    slot: Arc<ManagerSlot>,
    sim_tasks: Tasks,
    resources: BTreeMap<HostId, Arc<SimResource>>,
    agents: Mutex<BTreeMap<HostId, AgentHandle>>,
    instance: Mutex<Option<Instance>>,
    history: Mutex<BTreeMap<HostId, Vec<StatusChange>>>,
    rng: Mutex<Rng>,
    names: BTreeMap<String, HostId>,
    vm_names: BTreeMap<String, VmId>,
    /// Host faults: the host, the kind, when, and the host's last ping before it.
    faults_seen: Mutex<Vec<FaultSeen>>,
    pings: Arc<PingLog>,
    /// Every VM death of an HA VM the `ha_liveness` invariant judges, and the verdicts given
    /// at their deadlines (`None`: the obligation was met or excused, with why).
    deaths: Mutex<Vec<Death>>,
    judged: Mutex<Vec<(Death, Result<String, String>)>>,
    /// When each manager instance started (each start opens a startup grace).
    starts: Mutex<Vec<Instant>>,
    /// Each host's zone (static topology).
    zones: BTreeMap<HostId, ZoneId>,
}

fn hypervisor(h: Hypervisor) -> HypervisorType {
    match h {
        Hypervisor::Kvm => HypervisorType::Kvm,
        Hypervisor::Xenserver => HypervisorType::XenServer,
        Hypervisor::Vmware => HypervisorType::VMware,
        Hypervisor::Simulator => HypervisorType::Simulator,
    }
}

fn at_s(world: &World, t: Instant) -> f64 {
    t.saturating_duration_since(world.t0).as_millis() as f64 / 1000.0
}

/// Runs `scenario` with `seed` on a fresh single-threaded, paused-time runtime. The report's
/// `wall_ms` is left at 0: the caller measures wall time (this crate reads no real clock).
///
/// # Panics
/// If the runtime cannot be built.
pub fn simulate(scenario: &Scenario, seed: u64) -> Report {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(run(scenario.clone(), seed, Injected::default()))
}

/// Faulty ports a test harness may inject, to see an invariant fail that no lying part of a
/// scenario can break (only with the `fault-injection` feature; never in the `cloudha` binary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Injected {
    /// The VM orchestrator's records claim every VM is HA-enabled.
    pub ha_flag_lies: bool,
}

impl Injected {
    /// The orchestrator's records claim every VM is HA-enabled.
    pub fn ha_flag_lies() -> Self {
        Self { ha_flag_lies: true }
    }
}

/// [`simulate`] with faulty ports injected.
///
/// # Panics
/// If the runtime cannot be built.
#[cfg(feature = "fault-injection")]
pub fn simulate_with(scenario: &Scenario, seed: u64, injected: Injected) -> Report {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(run(scenario.clone(), seed, injected))
}

async fn run(scenario: Scenario, seed: u64, injected: Injected) -> Report {
    let t0 = Instant::now();
    let world = Arc::new(World::new(t0, scenario.config.force_ha, scenario.sim));
    let hosts = Arc::new(InMemoryHostStore::new());
    let records = Arc::new(InMemoryVms::new());
    let sim_tasks = Tasks::new();
    let mut names = BTreeMap::new();
    let mut vm_names = BTreeMap::new();
    let mut resources = BTreeMap::new();
    let mut pods = BTreeMap::new();
    let mut zones = BTreeMap::new();
    let (mut next_host, mut next_vm) = (1u64, 1u64);
    let mut host_zones = BTreeMap::new();
    for (ci, c) in scenario.clusters.iter().enumerate() {
        let cluster = ClusterId(ci as u64 + 1);
        let n = pods.len() as u64 + 1;
        let pod = *pods
            .entry(c.pod.clone().unwrap_or_else(|| "pod".into()))
            .or_insert(PodId(n));
        let n = zones.len() as u64 + 1;
        let zone = *zones
            .entry(c.zone.clone().unwrap_or_else(|| "zone".into()))
            .or_insert(ZoneId(n));
        let hv = hypervisor(c.hypervisor);
        let ha_vms = (f64::from(c.vms_per_host) * c.ha_fraction).round() as u32;
        for h in 1..=c.hosts {
            let id = HostId(next_host);
            next_host += 1;
            let name = format!("{}-h{h}", c.name);
            names.insert(name.clone(), id);
            world.lock().hosts.insert(
                id,
                HostTruth {
                    name: name.clone(),
                    cluster,
                    hypervisor: hv,
                    capacity: c.capacity_per_host,
                    independent_self_fence: c.self_fence == SelfFence::Independent,
                    powered: true,
                    agent_alive: true,
                    mgmt_partitioned: false,
                    neighbour_partitioned: false,
                    storage_ok: true,
                    ping_loss: false,
                    ping_delay: None,
                    bmc_ok: true,
                    bmc_off_fails: false,
                    bmc_lies: false,
                    bmc_stuck: false,
                    neighbours_lie: false,
                    no_capacity: false,
                    booted_at: t0,
                    heartbeat: (hv.is_kvm_like() || hv == HypervisorType::XenServer).then_some(t0),
                },
            );
            host_zones.insert(id, zone);
            let mut record = HostRecord::new(id, name.clone(), hv);
            record.cluster = Some(cluster);
            record.pod = Some(pod);
            record.zone = Some(zone);
            record.self_fence_independent = c.self_fence == SelfFence::Independent;
            hosts.upsert(record);
            records.set_capacity(id, c.capacity_per_host as usize);
            for j in 1..=c.vms_per_host {
                let vid = VmId(next_vm);
                next_vm += 1;
                let vname = format!("{name}-vm{j}");
                vm_names.insert(vname.clone(), vid);
                let ha = j <= ha_vms;
                records.upsert(VmRecord {
                    id: vid,
                    name: vname.clone(),
                    kind: VmKind::User,
                    host: Some(id),
                    last_host: None,
                    state: VmState::Running,
                    update_count: 0,
                    ha_enabled: ha,
                    local_root_disk: c.storage == Storage::Local,
                    hypervisor: hv,
                    cluster: Some(cluster),
                    zone: Some(zone),
                });
                world.lock().add_vm(
                    vid,
                    VmTruth {
                        name: vname,
                        ha,
                        copies: vec![id],
                        placements: vec![Placement {
                            at: t0,
                            host: Some(id),
                            state: VmState::Running,
                        }],
                        restarts: Vec::new(),
                    },
                );
            }
            let startup = StartupCommand {
                host_id: id,
                name,
                version: "sim".into(),
                host_type: Some(HostType::Routing),
                hypervisor: Some(hv),
                cluster: Some(cluster),
                pod: Some(pod),
                zone: Some(zone),
                vm_states: Vec::new(),
            };
            resources.insert(
                id,
                Arc::new(SimResource {
                    world: world.clone(),
                    vms: records.clone(),
                    host: id,
                    startup,
                    direct: !hv.is_kvm_like(),
                }),
            );
        }
    }
    let work = Arc::new(InMemoryHaWorkStore::new());
    let pings = Arc::new(PingLog::default());
    let vms = Arc::new(SimVms {
        pings: pings.clone(),
        world: world.clone(),
        records: records.clone(),
        ha_flag_lies: injected.ha_flag_lies,
    });
    let cloud: Arc<Cloud> = Arc::new_cyclic(|weak: &std::sync::Weak<Cloud>| {
        let weak = weak.clone();
        let bmc = Arc::new(SimBmc {
            world: world.clone(),
            on_power_off: Arc::new(move |host| {
                if let Some(c) = weak.upgrade() {
                    c.power_off(host);
                }
            }),
        });
        Cloud {
            scenario: scenario.clone(),
            world: world.clone(),
            hosts,
            work,
            records,
            vms,
            alerts: Arc::new(RecordingAlerts::default()),
            fences: Arc::new(Mutex::new(Vec::new())),
            bmc,
            slot: Arc::new(ManagerSlot::default()),
            sim_tasks,
            resources,
            agents: Mutex::new(BTreeMap::new()),
            instance: Mutex::new(None),
            history: Mutex::new(BTreeMap::new()),
            rng: Mutex::new(Rng(seed)),
            names,
            vm_names,
            faults_seen: Mutex::new(Vec::new()),
            pings,
            deaths: Mutex::new(Vec::new()),
            judged: Mutex::new(Vec::new()),
            starts: Mutex::new(Vec::new()),
            zones: host_zones,
        }
    });
    cloud.world.update_reach(None);

    cloud.start_manager(true).await;
    let kvm: Vec<HostId> = cloud
        .world
        .lock()
        .hosts
        .iter()
        .filter(|(_, h)| h.kvm())
        .map(|(id, _)| *id)
        .collect();
    for host in kvm {
        let offset = lock(&cloud.rng).below(cloud.scenario.config.ping_interval);
        let c = Arc::clone(&cloud);
        cloud
            .sim_tasks
            .spawn(cloud.sim_tasks.token().child_token(), async move {
                tokio::time::sleep(offset).await;
                c.start_agent(host);
            });
        let hb = lock(&cloud.rng).below(cloud.scenario.sim.heartbeat_interval);
        let c = Arc::clone(&cloud);
        cloud
            .sim_tasks
            .spawn(cloud.sim_tasks.token().child_token(), async move {
                c.heartbeat_loop(host, hb).await
            });
    }
    let xen: Vec<HostId> = cloud
        .world
        .lock()
        .hosts
        .iter()
        .filter(|(_, h)| h.hypervisor == HypervisorType::XenServer)
        .map(|(id, _)| *id)
        .collect();
    for host in xen {
        let offset = lock(&cloud.rng).below(cloud.scenario.sim.xen_heartbeat_interval);
        let c = Arc::clone(&cloud);
        cloud
            .sim_tasks
            .spawn(cloud.sim_tasks.token().child_token(), async move {
                c.pool_heartbeat_loop(host, offset).await
            });
    }

    for fault in cloud.scenario.faults.clone() {
        tokio::time::sleep_until(t0 + fault.at).await;
        cloud
            .apply(fault.kind, &fault.hosts, &fault.vms, fault.delay)
            .await;
        // A fault with a duration ends by its healing fault (power_on, mgmt_heal, ...) or, for
        // faults that are states (ping loss, BMC, capacity, delay), by clearing the state.
        if let Some(d) = fault.duration {
            let c = Arc::clone(&cloud);
            cloud
                .sim_tasks
                .spawn(cloud.sim_tasks.token().child_token(), async move {
                    tokio::time::sleep(d).await;
                    match fault.kind.heal() {
                        Some(heal) => c.apply(heal, &fault.hosts, &fault.vms, None).await,
                        None => c.clear(fault.kind, &fault.hosts),
                    }
                });
        }
    }
    tokio::time::sleep_until(t0 + cloud.scenario.duration).await;
    let report = cloud.report(seed);
    let instance = lock(&cloud.instance).take();
    if let Some(i) = instance {
        i.tasks.shutdown().await;
        i.registry.shutdown().await;
    }
    cloud.sim_tasks.shutdown().await;
    report
}

/// An expectation on a count: "`range` `what`" holds when `n` is within `min`..=`max`.
fn counted(
    what: String,
    n: u64,
    min: Option<u64>,
    max: Option<u64>,
    detail: String,
) -> ExpectationResult {
    let range = match (min, max) {
        (Some(a), Some(b)) => format!("between {a} and {b}"),
        (Some(a), None) => format!("at least {a}"),
        (None, Some(b)) => format!("at most {b}"),
        (None, None) => "any number of".into(),
    };
    ExpectationResult {
        text: format!("{range} {what}"),
        ok: min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m),
        detail,
    }
}

impl Cloud {
    async fn start_manager(self: &Arc<Self>, first: bool) {
        let config = self.scenario.config.clone();
        let tasks = Tasks::new();
        let registry = Arc::new(Registry::default());
        registry.register(self.pings.clone(), Interest::COMMANDS, false);
        let oobm = Arc::new(Oobm::new(self.bmc.clone(), config.oobm_action_timeout));
        let agent = AgentManager::new(
            config.clone(),
            Ports {
                store: self.hosts.clone(),
                registry: registry.clone(),
                alerts: self.alerts.clone(),
                ha: None,
                investigators: None,
                oobm: Some(oobm.clone()),
            },
            tasks.clone(),
        )
        .expect("config validated with the scenario");
        let recorded = |inner: Arc<dyn Fencer>| -> Arc<dyn Fencer> {
            Arc::new(RecordingFencer {
                inner,
                log: self.fences.clone(),
            })
        };
        let fencers: Vec<Arc<dyn Fencer>> = vec![
            recorded(Arc::new(NeighbourFencer::new(
                agent.commander(),
                self.hosts.clone(),
                &config,
            ))),
            recorded(Arc::new(XenPoolFencer::new(
                agent.commander(),
                self.hosts.clone(),
                &config,
            ))),
            recorded(Arc::new(PowerFencer::new(oobm))),
        ];
        let ha = HaManager::new(
            config,
            OwnerId(1),
            HaPorts {
                hosts: self.hosts.clone(),
                work: self.work.clone(),
                vms: self.vms.clone(),
                investigators: agent.investigators(),
                fencers,
                alerts: self.alerts.clone(),
                investigations: agent.investigations(),
                clock: Arc::new(self.world.clock),
            },
            tasks.clone(),
        );
        agent.set_ha(Arc::new(ha.clone()));
        for (id, r) in &self.resources {
            if r.direct {
                let resource: Arc<dyn ServerResource> = r.clone();
                if first {
                    let record = self.hosts.get(*id).expect("added");
                    agent.add_direct_host(record, resource);
                } else {
                    agent.register_direct(*id, resource);
                }
            }
        }
        lock(&self.starts).push(Instant::now());
        agent.start().await;
        ha.start().await;
        self.slot.set(Some((agent.sink(), tasks.clone())));
        *lock(&self.instance) = Some(Instance {
            agent,
            tasks,
            registry,
        });
    }

    async fn restart_manager(self: &Arc<Self>, downtime: Option<Duration>) {
        self.slot.set(None);
        let old = lock(&self.instance).take();
        if let Some(i) = old {
            self.save_history(&i.agent);
            i.tasks.shutdown().await;
            i.registry.shutdown().await;
        }
        if let Some(d) = downtime {
            tokio::time::sleep(d).await;
        }
        self.start_manager(false).await;
    }

    fn save_history(&self, agent: &AgentManager) {
        let mut h = lock(&self.history);
        for id in self.names.values() {
            h.entry(*id).or_default().extend(agent.history(*id));
        }
    }

    fn start_agent(self: &Arc<Self>, host: HostId) {
        let Some(resource) = self.resources.get(&host).cloned() else {
            return;
        };
        let mut config = AgentConfig::new(host);
        config.jitter_seed = lock(&self.rng).next();
        config.backoff_max = Duration::from_secs(60);
        let connector = Arc::new(SimConnector {
            world: self.world.clone(),
            host,
            manager: self.slot.clone(),
            sim_tasks: self.sim_tasks.clone(),
        });
        let handle = AgentClient::new(config, resource, connector).spawn(&self.sim_tasks);
        if let Some(old) = lock(&self.agents).insert(host, handle) {
            old.stop();
        }
    }

    fn stop_agent(&self, host: HostId) {
        if let Some(a) = lock(&self.agents).remove(&host) {
            a.stop();
        }
    }

    fn power_off(self: &Arc<Self>, host: HostId) {
        let deaths = self.world.power_off(host);
        self.stop_agent(host);
        self.after_change(&[host], deaths);
    }

    /// After any change of the truth about `hosts`: their clusters' reach is recorded, the VMs
    /// of hosts that just became cut off die (for `ha_liveness`), and every death gets its judge.
    fn after_change(self: &Arc<Self>, hosts: &[HostId], mut deaths: Vec<Death>) {
        for host in self.world.update_reach(Some(hosts)) {
            for vm in self.world.running_on(host) {
                deaths.push(self.world.death(vm, host, Cause::CutOff));
            }
        }
        for d in deaths {
            if !self.obliged(&d) {
                continue;
            }
            lock(&self.deaths).push(d);
            let me = Arc::clone(self);
            self.sim_tasks
                .spawn(self.sim_tasks.token().child_token(), async move {
                    me.judge(d).await
                });
        }
    }

    fn power_on(self: &Arc<Self>, host: HostId) {
        let was = self
            .world
            .with_host(host, |h| std::mem::replace(&mut h.powered, true));
        if was == Some(false) {
            self.world.with_host(host, |h| {
                h.agent_alive = true;
                h.booted_at = Instant::now();
            });
            if self.world.host(host).is_some_and(|h| h.kvm()) {
                self.start_agent(host);
            }
        }
        self.after_change(&[host], Vec::new());
    }

    /// Writes `host`'s heartbeat stamp now if its storage works; returns whether it did.
    fn write_heartbeat(&self, host: HostId) -> bool {
        self.world.with_host(host, |h| {
            if h.storage_ok {
                h.heartbeat = Some(Instant::now());
            }
            h.storage_ok
        }) == Some(true)
    }

    /// The host reboots itself: off now, on again after `sim.boot.time`.
    async fn self_reboot(self: &Arc<Self>, host: HostId) {
        self.power_off(host);
        tokio::time::sleep(self.scenario.sim.boot_time).await;
        self.power_on(host);
    }

    /// The KVM agent's heartbeat writer (and, with `self_fence = independent`, a watchdog that
    /// outlives the agent): every `sim.heartbeat.interval`; a failed write is retried
    /// `sim.heartbeat.write.retries` times every `sim.heartbeat.retry.interval`, then the host
    /// reboots itself.
    async fn heartbeat_loop(self: Arc<Self>, host: HostId, offset: Duration) {
        let t = self.scenario.sim;
        tokio::time::sleep(offset).await;
        let mut ticker = tokio::time::interval(t.heartbeat_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            let writer = |w: &World| {
                w.host(host)
                    .is_some_and(|h| h.powered && (h.agent_alive || h.independent_self_fence))
            };
            if !writer(&self.world) {
                continue;
            }
            let mut written = self.write_heartbeat(host);
            for _ in 0..t.heartbeat_write_retries {
                if written {
                    break;
                }
                tokio::time::sleep(t.heartbeat_retry_interval).await;
                if !writer(&self.world) {
                    break;
                }
                written = self.write_heartbeat(host);
            }
            if !written && writer(&self.world) {
                tracing::info!(host.id = %host, "heartbeat writes failed: the host reboots itself");
                self.self_reboot(host).await;
            }
        }
    }

    /// A XenServer host's pool heartbeat (xapi's HA statefile, not the CloudStack agent): written
    /// every `sim.xen.heartbeat.interval` while the host runs and its storage works; a host that
    /// could not write it for `sim.xen.self.reboot.timeout` reboots itself.
    async fn pool_heartbeat_loop(self: Arc<Self>, host: HostId, offset: Duration) {
        let t = self.scenario.sim;
        tokio::time::sleep(offset).await;
        let mut ticker = tokio::time::interval(t.xen_heartbeat_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_good = Instant::now();
        loop {
            ticker.tick().await;
            if !self.world.host(host).is_some_and(|h| h.powered) {
                last_good = Instant::now();
                continue;
            }
            if self.write_heartbeat(host) {
                last_good = Instant::now();
            } else if last_good.elapsed() >= t.xen_self_reboot_timeout {
                tracing::info!(host.id = %host, "pool heartbeat lost: the XenServer host reboots itself");
                self.self_reboot(host).await;
                last_good = Instant::now();
            }
        }
    }

    async fn apply(
        self: &Arc<Self>,
        kind: FaultKind,
        hosts: &[String],
        vms: &[String],
        delay: Option<Duration>,
    ) {
        let ids: Vec<HostId> = hosts
            .iter()
            .filter_map(|h| self.names.get(h).copied())
            .collect();
        let now = Instant::now();
        for id in &ids {
            let last_ping = lock(&self.pings.0).get(id).copied();
            lock(&self.faults_seen).push((*id, kind, now, last_ping));
        }
        tracing::info!(?kind, ?hosts, ?vms, "fault");
        for &id in &ids {
            match kind {
                FaultKind::PowerOff => self.power_off(id),
                FaultKind::PowerOn => self.power_on(id),
                FaultKind::AgentCrash => {
                    self.world.with_host(id, |h| h.agent_alive = false);
                    self.stop_agent(id);
                }
                FaultKind::AgentRestart => {
                    let powered = self.world.with_host(id, |h| {
                        h.agent_alive = true;
                        h.powered
                    });
                    if powered == Some(true) && self.world.host(id).is_some_and(|h| h.kvm()) {
                        self.start_agent(id);
                    }
                }
                FaultKind::MgmtPartition => {
                    _ = self.world.with_host(id, |h| h.mgmt_partitioned = true)
                }
                FaultKind::MgmtHeal => _ = self.world.with_host(id, |h| h.mgmt_partitioned = false),
                FaultKind::NeighbourPartition => {
                    _ = self.world.with_host(id, |h| h.neighbour_partitioned = true)
                }
                FaultKind::NeighbourHeal => {
                    _ = self
                        .world
                        .with_host(id, |h| h.neighbour_partitioned = false)
                }
                FaultKind::StorageLoss => _ = self.world.with_host(id, |h| h.storage_ok = false),
                FaultKind::StorageHeal => _ = self.world.with_host(id, |h| h.storage_ok = true),
                FaultKind::PingLoss => _ = self.world.with_host(id, |h| h.ping_loss = true),
                FaultKind::PingDelay => _ = self.world.with_host(id, |h| h.ping_delay = delay),
                FaultKind::BmcUnreachable => _ = self.world.with_host(id, |h| h.bmc_ok = false),
                FaultKind::BmcOffFails => _ = self.world.with_host(id, |h| h.bmc_off_fails = true),
                FaultKind::BmcLies => _ = self.world.with_host(id, |h| h.bmc_lies = true),
                FaultKind::BmcStuck => _ = self.world.with_host(id, |h| h.bmc_stuck = true),
                FaultKind::NeighbourLies => {
                    _ = self.world.with_host(id, |h| h.neighbours_lie = true)
                }
                FaultKind::NoCapacity => _ = self.world.with_host(id, |h| h.no_capacity = true),
                FaultKind::VmCrash | FaultKind::ManagerRestart => {}
            }
        }
        let mut deaths = Vec::new();
        match kind {
            FaultKind::VmCrash => {
                for v in vms {
                    if let Some(id) = self.vm_names.get(v) {
                        deaths.extend(self.world.kill_vm(*id, Some(Cause::Crash)));
                    }
                }
            }
            FaultKind::ManagerRestart => {
                let downtime = self
                    .scenario
                    .faults
                    .iter()
                    .find(|f| {
                        f.kind == FaultKind::ManagerRestart
                            && f.at == now.saturating_duration_since(self.world.t0)
                    })
                    .and_then(|f| f.duration);
                // In its own task: the faults timed during the downtime happen at their instant.
                let c = Arc::clone(self);
                self.sim_tasks
                    .spawn(self.sim_tasks.token().child_token(), async move {
                        c.restart_manager(downtime).await;
                    });
            }
            _ => {}
        }
        self.after_change(&ids, deaths);
    }

    /// Ends a state fault after its duration.
    fn clear(&self, kind: FaultKind, hosts: &[String]) {
        for id in hosts.iter().filter_map(|h| self.names.get(h)) {
            self.world.with_host(*id, |h| match kind {
                FaultKind::PingLoss => h.ping_loss = false,
                FaultKind::PingDelay => h.ping_delay = None,
                FaultKind::BmcUnreachable => h.bmc_ok = true,
                FaultKind::BmcOffFails => h.bmc_off_fails = false,
                FaultKind::BmcLies => h.bmc_lies = false,
                FaultKind::BmcStuck => h.bmc_stuck = false,
                FaultKind::NeighbourLies => h.neighbours_lie = false,
                FaultKind::NoCapacity => h.no_capacity = false,
                _ => {}
            });
        }
    }

    fn report(&self, seed: u64) -> Report {
        if let Some(i) = lock(&self.instance).as_ref() {
            self.save_history(&i.agent);
        }
        let world = &self.world;
        let name_of: HashMap<HostId, String> =
            self.names.iter().map(|(n, id)| (*id, n.clone())).collect();
        let host_name = |h: Option<HostId>| h.and_then(|h| name_of.get(&h).cloned());
        let history = lock(&self.history).clone();
        let hosts: Vec<HostReport> = self
            .names
            .iter()
            .map(|(name, id)| HostReport {
                name: name.clone(),
                transitions: history
                    .get(id)
                    .into_iter()
                    .flatten()
                    .map(|c| TransitionReport {
                        at_s: at_s(world, c.at),
                        from: c.from.map(|s| s.to_string()),
                        event: c.event.to_string(),
                        to: c.to.to_string(),
                        reason: c.reason.clone(),
                    })
                    .collect(),
                bmc_calls: world.lock().bmc_calls.get(id).copied().unwrap_or(0),
            })
            .collect();
        let mut proofs: BTreeMap<VmId, Vec<ProofReport>> = BTreeMap::new();
        for item in self.work.items() {
            if let Some(p) = &item.fence_proof {
                proofs.entry(item.vm).or_default().push(ProofReport {
                    at_s: p.at.saturating_duration_since(SIM_EPOCH).as_millis() as f64 / 1000.0,
                    kind: p.kind.to_string(),
                    host: host_name(p.host),
                    evidence: p.evidence.clone(),
                    heartbeat_age_s: p.timings.map(|t| t.heartbeat_age.as_secs_f64()),
                    deadline_s: p.timings.map(|t| t.deadline.as_secs_f64()),
                });
            }
        }
        let state = world.lock();
        let vms: Vec<VmReport> = self
            .vm_names
            .iter()
            .filter_map(|(name, id)| {
                let v = state.vms.get(id)?;
                Some(VmReport {
                    name: name.clone(),
                    ha: v.ha,
                    placements: v
                        .placements
                        .iter()
                        .map(|p| PlacementReport {
                            at_s: at_s(world, p.at),
                            host: host_name(p.host),
                            state: format!("{:?}", p.state),
                        })
                        .collect(),
                    restarts: v
                        .restarts
                        .iter()
                        .map(|(at, from, to)| RestartReport {
                            at_s: at_s(world, *at),
                            from_host: host_name(*from),
                            to_host: host_name(Some(*to)).unwrap_or_default(),
                        })
                        .collect(),
                    proofs: proofs.remove(id).unwrap_or_default(),
                })
            })
            .collect();
        let fences = lock(&self.fences)
            .iter()
            .map(|f| FenceReport {
                at_s: at_s(world, f.at),
                host: host_name(Some(f.host)).unwrap_or_default(),
                method: f.method.into(),
                outcome: f.outcome.into(),
                evidence: f.evidence.clone(),
            })
            .collect();
        let alerts_raw = lock(&self.alerts.0).clone();
        let alerts: Vec<AlertReport> = alerts_raw
            .iter()
            .map(|a| AlertReport {
                at_s: at_s(world, a.at),
                kind: a.alert.kind.as_str().into(),
                host: host_name(a.alert.host),
                message: a.alert.message.clone(),
            })
            .collect();
        let detections = lock(&self.faults_seen)
            .iter()
            .filter(|(_, k, _, _)| {
                matches!(
                    k,
                    FaultKind::PowerOff
                        | FaultKind::AgentCrash
                        | FaultKind::MgmtPartition
                        | FaultKind::StorageLoss
                        | FaultKind::PingLoss
                        | FaultKind::PingDelay
                )
            })
            .map(|(id, kind, at, last_ping)| {
                let changes = history.get(id).map(Vec::as_slice).unwrap_or_default();
                let after: Vec<&StatusChange> = changes.iter().filter(|c| c.at >= *at).collect();
                Detection {
                    host: host_name(Some(*id)).unwrap_or_default(),
                    fault: format!("{kind:?}"),
                    fault_at_s: at_s(world, *at),
                    last_ping_s: last_ping.map(|t| at_s(world, t)),
                    flagged_at_s: after
                        .iter()
                        .find(|c| c.from != Some(c.to))
                        .map(|c| at_s(world, c.at)),
                    down_at_s: after
                        .iter()
                        .find(|c| c.to == Status::Down)
                        .map(|c| at_s(world, c.at)),
                }
            })
            .collect();

        let mut invariants = Invariants::default();
        for v in &state.violations {
            let inv = match v.invariant {
                "no_double_run" => &mut invariants.no_double_run,
                "no_unsafe_start" => &mut invariants.no_unsafe_start,
                "no_false_down" => &mut invariants.no_false_down,
                _ => &mut invariants.no_unwanted_restart,
            };
            inv.violations
                .push(format!("at {}: {}", clock(at_s(world, v.at)), v.detail));
        }
        invariants
            .no_false_down
            .violations
            .extend(self.false_downs(&state, &history));
        let (broken, not_judged) = self.liveness(&state);
        invariants.ha_liveness.violations = broken;
        invariants.ha_liveness.not_judged = not_judged;
        for (_, inv) in invariants.all_mut() {
            inv.ok = inv.violations.is_empty();
        }
        let expectations = self.expectations(&hosts, &vms, &alerts);
        drop(state);
        Report {
            scenario: self.scenario.name.clone(),
            seed,
            virtual_duration_s: self.scenario.duration.as_millis() as f64 / 1000.0,
            wall_ms: 0,
            hosts,
            vms,
            fences,
            detections,
            alerts,
            invariants,
            expectations,
        }
    }

    /// `ha_liveness`: the verdicts given at the deadlines, and the deaths whose deadline the
    /// run did not reach ("not judged", never silently passed).
    fn liveness(&self, state: &crate::world::State) -> (Vec<String>, Vec<String>) {
        let judged = lock(&self.judged);
        let broken = judged
            .iter()
            .filter_map(|(_, v)| v.as_ref().err().cloned())
            .collect();
        let done: std::collections::HashSet<(VmId, HostId, Instant)> =
            judged.iter().map(|(d, _)| (d.vm, d.host, d.at)).collect();
        let not_judged = lock(&self.deaths)
            .iter()
            .filter(|d| !done.contains(&(d.vm, d.host, d.at)))
            .map(|d| {
                format!(
                    "{} ({:?} on {} at {})",
                    state.vms.get(&d.vm).map_or("?", |v| v.name.as_str()),
                    d.cause,
                    state.hosts.get(&d.host).map_or("?", |h| h.name.as_str()),
                    clock(at_s(&self.world, d.at))
                )
            })
            .collect();
        (broken, not_judged)
    }

    /// Whether a death is an obligation at all: an HA VM, whose restart elsewhere the rules
    /// allow (shared root disk, no hypervisor HA of its own, VM-HA enabled; a crash on a live
    /// host only with `ha.vm.restart.hostup`).
    fn obliged(&self, d: &Death) -> bool {
        let config = &self.scenario.config;
        let Some(rec) = self.records.get(d.vm) else {
            return false;
        };
        let ha = self.world.lock().vms.get(&d.vm).is_some_and(|v| v.ha);
        ha && config.vm_ha_enabled
            && !rec.local_root_disk
            && !rec.hypervisor.has_native_ha()
            && (d.cause != Cause::Crash || config.ha_vm_restart_hostup)
    }

    /// Waits for the death's deadline (`sim.liveness.bound`, paused while the startup grace or
    /// the brake's own condition holds in truth) and judges it on the truth then.
    async fn judge(self: Arc<Self>, d: Death) {
        let bound = self.scenario.liveness_bound;
        let mut deadline = d.at + bound;
        loop {
            tokio::time::sleep_until(deadline).await;
            let next = d.at + bound + self.paused(&d, deadline);
            if next <= deadline {
                break;
            }
            deadline = next;
        }
        let verdict = self.obligation(&d);
        lock(&self.judged).push((d, verdict));
    }

    /// How long, between the death and `until`, the clock of its obligation was paused: the
    /// startup grace after each manager start, and the brake's condition holding in truth for
    /// the VM's cluster (more than `ha.brake.fraction` of its hosts, and at least two, really
    /// without power or out of the manager's reach: what the brake guards against is the
    /// manager's own partition).
    fn paused(&self, d: &Death, until: Instant) -> Duration {
        let grace = self.scenario.config.ha_startup_grace;
        let starts = lock(&self.starts).clone();
        let cluster = self
            .records
            .get(d.vm)
            .and_then(|r| r.cluster)
            .or_else(|| self.world.host(d.host).map(|h| h.cluster));
        let state = self.world.lock();
        let members: Vec<HostId> = cluster
            .and_then(|c| state.members.get(&c).cloned())
            .unwrap_or_default();
        let mut cuts: Vec<Instant> = vec![d.at, until];
        for s in &starts {
            cuts.push(*s);
            cuts.push(*s + grace);
        }
        for m in &members {
            cuts.extend(state.reach.get(m).into_iter().flatten().map(|r| r.since));
        }
        cuts.retain(|t| *t >= d.at && *t <= until);
        cuts.sort();
        cuts.dedup();
        let failed_at = |m: &HostId, t: Instant| {
            state
                .reach
                .get(m)
                .and_then(|log| log.iter().rev().find(|r| r.since <= t))
                .is_some_and(|r| !r.powered || !r.managed)
        };
        let fraction = self.scenario.config.ha_brake_fraction;
        let mut paused = Duration::ZERO;
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let in_grace = starts.iter().any(|s| a >= *s && a < *s + grace);
            let failed = members.iter().filter(|m| failed_at(m, a)).count();
            let braked = failed >= 2 && failed as f64 > fraction * members.len() as f64;
            if in_grace || braked {
                paused += b - a;
            }
        }
        paused
    }

    /// The obligation of a death at its deadline, judged on the truth now: met (the VM ran
    /// again, or its cut-off host is back with the VM on it), excused (no host can take it; no
    /// proof is obtainable under the spec's rules), or broken.
    fn obligation(&self, d: &Death) -> Result<String, String> {
        let state = self.world.lock();
        let (Some(v), Some(host)) = (state.vms.get(&d.vm), state.hosts.get(&d.host)) else {
            return Ok("gone".into());
        };
        let when = clock(at_s(&self.world, d.at));
        if let Some(p) = v.placements[d.placements_before.min(v.placements.len())..]
            .iter()
            .find(|p| p.state == VmState::Running)
        {
            return Ok(format!(
                "running again at {}",
                clock(at_s(&self.world, p.at))
            ));
        }
        let cut_now = state
            .reach
            .get(&d.host)
            .and_then(|l| l.last())
            .is_some_and(|r| r.cut_off);
        if d.cause == Cause::CutOff && v.copies.contains(&d.host) && !cut_now {
            return Ok("its host is reachable again, the VM on it".into());
        }
        // Another copy still runs where it can serve (started before this death: a double run
        // is no_double_run's business, not a lack of liveness).
        let serving = |h: &HostId| {
            *h != d.host
                && state
                    .reach
                    .get(h)
                    .and_then(|l| l.last())
                    .is_some_and(|r| r.powered && !r.cut_off)
        };
        if v.copies.iter().any(serving) {
            return Ok("another copy of it runs".into());
        }
        // Excuse: no host of its zone and hypervisor can take it, in truth (its cluster's
        // hosts are looked at first: most often one of them has room).
        let zone = self.zones.get(&d.host);
        let in_cluster = state
            .members
            .get(&host.cluster)
            .cloned()
            .unwrap_or_default();
        let candidates = in_cluster.iter().copied().chain(
            self.zones
                .iter()
                .filter(|(_, z)| Some(*z) == zone)
                .map(|(id, _)| *id),
        );
        let room = candidates
            .filter_map(|id| state.hosts.get(&id).map(|h| (id, h)))
            .any(|(id, h)| {
                id != d.host
                    && self.zones.get(&id) == zone
                    && h.hypervisor == host.hypervisor
                    && h.powered
                    && h.agent_alive
                    && !h.mgmt_partitioned
                    && !h.no_capacity
                    && (state.processes.get(&id).map_or(0, |p| p.len()) as u32) < h.capacity
            });
        if !room {
            return Ok("excused: no host can take it".into());
        }
        // Excuse: no proof obtainable under the spec's rules (the BMC unreachable and no
        // self-fence that a neighbour could vouch for; the host not back).
        let back = host.powered && host.agent_alive && !host.mgmt_partitioned;
        let reach = state.reach.get(&d.host).and_then(|l| l.last()).copied();
        if back
            && (host.ping_loss
                || host
                    .ping_delay
                    .is_some_and(|d| d >= self.scenario.config.ping_interval))
        {
            return Ok(
                "excused: its host's pings, and with them its VM reports, do not get through"
                    .into(),
            );
        }
        if !back && reach.is_some_and(|r| r.powered && r.reachable) {
            return Ok("excused: its host runs and its neighbours reach it, but the manager cannot: the rules allow no Down".into());
        }
        let beating = host.heartbeat.is_some_and(|t| {
            let staleness = if host.kvm() {
                self.scenario.sim.heartbeat_staleness
            } else {
                self.scenario.sim.xen_heartbeat_staleness
            };
            Instant::now().saturating_duration_since(t) <= staleness
        });
        if !back && cut_now && beating {
            return Ok(
                "excused: its cut-off host's heartbeat beats: the rules allow no Down".into(),
            );
        }
        let neighbour_up = |storage: bool| {
            in_cluster
                .iter()
                .filter_map(|id| state.hosts.get(id).map(|h| (id, h)))
                .any(|(id, h)| {
                    *id != d.host
                        && h.powered
                        && !h.neighbour_partitioned
                        && (!storage || h.storage_ok)
                })
        };
        let self_fence = !host.powered
            && ((host.kvm() && host.independent_self_fence && neighbour_up(true))
                || (host.hypervisor == HypervisorType::XenServer && neighbour_up(false)));
        let judgeable = host.kvm() || host.hypervisor == HypervisorType::XenServer || back;
        if !judgeable {
            return Ok("excused: no investigator can prove a host of this hypervisor down".into());
        }
        if !(back || host.bmc_ok || self_fence) {
            return Ok(
                "excused: no proof obtainable (BMC unreachable, no self-fence to vouch for)".into(),
            );
        }
        Err(format!(
            "{} ({:?} on {} at {when}) not running again within {}",
            v.name,
            d.cause,
            host.name,
            cloudha_protocol::duration::format(self.scenario.liveness_bound)
        ))
    }

    /// `no_false_down`: a host declared Down although it stayed powered and reachable for the
    /// whole window from the investigation's first probe to the verdict.
    fn false_downs(
        &self,
        state: &crate::world::State,
        history: &BTreeMap<HostId, Vec<StatusChange>>,
    ) -> Vec<String> {
        /// How far back an investigation's probes may start (CheckHealth's 50 s, and slack).
        const WINDOW: Duration = Duration::from_secs(55);
        let mut out = Vec::new();
        for (host, changes) in history {
            for c in changes
                .iter()
                .filter(|c| c.to == Status::Down && c.from != Some(Status::Down))
            {
                let t = c.at;
                let start = state
                    .probes
                    .get(host)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|p| *p <= t && *p + WINDOW >= t)
                    .min()
                    .unwrap_or(t);
                let log = state.reach.get(host).map(Vec::as_slice).unwrap_or_default();
                let at_start = log.iter().rev().find(|r| r.since <= start);
                let within = log.iter().filter(|r| r.since > start && r.since <= t);
                let live = |r: &crate::world::Reach| r.powered && r.reachable;
                if at_start.is_some_and(live) && within.clone().all(live) {
                    out.push(format!(
                        "at {}: {} declared Down although powered and reachable since {} ({})",
                        clock(at_s(&self.world, t)),
                        state.hosts.get(host).map_or("?", |h| h.name.as_str()),
                        clock(at_s(&self.world, start)),
                        c.reason
                    ));
                }
            }
        }
        out
    }

    fn expectations(
        &self,
        hosts: &[HostReport],
        vms: &[VmReport],
        alerts: &[AlertReport],
    ) -> Vec<ExpectationResult> {
        let fmt = |d: Duration| cloudha_protocol::duration::format(d);
        let secs = |d: Duration| d.as_millis() as f64 / 1000.0;
        self.scenario
            .expects
            .iter()
            .map(|e| match e {
                Expect::HostStatus {
                    host,
                    status,
                    after,
                    by,
                } => {
                    let h = hosts.iter().find(|h| &h.name == host);
                    let hit = h.and_then(|h| {
                        h.transitions.iter().find(|t| {
                            t.to == status.as_str() && t.at_s >= secs(*after) && t.at_s <= secs(*by)
                        })
                    });
                    let seen = h
                        .map(|h| {
                            h.transitions
                                .iter()
                                .map(|t| format!("{}@{}", t.to, clock(t.at_s)))
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    ExpectationResult {
                        text: format!(
                            "host {host} enters {status} between {} and {}",
                            fmt(*after),
                            fmt(*by)
                        ),
                        ok: hit.is_some(),
                        detail: hit.map_or(format!("not seen; statuses: [{seen}]"), |t| {
                            format!("entered {status} at {}", clock(t.at_s))
                        }),
                    }
                }
                Expect::HostNever { host, status } => {
                    let hit = hosts
                        .iter()
                        .find(|h| &h.name == host)
                        .and_then(|h| h.transitions.iter().find(|t| t.to == status.as_str()));
                    ExpectationResult {
                        text: format!("host {host} never enters {status}"),
                        ok: hit.is_none(),
                        detail: hit.map_or("never entered".into(), |t| {
                            format!("entered {status} at {}", clock(t.at_s))
                        }),
                    }
                }
                Expect::VmState {
                    vm,
                    state,
                    by,
                    on,
                    not_on,
                } => {
                    let v = vms.iter().find(|v| &v.name == vm);
                    let last =
                        v.and_then(|v| v.placements.iter().rev().find(|p| p.at_s <= secs(*by)));
                    let want = format!("{state:?}");
                    let ok = last.is_some_and(|p| {
                        p.state == want
                            && on.as_ref().is_none_or(|h| p.host.as_ref() == Some(h))
                            && not_on.as_ref().is_none_or(|h| p.host.as_ref() != Some(h))
                    });
                    let mut text = format!("vm {vm} is {want} by {}", fmt(*by));
                    if let Some(h) = on {
                        text.push_str(&format!(" on {h}"));
                    }
                    if let Some(h) = not_on {
                        text.push_str(&format!(" not on {h}"));
                    }
                    ExpectationResult {
                        text,
                        ok,
                        detail: last.map_or("no placement".into(), |p| {
                            format!(
                                "{} on {} since {}",
                                p.state,
                                p.host.as_deref().unwrap_or("-"),
                                clock(p.at_s)
                            )
                        }),
                    }
                }
                Expect::VmNotRestarted { vm } => {
                    let n = vms
                        .iter()
                        .find(|v| &v.name == vm)
                        .map_or(0, |v| v.restarts.len());
                    ExpectationResult {
                        text: format!("vm {vm} is never restarted"),
                        ok: n == 0,
                        detail: format!("{n} restarts"),
                    }
                }
                Expect::AlertCount { kind, min, max } => {
                    let n = alerts.iter().filter(|a| &a.kind == kind).count() as u64;
                    counted(
                        format!("{kind} alerts"),
                        n,
                        *min,
                        *max,
                        format!("{n} raised"),
                    )
                }
                Expect::ProofCount { kind, min, max } => {
                    let n = vms
                        .iter()
                        .flat_map(|v| &v.proofs)
                        .filter(|p| &p.kind == kind)
                        .count() as u64;
                    counted(
                        format!("HA work items with a {kind} proof"),
                        n,
                        *min,
                        *max,
                        format!("{n} recorded"),
                    )
                }
                Expect::BmcCalls { host, min, max } => {
                    let n = hosts
                        .iter()
                        .find(|h| &h.name == host)
                        .map_or(0, |h| h.bmc_calls);
                    counted(
                        format!("calls to the BMC of {host}"),
                        n,
                        *min,
                        *max,
                        format!("{n} calls"),
                    )
                }
            })
            .collect()
    }
}
