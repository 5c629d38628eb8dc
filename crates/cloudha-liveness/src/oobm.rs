//! Out-of-band management (IPMI, Redfish, fence agents): the `OutOfBandManagement` port and
//! [`Oobm`], the bounded, counted front the manager puts before it.
//!
//! Both liveness (a host's power reading is evidence independent of its agent) and HA (the
//! power fencer) use one [`Oobm`], so the fence reuses the investigation's reading when it is
//! fresh ([`POWER_READING_FRESH`]) instead of asking the BMC again: one failed host costs at
//! most three BMC calls per retry round (a reading, an Off, a read-back).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cloudha_ports::{Clock, OobError, OutOfBandManagement, PowerState, Timestamp};
use cloudha_protocol::HostId;

/// A power reading younger than this is reused instead of asking the BMC again. It is shorter
/// than any host needs to boot and re-join, and a reading is forgotten at once when the manager
/// itself powers the host off; so within it, "Off" still means off.
pub const POWER_READING_FRESH: Duration = Duration::from_secs(60);

/// One power reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PowerReading {
    /// What the BMC said.
    pub state: PowerState,
    /// When (the front's clock).
    pub at: Timestamp,
}

/// The manager's front to out-of-band management: every call bounded by `wait`, every call
/// counted per host, and the last reading of each host kept for reuse.
pub struct Oobm {
    port: std::sync::Arc<dyn OutOfBandManagement>,
    wait: Duration,
    clock: std::sync::Arc<dyn Clock>,
    readings: Mutex<HashMap<HostId, PowerReading>>,
    /// When a power reading of each host last failed.
    failures: Mutex<HashMap<HostId, Timestamp>>,
    calls: Mutex<HashMap<HostId, u64>>,
}

impl std::fmt::Debug for Oobm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oobm")
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Oobm {
    /// Calls through `port`, each bounded by `wait` (`outofbandmanagement.action.timeout`);
    /// readings are stamped by `clock`.
    pub fn new(
        port: std::sync::Arc<dyn OutOfBandManagement>,
        wait: Duration,
        clock: std::sync::Arc<dyn Clock>,
    ) -> Self {
        Self {
            port,
            wait,
            clock,
            readings: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
        }
    }

    /// The clock readings are stamped by.
    pub fn clock(&self) -> &std::sync::Arc<dyn Clock> {
        &self.clock
    }

    fn count(&self, host: HostId) {
        *lock(&self.calls).entry(host).or_default() += 1;
    }

    fn timed_out(&self, host: HostId, what: &str) -> OobError {
        OobError::new(
            host,
            format!("{what} did not answer within {:?}", self.wait),
        )
    }

    /// Reads the host's power (one BMC call, bounded) and keeps the reading.
    ///
    /// # Errors
    /// The BMC did not answer in time or refused.
    pub async fn power_status(&self, host: HostId) -> Result<PowerState, OobError> {
        self.count(host);
        let state = tokio::time::timeout(self.wait, self.port.power_status(host))
            .await
            .map_err(|_| self.timed_out(host, "power status"))
            .and_then(|r| r)
            .inspect_err(|_| {
                // No answer now: an older reading must not stand in for one.
                lock(&self.readings).remove(&host);
                lock(&self.failures).insert(host, self.clock.now());
            })?;
        lock(&self.failures).remove(&host);
        lock(&self.readings).insert(
            host,
            PowerReading {
                state,
                at: self.clock.now(),
            },
        );
        Ok(state)
    }

    /// The last reading of `host` if it is younger than [`POWER_READING_FRESH`] and was taken
    /// after `since` (the host's last connect: a reading from before it came back says nothing
    /// of it now). No BMC call.
    pub fn fresh(&self, host: HostId, since: Option<Timestamp>) -> Option<PowerReading> {
        let now = self.clock.now();
        lock(&self.readings).get(&host).copied().filter(|r| {
            now.saturating_duration_since(r.at) < POWER_READING_FRESH
                && since.is_none_or(|s| r.at > s)
        })
    }

    /// Whether a power reading of `host` failed within [`POWER_READING_FRESH`], after `since`
    /// (no reading since): reading again now would most likely fail too, and cost a call.
    pub fn failed_recently(&self, host: HostId, since: Option<Timestamp>) -> bool {
        let now = self.clock.now();
        lock(&self.failures).get(&host).is_some_and(|t| {
            now.saturating_duration_since(*t) < POWER_READING_FRESH && since.is_none_or(|s| *t > s)
        })
    }

    /// When the BMC last read `host` Off, if that is its last reading and it was taken after
    /// `since` (the host's last connect). Such a reading stays a proof that every VM copy the
    /// host ran before it is dead, however old: copies start only through a connected agent.
    pub fn off_since(&self, host: HostId, since: Option<Timestamp>) -> Option<Timestamp> {
        lock(&self.readings)
            .get(&host)
            .filter(|r| r.state == PowerState::Off && since.is_none_or(|s| r.at > s))
            .map(|r| r.at)
    }

    /// Powers the host off (one BMC call, bounded). The last reading is forgotten: whatever
    /// happened, the next answer must come from the BMC.
    ///
    /// # Errors
    /// The BMC did not answer in time or refused.
    pub async fn power_off(&self, host: HostId) -> Result<(), OobError> {
        self.count(host);
        lock(&self.readings).remove(&host);
        tokio::time::timeout(self.wait, self.port.power_off(host))
            .await
            .map_err(|_| self.timed_out(host, "power off"))?
    }

    /// BMC calls made for `host` so far.
    pub fn calls(&self, host: HostId) -> u64 {
        lock(&self.calls).get(&host).copied().unwrap_or(0)
    }
}
