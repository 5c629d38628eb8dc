//! Encode + decode of one PingRouting frame carrying 50 VM states (goal: ≥ 200k frames/s per core).

use bytes::BytesMut;
use cloudha_protocol::{
    Command, Envelope, Flags, FrameCodec, HostId, PingRoutingCommand, Sequence, VmId, VmPowerState,
    VmStateReport,
};
use divan::counter::ItemsCount;

fn main() {
    divan::main();
}

fn ping_routing(vms: u64) -> Envelope {
    let vm_states = (0..vms)
        .map(|i| VmStateReport {
            vm: VmId(10_000 + i),
            power: if i % 7 == 0 {
                VmPowerState::PowerOff
            } else {
                VmPowerState::PowerOn
            },
        })
        .collect();
    Envelope::request(
        Sequence(42),
        Flags::NONE,
        vec![Command::PingRouting(PingRoutingCommand {
            host_id: HostId(1234),
            vm_states,
            gateway_accessible: true,
        })],
    )
}

/// One frame encoded and decoded per iteration.
#[divan::bench]
fn encode_decode_ping_routing_50_vms(bencher: divan::Bencher<'_, '_>) {
    let codec = FrameCodec::default();
    let env = ping_routing(50);
    let mut buf = BytesMut::with_capacity(4096);
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        codec.encode(&env, &mut buf).unwrap();
        let d = codec.decode(&mut buf).unwrap().unwrap();
        divan::black_box(d);
    });
}

/// Decode only, for reference.
#[divan::bench]
fn decode_ping_routing_50_vms(bencher: divan::Bencher<'_, '_>) {
    let codec = FrameCodec::default();
    let frame = codec.encode_to_vec(&ping_routing(50)).unwrap();
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let d = codec.decode_slice(divan::black_box(&frame)).unwrap();
        divan::black_box(d);
    });
}

/// Decode of the payload struct alone (what the per-item path costs at least).
#[divan::bench]
fn payload_only(bencher: divan::Bencher<'_, '_>) {
    let env = ping_routing(50);
    let cloudha_protocol::Body::Commands(c) = &env.body else {
        unreachable!()
    };
    let json = serde_json::to_string(&c[0]).unwrap();
    bencher.bench_local(|| {
        let d: PingRoutingCommand = serde_json::from_str(divan::black_box(&json)).unwrap();
        divan::black_box(d);
    });
}
