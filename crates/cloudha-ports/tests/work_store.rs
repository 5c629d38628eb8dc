//! The in-memory `HaWorkStore` keeps the port's contract: one owner at a time, compare-and-set
//! writes (a former owner's write is refused once the claim moved), versions bumped by every
//! write, and backend errors carrying their source.

use std::error::Error as _;
use std::time::Duration;

use cloudha_ports::*;
use cloudha_protocol::{HostId, HypervisorType, VmId, VmState, WorkReason, WorkStep, WorkType};

const T0: Timestamp = Timestamp::from_micros(1_767_225_600_000_000);

fn item() -> WorkItem {
    let vm = {
        let mut r = VmRecord::new(VmId(7), "vm7", HypervisorType::Kvm);
        r.host = Some(HostId(1));
        r.state = VmState::Running;
        r.update_count = 3;
        r.ha_enabled = true;
        r
    };
    WorkItem::new(
        WorkType::Ha,
        WorkStep::Investigating,
        WorkReason::HostDown,
        &vm,
        Some(HostId(1)),
        T0,
    )
}

#[tokio::test]
async fn a_former_owners_write_is_refused_once_the_claim_moved() {
    let store = InMemoryHaWorkStore::new();
    let id = store.insert(item()).await.unwrap();
    let (a, b) = (OwnerId(1), OwnerId(2));

    // A claims it, then is declared departed: its claims are released and B takes the item.
    let mut held_by_a = store.take(a, T0).await.unwrap().expect("due");
    assert_eq!(held_by_a.owner, Some(a));
    assert_eq!(store.release_owner(a).await.unwrap(), 1);
    let mut held_by_b = store.take(b, T0).await.unwrap().expect("released");
    assert_eq!(held_by_b.owner, Some(b));

    // B writes its progress.
    held_by_b.step = WorkStep::Scheduled;
    held_by_b.version = store.update(b, &held_by_b).await.unwrap();

    // A, slow, wakes up and writes its stale copy: refused, whatever it says.
    held_by_a.step = WorkStep::Done;
    held_by_a.owner = None;
    let refused = store.update(a, &held_by_a).await.unwrap_err();
    match refused {
        StoreError::Stale {
            work,
            writer,
            holder,
            ..
        } => assert_eq!((work, writer, holder), (id, a, Some(b))),
        other => panic!("expected Stale, got {other:?}"),
    }
    let stored = store.get(id).await.unwrap().unwrap();
    assert_eq!((stored.step, stored.owner), (WorkStep::Scheduled, Some(b)));

    // B's own stale version is refused too (compare-and-set on the version, not only the owner).
    let mut old = held_by_b.clone();
    old.version -= 1;
    assert!(matches!(
        store.update(b, &old).await,
        Err(StoreError::Stale { .. })
    ));

    // B finishes and releases the claim.
    held_by_b.step = WorkStep::Done;
    held_by_b.owner = None;
    store.update(b, &held_by_b).await.unwrap();
    assert_eq!(store.pending().await.unwrap(), 0);
    // Nobody holds it now: even B cannot write again.
    assert!(matches!(
        store.update(b, &held_by_b).await,
        Err(StoreError::Stale { holder: None, .. })
    ));
}

#[tokio::test]
async fn every_write_bumps_the_version_and_times_round_trip() {
    let store = InMemoryHaWorkStore::new();
    let id = store.insert(item()).await.unwrap();
    let v0 = store.get(id).await.unwrap().unwrap().version;
    assert_eq!(store.next_due().await.unwrap(), Some(T0));
    assert!(
        store
            .take(OwnerId(1), T0 - Duration::from_secs(1))
            .await
            .unwrap()
            .is_none(),
        "not due before its time to try"
    );
    let taken = store.take(OwnerId(1), T0).await.unwrap().unwrap();
    assert_eq!(taken.version, v0 + 1);
    assert_eq!(taken.taken, Some(T0));
    assert_eq!(store.release_owner(OwnerId(1)).await.unwrap(), 1);
    assert_eq!(store.get(id).await.unwrap().unwrap().version, v0 + 2);
    let later = T0 + Duration::from_secs(90);
    assert_eq!(store.mark_pending_investigating(later).await.unwrap(), 1);
    assert_eq!(store.get(id).await.unwrap().unwrap().version, v0 + 3);
}

#[test]
fn a_backend_error_keeps_its_source() {
    let io = std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset by peer",
    );
    let e = StoreError::backend("update work item 4", io);
    assert_eq!(e.to_string(), "store backend: update work item 4");
    let source = e.source().expect("a source");
    assert_eq!(source.to_string(), "connection reset by peer");
    assert!(source.downcast_ref::<std::io::Error>().is_some());
}

#[tokio::test]
async fn a_late_last_ping_batch_never_moves_a_last_ping_back() {
    use cloudha_ports::{HostRecord, HostStore, InMemoryHostStore};
    use cloudha_protocol::{Event, HostId, HypervisorType, Status};
    let store = InMemoryHostStore::new();
    store.insert(HostRecord::new(HostId(1), "h1", HypervisorType::Kvm));
    let connected = Timestamp::from_micros(2_000_000);
    store
        .update_status(
            HostId(1),
            None,
            0,
            Status::Connecting,
            Event::AgentConnected,
            connected,
        )
        .await
        .unwrap();
    store
        .set_last_pings(&[
            (HostId(1), Timestamp::from_micros(1_000_000)),
            (HostId(9), connected),
        ])
        .await
        .unwrap();
    assert_eq!(store.get(HostId(1)).unwrap().last_ping, Some(connected));
    let later = Timestamp::from_micros(3_000_000);
    store.set_last_pings(&[(HostId(1), later)]).await.unwrap();
    assert_eq!(store.get(HostId(1)).unwrap().last_ping, Some(later));
}
