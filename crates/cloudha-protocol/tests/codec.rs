//! Round trips of every command and answer, and the decoder fed corrupted, truncated and
//! random bytes: it returns errors, never panics.

use std::collections::BTreeMap;

use bytes::BytesMut;
use cloudha_protocol::*;

fn every_command() -> Vec<Command> {
    let vms = vec![
        VmStateReport {
            vm: VmId(1),
            power: VmPowerState::PowerOn,
        },
        VmStateReport {
            vm: VmId(2),
            power: VmPowerState::PowerOff,
        },
    ];
    let cmds = vec![
        Command::Startup(StartupCommand {
            host_id: HostId(3),
            name: "kvm-h1".into(),
            version: "4.22".into(),
            host_type: Some(HostType::Routing),
            hypervisor: Some(HypervisorType::Kvm),
            cluster: Some(ClusterId(1)),
            pod: Some(PodId(1)),
            zone: Some(ZoneId(1)),
            vm_states: vms.clone(),
        }),
        Command::Ready(ReadyCommand { host_id: HostId(3) }),
        Command::Ping(PingCommand { host_id: HostId(3) }),
        Command::PingRouting(PingRoutingCommand {
            host_id: HostId(3),
            vm_states: vms,
            gateway_accessible: false,
        }),
        Command::CheckHealth(CheckHealthCommand {}),
        Command::CheckOnHost(CheckOnHostCommand { target: HostId(4) }),
        Command::Fence(FenceCommand {
            target: HostId(4),
            vm: Some(VmId(9)),
        }),
        Command::PingTest(PingTestCommand { target: HostId(4) }),
        Command::CheckVirtualMachine(CheckVirtualMachineCommand { vm: VmId(9) }),
        Command::StartVm(StartVmCommand {
            vm: VmId(9),
            ha: true,
        }),
        Command::StopVm(StopVmCommand {
            vm: VmId(9),
            force: true,
        }),
        Command::Shutdown(ShutdownCommand {
            reason: ShutdownReason::Update,
            details: "upgrading".into(),
        }),
        Command::AgentControl(AgentControlCommand {
            name: "console_access".into(),
            params: BTreeMap::from([("vm".into(), "9".into())]),
        }),
    ];
    let tags: Vec<_> = cmds.iter().map(Command::type_name).collect();
    assert_eq!(
        tags,
        Command::TYPE_NAMES,
        "every command variant is covered"
    );
    cmds
}

fn every_answer() -> Vec<Answer> {
    let answers = vec![
        Answer::Startup(StartupAnswer {
            success: true,
            host_id: HostId(3),
            ping_interval_ms: 60_000,
            details: String::new(),
        }),
        Answer::Ping(PingAnswer {
            avoid_ms: vec!["10.0.0.2".into()],
            send_startup: true,
        }),
        Answer::CheckOnHost(CheckOnHostAnswer {
            success: true,
            alive: false,
            heartbeat_age_ms: Some(75_000),
            details: "hb 75s old".into(),
        }),
        Answer::Fence(FenceAnswer {
            success: true,
            alive: false,
            heartbeat_age_ms: None,
            details: String::new(),
        }),
        Answer::CheckVirtualMachine(CheckVirtualMachineAnswer {
            success: true,
            power: VmPowerState::PowerOn,
            details: String::new(),
        }),
        Answer::Generic(GenericAnswer {
            success: false,
            details: "nope".into(),
        }),
    ];
    let tags: Vec<_> = answers.iter().map(Answer::type_name).collect();
    assert_eq!(tags, Answer::TYPE_NAMES, "every answer variant is covered");
    answers
}

fn round_trip(env: &Envelope) {
    let codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    codec.encode(env, &mut buf).unwrap();
    let d = codec.decode(&mut buf).unwrap().expect("complete frame");
    assert!(d.rejected.is_empty());
    assert_eq!(&d.envelope, env);
    assert!(buf.is_empty());
}

#[test]
fn every_command_round_trips_alone_and_in_a_batch() {
    let cmds = every_command();
    for (i, c) in cmds.iter().enumerate() {
        round_trip(&Envelope::request(
            Sequence(i as u64),
            Flags::SEQUENTIAL,
            vec![c.clone()],
        ));
        // serde's own derive agrees with the fast decoder
        let json = serde_json::to_string(c).unwrap();
        assert_eq!(&serde_json::from_str::<Command>(&json).unwrap(), c);
        assert_eq!(&Command::from_json(&json).unwrap(), c);
    }
    round_trip(&Envelope::request(
        Sequence(u64::MAX),
        Flags::FROM_SERVER | Flags::CONTROL,
        cmds,
    ));
}

#[test]
fn every_answer_round_trips() {
    let answers = every_answer();
    for a in &answers {
        round_trip(&Envelope::response(Sequence(5), vec![a.clone()]));
        let json = serde_json::to_string(a).unwrap();
        assert_eq!(&serde_json::from_str::<Answer>(&json).unwrap(), a);
    }
    round_trip(&Envelope::response(Sequence(6), answers));
}

#[test]
fn wire_shape_is_tagged_snake_case_with_pascal_case_states() {
    let c = Command::PingRouting(PingRoutingCommand {
        host_id: HostId(3),
        vm_states: vec![VmStateReport {
            vm: VmId(1),
            power: VmPowerState::PowerOn,
        }],
        gateway_accessible: true,
    });
    assert_eq!(
        serde_json::to_string(&c).unwrap(),
        r#"{"type":"ping_routing","host_id":3,"vm_states":"1=PowerOn","gateway_accessible":true}"#
    );
    let a = Answer::CheckOnHost(CheckOnHostAnswer {
        success: true,
        alive: true,
        heartbeat_age_ms: None,
        details: String::new(),
    });
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        r#"{"type":"check_on_host_answer","success":true,"alive":true,"details":""}"#
    );
}

fn frame(body: &str) -> BytesMut {
    let mut b = BytesMut::new();
    b.extend_from_slice(&(body.len() as u32).to_be_bytes());
    b.extend_from_slice(body.as_bytes());
    b
}

#[test]
fn vm_states_accept_the_verbose_form_and_name_bad_entries() {
    let verbose = r#"{"type":"ping_routing","host_id":3,"vm_states":[{"vm":1,"power":"PowerOff"},{"vm":2,"power":"PowerOn"}]}"#;
    let Command::PingRouting(p) = Command::from_json(verbose).unwrap() else {
        panic!()
    };
    assert_eq!(
        p.vm_states[0],
        VmStateReport {
            vm: VmId(1),
            power: VmPowerState::PowerOff
        }
    );
    assert_eq!(p.vm_states.len(), 2);
    assert!(
        p.gateway_accessible,
        "absent gateway flag defaults to reachable"
    );
    let bad = r#"{"type":"ping_routing","host_id":3,"vm_states":"1=PowerOn,2=Sleepy"}"#;
    let err = Command::from_json(bad).unwrap_err().to_string();
    assert!(err.contains("invalid VM state entry `2=Sleepy`"), "{err}");
}

#[test]
fn unknown_fields_are_tolerated() {
    let mut b = frame(
        r#"{"seq":1,"flags":0,"future":{"x":1},"commands":[{"type":"ping","host_id":2,"new_field":[1,2]}]}"#,
    );
    let d = FrameCodec::default().decode(&mut b).unwrap().unwrap();
    assert_eq!(
        d.envelope.body,
        Body::Commands(vec![Command::Ping(PingCommand { host_id: HostId(2) })])
    );
}

/// Both decoders of commands on one item: the fast one and serde's derive.
fn both_decoders(
    item: &str,
) -> (
    Result<Command, ItemError>,
    Result<Command, serde_json::Error>,
) {
    (
        Command::from_json(item),
        serde_json::from_str::<Command>(item),
    )
}

#[test]
fn unknown_fields_are_ignored_by_both_decoders_whatever_they_hold() {
    let values = [
        "null",
        "true",
        "0",
        "-17",
        "18446744073709551616",
        "123456789012345678901234567890",
        "-0.0",
        "2.5e-3",
        "1E+300",
        r#""""#,
        r#""tab\t quote\" backslash\\ slash\/ \u00e9 \ud83d\ude00 \u0000""#,
        r#""\"type\":\"ready\"""#,
        "[]",
        r#"[1,"two",null,[3.5,{"four":4}]]"#,
        "{}",
        r#"{"type":"ready","host_id":"not a number","nested":{"a":[{"b":null}]}}"#,
        &format!("{}1{}", "[".repeat(100), "]".repeat(100)),
    ];
    let ping = Command::Ping(PingCommand { host_id: HostId(2) });
    let routing = Command::PingRouting(PingRoutingCommand {
        host_id: HostId(2),
        vm_states: vec![VmStateReport {
            vm: VmId(1),
            power: VmPowerState::PowerOn,
        }],
        gateway_accessible: true,
    });
    for v in values {
        for (item, expected) in [
            // our own shape (read directly) and others (left to the derive)
            (
                format!(r#"{{"type":"ping","future":{v},"host_id":2}}"#),
                &ping,
            ),
            (
                format!(r#"{{"host_id":2,"future":{v},"type":"ping"}}"#),
                &ping,
            ),
            (
                format!(r#"{{ "type" : "ping", "host_id" : 2, "future" : {v} }}"#),
                &ping,
            ),
            // below the top: in a verbose VM state report
            (
                format!(
                    r#"{{"type":"ping_routing","host_id":2,"vm_states":[{{"vm":1,"future":{v},"power":"PowerOn"}}]}}"#
                ),
                &routing,
            ),
        ] {
            let (fast, derive) = both_decoders(&item);
            assert_eq!(
                fast.as_ref().ok(),
                Some(expected),
                "fast decoder on {item}: {fast:?}"
            );
            assert_eq!(
                derive.as_ref().ok(),
                Some(expected),
                "derive on {item}: {derive:?}"
            );
        }
    }
}

#[test]
fn values_serde_json_cannot_read_are_refused_by_both_decoders_even_when_unknown() {
    // serde's derive buffers every field, so it reads (and refuses) what serde_json cannot hold
    // as a value; the fast decoder reads ignored values the same way instead of skipping them.
    let deep = format!("{}1{}", "[".repeat(130), "]".repeat(130));
    for v in ["1e400", "-1e400", r#""\ud800""#, r#""\udc00x""#, &deep] {
        for item in [
            format!(r#"{{"type":"ping","host_id":2,"future":{v}}}"#),
            format!(r#"{{"host_id":2,"future":{v},"type":"ping"}}"#),
            format!(
                r#"{{"type":"ping_routing","host_id":2,"vm_states":[{{"vm":1,"power":"PowerOn","future":{v}}}]}}"#
            ),
        ] {
            let (fast, derive) = both_decoders(&item);
            assert!(derive.is_err(), "derive on {item}: {derive:?}");
            assert!(
                matches!(fast, Err(ItemError::Invalid { .. })),
                "fast decoder on {item}: {fast:?}"
            );
        }
    }
}

#[test]
fn a_second_type_tag_is_refused_by_both_decoders_as_a_typed_item_error() {
    for item in [
        r#"{"type":"ping","type":"ping","host_id":2}"#,
        r#"{"type":"ping","host_id":2,"type":"ready"}"#,
        r#"{"type":"ping","host_id":2,"t\u0079pe":"ping"}"#,
        r#"{"host_id":2,"type":"ping","type":"ready"}"#,
        r#"{"type":"ping","host_id":"bad","type":"ready"}"#,
        r#"{ "type":"ping", "type":5 }"#,
    ] {
        let (fast, derive) = both_decoders(item);
        let derive = derive.expect_err(item).to_string();
        assert!(
            derive.starts_with("duplicate field `type`"),
            "{item}: {derive}"
        );
        let fast = fast.expect_err(item);
        assert!(
            matches!(
                fast,
                ItemError::DuplicateType {
                    what: "command",
                    type_name: "ping"
                }
            ),
            "{item}: {fast:?}"
        );
        assert_eq!(fast.to_string(), "command `ping` has a second `type` tag");
    }
    // in a batch: rejected alone, the rest of the batch and the stream go on
    let mut b = frame(
        r#"{"seq":1,"commands":[{"type":"ping","host_id":1},{"type":"ping","type":"stop_vm","vm":9,"host_id":2},{"type":"ping","host_id":3}]}"#,
    );
    b.extend_from_slice(&frame(
        r#"{"seq":2,"answers":[{"type":"answer","type":"answer","success":true}]}"#,
    ));
    b.extend_from_slice(&frame(
        r#"{"seq":3,"commands":[{"type":"ping","host_id":4}]}"#,
    ));
    let codec = FrameCodec::default();
    let d = codec.decode(&mut b).unwrap().unwrap();
    assert_eq!(
        d.envelope.body,
        Body::Commands(vec![
            Command::Ping(PingCommand { host_id: HostId(1) }),
            Command::Ping(PingCommand { host_id: HostId(3) }),
        ])
    );
    assert_eq!(d.rejected.len(), 1);
    assert_eq!(d.rejected[0].index, 1);
    assert!(matches!(
        d.rejected[0].error,
        ItemError::DuplicateType {
            type_name: "ping",
            ..
        }
    ));
    let d = codec.decode(&mut b).unwrap().unwrap();
    assert_eq!(d.envelope.body, Body::Answers(vec![]));
    assert_eq!(
        d.rejected[0].error.to_string(),
        "answer `answer` has a second `type` tag"
    );
    assert_eq!(
        codec.decode(&mut b).unwrap().unwrap().envelope.seq,
        Sequence(3)
    );
}

#[test]
fn shapes_the_derive_accepts_are_accepted_alike() {
    let routing = |host_type| {
        Command::Startup(StartupCommand {
            host_id: HostId(1),
            host_type: Some(host_type),
            ..StartupCommand::default()
        })
    };
    for (item, expected) in [
        (
            r#"["ping",7]"#,
            Command::Ping(PingCommand { host_id: HostId(7) }),
        ),
        (
            r#"["check_health"]"#,
            Command::CheckHealth(CheckHealthCommand {}),
        ),
        (
            r#"{"type":"startup","host_id":1,"host_type":{"Routing":null}}"#,
            routing(HostType::Routing),
        ),
        (
            r#"{"type":"startup","host_id":1,"host_type":{"Routing":{}}}"#,
            routing(HostType::Routing),
        ),
        (
            r#"{"t\u0079pe":"ping","host_id":7}"#,
            Command::Ping(PingCommand { host_id: HostId(7) }),
        ),
    ] {
        let (fast, derive) = both_decoders(item);
        assert_eq!(derive.ok().as_ref(), Some(&expected), "derive on {item}");
        assert_eq!(fast.ok(), Some(expected), "fast decoder on {item}");
    }
}

#[test]
fn unknown_command_in_a_batch_is_reported_and_the_stream_goes_on() {
    let mut b = frame(
        r#"{"seq":1,"commands":[{"type":"ping","host_id":2},{"type":"teleport","to":"mars"},{"type":"check_health"}]}"#,
    );
    b.extend_from_slice(&frame(
        r#"{"seq":2,"commands":[{"type":"ping","host_id":3}]}"#,
    ));
    let codec = FrameCodec::default();
    let d = codec.decode(&mut b).unwrap().unwrap();
    assert_eq!(d.rejected.len(), 1);
    assert_eq!(d.rejected[0].index, 1);
    assert!(
        matches!(&d.rejected[0].error, ItemError::UnknownType { type_name, .. } if type_name == "teleport"),
        "{:?}",
        d.rejected[0].error
    );
    assert_eq!(
        d.rejected[0].error.to_string(),
        "unknown command type `teleport`"
    );
    let Body::Commands(cmds) = &d.envelope.body else {
        panic!("commands")
    };
    assert_eq!(cmds.len(), 2);
    let next = codec.decode(&mut b).unwrap().unwrap();
    assert_eq!(next.envelope.seq, Sequence(2));
}

#[test]
fn bad_frames_give_typed_errors() {
    let codec = FrameCodec::new(1024);
    // invalid JSON: consumed, recoverable
    let mut b = frame("{not json");
    let e = codec.decode(&mut b).unwrap_err();
    assert!(
        matches!(e, FrameError::InvalidJson { .. }) && e.is_recoverable(),
        "{e}"
    );
    assert!(b.is_empty());
    // neither commands nor answers
    let e = codec.decode(&mut frame(r#"{"seq":1}"#)).unwrap_err();
    assert!(matches!(e, FrameError::BadBody), "{e}");
    // item with a known type but a wrong payload
    let d = codec
        .decode(&mut frame(
            r#"{"seq":1,"commands":[{"type":"ping","host_id":"x"}]}"#,
        ))
        .unwrap()
        .unwrap();
    assert!(matches!(
        d.rejected[0].error,
        ItemError::Invalid {
            type_name: "ping",
            ..
        }
    ));
    // item without a type
    let d = codec
        .decode(&mut frame(r#"{"seq":1,"answers":[{"success":true}]}"#))
        .unwrap()
        .unwrap();
    assert!(matches!(
        d.rejected[0].error,
        ItemError::MissingType { what: "answer", .. }
    ));
}

#[test]
fn oversized_frame_is_refused_from_its_prefix() {
    let codec = FrameCodec::new(1024);
    // only the prefix has arrived: refused before any body byte is buffered
    let mut b = BytesMut::from(&(1_000_000u32).to_be_bytes()[..]);
    let e = codec.decode(&mut b).unwrap_err();
    assert!(
        matches!(
            e,
            FrameError::TooLarge {
                len: 1_000_000,
                max: 1024
            }
        ),
        "{e}"
    );
    assert!(!e.is_recoverable());
    // encode refuses too and leaves the buffer as it was
    let big = Envelope::request(
        Sequence(1),
        Flags::NONE,
        vec![Command::Shutdown(ShutdownCommand {
            reason: ShutdownReason::Requested,
            details: "x".repeat(2000),
        })],
    );
    let mut out = BytesMut::from(&b"keep"[..]);
    assert!(matches!(
        codec.encode(&big, &mut out),
        Err(FrameError::TooLarge { .. })
    ));
    assert_eq!(&out[..], b"keep");
}

#[test]
fn the_buffer_grows_with_the_bytes_that_arrive_not_with_the_prefix() {
    let codec = FrameCodec::default();
    let big = Envelope::request(
        Sequence(1),
        Flags::NONE,
        vec![Command::Shutdown(ShutdownCommand {
            reason: ShutdownReason::Requested,
            details: "x".repeat(DEFAULT_MAX_FRAME_LEN - 200),
        })],
    );
    let frame = codec.encode_to_vec(&big).unwrap();
    let body = frame.len() - 4;
    assert!(
        body > DEFAULT_MAX_FRAME_LEN - 1024 && body <= DEFAULT_MAX_FRAME_LEN,
        "{body}"
    );

    // the prefix promises 4 MiB, a few bytes have come: the buffer stays small
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&frame[..4 + 10]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(buf.capacity() < 64 << 10, "capacity {}", buf.capacity());
    assert!(
        codec.decode(&mut buf).unwrap().is_none(),
        "asking again changes nothing"
    );
    assert!(buf.capacity() < 64 << 10, "capacity {}", buf.capacity());

    // the rest comes in small reads into the room left (as `read_buf` does): the buffer grows
    // with what arrived, and the frame decodes when it is all there
    let mut fed = 14;
    let decoded = loop {
        if buf.capacity() == buf.len() {
            buf.reserve(64); // what `BytesMut` does for a read into a full buffer
        }
        let n = (buf.capacity() - buf.len())
            .min(1500)
            .min(frame.len() - fed);
        buf.extend_from_slice(&frame[fed..fed + n]);
        fed += n;
        assert!(
            buf.capacity() <= 2 * buf.len() + (64 << 10),
            "{} bytes buffered in a capacity of {}",
            buf.len(),
            buf.capacity()
        );
        if let Some(d) = codec.decode(&mut buf).unwrap() {
            break d;
        }
        assert!(fed < frame.len(), "complete frame not decoded");
    };
    assert_eq!(decoded.envelope, big);
    assert!(buf.is_empty());

    // over the limit: refused from the prefix alone, nothing reserved
    let mut buf = BytesMut::from(&((DEFAULT_MAX_FRAME_LEN + 1) as u32).to_be_bytes()[..]);
    let cap = buf.capacity();
    assert!(matches!(
        codec.decode(&mut buf),
        Err(FrameError::TooLarge { len, .. }) if len == DEFAULT_MAX_FRAME_LEN + 1
    ));
    assert_eq!(buf.capacity(), cap);
}

#[test]
fn truncated_frames() {
    let codec = FrameCodec::default();
    let full = codec
        .encode_to_vec(&Envelope::request(
            Sequence(1),
            Flags::NONE,
            every_command(),
        ))
        .unwrap();
    for cut in 0..full.len() {
        // streaming: incomplete means "need more"
        let mut b = BytesMut::from(&full[..cut]);
        assert!(codec.decode(&mut b).unwrap().is_none(), "cut {cut}");
        // at end of stream or one-shot: a typed Truncated error
        if cut > 0 {
            assert!(
                matches!(codec.decode_eof(&mut b), Err(FrameError::Truncated { .. })),
                "cut {cut}"
            );
        }
        let e = codec.decode_slice(&full[..cut]).unwrap_err();
        assert!(
            matches!(e, FrameError::Truncated { available, .. } if available == cut),
            "cut {cut}"
        );
    }
    let (d, used) = codec.decode_slice(&full).unwrap();
    assert_eq!(used, full.len());
    assert!(d.rejected.is_empty());
}

/// xorshift64*: deterministic bytes without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_and_corrupted_bytes_never_panic() {
    let codec = FrameCodec::new(64 * 1024);
    let seed = 0x5eed_c10d_4a11_u64;
    let mut rng = Rng(seed);
    let valid = codec
        .encode_to_vec(&Envelope::request(
            Sequence(9),
            Flags::NONE,
            every_command(),
        ))
        .unwrap();
    let answers = codec
        .encode_to_vec(&Envelope::response(Sequence(9), every_answer()))
        .unwrap();
    let mut outcomes = [0usize; 3]; // ok, ok with rejected items, error
    for round in 0..4000 {
        let mut bytes = if round % 2 == 0 {
            valid.clone()
        } else {
            answers.clone()
        };
        match round % 4 {
            // flip random bytes in the body
            0 | 1 => {
                for _ in 0..=rng.below(8) {
                    let i = 4 + rng.below(bytes.len() - 4);
                    bytes[i] = rng.next() as u8;
                }
            }
            // pure random bytes with a plausible prefix
            2 => {
                let n = rng.below(300);
                bytes = (n as u32).to_be_bytes().to_vec();
                bytes.extend((0..n).map(|_| rng.next() as u8));
            }
            // random garbage, any prefix
            _ => bytes = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        }
        let mut buf = BytesMut::from(&bytes[..]);
        let r1 = codec.decode_eof(&mut buf);
        let r2 = codec.decode_slice(&bytes);
        match r2 {
            Ok((d, _)) if d.rejected.is_empty() => outcomes[0] += 1,
            Ok(_) => outcomes[1] += 1,
            Err(_) => outcomes[2] += 1,
        }
        drop(r1);
    }
    // the corpus really exercised every outcome (seed printed on failure)
    assert!(
        outcomes.iter().all(|&n| n > 0),
        "seed {seed:#x}: {outcomes:?}"
    );
}
