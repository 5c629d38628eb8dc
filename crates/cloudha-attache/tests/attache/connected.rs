//! Connected attaches: in-memory duplexes (paused time) and real loopback TCP (real time,
//! waiting on events).

use std::sync::Arc;
use std::time::Duration;

use cloudha_attache::*;
use cloudha_protocol::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use crate::support::{FakeResource, FakeSink, Seen};

/// Waits for the first event matching `f` (bounded, so a broken build fails instead of hanging).
async fn wait_for<T>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
    mut f: impl FnMut(&Seen) -> Option<T>,
) -> T {
    timeout(Duration::from_secs(30), async {
        loop {
            let s = rx.recv().await.expect("sink alive");
            if let Some(t) = f(&s) {
                return t;
            }
        }
    })
    .await
    .expect("event within 30 s")
}

#[tokio::test]
async fn agent_and_attache_over_real_tcp() {
    let tasks = Tasks::new();
    let (sink, mut rx) = FakeSink::new(Duration::from_millis(50));
    let addr = listen(
        "127.0.0.1:0".parse().unwrap(),
        sink.clone(),
        ConnectedConfig::default(),
        &tasks,
    )
    .await
    .unwrap();
    let host = HostId(21);
    let resource = Arc::new(FakeResource::new(host));
    let agent = AgentClient::new(
        AgentConfig::new(host),
        resource.clone(),
        Arc::new(TcpConnector(addr)),
    )
    .spawn(&tasks);

    // Startup reaches the sink with a connected attache.
    let attache = wait_for(&mut rx, |s| match s {
        Seen::Connect { host: h, attache } if *h == host => Some(attache.clone()),
        _ => None,
    })
    .await;
    assert_eq!(attache.kind(), AttacheKind::Connected);
    assert_eq!(attache.host_id(), host);

    // Pings arrive at the interval from the StartupAnswer.
    for _ in 0..3 {
        wait_for(&mut rx, |s| match s {
            Seen::Commands {
                host: h, commands, ..
            } if *h == host && commands[0].is_ping() => Some(()),
            _ => None,
        })
        .await;
    }

    // A command from the manager is executed by the agent's resource and answered.
    let answer = send_one(
        &attache,
        CheckVirtualMachineCommand { vm: VmId(5) }.into(),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert!(matches!(
        answer,
        Answer::CheckVirtualMachine(CheckVirtualMachineAnswer {
            power: VmPowerState::PowerOn,
            ..
        })
    ));
    assert!(
        resource
            .executed
            .lock()
            .unwrap()
            .iter()
            .any(|(_, c)| matches!(c, Command::CheckVirtualMachine(_)))
    );

    // The killed client is seen as a disconnect.
    agent.stop();
    let error = wait_for(&mut rx, |s| match s {
        Seen::LinkLost { host: h, error } if *h == host => Some(error.clone()),
        _ => None,
    })
    .await;
    assert!(error.contains("closed") || error.contains("I/O"), "{error}");
    assert!(attache.is_closed());
    tasks.shutdown().await;
}

#[tokio::test]
async fn garbage_frames_lose_only_their_own_link_over_tcp() {
    let tasks = Tasks::new();
    let (sink, mut rx) = FakeSink::new(Duration::from_millis(50));
    let addr = listen(
        "127.0.0.1:0".parse().unwrap(),
        sink.clone(),
        ConnectedConfig::default(),
        &tasks,
    )
    .await
    .unwrap();
    let good = HostId(1);
    AgentClient::new(
        AgentConfig::new(good),
        Arc::new(FakeResource::new(good)),
        Arc::new(TcpConnector(addr)),
    )
    .spawn(&tasks);
    let good_attache = wait_for(&mut rx, |s| match s {
        Seen::Connect { host, attache } if *host == good => Some(attache.clone()),
        _ => None,
    })
    .await;

    // A second peer starts up properly, then sends garbage.
    let bad = HostId(2);
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    let startup = Envelope::request(
        Sequence(1),
        Flags::NONE,
        vec![Command::Startup(StartupCommand {
            host_id: bad,
            ..Default::default()
        })],
    );
    raw.write_all(&FrameCodec::default().encode_to_vec(&startup).unwrap())
        .await
        .unwrap();
    wait_for(&mut rx, |s| {
        matches!(s, Seen::Connect { host, .. } if *host == bad).then_some(())
    })
    .await;
    raw.write_all(&[0, 0, 0, 5, b'{', b'x', b'y', b'z', b'!'])
        .await
        .unwrap();
    let error = wait_for(&mut rx, |s| match s {
        Seen::LinkLost { host, error } if *host == bad => Some(error.clone()),
        _ => None,
    })
    .await;
    assert!(
        error.contains("bad frame") && error.contains("invalid envelope JSON"),
        "{error}"
    );
    // The bad peer's socket is closed by us.
    // Its socket ends (a clean close, or a reset): reading to the end finishes.
    let mut sink_buf = Vec::new();
    let _clean_or_reset = timeout(Duration::from_secs(10), raw.read_to_end(&mut sink_buf))
        .await
        .expect("the bad peer's link is closed by the manager side");

    // The good agent carries on: pings keep coming and requests work.
    wait_for(&mut rx, |s| match s {
        Seen::Commands { host, .. } if *host == good => Some(()),
        _ => None,
    })
    .await;
    let answer = send_one(
        &good_attache,
        CheckHealthCommand {}.into(),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert!(answer.success());
    assert!(!good_attache.is_closed());
    tasks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn oversized_and_unknown_frames_over_a_duplex() {
    let tasks = Tasks::new();
    let (sink, mut rx) = FakeSink::new(Duration::from_secs(60));
    let (mut agent_side, manager_side) = tokio::io::duplex(64 * 1024);
    let codec = FrameCodec::default();
    let config = ConnectedConfig {
        max_frame_len: 4096,
        ..Default::default()
    };
    let accept = {
        let (sink, tasks) = (sink.clone(), tasks.clone());
        tokio::spawn(async move { accept_stream(manager_side, sink, &config, &tasks).await })
    };
    let startup = Envelope::request(
        Sequence(1),
        Flags::NONE,
        vec![Command::Startup(StartupCommand {
            host_id: HostId(3),
            ..Default::default()
        })],
    );
    agent_side
        .write_all(&codec.encode_to_vec(&startup).unwrap())
        .await
        .unwrap();
    let attache = accept.await.unwrap().unwrap();
    let mut buf = bytes::BytesMut::new();
    // The StartupAnswer comes back on the Startup's sequence.
    let answer = loop {
        if let Some(d) = codec.decode(&mut buf).unwrap() {
            break d;
        }
        agent_side.read_buf(&mut buf).await.unwrap();
    };
    assert_eq!(answer.envelope.seq, Sequence(1));
    assert!(
        matches!(&answer.envelope.body, Body::Answers(a) if matches!(&a[0], Answer::Startup(s) if s.ping_interval_ms == 60_000))
    );

    // An unknown command in a batch: answered with a failure in its place, the link stays.
    let batch = br#"{"seq":5,"commands":[{"type":"ping","host_id":3},{"type":"warp_drive"}]}"#;
    let mut frame = (batch.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(batch);
    agent_side.write_all(&frame).await.unwrap();
    let reply = loop {
        if let Some(d) = codec.decode(&mut buf).unwrap() {
            break d;
        }
        agent_side.read_buf(&mut buf).await.unwrap();
    };
    let Body::Answers(answers) = reply.envelope.body else {
        panic!("answers")
    };
    assert_eq!(reply.envelope.seq, Sequence(5));
    assert!(matches!(answers[0], Answer::Ping(_)));
    assert!(!answers[1].success());
    assert!(!attache.is_closed());

    // A frame announcing more than the limit closes the link with a typed error.
    agent_side
        .write_all(&(1_000_000u32).to_be_bytes())
        .await
        .unwrap();
    let error = wait_for(&mut rx, |s| match s {
        Seen::LinkLost { error, .. } => Some(error.clone()),
        _ => None,
    })
    .await;
    assert!(error.contains("exceeds the limit of 4096"), "{error}");
    assert!(attache.is_closed());
    tasks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn pending_request_fails_at_once_when_the_link_drops() {
    let tasks = Tasks::new();
    let (sink, _rx) = FakeSink::new(Duration::from_secs(60));
    let (mut agent_side, manager_side) = tokio::io::duplex(64 * 1024);
    let codec = FrameCodec::default();
    let startup = Envelope::request(
        Sequence(1),
        Flags::NONE,
        vec![Command::Startup(StartupCommand {
            host_id: HostId(4),
            ..Default::default()
        })],
    );
    agent_side
        .write_all(&codec.encode_to_vec(&startup).unwrap())
        .await
        .unwrap();
    let attache = accept_stream(manager_side, sink, &ConnectedConfig::default(), &tasks)
        .await
        .unwrap();
    let pending = {
        let a = attache.clone();
        tokio::spawn(async move { a.send(Request::one(CheckHealthCommand {})).await })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let at = tokio::time::Instant::now();
    drop(agent_side);
    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, RequestError::Disconnected { .. }), "{err}");
    assert_eq!(tokio::time::Instant::now(), at);
    tasks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn refused_startup_is_written_back_then_the_link_closes() {
    let tasks = Tasks::new();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = Arc::new(FakeSink {
        seen: Default::default(),
        events: tx,
        interval: Duration::from_secs(60),
        refuse: Some("host is being removed".into()),
    });
    let (mut agent_side, manager_side) = tokio::io::duplex(64 * 1024);
    let codec = FrameCodec::default();
    let startup = Envelope::request(
        Sequence(9),
        Flags::NONE,
        vec![Command::Startup(StartupCommand {
            host_id: HostId(4),
            ..Default::default()
        })],
    );
    agent_side
        .write_all(&codec.encode_to_vec(&startup).unwrap())
        .await
        .unwrap();
    let err = accept_stream(manager_side, sink, &ConnectedConfig::default(), &tasks)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LinkError::Refused(d) if d == "host is being removed"),
        "{err}"
    );
    let mut bytes = Vec::new();
    agent_side.read_to_end(&mut bytes).await.unwrap();
    let (d, _) = codec.decode_slice(&bytes).unwrap();
    assert!(matches!(&d.envelope.body, Body::Answers(a) if !a[0].success()));
    tasks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_first_frame_that_is_not_startup_is_rejected() {
    let tasks = Tasks::new();
    let (sink, _rx) = FakeSink::new(Duration::from_secs(60));
    let (mut agent_side, manager_side) = tokio::io::duplex(1024);
    let ping = Envelope::request(
        Sequence(1),
        Flags::NONE,
        vec![Command::Ping(PingCommand { host_id: HostId(1) })],
    );
    agent_side
        .write_all(&FrameCodec::default().encode_to_vec(&ping).unwrap())
        .await
        .unwrap();
    let err = accept_stream(
        manager_side,
        sink.clone(),
        &ConnectedConfig::default(),
        &tasks,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, LinkError::NoStartup(_)), "{err}");
    // Silence is a startup timeout.
    let (_agent, manager_side) = tokio::io::duplex(1024);
    let err = accept_stream(manager_side, sink, &ConnectedConfig::default(), &tasks)
        .await
        .unwrap_err();
    assert!(matches!(err, LinkError::StartupTimeout(_)), "{err}");
    tasks.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn agent_reconnects_with_capped_backoff_and_redoes_startup_when_asked() {
    use std::sync::Mutex;
    // A connector that hands out duplex streams, recording when each connect happened.
    struct DuplexConnector {
        tx: tokio::sync::mpsc::UnboundedSender<tokio::io::DuplexStream>,
        times: Mutex<Vec<tokio::time::Instant>>,
        fail_first: Mutex<usize>,
    }
    #[async_trait::async_trait]
    impl Connector for DuplexConnector {
        async fn connect(&self) -> std::io::Result<Box<dyn AgentStreamObj>> {
            self.times.lock().unwrap().push(tokio::time::Instant::now());
            let mut f = self.fail_first.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "down",
                ));
            }
            let (a, b) = tokio::io::duplex(64 * 1024);
            self.tx.send(b).unwrap();
            Ok(Box::new(a))
        }
    }
    let tasks = Tasks::new();
    let (tx, mut streams) = tokio::sync::mpsc::unbounded_channel();
    let connector = Arc::new(DuplexConnector {
        tx,
        times: Mutex::new(Vec::new()),
        fail_first: Mutex::new(8),
    });
    let host = HostId(5);
    let mut config = AgentConfig::new(host);
    config.backoff_initial = Duration::from_secs(1);
    config.backoff_max = Duration::from_secs(60);
    AgentClient::new(config, Arc::new(FakeResource::new(host)), connector.clone()).spawn(&tasks);
    let (sink, mut rx) = FakeSink::new(Duration::from_secs(60));
    let manager_side = streams.recv().await.unwrap();
    let times = connector.times.lock().unwrap().clone();
    let delays: Vec<_> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(delays.len(), 8);
    for (i, d) in delays.iter().enumerate() {
        let base = Duration::from_secs(1 << i).min(Duration::from_secs(60));
        assert!(
            *d >= base && *d <= base.mul_f64(1.5),
            "attempt {i}: {d:?} vs base {base:?}"
        );
    }
    drop((sink, &mut rx));
    // Play the manager by hand: answer the Startup, then ask for a new startup in a PingAnswer.
    let mut link = manager_side;
    let codec = FrameCodec::default();
    let mut buf = bytes::BytesMut::new();
    let next = async |link: &mut tokio::io::DuplexStream, buf: &mut bytes::BytesMut| loop {
        if let Some(d) = codec.decode(buf).unwrap() {
            return d;
        }
        link.read_buf(buf).await.unwrap();
    };
    let first = next(&mut link, &mut buf).await;
    assert!(
        matches!(&first.envelope.body, Body::Commands(c) if matches!(c[0], Command::Startup(_)))
    );
    let answer = |seq| {
        Envelope::response(
            seq,
            vec![Answer::Startup(accept_startup(
                &StartupCommand {
                    host_id: host,
                    ..Default::default()
                },
                Duration::from_secs(60),
            ))],
        )
    };
    link.write_all(&codec.encode_to_vec(&answer(first.envelope.seq)).unwrap())
        .await
        .unwrap();
    let t0 = tokio::time::Instant::now();
    let ping = next(&mut link, &mut buf).await;
    assert_eq!(
        tokio::time::Instant::now() - t0,
        Duration::from_secs(60),
        "pings at the answered interval"
    );
    assert!(matches!(&ping.envelope.body, Body::Commands(c) if c[0].is_ping()));
    let redo = Envelope::response(
        ping.envelope.seq,
        vec![Answer::Ping(PingAnswer {
            avoid_ms: vec![],
            send_startup: true,
        })],
    );
    link.write_all(&codec.encode_to_vec(&redo).unwrap())
        .await
        .unwrap();
    let again = next(&mut link, &mut buf).await;
    assert!(
        matches!(&again.envelope.body, Body::Commands(c) if matches!(c[0], Command::Startup(_))),
        "startup again on the same link"
    );
    assert_eq!(
        tokio::time::Instant::now() - t0,
        Duration::from_secs(60),
        "at once"
    );
    link.write_all(&codec.encode_to_vec(&answer(again.envelope.seq)).unwrap())
        .await
        .unwrap();
    let ping = next(&mut link, &mut buf).await;
    assert!(
        matches!(&ping.envelope.body, Body::Commands(c) if c[0].is_ping()),
        "pinging again"
    );
    // After a session that had started up, a lost link reconnects from the first delay.
    drop(link);
    let lost = tokio::time::Instant::now();
    let _next_stream = streams.recv().await.unwrap();
    let gap = tokio::time::Instant::now() - lost;
    assert!(
        gap >= Duration::from_secs(1) && gap <= Duration::from_millis(1500),
        "{gap:?}"
    );
    tasks.shutdown().await;
}
