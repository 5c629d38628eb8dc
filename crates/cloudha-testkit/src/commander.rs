//! A scripted [`HostCommander`]: what each host answers to each probe (a neighbour's heartbeat
//! check, a ping test, a fence command).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use cloudha_attache::RequestError;
use cloudha_ports::{CommandError, HostCommander};
use cloudha_protocol::*;
use tokio::time::{Instant, sleep};

/// What a scripted host answers to one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Says {
    /// A heartbeat check (CheckOnHost, or a FenceCommand): alive or dead, with the age it read.
    Beat {
        /// The heartbeat is alive.
        alive: bool,
        /// How old the last good heartbeat write was when read, if the check says.
        age: Option<Duration>,
    },
    /// A ping test: reached the target or not.
    Reach(bool),
    /// Answered, unsuccessfully (it could not check).
    Fails,
    /// No attache: fails at once (CloudStack's AgentUnavailableException).
    Unavailable,
    /// No answer: the probe's wait runs out (CloudStack's OperationTimedoutException).
    Hangs,
}

/// A neighbour's heartbeat check: alive.
pub const ALIVE: Says = Says::Beat {
    alive: true,
    age: None,
};
/// A neighbour's heartbeat check: dead, no age given.
pub const DEAD: Says = Says::Beat {
    alive: false,
    age: None,
};

/// Dead, read `secs` after the last good write.
pub const fn dead_for(secs: u64) -> Says {
    Says::Beat {
        alive: false,
        age: Some(Duration::from_secs(secs)),
    }
}

/// The kind of a probe command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Probe {
    /// `CheckOnHost`: a neighbour's heartbeat check.
    CheckOnHost,
    /// `PingTest`: a neighbour pings the target.
    PingTest,
    /// `FenceCommand`: a neighbour fences the target.
    Fence,
    /// Any other command.
    Other,
}

impl Probe {
    /// The kind of `command`.
    pub fn of(command: &Command) -> Self {
        match command {
            Command::CheckOnHost(_) => Self::CheckOnHost,
            Command::PingTest(_) => Self::PingTest,
            Command::Fence(_) => Self::Fence,
            _ => Self::Other,
        }
    }

    /// The host a probe is about.
    fn target(command: &Command) -> Option<HostId> {
        match command {
            Command::CheckOnHost(c) => Some(c.target),
            Command::PingTest(c) => Some(c.target),
            Command::Fence(c) => Some(c.target),
            _ => None,
        }
    }
}

/// A script's key: who answers, which probe, about which host (`None`: any).
type Key = (HostId, Probe, Option<HostId>);

/// A `HostCommander` whose hosts answer from a script: per (host, probe, target) a list of
/// answers, the last one repeating; a script for no target in particular answers for any.
/// Unscripted probes find no attache. Records every command sent.
#[derive(Debug, Default)]
pub struct FakeCommander {
    script: Mutex<HashMap<Key, VecDeque<Says>>>,
    /// Every command sent, in order: (when, via which host, the command).
    pub sent: Mutex<Vec<(Instant, HostId, Command)>>,
}

impl FakeCommander {
    /// A commander with no script yet: every probe finds no attache.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on `via` answers `probe` about any host with `says` in turn (the last repeats).
    pub fn on(&self, via: u64, probe: Probe, says: &[Says]) {
        self.script
            .lock()
            .unwrap()
            .insert((HostId(via), probe, None), says.iter().copied().collect());
    }

    /// From now on `via` answers `probe` about `target` with `says` in turn.
    pub fn on_to(&self, via: u64, probe: Probe, target: HostId, says: &[Says]) {
        self.script.lock().unwrap().insert(
            (HostId(via), probe, Some(target)),
            says.iter().copied().collect(),
        );
    }

    /// The commands of one kind sent, as (via, when).
    pub fn sent(&self, probe: Probe) -> Vec<(HostId, Instant)> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, c)| Probe::of(c) == probe)
            .map(|(at, via, _)| (*via, *at))
            .collect()
    }

    fn next(&self, via: HostId, probe: Probe, target: Option<HostId>) -> Says {
        let mut script = self.script.lock().unwrap();
        let key = if script.contains_key(&(via, probe, target)) {
            (via, probe, target)
        } else {
            (via, probe, None)
        };
        match script.get_mut(&key) {
            Some(q) if q.len() > 1 => q.pop_front().unwrap(),
            Some(q) => q.front().copied().unwrap_or(Says::Unavailable),
            None => Says::Unavailable,
        }
    }
}

#[async_trait::async_trait]
impl HostCommander for FakeCommander {
    async fn send(
        &self,
        host: HostId,
        command: Command,
        wait: Duration,
    ) -> Result<Answer, CommandError> {
        let probe = Probe::of(&command);
        let target = Probe::target(&command);
        self.sent
            .lock()
            .unwrap()
            .push((Instant::now(), host, command));
        let says = self.next(host, probe, target);
        let details = format!("{says:?}");
        Ok(match (probe, says) {
            (_, Says::Unavailable) => return Err(CommandError::NoAttache(host)),
            (_, Says::Hangs) => {
                sleep(wait).await;
                return Err(CommandError::Request(RequestError::Timeout {
                    host,
                    seq: Sequence(0),
                    wait,
                }));
            }
            (Probe::CheckOnHost, Says::Beat { alive, age }) => {
                Answer::CheckOnHost(CheckOnHostAnswer {
                    success: true,
                    alive,
                    heartbeat_age_ms: age.map(|a| a.as_millis() as u64),
                    details,
                })
            }
            (Probe::CheckOnHost, _) => Answer::CheckOnHost(CheckOnHostAnswer {
                success: false,
                alive: false,
                heartbeat_age_ms: None,
                details,
            }),
            (Probe::Fence, Says::Beat { alive, age }) => Answer::Fence(FenceAnswer {
                success: !alive,
                alive,
                heartbeat_age_ms: age.map(|a| a.as_millis() as u64),
                details,
            }),
            (Probe::Fence, _) => Answer::Fence(FenceAnswer {
                success: false,
                alive: false,
                heartbeat_age_ms: None,
                details,
            }),
            (_, Says::Reach(reached)) => Answer::Generic(GenericAnswer {
                success: reached,
                details,
            }),
            (_, _) => Answer::failure(details),
        })
    }
}
