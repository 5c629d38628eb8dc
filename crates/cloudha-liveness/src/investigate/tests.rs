//! Unit tests of the evidence, the judge and the investigators.

use super::*;
use cloudha_ports::MockHostCommander;

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

fn up(id: u64, hv: HypervisorType, pod: u64, status: Option<Status>, t: HostType) -> HostRecord {
    let mut r = HostRecord::new(HostId(id), format!("h{id}"), hv);
    r.pod = Some(cloudha_protocol::PodId(pod));
    r.cluster = Some(cloudha_protocol::ClusterId(pod));
    r.status = status;
    r.host_type = t;
    r
}

#[test]
fn the_chain_follows_the_configured_order_by_cloudstacks_names() {
    let store: Arc<dyn HostDirectory> = Arc::new(cloudha_ports::HostCache::new());
    let commander: Arc<dyn HostCommander> = Arc::new(MockHostCommander::new());
    let config = LivenessConfig::default();
    let names: Vec<&str> = chain(&config, &commander, &store, None)
        .iter()
        .map(|i| i.name())
        .collect();
    assert_eq!(names, crate::config::INVESTIGATORS);
    let reversed = LivenessConfig {
        ha_investigators_order: crate::config::INVESTIGATORS
            .iter()
            .rev()
            .map(|s| (*s).to_owned())
            .collect(),
        ..LivenessConfig::default()
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
    let store = Arc::new(cloudha_ports::HostCache::new());
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
    let store = Arc::new(cloudha_ports::HostCache::new());
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
    let store = Arc::new(cloudha_ports::HostCache::new());
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
        hosts: store,
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
