//! The HA side: every branch of §5.4 / §5.5, fencing, the brake, the second trigger, the
//! operator's actions and a manager restart over the same store. Paused time, fake and mock ports.
//!
//! This module holds the rig (a manager over in-memory stores, a scripted fencer and VM
//! investigator, a counting orchestrator); its submodules hold the tests, by topic.

mod brake;
mod cleanup;
mod manager;
mod restart;
mod second_trigger;
mod stop_migrate_destroy;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudha_ha::*;
use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use tokio::time::sleep;

use crate::support::{RecordingAlerts, agent_over};

/// A VM investigator whose verdict the test sets.
struct VmVerdicts(Mutex<VmVerdict>);

#[async_trait::async_trait]
impl Investigator for VmVerdicts {
    fn name(&self) -> &'static str {
        "ScriptedVm"
    }
    async fn host_status(&self, _: &HostRecord) -> Option<Finding> {
        None
    }
    async fn vm_alive(&self, _: VmId, _: &HostRecord) -> VmVerdict {
        *self.0.lock().unwrap()
    }
}

/// A fencer whose outcome the test sets; counts calls; may take time.
struct ScriptedFencer {
    outcome: Mutex<FenceOutcome>,
    calls: AtomicUsize,
    delay: Duration,
}

#[async_trait::async_trait]
impl Fencer for ScriptedFencer {
    fn name(&self) -> &'static str {
        "Scripted"
    }
    async fn fence(&self, _: &VmRecord, _: &HostRecord) -> FenceOutcome {
        self.calls.fetch_add(1, Ordering::SeqCst);
        sleep(self.delay).await;
        self.outcome.lock().unwrap().clone()
    }
}

/// The in-memory orchestrator, counting starts per VM; a start may take time. Stops, forced
/// stops and destroys are logged in order.
struct CountingVms {
    inner: InMemoryVms,
    starts: Mutex<HashMap<VmId, Vec<StartParams>>>,
    start_delay: Mutex<Duration>,
    calls: Mutex<Vec<(VmId, &'static str)>>,
}

impl CountingVms {
    fn log(&self, vm: VmId, call: &'static str) {
        self.calls.lock().unwrap().push((vm, call));
    }
}

#[async_trait::async_trait]
impl VmOrchestrator for CountingVms {
    fn get(&self, vm: VmId) -> Option<VmRecord> {
        self.inner.get(vm)
    }
    fn vms_on_host(&self, host: HostId) -> Vec<VmRecord> {
        self.inner.vms_on_host(host)
    }
    fn running_on(&self, host: HostId) -> Vec<VmId> {
        self.inner.running_on(host)
    }
    async fn force_stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError> {
        self.log(vm, "force_stop");
        self.inner.force_stop(vm).await
    }
    async fn stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError> {
        self.log(vm, "stop");
        self.inner.stop(vm).await
    }
    async fn start(
        &self,
        vm: VmId,
        params: StartParams,
        proof: &DeathProof,
    ) -> Result<HostId, StartError> {
        let delay = *self.start_delay.lock().unwrap();
        sleep(delay).await;
        let r = self.inner.start(vm, params.clone(), proof).await;
        if r.is_ok() {
            self.starts
                .lock()
                .unwrap()
                .entry(vm)
                .or_default()
                .push(params);
        }
        r
    }
    async fn migrate_away(
        &self,
        vm: VmId,
        from: HostId,
        c: Vec<HostId>,
    ) -> Result<HostId, StartError> {
        self.inner.migrate_away(vm, from, c).await
    }
    async fn destroy(&self, vm: VmId, expunge: Expunge) -> Result<(), OrchestratorError> {
        let call = match expunge {
            Expunge::Now => "expunge",
            Expunge::Later => "destroy",
        };
        self.log(vm, call);
        self.inner.destroy(vm, expunge).await
    }
}

struct H {
    ha: HaManager,
    agent: AgentManager,
    hosts: Arc<InMemoryHostStore>,
    vms: Arc<CountingVms>,
    work: Arc<InMemoryHaWorkStore>,
    alerts: Arc<RecordingAlerts>,
    verdict: Arc<VmVerdicts>,
    fencer: Arc<ScriptedFencer>,
    config: Config,
    clock: TokioClock,
}

const FAILED: HostId = HostId(1);

fn config() -> Config {
    let mut c = Config::default();
    c.ha.ha_startup_grace = Duration::ZERO;
    c
}

/// Cluster 1: hosts 1..=4 (KVM, Up) and cluster 2: hosts 11..=12, zone 1. VM 100+i on host 1.
async fn build(config: Config, vms_on_failed: u64) -> H {
    let hosts = Arc::new(InMemoryHostStore::new());
    let alerts = Arc::new(RecordingAlerts::default());
    let clock = crate::support::tokio_clock();
    for (id, cluster) in [(1, 1), (2, 1), (3, 1), (4, 1), (11, 2), (12, 2)] {
        let mut r = HostRecord::new(HostId(id), format!("h{id}"), HypervisorType::Kvm);
        r.cluster = Some(ClusterId(cluster));
        r.zone = Some(ZoneId(1));
        r.status = Some(Status::Up);
        hosts.insert(r);
    }
    let agent = agent_over(&config.liveness, &hosts, alerts.clone()).await;
    let vms = Arc::new(CountingVms {
        inner: InMemoryVms::new(),
        starts: Mutex::new(HashMap::new()),
        start_delay: Mutex::new(Duration::ZERO),
        calls: Mutex::new(Vec::new()),
    });
    for i in 0..vms_on_failed {
        vms.inner.upsert(vm(100 + i, FAILED, true));
    }
    let work = Arc::new(InMemoryHaWorkStore::new());
    let verdict = Arc::new(VmVerdicts(Mutex::new(VmVerdict::Unknown)));
    let fencer = Arc::new(ScriptedFencer {
        outcome: Mutex::new(FenceOutcome::Fenced(FenceEvidence::Power {
            evidence: "test".into(),
        })),
        calls: AtomicUsize::new(0),
        delay: Duration::ZERO,
    });
    let ha = new_manager(&config, &agent, &vms, &work, &alerts, &verdict, &fencer);
    H {
        ha,
        agent,
        hosts,
        vms,
        work,
        alerts,
        verdict,
        fencer,
        config,
        clock,
    }
}

/// Lets the HA manager's tasks take what is ready (the status follower, a scheduling) without
/// moving paused time.
async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

fn new_manager(
    config: &Config,
    agent: &AgentManager,
    vms: &Arc<CountingVms>,
    work: &Arc<InMemoryHaWorkStore>,
    alerts: &Arc<RecordingAlerts>,
    verdict: &Arc<VmVerdicts>,
    fencer: &Arc<ScriptedFencer>,
) -> HaManager {
    HaManager::new(
        config.ha.clone(),
        OwnerId(7),
        agent,
        HaPorts::new(
            work.clone(),
            vms.clone(),
            vec![fencer.clone()],
            alerts.clone(),
        )
        .with_investigators(vec![verdict.clone()]),
    )
}

fn vm(id: u64, host: HostId, ha: bool) -> VmRecord {
    {
        let mut r = VmRecord::new(VmId(id), format!("vm{id}"), HypervisorType::Kvm);
        r.host = Some(host);
        r.state = VmState::Running;
        r.update_count = 1;
        r.ha_enabled = ha;
        r.cluster = Some(ClusterId(1));
        r.zone = Some(ZoneId(1));
        r
    }
}

impl H {
    /// The agent manager moves `id` to Down; a started HA manager schedules its VMs.
    async fn host_down(&self, id: HostId) {
        self.agent.apply(id, Event::HostDown, "test").await.unwrap();
        settle().await;
    }
    /// `id` went Down before this HA manager was built: the agent manager moves it, and a new HA
    /// manager (which follows changes from now on) replaces the old one, which never started.
    async fn mark_down(&mut self, id: HostId) {
        self.agent.apply(id, Event::HostDown, "test").await.unwrap();
        self.ha = new_manager(
            &self.config,
            &self.agent,
            &self.vms,
            &self.work,
            &self.alerts,
            &self.verdict,
            &self.fencer,
        );
    }
    /// The agent manager moves `id` back Up (a reconnect).
    async fn host_up(&self, id: HostId) {
        self.agent
            .apply(id, Event::AgentConnected, "test")
            .await
            .unwrap();
        self.agent.apply(id, Event::Ready, "test").await.unwrap();
        settle().await;
    }
    async fn fail_host(&self) {
        self.host_down(FAILED).await;
    }
    fn item(&self, vm: u64) -> WorkItem {
        self.work.items_of(VmId(vm)).pop().expect("an item")
    }
    fn starts(&self, vm: u64) -> usize {
        self.vms
            .starts
            .lock()
            .unwrap()
            .get(&VmId(vm))
            .map_or(0, Vec::len)
    }
    fn vm(&self, vm: u64) -> VmRecord {
        self.vms.get(VmId(vm)).unwrap()
    }
    /// The stops, forced stops and destroys of a VM, in order.
    fn calls(&self, vm: u64) -> Vec<&'static str> {
        self.vms
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(v, _)| *v == VmId(vm))
            .map(|(_, c)| *c)
            .collect()
    }
    /// The last history entry of an item.
    fn last_note(&self, id: WorkId) -> String {
        self.work
            .item(id)
            .unwrap()
            .history
            .last()
            .unwrap()
            .what
            .clone()
    }
    fn kinds(&self) -> Vec<AlertKind> {
        self.alerts
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.kind)
            .collect()
    }
    async fn shutdown(self) {
        self.ha.stop().await;
        self.agent.stop().await;
    }
}

/// An item for `rec` as another server (or an earlier run) left it in the store.
fn stored_item(
    work_type: WorkType,
    step: WorkStep,
    rec: &VmRecord,
    tries: u32,
    time_to_try: Timestamp,
) -> WorkItem {
    let mut i = WorkItem::new(
        work_type,
        step,
        WorkReason::HostDown,
        rec,
        rec.host.or(rec.last_host),
        time_to_try,
    );
    i.tries = tries;
    i
}
