//! Hand fakes where mockall cannot model time: a recording sink and a scriptable resource.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudha_attache::{AttacheHandle, CommandSink, LinkError, ServerResource, accept_startup};
use cloudha_protocol::*;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

/// What the sink saw.
#[derive(Debug, Clone)]
pub(crate) enum Seen {
    Commands {
        at: Instant,
        host: HostId,
        seq: Sequence,
        commands: Vec<Command>,
    },
    Connect {
        host: HostId,
        attache: AttacheHandle,
    },
    LinkLost {
        host: HostId,
        error: String,
    },
}

/// Records everything and answers pings with a PingAnswer.
pub(crate) struct FakeSink {
    pub(crate) seen: Mutex<Vec<Seen>>,
    pub(crate) events: mpsc::UnboundedSender<Seen>,
    pub(crate) interval: Duration,
    pub(crate) refuse: Option<String>,
}

impl FakeSink {
    pub(crate) fn new(interval: Duration) -> (Arc<Self>, mpsc::UnboundedReceiver<Seen>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Self {
                seen: Mutex::new(Vec::new()),
                events: tx,
                interval,
                refuse: None,
            }),
            rx,
        )
    }

    fn record(&self, s: Seen) {
        self.seen.lock().unwrap().push(s.clone());
        let _ = self.events.send(s);
    }

    /// Times of pings seen from `host`.
    pub(crate) fn ping_times(&self, host: HostId) -> Vec<Instant> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| match s {
                Seen::Commands {
                    at,
                    host: h,
                    commands,
                    ..
                } if *h == host && commands.iter().any(Command::is_ping) => Some(*at),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn ping_seqs(&self, host: HostId) -> Vec<u64> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| match s {
                Seen::Commands { host: h, seq, .. } if *h == host => Some(seq.0),
                _ => None,
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl CommandSink for FakeSink {
    fn on_commands(&self, host: HostId, seq: Sequence, commands: &[Command]) -> Vec<Answer> {
        self.record(Seen::Commands {
            at: Instant::now(),
            host,
            seq,
            commands: commands.to_vec(),
        });
        commands
            .iter()
            .map(|c| {
                if c.is_ping() {
                    Answer::Ping(PingAnswer::default())
                } else {
                    Answer::ok()
                }
            })
            .collect()
    }

    async fn on_connect(&self, attache: AttacheHandle, startup: StartupCommand) -> StartupAnswer {
        self.record(Seen::Connect {
            host: startup.host_id,
            attache,
        });
        let mut answer = accept_startup(&startup, self.interval);
        if let Some(why) = &self.refuse {
            answer.success = false;
            answer.details = why.clone();
        }
        answer
    }

    fn on_link_lost(&self, host: HostId, _generation: u64, error: &LinkError) {
        self.record(Seen::LinkLost {
            host,
            error: error.to_string(),
        });
    }
}

/// A resource whose answers are scripted: a queue of status results (then `default_status`),
/// an optional hang, and counters.
pub(crate) struct FakeResource {
    pub(crate) host: HostId,
    pub(crate) statuses: Mutex<VecDeque<Option<()>>>,
    pub(crate) default_status: bool,
    pub(crate) hang_status: bool,
    pub(crate) execute_delay: Duration,
    pub(crate) calls: Mutex<Vec<Instant>>,
    pub(crate) in_flight: Mutex<(usize, usize)>, // (now, max)
    pub(crate) executed: Mutex<Vec<(Instant, Command)>>,
    pub(crate) disconnected: Mutex<usize>,
    pub(crate) release: Notify,
}

impl FakeResource {
    pub(crate) fn new(host: HostId) -> Self {
        Self {
            host,
            statuses: Mutex::new(VecDeque::new()),
            default_status: true,
            hang_status: false,
            execute_delay: Duration::ZERO,
            calls: Mutex::new(Vec::new()),
            in_flight: Mutex::new((0, 0)),
            executed: Mutex::new(Vec::new()),
            disconnected: Mutex::new(0),
            release: Notify::new(),
        }
    }
}

#[async_trait::async_trait]
impl ServerResource for FakeResource {
    async fn initialize(&self) -> Vec<Command> {
        vec![Command::Startup(StartupCommand {
            host_id: self.host,
            name: format!("h{}", self.host),
            host_type: Some(HostType::Routing),
            hypervisor: Some(HypervisorType::Kvm),
            ..Default::default()
        })]
    }

    async fn get_current_status(&self, host: HostId) -> Option<Command> {
        self.calls.lock().unwrap().push(Instant::now());
        struct InFlight<'a>(&'a Mutex<(usize, usize)>);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.lock().unwrap().0 -= 1;
            }
        }
        {
            let mut f = self.in_flight.lock().unwrap();
            f.0 += 1;
            f.1 = f.1.max(f.0);
        }
        let _guard = InFlight(&self.in_flight);
        if self.hang_status {
            self.release.notified().await;
        }
        let next = self.statuses.lock().unwrap().pop_front();
        let ok = match next {
            Some(s) => s.is_some(),
            None => self.default_status,
        };
        ok.then(|| {
            Command::PingRouting(PingRoutingCommand {
                host_id: host,
                vm_states: vec![VmStateReport {
                    vm: VmId(1),
                    power: VmPowerState::PowerOn,
                }],
                gateway_accessible: true,
            })
        })
    }

    async fn execute(&self, command: Command) -> Answer {
        self.executed
            .lock()
            .unwrap()
            .push((Instant::now(), command.clone()));
        tokio::time::sleep(self.execute_delay).await;
        match command {
            Command::CheckVirtualMachine(_) => {
                Answer::CheckVirtualMachine(CheckVirtualMachineAnswer {
                    success: true,
                    power: VmPowerState::PowerOn,
                    details: String::new(),
                })
            }
            Command::StopVm(_) => Answer::failure("cannot stop"),
            _ => Answer::ok(),
        }
    }

    fn disconnected(&self) {
        *self.disconnected.lock().unwrap() += 1;
    }
}

pub(crate) fn startup_answer(host: HostId, interval: Duration) -> StartupAnswer {
    StartupAnswer {
        success: true,
        host_id: host,
        ping_interval_ms: interval.as_millis() as u64,
        details: String::new(),
    }
}
