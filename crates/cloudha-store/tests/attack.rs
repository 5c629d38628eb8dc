//! Attacks on the group-committed host status writes, the one-command work writes (SQLite's
//! whole transaction sent in one go), and the claim that returns its history as JSON:
//! cancellation, database errors mid-way, odd inputs, concurrency. The SQLite cases that leave
//! a whole transaction open found a first design (a flag and a `ROLLBACK` by the next call)
//! wrong: writes answered Ok ran inside the open transaction and were rolled back. Now the
//! connection such a transaction may be open on is closed, never given back to the pool.

// Real databases in real time: a wait is measured on the wall clock.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudha_ports::{
    HaWorkStore, HostRecord, HostStore, OwnerId, StoreError, Timestamp, VmRecord, WorkItem,
};
use cloudha_protocol::{
    Event, HostId, HypervisorType, ResourceState, Status, VmId, VmState, WorkReason, WorkStep,
    WorkType,
};
use cloudha_store::SqlStore;
use sqlx::{Connection, Executor, Row};

mod support;

use support::{Schema, TempDb};

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

fn host(n: u64, status: Status) -> HostRecord {
    let mut h = HostRecord::new(HostId(n), format!("kvm-{n}"), HypervisorType::Kvm);
    h.status = Some(status);
    h
}

fn sqlite(test: &str) -> TempDb {
    TempDb::new("cloudha-attack", test)
}

async fn pg(test: &str) -> Option<Schema> {
    support::schema("cloudha_attack", test).await
}

/// A second connection to the same SQLite file (another process, say).
async fn side_sqlite(db: &TempDb) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(&db.url()).await.unwrap();
    c.execute("PRAGMA busy_timeout = 10000").await.unwrap();
    c
}

/// The resource state of host `n` as another connection sees it (what is committed).
async fn committed_resource_state(db: &TempDb, n: i64) -> String {
    let mut c = side_sqlite(db).await;
    let row = sqlx::query("SELECT resource_state FROM hosts WHERE id = $1")
        .bind(n)
        .fetch_one(&mut c)
        .await
        .unwrap();
    let s: String = row.get(0);
    c.close().await.unwrap();
    s
}

// ---------------------------------------------------------------------------------------------
// SQLite: a whole transaction that may be left open (the first design's flag and heal lost it).
// ---------------------------------------------------------------------------------------------

/// Leaves SQLite's one connection inside an open `BEGIN IMMEDIATE` with the store's
/// `open_transaction` flag cleared: a work update is dropped while its `BEGIN IMMEDIATE` waits
/// for a lock another connection holds (the flag is set: the design's case), then a call is
/// dropped (a caller's timeout) while its `heal` waits for the connection: it took the flag but
/// its ROLLBACK was never sent. Then the lock is given back: the dropped update's `BEGIN
/// IMMEDIATE` runs and nothing ends it.
async fn leave_transaction_open(db: &TempDb, store: &SqlStore, w: &WorkItem) {
    let mut blocker = side_sqlite(db).await;
    blocker.execute("BEGIN IMMEDIATE").await.unwrap();
    let s = store.clone();
    let mut w2 = w.clone();
    w2.note(at(5), "dropped update");
    let update = tokio::spawn(async move { s.update(OwnerId(1), &w2).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!update.is_finished(), "the update waits for the lock");
    update.abort();
    let _ = update.await;
    // A caller with a short timeout: its heal takes the flag, then waits for the connection.
    let gone =
        tokio::time::timeout(Duration::from_millis(50), HostStore::get(store, HostId(1))).await;
    assert!(gone.is_err(), "the call timed out: {gone:?}");
    blocker.execute("ROLLBACK").await.unwrap();
    blocker.close().await.unwrap();
    // The dropped command's BEGIN IMMEDIATE gets the lock now.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_write_after_cancelled_calls_lands_when_answered_ok() {
    let db = sqlite("cancelled-heal");
    let store = SqlStore::open(&db.url()).await.unwrap();
    store.upsert(&host(1, Status::Up)).await.unwrap();
    store.insert(item(1, at(0))).await.unwrap();
    let w = store.take(OwnerId(1), at(1)).await.unwrap().unwrap();

    tokio::time::timeout(
        Duration::from_secs(20),
        leave_transaction_open(&db, &store, &w),
    )
    .await
    .expect("bounded");

    // A plain write, answered Ok.
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        store.set_resource_state(HostId(1), ResourceState::Maintenance),
    )
    .await
    .expect("answered");
    assert!(answer.is_ok(), "{answer:?}");
    // The store itself reads it back (its own open transaction)...
    let mine = HostStore::get(&store, HostId(1)).await.unwrap().unwrap();
    let seen_by_store = mine.resource_state;
    // ...but is it committed?
    let committed = tokio::time::timeout(Duration::from_secs(20), committed_resource_state(&db, 1))
        .await
        .unwrap_or_else(|_| "<side connection blocked>".into());
    store.close().await;
    let reopened = SqlStore::open(&db.url()).await.unwrap();
    let after = HostStore::get(&reopened, HostId(1)).await.unwrap().unwrap();
    reopened.close().await;
    assert_eq!(
        (seen_by_store, committed.as_str(), after.resource_state),
        (
            ResourceState::Maintenance,
            "Maintenance",
            ResourceState::Maintenance
        ),
        "a write answered Ok must be committed (the store's one connection was left inside an \
         open transaction and the write went into it)"
    );
}

/// The same open transaction, then a claim: answered with the item, and lost when the next
/// whole-transaction write fails on the open transaction and the heal after it rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_claim_answered_after_cancelled_calls_stays() {
    let db = sqlite("cancelled-heal-claim");
    let store = SqlStore::open(&db.url()).await.unwrap();
    store.upsert(&host(1, Status::Up)).await.unwrap();
    store.insert(item(1, at(0))).await.unwrap();
    let id2 = store.insert(item(2, at(100))).await.unwrap();
    let w = store.take(OwnerId(1), at(1)).await.unwrap().unwrap();

    tokio::time::timeout(
        Duration::from_secs(20),
        leave_transaction_open(&db, &store, &w),
    )
    .await
    .expect("bounded");

    let claimed = store.take(OwnerId(2), at(200)).await;
    let claimed = claimed.expect("claimed").expect("item 2 due");
    assert_eq!(claimed.id, id2);
    // Owner 2 works on it: its first write.
    let mut c = claimed.clone();
    c.note(at(201), "fencing");
    let first = store.update(OwnerId(2), &c).await;
    // Whatever that answered, the claim answered Some must still be owner 2's.
    let stored = HaWorkStore::get(&store, id2).await.unwrap().unwrap();
    store.close().await;
    assert_eq!(
        stored.owner,
        Some(OwnerId(2)),
        "the claim was answered, then vanished (the update answered {first:?})"
    );
}

/// No cancellation at all: a plain write whose heal ran before a whole transaction was sent
/// is queued on the one connection behind it; that transaction fails part-way (a trigger
/// aborts its history insert), and the plain write runs inside the transaction left open,
/// answered Ok. The flag that would heal it was cleared by a third call's success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_write_queued_behind_a_failing_whole_transaction_lands() {
    let db = sqlite("queued-behind-failure");
    let store = SqlStore::open(&db.url()).await.unwrap();
    store.upsert(&host(1, Status::Up)).await.unwrap();
    {
        let mut c = side_sqlite(&db).await;
        c.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON ha_work_history \
             WHEN NEW.what = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
        )
        .await
        .unwrap();
        c.close().await.unwrap();
    }
    store.insert(item(1, at(0))).await.unwrap();
    store.insert(item(2, at(0))).await.unwrap();
    let a = store.take(OwnerId(1), at(1)).await.unwrap().unwrap();
    let b = store.take(OwnerId(1), at(1)).await.unwrap().unwrap();
    // Another process holds the write lock for a moment: calls queue up on the connection.
    let mut blocker = side_sqlite(&db).await;
    blocker.execute("BEGIN IMMEDIATE").await.unwrap();
    let update = |w: &WorkItem, what: &'static str| {
        let (s, mut w) = (store.clone(), w.clone());
        w.note(at(2), what);
        tokio::spawn(async move { s.update(OwnerId(1), &w).await })
    };
    // 1. A fine update: sets the flag, its BEGIN IMMEDIATE waits for the lock.
    let fine = update(&a, "fine");
    tokio::time::sleep(Duration::from_millis(150)).await;
    // 2. A plain write: its heal takes the flag, its ROLLBACK queues behind the fine update.
    let s = store.clone();
    let plain = tokio::spawn(async move {
        s.set_resource_state(HostId(1), ResourceState::Maintenance)
            .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    // 3. An update that fails part-way: nothing to heal (flag clear), queued next.
    let poisoned = update(&b, "poison");
    tokio::time::sleep(Duration::from_millis(150)).await;
    blocker.execute("ROLLBACK").await.unwrap();
    blocker.close().await.unwrap();
    let fine = tokio::time::timeout(Duration::from_secs(20), fine)
        .await
        .unwrap()
        .unwrap();
    let plain = tokio::time::timeout(Duration::from_secs(20), plain)
        .await
        .unwrap()
        .unwrap();
    let poisoned = tokio::time::timeout(Duration::from_secs(20), poisoned)
        .await
        .unwrap()
        .unwrap();
    let committed = tokio::time::timeout(Duration::from_secs(20), committed_resource_state(&db, 1))
        .await
        .unwrap_or_else(|_| "<side connection blocked>".into());
    store.close().await;
    assert!(fine.is_ok(), "{fine:?}");
    assert!(poisoned.is_err(), "{poisoned:?}");
    assert!(plain.is_ok(), "{plain:?}");
    assert_eq!(
        committed, "Maintenance",
        "set_resource_state answered Ok but ran inside the failed transaction left open"
    );
}

/// A whole transaction that fails part-way (a trigger aborts the history insert after the
/// guarded UPDATE ran): the next calls must not run inside it. Many callers at once, several
/// failing: every write answered Ok is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_failed_whole_transactions_under_concurrency_lose_no_ok_write() {
    let db = sqlite("failed-whole");
    let store = SqlStore::open(&db.url()).await.unwrap();
    for n in 1..=20 {
        store.upsert(&host(n, Status::Up)).await.unwrap();
    }
    {
        let mut c = side_sqlite(&db).await;
        c.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON ha_work_history \
             WHEN NEW.what = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
        )
        .await
        .unwrap();
        c.close().await.unwrap();
    }
    let mut items = Vec::new();
    for v in 1..=20 {
        store.insert(item(v, at(0))).await.unwrap();
    }
    for _ in 1..=20 {
        items.push(store.take(OwnerId(1), at(1)).await.unwrap().unwrap());
    }
    let mut tasks = Vec::new();
    for (i, w) in items.into_iter().enumerate() {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut w = w;
            w.note(at(2), if i % 3 == 0 { "poison" } else { "fine" });
            (w.id, s.update(OwnerId(1), &w).await.is_ok())
        }));
        let s = store.clone();
        let n = (i % 20) as u64 + 1;
        tasks.push(tokio::spawn(async move {
            let r = s
                .set_resource_state(HostId(n), ResourceState::Maintenance)
                .await;
            (cloudha_protocol::WorkId(1_000_000 + n), r.is_ok())
        }));
    }
    let mut oks = Vec::new();
    for t in tasks {
        let (id, ok) = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("answered")
            .unwrap();
        if ok {
            oks.push(id);
        }
    }
    // One more call heals whatever is still open.
    let _ = store.pending().await;
    store.close().await;
    let reopened = SqlStore::open(&db.url()).await.unwrap();
    let mut lost = Vec::new();
    for id in oks {
        if id.0 >= 1_000_000 {
            let h = HostStore::get(&reopened, HostId(id.0 - 1_000_000))
                .await
                .unwrap()
                .unwrap();
            if h.resource_state != ResourceState::Maintenance {
                lost.push(format!("host {}", id.0 - 1_000_000));
            }
        } else {
            let w = HaWorkStore::get(&reopened, id).await.unwrap().unwrap();
            if w.version != 2 || w.history.last().map(|e| e.what.as_str()) != Some("fine") {
                lost.push(format!("work {id:?}: {w:?}"));
            }
        }
    }
    reopened.close().await;
    assert!(lost.is_empty(), "answered Ok, not committed: {lost:?}");
}

// ---------------------------------------------------------------------------------------------
// Histories: odd texts through the claim's JSON, sizes around the one-statement limit.
// ---------------------------------------------------------------------------------------------

fn odd_texts() -> Vec<String> {
    vec![
        String::new(),
        "it's \"quoted\" \\ back\\slash".into(),
        "ünïcødé ✓ 𝄞 日本語".into(),
        "tab\tnew\nline\rcr".into(),
        "control \u{1}\u{1f}\u{7f}".into(),
        "[1, \"json-looking\"]".into(),
        "{\"a\": 1}".into(),
        "x".repeat(100_000),
        "\u{feff}bom".into(),
        "$1 $2 ?1 :a @b".into(),
        "'); DROP TABLE hosts; --".into(),
    ]
}

async fn odd_history_round_trips(store: &SqlStore, with_nul: bool) {
    let mut w = item(1, at(0));
    let mut texts = odd_texts();
    if with_nul {
        texts.push("nul \0 inside".into());
        texts.push("\0".into());
    }
    for (i, t) in texts.iter().enumerate() {
        w.note(at(i as u64), t.clone());
    }
    let id = store.insert(w).await.unwrap();
    let by_get = HaWorkStore::get(store, id).await.unwrap().unwrap();
    let taken = store.take(OwnerId(1), at(1000)).await.unwrap().unwrap();
    let want: Vec<&str> = std::iter::once(by_get.history[0].what.as_str())
        .chain(texts.iter().map(String::as_str))
        .collect();
    let got_get: Vec<&str> = by_get.history.iter().map(|e| e.what.as_str()).collect();
    let got_take: Vec<&str> = taken.history.iter().map(|e| e.what.as_str()).collect();
    assert_eq!(got_get, want, "get");
    assert_eq!(got_take, want, "take");
    assert_eq!(
        by_get.history.iter().map(|e| e.at).collect::<Vec<_>>(),
        taken.history.iter().map(|e| e.at).collect::<Vec<_>>()
    );
    // And through a whole update with more odd text.
    let mut t = taken.clone();
    for x in &texts {
        t.note(at(2000), x.clone());
    }
    t.version = store.update(OwnerId(1), &t).await.unwrap();
    let again = HaWorkStore::get(store, id).await.unwrap().unwrap();
    assert_eq!(again.history, t.history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_odd_history_texts_round_trip_through_the_claim() {
    let db = sqlite("odd-history");
    let store = SqlStore::open(&db.url()).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        odd_history_round_trips(&store, true),
    )
    .await
    .expect("bounded");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_odd_history_texts_round_trip_through_the_claim() {
    let Some(schema) = pg("odd_history").await else {
        return;
    };
    let store = SqlStore::open(&schema.url).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        odd_history_round_trips(&store, false),
    )
    .await
    .expect("bounded");
    store.close().await;
}

/// PostgreSQL cannot hold a NUL in TEXT: the write must be an error, and the store must stay
/// usable (nothing half-written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_nul_in_history_is_an_error_and_nothing_half_written() {
    let Some(schema) = pg("nul_history").await else {
        return;
    };
    let store = SqlStore::open(&schema.url).await.unwrap();
    let id = store.insert(item(1, at(0))).await.unwrap();
    let mut w = store.take(OwnerId(1), at(1)).await.unwrap().unwrap();
    let before = w.clone();
    w.note(at(2), "fine");
    w.note(at(3), "nul \0 here");
    w.step = WorkStep::Fencing;
    let r = store.update(OwnerId(1), &w).await;
    let stored = HaWorkStore::get(&store, id).await.unwrap().unwrap();
    store.close().await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(
        (stored.version, stored.step, stored.history.len()),
        (before.version, before.step, before.history.len())
    );
}

async fn history_sizes(store: &SqlStore) {
    for (vm, n) in [(1u64, 999usize), (2, 1000), (3, 1001), (4, 2500)] {
        let id = store.insert(item(vm, at(0))).await.unwrap();
        let mut w = store.take(OwnerId(1), at(1)).await.unwrap().unwrap();
        assert_eq!(w.id, id);
        while w.history.len() < n {
            let k = w.history.len() as u64;
            w.note(at(k), format!("event {k}"));
        }
        w.version = store.update(OwnerId(1), &w).await.unwrap();
        // One more event on top, then a stale copy (the one before) must be refused.
        let mut more = w.clone();
        more.note(at(9999), "last");
        more.version = store.update(OwnerId(1), &more).await.unwrap();
        let stale = store.update(OwnerId(1), &w).await;
        assert!(
            matches!(stale, Err(StoreError::Stale { .. })),
            "{n}: {stale:?}"
        );
        // Released and claimed again: the claim's JSON history is the whole history.
        more.owner = None;
        more.taken = None;
        more.time_to_try = at(0);
        more.version = store.update(OwnerId(1), &more).await.unwrap();
        let again = store.take(OwnerId(2), at(10)).await.unwrap().unwrap();
        assert_eq!(again.id, id);
        assert_eq!(again.history.len(), n + 1, "{n}");
        assert_eq!(again.history, more.history, "{n}");
        let seqs: Vec<String> = again.history.iter().map(|e| e.what.clone()).collect();
        assert_eq!(seqs.last().map(String::as_str), Some("last"));
        // Finish it so it is not claimed again.
        let mut done = again.clone();
        done.step = WorkStep::Done;
        done.owner = None;
        store.update(OwnerId(2), &done).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_histories_around_the_one_statement_limit() {
    let db = sqlite("history-sizes");
    let store = SqlStore::open(&db.url()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), history_sizes(&store))
        .await
        .expect("bounded");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_histories_around_the_one_statement_limit() {
    let Some(schema) = pg("history_sizes").await else {
        return;
    };
    let store = SqlStore::open(&schema.url).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), history_sizes(&store))
        .await
        .expect("bounded");
    store.close().await;
}

// ---------------------------------------------------------------------------------------------
// Group commit: one write's bad input, a writer that never stops writing for others, a locked
// row, a killed connection.
// ---------------------------------------------------------------------------------------------

/// A status write whose update count cannot be stored shares its batch with a valid write of
/// another host: the valid one must be written (it would be, alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_one_bad_write_fails_alone_in_its_batch() {
    let db = sqlite("bad-in-batch");
    let store = SqlStore::open(&db.url()).await.unwrap();
    for n in 1..=3 {
        store.upsert(&host(n, Status::Up)).await.unwrap();
    }
    let mut blocker = side_sqlite(&db).await;
    blocker.execute("BEGIN IMMEDIATE").await.unwrap();
    let write = |n: u64, count: u64| {
        let s = store.clone();
        tokio::spawn(async move {
            s.update_status(
                HostId(n),
                Some(Status::Up),
                count,
                Status::Disconnected,
                Event::AgentDisconnected,
                at(n),
            )
            .await
        })
    };
    // The writer takes its batch (host 1) and waits for the lock; two more wait behind it and
    // go in the next batch together.
    let first = write(1, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let good = write(2, 0);
    let bad = write(3, u64::MAX);
    tokio::time::sleep(Duration::from_millis(200)).await;
    blocker.execute("ROLLBACK").await.unwrap();
    blocker.close().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(20), first)
        .await
        .unwrap()
        .unwrap();
    let good = tokio::time::timeout(Duration::from_secs(20), good)
        .await
        .unwrap()
        .unwrap();
    let bad = tokio::time::timeout(Duration::from_secs(20), bad)
        .await
        .unwrap()
        .unwrap();
    let stored2 = HostStore::get(&store, HostId(2)).await.unwrap().unwrap();
    store.close().await;
    assert!(first.is_ok(), "{first:?}");
    assert!(bad.is_err(), "{bad:?}");
    assert!(
        good.is_ok(),
        "host 2's valid write failed because host 3's write in the same batch had an update \
         count above i64::MAX: {good:?} (stored: {:?} {})",
        stored2.status,
        stored2.update_count
    );
}

/// Same on PostgreSQL, where the bad value is found by the database (an update count at
/// i64::MAX overflows `update_count + 1`): the valid writes of the batch fail with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_one_overflowing_write_fails_alone_in_its_batch() {
    let Some(schema) = pg("overflow_in_batch").await else {
        return;
    };
    let store = SqlStore::open(&schema.url).await.unwrap();
    for n in 1..=3 {
        let mut h = host(n, Status::Up);
        if n == 3 {
            h.update_count = i64::MAX as u64;
        }
        store.upsert(&h).await.unwrap();
    }
    let side = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&schema.url)
        .await
        .unwrap();
    // Another session holds host 1's row: the writer's batch (host 1) waits for it.
    let mut lock = side.begin().await.unwrap();
    sqlx::query("SELECT id FROM hosts WHERE id = 1 FOR UPDATE")
        .fetch_all(&mut *lock)
        .await
        .unwrap();
    let write = |n: u64, count: u64| {
        let s = store.clone();
        tokio::spawn(async move {
            s.update_status(
                HostId(n),
                Some(Status::Up),
                count,
                Status::Disconnected,
                Event::AgentDisconnected,
                at(n),
            )
            .await
        })
    };
    let first = write(1, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let good = write(2, 0);
    let bad = write(3, i64::MAX as u64);
    tokio::time::sleep(Duration::from_millis(200)).await;
    lock.rollback().await.unwrap();
    side.close().await;
    let first = tokio::time::timeout(Duration::from_secs(20), first)
        .await
        .unwrap()
        .unwrap();
    let good = tokio::time::timeout(Duration::from_secs(20), good)
        .await
        .unwrap()
        .unwrap();
    let bad = tokio::time::timeout(Duration::from_secs(20), bad)
        .await
        .unwrap()
        .unwrap();
    store.close().await;
    assert!(first.is_ok(), "{first:?}");
    assert!(bad.is_err(), "{bad:?}");
    assert!(
        good.is_ok(),
        "host 2's valid write failed with host 3's overflow in the same batch: {good:?}"
    );
}

/// PostgreSQL: another session holds one host's row (another manager mid-transaction): a
/// status write of a different host must not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_locked_host_row_holds_up_no_other_host_for_long() {
    let Some(schema) = pg("locked_row").await else {
        return;
    };
    let store = SqlStore::open(&schema.url).await.unwrap();
    for n in 1..=2 {
        store.upsert(&host(n, Status::Up)).await.unwrap();
    }
    let side = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&schema.url)
        .await
        .unwrap();
    let mut lock = side.begin().await.unwrap();
    sqlx::query("SELECT id FROM hosts WHERE id = 1 FOR UPDATE")
        .fetch_all(&mut *lock)
        .await
        .unwrap();
    let s = store.clone();
    let one = tokio::spawn(async move {
        s.update_status(
            HostId(1),
            Some(Status::Up),
            0,
            Status::Disconnected,
            Event::AgentDisconnected,
            at(1),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let two = tokio::time::timeout(
        Duration::from_secs(3),
        store.update_status(
            HostId(2),
            Some(Status::Up),
            0,
            Status::Disconnected,
            Event::AgentDisconnected,
            at(2),
        ),
    )
    .await;
    lock.rollback().await.unwrap();
    side.close().await;
    let one = tokio::time::timeout(Duration::from_secs(20), one)
        .await
        .unwrap()
        .unwrap();
    store.close().await;
    // Host 1's write waited at most the batch's lock timeout, then failed alone (a failed
    // write changes nothing; the manager writes again later), or landed once the lock went.
    match &one {
        Ok(h) => assert_eq!(h.status, Some(Status::Disconnected)),
        Err(e) => assert!(
            matches!(e, StoreError::Backend { .. }) && format!("{e:?}").contains("lock"),
            "{e:?}"
        ),
    }
    assert!(
        matches!(two, Ok(Ok(_))),
        "host 2's write waited for host 1's locked row: {two:?}"
    );
}

/// The call that becomes the writer writes for others as long as others keep coming: under a
/// steady stream of status writes (a rack flapping), its own answer, ready after its first
/// batch, is not returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_writer_call_returns_while_others_keep_writing() {
    let db = sqlite("writer-starves");
    let store = SqlStore::open(&db.url()).await.unwrap();
    const HOSTS: u64 = 64;
    for n in 1..=HOSTS {
        store.upsert(&host(n, Status::Up)).await.unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut feeders = Vec::new();
    // Hosts 2..: each flaps Up <-> Disconnected for as long as the test runs.
    for n in 2..=HOSTS {
        let (s, stop) = (store.clone(), stop.clone());
        feeders.push(tokio::spawn(async move {
            let (mut status, mut count) = (Status::Up, 0u64);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (to, ev) = if status == Status::Up {
                    (Status::Disconnected, Event::AgentDisconnected)
                } else {
                    (Status::Up, Event::Ready)
                };
                if let Ok(h) = s
                    .update_status(HostId(n), Some(status), count, to, ev, at(count))
                    .await
                {
                    status = h.status.unwrap();
                    count = h.update_count;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Host 1's write, among them.
    let mut worst = Duration::ZERO;
    let mut status = Status::Up;
    for count in 0..20u64 {
        let (to, ev) = if status == Status::Up {
            (Status::Disconnected, Event::AgentDisconnected)
        } else {
            (Status::Up, Event::Ready)
        };
        let started = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            store.update_status(HostId(1), Some(status), count, to, ev, at(count)),
        )
        .await;
        worst = worst.max(started.elapsed());
        match r {
            Ok(Ok(h)) => status = h.status.unwrap(),
            other => {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
                for f in feeders {
                    let _ = tokio::time::timeout(Duration::from_secs(20), f).await;
                }
                store.close().await;
                panic!(
                    "host 1's write {count}: {other:?} (after {:?})",
                    started.elapsed()
                );
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for f in feeders {
        let _ = tokio::time::timeout(Duration::from_secs(20), f).await;
    }
    store.close().await;
    assert!(
        worst < Duration::from_secs(2),
        "a status write took {worst:?} while others kept writing"
    );
}

/// PostgreSQL: the writer's connection is killed mid-batch (pg_terminate_backend): every
/// caller gets an answer, answers Ok are written (with one history row each), answers Err are
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_writer_connection_killed_mid_batch() {
    let Some(schema) = pg("killed_writer").await else {
        return;
    };
    let store = SqlStore::open(&schema.url).await.unwrap();
    const HOSTS: u64 = 40;
    for n in 1..=HOSTS {
        store.upsert(&host(n, Status::Up)).await.unwrap();
    }
    let side = sqlx::any::AnyPoolOptions::new()
        .max_connections(2)
        .connect(&schema.url)
        .await
        .unwrap();
    let mut lock = side.begin().await.unwrap();
    sqlx::query("SELECT id FROM hosts WHERE id = 1 FOR UPDATE")
        .fetch_all(&mut *lock)
        .await
        .unwrap();
    let holder: i32 = sqlx::query("SELECT pg_backend_pid()")
        .fetch_one(&mut *lock)
        .await
        .unwrap()
        .get(0);
    let mut tasks = Vec::new();
    for n in 1..=HOSTS {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.update_status(
                HostId(n),
                Some(Status::Up),
                0,
                Status::Disconnected,
                Event::AgentDisconnected,
                at(n),
            )
            .await
        }));
        if n == 1 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Kill the session waiting on our lock (the writer's), no other test's.
    let killed: Vec<bool> = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE $1 = ANY(pg_blocking_pids(pid)) AND query LIKE 'WITH v%'",
    )
    .bind(holder)
    .fetch_all(&side)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<bool, _>(0))
    .collect();
    lock.rollback().await.unwrap();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("answered")
                .unwrap(),
        );
    }
    let mut wrong = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        let n = i as u64 + 1;
        let h = HostStore::get(&store, HostId(n)).await.unwrap().unwrap();
        let history = store.status_history(HostId(n)).await.unwrap();
        match a {
            Ok(_) => {
                if h.update_count != 1 || history.len() != 1 {
                    wrong.push(format!("{n}: Ok but {h:?} {history:?}"));
                }
            }
            Err(_) => {
                if h.update_count != 0 || !history.is_empty() {
                    wrong.push(format!("{n}: {a:?} but written"));
                }
            }
        }
    }
    // The store still works afterwards.
    let after = store
        .update_status(
            HostId(1),
            Some(h1_status(&store).await),
            HostStore::get(&store, HostId(1))
                .await
                .unwrap()
                .unwrap()
                .update_count,
            Status::Up,
            Event::Ready,
            at(500),
        )
        .await;
    side.close().await;
    store.close().await;
    assert_eq!(killed, vec![true], "one writer session killed");
    assert!(wrong.is_empty(), "{wrong:?}");
    assert!(after.is_ok(), "{after:?}");
}

async fn h1_status(store: &SqlStore) -> Status {
    HostStore::get(store, HostId(1))
        .await
        .unwrap()
        .unwrap()
        .status
        .unwrap()
}

/// Many status writes, a third of them dropped at random points, on both backends: every
/// host's history is its update count's sequence with no gap or repeat, and every Ok answer is
/// in it.
async fn cancellation_storm(store: &SqlStore) {
    const HOSTS: u64 = 30;
    for n in 1..=HOSTS {
        store.upsert(&host(n, Status::Up)).await.unwrap();
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut tasks = Vec::new();
    for round in 0..400u64 {
        let n = next() % HOSTS + 1;
        let cancel_after = if next() % 3 == 0 {
            Some(Duration::from_micros(next() % 3000))
        } else {
            None
        };
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            // Read, then write from what was read (as the agent manager does from its cache).
            let h = HostStore::get(&s, HostId(n)).await.unwrap().unwrap();
            let (to, ev) = if h.status == Some(Status::Up) {
                (Status::Disconnected, Event::AgentDisconnected)
            } else {
                (Status::Up, Event::Ready)
            };
            let call = s.update_status(HostId(n), h.status, h.update_count, to, ev, at(round));
            let r = match cancel_after {
                Some(d) => tokio::time::timeout(d, call).await.ok(),
                None => Some(call.await),
            };
            (n, h.update_count, r)
        }));
    }
    let mut oks = Vec::new();
    for t in tasks {
        let (n, count, r) = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("answered")
            .unwrap();
        match r {
            Some(Ok(h)) => {
                assert_eq!(h.update_count, count + 1);
                oks.push((n, h.update_count));
            }
            Some(Err(StoreError::Conflict { .. })) | None => {}
            Some(Err(e)) => {
                let text = format!("{e} {:?}", std::error::Error::source(&e));
                assert!(text.contains("went away"), "{e}: {text}");
            }
        }
    }
    // Writes of dropped callers still in the queue land when someone writes next: one more
    // write drains it.
    let _ = store
        .update_status(HostId(HOSTS + 1), None, 0, Status::Up, Event::Ready, at(0))
        .await;
    for n in 1..=HOSTS {
        let h = HostStore::get(store, HostId(n)).await.unwrap().unwrap();
        let history = store.status_history(HostId(n)).await.unwrap();
        assert_eq!(
            history.len() as u64,
            h.update_count,
            "host {n}: one history row per write: {h:?} {history:?}"
        );
        // Each row goes from the previous row's status.
        let mut prev = Some(Status::Up);
        for (i, (_, from, to, _)) in history.iter().enumerate() {
            assert_eq!(*from, prev, "host {n} row {i}: {history:?}");
            prev = Some(*to);
        }
        assert_eq!(prev, h.status);
        for &(m, count) in &oks {
            if m == n {
                assert!(count <= h.update_count);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_status_write_cancellation_storm_keeps_history_exact() {
    let db = sqlite("storm");
    let store = SqlStore::open(&db.url()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), cancellation_storm(&store))
        .await
        .expect("bounded");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_status_write_cancellation_storm_keeps_history_exact() {
    let Some(schema) = pg("storm").await else {
        return;
    };
    let store = SqlStore::open(&schema.url).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), cancellation_storm(&store))
        .await
        .expect("bounded");
    store.close().await;
}

/// A work update dropped at random points, then the store used normally: every later write
/// answered Ok is committed (seen by another connection), and the item's history has no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dropped_work_updates_then_writes_land() {
    let db = sqlite("dropped-updates");
    let store = SqlStore::open(&db.url()).await.unwrap();
    store.upsert(&host(1, Status::Up)).await.unwrap();
    store.insert(item(1, at(0))).await.unwrap();
    let mut w = store.take(OwnerId(1), at(1)).await.unwrap().unwrap();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut resource = ResourceState::Enabled;
    for round in 0..200u64 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut next = w.clone();
        next.note(at(round), format!("round {round}"));
        let d = Duration::from_micros(rng % 2000);
        match tokio::time::timeout(d, store.update(OwnerId(1), &next)).await {
            Ok(Ok(v)) => {
                next.version = v;
                w = next;
            }
            Ok(Err(e)) => panic!("round {round}: {e}"),
            Err(_) => {
                // Unknown: read back.
                let stored = HaWorkStore::get(&store, w.id).await.unwrap().unwrap();
                w = stored;
            }
        }
        resource = if resource == ResourceState::Enabled {
            ResourceState::Maintenance
        } else {
            ResourceState::Enabled
        };
        store.set_resource_state(HostId(1), resource).await.unwrap();
        let committed =
            tokio::time::timeout(Duration::from_secs(20), committed_resource_state(&db, 1))
                .await
                .unwrap_or_else(|_| "<blocked>".into());
        assert_eq!(
            committed,
            cloudha_store_name(resource),
            "round {round}: set_resource_state answered Ok, not committed"
        );
    }
    let stored = HaWorkStore::get(&store, w.id).await.unwrap().unwrap();
    store.close().await;
    assert_eq!(stored.history, w.history);
}

fn cloudha_store_name(r: ResourceState) -> &'static str {
    match r {
        ResourceState::Enabled => "Enabled",
        ResourceState::Maintenance => "Maintenance",
        _ => "other",
    }
}
