//! The command path allocates nothing: a thread-local counting allocator around dispatches.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use cloudha_protocol::{Command, HostId, PingRoutingCommand, Sequence};
use cloudha_registry::{Interest, Listener, ListenerRegistry, Registry};

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: forwards to the system allocator; only counts, in a const-initialised thread local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

struct Noop;
impl Listener for Noop {
    fn process_commands(&self, _: HostId, _: Sequence, commands: &[Command]) -> bool {
        !commands.is_empty()
    }
}

#[test]
fn dispatching_a_ping_allocates_nothing() {
    let registry = Registry::default();
    for i in 0..8 {
        registry.register(Arc::new(Noop), Interest::ALL, i % 2 == 0);
    }
    let ping = [Command::PingRouting(PingRoutingCommand {
        host_id: HostId(1),
        ..Default::default()
    })];
    registry.dispatch_commands(HostId(1), Sequence(0), &ping); // warm-up
    let before = ALLOCS.with(Cell::get);
    for seq in 0..1000 {
        registry.dispatch_commands(HostId(1), Sequence(seq), &ping);
    }
    assert_eq!(
        ALLOCS.with(Cell::get) - before,
        0,
        "allocations on the command path"
    );
    // The counter does count: registering allocates.
    registry.register(Arc::new(Noop), Interest::COMMANDS, false);
    assert!(ALLOCS.with(Cell::get) > before);
}
