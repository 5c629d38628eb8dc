//! The crash test's fake orchestrator: a process of its own, never killed, that runs the VMs and
//! keeps the independent record of every start (see `cloudha_tests::crash` for the protocol).
//!
//! `crash-orchestrator --hosts N --vms M --slow-ms S --seed X` places VM `100 + i` on host
//! `1 + i % N`, Running, prints `listening ADDR`, and serves until its stdin closes (so it ends
//! with the test that started it). Each start takes a few milliseconds; one in five takes
//! `S` ms (longer than the manager's bound, so its answer comes too late, and it lands anyway).
//! A start whose key it has seen is answered from what it did, without starting again; one
//! whose key is under way waits for it. A start of a VM whose record is not stopped is refused
//! and kept as a violation.

// A program of plain threads, no async runtime to block: its starts take real time.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use cloudha_ports::{StartKey, VmRecord};
use cloudha_protocol::{HostId, VmId, VmState};
use cloudha_tests::crash::{StartEntry, parse_record, record_line};

#[derive(Default)]
struct State {
    vms: BTreeMap<VmId, VmRecord>,
    starts: Vec<StartEntry>,
    refused: Vec<String>,
    in_flight: HashSet<StartKey>,
    rng: u64,
}

struct Orchestrator {
    state: Mutex<State>,
    landed: Condvar,
    slow: Duration,
}

impl Orchestrator {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn answer(&self, request: &str) -> String {
        let mut words = request.split_whitespace();
        let verb = words.next().unwrap_or_default();
        let arg = |w: Option<&str>| w.and_then(|s| s.parse::<u64>().ok());
        match verb {
            "get" => {
                let Some(vm) = arg(words.next()) else {
                    return "err failed bad request".into();
                };
                self.lock()
                    .vms
                    .get(&VmId(vm))
                    .map_or_else(String::new, record_line)
            }
            "on" | "running" => {
                let Some(host) = arg(words.next()).map(HostId) else {
                    return "err failed bad request".into();
                };
                let s = self.lock();
                if verb == "on" {
                    s.vms
                        .values()
                        .filter(|r| r.host.or(r.last_host) == Some(host))
                        .map(record_line)
                        .collect::<Vec<_>>()
                        .join(";")
                } else {
                    s.vms
                        .values()
                        .filter(|r| r.host == Some(host) && r.state == VmState::Running)
                        .map(|r| r.id.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                }
            }
            "force_stop" => {
                let Some(vm) = arg(words.next()) else {
                    return "err failed bad request".into();
                };
                let mut s = self.lock();
                let Some(r) = s.vms.get_mut(&VmId(vm)) else {
                    return "err failed unknown VM".into();
                };
                if r.host.is_some() {
                    r.last_host = r.host;
                }
                r.host = None;
                r.state = VmState::Stopped;
                r.update_count += 1;
                record_line(r)
            }
            "start" => {
                let (Some(vm), Some(key)) = (arg(words.next()), words.next()) else {
                    return "err failed bad request".into();
                };
                let Ok(key) = key.parse::<StartKey>() else {
                    return "err failed bad key".into();
                };
                let candidates: Vec<HostId> = words
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|h| h.parse().ok().map(HostId))
                    .collect();
                self.start(VmId(vm), key, &candidates)
            }
            _ => format!("err failed unknown request {verb:?}"),
        }
    }

    fn start(&self, vm: VmId, key: StartKey, candidates: &[HostId]) -> String {
        let mut s = self.lock();
        // The same key under way: wait for it, then answer from what it did.
        while s.in_flight.contains(&key) {
            s = self.landed.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(r) = s.vms.get(&vm)
            && r.start_key == Some(key)
        {
            let answer = match (r.state, r.host) {
                (VmState::Running, Some(h)) => format!("ok {h}"),
                (state, _) => format!("err failed start {key} made already; {state:?} since"),
            };
            if let Some(h) = r.host {
                s.starts.push(StartEntry {
                    vm,
                    key,
                    host: h,
                    fresh: false,
                });
            }
            return answer;
        }
        let Some(&host) = candidates.first() else {
            return "err capacity no candidate".into();
        };
        match s.vms.get(&vm) {
            None => return "err failed unknown VM".into(),
            Some(r) if r.state != VmState::Stopped || r.host.is_some() => {
                let line = format!("vm {vm} key {key}: record {}", record_line(r));
                s.refused.push(line.clone());
                return format!("err refused {line}");
            }
            Some(_) => {}
        }
        s.in_flight.insert(key);
        s.rng ^= s.rng << 13;
        s.rng ^= s.rng >> 7;
        s.rng ^= s.rng << 17;
        let pause = if s.rng.is_multiple_of(5) {
            self.slow
        } else {
            Duration::from_millis(s.rng % 8)
        };
        drop(s);
        std::thread::sleep(pause);
        let mut s = self.lock();
        s.in_flight.remove(&key);
        let r = s.vms.get_mut(&vm).expect("checked above");
        r.last_host = r.host.or(r.last_host);
        r.host = Some(host);
        r.state = VmState::Running;
        r.update_count += 1;
        r.start_key = Some(key);
        s.starts.push(StartEntry {
            vm,
            key,
            host,
            fresh: true,
        });
        self.landed.notify_all();
        format!("ok {host}")
    }

    fn dump(&self, out: &mut impl Write) -> std::io::Result<()> {
        let s = self.lock();
        for r in s.vms.values() {
            writeln!(out, "rec {}", record_line(r))?;
        }
        for e in &s.starts {
            writeln!(
                out,
                "start {} {} {} {}",
                e.vm,
                e.key,
                e.host,
                u8::from(e.fresh)
            )?;
        }
        for r in &s.refused {
            writeln!(out, "refused {r}")?;
        }
        writeln!(out, "end")
    }
}

fn serve(o: &Orchestrator, stream: TcpStream) -> std::io::Result<()> {
    let mut line = String::new();
    BufReader::new(stream.try_clone()?).read_line(&mut line)?;
    let mut out = std::io::BufWriter::new(stream);
    if line.trim() == "dump" {
        o.dump(&mut out)?;
    } else {
        // The request is carried out whatever became of its sender; the answer may find
        // nobody.
        let answer = o.answer(line.trim());
        writeln!(out, "{answer}")?;
    }
    out.flush()
}

fn flag(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: expected a number, got {v:?}"))
        })
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let hosts = flag(&args, "--hosts", 8);
    let vms = flag(&args, "--vms", 48);
    let mut state = State {
        rng: flag(&args, "--seed", 1) | 1,
        ..State::default()
    };
    for i in 0..vms {
        let line = format!("{} Running {} - 1 -", 100 + i, 1 + i % hosts);
        let r = parse_record(&line).expect("a seeded record");
        state.vms.insert(r.id, r);
    }
    let o = Arc::new(Orchestrator {
        state: Mutex::new(state),
        landed: Condvar::new(),
        slow: Duration::from_millis(flag(&args, "--slow-ms", 300)),
    });
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("listening {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    // Ends with the test: when its stdin closes.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let o = Arc::clone(&o);
        std::thread::spawn(move || {
            let _ = serve(&o, stream);
        });
    }
    Ok(())
}
