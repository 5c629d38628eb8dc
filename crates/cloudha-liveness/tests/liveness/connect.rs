//! The connect flow (§2) and its failure paths.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cloudha_attache::{ConnectedConfig, LinkError, accept_stream};
use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use cloudha_registry::{ConnectError, Interest, ListenerRegistry, MockListener};
use tokio::io::AsyncWriteExt;

use cloudha_testkit::{FakeHost, Harness};

#[tokio::test(start_paused = true)]
async fn a_direct_host_connects_through_connecting_to_up_and_pings() {
    let h = Harness::new(LivenessConfig::default());
    let host = h.add_up(1, HostType::Routing, ResourceState::Enabled).await;
    assert_eq!(
        h.events(HostId(1)),
        vec![
            (None, Event::AgentConnected, Status::Connecting),
            (Some(Status::Connecting), Event::Ready, Status::Up)
        ]
    );
    tokio::time::sleep(Duration::from_secs(181)).await;
    assert_eq!(
        host.pings.lock().unwrap().len(),
        3,
        "the ping task runs at ping.interval"
    );
    assert_eq!(
        h.ha.reports.load(Ordering::Relaxed),
        4,
        "the connect's VM state sync, then routing pings, carry VM states to HA"
    );
    h.shutdown().await;
}

async fn refused(refusal: ConnectError) -> (Harness, Arc<FakeHost>) {
    let h = Harness::new(LivenessConfig::default());
    let mut listener = MockListener::new();
    listener
        .expect_process_connect()
        .returning(move |_, _, _| Err(refusal.clone()));
    listener.expect_process_disconnect().return_const(false);
    listener.expect_process_host_added().return_const(());
    h.registry
        .register(Arc::new(listener), Interest::CONNECTIONS, false);
    let host = FakeHost::new(HostId(1), HostType::Routing);
    h.manager
        .add_direct_host(
            Harness::record(HostId(1), HostType::Routing, ResourceState::Enabled),
            host.clone(),
        )
        .await
        .unwrap();
    assert!(!h.manager.connect_direct(HostId(1)).await);
    (h, host)
}

#[tokio::test(start_paused = true)]
async fn a_setup_refusal_disconnects_the_host() {
    let (h, _) = refused(ConnectError::disconnect("bad network setup")).await;
    assert_eq!(h.status(HostId(1)), Some(Status::Alert));
    assert_eq!(
        h.events(HostId(1)).last().unwrap().1,
        Event::AgentDisconnected
    );
    assert!(h.manager.attache(HostId(1)).is_none());
    assert_eq!(h.manager.tracked(), 0);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_refusal_stops_the_agent() {
    let (h, _) = refused(ConnectError::shutdown("agent version changed")).await;
    assert_eq!(h.status(HostId(1)), Some(Status::Disconnected));
    let last = h.manager.history(HostId(1)).pop().unwrap();
    assert_eq!(last.event, Event::ShutdownRequested);
    assert!(
        last.reason.contains("agent version changed"),
        "{}",
        last.reason
    );
    assert!(h.manager.attache(HostId(1)).is_none());
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_ready_disconnects_the_host() {
    let h = Harness::new(LivenessConfig::default());
    let host = FakeHost::new(HostId(1), HostType::Routing);
    host.ready_ok.store(false, Ordering::SeqCst);
    h.manager
        .add_direct_host(
            Harness::record(HostId(1), HostType::Routing, ResourceState::Enabled),
            host.clone(),
        )
        .await
        .unwrap();
    assert!(!h.manager.connect_direct(HostId(1)).await);
    assert_eq!(h.status(HostId(1)), Some(Status::Alert));
    assert_eq!(
        h.events(HostId(1)).last().unwrap().1,
        Event::AgentDisconnected
    );
    assert!(h.manager.attache(HostId(1)).is_none());
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(
        host.pings.lock().unwrap().is_empty(),
        "no ping task after a failed connect"
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_direct_host_stays_unconnected() {
    let h = Harness::new(LivenessConfig::default());
    let host = FakeHost::new(HostId(1), HostType::Routing);
    host.power_off();
    h.manager
        .add_direct_host(
            Harness::record(HostId(1), HostType::Routing, ResourceState::Enabled),
            host,
        )
        .await
        .unwrap();
    assert!(!h.manager.connect_direct(HostId(1)).await);
    assert_eq!(h.status(HostId(1)), None);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn connected_agents_are_accepted_only_for_known_hosts() {
    let h = Harness::new(LivenessConfig::default());
    let tasks = cloudha_attache::Tasks::new();
    let codec = FrameCodec::default();
    // Unknown host: refused in the StartupAnswer.
    let (mut agent, manager_side) = tokio::io::duplex(64 * 1024);
    let startup = Envelope::request(
        Sequence(1),
        Flags::NONE,
        vec![
            StartupCommand {
                host_id: HostId(77),
                ..Default::default()
            }
            .into(),
        ],
    );
    agent
        .write_all(&codec.encode_to_vec(&startup).unwrap())
        .await
        .unwrap();
    let err = accept_stream(
        manager_side,
        h.manager.sink(),
        &ConnectedConfig::default(),
        &tasks,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, LinkError::Refused(d) if d.contains("not known")),
        "{err}"
    );

    // Known host: accepted; the connect flow runs (Ready answered by the agent side here).
    h.manager
        .add_host(Harness::record(
            HostId(5),
            HostType::Routing,
            ResourceState::Enabled,
        ))
        .await
        .unwrap();
    let (mut agent, manager_side) = tokio::io::duplex(64 * 1024);
    let startup = Envelope::request(
        Sequence(1),
        Flags::NONE,
        vec![
            StartupCommand {
                host_id: HostId(5),
                ..Default::default()
            }
            .into(),
        ],
    );
    agent
        .write_all(&codec.encode_to_vec(&startup).unwrap())
        .await
        .unwrap();
    let attache = accept_stream(
        manager_side,
        h.manager.sink(),
        &ConnectedConfig::default(),
        &tasks,
    )
    .await
    .unwrap();
    // Answer the Ready command as an agent would.
    let mut buf = bytes::BytesMut::new();
    loop {
        use tokio::io::AsyncReadExt;
        agent.read_buf(&mut buf).await.unwrap();
        let mut done = false;
        while let Some(d) = codec.decode(&mut buf).unwrap() {
            if let Body::Commands(c) = &d.envelope.body
                && matches!(c[0], Command::Ready(_))
            {
                let reply = Envelope::response(d.envelope.seq, vec![Answer::ok()]);
                agent
                    .write_all(&codec.encode_to_vec(&reply).unwrap())
                    .await
                    .unwrap();
                done = true;
            }
        }
        if done {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(h.status(HostId(5)), Some(Status::Up));
    assert!(h.manager.attache(HostId(5)).is_some());
    use cloudha_attache::Attache;
    assert_eq!(
        h.manager.attache(HostId(5)).unwrap().generation(),
        attache.generation()
    );
    // The link closes: disconnect with investigation (AgentDisconnected); verdict Down ⇒ Down.
    h.set_verdict(Some(HostVerdict::Down));
    drop(agent);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.status(HostId(5)), Some(Status::Down));
    assert_eq!(
        h.manager.history(HostId(5)).last().unwrap().event,
        Event::HostDown
    );
    assert!(
        h.manager
            .history(HostId(5))
            .last()
            .unwrap()
            .reason
            .starts_with("AgentDisconnected")
    );
    tasks.shutdown().await;
    h.shutdown().await;
}
