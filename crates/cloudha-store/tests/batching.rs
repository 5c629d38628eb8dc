//! The host-status batching of the SQL store (group commit) when its writer goes away: the call
//! writing a batch for others is dropped while the database holds it up; the calls waiting
//! behind it still get their answers (one of them writes next). SQLite, whose write lock a
//! second connection can hold on purpose.

use std::time::Duration;

use cloudha_ports::Timestamp;
use cloudha_ports::{HostRecord, HostStore};
use cloudha_protocol::{Event, HostId, HypervisorType, Status};
use cloudha_store::SqlStore;
use sqlx::{Connection, Executor};

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_behind_a_writer_that_went_away_still_get_their_answers() {
    let db = support::TempDb::new("cloudha-batching", "writer-gone");
    let store = SqlStore::open(&db.url()).await.unwrap();
    for n in 1..=2 {
        let mut h = HostRecord::new(HostId(n), format!("kvm-{n}"), HypervisorType::Kvm);
        h.status = Some(Status::Up);
        store.upsert(&h).await.unwrap();
    }
    // Another process holds the write lock: the batch under way waits for it.
    sqlx::any::install_default_drivers();
    let mut blocker = sqlx::AnyConnection::connect(&db.url()).await.unwrap();
    blocker.execute("BEGIN IMMEDIATE").await.unwrap();

    let now = Timestamp::from_micros(1_764_000_000_000_000);
    let write = |n: u64| {
        let store = store.clone();
        async move {
            store
                .update_status(
                    HostId(n),
                    Some(Status::Up),
                    0,
                    Status::Disconnected,
                    Event::AgentDisconnected,
                    now,
                )
                .await
        }
    };
    let writer = tokio::spawn(write(1));
    // The writer has taken its batch (its own write) and waits for the lock.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished());
    let waiting = tokio::spawn(write(2));
    tokio::time::sleep(Duration::from_millis(100)).await;
    writer.abort();
    let _ = writer.await;
    blocker.execute("ROLLBACK").await.unwrap();
    blocker.close().await.unwrap();

    let answer = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the call waiting behind the writer got its answer")
        .unwrap();
    let h = answer.expect("written by the next writer");
    assert_eq!((h.status, h.update_count), (Some(Status::Disconnected), 1));
    store.close().await;
}
