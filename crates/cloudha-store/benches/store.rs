//! Store throughput (`cargo xtask bench`; small sizes unless `CLOUDHA_BENCH_FULL=1`):
//! - claim → update → done cycles per second with 4 concurrent workers, on SQLite and on
//!   PostgreSQL, with durable commits (the server's `synchronous_commit` as configured);
//! - `pgbench -N` (simple updates) against the same server, 4 clients, for comparison (a cycle
//!   is about three transactions);
//! - status updates of 10,000 hosts flapping at once (each a compare-and-set with its history
//!   row; the store writes waiting ones together, up to 500 per transaction), written by one
//!   task per host as the agent manager does, and by 16 tasks each writing its share in turn.
//!
//! PostgreSQL comes from `CLOUDHA_TEST_POSTGRES` (default the local server); the bench works in
//! schemas of its own and drops them. When no server answers, the PostgreSQL rows say so.

// Wall-clock time on purpose: a benchmark measures real time.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use cloudha_ports::{HaWorkStore, HostRecord, HostStore, OwnerId, Timestamp, VmRecord, WorkItem};
use cloudha_protocol::{
    Event, HostId, HypervisorType, Status, VmId, VmState, WorkReason, WorkStep, WorkType,
};
use cloudha_store::SqlStore;
use sqlx::Executor;

const WORKERS: u64 = 4;

fn full() -> bool {
    std::env::var("CLOUDHA_BENCH_FULL").is_ok_and(|v| v == "1")
}

fn postgres_url() -> String {
    std::env::var("CLOUDHA_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn now() -> Timestamp {
    Timestamp::from_micros(1_764_000_000_000_000)
}

async fn cycles(store: &SqlStore, items: u64) -> f64 {
    for n in 0..items {
        let mut vm = VmRecord::new(VmId(n), format!("vm{n}"), HypervisorType::Kvm);
        vm.state = VmState::Running;
        let item = WorkItem::new(
            WorkType::Ha,
            WorkStep::Investigating,
            WorkReason::HostDown,
            &vm,
            Some(HostId(1)),
            now(),
        );
        store.insert(item).await.expect("insert");
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 1..=WORKERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let owner = OwnerId(w);
            let mut done = 0u64;
            while let Some(mut item) = store.take(owner, now()).await.expect("take") {
                item.step = WorkStep::Restarting;
                item.note(now(), "starting");
                item.version = store.update(owner, &item).await.expect("update");
                item.step = WorkStep::Done;
                item.owner = None;
                item.note(now(), "done");
                store.update(owner, &item).await.expect("done");
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("worker");
    }
    assert_eq!(total, items, "every item cycled once");
    total as f64 / start.elapsed().as_secs_f64()
}

/// `hosts` hosts go from Up to Disconnected at once, written by `writers` tasks (the agent
/// manager runs one per host; fewer writers, each writing its share in turn, is a harder case
/// for the store's batching).
async fn flapping(store: &SqlStore, first: u64, hosts: u64, writers: u64) -> Duration {
    let ids = first..first + hosts;
    for n in ids.clone() {
        let mut h = HostRecord::new(HostId(n), format!("kvm-{n}"), HypervisorType::Kvm);
        h.status = Some(Status::Up);
        store.upsert(&h).await.expect("upsert");
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for chunk in ids
        .collect::<Vec<_>>()
        .chunks(hosts.div_ceil(writers) as usize)
    {
        let store = store.clone();
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for n in chunk {
                store
                    .update_status(
                        HostId(n),
                        Some(Status::Up),
                        0,
                        Status::Disconnected,
                        Event::AgentDisconnected,
                        now(),
                    )
                    .await
                    .expect("status");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    start.elapsed()
}

async fn run(name: &str, url: String, items: u64, hosts: u64) {
    let store = SqlStore::open(&url).await.expect("open");
    let rate = cycles(&store, items).await;
    println!(
        "metric: store::{name}_cycles {rate:.0} cycles/s (claim -> update -> done, {WORKERS} workers, {items} items)"
    );
    let took = flapping(&store, 1, hosts, hosts).await;
    println!(
        "metric: store::{name}_flapping_{hosts}_hosts {:.0} ms (status CAS + history, one task per host, as the agent manager)",
        took.as_secs_f64() * 1e3
    );
    // Other hosts, the same store.
    let took = flapping(&store, hosts + 1, hosts, 16).await;
    println!(
        "metric: store::{name}_flapping_{hosts}_hosts_16_writers {:.0} ms (status CAS + history, 16 writers, each its share in turn)",
        took.as_secs_f64() * 1e3
    );
    store.close().await;
}

fn pgbench(url: &str, schema: &str, seconds: u64) -> Option<f64> {
    let env = [("PGOPTIONS", format!("-c search_path={schema}"))];
    let init = std::process::Command::new("pgbench")
        .args(["-i", "-q", "-s", "1", url])
        .envs(env.clone())
        .output()
        .ok()?;
    if !init.status.success() {
        eprintln!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        return None;
    }
    let out = std::process::Command::new("pgbench")
        .args(["-N", "-c", "4", "-j", "2", "-T", &seconds.to_string(), url])
        .envs(env)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn main() {
    let (items, hosts, seconds) = if full() {
        (20_000, 10_000, 10)
    } else {
        (300, 300, 1)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let path = std::env::temp_dir().join(format!("cloudha-bench-{}.db", std::process::id()));
        run("sqlite", format!("sqlite:{}", path.display()), items, hosts).await;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }

        let url = postgres_url();
        sqlx::any::install_default_drivers();
        let Ok(admin) = sqlx::AnyPool::connect(&url).await else {
            println!("metric: store::postgres_cycles skipped - (nothing answers at {url})");
            return;
        };
        let schema = format!("cloudha_bench_{}", std::process::id());
        let pgb = format!("{schema}_pgbench");
        for s in [&schema, &pgb] {
            admin
                .execute(format!("DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}").as_str())
                .await
                .expect("schema");
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        run(
            "postgres",
            format!("{url}{sep}options=-c%20search_path%3D{schema}"),
            items,
            hosts,
        )
        .await;
        match pgbench(&url, &pgb, seconds) {
            Some(tps) => println!(
                "metric: store::pgbench_simple_update {tps:.0} tps (pgbench -N, 4 clients, same server)"
            ),
            None => println!("metric: store::pgbench_simple_update skipped - (pgbench not found or failed)"),
        }
        for s in [&schema, &pgb] {
            admin
                .execute(format!("DROP SCHEMA IF EXISTS {s} CASCADE").as_str())
                .await
                .expect("drop");
        }
        admin.close().await;
    });
}
