//! Adversarial tests of the async host store, the status stream and the HA manager's lifecycle:
//! a store that loses a reply after committing, answers late, conflicts for ever or fails reads;
//! concurrent writes on one host; HA managers stopped, restarted or built after a Down.
//! `regression_*` tests each caught a defect when written (a lost Down, a Down never scheduled
//! after an HA restart, a cache older than the store, a host stuck Connecting); `robust_*`
//! confirm what held.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cloudha_ha::*;
use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use tokio::time::sleep;

use cloudha_testkit::*;

fn vm_on(id: u64, host: HostId, hypervisor: HypervisorType) -> VmRecord {
    {
        let mut r = VmRecord::new(VmId(id), format!("vm{id}"), hypervisor);
        r.host = Some(host);
        r.state = VmState::Running;
        r.update_count = 1;
        r.ha_enabled = true;
        r.cluster = Some(ClusterId(1));
        r.zone = Some(ZoneId(1));
        r
    }
}

fn ha_config() -> Config {
    let mut c = Config::default();
    c.ha.ha_startup_grace = Duration::ZERO;
    c
}

fn ha_over(
    agent: &AgentManager,
    owner: u64,
    vms: &Arc<InMemoryVms>,
    work: &Arc<InMemoryHaWorkStore>,
) -> HaManager {
    HaManager::new(
        ha_config().ha,
        OwnerId(owner),
        agent,
        HaPorts::new(
            work.clone(),
            vms.clone(),
            vec![Arc::new(ScriptedFencer::new()) as Arc<dyn Fencer>],
            Arc::new(RecordingAlerts::default()),
        )
        .with_investigators(Vec::new()),
    )
}

async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

/// KVM hosts 1..=3 Up in cluster 1, VM 100 on host 1.
fn kvm_fleet() -> (
    Arc<InMemoryHostStore>,
    Arc<InMemoryVms>,
    Arc<InMemoryHaWorkStore>,
) {
    let hosts = Arc::new(InMemoryHostStore::new());
    for id in 1..=3 {
        let mut r = HostRecord::new(HostId(id), format!("h{id}"), HypervisorType::Kvm);
        r.cluster = Some(ClusterId(1));
        r.pod = Some(PodId(1));
        r.zone = Some(ZoneId(1));
        r.status = Some(Status::Up);
        hosts.insert(r);
    }
    let vms = Arc::new(InMemoryVms::new());
    vms.upsert(vm_on(100, HostId(1), HypervisorType::Kvm));
    (hosts, vms, Arc::new(InMemoryHaWorkStore::new()))
}

// ---------------------------------------------------------------------------------------------
// (b) A lost reply on the Down write: the store commits Down, the manager sees an error. The
// next round reloads Down from the store on the conflict and applies Down → Down, which HA
// ignores (`from == Down`). The host is Down everywhere, its VMs are never scheduled.
// ---------------------------------------------------------------------------------------------
#[tokio::test(start_paused = true)]
async fn regression_a_lost_reply_on_the_down_write_loses_the_down_for_ha() {
    let (h, s) = FaultyHosts::harness();
    h.manager.start().await.unwrap();
    let host = h.add_up(1, HostType::Routing, ResourceState::Enabled).await;
    let vms = Arc::new(InMemoryVms::new());
    vms.upsert(vm_on(100, HostId(1), HypervisorType::XenServer));
    let work = Arc::new(InMemoryHaWorkStore::new());
    let ha = ha_over(&h.manager, 7, &vms, &work);
    ha.start().await.unwrap();

    h.set_verdict(Some(HostVerdict::Down));
    *s.lose_reply_on.lock().unwrap() = Some(Event::HostDown);
    host.power_off();
    sleep(Config::default().liveness.ping_deadline() + Duration::from_secs(5)).await;
    assert_eq!(
        h.status(HostId(1)),
        Some(Status::Down),
        "the store committed Down"
    );
    // (c) for one ping interval the cache says Up while the store says Down (the dead host is a
    // placement candidate and its pings would count as an Up host's).
    let cached = h.manager.hosts().status(HostId(1));

    sleep(Config::default().liveness.ping_interval * 3).await;
    assert_eq!(h.manager.hosts().status(HostId(1)), Some(Status::Down));
    let events = h.events(HostId(1));
    assert!(
        !work.items_of(VmId(100)).is_empty(),
        "VM 100 of the Down host is never scheduled; cache said {cached:?} after the lost reply; \
         history {events:?}; RecordingHa saw {:?}",
        h.scheduled()
    );
    ha.stop().await;
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// (b)/(f) A Down the HA manager has not yet turned into work is lost when the HA manager stops
// (a graceful restart of the management server): the status stream lives in memory only, the
// agent manager's start skips Down hosts and the new HA manager follows changes "from now on".
// ---------------------------------------------------------------------------------------------
#[tokio::test(start_paused = true)]
async fn regression_a_down_queued_when_ha_stops_is_never_scheduled_after_restart() {
    let config = ha_config();
    let (hosts, vms, work) = kvm_fleet();
    let agent = agent_over(
        &config.liveness,
        &hosts,
        Arc::new(RecordingAlerts::default()),
    )
    .await;
    let ha = ha_over(&agent, 7, &vms, &work);
    ha.start().await.unwrap();
    // The host is proven Down; the server stops before HA's status task ran.
    agent
        .apply(HostId(1), Event::HostDown, "proven down")
        .await
        .unwrap();
    ha.stop().await;
    agent.stop().await;
    assert_eq!(hosts.status(HostId(1)), Some(Status::Down));
    assert!(
        work.items().is_empty(),
        "no work was stored before the stop"
    );

    // The server restarts over the same stores.
    let agent2 = agent_over(
        &config.liveness,
        &hosts,
        Arc::new(RecordingAlerts::default()),
    )
    .await;
    let ha2 = ha_over(&agent2, 7, &vms, &work);
    agent2.start().await.unwrap();
    ha2.start().await.unwrap();
    sleep(Duration::from_secs(600)).await;
    assert!(
        !work.items_of(VmId(100)).is_empty(),
        "host 1 is Down in the store, VM 100 still Running on it per the records ({:?}), and no \
         HA work exists: it is never restarted",
        vms.get(VmId(100)).map(|v| (v.state, v.host))
    );
    ha2.stop().await;
    agent2.stop().await;
}

// ---------------------------------------------------------------------------------------------
// (b)/(f) Same loss in one process: a Down emitted after an HA manager stopped and before its
// replacement is built (a second HaManager over the same agent) is never scheduled.
// ---------------------------------------------------------------------------------------------
#[tokio::test(start_paused = true)]
async fn regression_a_second_ha_manager_ignores_hosts_already_down() {
    let config = ha_config();
    let (hosts, vms, work) = kvm_fleet();
    let agent = agent_over(
        &config.liveness,
        &hosts,
        Arc::new(RecordingAlerts::default()),
    )
    .await;
    let ha = ha_over(&agent, 7, &vms, &work);
    ha.start().await.unwrap();
    ha.stop().await;
    agent
        .apply(HostId(1), Event::HostDown, "proven down")
        .await
        .unwrap();
    let ha2 = ha_over(&agent, 7, &vms, &work);
    ha2.start().await.unwrap();
    sleep(Duration::from_secs(600)).await;
    assert!(
        !work.items_of(VmId(100)).is_empty(),
        "a host Down in the agent's cache is never looked at by a new HA manager"
    );
    ha2.stop().await;
    agent.stop().await;
}

// ---------------------------------------------------------------------------------------------
// (c) Two applies on one host at once (the public `AgentManager::apply` takes no host lock),
// the first one's reply slow: the second conflicts, reloads and commits; then the first's stale
// record overwrites the cache and its change reaches subscribers last. Cache: Down; store:
// Connecting; the stream ends on Down while the host is connecting.
// ---------------------------------------------------------------------------------------------
#[tokio::test(start_paused = true)]
async fn regression_concurrent_applies_leave_the_cache_older_than_the_store_and_the_stream_out_of_order()
 {
    let config = ha_config();
    let s = Arc::new(FaultyHosts::default());
    let mut r = HostRecord::new(HostId(1), "h1", HypervisorType::Kvm);
    r.status = Some(Status::Up);
    s.inner.insert(r);
    let agent = AgentManager::new(
        config.liveness.clone(),
        Ports::new(
            s.clone(),
            Arc::new(cloudha_registry::Registry::default()),
            Arc::new(RecordingAlerts::default()),
            clock(),
        )
        .with_investigators(Vec::new())
        .with_host_down_alert(HostDownAlert::LeftToHa),
    )
    .unwrap();
    agent
        .add_host(s.inner.get(HostId(1)).unwrap())
        .await
        .unwrap();
    let mut changes = agent.subscribe();
    s.reply_delay
        .lock()
        .unwrap()
        .insert(Event::HostDown, Duration::from_secs(5));
    let (a, b) = tokio::join!(
        agent.apply(HostId(1), Event::HostDown, "slow reply"),
        async {
            tokio::task::yield_now().await;
            agent
                .apply(HostId(1), Event::AgentConnected, "reconnect")
                .await
        }
    );
    a.unwrap();
    b.unwrap();
    let mut seen = Vec::new();
    while let Some(c) = changes.try_recv() {
        seen.push((c.from, c.event, c.to, c.at));
    }
    let stored = s.inner.get(HostId(1)).unwrap();
    let cached = agent.hosts().get(HostId(1)).unwrap();
    assert_eq!(
        (cached.status, cached.update_count),
        (stored.status, stored.update_count),
        "cache and store disagree; stream order {seen:?}"
    );
    assert_eq!(
        seen.last().map(|c| c.2),
        stored.status,
        "the stream's last change is not the stored status: {seen:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// (d) The Ready write fails once: the connect flow gives up without disconnecting, the host stays
// Connecting for ever: the attache never got its startup answer so it never pings; every
// ping.interval the host is investigated, found Up, and Connecting + Ping = Connecting; the
// direct scan skips Connecting hosts and nothing retries the connect: never Up again, never a placement candidate,
// its power reports ignored.
// ---------------------------------------------------------------------------------------------
#[tokio::test(start_paused = true)]
async fn regression_a_failed_ready_write_leaves_the_host_connecting_for_ever() {
    let (h, s) = FaultyHosts::harness();
    h.manager.start().await.unwrap();
    s.fail_on.lock().unwrap().insert(Event::Ready, 1);
    let host = FakeHost::new(HostId(1), HostType::Routing);
    // A live, healthy host: it answers CheckHealth.
    host.health_ok.store(true, Ordering::SeqCst);
    h.manager
        .add_direct_host(
            Harness::record(HostId(1), HostType::Routing, ResourceState::Enabled),
            host.clone(),
        )
        .await
        .unwrap();
    assert!(
        !h.manager.connect_direct(HostId(1)).await,
        "Ready not written"
    );
    sleep(Duration::from_secs(1800)).await;
    assert_eq!(
        (h.status(HostId(1)), h.manager.hosts().status(HostId(1))),
        (Some(Status::Up), Some(Status::Up)),
        "30 minutes later (store, cache): history {:?}; pings {}; tracked {}; investigations {}",
        h.events(HostId(1)),
        host.pings.lock().unwrap().len(),
        h.manager.tracked(),
        h.investigations()
    );
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Robustness: a store that answers Conflict for ever (and whose get fails on the reload) leaves
// the status as it was in both places, the host watched, nothing scheduled; once the store is
// back the host goes Down and HA is told once.
// ---------------------------------------------------------------------------------------------
#[tokio::test(start_paused = true)]
async fn robust_conflict_for_ever_then_get_failing_keeps_the_host_and_recovers() {
    let (h, s) = FaultyHosts::harness();
    h.manager.start().await.unwrap();
    let host = h.add_up(1, HostType::Routing, ResourceState::Enabled).await;
    h.set_verdict(Some(HostVerdict::Down));
    s.conflict.store(true, Ordering::SeqCst);
    host.power_off();
    sleep(Config::default().liveness.ping_deadline() + Duration::from_secs(5)).await;
    assert!(s.gets.load(Ordering::SeqCst) >= 3, "conflicts reloaded");
    assert_eq!(h.status(HostId(1)), Some(Status::Up));
    assert_eq!(h.manager.hosts().status(HostId(1)), Some(Status::Up));
    assert_eq!(h.manager.tracked(), 1, "re-armed");
    s.fail_get.store(true, Ordering::SeqCst);
    sleep(Config::default().liveness.ping_interval + Duration::from_secs(5)).await;
    assert_eq!(h.manager.hosts().status(HostId(1)), Some(Status::Up));
    assert_eq!(h.manager.tracked(), 1, "re-armed after a failed reload");
    assert!(h.scheduled().is_empty());
    s.conflict.store(false, Ordering::SeqCst);
    s.fail_get.store(false, Ordering::SeqCst);
    sleep(Config::default().liveness.ping_interval + Duration::from_secs(5)).await;
    assert_eq!(h.status(HostId(1)), Some(Status::Down));
    assert_eq!(h.manager.hosts().status(HostId(1)), Some(Status::Down));
    assert_eq!(h.scheduled(), vec![(HostId(1), WorkReason::HostDown, true)]);
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Robustness: two HA managers (two owners) over one agent, one work store, both running: each
// schedules the Down host's VM, yet the VM is started once.
// ---------------------------------------------------------------------------------------------
#[tokio::test(start_paused = true)]
async fn robust_two_ha_managers_over_one_agent_start_the_vm_once() {
    let config = ha_config();
    let (hosts, vms, work) = kvm_fleet();
    let agent = agent_over(
        &config.liveness,
        &hosts,
        Arc::new(RecordingAlerts::default()),
    )
    .await;
    let ha1 = ha_over(&agent, 7, &vms, &work);
    let ha2 = ha_over(&agent, 8, &vms, &work);
    ha1.start().await.unwrap();
    ha2.start().await.unwrap();
    agent
        .apply(HostId(1), Event::HostDown, "proven down")
        .await
        .unwrap();
    settle().await;
    sleep(Duration::from_secs(120)).await;
    let items = work.items_of(VmId(100));
    assert_eq!(items.len(), 2, "both schedule");
    let vm = vms.get(VmId(100)).unwrap();
    assert_eq!(vm.state, VmState::Running);
    assert_ne!(vm.host, Some(HostId(1)));
    let started: Vec<_> = items
        .iter()
        .flat_map(|i| i.history.iter().map(|e| e.what.clone()))
        .filter(|w| w.contains("start"))
        .collect();
    assert!(
        items.iter().all(|i| i.step.is_final()),
        "{:?}",
        items
            .iter()
            .map(|i| (i.step, i.history.last().map(|e| e.what.clone())))
            .collect::<Vec<_>>()
    );
    let done_by_start = items
        .iter()
        .filter(|i| {
            i.history.last().is_some_and(|e| {
                e.what.starts_with("done")
                    && !e.what.contains("newer")
                    && !e.what.contains("changed")
            })
        })
        .count();
    assert_eq!(done_by_start, 1, "one start: {started:?}");
    ha1.stop().await;
    ha2.stop().await;
    agent.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Robustness: HA stop racing its own start (stop while start awaits the work store) leaves no
// task running, and the stopped manager refuses to start again.
// ---------------------------------------------------------------------------------------------
#[tokio::test(start_paused = true)]
async fn robust_ha_stop_racing_start_leaves_nothing_running() {
    let config = ha_config();
    let (hosts, vms, work) = kvm_fleet();
    let agent = agent_over(
        &config.liveness,
        &hosts,
        Arc::new(RecordingAlerts::default()),
    )
    .await;
    let ha = ha_over(&agent, 7, &vms, &work);
    let (started, ()) = tokio::join!(ha.start(), ha.stop());
    started.unwrap();
    assert!(matches!(ha.start().await, Err(ManagerError::Stopped)));
    agent
        .apply(HostId(1), Event::HostDown, "proven down")
        .await
        .unwrap();
    sleep(Duration::from_secs(60)).await;
    assert!(
        work.items().is_empty(),
        "a stopped HA manager schedules nothing"
    );
    assert_eq!(vms.get(VmId(100)).unwrap().host, Some(HostId(1)));
    agent.stop().await;
}
