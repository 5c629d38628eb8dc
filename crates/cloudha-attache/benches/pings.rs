//! Direct-attache ping throughput and idle memory.
//!
//! - pings per second from 100k direct attaches on one current-thread runtime into a no-op sink,
//!   with the interval forced down to 100 ms (2x more demand than the goal, so the figure is the
//!   runtime's capacity). Goal: ≥ 500k pings/s per core.
//! - heap bytes per idle direct attache (spawned, startup answered, ping task parked on its
//!   timer). Goal: ≤ 2 KiB.
//!
//! Prints `metric:` lines that `cargo xtask bench` collects. Full size with `CLOUDHA_BENCH_FULL=1`
//! (what `cargo xtask bench` sets); otherwise a small smoke run.
#![allow(unsafe_code, clippy::disallowed_types, clippy::disallowed_methods)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cloudha_attache::{
    Attache, AttacheHandle, CommandSink, DirectAttache, DirectConfig, LinkError, ServerResource,
    Tasks,
};
use cloudha_protocol::*;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

struct Host;
#[async_trait::async_trait]
impl ServerResource for Host {
    async fn initialize(&self) -> Vec<Command> {
        Vec::new()
    }
    async fn get_current_status(&self, host: HostId) -> Option<Command> {
        Some(Command::Ping(PingCommand { host_id: host }))
    }
    async fn execute(&self, _: Command) -> Answer {
        Answer::ok()
    }
    fn disconnected(&self) {}
}

struct NoopSink(AtomicU64);
#[async_trait::async_trait]
impl CommandSink for NoopSink {
    fn on_commands(&self, _: HostId, _: Sequence, _: &[Command]) -> Vec<Answer> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Vec::new()
    }
    async fn on_connect(&self, _: AttacheHandle, s: StartupCommand) -> StartupAnswer {
        cloudha_attache::accept_startup(&s, Duration::from_secs(60))
    }
    fn on_link_lost(&self, _: HostId, _: u64, _: &LinkError) {}
}

fn spawn_fleet(
    n: u64,
    interval: Duration,
    sink: &Arc<NoopSink>,
    tasks: &Tasks,
) -> Vec<AttacheHandle> {
    let resource: Arc<dyn ServerResource> = Arc::new(Host);
    let sink: Arc<dyn CommandSink> = sink.clone();
    (0..n)
        .map(|i| {
            let a = DirectAttache::spawn(
                HostId(i),
                Arc::clone(&resource),
                Arc::clone(&sink),
                DirectConfig::default(),
                tasks,
            );
            a.on_startup_answer(&StartupAnswer {
                success: true,
                host_id: HostId(i),
                ping_interval_ms: interval.as_millis() as u64,
                details: String::new(),
            });
            a
        })
        .collect()
}

fn main() {
    let full = std::env::var_os("CLOUDHA_BENCH_FULL").is_some();
    let n: u64 = if full { 100_000 } else { 2_000 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        // Memory per idle attache: a long interval, so every ping task parks on its timer.
        let sink = Arc::new(NoopSink(AtomicU64::new(0)));
        let tasks = Tasks::new();
        let before = LIVE.load(Ordering::Relaxed);
        let fleet = spawn_fleet(n, Duration::from_secs(3600), &sink, &tasks);
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        let per = (LIVE.load(Ordering::Relaxed) - before) as f64 / n as f64;
        println!("metric: attache::idle_direct_attache_heap {per:.0} bytes (n={n})");
        for a in &fleet {
            a.disconnect();
        }
        tasks.shutdown().await;
        drop(fleet);

        // Throughput: 100 ms interval, measured over a few seconds after a warm-up.
        let sink = Arc::new(NoopSink(AtomicU64::new(0)));
        let tasks = Tasks::new();
        let fleet = spawn_fleet(n, Duration::from_millis(100), &sink, &tasks);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let start_count = sink.0.load(Ordering::Relaxed);
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(if full { 5 } else { 1 })).await;
        let pings = sink.0.load(Ordering::Relaxed) - start_count;
        let rate = pings as f64 / start.elapsed().as_secs_f64();
        println!("metric: attache::direct_pings_per_second {rate:.0} pings/s (n={n}, interval=100ms, demand={}/s)", n * 10);
        for a in &fleet {
            a.disconnect();
        }
        tasks.shutdown().await;
    });
}
