//! The HA side: every branch of §5.4 / §5.5, fencing, the brake, the second trigger, the
//! operator's actions and a manager restart over the same store. Paused time, fake and mock ports.
//!
//! This module holds the rig (a manager over in-memory stores, with the test kit's scripted
//! fencer and VM investigator and its recording orchestrator); its submodules hold the tests, by
//! topic.

mod brake;
mod cleanup;
mod manager;
mod restart;
mod second_trigger;
mod start_adversary;
mod start_unknown;
mod stop_migrate_destroy;

use std::sync::Arc;
use std::time::Duration;

use cloudha_ha::*;
use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use cloudha_testkit::{
    RecordingAlerts, RecordingVms, ScriptedFencer, ScriptedInvestigator, agent_over,
};
use tokio::time::sleep;

struct H {
    ha: HaManager,
    agent: AgentManager,
    hosts: Arc<InMemoryHostStore>,
    vms: Arc<RecordingVms>,
    work: Arc<InMemoryHaWorkStore>,
    alerts: Arc<RecordingAlerts>,
    verdict: Arc<ScriptedInvestigator>,
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
    let clock = cloudha_testkit::tokio_clock();
    for (id, cluster) in [(1, 1), (2, 1), (3, 1), (4, 1), (11, 2), (12, 2)] {
        let mut r = HostRecord::new(HostId(id), format!("h{id}"), HypervisorType::Kvm);
        r.cluster = Some(ClusterId(cluster));
        r.zone = Some(ZoneId(1));
        r.status = Some(Status::Up);
        hosts.insert(r);
    }
    let agent = agent_over(&config.liveness, &hosts, alerts.clone()).await;
    let vms = Arc::new(RecordingVms::new());
    for i in 0..vms_on_failed {
        vms.inner.upsert(vm(100 + i, FAILED, true));
    }
    let work = Arc::new(InMemoryHaWorkStore::new());
    let verdict = Arc::new(ScriptedInvestigator::new());
    let fencer = Arc::new(ScriptedFencer::new());
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
    vms: &Arc<RecordingVms>,
    work: &Arc<InMemoryHaWorkStore>,
    alerts: &Arc<RecordingAlerts>,
    verdict: &Arc<ScriptedInvestigator>,
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
        self.vms.start_count(VmId(vm))
    }
    fn vm(&self, vm: u64) -> VmRecord {
        self.vms.get(VmId(vm)).unwrap()
    }
    /// The stops, forced stops and destroys of a VM, in order.
    fn calls(&self, vm: u64) -> Vec<&'static str> {
        self.vms.calls(VmId(vm))
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
        self.alerts.all_kinds()
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
