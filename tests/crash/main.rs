//! Crash safety: the HA manager over SQLite in a child process (`crash-manager`), killed with
//! SIGKILL at random points and restarted over the same file, while a fake orchestrator in a
//! process of its own (`crash-orchestrator`) runs the VMs and records every start. Hosts fail
//! one after another (a generation each); in each, the manager is killed
//! `CLOUDHA_CRASH_KILLS / generations` times (100 kills in all by default; `cargo xtask soak`
//! asks for 1,000), then left to finish. After each generation: no work item lost (every VM of
//! the failed host has a Done item and runs elsewhere), none finished twice (one final entry
//! per item), no VM started twice (one fresh start per VM of the failed host, none for the
//! others, and no start of a VM whose record was not stopped).
//!
//! Real processes and real time on loopback: bounded by deadlines, every child ended by its pid
//! (the manager by SIGKILL, the orchestrator when its stdin closes), the SQLite files removed.
//! `CLOUDHA_CRASH_SEED` replays a run (its seed is printed).

// Real processes in real time: the kill points are real delays, and the wait for a generation to
// settle polls under a deadline.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloudha_ports::HaWorkStore;
use cloudha_protocol::{HostId, VmId, VmState, WorkStep};
use cloudha_store::SqlStore;
use cloudha_tests::crash::{Dump, RemoteVms};

const HOSTS: u64 = 8;
const VMS: u64 = 96;
const GENERATIONS: u64 = 5;
/// How long a manager may take to finish a generation's work once left alone.
const SETTLE: Duration = Duration::from_secs(60);

/// A child process, ended by its pid when dropped (the test's own children only).
struct Proc(Child);

impl Proc {
    fn kill(&mut self) {
        // SIGKILL by pid: the child is ours, and has not been waited for yet.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The SQLite file and its WAL companions, removed whatever the outcome.
struct TempDb(PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A small deterministic generator (xorshift), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}: expected a number, got {v:?}"))
    })
}

fn orchestrator(seed: u64) -> (Proc, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash-orchestrator"))
        .args(["--hosts", &HOSTS.to_string(), "--vms", &VMS.to_string()])
        .args(["--slow-ms", "300", "--seed", &seed.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the fake orchestrator starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("orchestrator said {line:?}"))
        .parse()
        .unwrap();
    (Proc(child), addr)
}

fn manager(url: &str, addr: SocketAddr, fail: u64) -> Proc {
    let log = std::env::var("CLOUDHA_CRASH_LOG").is_ok();
    Proc(
        Command::new(env!("CARGO_BIN_EXE_crash-manager"))
            .args(["--store", url, "--orchestrator", &addr.to_string()])
            .args(["--hosts", &HOSTS.to_string(), "--fail", &fail.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("the manager starts"),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every item in the store.
fn items(rt: &tokio::runtime::Runtime, url: &str) -> Vec<cloudha_ports::WorkItem> {
    rt.block_on(async {
        let store = SqlStore::open(url).await.expect("the store opens");
        let items = HaWorkStore::list(&store).await.expect("list");
        store.close().await;
        items
    })
}

/// Not-final items in the store (the manager may be running: SQLite in WAL mode lets this
/// process read beside it).
fn pending(rt: &tokio::runtime::Runtime, url: &str) -> usize {
    rt.block_on(async {
        let store = SqlStore::open(url).await.expect("the store opens");
        let n = store.pending().await.expect("pending");
        store.close().await;
        n
    })
}

fn settled(dump: &Dump, victims: &BTreeSet<VmId>, failed: &BTreeSet<u64>) -> bool {
    dump.vms
        .iter()
        .filter(|r| victims.contains(&r.id))
        .all(|r| r.state == VmState::Running && r.host.is_some_and(|h| !failed.contains(&h.0)))
}

#[test]
fn no_work_lost_and_no_vm_started_twice_under_sigkill() {
    let kills = env_u64("CLOUDHA_CRASH_KILLS").unwrap_or(100);
    let seed = env_u64("CLOUDHA_CRASH_SEED").unwrap_or_else(|| {
        u64::from(std::process::id())
            ^ (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64)
    });
    eprintln!("crash test: {kills} kills, CLOUDHA_CRASH_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let db = TempDb(
        std::env::temp_dir().join(format!("cloudha-crash-{}-{seed}.db", std::process::id())),
    );
    let url = format!("sqlite:{}", db.0.display());
    let (_orch, addr) = orchestrator(seed);
    let client = RemoteVms::new(addr);
    let rt = runtime();
    let per_generation = kills.div_ceil(GENERATIONS);
    let mut failed = BTreeSet::new();
    let mut killed = 0;
    for g in 1..=GENERATIONS {
        let before = client.dump().expect("dump");
        let victims: BTreeSet<VmId> = before
            .vms
            .iter()
            .filter(|r| r.host == Some(HostId(g)))
            .map(|r| r.id)
            .collect();
        assert!(!victims.is_empty(), "generation {g}: host {g} runs VMs");
        failed.insert(g);
        for _ in 0..per_generation {
            let mut m = manager(&url, addr, g);
            std::thread::sleep(Duration::from_millis(rng.below(250)));
            m.kill();
            killed += 1;
        }
        // Left alone, it finishes the generation's work.
        let mut m = manager(&url, addr, g);
        let deadline = Instant::now() + SETTLE;
        let dump = loop {
            let dump = client.dump().expect("dump");
            if settled(&dump, &victims, &failed) && pending(&rt, &url) == 0 {
                break dump;
            }
            if Instant::now() >= deadline {
                let stuck: BTreeSet<VmId> = dump
                    .vms
                    .iter()
                    .filter(|r| victims.contains(&r.id) && r.state != VmState::Running)
                    .map(|r| r.id)
                    .collect();
                let open: Vec<_> = items(&rt, &url)
                    .into_iter()
                    .filter(|i| !i.step.is_final() || stuck.contains(&i.vm))
                    .map(|i| {
                        (
                            i.id,
                            i.vm,
                            i.step,
                            i.history.into_iter().map(|e| e.what).collect::<Vec<_>>(),
                        )
                    })
                    .collect();
                panic!(
                    "generation {g} (CLOUDHA_CRASH_SEED={seed}): not settled within {SETTLE:?}\n\
                     VMs of the failed host: {:#?}\nitems not final, or of VMs not running: {open:#?}\nrefused: {:?}",
                    dump.vms
                        .iter()
                        .filter(|r| victims.contains(&r.id))
                        .map(cloudha_tests::crash::record_line)
                        .collect::<Vec<_>>(),
                    dump.refused
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        m.kill();
        check_generation(&rt, &url, g, seed, &before, &dump, &victims);
    }
    assert_eq!(killed, per_generation * GENERATIONS);
    assert!(killed >= kills);
    // What the kills exercised (for the log: a run that never met an unknown outcome proves
    // less).
    let dump = client.dump().expect("dump");
    let notes: Vec<String> = items(&rt, &url)
        .into_iter()
        .flat_map(|i| i.history.into_iter().map(|e| e.what))
        .collect();
    let count = |what: &str| notes.iter().filter(|n| n.contains(what)).count();
    eprintln!(
        "crash test: {killed} kills; {} starts ({} answered from a key seen before); \
         {} outcomes unknown, {} settled from the record, {} resumed on a standing proof, \
         {} manager starts moved items back",
        dump.starts.len(),
        dump.starts.iter().filter(|s| !s.fresh).count(),
        count("outcome unknown"),
        count("happened"),
        count("standing proof"),
        count("manager start:")
    );
}

fn check_generation(
    rt: &tokio::runtime::Runtime,
    url: &str,
    g: u64,
    seed: u64,
    before: &Dump,
    after: &Dump,
    victims: &BTreeSet<VmId>,
) {
    let at = format!("generation {g} (CLOUDHA_CRASH_SEED={seed})");
    assert!(
        after.refused.is_empty(),
        "{at}: a start of a VM whose record was not stopped: {:?}",
        after.refused
    );
    let mut fresh: BTreeMap<VmId, usize> = BTreeMap::new();
    for s in &after.starts[before.starts.len()..] {
        if s.fresh {
            *fresh.entry(s.vm).or_default() += 1;
        }
    }
    for vm in victims {
        assert_eq!(
            fresh.get(vm).copied(),
            Some(1),
            "{at}: VM {vm} of the failed host started exactly once"
        );
    }
    let strays: Vec<_> = fresh.keys().filter(|v| !victims.contains(v)).collect();
    assert!(
        strays.is_empty(),
        "{at}: VMs started that did not fail: {strays:?}"
    );

    let items = items(rt, url);
    for item in &items {
        assert!(
            item.step.is_final(),
            "{at}: item {} not final: {item:?}",
            item.id
        );
        let finals = item
            .history
            .iter()
            .filter(|e| {
                e.what.starts_with("done:")
                    || e.what.starts_with("cancelled:")
                    || e.what.starts_with("giving up")
            })
            .count();
        assert_eq!(
            finals, 1,
            "{at}: item {} finished once: {:?}",
            item.id, item.history
        );
    }
    for vm in victims {
        let done: Vec<_> = items
            .iter()
            .filter(|i| i.vm == *vm && i.host == Some(HostId(g)))
            .collect();
        assert!(
            done.iter().any(|i| i.step == WorkStep::Done),
            "{at}: VM {vm}: no Done item for host {g}: {done:?}"
        );
    }
}
