//! The behind-on-ping monitor (CloudStack's `BehindOnPingListener` + `MonitorTask`), deadline
//! driven: O(1) work per ping, no periodic scan of all hosts.
//!
//! A coarse timing wheel with one slot per `ping.monitor.resolution` over the ping deadline T
//! holds every tracked host in the slot of its deadline (last ping + T, rounded up). A ping moves
//! the host to its new slot (unlink + link, O(1)). Each resolution tick drains only the slots
//! that came due: with no host behind they are empty, so the monitor's cost does not grow with
//! the fleet. A drained host is flagged and leaves the wheel until it is re-armed (after an
//! inconclusive investigation) or connects again.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cloudha_protocol::{Command, HostId, Sequence, StartupCommand, Status};
use cloudha_registry::{ConnectError, Listener};
use tokio::time::Instant;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    host: HostId,
    /// Tick (multiple of the resolution since the epoch) at which the host is behind.
    due: u64,
    last_ping: Instant,
    /// Pinged since the last [`Wheel::take_pinged`] (its last ping is not yet stored).
    pinged: bool,
    prev: u32,
    next: u32,
    slot: u32,
}

/// The timing wheel: pure data, no runtime.
#[derive(Debug)]
pub(crate) struct Wheel {
    epoch: Instant,
    resolution: Duration,
    deadline: Duration,
    heads: Vec<u32>,
    nodes: Vec<Node>,
    free: Vec<u32>,
    index: HashMap<HostId, u32>,
    /// Hosts pinged since the last [`Wheel::take_pinged`] (may hold hosts since removed).
    pinged: Vec<HostId>,
    /// Last tick drained.
    cursor: u64,
}

impl Wheel {
    pub(crate) fn new(epoch: Instant, resolution: Duration, deadline: Duration) -> Self {
        let slots = (deadline.as_nanos() / resolution.as_nanos().max(1)) as usize + 2;
        Self {
            epoch,
            resolution,
            deadline,
            heads: vec![NIL; slots],
            nodes: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            pinged: Vec::new(),
            cursor: 0,
        }
    }

    fn tick_of(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.epoch).as_nanos();
        let r = self.resolution.as_nanos().max(1);
        (d / r) as u64
    }

    /// The first tick at or after `due` (rounded up: a host is never flagged early), and never
    /// one already drained.
    fn tick_at_or_after(&self, due: Instant) -> u64 {
        let d = due.saturating_duration_since(self.epoch).as_nanos();
        let r = self.resolution.as_nanos().max(1);
        (d.div_ceil(r) as u64).max(self.cursor + 1)
    }

    /// Tick at which a host last heard at `at` is behind.
    fn due_tick(&self, at: Instant) -> u64 {
        self.tick_at_or_after(at + self.deadline)
    }

    fn unlink(&mut self, i: u32) {
        let n = self.nodes[i as usize];
        if n.prev == NIL {
            self.heads[n.slot as usize] = n.next;
        } else {
            self.nodes[n.prev as usize].next = n.next;
        }
        if n.next != NIL {
            self.nodes[n.next as usize].prev = n.prev;
        }
    }

    fn link(&mut self, i: u32, due: u64) {
        let slot = (due % self.heads.len() as u64) as u32;
        let head = self.heads[slot as usize];
        let n = &mut self.nodes[i as usize];
        n.due = due;
        n.slot = slot;
        n.prev = NIL;
        n.next = head;
        if head != NIL {
            self.nodes[head as usize].prev = i;
        }
        self.heads[slot as usize] = i;
    }

    /// Tracks `host` as last heard at `at` (inserting it if needed): behind at `at + T`.
    pub(crate) fn arm(&mut self, host: HostId, at: Instant) {
        self.arm_until(host, at, at + self.deadline);
    }

    /// Tracks `host`, last heard at `last_ping`, to be flagged at `due` (a re-arm after an
    /// inconclusive investigation checks again sooner than a full T).
    pub(crate) fn arm_until(&mut self, host: HostId, last_ping: Instant, due: Instant) {
        let at = last_ping;
        let due = self.tick_at_or_after(due);
        if let Some(&i) = self.index.get(&host) {
            self.unlink(i);
            self.nodes[i as usize].last_ping = at;
            self.link(i, due);
            return;
        }
        let node = Node {
            host,
            due,
            last_ping: at,
            pinged: false,
            prev: NIL,
            next: NIL,
            slot: 0,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.index.insert(host, i);
        self.link(i, due);
    }

    /// A ping: refreshes only a host already tracked. Returns whether it was.
    pub(crate) fn touch(&mut self, host: HostId, at: Instant) -> bool {
        let Some(&i) = self.index.get(&host) else {
            return false;
        };
        let due = self.due_tick(at);
        let node = &mut self.nodes[i as usize];
        node.last_ping = at;
        if !node.pinged {
            node.pinged = true;
            self.pinged.push(host);
        }
        if self.nodes[i as usize].due != due {
            self.unlink(i);
            self.link(i, due);
        }
        true
    }

    /// Stops tracking `host`; returns its last ping.
    pub(crate) fn remove(&mut self, host: HostId) -> Option<Instant> {
        let i = self.index.remove(&host)?;
        self.unlink(i);
        self.free.push(i);
        Some(self.nodes[i as usize].last_ping)
    }

    /// The hosts pinged since the last call, with their last ping (each once).
    pub(crate) fn take_pinged(&mut self) -> Vec<(HostId, Instant)> {
        let mut out = Vec::with_capacity(self.pinged.len());
        for host in std::mem::take(&mut self.pinged) {
            if let Some(&i) = self.index.get(&host) {
                let node = &mut self.nodes[i as usize];
                if node.pinged {
                    node.pinged = false;
                    out.push((host, node.last_ping));
                }
            }
        }
        out
    }

    pub(crate) fn last_ping(&self, host: HostId) -> Option<Instant> {
        self.index
            .get(&host)
            .map(|&i| self.nodes[i as usize].last_ping)
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Drains every slot due by `now`; returns the hosts behind on ping with their last ping.
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<(HostId, Instant)>) {
        let target = self.tick_of(now);
        // After a long pause, at most one lap of slots needs draining.
        let lap = self.heads.len() as u64;
        if target > self.cursor + lap {
            self.cursor = target - lap;
        }
        while self.cursor < target {
            self.cursor += 1;
            let slot = (self.cursor % lap) as usize;
            let mut i = self.heads[slot];
            while i != NIL {
                let n = self.nodes[i as usize];
                i = n.next;
                if n.due <= self.cursor {
                    out.push((n.host, n.last_ping));
                    self.remove(n.host);
                }
            }
        }
    }
}

/// The monitor: the wheel of tracked hosts and the deadlines of Alert re-investigations.
/// Registered as a listener: connect inserts the host, a ping refreshes it, disconnect removes it.
#[derive(Debug)]
#[allow(unreachable_pub)]
pub struct PingMonitor {
    wheel: Mutex<Wheel>,
    alerts: Mutex<BTreeSet<(Instant, HostId)>>,
    alert_index: Mutex<HashMap<HostId, Instant>>,
}

// Public for this crate's benchmarks (feature `internals`); otherwise reachable only inside.
#[allow(unreachable_pub)]
impl PingMonitor {
    /// A monitor flagging hosts not heard from for `deadline`, within `resolution`.
    pub fn new(resolution: Duration, deadline: Duration) -> Self {
        Self {
            wheel: Mutex::new(Wheel::new(Instant::now(), resolution, deadline)),
            alerts: Mutex::new(BTreeSet::new()),
            alert_index: Mutex::new(HashMap::new()),
        }
    }

    fn wheel(&self) -> std::sync::MutexGuard<'_, Wheel> {
        self.wheel.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tracks `host` as last heard at `at` (connect, manager start).
    pub fn arm(&self, host: HostId, at: Instant) {
        self.wheel().arm(host, at);
    }

    /// Tracks `host`, last heard at `last_ping`, to be flagged at `due`.
    pub fn arm_until(&self, host: HostId, last_ping: Instant, due: Instant) {
        self.wheel().arm_until(host, last_ping, due);
    }

    /// A ping from `host` at `now`: refreshes only a tracked host.
    pub fn ping(&self, host: HostId, now: Instant) -> bool {
        let tracked = self.wheel().touch(host, now);
        if !tracked {
            tracing::debug!(host.id = %host, "ping from a host not tracked: ignored");
        }
        tracked
    }

    /// Stops tracking `host`; returns its last ping.
    pub fn remove(&self, host: HostId) -> Option<Instant> {
        self.wheel().remove(host)
    }

    /// The last ping of a tracked host.
    pub fn last_ping(&self, host: HostId) -> Option<Instant> {
        self.wheel().last_ping(host)
    }

    /// The hosts pinged since the last call, with their last ping (each once): what the
    /// manager writes to the store in a batch. A host that left the monitor is not listed (its
    /// last ping was returned by [`Self::remove`] or [`Self::behind`]).
    pub fn take_pinged(&self) -> Vec<(HostId, Instant)> {
        self.wheel().take_pinged()
    }

    /// Number of tracked hosts.
    pub fn tracked(&self) -> usize {
        self.wheel().len()
    }

    /// Hosts behind on ping by `now` (they leave the wheel), with their last ping.
    pub fn behind(&self, now: Instant) -> Vec<(HostId, Instant)> {
        let mut out = Vec::new();
        self.wheel().expire(now, &mut out);
        out
    }

    /// Schedules an Alert re-investigation of `host` at `at` (replacing an earlier one).
    pub fn schedule_alert(&self, host: HostId, at: Instant) {
        let mut idx = self
            .alert_index
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut set = self.alerts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = idx.insert(host, at) {
            set.remove(&(old, host));
        }
        set.insert((at, host));
    }

    /// Cancels a scheduled Alert re-investigation.
    pub fn cancel_alert(&self, host: HostId) {
        let mut idx = self
            .alert_index
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = idx.remove(&host) {
            self.alerts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&(old, host));
        }
    }

    /// Alert re-investigations due by `now` (they are removed; re-schedule to repeat).
    pub fn alerts_due(&self, now: Instant) -> Vec<HostId> {
        let mut idx = self
            .alert_index
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut set = self.alerts.lock().unwrap_or_else(PoisonError::into_inner);
        let mut due = Vec::new();
        while let Some(&(at, host)) = set.first() {
            if at > now {
                break;
            }
            set.pop_first();
            idx.remove(&host);
            due.push(host);
        }
        due
    }
}

#[async_trait::async_trait]
impl Listener for PingMonitor {
    fn process_commands(&self, host: HostId, _seq: Sequence, commands: &[Command]) -> bool {
        if commands.iter().any(Command::is_ping) {
            self.ping(host, Instant::now());
        }
        false
    }

    async fn process_connect(
        &self,
        host: HostId,
        startup: &StartupCommand,
        _rebalance: bool,
    ) -> Result<(), ConnectError> {
        if startup.host_type.is_some_and(|t| t.is_ping_untracked()) {
            return Ok(());
        }
        self.arm(host, Instant::now());
        Ok(())
    }

    fn process_disconnect(&self, host: HostId, _status: Status) -> bool {
        self.remove(host);
        false
    }

    fn is_recurring(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_host_is_behind_at_its_deadline_rounded_up_to_the_resolution() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, S, Duration::from_secs(150));
        w.arm(HostId(1), t0 + Duration::from_millis(300));
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_millis(150_299), &mut out);
        assert!(out.is_empty());
        w.expire(t0 + Duration::from_secs(151), &mut out);
        assert_eq!(out, vec![(HostId(1), t0 + Duration::from_millis(300))]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn pings_move_the_deadline_and_unknown_hosts_are_ignored() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, S, Duration::from_secs(150));
        for h in 0..100 {
            w.arm(HostId(h), t0);
        }
        assert!(!w.touch(HostId(1000), t0));
        let mut out = Vec::new();
        for step in 1..=10u64 {
            let now = t0 + Duration::from_secs(60 * step);
            for h in 0..100 {
                if h != 7 {
                    assert!(w.touch(HostId(h), now));
                }
            }
            w.expire(now, &mut out);
        }
        assert_eq!(
            out.iter().map(|(h, _)| *h).collect::<Vec<_>>(),
            vec![HostId(7)]
        );
        assert_eq!(w.remove(HostId(3)), Some(t0 + Duration::from_secs(600)));
        assert_eq!(w.remove(HostId(3)), None);
        assert_eq!(w.len(), 98);
    }

    #[test]
    fn pinged_hosts_are_taken_once_with_their_latest_ping() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, S, Duration::from_secs(150));
        for h in 0..4 {
            w.arm(HostId(h), t0);
        }
        assert!(w.take_pinged().is_empty(), "arming is not a ping");
        w.touch(HostId(1), t0 + S);
        w.touch(HostId(2), t0 + S);
        w.touch(HostId(1), t0 + 2 * S);
        w.remove(HostId(2));
        assert_eq!(w.take_pinged(), vec![(HostId(1), t0 + 2 * S)]);
        assert!(w.take_pinged().is_empty());
        // Removed then armed again: only a new ping lists it.
        w.arm(HostId(2), t0 + 3 * S);
        w.touch(HostId(2), t0 + 4 * S);
        assert_eq!(w.take_pinged(), vec![(HostId(2), t0 + 4 * S)]);
    }

    #[test]
    fn a_long_pause_drains_everything_due() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0, S, Duration::from_secs(10));
        w.arm(HostId(1), t0);
        w.arm(HostId(2), t0 + Duration::from_secs(5));
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_secs(1000), &mut out);
        assert_eq!(out.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_monitor_costs_nothing_per_tick_with_no_host_behind() {
        // The wheel holds every host; a tick with nobody due drains an empty slot.
        let monitor = PingMonitor::new(S, Duration::from_secs(150));
        let t0 = Instant::now();
        for id in 0..10_000 {
            monitor.arm(HostId(id), t0);
        }
        for s in 1..=120 {
            let now = t0 + Duration::from_secs(s);
            for id in 0..10_000 {
                if s % 60 == 0 {
                    monitor.ping(HostId(id), now);
                }
            }
            assert!(monitor.behind(now).is_empty());
        }
        assert_eq!(monitor.behind(t0 + Duration::from_secs(271)).len(), 10_000);
    }
}
