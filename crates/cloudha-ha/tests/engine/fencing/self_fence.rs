//! The neighbour (KVM) and pool (XenServer) fencers: a host is proven dead only once its
//! heartbeat is older than the self-fence deadline. One table holds the rows of both.

use tokio::time::{Instant, sleep};

use super::*;

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
        let config = {
            let mut c = Config::default();
            c.liveness.ha_investigators_agreement = r.agreement;
            c
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
                config.ha.kvm_self_fence_deadline(),
            ),
            Which::Pool => (
                Box::new(XenPoolFencer::new(
                    commander.clone(),
                    store,
                    clock(),
                    &config,
                )),
                config.ha.xen_self_fence_deadline(),
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
            Config::default().ha.kvm_self_fence_deadline(),
            Config::default().ha.xen_self_fence_deadline()
        ),
        (Duration::from_secs(110), Duration::from_secs(60)),
        "the defaults the rows assume"
    );
}

/// The deadline follows the manager's assumed heartbeat timings (`kvm.heartbeat.*`).
#[tokio::test(start_paused = true)]
async fn the_neighbour_fencers_deadline_follows_the_heartbeat_settings() {
    let config = {
        let mut c = Config::default();
        c.ha.kvm_heartbeat_interval = Duration::from_secs(30);
        c.ha.kvm_heartbeat_staleness = Duration::from_secs(40);
        c.ha.kvm_heartbeat_write_retries = 3;
        c.ha.kvm_heartbeat_retry_interval = Duration::from_secs(20);
        c
    };
    assert_eq!(
        config.ha.kvm_self_fence_deadline(),
        Duration::from_secs(100)
    );
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
