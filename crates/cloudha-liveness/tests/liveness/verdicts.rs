//! Every row of the §4.4 verdict table, data-driven: disconnect with investigation on a host
//! that is Up (or made Disconnected), with a scripted investigator verdict.

use std::time::Duration;

use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use tokio::time::sleep;

use cloudha_testkit::{Harness, Wiring};

struct Row {
    name: &'static str,
    /// Status before, reached from Up by these events.
    setup: &'static [Event],
    resource_state: ResourceState,
    host_type: HostType,
    event: Event,
    verdict: Option<HostVerdict>,
    /// The last successful ping is older than alert.wait.
    waited: bool,
    /// No HA scheduler is set (the agent manager then raises host_down itself).
    no_ha: bool,
    // expectations
    status: Status,
    applied: Option<Event>,
    alerts: &'static [AlertKind],
    attache_kept: bool,
    investigated: bool,
    ha: bool,
}

const fn row(name: &'static str) -> Row {
    Row {
        name,
        setup: &[],
        resource_state: ResourceState::Enabled,
        host_type: HostType::Routing,
        event: Event::PingTimeout,
        verdict: None,
        waited: false,
        no_ha: false,
        status: Status::Up,
        applied: None,
        alerts: &[],
        attache_kept: true,
        investigated: true,
        ha: false,
    }
}

fn rows() -> Vec<Row> {
    use AlertKind as A;
    use HostVerdict as V;
    vec![
        Row {
            ..row("null verdict within alert.wait: do nothing, check again later")
        },
        Row {
            waited: true,
            status: Status::Alert,
            applied: Some(Event::PingTimeout),
            alerts: &[A::HostAlert],
            attache_kept: false,
            ..row("null verdict past alert.wait: treated as Alert")
        },
        Row {
            verdict: Some(V::Down),
            status: Status::Down,
            applied: Some(Event::HostDown),
            attache_kept: false,
            ha: true,
            ..row("Down: HostDown, VM-HA (whose host_down alert lists the VMs: none from here)")
        },
        Row {
            verdict: Some(V::Down),
            no_ha: true,
            status: Status::Down,
            applied: Some(Event::HostDown),
            alerts: &[A::HostDown],
            attache_kept: false,
            ha: true,
            ..row(
                "Down, host-down alerts not left to HA: the agent manager raises host_down itself; the Down is published all the same",
            )
        },
        Row {
            verdict: Some(V::Down),
            event: Event::AgentDisconnected,
            status: Status::Down,
            applied: Some(Event::HostDown),
            attache_kept: false,
            ha: true,
            ..row("Down after link loss")
        },
        Row {
            verdict: Some(V::Down),
            host_type: HostType::ConsoleProxy,
            status: Status::Alert,
            applied: Some(Event::PingTimeout),
            alerts: &[A::HostAlert],
            attache_kept: false,
            investigated: false,
            ..row("system VM agent: investigation answers Alert without investigators")
        },
        Row {
            verdict: Some(V::Up),
            applied: Some(Event::Ping),
            ..row("Up: Ping applied, attache kept")
        },
        Row {
            verdict: Some(V::Disconnected),
            setup: &[Event::ManagementServerDown],
            status: Status::Disconnected,
            ..row("Disconnected while Disconnected within alert.wait: wait")
        },
        Row {
            verdict: Some(V::Disconnected),
            setup: &[Event::ManagementServerDown],
            waited: true,
            status: Status::Alert,
            applied: Some(Event::WaitedTooLong),
            attache_kept: false,
            ..row("Disconnected while Disconnected past alert.wait: WaitedTooLong")
        },
        Row {
            verdict: Some(V::Disconnected),
            resource_state: ResourceState::PrepareForMaintenance,
            ..row("Disconnected while Up and preparing for maintenance, within alert.wait: wait")
        },
        Row {
            verdict: Some(V::Disconnected),
            resource_state: ResourceState::PrepareForMaintenance,
            waited: true,
            ..row(
                "Disconnected while Up and preparing for maintenance, past alert.wait: no Up+WaitedTooLong cell, kept",
            )
        },
        Row {
            verdict: Some(V::Disconnected),
            status: Status::Alert,
            applied: Some(Event::AgentDisconnected),
            alerts: &[A::HostDisconnected],
            attache_kept: false,
            ..row(
                "Disconnected while Up: alert, AgentDisconnected (Alert at once, as the table says)",
            )
        },
        Row {
            verdict: Some(V::Alert),
            status: Status::Alert,
            applied: Some(Event::PingTimeout),
            alerts: &[A::HostAlert],
            attache_kept: false,
            ..row("Alert: alert, original event")
        },
        Row {
            verdict: Some(V::Down),
            setup: &[Event::PingTimeout],
            status: Status::Alert,
            attache_kept: false,
            investigated: false,
            ..row(
                "next status not Alert (Alert + PingTimeout has no cell): no investigation, status kept",
            )
        },
        Row {
            verdict: Some(V::Down),
            setup: &[Event::HostDown],
            status: Status::Down,
            applied: Some(Event::PingTimeout),
            attache_kept: false,
            investigated: false,
            ..row("next status Down (Down + PingTimeout): no investigation, no new HA")
        },
    ]
}

#[tokio::test(start_paused = true)]
async fn every_row_of_the_verdict_table() {
    let alert_wait = Duration::from_secs(600);
    for (i, r) in rows().into_iter().enumerate() {
        let config = {
            let mut c = LivenessConfig::default();
            c.alert_wait = alert_wait;
            c
        };
        let h = Harness::with_wiring(
            config,
            Wiring {
                ha: !r.no_ha,
                ..Wiring::default()
            },
        );
        let id = HostId(100 + i as u64);
        let host = h.add_up(id.0, r.host_type, r.resource_state).await;
        sleep(Duration::from_secs(61)).await; // one ping
        for e in r.setup {
            h.manager.apply(id, *e, "test setup").await.unwrap();
        }
        let before = h.manager.history(id).len();
        let downs_before = h.scheduled().len();
        if r.waited {
            host.pinging
                .store(false, std::sync::atomic::Ordering::SeqCst);
            sleep(alert_wait + Duration::from_secs(1)).await;
        }
        h.set_verdict(r.verdict);
        let result = h.manager.disconnect_with_investigation(id, r.event).await;
        let ctx = format!("row {i}: {}", r.name);
        let history = h.manager.history(id);
        let applied: Vec<Event> = history[before..].iter().map(|c| c.event).collect();
        assert_eq!(
            h.status(id),
            Some(r.status),
            "{ctx}: status; history {applied:?}; result {result:?}"
        );
        assert_eq!(
            applied,
            r.applied.into_iter().collect::<Vec<_>>(),
            "{ctx}: events applied"
        );
        assert_eq!(h.alerts.kinds(id), r.alerts, "{ctx}: alerts");
        assert_eq!(
            h.manager.attache(id).is_some(),
            r.attache_kept,
            "{ctx}: attache"
        );
        assert_eq!(
            h.investigations() > 0,
            r.investigated,
            "{ctx}: investigators asked"
        );
        let ha: Vec<_> = h.scheduled().split_off(downs_before);
        assert_eq!(!ha.is_empty(), r.ha, "{ctx}: VM-HA");
        if r.ha {
            assert_eq!(ha, vec![(id, WorkReason::HostDown, true)], "{ctx}");
        }
        // A host left Up (or waiting) is still watched: it is tracked by the monitor again.
        if r.attache_kept {
            assert!(h.manager.last_ping(id).is_some(), "{ctx}: re-armed");
        } else {
            assert!(
                h.manager.last_ping(id).is_none(),
                "{ctx}: no longer tracked"
            );
        }
        h.shutdown().await;
    }
}

/// CheckHealth and the chain start together (a deliberate difference: CloudStack asks the chain
/// only after CheckHealth failed); a host answering CheckHealth is Up whatever the chain says,
/// unless the chain's finding is settled (which a scripted one never is).
#[tokio::test(start_paused = true)]
async fn check_health_success_means_up_whatever_the_chain_says() {
    for verdict in [
        Some(HostVerdict::Down),
        Some(HostVerdict::Disconnected),
        Some(HostVerdict::Alert),
        None,
    ] {
        let h = Harness::new(LivenessConfig::default());
        let host = h.add_up(1, HostType::Routing, ResourceState::Enabled).await;
        host.health_ok
            .store(true, std::sync::atomic::Ordering::SeqCst);
        h.set_verdict(verdict);
        h.manager
            .disconnect_with_investigation(HostId(1), Event::PingTimeout)
            .await
            .unwrap();
        assert_eq!(
            h.status(HostId(1)),
            Some(Status::Up),
            "chain says {verdict:?}"
        );
        let last = h.manager.history(HostId(1)).pop().unwrap();
        assert_eq!(
            (last.event, last.reason.contains("Up by CheckHealth")),
            (Event::Ping, true),
            "chain says {verdict:?}: {}",
            last.reason
        );
        assert!(
            h.alerts.kinds(HostId(1)).is_empty(),
            "chain says {verdict:?}"
        );
        assert!(h.scheduled().is_empty(), "chain says {verdict:?}");
        h.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn alerts_are_not_repeated_until_the_status_changes() {
    let h = Harness::new(LivenessConfig::default());
    let host = h.add_up(1, HostType::Routing, ResourceState::Enabled).await;
    let id = HostId(1);
    host.gateway
        .store(false, std::sync::atomic::Ordering::SeqCst);
    sleep(Duration::from_secs(60 * 3 + 1)).await; // three pings without a gateway
    assert_eq!(h.alerts.kinds(id), [AlertKind::LostGateway]);
    host.gateway
        .store(true, std::sync::atomic::Ordering::SeqCst);
    sleep(Duration::from_secs(60)).await;
    host.gateway
        .store(false, std::sync::atomic::Ordering::SeqCst);
    sleep(Duration::from_secs(60)).await;
    assert_eq!(
        h.alerts.kinds(id),
        [AlertKind::LostGateway],
        "same status: not again"
    );
    assert_eq!(
        h.alerts.cleared(),
        [(AlertKind::LostGateway, id)],
        "cleared once when the gateway came back"
    );
    // A status change (Up → Disconnected → Up) opens the way for the same alert again.
    h.manager
        .apply(id, Event::ManagementServerDown, "test")
        .await
        .unwrap();
    h.manager.apply(id, Event::Ping, "test").await.unwrap();
    host.gateway
        .store(true, std::sync::atomic::Ordering::SeqCst);
    sleep(Duration::from_secs(60)).await;
    host.gateway
        .store(false, std::sync::atomic::Ordering::SeqCst);
    sleep(Duration::from_secs(60)).await;
    assert_eq!(
        h.alerts.kinds(id),
        [AlertKind::LostGateway, AlertKind::LostGateway]
    );
    h.shutdown().await;
}
