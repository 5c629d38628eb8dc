//! Building the simulated cloud from a scenario, running it in paused time, and judging it.
//!
//! Here: the run's shared state ([`Cloud`]), the entry points, the building of the world and
//! its records from the scenario, the wiring of the real managers (started again on a
//! `manager_restart`), and the run itself (hosts' loops spawned, faults played at their
//! instants, the report taken at the end). Around it: `hosts` (what the simulated hosts do,
//! and the faults applied to them and cleared), `report` (the report assembled from the run's
//! records), `invariants` (the checker's own verdicts: `ha_liveness` and `no_false_down`) and
//! `expect` (the scenario's expectations checked against the report).

mod expect;
mod hosts;
mod invariants;
mod report;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cloudha_attache::{AgentHandle, ServerResource, Tasks};
use cloudha_ha::{
    Fencer, HaManager, HaPorts, InMemoryVms, NeighbourFencer, PowerFencer, XenPoolFencer,
};
use cloudha_liveness::{AgentManager, HostDownAlert, Oobm, Ports, StatusChange};
use cloudha_ports::{Clock, HostRecord, OwnerId, VmRecord};
use cloudha_protocol::*;
use cloudha_registry::Registry;
use cloudha_registry::{Interest, ListenerRegistry};
use tokio::time::Instant;

use crate::cloud::{
    FenceRecord, ManagerSlot, PingLog, RecordingAlerts, RecordingFencer, SimBmc, SimResource,
    SimVms,
};
use crate::report::*;
use crate::rng::Rng;
use crate::scenario::{FaultKind, Hypervisor, Scenario, SelfFence, Storage};
use crate::store::{InMemoryStores, StoreProvider, Stores};
use crate::world::{Death, HostTruth, Placement, VmTruth, World};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Instance {
    agent: AgentManager,
    ha: HaManager,
    registry: Arc<Registry>,
}

impl Instance {
    /// The manager process dies: every task ends at once, nothing is written on the way out
    /// (the agent manager's graceful stop would mark its hosts).
    async fn crash(self) {
        self.ha.stop().await;
        self.agent.tasks().shutdown().await;
        self.registry.shutdown().await;
    }
}

/// A host fault as it happened: the host, the kind, when, and the host's last ping before it.
type FaultSeen = (HostId, FaultKind, Instant, Option<Instant>);

/// Everything a run shares.
struct Cloud {
    scenario: Scenario,
    world: Arc<World>,
    /// Gives each manager instance its stores.
    provider: Arc<dyn StoreProvider>,
    /// The stores of the manager instance running (or last run).
    stores: Mutex<Stores>,
    /// A manager that could not start again (its store failed): the run is void.
    failure: Mutex<Option<String>>,
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
    rt.block_on(run(
        scenario.clone(),
        seed,
        Injected::default(),
        Arc::new(InMemoryStores::default()),
    ))
    .expect("the in-memory stores do not fail")
}

/// [`simulate`] with the managers' records in the stores `provider` gives (a durable store, for
/// example, wrapped in [`Outside`](crate::Outside)): the report is that of the in-memory run for
/// the same seed, and a `manager_restart` reopens the stores, so the new manager reads again
/// what the crashed one wrote.
///
/// # Errors
/// The store could not be opened or failed during the run (naming the store and what failed):
/// the run is void.
///
/// # Panics
/// If the runtime cannot be built.
pub fn simulate_on(
    scenario: &Scenario,
    seed: u64,
    provider: Arc<dyn StoreProvider>,
) -> Result<Report, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    // The provider outlives the runtime: its last reference goes here, outside any async
    // context (a provider may own a runtime of its own, which cannot be dropped inside one).
    let keep = provider.clone();
    let report = rt.block_on(run(scenario.clone(), seed, Injected::default(), provider));
    drop(rt);
    drop(keep);
    report
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
    rt.block_on(run(
        scenario.clone(),
        seed,
        injected,
        Arc::new(InMemoryStores::default()),
    ))
    .expect("the in-memory stores do not fail")
}

async fn run(
    scenario: Scenario,
    seed: u64,
    injected: Injected,
    provider: Arc<dyn StoreProvider>,
) -> Result<Report, String> {
    let t0 = Instant::now();
    let world = Arc::new(World::new(t0, scenario.config.ha.force_ha, scenario.sim));
    let stores = provider.open()?;
    let mut host_records = Vec::new();
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
            host_records.push(record);
            records.set_capacity(id, c.capacity_per_host as usize);
            for j in 1..=c.vms_per_host {
                let vid = VmId(next_vm);
                next_vm += 1;
                let vname = format!("{name}-vm{j}");
                vm_names.insert(vname.clone(), vid);
                let ha = j <= ha_vms;
                records.upsert({
                    let mut r = VmRecord::new(vid, vname.clone(), hv);
                    r.host = Some(id);
                    r.state = VmState::Running;
                    r.ha_enabled = ha;
                    r.local_root_disk = c.storage == Storage::Local;
                    r.cluster = Some(cluster);
                    r.zone = Some(zone);
                    r
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
    for record in &host_records {
        stores.hosts.upsert(record).await.map_err(|e| {
            provider
                .failure()
                .unwrap_or_else(|| format!("setting up host {}: {e}", record.name))
        })?;
    }
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
            provider,
            stores: Mutex::new(stores),
            failure: Mutex::new(None),
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

    cloud.start_manager(true).await?;
    let kvm: Vec<HostId> = cloud
        .world
        .lock()
        .hosts
        .iter()
        .filter(|(_, h)| h.kvm())
        .map(|(id, _)| *id)
        .collect();
    for host in kvm {
        let offset = lock(&cloud.rng).below(cloud.scenario.config.liveness.ping_interval);
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
    let work = lock(&cloud.stores).work.clone();
    let items = work.list().await;
    let report = items.map(|items| cloud.report(seed, &items));
    let instance = lock(&cloud.instance).take();
    if let Some(i) = instance {
        i.crash().await;
    }
    cloud.sim_tasks.shutdown().await;
    // A failure of the store voids the run, whatever else went wrong first.
    if let Some(failure) = cloud
        .provider
        .failure()
        .or_else(|| lock(&cloud.failure).take())
    {
        return Err(failure);
    }
    report.map_err(|e| format!("reading the work items for the report: {e}"))
}

impl Cloud {
    /// Starts a manager instance over the stores it was given (`first`: the run's first, which
    /// adds the direct hosts' records).
    ///
    /// # Errors
    /// A store that failed, naming it.
    async fn start_manager(self: &Arc<Self>, first: bool) -> Result<(), String> {
        let stores = if first {
            lock(&self.stores).clone()
        } else {
            let stores = self.provider.open()?;
            *lock(&self.stores) = stores.clone();
            stores
        };
        let failed = |e: &dyn std::fmt::Display| {
            self.provider
                .failure()
                .unwrap_or_else(|| format!("starting the manager: {e}"))
        };
        let config = self.scenario.config.clone();
        let registry = Arc::new(Registry::default());
        registry.register(self.pings.clone(), Interest::COMMANDS, false);
        let clock: Arc<dyn Clock> = Arc::new(self.world.clock);
        let oobm = Arc::new(Oobm::new(
            self.bmc.clone(),
            config.liveness.oobm_action_timeout,
            clock.clone(),
        ));
        let agent = AgentManager::new(
            config.liveness.clone(),
            Ports::new(
                stores.hosts.clone(),
                registry.clone(),
                self.alerts.clone(),
                clock.clone(),
            )
            .with_oobm(oobm.clone())
            .with_host_down_alert(HostDownAlert::LeftToHa),
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
                agent.hosts(),
                clock.clone(),
                &config,
            ))),
            recorded(Arc::new(XenPoolFencer::new(
                agent.commander(),
                agent.hosts(),
                clock.clone(),
                &config,
            ))),
            recorded(Arc::new(PowerFencer::new(oobm))),
        ];
        let ha = HaManager::new(
            config.ha.clone(),
            OwnerId(1),
            &agent,
            HaPorts::new(
                stores.work.clone(),
                self.vms.clone(),
                fencers,
                self.alerts.clone(),
            ),
        );
        for (id, r) in &self.resources {
            if r.direct {
                let resource: Arc<dyn ServerResource> = r.clone();
                if first {
                    let record = stores
                        .hosts
                        .get(*id)
                        .await
                        .map_err(|e| failed(&e))?
                        .ok_or_else(|| {
                            format!("host {id}: not found in the store it was added to")
                        })?;
                    agent
                        .add_direct_host(record, resource)
                        .await
                        .map_err(|e| failed(&e))?;
                } else {
                    agent.register_direct(*id, resource);
                }
            }
        }
        lock(&self.starts).push(Instant::now());
        agent.start().await.map_err(|e| failed(&e))?;
        ha.start().await.map_err(|e| failed(&e))?;
        self.slot.set(Some((agent.sink(), agent.tasks().clone())));
        *lock(&self.instance) = Some(Instance {
            agent,
            ha,
            registry,
        });
        Ok(())
    }

    async fn restart_manager(self: &Arc<Self>, downtime: Option<Duration>) {
        self.slot.set(None);
        let old = lock(&self.instance).take();
        if let Some(i) = old {
            self.save_history(&i.agent);
            i.crash().await;
        }
        if let Some(d) = downtime {
            tokio::time::sleep(d).await;
        }
        if let Err(e) = self.start_manager(false).await {
            lock(&self.failure).get_or_insert(e);
        }
    }

    fn save_history(&self, agent: &AgentManager) {
        let mut h = lock(&self.history);
        for id in self.names.values() {
            h.entry(*id).or_default().extend(agent.history(*id));
        }
    }
}
