//! One conformance suite for every store backend: the in-memory stores of `cloudha-ports`,
//! SQLite and PostgreSQL. Each check runs on each backend.
//!
//! PostgreSQL: the URL comes from `CLOUDHA_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`); each test works in a schema of its own and
//! drops it. When no server answers, the PostgreSQL tests say so loudly and pass, except under
//! `CI=true`, where they fail.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cloudha_ports::{
    HaWorkStore, HostRecord, HostStore, InMemoryHaWorkStore, InMemoryHostStore, OwnerId, ProofKind,
    ProofRecord, SelfFenceTimings, StoreError, Timestamp, VmRecord, WorkItem,
};
use cloudha_protocol::{
    ClusterId, Event, HostId, HypervisorType, ResourceState, Status, VmId, VmState, WorkReason,
    WorkStep, WorkType,
};
use cloudha_store::SqlStore;

mod support;

use support::{Schema, TempDb};

/// The stores of one backend, and how to "restart" them (reopen the same database). The
/// SQLite file and the PostgreSQL schema go with it.
enum Backend {
    Memory(Arc<InMemoryHaWorkStore>, Arc<InMemoryHostStore>),
    Sqlite(TempDb),
    Postgres(Schema),
}

struct Stores {
    work: Arc<dyn HaWorkStore>,
    hosts: Arc<dyn HostStore>,
    sql: Option<SqlStore>,
}

impl Backend {
    async fn open(&self) -> Stores {
        let url = match self {
            Self::Memory(w, h) => {
                return Stores {
                    work: w.clone(),
                    hosts: h.clone(),
                    sql: None,
                };
            }
            Self::Sqlite(db) => db.url(),
            Self::Postgres(schema) => schema.url.clone(),
        };
        let s = SqlStore::open(&url).await.unwrap();
        Stores {
            work: Arc::new(s.clone()),
            hosts: Arc::new(s.clone()),
            sql: Some(s),
        }
    }

    async fn close(&self, stores: Stores) {
        if let Some(s) = stores.sql {
            s.close().await;
        }
    }
}

async fn postgres(test: &str) -> Option<Backend> {
    support::schema("cloudha_t", test)
        .await
        .map(Backend::Postgres)
}

fn sqlite(test: &str) -> Backend {
    Backend::Sqlite(TempDb::new("cloudha-conformance", test))
}

fn memory() -> Backend {
    Backend::Memory(
        Arc::new(InMemoryHaWorkStore::new()),
        Arc::new(InMemoryHostStore::new()),
    )
}

/// Runs `check` on every backend.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let b = super::memory();
                    super::$name(&b).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let b = super::sqlite(stringify!($name));
                    super::$name(&b).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(b) = super::postgres(stringify!($name)).await else { return };
                    super::$name(&b).await;
                }
            )*
        }
    };
}

conformance!(
    claims_are_exclusive_under_concurrent_claimers,
    a_former_owner_cannot_write,
    release_hands_claims_back,
    work_resumes_after_a_restart,
    history_is_append_only,
    times_and_fields_round_trip,
    due_order_brake_and_cleanup,
    host_status_is_a_compare_and_set,
    status_writes_at_once_each_get_their_own_answer,
    last_pings_never_move_back,
);

const T0: Timestamp = Timestamp::from_micros(1_764_000_000_000_000);

fn at(secs: u64) -> Timestamp {
    T0 + Duration::from_secs(secs)
}

fn vm(id: u64) -> VmRecord {
    let mut v = VmRecord::new(VmId(id), format!("vm{id}"), HypervisorType::Kvm);
    v.state = VmState::Running;
    v.host = Some(HostId(1));
    v.update_count = 3;
    v
}

fn item(vm_id: u64, due: Timestamp) -> WorkItem {
    WorkItem::new(
        WorkType::Ha,
        WorkStep::Investigating,
        WorkReason::HostDown,
        &vm(vm_id),
        Some(HostId(1)),
        due,
    )
}

async fn claims_are_exclusive_under_concurrent_claimers(b: &Backend) {
    let s = b.open().await;
    let mut ids = HashSet::new();
    for n in 0..120 {
        ids.insert(s.work.insert(item(n, at(n % 7))).await.unwrap());
    }
    let mut tasks = Vec::new();
    for owner in 1..=6 {
        let work = s.work.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(w) = work.take(OwnerId(owner), at(10)).await.unwrap() {
                assert_eq!(w.owner, Some(OwnerId(owner)));
                mine.push(w.id);
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(seen.insert(id), "{id} claimed twice");
        }
    }
    assert_eq!(seen, ids, "every item claimed exactly once");
    b.close(s).await;
}

async fn a_former_owner_cannot_write(b: &Backend) {
    let s = b.open().await;
    let id = s.work.insert(item(1, at(0))).await.unwrap();
    let mut mine = s.work.take(OwnerId(1), at(0)).await.unwrap().unwrap();
    assert_eq!(mine.id, id);
    // Another owner cannot write it.
    let err = s.work.update(OwnerId(2), &mine).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Stale {
                holder: Some(OwnerId(1)),
                writer: OwnerId(2),
                ..
            }
        ),
        "{err}"
    );
    // The holder can, once per version read.
    mine.step = WorkStep::Scheduled;
    let v = s.work.update(OwnerId(1), &mine).await.unwrap();
    assert_eq!(v, mine.version + 1);
    let err = s.work.update(OwnerId(1), &mine).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Stale { current, .. } if current == v),
        "{err}"
    );
    // Its claim moves (release, then another owner takes it): the former owner's copy, even
    // at the latest version it saw, is refused.
    mine.version = v;
    s.work.release_owner(OwnerId(1)).await.unwrap();
    let theirs = s.work.take(OwnerId(2), at(0)).await.unwrap().unwrap();
    assert_eq!(theirs.id, id);
    mine.step = WorkStep::Done;
    let err = s.work.update(OwnerId(1), &mine).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Stale {
                holder: Some(OwnerId(2)),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        s.work.get(id).await.unwrap().unwrap().step,
        WorkStep::Scheduled,
        "the refused write left nothing"
    );
    // An unknown item is named.
    let mut ghost = theirs.clone();
    ghost.id = cloudha_protocol::WorkId(9_999);
    assert!(matches!(
        s.work.update(OwnerId(2), &ghost).await.unwrap_err(),
        StoreError::UnknownWork(_)
    ));
    b.close(s).await;
}

async fn release_hands_claims_back(b: &Backend) {
    let s = b.open().await;
    for n in 0..3 {
        s.work.insert(item(n, at(0))).await.unwrap();
    }
    let a = s.work.take(OwnerId(1), at(0)).await.unwrap().unwrap();
    let mut done = s.work.take(OwnerId(1), at(0)).await.unwrap().unwrap();
    done.step = WorkStep::Done;
    s.work.update(OwnerId(1), &done).await.unwrap();
    let c = s.work.take(OwnerId(2), at(0)).await.unwrap().unwrap();
    assert!(s.work.take(OwnerId(3), at(0)).await.unwrap().is_none());
    // Releasing owner 1 frees its open claim only (not the final item, not owner 2's).
    assert_eq!(s.work.release_owner(OwnerId(1)).await.unwrap(), 1);
    let again = s.work.take(OwnerId(3), at(0)).await.unwrap().unwrap();
    assert_eq!(again.id, a.id);
    assert!(again.version > a.version);
    assert_eq!(
        s.work.get(c.id).await.unwrap().unwrap().owner,
        Some(OwnerId(2))
    );
    b.close(s).await;
}

async fn work_resumes_after_a_restart(b: &Backend) {
    let s = b.open().await;
    let fencing = s.work.insert(item(1, at(0))).await.unwrap();
    let mut w = s.work.take(OwnerId(1), at(0)).await.unwrap().unwrap();
    w.step = WorkStep::Fencing;
    w.tries = 2;
    s.work.update(OwnerId(1), &w).await.unwrap();
    let mut other = item(2, at(30));
    other.step = WorkStep::Restarting;
    let starting = s.work.insert(other).await.unwrap();
    b.close(s).await;

    // The manager died holding `fencing`; a new one starts over the same database.
    let s = b.open().await;
    assert_eq!(s.work.pending().await.unwrap(), 2);
    assert_eq!(s.work.release_owner(OwnerId(1)).await.unwrap(), 1);
    assert_eq!(s.work.mark_pending_investigating(at(60)).await.unwrap(), 2);
    for id in [fencing, starting] {
        let w = s.work.get(id).await.unwrap().unwrap();
        assert_eq!(w.step, WorkStep::Investigating, "{id}");
        assert_eq!(w.owner, None);
        assert!(
            w.history.last().unwrap().what.contains("-> Investigating"),
            "{:?}",
            w.history
        );
    }
    assert_eq!(s.work.get(fencing).await.unwrap().unwrap().tries, 2);
    assert!(s.work.take(OwnerId(2), at(60)).await.unwrap().is_some());
    b.close(s).await;
}

async fn history_is_append_only(b: &Backend) {
    let s = b.open().await;
    let id = s.work.insert(item(1, at(0))).await.unwrap();
    let mut w = s.work.take(OwnerId(1), at(0)).await.unwrap().unwrap();
    assert_eq!(w.history.len(), 1, "the scheduling note");
    w.note(at(1), "fenced: power off");
    w.note(at(2), "starting");
    w.version = s.work.update(OwnerId(1), &w).await.unwrap();
    // A writer whose copy lost events cannot erase them.
    let mut short = w.clone();
    short.history.truncate(1);
    short.version = s.work.update(OwnerId(1), &short).await.unwrap();
    let stored = s.work.get(id).await.unwrap().unwrap();
    assert_eq!(
        stored
            .history
            .iter()
            .map(|e| (e.at, e.what.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (at(0), stored.history[0].what.as_str()),
            (at(1), "fenced: power off"),
            (at(2), "starting"),
        ]
    );
    let mut more = stored.clone();
    more.version = short.version;
    more.note(at(3), "done");
    s.work.update(OwnerId(1), &more).await.unwrap();
    assert_eq!(s.work.get(id).await.unwrap().unwrap().history.len(), 4);
    b.close(s).await;
}

async fn times_and_fields_round_trip(b: &Backend) {
    let s = b.open().await;
    let mut w = item(7, at(0) + Duration::from_micros(123_457));
    w.work_type = WorkType::Migration;
    w.reason = WorkReason::HostMaintenance;
    w.previous_state = VmState::Migrating;
    w.fence_proof = Some(ProofRecord::new(
        ProofKind::SelfFenced,
        Some(HostId(4)),
        "heartbeat stale: ünïcode ✓ and 'quotes'",
        at(5) + Duration::from_micros(1),
        Some(SelfFenceTimings::new(
            Duration::from_micros(91_000_001),
            Duration::from_secs(110),
        )),
    ));
    w.start_attempts = 3;
    w.start_unknown = true;
    let id = s.work.insert(w.clone()).await.unwrap();
    let got = s.work.get(id).await.unwrap().unwrap();
    w.id = id;
    assert_eq!(got, w, "an item reads back as written (version 0)");
    assert_eq!(
        got.start_key().map(|k| k.to_string()),
        Some(format!("{id}/3")),
        "the start key survives"
    );
    assert_eq!(s.work.for_vm(VmId(7)).await.unwrap(), vec![w.clone()]);
    assert_eq!(s.work.list().await.unwrap(), vec![w]);

    let mut h = HostRecord::new(HostId(3), "kvm-3", HypervisorType::Kvm);
    h.cluster = Some(ClusterId(2));
    h.pod = Some(cloudha_protocol::PodId(5));
    h.zone = Some(cloudha_protocol::ZoneId(1));
    h.status = Some(Status::Up);
    h.last_ping = Some(at(9) + Duration::from_micros(999_999));
    h.connected_at = Some(at(1));
    h.tags = vec!["ha_host".into(), "gpu".into()];
    h.self_fence_independent = true;
    h.update_count = 4;
    s.hosts.upsert(&h).await.unwrap();
    assert_eq!(s.hosts.get(HostId(3)).await.unwrap(), Some(h.clone()));
    s.hosts
        .set_resource_state(HostId(3), ResourceState::Maintenance)
        .await
        .unwrap();
    h.resource_state = ResourceState::Maintenance;
    assert_eq!(s.hosts.list().await.unwrap(), vec![h]);
    assert!(matches!(
        s.hosts
            .set_resource_state(HostId(99), ResourceState::Enabled)
            .await
            .unwrap_err(),
        StoreError::UnknownHost(HostId(99))
    ));
    b.close(s).await;
}

async fn due_order_brake_and_cleanup(b: &Backend) {
    let s = b.open().await;
    let late = s.work.insert(item(1, at(20))).await.unwrap();
    let early = s.work.insert(item(2, at(10))).await.unwrap();
    let mut held = item(3, at(0));
    held.braked = true;
    let braked = s.work.insert(held).await.unwrap();
    assert_eq!(s.work.next_due().await.unwrap(), Some(at(10)));
    assert!(
        s.work.take(OwnerId(1), at(5)).await.unwrap().is_none(),
        "nothing due"
    );
    let first = s.work.take(OwnerId(1), at(30)).await.unwrap().unwrap();
    assert_eq!(first.id, early, "earliest due first");
    assert_eq!(s.work.unbrake(at(40), &[VmId(3)]).await.unwrap(), 1);
    let w = s.work.get(braked).await.unwrap().unwrap();
    assert!(!w.braked);
    assert_eq!(w.time_to_try, at(40));
    assert_eq!(w.history.last().unwrap().what, "brake lifted");
    let second = s.work.take(OwnerId(1), at(30)).await.unwrap().unwrap();
    assert_eq!(second.id, late);
    // Cleanup removes final items due at or before the cutoff, and nothing else.
    let mut done = first;
    done.step = WorkStep::Done;
    s.work.update(OwnerId(1), &done).await.unwrap();
    assert_eq!(s.work.pending().await.unwrap(), 2);
    assert_eq!(s.work.cleanup(at(9)).await.unwrap(), 0);
    assert_eq!(s.work.cleanup(at(10)).await.unwrap(), 1);
    assert!(s.work.get(early).await.unwrap().is_none());
    assert_eq!(s.work.list().await.unwrap().len(), 2);
    b.close(s).await;
}

async fn host_status_is_a_compare_and_set(b: &Backend) {
    let s = b.open().await;
    s.hosts
        .upsert(&HostRecord::new(HostId(1), "kvm-1", HypervisorType::Kvm))
        .await
        .unwrap();
    let h = s
        .hosts
        .update_status(
            HostId(1),
            None,
            0,
            Status::Connecting,
            Event::AgentConnected,
            at(1),
        )
        .await
        .unwrap();
    assert_eq!(
        (h.status, h.update_count, h.connected_at, h.last_ping),
        (Some(Status::Connecting), 1, Some(at(1)), Some(at(1)))
    );
    // A writer that read the old record loses.
    let err = s
        .hosts
        .update_status(HostId(1), None, 0, Status::Up, Event::Ready, at(2))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    // Two writers from the same record: exactly one wins.
    let (a, b2) = tokio::join!(
        s.hosts.update_status(
            HostId(1),
            Some(Status::Connecting),
            1,
            Status::Up,
            Event::Ready,
            at(3)
        ),
        s.hosts.update_status(
            HostId(1),
            Some(Status::Connecting),
            1,
            Status::Disconnected,
            Event::AgentDisconnected,
            at(3)
        ),
    );
    assert_eq!(usize::from(a.is_ok()) + usize::from(b2.is_ok()), 1);
    let stored = s.hosts.get(HostId(1)).await.unwrap().unwrap();
    assert_eq!(stored.update_count, 2);
    assert!(matches!(
        s.hosts
            .update_status(HostId(9), None, 0, Status::Up, Event::Ready, at(3))
            .await
            .unwrap_err(),
        StoreError::UnknownHost(HostId(9))
    ));
    if let Some(sql) = &s.sql {
        let history = sql.status_history(HostId(1)).await.unwrap();
        assert_eq!(history.len(), 2, "{history:?}");
        assert_eq!(
            history[0],
            (at(1), None, Status::Connecting, Event::AgentConnected)
        );
        assert_eq!(history[1].2, stored.status.unwrap());
    }
    b.close(s).await;
}

async fn last_pings_never_move_back(b: &Backend) {
    let s = b.open().await;
    for n in 1..=3 {
        s.hosts
            .upsert(&HostRecord::new(
                HostId(n),
                format!("kvm-{n}"),
                HypervisorType::Kvm,
            ))
            .await
            .unwrap();
    }
    s.hosts
        .set_last_pings(&[
            (HostId(1), at(10)),
            (HostId(2), at(10)),
            (HostId(77), at(10)),
        ])
        .await
        .unwrap();
    // A late batch, a host named twice, an unknown host.
    s.hosts
        .set_last_pings(&[
            (HostId(1), at(5)),
            (HostId(2), at(12)),
            (HostId(2), at(11)),
            (HostId(3), at(1)),
        ])
        .await
        .unwrap();
    let pings: Vec<Option<Timestamp>> = s
        .hosts
        .list()
        .await
        .unwrap()
        .iter()
        .map(|h| h.last_ping)
        .collect();
    assert_eq!(pings, vec![Some(at(10)), Some(at(12)), Some(at(1))]);
    // A big batch (more than one statement's worth).
    let many: Vec<(HostId, Timestamp)> = (1..=1_200).map(|n| (HostId(n % 3 + 1), at(n))).collect();
    s.hosts.set_last_pings(&many).await.unwrap();
    let pings: Vec<Option<Timestamp>> = s
        .hosts
        .list()
        .await
        .unwrap()
        .iter()
        .map(|h| h.last_ping)
        .collect();
    assert_eq!(
        pings,
        vec![Some(at(1_200)), Some(at(1_198)), Some(at(1_199))]
    );
    b.close(s).await;
}

/// Many status writes at once (a rack flapping): each is its own compare-and-set with its own
/// answer however the store groups them; writes of one host from the same record: one wins;
/// a caller that goes away mid-write leaves no other caller waiting for ever.
async fn status_writes_at_once_each_get_their_own_answer(b: &Backend) {
    let s = b.open().await;
    const HOSTS: u64 = 1200;
    for n in 1..=HOSTS {
        let mut h = HostRecord::new(HostId(n), format!("kvm-{n}"), HypervisorType::Kvm);
        h.status = Some(Status::Up);
        s.hosts.upsert(&h).await.unwrap();
    }
    let write = |hosts: Arc<dyn HostStore>, n: u64, to: Status, event: Event| async move {
        hosts
            .update_status(HostId(n), Some(Status::Up), 0, to, event, at(n))
            .await
    };
    // Every host once, and host 1 thirty times more from the same record, all at once.
    let mut tasks = Vec::new();
    for n in 1..=HOSTS {
        tasks.push(tokio::spawn(write(
            s.hosts.clone(),
            n,
            Status::Disconnected,
            Event::AgentDisconnected,
        )));
    }
    for _ in 0..30 {
        tasks.push(tokio::spawn(write(
            s.hosts.clone(),
            1,
            Status::Alert,
            Event::PingTimeout,
        )));
    }
    let unknown = tokio::spawn(write(
        s.hosts.clone(),
        HOSTS + 7,
        Status::Down,
        Event::HostDown,
    ));
    let mut won_host_1 = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(60), t).await {
            Ok(Ok(Ok(h))) => {
                assert_eq!(h.update_count, 1, "{h:?}");
                assert!(
                    h.status == Some(Status::Disconnected) && h.disconnected_on == Some(at(h.id.0))
                        || h.status == Some(Status::Alert) && h.id == HostId(1),
                    "{h:?}"
                );
                if h.id == HostId(1) {
                    won_host_1 += 1;
                }
            }
            Ok(Ok(Err(StoreError::Conflict { host, .. }))) => assert_eq!(host, HostId(1)),
            other => panic!("write {i}: {other:?}"),
        }
    }
    assert_eq!(won_host_1, 1, "one of host 1's 31 writes won");
    assert!(matches!(
        unknown.await.unwrap(),
        Err(StoreError::UnknownHost(h)) if h == HostId(HOSTS + 7)
    ));
    for n in [2, HOSTS / 2, HOSTS] {
        let h = s.hosts.get(HostId(n)).await.unwrap().unwrap();
        assert_eq!((h.status, h.update_count), (Some(Status::Disconnected), 1));
        if let Some(sql) = &s.sql {
            let history = sql.status_history(HostId(n)).await.unwrap();
            assert_eq!(
                history,
                vec![(
                    at(n),
                    Some(Status::Up),
                    Status::Disconnected,
                    Event::AgentDisconnected
                )]
            );
        }
    }
    if let Some(sql) = &s.sql {
        assert_eq!(sql.status_history(HostId(1)).await.unwrap().len(), 1);
    }

    // Callers that go away at once (one of them may be writing for the others): every other
    // caller still gets an answer, and each host moves at most once.
    let mut tasks = Vec::new();
    for n in 1..=HOSTS {
        let hosts = s.hosts.clone();
        let call = async move {
            hosts
                .update_status(
                    HostId(n),
                    Some(Status::Disconnected),
                    1,
                    Status::Up,
                    Event::Ready,
                    at(HOSTS + n),
                )
                .await
        };
        if n % 3 == 0 {
            tasks.push(tokio::spawn(async move {
                tokio::time::timeout(Duration::ZERO, call)
                    .await
                    .unwrap_or_else(|_| Err(StoreError::UnknownHost(HostId(0))))
            }));
        } else {
            tasks.push(tokio::spawn(call));
        }
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let answered = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap_or_else(|_| panic!("write {i} got no answer"))
            .unwrap();
        if let Err(e) = answered {
            // Gone (ours), or its writer went away with it: said, never a wrong answer.
            assert!(
                matches!(e, StoreError::UnknownHost(HostId(0)))
                    || e.to_string().contains("went away")
                    || format!("{:?}", std::error::Error::source(&e)).contains("went away"),
                "write {i}: {e}"
            );
        }
    }
    for n in 1..=HOSTS {
        let h = s.hosts.get(HostId(n)).await.unwrap().unwrap();
        assert!(h.update_count <= 2, "{h:?}");
    }
    b.close(s).await;
}
