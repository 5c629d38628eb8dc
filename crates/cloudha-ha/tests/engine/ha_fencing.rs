//! One fence per failed host, wired as in a deployment: the agent manager's real investigator
//! chain and the HA manager's real fencers share one `Oobm` over a counting BMC; the hosts
//! answer from a script. Also the FenceFailed alert once per host and round, and the HA
//! manager's alert switches.

use std::sync::Arc;
use std::time::Duration;

use cloudha_ha::*;
use cloudha_liveness::investigate::{self};
use cloudha_ports::*;
use cloudha_protocol::*;
use tokio::time::sleep;

use cloudha_testkit::*;

const HOST: HostId = HostId(1);
const VMS: u64 = 20;

fn config() -> Config {
    let mut c = Config::default();
    c.ha.ha_startup_grace = Duration::ZERO;
    c
}

fn vm(id: u64, host: HostId) -> VmRecord {
    {
        let mut r = VmRecord::new(VmId(id), format!("vm{id}"), HypervisorType::Kvm);
        r.host = Some(host);
        r.state = VmState::Running;
        r.update_count = 1;
        r.ha_enabled = true;
        r.cluster = Some(ClusterId(1));
        r.zone = Some(ZoneId(1));
        r
    }
}

struct Row {
    name: &'static str,
    independent: bool,
    /// The BMC's readings, in turn (the last repeats).
    bmc: &'static [Bmc],
    /// The neighbours' answer to a FenceCommand.
    fence_answer: Says,
    // expectations
    proof: ProofKind,
    neighbour_fencer_calls: usize,
    power_fencer_calls: usize,
    bmc_calls: (usize, usize),
}

#[tokio::test(start_paused = true)]
async fn one_host_of_twenty_ha_vms_is_fenced_once_with_at_most_three_bmc_calls() {
    use PowerState::*;
    let rows = [
        Row {
            name: "BMC On at investigation: one Off and one read-back, reusing the reading",
            independent: false,
            bmc: &[Bmc::Is(On), Bmc::Is(Off)],
            fence_answer: dead_for(200),
            proof: ProofKind::PowerFenced,
            neighbour_fencer_calls: 1,
            power_fencer_calls: 1,
            bmc_calls: (2, 1),
        },
        Row {
            name: "BMC Off at investigation: the fence reuses that reading",
            independent: false,
            bmc: &[Bmc::Is(Off)],
            fence_answer: dead_for(200),
            proof: ProofKind::PowerFenced,
            neighbour_fencer_calls: 1,
            power_fencer_calls: 1,
            bmc_calls: (1, 0),
        },
        Row {
            name: "independent self-fence past its deadline: no power fence at all",
            independent: true,
            bmc: &[Bmc::Is(On)],
            fence_answer: dead_for(200),
            proof: ProofKind::SelfFenced,
            neighbour_fencer_calls: 1,
            power_fencer_calls: 0,
            bmc_calls: (1, 0),
        },
    ];
    for r in rows {
        let config = {
            let mut c = config();
            // The fake host reports no VM states while Up: not the second trigger's business.
            c.ha.ha_vm_restart_hostup = false;
            c
        };
        let store = Arc::new(InMemoryHostStore::new());
        let commander = Arc::new(FakeCommander::default());
        for n in 2..=4 {
            let mut rec = HostRecord::new(HostId(n), format!("h{n}"), HypervisorType::Kvm);
            rec.cluster = Some(ClusterId(1));
            rec.pod = Some(PodId(1));
            rec.zone = Some(ZoneId(1));
            rec.status = Some(Status::Up);
            store.insert(rec);
            commander.on(n, Probe::CheckOnHost, &[DEAD]);
            commander.on(n, Probe::PingTest, &[Says::Reach(true)]);
            commander.on_to(n, Probe::PingTest, HOST, &[Says::Reach(false)]);
            commander.on(n, Probe::Fence, &[r.fence_answer]);
        }
        // One BMC front, shared by the investigators and the power fencer.
        let bmc = FakeBmc::new(r.bmc, &[Bmc::Is(Off)]);
        let oobm = bmc.front();
        let commander_port: Arc<dyn HostCommander> = commander.clone();
        let late = Arc::new(LateHosts::default());
        let hosts_port: Arc<dyn HostDirectory> = late.clone();
        let chain: Vec<Arc<dyn Investigator>> =
            investigate::chain(&config.liveness, &commander_port, &hosts_port, Some(&oobm));
        let h = Harness::with_wiring(
            config.liveness.clone(),
            Wiring {
                store: store.clone(),
                investigators: Some(chain),
                oobm: Some(oobm.clone()),
                ..Wiring::default()
            },
        );
        late.set(h.manager.hosts());
        h.load_store().await;
        let neighbour = CountingFencer::new(NeighbourFencer::new(
            commander.clone(),
            h.manager.hosts(),
            clock(),
            &config,
        ));
        let power = CountingFencer::new(PowerFencer::new(oobm.clone()));
        let vms = Arc::new(InMemoryVms::new());
        for i in 0..VMS {
            vms.upsert(vm(100 + i, HOST));
        }
        let work = Arc::new(InMemoryHaWorkStore::new());
        let ha = HaManager::new(
            config.ha.clone(),
            OwnerId(1),
            &h.manager,
            HaPorts::new(
                work.clone(),
                vms.clone(),
                vec![neighbour.clone(), power.clone()],
                h.alerts.clone(),
            )
            .with_investigators(h.manager.investigators()),
        );
        ha.start().await.unwrap();
        let mut target = HostRecord::new(HOST, "h1", HypervisorType::Kvm);
        target.cluster = Some(ClusterId(1));
        target.pod = Some(PodId(1));
        target.zone = Some(ZoneId(1));
        target.self_fence_independent = r.independent;
        let _host = h.add_up_record(target).await;
        // Up for a while: the heartbeat stamps the neighbours read (200 s old) are younger.
        sleep(Duration::from_secs(300)).await;

        h.manager
            .disconnect_with_investigation(HOST, Event::PingTimeout)
            .await
            .unwrap();
        sleep(Duration::from_secs(5)).await;

        let ctx = r.name;
        assert_eq!(h.status(HOST), Some(Status::Down), "{ctx}");
        assert_eq!(
            neighbour.calls(),
            r.neighbour_fencer_calls,
            "{ctx}: fence chain once"
        );
        assert_eq!(
            power.calls(),
            r.power_fencer_calls,
            "{ctx}: fence chain once"
        );
        assert_eq!(
            (bmc.count("status"), bmc.count("off")),
            r.bmc_calls,
            "{ctx}: {:?}",
            bmc.calls.lock().unwrap()
        );
        assert!(bmc.total() <= 3, "{ctx}: at most 3 BMC calls in all");
        let items = work.items();
        assert_eq!(items.len(), VMS as usize, "{ctx}");
        for item in &items {
            assert_eq!(item.step, WorkStep::Done, "{ctx}: {:?}", item.history);
            let proof = item.fence_proof.as_ref().expect("every item has a proof");
            assert_eq!(
                (proof.kind, proof.host),
                (r.proof, Some(HOST)),
                "{ctx}: {proof}"
            );
        }
        for v in vms.all() {
            assert_eq!(v.state, VmState::Running, "{ctx}: {v:?}");
            assert!(v.host.is_some_and(|h| h != HOST), "{ctx}: {v:?}");
        }
        let host_down = h.alerts.of(AlertKind::HostDown, HOST);
        assert_eq!(host_down.len(), 1, "{ctx}: one host_down alert");
        assert!(
            host_down[0].message.contains("vm100") && host_down[0].message.contains("vm119"),
            "{ctx}: it lists the HA VMs: {}",
            host_down[0].message
        );
        assert_eq!(
            (host_down[0].pod, host_down[0].zone),
            (Some(PodId(1)), Some(ZoneId(1))),
            "{ctx}"
        );
        assert!(
            h.alerts.of(AlertKind::FenceFailed, HOST).is_empty(),
            "{ctx}"
        );
        ha.stop().await;
        h.shutdown().await;
    }
}

/// Two hosts of ten HA VMs each, whose BMCs read Unknown: every round fences each host once,
/// raises one "Unable to fence off host" alert per host, and starts nothing.
#[tokio::test(start_paused = true)]
async fn fence_failed_is_raised_once_per_host_and_retry_round() {
    let config = config();
    let store = Arc::new(InMemoryHostStore::new());
    let failed = [HostId(1), HostId(2)];
    for id in 1..=6 {
        let mut rec = HostRecord::new(HostId(id), format!("h{id}"), HypervisorType::Kvm);
        rec.cluster = Some(ClusterId(1));
        rec.pod = Some(PodId(3));
        rec.zone = Some(ZoneId(4));
        rec.status = Some(if id <= 2 { Status::Down } else { Status::Up });
        store.insert(rec);
    }
    let vms = Arc::new(InMemoryVms::new());
    for (i, host) in failed.iter().enumerate() {
        for j in 0..10 {
            vms.upsert(vm(100 + 10 * i as u64 + j, *host));
        }
    }
    let bmc = FakeBmc::reading(PowerState::Unknown);
    let power = CountingFencer::new(PowerFencer::new(bmc.front()));
    let alerts = Arc::new(RecordingAlerts::default());
    let work = Arc::new(InMemoryHaWorkStore::new());
    let agent = agent_over(&config.liveness, &store, Arc::new(LogAlerts)).await;
    let ha = HaManager::new(
        config.ha.clone(),
        OwnerId(1),
        &agent,
        HaPorts::new(
            work.clone(),
            vms.clone(),
            vec![power.clone()],
            alerts.clone(),
        )
        .with_investigators(Vec::new()),
    );
    // The failed hosts were Down before the HA manager started: it schedules their VMs.
    ha.start().await.unwrap();
    for (round, wait) in [(1, 5), (2, 600), (3, 600)] {
        sleep(Duration::from_secs(wait)).await;
        for h in failed {
            let fence_failed = alerts.of(AlertKind::FenceFailed, h);
            assert_eq!(fence_failed.len(), round, "round {round}, host {h}");
            assert_eq!(alerts.of(AlertKind::HostDown, h).len(), 1, "host {h}");
            let a = fence_failed.last().unwrap();
            assert_eq!(
                (a.cluster, a.pod, a.zone),
                (Some(ClusterId(1)), Some(PodId(3)), Some(ZoneId(4))),
                "alerts carry cluster, pod and zone"
            );
            assert!(
                a.message.contains("Unable to fence off host"),
                "{}",
                a.message
            );
        }
        assert_eq!(
            power.calls(),
            2 * round,
            "round {round}: one fence per host"
        );
        assert_eq!(
            bmc.total(),
            2 * round,
            "round {round}: one reading per host"
        );
        assert!(
            vms.all()
                .iter()
                .all(|v| v.state == VmState::Running && failed.contains(&v.host.unwrap())),
            "never started while unfenced"
        );
    }
    let tries: Vec<u32> = work.items().iter().map(|i| i.tries).collect();
    assert!(
        tries.iter().all(|t| *t == 3),
        "every item spent its tries: {tries:?}"
    );
    ha.stop().await;
}

/// A proof is reused by the host's VMs only until the host's record changes (it reconnects or
/// comes back Up): after that, its VMs need a new fence.
#[tokio::test(start_paused = true)]
async fn a_hosts_proof_is_not_reused_after_its_status_changes() {
    let config = config();
    let store = Arc::new(InMemoryHostStore::new());
    for id in 1..=4 {
        let mut rec = HostRecord::new(HostId(id), format!("h{id}"), HypervisorType::Kvm);
        rec.cluster = Some(ClusterId(1));
        rec.status = Some(if id == 1 { Status::Down } else { Status::Up });
        store.insert(rec);
    }
    let vms = Arc::new(InMemoryVms::new());
    vms.upsert(vm(100, HOST));
    let bmc = FakeBmc::reading(PowerState::Off);
    let power = CountingFencer::new(PowerFencer::new(bmc.front()));
    let work = Arc::new(InMemoryHaWorkStore::new());
    let agent = agent_over(&config.liveness, &store, Arc::new(LogAlerts)).await;
    let ha = HaManager::new(
        config.ha.clone(),
        OwnerId(1),
        &agent,
        HaPorts::new(
            work.clone(),
            vms.clone(),
            vec![power.clone()],
            Arc::new(RecordingAlerts::default()),
        )
        .with_investigators(Vec::new()),
    );
    ha.start().await.unwrap();
    ha.schedule_restarts_for_host(
        &store.get(HOST).unwrap(),
        WorkReason::HostDown,
        ProveDead::First,
    )
    .await;
    sleep(Duration::from_secs(1)).await;
    assert_eq!(power.calls(), 1);
    // The host comes back and fails again (its record changed twice); a new VM lands on it.
    for event in [Event::AgentConnected, Event::Ready] {
        agent.apply(HOST, event, "test").await.unwrap();
    }
    vms.upsert(vm(101, HOST));
    // Down again: the HA manager follows the change and schedules the host's VMs.
    agent.apply(HOST, Event::HostDown, "test").await.unwrap();
    sleep(Duration::from_secs(120)).await;
    assert_eq!(power.calls(), 2, "fenced again: the old proof is stale");
    assert_eq!(vms.get(VmId(101)).unwrap().state, VmState::Running);
    assert_ne!(vms.get(VmId(101)).unwrap().host, Some(HOST));
    ha.stop().await;
}

/// `vm.ha.alerts.enabled = false` mutes only the "VM-HA disabled" alert (CloudStack), on the
/// HA side too.
#[tokio::test(start_paused = true)]
async fn the_ha_alert_switch_mutes_only_ha_disabled() {
    for (ha_enabled, alerts_enabled, want) in [
        (true, true, &[AlertKind::HostDown][..]),
        (true, false, &[AlertKind::HostDown][..]),
        (false, true, &[AlertKind::HaDisabled][..]),
        (false, false, &[][..]),
    ] {
        let config = {
            let mut c = config();
            c.liveness.vm_ha_enabled = ha_enabled;
            c.liveness.vm_ha_alerts_enabled = alerts_enabled;
            c
        };
        let store = Arc::new(InMemoryHostStore::new());
        let mut rec = HostRecord::new(HOST, "h1", HypervisorType::Kvm);
        rec.status = Some(Status::Down);
        store.insert(rec);
        let vms = Arc::new(InMemoryVms::new());
        vms.upsert(vm(100, HOST));
        let alerts = Arc::new(RecordingAlerts::default());
        let work = Arc::new(InMemoryHaWorkStore::new());
        let agent = agent_over(&config.liveness, &store, Arc::new(LogAlerts)).await;
        let ha = HaManager::new(
            config.ha,
            OwnerId(1),
            &agent,
            HaPorts::new(work.clone(), vms.clone(), vec![], alerts.clone())
                .with_investigators(Vec::new()),
        );
        ha.schedule_restarts_for_host(
            &store.get(HOST).unwrap(),
            WorkReason::HostDown,
            ProveDead::First,
        )
        .await;
        let ctx = format!("vm.ha.enabled = {ha_enabled}, vm.ha.alerts.enabled = {alerts_enabled}");
        assert_eq!(alerts.kinds(HOST), want, "{ctx}");
        assert_eq!(
            work.items().len(),
            usize::from(ha_enabled),
            "{ctx}: scheduled"
        );
    }
}

/// A neighbour that sees the host's heartbeat beating stops the fence chain: no later fencer
/// (power) may act on a host showing signs of life, and nothing is started.
#[tokio::test(start_paused = true)]
async fn a_heartbeat_seen_beating_stops_the_fence_chain() {
    let config = config();
    let store = Arc::new(InMemoryHostStore::new());
    for id in 1..=4 {
        let mut rec = HostRecord::new(HostId(id), format!("h{id}"), HypervisorType::Kvm);
        rec.cluster = Some(ClusterId(1));
        rec.status = Some(if id == 1 { Status::Down } else { Status::Up });
        rec.self_fence_independent = true;
        store.insert(rec);
    }
    let commander = Arc::new(FakeCommander::default());
    commander.on(2, Probe::Fence, &[dead_for(200)]);
    commander.on(3, Probe::Fence, &[ALIVE]);
    commander.on(4, Probe::Fence, &[Says::Unavailable]);
    let vms = Arc::new(InMemoryVms::new());
    vms.upsert(vm(100, HOST));
    let bmc = FakeBmc::reading(PowerState::On);
    let agent = agent_over(&config.liveness, &store, Arc::new(LogAlerts)).await;
    let neighbour = CountingFencer::new(NeighbourFencer::new(
        commander.clone(),
        agent.hosts(),
        clock(),
        &config,
    ));
    let power = CountingFencer::new(PowerFencer::new(bmc.front()));
    let work = Arc::new(InMemoryHaWorkStore::new());
    let ha = HaManager::new(
        config.ha.clone(),
        OwnerId(1),
        &agent,
        HaPorts::new(
            work.clone(),
            vms.clone(),
            vec![neighbour.clone(), power.clone()],
            Arc::new(RecordingAlerts::default()),
        )
        .with_investigators(Vec::new()),
    );
    ha.start().await.unwrap();
    ha.schedule_restarts_for_host(
        &store.get(HOST).unwrap(),
        WorkReason::HostDown,
        ProveDead::First,
    )
    .await;
    sleep(Duration::from_secs(5)).await;
    assert_eq!(neighbour.calls(), 1);
    assert_eq!(power.calls(), 0, "the chain stopped at the sign of life");
    assert_eq!(bmc.total(), 0);
    let v = vms.get(VmId(100)).unwrap();
    assert_eq!((v.state, v.host), (VmState::Running, Some(HOST)));
    let item = work.items().pop().unwrap();
    assert_eq!((item.step, item.tries), (WorkStep::Investigating, 1));
    assert!(item.fence_proof.is_none());
    ha.stop().await;
}
