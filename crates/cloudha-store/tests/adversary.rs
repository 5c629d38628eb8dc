//! Adversary tests: races between store handles, parameter limits, bad rows, and the SQL stores
//! against the in-memory stores on random operation sequences.

use std::time::Duration;

use cloudha_ports::{
    HaWorkStore, HostRecord, HostStore, InMemoryHaWorkStore, OwnerId, StoreError, Timestamp,
    VmRecord, WorkItem,
};
use cloudha_protocol::{
    Event, HostId, HypervisorType, Status, VmId, VmState, WorkReason, WorkStep, WorkType,
};
use cloudha_store::SqlStore;
use sqlx::Executor;

const T0: Timestamp = Timestamp::from_micros(1_764_000_000_000_000);

fn at(secs: u64) -> Timestamp {
    T0 + Duration::from_secs(secs)
}

fn item(vm_id: u64, due: Timestamp) -> WorkItem {
    let mut v = VmRecord::new(VmId(vm_id), format!("vm{vm_id}"), HypervisorType::Kvm);
    v.state = VmState::Running;
    v.host = Some(HostId(1));
    WorkItem::new(
        WorkType::Ha,
        WorkStep::Investigating,
        WorkReason::HostDown,
        &v,
        Some(HostId(1)),
        due,
    )
}

mod support;

use support::{Schema, TempDb};

/// A fresh schema; its URL, a side pool whose connections use it, and the guard that drops it.
async fn pg(test: &str) -> Option<(String, sqlx::AnyPool, Schema)> {
    let schema = support::schema("cloudha_adv", test).await?;
    let side = sqlx::any::AnyPoolOptions::new()
        .max_connections(2)
        .connect(&schema.url)
        .await
        .unwrap();
    Some((schema.url.clone(), side, schema))
}

fn sqlite_path(test: &str) -> TempDb {
    TempDb::new("cloudha-adv", test)
}

/// A status change racing a batch of last pings (another manager, another connection) must not
/// write the last ping it read back over the newer one: "a late batch never moves it back", and
/// neither may a status write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_status_change_keeps_a_concurrent_newer_last_ping() {
    let Some((url, side, _schema)) = pg("status_vs_ping").await else {
        eprintln!("SKIPPED: no PostgreSQL");
        return;
    };
    let store = SqlStore::open(&url).await.unwrap();
    let mut h = HostRecord::new(HostId(1), "h1", HypervisorType::Kvm);
    h.status = Some(Status::Up);
    h.last_ping = Some(at(0));
    HostStore::upsert(&store, &h).await.unwrap();

    // The ping writer's transaction: the newer ping, not yet committed, row locked.
    let mut other = side.begin().await.unwrap();
    sqlx::query("UPDATE hosts SET last_ping = $1 WHERE id = 1")
        .bind(i64::try_from(at(100).as_micros()).unwrap())
        .execute(&mut *other)
        .await
        .unwrap();
    let s2 = store.clone();
    let change = tokio::spawn(async move {
        s2.update_status(
            HostId(1),
            Some(Status::Up),
            0,
            Status::Alert,
            Event::PingTimeout,
            at(50),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    other.commit().await.unwrap();
    change.await.unwrap().unwrap();
    let now = HostStore::get(&store, HostId(1)).await.unwrap().unwrap();
    assert_eq!(now.status, Some(Status::Alert));
    assert_eq!(
        now.last_ping,
        Some(at(100)),
        "the status change wrote its stale last ping back over a newer one"
    );
}

/// `mark_pending_investigating` (and `unbrake`) read, then write every column without a check:
/// a claim another manager made in between must not be wiped (its owner would be fenced off and
/// the item handed to a second manager while the first still works on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_mark_pending_investigating_keeps_a_concurrent_claim() {
    let Some((url, side, _schema)) = pg("mark_vs_take").await else {
        eprintln!("SKIPPED: no PostgreSQL");
        return;
    };
    let store = SqlStore::open(&url).await.unwrap();
    let mut w = item(1, at(0));
    w.step = WorkStep::Fencing;
    let id = store.insert(w).await.unwrap();

    // Another manager's claim, in flight.
    let mut other = side.begin().await.unwrap();
    sqlx::query("UPDATE ha_work SET owner = 7, taken = 1, version = version + 1 WHERE id = $1")
        .bind(i64::try_from(id.0).unwrap())
        .execute(&mut *other)
        .await
        .unwrap();
    let s2 = store.clone();
    let mark = tokio::spawn(async move { s2.mark_pending_investigating(at(5)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    other.commit().await.unwrap();
    let _ = mark.await.unwrap();
    let now = HaWorkStore::get(&store, id).await.unwrap().unwrap();
    assert_eq!(
        now.owner,
        Some(OwnerId(7)),
        "the claim of manager 7 was wiped"
    );
    assert_eq!(now.step, WorkStep::Fencing, "a claimed item was moved");
}

async fn unbrake_many(store: &SqlStore) {
    let mut w = item(3, at(0));
    w.braked = true;
    store.insert(w).await.unwrap();
    let vms: Vec<VmId> = (0..70_000).map(VmId).collect();
    assert_eq!(store.unbrake(at(1), &vms).await.unwrap(), 1);
    assert_eq!(store.unbrake(at(1), &[]).await.unwrap(), 0);
}

/// The brake can hold thousands of VMs (a whole zone): lifting it must not hit the database's
/// limit on statement parameters (SQLite 32766, PostgreSQL 65535).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_unbrake_of_very_many_vms() {
    let path = sqlite_path("unbrake");
    let store = SqlStore::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    unbrake_many(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_unbrake_of_very_many_vms() {
    let Some((url, _side, _schema)) = pg("unbrake").await else {
        eprintln!("SKIPPED: no PostgreSQL");
        return;
    };
    let store = SqlStore::open(&url).await.unwrap();
    unbrake_many(&store).await;
}

/// Two store handles (two processes) on one SQLite file race the same status change: one wins,
/// the other is told of the conflict (not a database error), and the history holds one change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_handles_race_update_status() {
    let path = sqlite_path("two_handles");
    let url = format!("sqlite:{}", path.display());
    let a = SqlStore::open(&url).await.unwrap();
    let b = SqlStore::open(&url).await.unwrap();
    let mut results = Vec::new();
    for round in 0..40u64 {
        let mut h = HostRecord::new(HostId(round + 1), "h", HypervisorType::Kvm);
        h.status = Some(Status::Up);
        HostStore::upsert(&a, &h).await.unwrap();
        let (ra, rb) = tokio::join!(
            a.update_status(
                HostId(round + 1),
                Some(Status::Up),
                0,
                Status::Alert,
                Event::PingTimeout,
                at(1)
            ),
            b.update_status(
                HostId(round + 1),
                Some(Status::Up),
                0,
                Status::Down,
                Event::HostDown,
                at(1)
            ),
        );
        let wins = usize::from(ra.is_ok()) + usize::from(rb.is_ok());
        assert!(wins <= 1, "both handles moved host {}", round + 1);
        for r in [&ra, &rb] {
            if let Err(e) = r {
                results.push(format!("{e}"));
                assert!(
                    matches!(e, StoreError::Conflict { .. }),
                    "the loser got a database error, not a conflict: {e}"
                );
            }
        }
        assert_eq!(wins, 1, "round {round}: nobody won: {results:?}");
        assert_eq!(a.status_history(HostId(round + 1)).await.unwrap().len(), 1);
    }
}

/// Rows edited by hand: a bad enum name or a negative counter is an error naming the column,
/// never a panic. A claimed row that does not decode stays held by the claimer that got the
/// error (it is not handed out again, and the queue behind it goes on); a manager restart's
/// `release_owner` frees it, to fail again until the row is mended by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_bad_rows_are_errors() {
    let path = sqlite_path("bad_rows");
    let url = format!("sqlite:{}", path.display());
    let store = SqlStore::open(&url).await.unwrap();
    let id = store.insert(item(1, at(0))).await.unwrap();
    let good = store.insert(item(2, at(5))).await.unwrap();
    let mut h = HostRecord::new(HostId(1), "h", HypervisorType::Kvm);
    h.status = Some(Status::Up);
    HostStore::upsert(&store, &h).await.unwrap();
    let raw = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    raw.execute("UPDATE hosts SET update_count = -1")
        .await
        .unwrap();
    let e = HostStore::get(&store, HostId(1)).await.unwrap_err();
    assert!(format!("{e:?}").contains("update_count"), "{e:?}");
    raw.execute("UPDATE hosts SET status = 'Upp', update_count = 0")
        .await
        .unwrap();
    assert!(HostStore::list(&store).await.is_err());
    raw.execute(format!("UPDATE ha_work SET step = 'Nope' WHERE id = {}", id.0).as_str())
        .await
        .unwrap();
    let e = store.take(OwnerId(1), at(10)).await.unwrap_err();
    assert!(format!("{e:?}").contains("step"), "{e:?}");
    // The queue goes on behind the bad row: the next item is handed out.
    let next = store.take(OwnerId(2), at(10)).await.unwrap().unwrap();
    assert_eq!(next.id, good);
    raw.execute(
        format!(
            "UPDATE ha_work SET step = 'Investigating' WHERE id = {}",
            id.0
        )
        .as_str(),
    )
    .await
    .unwrap();
    // Mended by hand, the row shows who holds it; a restart's release frees it.
    let held = HaWorkStore::get(&store, id).await.unwrap().unwrap();
    assert_eq!(held.owner, Some(OwnerId(1)));
    assert_eq!(store.release_owner(OwnerId(1)).await.unwrap(), 1);
    assert_eq!(
        store.take(OwnerId(3), at(10)).await.unwrap().unwrap().id,
        id
    );
    raw.close().await;
}

/// ids and counters above i64::MAX cannot be stored; they must be refused, not wrapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_values_above_i64_max_are_refused() {
    let path = sqlite_path("big");
    let store = SqlStore::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    let h = HostRecord::new(HostId(u64::MAX), "h", HypervisorType::Kvm);
    assert!(HostStore::upsert(&store, &h).await.is_err());
    let mut h = HostRecord::new(HostId(i64::MAX as u64), "h", HypervisorType::Kvm);
    h.update_count = i64::MAX as u64;
    h.status = Some(Status::Up);
    HostStore::upsert(&store, &h).await.unwrap();
    let r = store
        .update_status(
            h.id,
            Some(Status::Up),
            i64::MAX as u64,
            Status::Alert,
            Event::PingTimeout,
            at(1),
        )
        .await;
    assert!(r.is_err(), "update_count past i64::MAX: {r:?}");
    assert_eq!(
        HostStore::get(&store, h.id).await.unwrap().unwrap().status,
        Some(Status::Up)
    );
    store
        .set_last_pings(&[(HostId(u64::MAX), at(1))])
        .await
        .unwrap_err();
    assert!(store.take(OwnerId(u64::MAX), at(1)).await.is_err());
    // A huge batch and an empty one.
    let pings: Vec<_> = (1..20_000u64).map(|i| (HostId(i), at(i))).collect();
    store.set_last_pings(&pings).await.unwrap();
    store.set_last_pings(&[]).await.unwrap();
}

/// A tiny deterministic generator (no dev-dependency needed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A work item as compared across stores.
fn norm(w: &WorkItem) -> String {
    format!(
        "{:?} vm{} {:?} {:?} host{:?} tries{} due{} owner{:?} taken{:?} v{} braked{} hist{:?}",
        w.id,
        w.vm.0,
        w.work_type,
        w.step,
        w.host,
        w.tries,
        w.time_to_try.as_micros(),
        w.owner,
        w.taken.map(|t| t.as_micros()),
        w.version,
        w.braked,
        w.history
            .iter()
            .map(|e| (e.at.as_micros(), e.what.clone()))
            .collect::<Vec<_>>()
    )
}

fn res<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> String {
    match r {
        Ok(v) => format!("Ok({v:?})"),
        Err(StoreError::Stale { .. }) => "Stale".into(),
        Err(StoreError::UnknownWork(id)) => format!("Unknown({id:?})"),
        Err(e) => format!("Err({e})"),
    }
}

/// Random operation sequences on the in-memory store and on SQLite: the same answers, the same
/// items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_matches_memory_on_random_sequences() {
    for seed in 1..=12u64 {
        let path = sqlite_path(&format!("prop{seed}"));
        let sql = SqlStore::open(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        random_sequence(seed, &sql).await;
        sql.close().await;
    }
}

/// The same on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_matches_memory_on_random_sequences() {
    for seed in 1..=6u64 {
        let Some((url, _side, _schema)) = pg(&format!("prop{seed}")).await else {
            eprintln!("SKIPPED: no PostgreSQL");
            return;
        };
        let sql = SqlStore::open(&url).await.unwrap();
        random_sequence(seed, &sql).await;
        sql.close().await;
    }
}

async fn random_sequence(seed: u64, sql: &SqlStore) {
    {
        let mem = InMemoryHaWorkStore::new();
        let stores: [&dyn HaWorkStore; 2] = [&mem, sql];
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut held: Vec<WorkItem> = Vec::new();
        let mut log = Vec::new();
        for step in 0..150 {
            let op = rng.below(10);
            let mut out = Vec::new();
            match op {
                0 | 1 => {
                    let mut w = item(rng.below(5), at(rng.below(20)));
                    w.braked = rng.below(4) == 0;
                    if rng.below(3) == 0 {
                        w.note(at(1), "created");
                    }
                    for s in stores {
                        out.push(res(&s.insert(w.clone()).await));
                    }
                }
                2 | 3 => {
                    let owner = OwnerId(rng.below(3) + 1);
                    let now = at(rng.below(25));
                    for (k, s) in stores.into_iter().enumerate() {
                        let r = s.take(owner, now).await;
                        out.push(match &r {
                            Ok(Some(w)) => norm(w),
                            _ => res(&r),
                        });
                        if let (0, Ok(Some(w))) = (k, r) {
                            held.push(w);
                        }
                    }
                }
                4 | 5 if !held.is_empty() => {
                    let i = rng.below(held.len() as u64) as usize;
                    let mut w = held[i].clone();
                    let writer = if rng.below(5) == 0 {
                        OwnerId(rng.below(3) + 1)
                    } else {
                        w.owner.unwrap_or(OwnerId(1))
                    };
                    w.step = [
                        WorkStep::Investigating,
                        WorkStep::Fencing,
                        WorkStep::Done,
                        WorkStep::Scheduled,
                    ][rng.below(4) as usize];
                    w.tries += 1;
                    w.time_to_try = at(rng.below(30));
                    w.note(at(step), format!("step {step}"));
                    if rng.below(2) == 0 {
                        w.owner = None;
                        w.taken = None;
                    }
                    w.braked = rng.below(6) == 0;
                    for s in stores {
                        out.push(res(&s.update(writer, &w).await));
                    }
                    if rng.below(2) == 0 {
                        held.remove(i);
                    }
                }
                6 => {
                    let o = OwnerId(rng.below(3) + 1);
                    for s in stores {
                        out.push(res(&s.release_owner(o).await));
                    }
                }
                7 => {
                    let now = at(rng.below(30));
                    for s in stores {
                        out.push(res(&s.mark_pending_investigating(now).await));
                    }
                }
                8 => {
                    let vms: Vec<VmId> = (0..rng.below(4)).map(|_| VmId(rng.below(5))).collect();
                    let now = at(rng.below(30));
                    for s in stores {
                        out.push(res(&s.unbrake(now, &vms).await));
                    }
                }
                _ => {
                    let cutoff = at(rng.below(30));
                    for s in stores {
                        out.push(res(&s.cleanup(cutoff).await));
                        out.push(res(&s.next_due().await));
                        out.push(res(&s.pending().await));
                    }
                }
            }
            log.push(format!("{step}: op {op}: {out:?}"));
            if out.len() >= 2 {
                let half = out.len() / 2;
                assert_eq!(
                    out[..half],
                    out[half..],
                    "seed {seed} step {step} op {op}\n{}",
                    log.join("\n")
                );
            }
            let a: Vec<String> = HaWorkStore::list(&mem)
                .await
                .unwrap()
                .iter()
                .map(norm)
                .collect();
            let b: Vec<String> = HaWorkStore::list(sql)
                .await
                .unwrap()
                .iter()
                .map(norm)
                .collect();
            assert_eq!(a, b, "seed {seed} step {step} op {op}\n{}", log.join("\n"));
            for vm in 0..5 {
                let a: Vec<String> = mem
                    .for_vm(VmId(vm))
                    .await
                    .unwrap()
                    .iter()
                    .map(norm)
                    .collect();
                let b: Vec<String> = sql
                    .for_vm(VmId(vm))
                    .await
                    .unwrap()
                    .iter()
                    .map(norm)
                    .collect();
                assert_eq!(a, b, "for_vm seed {seed} step {step}");
            }
        }
    }
}

async fn status_change_never_moves_last_ping_back(hosts: &dyn HostStore) {
    let mut h = HostRecord::new(HostId(1), "h1", HypervisorType::Kvm);
    h.status = Some(Status::Alert);
    hosts.upsert(&h).await.unwrap();
    hosts.set_last_pings(&[(HostId(1), at(100))]).await.unwrap();
    // A ping handled late (its time older than a batch already written).
    let r = hosts
        .update_status(
            HostId(1),
            Some(Status::Alert),
            0,
            Status::Up,
            Event::Ping,
            at(50),
        )
        .await
        .unwrap();
    assert_eq!(r.last_ping, Some(at(100)));
    assert_eq!(
        hosts.get(HostId(1)).await.unwrap().unwrap().last_ping,
        Some(at(100))
    );
    let r = hosts
        .update_status(
            HostId(1),
            Some(Status::Up),
            1,
            Status::Up,
            Event::Ping,
            at(150),
        )
        .await
        .unwrap();
    assert_eq!(r.last_ping, Some(at(150)));
}

/// Every backend: the last ping only moves forward, whoever writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_change_never_moves_last_ping_back_on_any_backend() {
    status_change_never_moves_last_ping_back(&cloudha_ports::InMemoryHostStore::new()).await;
    let path = sqlite_path("ping_back");
    let s = SqlStore::open(&format!("sqlite:{}", path.display()))
        .await
        .unwrap();
    status_change_never_moves_last_ping_back(&s).await;
    if let Some((url, _side, _schema)) = pg("ping_back").await {
        let s = SqlStore::open(&url).await.unwrap();
        status_change_never_moves_last_ping_back(&s).await;
    }
}

/// Two handles on one SQLite file (two managers on one host): claims stay exclusive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_handles_claim_exclusively() {
    let path = sqlite_path("two_claimers");
    let url = format!("sqlite:{}", path.display());
    let a = SqlStore::open(&url).await.unwrap();
    let b = SqlStore::open(&url).await.unwrap();
    for n in 0..200 {
        a.insert(item(n, at(n % 5))).await.unwrap();
    }
    let mut tasks = Vec::new();
    for (owner, s) in [
        (1, a.clone()),
        (2, b.clone()),
        (3, a.clone()),
        (4, b.clone()),
    ] {
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(w) = s.take(OwnerId(owner), at(10)).await.unwrap() {
                mine.push(w.id);
            }
            mine
        }));
    }
    let mut seen = std::collections::HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(seen.insert(id), "{id:?} claimed twice");
        }
    }
    assert_eq!(seen.len(), 200);
}

/// Two handles on one PostgreSQL schema race the same status change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_two_handles_race_update_status() {
    let Some((url, _side, _schema)) = pg("two_handles").await else {
        eprintln!("SKIPPED: no PostgreSQL");
        return;
    };
    let a = SqlStore::open(&url).await.unwrap();
    let b = SqlStore::open(&url).await.unwrap();
    for round in 1..=40u64 {
        let mut h = HostRecord::new(HostId(round), "h", HypervisorType::Kvm);
        h.status = Some(Status::Up);
        HostStore::upsert(&a, &h).await.unwrap();
        let (ra, rb) = tokio::join!(
            a.update_status(
                HostId(round),
                Some(Status::Up),
                0,
                Status::Alert,
                Event::PingTimeout,
                at(1)
            ),
            b.update_status(
                HostId(round),
                Some(Status::Up),
                0,
                Status::Down,
                Event::HostDown,
                at(1)
            ),
        );
        assert_eq!(
            usize::from(ra.is_ok()) + usize::from(rb.is_ok()),
            1,
            "{ra:?} {rb:?}"
        );
        for r in [ra, rb] {
            if let Err(e) = r {
                assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
            }
        }
        assert_eq!(a.status_history(HostId(round)).await.unwrap().len(), 1);
    }
}

/// A read-only database file: opening or writing fails with an error, never a panic or a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_only_file_is_an_error() {
    use std::os::unix::fs::PermissionsExt;
    let path = sqlite_path("readonly");
    let url = format!("sqlite:{}", path.display());
    let s = SqlStore::open(&url).await.unwrap();
    s.insert(item(1, at(0))).await.unwrap();
    s.close().await;
    for suffix in ["-wal", "-shm"] {
        let mut p = path.to_path_buf().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    std::fs::set_permissions(&*path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        match SqlStore::open(&url).await {
            Err(e) => Err(e.to_string()),
            Ok(s) => s
                .insert(item(2, at(0)))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    })
    .await
    .expect("hung on a read-only file");
    // root ignores file modes: only judge when the mode holds.
    if !is_root() {
        assert!(r.is_err(), "wrote to a read-only file");
    }
    std::fs::set_permissions(&*path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
