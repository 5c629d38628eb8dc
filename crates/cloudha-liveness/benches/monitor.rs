//! Ping ingestion and monitor cost.
//!
//! - pings per second from the sink on (sink → registry → behind-on-ping monitor, no timers)
//!   with 100k tracked hosts. Goal: ≥ 1M pings/s per core.
//! - monitor cost per second of virtual time with no host behind, at 10k, 100k and 1M tracked
//!   hosts (one resolution tick per virtual second). Goal: flat across fleet sizes.
//!
//! Prints `metric:` lines that `cargo xtask bench` collects. Full size with `CLOUDHA_BENCH_FULL=1`.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use cloudha_liveness::internals::PingMonitor;
use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use cloudha_registry::Registry;
use tokio::time::Instant;

fn main() {
    let full = std::env::var_os("CLOUDHA_BENCH_FULL").is_some();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        ingestion(
            if full { 100_000 } else { 2_000 },
            if full { 20 } else { 2 },
        )
        .await;
        let sizes: &[u64] = if full {
            &[10_000, 100_000, 1_000_000]
        } else {
            &[1_000, 10_000]
        };
        for &n in sizes {
            monitor_cost(n);
        }
    });
}

async fn ingestion(hosts: u64, rounds: u64) {
    let store = Arc::new(InMemoryHostStore::new());
    let registry = Arc::new(Registry::default());
    let manager = AgentManager::new(
        LivenessConfig::default(),
        Ports::new(
            store.clone(),
            registry,
            Arc::new(LogAlerts),
            Arc::new(SystemClock),
        )
        .with_investigators(Vec::new()),
    )
    .unwrap();
    for id in 0..hosts {
        let mut r = HostRecord::new(HostId(id), format!("h{id}"), HypervisorType::XenServer);
        r.status = Some(Status::Up);
        store.insert(r);
    }
    // Start loads the records and tracks every host (a ping deadline of now + T); a ping
    // brings each back Up from ManagementServerDown's Disconnected.
    manager.start().await.unwrap();
    for id in 0..hosts {
        manager
            .apply(HostId(id), Event::Ping, "bench")
            .await
            .unwrap();
    }
    assert_eq!(manager.tracked() as u64, hosts);
    let sink = manager.sink();
    let pings: Vec<[Command; 1]> = (0..hosts)
        .map(|id| {
            [Command::Ping(PingCommand {
                host_id: HostId(id),
            })]
        })
        .collect();
    let start = StdInstant::now();
    for round in 0..rounds {
        for (id, ping) in pings.iter().enumerate() {
            let answers = sink.on_commands(HostId(id as u64), Sequence(round), ping);
            std::hint::black_box(answers);
        }
    }
    let rate = (hosts * rounds) as f64 / start.elapsed().as_secs_f64();
    println!(
        "metric: manager::ping_ingestion {rate:.0} pings/s (hosts={hosts}, sink->registry->monitor)"
    );
}

fn monitor_cost(hosts: u64) {
    let monitor = PingMonitor::new(Duration::from_secs(1), Duration::from_secs(150));
    let t0 = Instant::now();
    // Steady state: the monitor ticks every second while the hosts' pings arrive spread over
    // one interval, so every slot ahead holds hosts (none of them due).
    for s in 0..60u64 {
        let now = t0 + Duration::from_secs(s);
        assert!(monitor.behind(now).is_empty());
        for id in (s..hosts).step_by(60) {
            monitor.arm(HostId(id), now);
        }
    }
    assert_eq!(monitor.tracked() as u64, hosts);
    let seconds = 60u64;
    let start = StdInstant::now();
    for s in 0..seconds {
        let behind = monitor.behind(t0 + Duration::from_secs(60 + s));
        assert!(behind.is_empty());
    }
    let per_second = start.elapsed().as_nanos() as f64 / seconds as f64;
    println!(
        "metric: manager::monitor_cost_{hosts}_hosts {per_second:.0} ns_per_virtual_s (no host behind)"
    );
}
