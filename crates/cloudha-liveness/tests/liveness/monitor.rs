//! The monitor rules of §3, deadline-driven detection, and Alert re-investigation.

use std::time::Duration;

use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use tokio::time::{Instant, sleep};

use cloudha_testkit::Harness;

const T: Duration = Duration::from_secs(150);

#[tokio::test(start_paused = true)]
async fn a_silent_host_is_flagged_at_t_plus_at_most_the_resolution() {
    for resolution in [
        Duration::from_secs(1),
        Duration::from_millis(250),
        Duration::from_secs(5),
    ] {
        let h = Harness::new({
            let mut c = LivenessConfig::default();
            c.ping_monitor_resolution = resolution;
            c
        });
        h.manager.start().await.unwrap();
        let host = h.add_up(1, HostType::Routing, ResourceState::Enabled).await;
        h.set_verdict(Some(HostVerdict::Down));
        sleep(Duration::from_secs(60 * 3 + 7)).await;
        host.power_off();
        let last = host.last_ping();
        sleep(T + Duration::from_secs(70)).await;
        let down = h
            .manager
            .history(HostId(1))
            .into_iter()
            .find(|c| c.to == Status::Down)
            .expect("flagged and Down");
        let after = h.when(down.at) - last;
        assert!(
            after >= T && after <= T + resolution,
            "resolution {resolution:?}: flagged {after:?} after the last ping"
        );
        // CloudStack's periodic scan would take up to T + ping.interval.
        h.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn pinging_hosts_are_never_flagged() {
    let h = Harness::new(LivenessConfig::default());
    h.manager.start().await.unwrap();
    for id in 1..=20 {
        h.add_up(id, HostType::Routing, ResourceState::Enabled)
            .await;
    }
    sleep(Duration::from_secs(3600)).await;
    assert_eq!(h.investigations(), 0);
    for id in 1..=20 {
        assert_eq!(h.status(HostId(id)), Some(Status::Up));
    }
    assert_eq!(h.manager.tracked(), 20);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn monitor_rules_by_resource_state_and_host_type() {
    struct Case {
        host_type: HostType,
        state: ResourceState,
        investigated: bool,
        status: Status,
        event: Option<Event>,
    }
    let cases = [
        Case {
            host_type: HostType::Routing,
            state: ResourceState::Enabled,
            investigated: true,
            status: Status::Down,
            event: Some(Event::HostDown),
        },
        Case {
            host_type: HostType::Routing,
            state: ResourceState::Disabled,
            investigated: false,
            status: Status::Disconnected,
            event: Some(Event::ShutdownRequested),
        },
        Case {
            host_type: HostType::Routing,
            state: ResourceState::Maintenance,
            investigated: false,
            status: Status::Disconnected,
            event: Some(Event::ShutdownRequested),
        },
        Case {
            host_type: HostType::Routing,
            state: ResourceState::ErrorInMaintenance,
            investigated: false,
            status: Status::Disconnected,
            event: Some(Event::ShutdownRequested),
        },
        Case {
            host_type: HostType::ConsoleProxy,
            state: ResourceState::Enabled,
            investigated: false,
            status: Status::Disconnected,
            event: Some(Event::ShutdownRequested),
        },
        Case {
            host_type: HostType::SecondaryStorageVm,
            state: ResourceState::Enabled,
            investigated: false,
            status: Status::Disconnected,
            event: Some(Event::ShutdownRequested),
        },
        // Not tracked at all: never behind on ping.
        Case {
            host_type: HostType::TrafficMonitor,
            state: ResourceState::Enabled,
            investigated: false,
            status: Status::Up,
            event: None,
        },
        Case {
            host_type: HostType::SecondaryStorage,
            state: ResourceState::Enabled,
            investigated: false,
            status: Status::Up,
            event: None,
        },
    ];
    for (i, c) in cases.iter().enumerate() {
        let h = Harness::new(LivenessConfig::default());
        h.manager.start().await.unwrap();
        let host = h.add_up(1, c.host_type, c.state).await;
        h.set_verdict(Some(HostVerdict::Down));
        host.power_off();
        sleep(T + Duration::from_secs(120)).await;
        let ctx = format!(
            "case {i}: {:?} {:?} {:?}",
            c.host_type,
            c.state,
            h.manager.history(HostId(1))
        );
        assert_eq!(h.investigations() > 0, c.investigated, "{ctx}");
        assert_eq!(h.status(HostId(1)), Some(c.status), "{ctx}");
        let last = h.manager.history(HostId(1)).pop().unwrap();
        assert_eq!(
            Some(last.event).filter(|e| *e != Event::Ready),
            c.event,
            "{ctx}"
        );
        h.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_ping_from_an_unknown_host_is_ignored() {
    let h = Harness::new(LivenessConfig::default());
    let sink = h.manager.sink();
    let answers = sink.on_commands(
        HostId(999),
        Sequence(0),
        &[PingCommand {
            host_id: HostId(999),
        }
        .into()],
    );
    assert_eq!(answers.len(), 1);
    assert_eq!(h.manager.tracked(), 0);
    assert!(h.store.get(HostId(999)).is_none());
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_inconclusive_host_is_rechecked_every_interval_not_every_tick() {
    let h = Harness::new({
        let mut c = LivenessConfig::default();
        c.alert_wait = Duration::from_secs(3600);
        c
    });
    h.manager.start().await.unwrap();
    let host = h.add_up(1, HostType::Routing, ResourceState::Enabled).await;
    host.power_off();
    h.set_verdict(None);
    let t0 = Instant::now();
    sleep(T + Duration::from_secs(1) + Duration::from_secs(60 * 10)).await;
    // First check at ~T, then once per ping.interval: 11 checks in T + 10 min, not 600.
    let n = h.investigations();
    assert!(
        (10..=12).contains(&n),
        "{n} investigations in {:?}",
        Instant::now() - t0
    );
    assert_eq!(
        h.status(HostId(1)),
        Some(Status::Up),
        "unknown never becomes Down, and not Alert before alert.wait"
    );
    // Past alert.wait (from the last ping) it goes to Alert.
    sleep(Duration::from_secs(3600)).await;
    assert_eq!(h.status(HostId(1)), Some(Status::Alert));
    assert!(h.scheduled().is_empty(), "Alert never restarts VMs");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn alert_hosts_are_reinvestigated_and_only_down_acts() {
    let h = Harness::new({
        let mut c = LivenessConfig::default();
        c.alert_reinvestigate_interval = Some(Duration::from_secs(120));
        c
    });
    h.manager.start().await.unwrap();
    let host = h.add_up(1, HostType::Routing, ResourceState::Enabled).await;
    host.power_off();
    h.set_verdict(Some(HostVerdict::Alert));
    sleep(T + Duration::from_secs(2)).await;
    assert_eq!(h.status(HostId(1)), Some(Status::Alert));
    let calls = h.investigations();
    // Unknown or Up verdicts: nothing happens, rechecked every 120 s.
    h.set_verdict(None);
    sleep(Duration::from_secs(120 * 5 + 1)).await;
    assert_eq!(h.investigations() - calls, 5);
    h.set_verdict(Some(HostVerdict::Up));
    sleep(Duration::from_secs(121)).await;
    assert_eq!(
        h.status(HostId(1)),
        Some(Status::Alert),
        "Up does not act on an Alert host"
    );
    assert!(h.scheduled().is_empty());
    // Down acts: HostDown, then VM-HA.
    h.set_verdict(Some(HostVerdict::Down));
    sleep(Duration::from_secs(121)).await;
    assert_eq!(h.status(HostId(1)), Some(Status::Down));
    assert_eq!(h.scheduled(), vec![(HostId(1), WorkReason::HostDown, true)]);
    let calls = h.investigations();
    sleep(Duration::from_secs(1200)).await;
    assert_eq!(
        h.investigations(),
        calls,
        "a Down host is not re-investigated"
    );
    h.shutdown().await;
}
