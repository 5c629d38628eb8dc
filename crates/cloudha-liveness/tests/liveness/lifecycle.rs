//! Manager start and stop (§8), the direct-agent scan, and the status subscription.

use std::sync::atomic::Ordering;
use std::time::Duration;

use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use tokio::time::{Instant, sleep};

use cloudha_testkit::{FakeHost, Harness};

#[tokio::test(start_paused = true)]
async fn start_marks_hosts_management_server_down_with_a_deadline_of_start_plus_t() {
    let h = Harness::new(LivenessConfig::default());
    for (id, status) in [
        (1, Status::Up),
        (2, Status::Alert),
        (3, Status::Down),
        (4, Status::Disconnected),
    ] {
        let mut r = Harness::record(HostId(id), HostType::Routing, ResourceState::Enabled);
        r.status = Some(status);
        h.store.insert(r);
    }
    h.set_verdict(None);
    let start = Instant::now();
    h.manager.start().await.unwrap();
    assert_eq!(h.status(HostId(1)), Some(Status::Disconnected));
    assert_eq!(h.status(HostId(2)), Some(Status::Alert));
    assert_eq!(h.status(HostId(3)), Some(Status::Down));
    assert_eq!(h.status(HostId(4)), Some(Status::Disconnected));
    assert_eq!(h.events(HostId(3)), vec![], "Down hosts are left alone");
    assert_eq!(
        h.events(HostId(1)),
        vec![(
            Some(Status::Up),
            Event::ManagementServerDown,
            Status::Disconnected
        )]
    );
    assert_eq!(h.manager.tracked(), 3);
    // Nobody comes back: at start + T they are behind on ping like any other host.
    sleep(Duration::from_secs(149)).await;
    assert_eq!(
        h.investigations(),
        2,
        "only the Alert host's re-investigations (every ping.interval) so far"
    );
    sleep(Duration::from_secs(2)).await;
    assert_eq!(
        h.investigations(),
        4,
        "hosts 1 and 4 investigated at start + T"
    );
    assert!(Instant::now() - start <= Duration::from_secs(151));
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn stop_marks_attached_hosts_and_ends_every_task() {
    let h = Harness::new(LivenessConfig::default());
    h.manager.start().await.unwrap();
    h.add_up(1, HostType::Routing, ResourceState::Enabled).await;
    h.add_up(2, HostType::Routing, ResourceState::Enabled).await;
    let tasks = h.manager.tasks().clone();
    assert!(!tasks.is_empty());
    h.manager.stop().await;
    assert_eq!(h.status(HostId(1)), Some(Status::Disconnected));
    assert_eq!(h.status(HostId(2)), Some(Status::Disconnected));
    assert!(tasks.is_empty(), "every task ended");
    h.registry.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_direct_host_that_powers_back_on_is_found_by_the_scan() {
    let h = Harness::new(LivenessConfig::default());
    let host = FakeHost::new(HostId(1), HostType::Routing);
    host.power_off();
    h.manager
        .add_direct_host(
            Harness::record(HostId(1), HostType::Routing, ResourceState::Enabled),
            host.clone(),
        )
        .await
        .unwrap();
    h.manager.start().await.unwrap();
    sleep(Duration::from_secs(200)).await;
    assert_eq!(h.status(HostId(1)), None, "unreachable: not connected");
    host.reachable.store(true, Ordering::SeqCst);
    host.pinging.store(true, Ordering::SeqCst);
    let back = Instant::now();
    sleep(Duration::from_secs(91)).await;
    assert_eq!(
        h.status(HostId(1)),
        Some(Status::Up),
        "found within direct.agent.scan.interval"
    );
    let up = h.when(h.manager.history(HostId(1)).last().unwrap().at);
    assert!(up - back <= Duration::from_secs(90));
    // It dies, is proven Down, then comes back: Down → Connecting → Up.
    h.set_verdict(Some(HostVerdict::Down));
    host.power_off();
    sleep(Duration::from_secs(200)).await;
    assert_eq!(h.status(HostId(1)), Some(Status::Down));
    host.reachable.store(true, Ordering::SeqCst);
    host.pinging.store(true, Ordering::SeqCst);
    sleep(Duration::from_secs(91)).await;
    assert_eq!(h.status(HostId(1)), Some(Status::Up));
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn subscribers_see_every_change_and_refused_transitions_name_status_and_event() {
    let h = Harness::new(LivenessConfig::default());
    let mut changes = h.manager.subscribe();
    h.add_up(1, HostType::Routing, ResourceState::Enabled).await;
    let first = changes.recv().await.unwrap();
    assert_eq!(
        (first.from, first.event, first.to),
        (None, Event::AgentConnected, Status::Connecting)
    );
    let second = changes.recv().await.unwrap();
    assert_eq!(second.to, Status::Up);
    let err = h
        .manager
        .apply(HostId(1), Event::WaitedTooLong, "test")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "host 1: no host status transition from Up on event WaitedTooLong"
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn resource_state_is_read_by_the_monitor_rules() {
    let h = Harness::new(LivenessConfig::default());
    h.manager.start().await.unwrap();
    let host = h.add_up(1, HostType::Routing, ResourceState::Enabled).await;
    h.manager
        .set_resource_state(HostId(1), ResourceState::Maintenance)
        .await
        .unwrap();
    host.power_off();
    sleep(Duration::from_secs(300)).await;
    assert_eq!(h.status(HostId(1)), Some(Status::Disconnected));
    assert_eq!(h.investigations(), 0);
    assert!(
        h.manager
            .set_resource_state(HostId(9), ResourceState::Enabled)
            .await
            .is_err()
    );
    h.shutdown().await;
}
