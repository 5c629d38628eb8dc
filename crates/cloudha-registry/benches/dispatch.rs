//! One ping dispatched to 8 no-op command listeners (goal: ≥ 5M listener calls/s per core, no
//! heap allocation per dispatch; divan's allocation profiler shows the count per dispatch).

use std::sync::Arc;

use cloudha_protocol::{Command, HostId, PingCommand, Sequence};
use cloudha_registry::{Interest, Listener, ListenerRegistry, Registry};
use divan::counter::ItemsCount;

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

fn main() {
    divan::main();
}

struct Noop;
impl Listener for Noop {
    fn process_commands(&self, _: HostId, _: Sequence, commands: &[Command]) -> bool {
        divan::black_box(commands);
        false
    }
}

/// Items are listener calls: 8 per dispatch.
#[divan::bench]
fn ping_to_8_listeners(bencher: divan::Bencher<'_, '_>) {
    let registry = Registry::default();
    for i in 0..8 {
        registry.register(Arc::new(Noop), Interest::COMMANDS, i % 3 == 0);
    }
    let ping = [Command::Ping(PingCommand { host_id: HostId(1) })];
    bencher.counter(ItemsCount::new(8usize)).bench_local(|| {
        registry.dispatch_commands(
            divan::black_box(HostId(1)),
            Sequence(0),
            divan::black_box(&ping),
        );
    });
}
