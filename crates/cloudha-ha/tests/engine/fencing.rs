//! The fencers over scripted ports, data-driven, in paused time: the neighbour (KVM) and pool
//! (XenServer) fencers' self-fence deadline rule, and the power fencer's read-back rule.

use std::sync::Arc;
use std::time::Duration;

use cloudha_ha::*;
use cloudha_liveness::oobm::POWER_READING_FRESH;
use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use tokio::time::{Instant, sleep};

use crate::support::*;

/// The host being fenced; its neighbours are 2, 3, ...
const HOST: HostId = HostId(1);

/// What a fence came to, for comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Got {
    Fenced(ProofKind),
    Failed,
    NotApplicable,
    Alive,
}

pub(crate) fn got(o: &FenceOutcome) -> Got {
    match o {
        FenceOutcome::Fenced(p) => Got::Fenced(p.kind()),
        FenceOutcome::Failed { .. } => Got::Failed,
        FenceOutcome::NotApplicable { .. } => Got::NotApplicable,
        FenceOutcome::Alive { .. } => Got::Alive,
    }
}

pub(crate) fn vm_on(host: HostId) -> VmRecord {
    VmRecord {
        id: VmId(100),
        name: "vm100".into(),
        kind: VmKind::User,
        host: Some(host),
        last_host: None,
        state: VmState::Running,
        update_count: 1,
        ha_enabled: true,
        local_root_disk: false,
        hypervisor: HypervisorType::Kvm,
        cluster: Some(ClusterId(1)),
        zone: Some(ZoneId(1)),
    }
}

#[derive(Debug, Clone, Copy)]
enum Which {
    Neighbour,
    Pool,
}

struct Row {
    name: &'static str,
    fencer: Which,
    hypervisor: HypervisorType,
    independent: bool,
    /// Per neighbour: its answers to the FenceCommand, in turn (the last repeats).
    neighbours: &'static [&'static [Says]],
    /// The neighbours' hypervisor (`None`: the host's).
    neighbour_hypervisor: Option<HypervisorType>,
    neighbour_status: Status,
    /// `ha.investigators.agreement`.
    agreement: u32,
    /// The host's agent last connected this many seconds before the fence.
    connected_ago: Option<u64>,
    // expectations
    want: Got,
    /// The heartbeat age the proof relied on, in seconds.
    age: Option<u64>,
    /// Seconds the fence took (at least, and less than one more).
    took: u64,
    /// FenceCommands sent.
    asks: usize,
}

const fn row(name: &'static str, fencer: Which, want: Got) -> Row {
    Row {
        name,
        fencer,
        hypervisor: match fencer {
            Which::Neighbour => HypervisorType::Kvm,
            Which::Pool => HypervisorType::XenServer,
        },
        independent: matches!(fencer, Which::Neighbour),
        neighbours: &[],
        neighbour_hypervisor: None,
        neighbour_status: Status::Up,
        agreement: 1,
        connected_ago: None,
        want,
        age: None,
        took: 0,
        asks: 0,
    }
}

const SELF_FENCED: Got = Got::Fenced(ProofKind::SelfFenced);
const POOL_FENCED: Got = Got::Fenced(ProofKind::PoolFenced);
const N: Which = Which::Neighbour;
const P: Which = Which::Pool;
const UNAVAILABLE: Says = Says::Unavailable;
const HANGS: Says = Says::Hangs;

/// At the defaults: KVM deadline 60 s + 5 × 10 s = 110 s; XenServer 30 s + 30 s = 60 s.
const ROWS: &[Row] = &[
    Row {
        neighbours: &[&[dead_for(120)]],
        age: Some(120),
        asks: 1,
        ..row(
            "dead past the deadline: self-fenced at once",
            N,
            SELF_FENCED,
        )
    },
    Row {
        neighbours: &[&[dead_for(30), dead_for(111)]],
        age: Some(111),
        took: 81,
        asks: 2,
        ..row(
            "dead but younger than the deadline: waits it out, still dead: proof",
            N,
            SELF_FENCED,
        )
    },
    Row {
        neighbours: &[&[dead_for(30), ALIVE]],
        took: 81,
        asks: 2,
        ..row(
            "dead but younger, beating again at the re-read: alive",
            N,
            Got::Alive,
        )
    },
    Row {
        neighbours: &[&[dead_for(30), dead_for(10)]],
        took: 81,
        asks: 2,
        ..row(
            "dead but younger, a newer write by the re-read: no proof",
            N,
            Got::Failed,
        )
    },
    Row {
        neighbours: &[&[dead_for(110), dead_for(111)]],
        age: Some(111),
        took: 1,
        asks: 2,
        ..row("exactly at the deadline is not past it", N, SELF_FENCED)
    },
    Row {
        neighbours: &[&[dead_for(30), dead_for(110)]],
        took: 81,
        asks: 2,
        ..row(
            "at the re-read too, exactly at the deadline is no proof",
            N,
            Got::Failed,
        )
    },
    Row {
        neighbours: &[&[dead_for(120)]],
        connected_ago: Some(120),
        age: Some(120),
        asks: 1,
        ..row(
            "a stamp written the instant the host connected counts",
            N,
            SELF_FENCED,
        )
    },
    Row {
        neighbours: &[&[DEAD]],
        took: 111,
        asks: 2,
        ..row(
            "no age given, even past the deadline: the timing cannot be proven",
            N,
            Got::Failed,
        )
    },
    Row {
        independent: false,
        neighbours: &[&[dead_for(500)]],
        ..row(
            "self-fence depends on the agent: not applicable, nobody asked",
            N,
            Got::NotApplicable,
        )
    },
    Row {
        neighbours: &[&[ALIVE]],
        asks: 1,
        ..row("the heartbeat beats: alive, the chain stops", N, Got::Alive)
    },
    Row {
        neighbours: &[&[UNAVAILABLE], &[dead_for(200)]],
        age: Some(200),
        asks: 2,
        ..row(
            "one proof is enough when the others cannot tell",
            N,
            SELF_FENCED,
        )
    },
    Row {
        neighbours: &[&[dead_for(150)], &[dead_for(130)]],
        age: Some(130),
        asks: 2,
        ..row(
            "several proofs: the youngest age is recorded",
            N,
            SELF_FENCED,
        )
    },
    Row {
        neighbours: &[&[ALIVE], &[dead_for(200)]],
        asks: 1,
        ..row(
            "a neighbour seeing the heartbeat beat vetoes another's proof",
            N,
            Got::Alive,
        )
    },
    Row {
        neighbours: &[&[dead_for(200)], &[dead_for(30), ALIVE]],
        took: 81,
        asks: 3,
        ..row(
            "beating at another neighbour's re-read vetoes too",
            N,
            Got::Alive,
        )
    },
    Row {
        neighbours: &[&[dead_for(200)], &[HANGS]],
        age: Some(200),
        took: 60,
        asks: 2,
        ..row(
            "every neighbour is heard (a hung one until FENCE_WAIT) before a proof",
            N,
            SELF_FENCED,
        )
    },
    Row {
        neighbours: &[&[UNAVAILABLE], &[HANGS]],
        took: 60,
        asks: 2,
        ..row(
            "unavailable and timed-out neighbours: no proof (after FENCE_WAIT)",
            N,
            Got::Failed,
        )
    },
    Row {
        neighbours: &[&[Says::Fails]],
        asks: 1,
        ..row("a neighbour that could not check: no proof", N, Got::Failed)
    },
    Row {
        agreement: 2,
        neighbours: &[&[dead_for(120)], &[dead_for(130)]],
        age: Some(120),
        asks: 2,
        ..row("agreement 2: two proofs", N, SELF_FENCED)
    },
    Row {
        agreement: 2,
        neighbours: &[&[dead_for(120)], &[UNAVAILABLE]],
        asks: 2,
        ..row("agreement 2: one proof is not enough", N, Got::Failed)
    },
    Row {
        connected_ago: Some(30),
        neighbours: &[&[dead_for(120)]],
        asks: 1,
        ..row(
            "a heartbeat stamp from before the host's last connect proves nothing",
            N,
            Got::Failed,
        )
    },
    Row {
        connected_ago: Some(200),
        neighbours: &[&[dead_for(120)]],
        age: Some(120),
        asks: 1,
        ..row(
            "a stamp written after the last connect proves",
            N,
            SELF_FENCED,
        )
    },
    row("no neighbour: no proof", N, Got::Failed),
    Row {
        neighbours: &[&[dead_for(120)]],
        neighbour_status: Status::Disconnected,
        ..row("a neighbour not Up is not asked", N, Got::Failed)
    },
    Row {
        neighbours: &[&[dead_for(120)]],
        neighbour_hypervisor: Some(HypervisorType::XenServer),
        ..row(
            "a neighbour of another hypervisor is not asked",
            N,
            Got::Failed,
        )
    },
    Row {
        hypervisor: HypervisorType::XenServer,
        neighbours: &[&[dead_for(120)]],
        ..row("not a KVM host", N, Got::NotApplicable)
    },
    Row {
        hypervisor: HypervisorType::Lxc,
        neighbours: &[&[dead_for(120)]],
        age: Some(120),
        asks: 1,
        ..row("LXC is fenced like KVM", N, SELF_FENCED)
    },
    Row {
        neighbours: &[&[dead_for(61)]],
        age: Some(61),
        asks: 1,
        ..row(
            "pool heartbeat dead past its window: pool-fenced (no independent flag needed)",
            P,
            POOL_FENCED,
        )
    },
    Row {
        neighbours: &[&[dead_for(20), dead_for(61)]],
        age: Some(61),
        took: 41,
        asks: 2,
        ..row(
            "pool heartbeat younger: waits it out, still dead: proof",
            P,
            POOL_FENCED,
        )
    },
    Row {
        neighbours: &[&[dead_for(20), ALIVE]],
        took: 41,
        asks: 2,
        ..row(
            "pool heartbeat beating at the re-read: alive",
            P,
            Got::Alive,
        )
    },
    Row {
        neighbours: &[&[UNAVAILABLE]],
        asks: 1,
        ..row("no pool member answers: no proof", P, Got::Failed)
    },
    Row {
        neighbours: &[&[dead_for(61)], &[ALIVE]],
        asks: 2,
        ..row(
            "a pool member seeing the heartbeat beat vetoes",
            P,
            Got::Alive,
        )
    },
    Row {
        neighbours: &[&[dead_for(61)]],
        neighbour_hypervisor: Some(HypervisorType::Kvm),
        ..row("only XenServer pool members are asked", P, Got::Failed)
    },
    Row {
        hypervisor: HypervisorType::Kvm,
        neighbours: &[&[dead_for(61)]],
        ..row("not a XenServer host", P, Got::NotApplicable)
    },
];

/// A cluster: the host (status Down) and its neighbours 2.. (Up unless told).
fn cluster(
    hypervisor: HypervisorType,
    independent: bool,
    neighbours: usize,
    neighbour_hypervisor: HypervisorType,
    neighbour_status: Status,
) -> (Arc<HostCache>, HostRecord) {
    let store = Arc::new(HostCache::new());
    let mut target = HostRecord::new(HOST, "h1", hypervisor);
    target.cluster = Some(ClusterId(1));
    target.status = Some(Status::Down);
    target.self_fence_independent = independent;
    store.upsert(target.clone());
    for i in 0..neighbours {
        let id = HostId(2 + i as u64);
        let mut r = HostRecord::new(id, format!("h{id}"), neighbour_hypervisor);
        r.cluster = Some(ClusterId(1));
        r.status = Some(neighbour_status);
        store.upsert(r);
    }
    (store, target)
}

#[tokio::test(start_paused = true)]
async fn neighbour_and_pool_fencers_prove_only_past_the_self_fence_deadline() {
    // Time to subtract "connected ago" from.
    sleep(Duration::from_secs(3600)).await;
    for r in ROWS {
        let config = Config {
            ha_investigators_agreement: r.agreement,
            ..Config::default()
        };
        let (store, mut target) = cluster(
            r.hypervisor,
            r.independent,
            r.neighbours.len(),
            r.neighbour_hypervisor.unwrap_or(r.hypervisor),
            r.neighbour_status,
        );
        let now = tokio_clock().now();
        target.connected_at = r.connected_ago.map(|ago| now - Duration::from_secs(ago));
        let commander = Arc::new(FakeCommander::default());
        for (i, answers) in r.neighbours.iter().enumerate() {
            commander.on(2 + i as u64, Probe::Fence, answers);
        }
        let (fencer, deadline): (Box<dyn Fencer>, Duration) = match r.fencer {
            Which::Neighbour => (
                Box::new(NeighbourFencer::new(
                    commander.clone(),
                    store,
                    clock(),
                    &config,
                )),
                config.kvm_self_fence_deadline(),
            ),
            Which::Pool => (
                Box::new(XenPoolFencer::new(
                    commander.clone(),
                    store,
                    clock(),
                    &config,
                )),
                config.xen_self_fence_deadline(),
            ),
        };
        let t0 = Instant::now();
        let outcome = fencer.fence(&vm_on(HOST), &target).await;
        let took = t0.elapsed();
        let ctx = format!("{} ({:?}): {outcome:?}", r.name, r.fencer);
        assert_eq!(got(&outcome), r.want, "{ctx}");
        let took_want = Duration::from_secs(r.took);
        assert!(
            took >= took_want && took < took_want + Duration::from_secs(1),
            "{ctx}: took {took:?}, expected {took_want:?}"
        );
        let asks = commander.sent(Probe::Fence);
        assert_eq!(asks.len(), r.asks, "{ctx}: FenceCommands {asks:?}");
        if let FenceOutcome::Fenced(proof) = &outcome {
            let about = format!("host {HOST} ");
            assert!(proof.evidence().contains(&about), "{ctx}");
            let timings = proof
                .timings()
                .expect("a self-fence proof records its timings");
            assert_eq!(timings.deadline, deadline, "{ctx}");
            assert_eq!(
                Some(timings.heartbeat_age),
                r.age.map(Duration::from_secs),
                "{ctx}"
            );
            assert!(timings.heartbeat_age > timings.deadline, "{ctx}");
        }
    }
    assert_eq!(
        (
            Config::default().kvm_self_fence_deadline(),
            Config::default().xen_self_fence_deadline()
        ),
        (Duration::from_secs(110), Duration::from_secs(60)),
        "the defaults the rows assume"
    );
}

/// The deadline follows the manager's assumed heartbeat timings (`kvm.heartbeat.*`).
#[tokio::test(start_paused = true)]
async fn the_neighbour_fencers_deadline_follows_the_heartbeat_settings() {
    let config = Config {
        kvm_heartbeat_interval: Duration::from_secs(30),
        kvm_heartbeat_staleness: Duration::from_secs(40),
        kvm_heartbeat_write_retries: 3,
        kvm_heartbeat_retry_interval: Duration::from_secs(20),
        ..Config::default()
    };
    assert_eq!(config.kvm_self_fence_deadline(), Duration::from_secs(100));
    for (age, want) in [(101, true), (100, false), (110, true)] {
        let (store, target) = cluster(
            HypervisorType::Kvm,
            true,
            1,
            HypervisorType::Kvm,
            Status::Up,
        );
        let commander = Arc::new(FakeCommander::default());
        // If not past the deadline, the re-read shows a fresh write.
        commander.on(2, Probe::Fence, &[dead_for(age), ALIVE]);
        let outcome = NeighbourFencer::new(commander.clone(), store, clock(), &config)
            .fence(&vm_on(HOST), &target)
            .await;
        assert_eq!(
            matches!(outcome, FenceOutcome::Fenced(_)),
            want,
            "age {age}: {outcome:?}"
        );
    }
}

struct PowerRow {
    name: &'static str,
    /// The BMC's power readings, in turn (the last repeats).
    status: &'static [Bmc],
    /// What the BMC does with an Off.
    off: Bmc,
    /// A reading taken through the same front this long before the fence (as investigation does).
    read_before: Option<u64>,
    /// The host's agent connected after that reading (it came back since).
    connected_after_read: bool,
    /// Or: it connected this many ms before the reading (0: at the same instant).
    connected_before_read_ms: Option<u64>,
    // expectations
    want: Got,
    /// Status readings (the one before included) and Offs.
    calls: (usize, usize),
    /// Seconds the fence took.
    took: u64,
}

const fn power(
    name: &'static str,
    status: &'static [Bmc],
    want: Got,
    calls: (usize, usize),
) -> PowerRow {
    PowerRow {
        name,
        status,
        off: Bmc::Is(PowerState::Off),
        read_before: None,
        connected_after_read: false,
        connected_before_read_ms: None,
        want,
        calls,
        took: 0,
    }
}

#[tokio::test(start_paused = true)]
async fn the_power_fencer_counts_only_a_confirmed_off() {
    use Bmc::*;
    use PowerState::*;
    let fenced = Got::Fenced(ProofKind::PowerFenced);
    let rows = [
        PowerRow {
            read_before: Some(0),
            ..power(
                "the investigation's reading just failed: straight to Off, then the read-back (3 calls in all)",
                &[Refuses, Is(Off)],
                fenced,
                (2, 1),
            )
        },
        PowerRow {
            read_before: Some(0),
            connected_before_read_ms: Some(5),
            ..power(
                "a reading that failed after the host's last connect counts: straight to Off",
                &[Refuses, Is(Off)],
                fenced,
                (2, 1),
            )
        },
        PowerRow {
            read_before: Some(0),
            connected_before_read_ms: Some(0),
            ..power(
                "a reading that failed the instant the host connected does not count: read again",
                &[Refuses, Is(On), Is(Off)],
                fenced,
                (3, 1),
            )
        },
        PowerRow {
            read_before: Some(0),
            connected_before_read_ms: Some(5),
            ..power(
                "an Off read after the host's last connect stays a proof",
                &[Is(Off)],
                fenced,
                (1, 0),
            )
        },
        PowerRow {
            read_before: Some(61),
            connected_before_read_ms: Some(0),
            ..power(
                "an Off read the instant the host connected is no proof once stale: read again",
                &[Is(Off), Is(On), Is(Off)],
                fenced,
                (3, 1),
            )
        },
        PowerRow {
            read_before: Some(59),
            ..power(
                "a reading failed 59 s ago: still straight to Off",
                &[Refuses, Is(Off)],
                fenced,
                (2, 1),
            )
        },
        PowerRow {
            read_before: Some(60),
            ..power(
                "a reading failed 60 s ago: read again first",
                &[Refuses, Is(On), Is(Off)],
                fenced,
                (3, 1),
            )
        },
        PowerRow {
            read_before: Some(0),
            connected_after_read: true,
            ..power(
                "a reading failed before the host's last connect: read again first",
                &[Refuses, Is(On), Is(Off)],
                fenced,
                (3, 1),
            )
        },
        PowerRow {
            read_before: Some(0),
            connected_after_read: true,
            ..power(
                "an Off read before the host's last connect is no proof: read again",
                &[Is(Off), Is(On), Is(Off)],
                fenced,
                (3, 1),
            )
        },
        power(
            "already off: fenced without an Off",
            &[Is(Off)],
            fenced,
            (1, 0),
        ),
        power(
            "On: Off, read back Off: fenced",
            &[Is(On), Is(Off)],
            fenced,
            (2, 1),
        ),
        PowerRow {
            off: Refuses,
            ..power(
                "the Off errors but the read-back says Off: fenced (#13376)",
                &[Is(On), Is(Off)],
                fenced,
                (2, 1),
            )
        },
        PowerRow {
            off: Hangs,
            took: 60,
            ..power(
                "the Off times out but the read-back says Off: fenced",
                &[Is(On), Is(Off)],
                fenced,
                (2, 1),
            )
        },
        power(
            "read back On: failed",
            &[Is(On), Is(On)],
            Got::Failed,
            (2, 1),
        ),
        power(
            "read back Unknown: failed",
            &[Is(On), Is(Unknown)],
            Got::Failed,
            (2, 1),
        ),
        power(
            "read back errors: failed",
            &[Is(On), Refuses],
            Got::Failed,
            (2, 1),
        ),
        PowerRow {
            took: 60,
            ..power(
                "read back hangs: failed",
                &[Is(On), Hangs],
                Got::Failed,
                (2, 1),
            )
        },
        PowerRow {
            off: Refuses,
            ..power(
                "the Off errors and the read-back says On: failed",
                &[Is(On), Is(On)],
                Got::Failed,
                (2, 1),
            )
        },
        power(
            "Unknown first: failed, no Off",
            &[Is(Unknown)],
            Got::Failed,
            (1, 0),
        ),
        power(
            "unreachable BMC: failed, no Off",
            &[Refuses],
            Got::Failed,
            (1, 0),
        ),
        PowerRow {
            took: 60,
            ..power(
                "the BMC hangs: failed after the bound, no Off",
                &[Hangs],
                Got::Failed,
                (1, 0),
            )
        },
        PowerRow {
            read_before: Some(0),
            ..power(
                "a fresh reading is reused: no extra status call (3 calls in all)",
                &[Is(On), Is(Off)],
                fenced,
                (2, 1),
            )
        },
        PowerRow {
            read_before: Some(59),
            ..power(
                "a fresh Off reading: fenced without another call",
                &[Is(Off)],
                fenced,
                (1, 0),
            )
        },
        PowerRow {
            read_before: Some(0),
            ..power(
                "a fresh Unknown reading: failed without another call",
                &[Is(Unknown)],
                Got::Failed,
                (1, 0),
            )
        },
        PowerRow {
            read_before: Some(0),
            connected_after_read: true,
            ..power(
                "a reading from before the host's last connect is read again",
                &[Is(Off), Is(On), Is(Off)],
                fenced,
                (3, 1),
            )
        },
        PowerRow {
            read_before: Some(61),
            ..power(
                "an Off reading stays a proof, however old, while the host has not connected since",
                &[Is(Off)],
                fenced,
                (1, 0),
            )
        },
        PowerRow {
            read_before: Some(61),
            ..power(
                "a stale On reading (older than 60 s) is read again",
                &[Is(On), Is(On), Is(Off)],
                fenced,
                (3, 1),
            )
        },
    ];
    for r in rows {
        let bmc = FakeBmc::new(r.status, &[r.off]);
        let oobm = bmc.front();
        let mut target = HostRecord::new(HOST, "h1", HypervisorType::Kvm);
        target.status = Some(Status::Down);
        if let Some(age) = r.read_before {
            if let Some(ms) = r.connected_before_read_ms {
                target.connected_at = Some(tokio_clock().now());
                sleep(Duration::from_millis(ms)).await;
            }
            let _ = oobm.power_status(HOST).await;
            if r.connected_after_read {
                // Strictly after the reading.
                sleep(Duration::from_millis(1)).await;
                target.connected_at = Some(tokio_clock().now());
            }
            sleep(Duration::from_secs(age)).await;
        }
        let t0 = Instant::now();
        let outcome = PowerFencer::new(oobm.clone())
            .fence(&vm_on(HOST), &target)
            .await;
        let took = t0.elapsed();
        let ctx = format!("{}: {outcome:?}", r.name);
        assert_eq!(got(&outcome), r.want, "{ctx}");
        assert_eq!((bmc.count("status"), bmc.count("off")), r.calls, "{ctx}");
        assert_eq!(
            oobm.calls(HOST),
            bmc.total() as u64,
            "{ctx}: the front counts every call"
        );
        // A reading from before, or at, the host's last connect says nothing of this round.
        if r.read_before.is_none_or(|age| age < 60)
            && !r.connected_after_read
            && r.connected_before_read_ms != Some(0)
        {
            assert!(bmc.total() <= 3, "{ctx}: at most 3 BMC calls in a round");
        }
        let took_want = Duration::from_secs(r.took);
        assert!(
            took >= took_want && took < took_want + Duration::from_secs(1),
            "{ctx}: took {took:?}"
        );
        if let FenceOutcome::Fenced(proof) = &outcome {
            let about = format!("host {HOST} ");
            assert!(proof.evidence().contains(&about), "{ctx}");
            assert_eq!(proof.timings(), None, "{ctx}: no self-fence timings");
        }
    }
}

/// The BMC front: every call bounded and counted, a reading kept for reuse only while fresh,
/// taken after the host's last connect, and not contradicted since (a failed reading or an Off).
#[tokio::test(start_paused = true)]
async fn the_oobm_front_bounds_counts_and_forgets() {
    use PowerState::*;
    let bmc = FakeBmc::new(
        &[
            Bmc::Is(On),
            Bmc::Is(On),
            Bmc::Refuses,
            Bmc::Is(Off),
            Bmc::Hangs,
        ],
        &[Bmc::Is(Off)],
    );
    let wait = Duration::from_secs(25);
    let oobm = Oobm::new(bmc.clone(), wait, clock());
    assert_eq!(oobm.fresh(HOST, None), None, "nothing read yet");
    let t0 = tokio_clock().now();
    assert_eq!(oobm.power_status(HOST).await, Ok(On));
    assert_eq!(
        oobm.fresh(HOST, None).map(|r| (r.state, r.at)),
        Some((On, t0))
    );
    assert_eq!(oobm.fresh(HOST, Some(t0)), None, "not after the connect");
    assert!(
        oobm.fresh(HOST, Some(t0 - Duration::from_secs(1)))
            .is_some()
    );
    sleep(POWER_READING_FRESH - Duration::from_millis(1)).await;
    assert!(oobm.fresh(HOST, None).is_some(), "still fresh");
    sleep(Duration::from_millis(1)).await;
    assert_eq!(
        oobm.fresh(HOST, None),
        None,
        "stale at {POWER_READING_FRESH:?}"
    );
    // A failed reading forgets the older one.
    assert_eq!(oobm.power_status(HOST).await, Ok(On));
    assert!(oobm.power_status(HOST).await.is_err());
    assert_eq!(
        oobm.fresh(HOST, None),
        None,
        "an older reading must not stand in"
    );
    // An Off forgets it too.
    assert_eq!(oobm.power_status(HOST).await, Ok(Off));
    assert_eq!(oobm.power_off(HOST).await, Ok(()));
    assert_eq!(oobm.fresh(HOST, None), None);
    // A hung BMC is cut at the bound.
    let t1 = Instant::now();
    let hung = oobm.power_status(HOST).await;
    assert!(hung.is_err(), "{hung:?}");
    assert!(
        t1.elapsed() >= wait && t1.elapsed() < wait + Duration::from_secs(1),
        "cut at {:?}",
        t1.elapsed()
    );
    assert_eq!(oobm.calls(HOST), 6);
    assert_eq!(oobm.calls(HostId(2)), 0);
    assert_eq!(bmc.total(), 6);
}

/// The fencers' names are recorded with every fence (reports, proofs, logs): part of the contract.
#[test]
fn the_fencers_names_are_cloudstacks() {
    let config = Config::default();
    let bmc = FakeBmc::reading(PowerState::On);
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new(Timestamp::UNIX_EPOCH));
    let oobm = Arc::new(Oobm::new(bmc, Duration::from_secs(60), clock.clone()));
    let commander: Arc<dyn HostCommander> = Arc::new(MockHostCommander::new());
    let store: Arc<dyn HostDirectory> = Arc::new(HostCache::new());
    assert_eq!(
        NeighbourFencer::new(commander.clone(), store.clone(), clock.clone(), &config).name(),
        "NeighbourFencer"
    );
    assert_eq!(
        XenPoolFencer::new(commander, store, clock, &config).name(),
        "XenPoolFencer"
    );
    assert_eq!(PowerFencer::new(oobm.clone()).name(), "PowerFencer");
    assert!(format!("{oobm:?}").starts_with("Oobm"), "{oobm:?}");
}
