//! An embedder's control plane plugging cloudha into its own records: its own host store and
//! VM orchestrator behind cloudha's ports, an agent manager and an HA manager composed over
//! them, one host proven Down, and its HA VM restarted elsewhere with a recorded proof.
//!
//! Run with `cargo run -p cloudha-ha --example embedder`. The stores here keep their data in
//! maps behind a mutex, as a stand-in for the embedder's database: every call is async and
//! fallible, as a real one is.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudha_ha::Config;
use cloudha_ha::{
    DeathProof, Expunge, FenceEvidence, FenceOutcome, Fencer, HaManager, HaPorts,
    OrchestratorError, StartError, StartParams, VmOrchestrator,
};
use cloudha_liveness::{AgentManager, HostDownAlert, Ports};
use cloudha_ports::{
    HostRecord, HostStore, InMemoryHaWorkStore, LogAlerts, OwnerId, StoreError, SystemClock,
    Timestamp, VmRecord,
};
use cloudha_protocol::{
    ClusterId, Event, HostId, HypervisorType, ResourceState, Status, VmId, VmState,
};
use cloudha_registry::Registry;

/// The embedder's host table.
#[derive(Default)]
struct MyHosts(Mutex<BTreeMap<HostId, HostRecord>>);

#[async_trait::async_trait]
impl HostStore for MyHosts {
    async fn get(&self, id: HostId) -> Result<Option<HostRecord>, StoreError> {
        Ok(self.0.lock().unwrap().get(&id).cloned())
    }
    async fn list(&self) -> Result<Vec<HostRecord>, StoreError> {
        Ok(self.0.lock().unwrap().values().cloned().collect())
    }
    async fn upsert(&self, record: &HostRecord) -> Result<(), StoreError> {
        self.0.lock().unwrap().insert(record.id, record.clone());
        Ok(())
    }
    async fn update_status(
        &self,
        id: HostId,
        expected: Option<Status>,
        update_count: u64,
        to: Status,
        event: Event,
        now: Timestamp,
    ) -> Result<HostRecord, StoreError> {
        // `UPDATE host SET status = ?, update_count = update_count + 1 WHERE id = ? AND
        // status = ? AND update_count = ?`: a compare-and-set.
        let mut hosts = self.0.lock().unwrap();
        let h = hosts.get_mut(&id).ok_or(StoreError::UnknownHost(id))?;
        if h.status != expected || h.update_count != update_count {
            return Err(StoreError::Conflict {
                host: id,
                expected,
                update_count,
            });
        }
        h.apply_status(to, event, now);
        Ok(h.clone())
    }
    async fn set_resource_state(&self, id: HostId, state: ResourceState) -> Result<(), StoreError> {
        let mut hosts = self.0.lock().unwrap();
        hosts
            .get_mut(&id)
            .ok_or(StoreError::UnknownHost(id))?
            .resource_state = state;
        Ok(())
    }
    async fn set_last_pings(&self, pings: &[(HostId, Timestamp)]) -> Result<(), StoreError> {
        let mut hosts = self.0.lock().unwrap();
        for (id, at) in pings {
            if let Some(h) = hosts.get_mut(id) {
                h.last_ping = Some(*at);
            }
        }
        Ok(())
    }
}

/// The embedder's VM service: it starts a VM only with cloudha's proof that the old copy is dead,
/// and logs that proof with the start.
#[derive(Default)]
struct MyVms(Mutex<BTreeMap<VmId, VmRecord>>);

impl MyVms {
    fn change(
        &self,
        vm: VmId,
        f: impl FnOnce(&mut VmRecord),
    ) -> Result<VmRecord, OrchestratorError> {
        let mut vms = self.0.lock().unwrap();
        let v = vms
            .get_mut(&vm)
            .ok_or(OrchestratorError::new(vm, "no such VM"))?;
        f(v);
        v.update_count += 1;
        Ok(v.clone())
    }
}

#[async_trait::async_trait]
impl VmOrchestrator for MyVms {
    fn get(&self, vm: VmId) -> Option<VmRecord> {
        self.0.lock().unwrap().get(&vm).cloned()
    }
    fn vms_on_host(&self, host: HostId) -> Vec<VmRecord> {
        let vms = self.0.lock().unwrap();
        vms.values()
            .filter(|v| v.host == Some(host))
            .cloned()
            .collect()
    }
    fn running_on(&self, host: HostId) -> Vec<VmId> {
        let vms = self.0.lock().unwrap();
        vms.values()
            .filter(|v| v.host == Some(host) && v.state == VmState::Running)
            .map(|v| v.id)
            .collect()
    }
    async fn force_stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError> {
        self.change(vm, |v| {
            v.state = VmState::Stopped;
            v.last_host = v.host.take();
        })
    }
    async fn stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError> {
        self.force_stop(vm).await
    }
    async fn start(
        &self,
        vm: VmId,
        params: StartParams,
        proof: &DeathProof,
    ) -> Result<HostId, StartError> {
        let to = *params
            .candidates
            .first()
            .ok_or_else(|| StartError::InsufficientCapacity("no candidate".into()))?;
        // One lock for the check and the write: a key already committed with the record gets
        // that start's answer, never a second start.
        let mut vms = self.0.lock().unwrap();
        let v = vms
            .get_mut(&vm)
            .ok_or_else(|| StartError::Failed(format!("no such VM {vm}")))?;
        if v.start_key == Some(params.key) {
            return v
                .host
                .filter(|_| v.state == VmState::Running)
                .ok_or_else(|| {
                    StartError::Failed(format!("start {} was made already", params.key))
                });
        }
        println!("start {vm} on {to} (key {}): {proof}", params.key);
        v.state = VmState::Running;
        v.host = Some(to);
        v.start_key = Some(params.key);
        v.update_count += 1;
        Ok(to)
    }
    async fn migrate_away(
        &self,
        _vm: VmId,
        _from: HostId,
        _candidates: Vec<HostId>,
    ) -> Result<HostId, StartError> {
        Err(StartError::Failed(
            "live migration is not offered here".into(),
        ))
    }
    async fn destroy(&self, vm: VmId, _expunge: Expunge) -> Result<(), OrchestratorError> {
        self.change(vm, |v| v.state = VmState::Destroyed)
            .map(|_| ())
    }
}

/// The embedder's fencing: its BMC tooling powered the host off and read it back Off.
struct MyPowerFencer;

#[async_trait::async_trait]
impl Fencer for MyPowerFencer {
    fn name(&self) -> &'static str {
        "MyPowerFencer"
    }
    async fn fence(&self, _vm: &VmRecord, host: &HostRecord) -> FenceOutcome {
        FenceOutcome::Fenced(FenceEvidence::Power {
            evidence: format!("{} powered off through its BMC, read back Off", host.name),
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let config = {
        let mut c = Config::default();
        c.ha.ha_startup_grace = Duration::ZERO;
        c
    };
    let hosts = Arc::new(MyHosts::default());
    let vms = Arc::new(MyVms::default());
    for id in 1..=3 {
        let mut r = HostRecord::new(HostId(id), format!("kvm-{id}"), HypervisorType::Kvm);
        r.cluster = Some(ClusterId(1));
        r.status = Some(Status::Up);
        hosts.upsert(&r).await.expect("stored");
    }
    vms.0.lock().unwrap().insert(VmId(100), {
        let mut r = VmRecord::new(VmId(100), "web-1", HypervisorType::Kvm);
        r.host = Some(HostId(1));
        r.state = VmState::Running;
        r.update_count = 1;
        r.ha_enabled = true;
        r.cluster = Some(ClusterId(1));
        r
    });

    // Liveness over the embedder's host table; HA over the agent manager and its VM service.
    let agent = AgentManager::new(
        config.liveness.clone(),
        Ports::new(
            hosts.clone(),
            Arc::new(Registry::default()),
            Arc::new(LogAlerts),
            Arc::new(SystemClock),
        )
        .with_host_down_alert(HostDownAlert::LeftToHa),
    )
    .expect("a valid config");
    let ha = HaManager::new(
        config.ha,
        OwnerId(1),
        &agent,
        HaPorts::new(
            Arc::new(InMemoryHaWorkStore::new()),
            vms.clone(),
            vec![Arc::new(MyPowerFencer)],
            Arc::new(LogAlerts),
        ),
    );
    agent.start().await.expect("the host table loads");
    ha.start().await.expect("a new HA manager starts");
    // A real deployment gives `agent.sink()` to its agent listener and the agents' pings move
    // the hosts; here the embedder says so. At start every host got ManagementServerDown
    // (Disconnected, a ping deadline of now + T); hosts 2 and 3 answer again.
    for id in [2, 3] {
        agent
            .apply(HostId(id), Event::Ping, "the agent answered")
            .await
            .expect("a table transition");
    }
    // Host 1 is proven Down (by investigation, in a real deployment): its VMs go to HA.
    agent
        .apply(
            HostId(1),
            Event::HostDown,
            "proven down by the embedder's checks",
        )
        .await
        .expect("a table transition");
    for _ in 0..100 {
        if vms
            .get(VmId(100))
            .is_some_and(|v| v.host != Some(HostId(1)) && v.state == VmState::Running)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let vm = vms.get(VmId(100)).expect("kept");
    println!("{} is {:?} on {:?}", vm.name, vm.state, vm.host);
    assert_eq!(vm.state, VmState::Running);
    assert_ne!(vm.host, Some(HostId(1)), "restarted elsewhere");
    ha.stop().await;
    agent.stop().await;
}
