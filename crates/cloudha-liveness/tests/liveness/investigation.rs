//! Host investigation through the agent manager with the real investigator chain over scripted
//! ports: the hosts answer from a script ([`FakeCommander`]), the BMC too ([`FakeBmc`]). Each row
//! disconnects an Up host with investigation and checks the verdict, who gave it, the status,
//! the alerts, VM-HA and how long the verdict took (paused time).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cloudha_liveness::investigate::{self};
use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use tokio::time::{Instant, sleep};

use cloudha_testkit::*;

/// The host under investigation; its neighbours are 2, 3, ...
const HOST: HostId = HostId(1);

struct Row {
    name: &'static str,
    hypervisor: HypervisorType,
    /// The host fences itself independently of its agent.
    independent: bool,
    /// The host's own answer to its CheckOnHost (its agent is gone by default).
    own: Says,
    /// CheckHealth gets no answer (its 50 s wait runs out); else it fails at once.
    health_hangs: bool,
    /// Per neighbour: its heartbeat check of the host.
    beats: &'static [Says],
    /// Per neighbour: its ping test to the host (missing: no attache).
    pings: &'static [Says],
    /// Neighbours (by index) whose control ping to another neighbour fails: they reach nobody.
    blind: &'static [usize],
    /// The BMC's reading (`None`: no out-of-band management).
    bmc: Option<Bmc>,
    agreement: u32,
    ha_enabled: bool,
    ha_alerts: bool,
    // expectations
    /// The verdict and who gave it.
    verdict: (HostVerdict, &'static str),
    status: Status,
    alerts: &'static [AlertKind],
    /// Handed to VM-HA.
    ha: bool,
    /// The investigation ended within this window after it began.
    took: (Duration, Duration),
}

const SOON: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(1));

const fn secs(a: u64, b: u64) -> (Duration, Duration) {
    (Duration::from_secs(a), Duration::from_secs(b))
}

const fn row(name: &'static str, verdict: HostVerdict, by: &'static str) -> Row {
    Row {
        name,
        hypervisor: HypervisorType::Kvm,
        independent: false,
        own: Says::Unavailable,
        health_hangs: false,
        beats: &[],
        pings: &[],
        blind: &[],
        bmc: None,
        agreement: 1,
        ha_enabled: true,
        ha_alerts: true,
        verdict: (verdict, by),
        status: match verdict {
            HostVerdict::Up => Status::Up,
            HostVerdict::Down => Status::Down,
            HostVerdict::Disconnected | HostVerdict::Alert => Status::Alert,
        },
        alerts: match verdict {
            HostVerdict::Disconnected => &[AlertKind::HostDisconnected],
            HostVerdict::Alert => &[AlertKind::HostAlert],
            // Down: the HA manager raises the one host_down alert (with the VM list).
            HostVerdict::Up | HostVerdict::Down => &[],
        },
        ha: matches!(verdict, HostVerdict::Down),
        took: SOON,
    }
}

const KVM: &str = "KVMInvestigator";
const R: Says = Says::Reach(true);
const NR: Says = Says::Reach(false);

fn rows() -> Vec<Row> {
    use HostVerdict::*;
    use PowerState::*;
    vec![
        Row {
            own: ALIVE,
            beats: &[DEAD, DEAD],
            pings: &[NR, NR],
            bmc: Some(Bmc::Is(Off)),
            ..row("the host's own heartbeat check answers alive: Up", Up, KVM)
        },
        Row {
            beats: &[DEAD, ALIVE, DEAD],
            pings: &[NR, NR, NR],
            ..row(
                "the first alive neighbour vetoes Down though the others say dead",
                Disconnected,
                KVM,
            )
        },
        Row {
            beats: &[Says::Unavailable, Says::Fails, Says::Hangs],
            pings: &[Says::Unavailable, Says::Fails, Says::Hangs],
            took: secs(20, 21),
            ..row(
                "nobody answers: Disconnected (CloudStack), after the probes' 20 s",
                Disconnected,
                KVM,
            )
        },
        row(
            "no neighbour at all, no BMC: Disconnected, never Down",
            Disconnected,
            KVM,
        ),
        Row {
            beats: &[DEAD, DEAD],
            pings: &[R, NR],
            bmc: Some(Bmc::Is(On)),
            ..row(
                "agent restart: dead heartbeat (the agent writes it), reachable, BMC On",
                Disconnected,
                KVM,
            )
        },
        Row {
            beats: &[DEAD, DEAD],
            ..row(
                "dead heartbeat, nobody could ping the host: no proof independent of the agent",
                Disconnected,
                KVM,
            )
        },
        Row {
            beats: &[DEAD, DEAD],
            pings: &[NR, NR],
            ..row(
                "dead heartbeat and no neighbour reaches the host: Down",
                Down,
                KVM,
            )
        },
        Row {
            beats: &[DEAD],
            pings: &[Says::Unavailable],
            bmc: Some(Bmc::Is(Unknown)),
            ..row("a BMC reading Unknown is no evidence", Disconnected, KVM)
        },
        Row {
            bmc: Some(Bmc::Is(Off)),
            ..row("BMC Off with no neighbour to ask: Down", Down, KVM)
        },
        Row {
            beats: &[Says::Unavailable, Says::Unavailable],
            bmc: Some(Bmc::Is(Off)),
            ..row("BMC Off while no neighbour answers: Down", Down, KVM)
        },
        Row {
            own: Says::Hangs,
            health_hangs: true,
            beats: &[DEAD, DEAD],
            pings: &[Says::Hangs, Says::Hangs],
            bmc: Some(Bmc::Is(Off)),
            ..row(
                "BMC Off settles: Down without waiting for CheckHealth's 50 s or the own check's 20 s",
                Down,
                KVM,
            )
        },
        Row {
            health_hangs: true,
            beats: &[DEAD, DEAD],
            pings: &[NR, NR],
            bmc: Some(Bmc::Is(On)),
            took: secs(50, 51),
            ..row(
                "Down not settled (the host could still answer): CheckHealth's 50 s is awaited",
                Down,
                KVM,
            )
        },
        Row {
            own: ALIVE,
            health_hangs: true,
            ..row(
                "the host's own Up settles too: no wait for CheckHealth",
                Up,
                KVM,
            )
        },
        Row {
            independent: true,
            beats: &[DEAD],
            pings: &[R],
            ..row(
                "independent self-fence, dead heartbeat but reachable: its self-fence has not fired",
                Disconnected,
                KVM,
            )
        },
        Row {
            independent: true,
            beats: &[DEAD, DEAD],
            pings: &[NR, NR],
            ..row(
                "independent self-fence, dead heartbeat, unreachable: Down",
                Down,
                KVM,
            )
        },
        Row {
            beats: &[DEAD, DEAD],
            pings: &[NR, NR],
            blind: &[0, 1],
            ..row(
                "neighbours that reach nobody prove nothing by missing the host",
                Disconnected,
                KVM,
            )
        },
        Row {
            beats: &[DEAD, DEAD],
            pings: &[NR, NR],
            blind: &[0],
            ..row(
                "one blind neighbour, one that reaches its control: Down",
                Down,
                KVM,
            )
        },
        Row {
            agreement: 2,
            beats: &[DEAD, Says::Unavailable],
            pings: &[NR, NR],
            ..row(
                "agreement 2: one dead answer is not enough",
                Disconnected,
                KVM,
            )
        },
        Row {
            agreement: 2,
            beats: &[DEAD, DEAD],
            pings: &[NR, NR],
            ..row(
                "agreement 2: two dead answers, unreachable: Down",
                Down,
                KVM,
            )
        },
        Row {
            agreement: 2,
            beats: &[DEAD, DEAD, ALIVE],
            pings: &[NR, NR, NR],
            ..row(
                "agreement 2: an alive answer still vetoes",
                Disconnected,
                KVM,
            )
        },
        Row {
            agreement: 2,
            beats: &[DEAD],
            bmc: Some(Bmc::Is(Off)),
            ..row("agreement 2: the BMC's Off needs no agreement", Down, KVM)
        },
        Row {
            hypervisor: HypervisorType::XenServer,
            beats: &[DEAD, DEAD],
            pings: &[NR, NR],
            ..row(
                "XenServer: pool heartbeat dead and unreachable: Down",
                Down,
                "XenServerInvestigator",
            )
        },
        Row {
            hypervisor: HypervisorType::XenServer,
            beats: &[DEAD],
            pings: &[R],
            ..row(
                "XenServer: pool heartbeat dead but reachable: the self-reboot has not fired",
                Disconnected,
                "XenServerInvestigator",
            )
        },
        Row {
            hypervisor: HypervisorType::XenServer,
            ..row(
                "XenServer host nobody can vouch for: Disconnected",
                Disconnected,
                "XenServerInvestigator",
            )
        },
        Row {
            hypervisor: HypervisorType::VMware,
            beats: &[DEAD, DEAD],
            pings: &[NR, NR],
            bmc: Some(Bmc::Is(Off)),
            ..row(
                "VMware: Disconnected, never Down, even with the BMC off",
                Disconnected,
                "VMwareInvestigator",
            )
        },
        Row {
            ha_enabled: false,
            beats: &[DEAD, DEAD],
            pings: &[NR, NR],
            bmc: Some(Bmc::Is(Off)),
            alerts: &[AlertKind::HaDisabled, AlertKind::HostAlert],
            ..row(
                "vm.ha.enabled = false: Alert with a VM-HA disabled alert, nothing scheduled",
                Alert,
                "vm.ha.enabled",
            )
        },
        Row {
            ha_enabled: false,
            ha_alerts: false,
            bmc: Some(Bmc::Is(Off)),
            alerts: &[AlertKind::HostAlert],
            ..row(
                "vm.ha.alerts.enabled = false mutes the VM-HA disabled alert",
                Alert,
                "vm.ha.enabled",
            )
        },
        Row {
            ha_alerts: false,
            beats: &[ALIVE],
            ..row(
                "vm.ha.alerts.enabled = false mutes nothing else: host_disconnected",
                Disconnected,
                KVM,
            )
        },
    ]
}

/// A manager over the real chain of `config`, probing through `commander`, reading power
/// through `bmc`; host 1 connected (a direct fake host), neighbours 2.. Up records (answering
/// only through `commander`, so never armed in the ping monitor). With `start`, the manager is
/// started first (its monitor and direct-agent scan run).
async fn cloud(
    config: LivenessConfig,
    target: HostRecord,
    neighbours: usize,
    commander: &Arc<FakeCommander>,
    bmc: Option<&Arc<FakeBmc>>,
    start: bool,
) -> (Harness, Arc<FakeHost>) {
    let store = Arc::new(InMemoryHostStore::new());
    let oobm = bmc.map(|b| b.front());
    let commander_port: Arc<dyn HostCommander> = commander.clone();
    let late = Arc::new(LateHosts::default());
    let hosts_port: Arc<dyn HostDirectory> = late.clone();
    let chain: Vec<Arc<dyn Investigator>> =
        investigate::chain(&config, &commander_port, &hosts_port, oobm.as_ref());
    let h = Harness::with_wiring(
        config,
        Wiring {
            store: store.clone(),
            investigators: Some(chain),
            oobm,
            ..Wiring::default()
        },
    );
    late.set(h.manager.hosts());
    if start {
        h.manager.start().await.unwrap();
    }
    for i in 0..neighbours {
        let id = HostId(2 + i as u64);
        let mut r = HostRecord::new(id, format!("h{id}"), target.hypervisor);
        r.cluster = target.cluster;
        r.pod = target.pod;
        r.zone = target.zone;
        r.status = Some(Status::Up);
        h.manager.add_host(r).await.unwrap();
    }
    let host = h.add_up_record(target).await;
    (h, host)
}

fn target(hypervisor: HypervisorType, independent: bool) -> HostRecord {
    let mut r = HostRecord::new(HOST, "h1", hypervisor);
    r.cluster = Some(ClusterId(1));
    r.pod = Some(PodId(1));
    r.zone = Some(ZoneId(1));
    r.self_fence_independent = independent;
    r
}

#[tokio::test(start_paused = true)]
async fn kvm_investigation_through_the_agent_manager() {
    for r in rows() {
        let config = {
            let mut c = LivenessConfig::default();
            c.ha_investigators_agreement = r.agreement;
            c.vm_ha_enabled = r.ha_enabled;
            c.vm_ha_alerts_enabled = r.ha_alerts;
            c
        };
        let commander = Arc::new(FakeCommander::default());
        commander.on(HOST.0, Probe::CheckOnHost, &[r.own]);
        for (i, beat) in r.beats.iter().enumerate() {
            let n = 2 + i as u64;
            commander.on(n, Probe::CheckOnHost, &[*beat]);
            // Its control: a ping test to another neighbour.
            commander.on(n, Probe::PingTest, &[Says::Reach(!r.blind.contains(&i))]);
            let ping = r.pings.get(i).copied().unwrap_or(Says::Unavailable);
            commander.on_to(n, Probe::PingTest, HOST, &[ping]);
        }
        let bmc = r
            .bmc
            .map(|b| FakeBmc::new(&[b], &[Bmc::Is(PowerState::Off)]));
        let (h, host) = cloud(
            config,
            target(r.hypervisor, r.independent),
            r.beats.len(),
            &commander,
            bmc.as_ref(),
            false,
        )
        .await;
        host.health_hangs.store(r.health_hangs, Ordering::SeqCst);
        let before = h.manager.history(HOST).len();

        let t0 = Instant::now();
        let result = h
            .manager
            .disconnect_with_investigation(HOST, Event::PingTimeout)
            .await;
        let took = t0.elapsed();

        let ctx = format!("{}: result {result:?}", r.name);
        let history = h.manager.history(HOST);
        let last = &history[before..].last().expect("a status event").reason;
        let (verdict, by) = r.verdict;
        assert!(
            last.contains(&format!("investigation: {verdict:?} by {by}")),
            "{ctx}: {last}"
        );
        assert_eq!(h.status(HOST), Some(r.status), "{ctx}: {last}");
        assert_eq!(h.alerts.kinds(HOST), r.alerts, "{ctx}: alerts");
        assert_eq!(!h.scheduled().is_empty(), r.ha, "{ctx}: VM-HA");
        assert!(
            took >= r.took.0 && took <= r.took.1,
            "{ctx}: took {took:?}, expected within {:?}",
            r.took
        );
        if !r.ha_enabled {
            assert!(
                commander.sent.lock().unwrap().is_empty(),
                "{ctx}: VM-HA disabled: nothing investigated"
            );
        }
        if let Some(bmc) = &bmc {
            assert_eq!(bmc.count("off"), 0, "{ctx}: investigation never powers off");
        }
        h.shutdown().await;
    }
}

/// At CloudStack's defaults the host is flagged at T after its last ping; a powered-off host
/// whose own probes hang is Down within a second or two of that (BMC Off, neighbours see the
/// heartbeat dead), not after CheckHealth's 50 s and the host's own 20 s CheckOnHost.
#[tokio::test(start_paused = true)]
async fn a_powered_off_host_is_down_within_seconds_of_detection() {
    let commander = Arc::new(FakeCommander::default());
    commander.on(HOST.0, Probe::CheckOnHost, &[Says::Hangs]);
    for n in 2..=4 {
        commander.on(n, Probe::CheckOnHost, &[DEAD]);
        commander.on(n, Probe::PingTest, &[R]);
        commander.on_to(n, Probe::PingTest, HOST, &[NR]);
    }
    let bmc = FakeBmc::reading(PowerState::Off);
    let (h, host) = cloud(
        LivenessConfig::default(),
        target(HypervisorType::Kvm, false),
        3,
        &commander,
        Some(&bmc),
        true,
    )
    .await;
    sleep(Duration::from_secs(125)).await;
    // Powered off: no pings, and the host's own probes get no answer (their waits run out).
    host.pinging.store(false, Ordering::SeqCst);
    host.health_hangs.store(true, Ordering::SeqCst);
    let last = host.last_ping();
    sleep(Duration::from_secs(300)).await;
    let down = h
        .manager
        .history(HOST)
        .into_iter()
        .find(|c| c.to == Status::Down)
        .expect("Down");
    let t = LivenessConfig::default().ping_deadline();
    let after = h.when(down.at) - last;
    assert!(
        after >= t && after <= t + Duration::from_secs(2),
        "Down {after:?} after the last ping (T = {t:?}): {}",
        down.reason
    );
    assert_eq!(h.scheduled(), [(HOST, WorkReason::HostDown, true)]);
    assert_eq!(bmc.total(), 1, "one power reading");
    h.shutdown().await;
}

/// The agent restarts on a live KVM host (its heartbeat, which the agent writes, stops): the
/// host goes to Alert with a host_disconnected alert, every Alert re-investigation finds no
/// proof of death, nothing is fenced or scheduled, and it comes back Up with its agent.
#[tokio::test(start_paused = true)]
async fn an_agent_restart_ends_in_alert_is_never_fenced_and_comes_back_up() {
    let commander = Arc::new(FakeCommander::default());
    for n in 2..=4 {
        commander.on(n, Probe::CheckOnHost, &[DEAD]);
        commander.on(n, Probe::PingTest, &[R]);
    }
    let bmc = FakeBmc::reading(PowerState::On);
    let (h, host) = cloud(
        LivenessConfig::default(),
        target(HypervisorType::Kvm, false),
        3,
        &commander,
        Some(&bmc),
        true,
    )
    .await;
    sleep(Duration::from_secs(30)).await;
    // The agent stops: no pings, no answers, no startup.
    host.power_off();
    sleep(Duration::from_secs(150 + 2)).await;
    assert_eq!(
        h.status(HOST),
        Some(Status::Alert),
        "{:#?}",
        h.manager.history(HOST)
    );
    assert_eq!(h.alerts.kinds(HOST), [AlertKind::HostDisconnected]);
    let asked = commander.sent(Probe::CheckOnHost).len();
    // Ten minutes of Alert re-investigation (every ping.interval): still no proof of death.
    sleep(Duration::from_secs(600)).await;
    assert_eq!(h.status(HOST), Some(Status::Alert));
    assert!(
        commander.sent(Probe::CheckOnHost).len() >= asked + 3 * 9,
        "re-investigated every minute"
    );
    assert!(h.scheduled().is_empty(), "never handed to VM-HA");
    assert_eq!(bmc.count("off"), 0, "never powered off");
    assert!(h.manager.history(HOST).iter().all(|c| c.to != Status::Down));
    // The agent is back: the direct-agent scan reconnects the host.
    host.pinging.store(true, Ordering::SeqCst);
    host.reachable.store(true, Ordering::SeqCst);
    host.health_hangs.store(false, Ordering::SeqCst);
    sleep(Duration::from_secs(91)).await;
    assert_eq!(h.status(HOST), Some(Status::Up));
    h.shutdown().await;
}
