//! The agent manager over a host store that fails: a status write that fails leaves the host's
//! status as it was (store and cache agree) and the host watched, and the change is made once the
//! store is back; a failed batch of last pings is written with the next; a start that cannot
//! load the records says why (with the source) and can be called again.

use std::sync::atomic::Ordering;
use std::time::Duration;

use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use tokio::time::sleep;

use cloudha_testkit::*;

#[tokio::test(start_paused = true)]
async fn a_status_the_store_cannot_write_is_kept_and_written_once_it_is_back() {
    let (h, flaky) = FaultyHosts::harness();
    h.manager.start().await.unwrap();
    let host = h.add_up(1, HostType::Routing, ResourceState::Enabled).await;
    h.set_verdict(Some(HostVerdict::Down));
    flaky.fail_status.store(usize::MAX, Ordering::SeqCst);
    host.power_off();
    sleep(LivenessConfig::default().ping_deadline() + Duration::from_secs(5)).await;
    assert!(h.investigations() > 0, "flagged and investigated");
    assert_eq!(h.status(HostId(1)), Some(Status::Up), "the store kept Up");
    assert_eq!(
        h.manager.hosts().status(HostId(1)),
        Some(Status::Up),
        "the cache agrees with the store"
    );
    assert_eq!(h.manager.tracked(), 1, "still watched");
    assert!(h.scheduled().is_empty(), "no Down reached VM-HA");
    let errors = flaky.errors.lock().unwrap().clone();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("update host status") && e.ends_with("connection reset")),
        "{errors:?}"
    );
    // The store comes back: the next monitor run moves the host.
    flaky.fail_status.store(0, Ordering::SeqCst);
    sleep(LivenessConfig::default().ping_interval + Duration::from_secs(5)).await;
    assert_eq!(h.status(HostId(1)), Some(Status::Down));
    assert_eq!(h.manager.hosts().status(HostId(1)), Some(Status::Down));
    assert_eq!(h.scheduled(), vec![(HostId(1), WorkReason::HostDown, true)]);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn last_pings_reach_the_store_in_batches_and_a_failed_batch_is_not_lost() {
    let (h, flaky) = FaultyHosts::harness();
    h.manager.start().await.unwrap();
    let host = h.add_up(1, HostType::Routing, ResourceState::Enabled).await;
    let connected = h
        .store
        .get(HostId(1))
        .unwrap()
        .last_ping
        .expect("set by the connect");
    flaky.fail_pings.store(1, Ordering::SeqCst);
    // Pings every 60 s; a batch every 60 s (the first one with pings fails).
    sleep(Duration::from_secs(190)).await;
    assert_eq!(flaky.errors.lock().unwrap().len(), 1, "one batch failed");
    let stored = h.store.get(HostId(1)).unwrap().last_ping.unwrap();
    assert!(stored > connected, "a later batch wrote the pings");
    // At most one batch behind the manager's exact time, and one of the host's own pings.
    let exact = h.manager.last_ping(HostId(1)).unwrap();
    assert!(exact.saturating_duration_since(stored) <= LivenessConfig::default().ping_interval);
    assert!(host.pings.lock().unwrap().contains(&h.when(stored)));
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_start_that_cannot_load_the_hosts_says_why_and_can_be_retried() {
    let (h, flaky) = FaultyHosts::harness();
    let mut r = Harness::record(HostId(1), HostType::Routing, ResourceState::Enabled);
    r.status = Some(Status::Up);
    h.store.insert(r);
    flaky.fail_list.store(1, Ordering::SeqCst);
    let err = h.manager.start().await.unwrap_err();
    let chain = {
        let mut s = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(e) = source {
            s = format!("{s}: {e}");
            source = e.source();
        }
        s
    };
    assert!(chain.contains("list hosts"), "{chain}");
    assert!(chain.ends_with("connection reset"), "{chain}");
    assert_eq!(h.manager.tracked(), 0, "nothing runs");
    h.manager.start().await.unwrap();
    assert_eq!(
        h.status(HostId(1)),
        Some(Status::Disconnected),
        "loaded, and ManagementServerDown applied"
    );
    assert_eq!(h.manager.tracked(), 1);
    // Idempotent: a second start does nothing; after stop, start refuses.
    h.manager.start().await.unwrap();
    assert_eq!(h.manager.history(HostId(1)).len(), 1);
    h.manager.stop().await;
    h.manager.stop().await;
    assert!(matches!(
        h.manager.start().await,
        Err(ManagerError::Stopped)
    ));
    h.registry.shutdown().await;
}
