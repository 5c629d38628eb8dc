//! Wall-clock time for records: [`Timestamp`] and the [`Clock`] port.
//!
//! Records live in stores shared between processes and restarts, so their times are wall-clock
//! instants (microseconds since the Unix epoch, PostgreSQL's resolution), never a process's
//! monotonic clock. The engine reads time through a [`Clock`]: [`SystemClock`] in a real
//! deployment, [`TokioClock`] where tokio's (possibly paused) clock drives time, as in the
//! simulator and tests, which map it onto a fixed epoch so runs stay deterministic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A wall-clock instant: microseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const UNIX_EPOCH: Self = Self(0);

    /// From microseconds since the Unix epoch.
    pub const fn from_micros(us: u64) -> Self {
        Self(us)
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// From a system time (times before the epoch become the epoch).
    pub fn from_system_time(t: SystemTime) -> Self {
        Self(
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }

    /// As a system time.
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.0)
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, saturating at the largest timestamp.
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }

    /// `self - d`, saturating at the epoch.
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Self;
    fn add(self, d: Duration) -> Self {
        self.saturating_add(d)
    }
}

impl std::ops::Sub<Duration> for Timestamp {
    type Output = Self;
    fn sub(self, d: Duration) -> Self {
        self.saturating_sub(d)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// Where the engine reads the time of day.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_system_time(SystemTime::now())
    }
}

/// tokio's clock (paused in the simulator and tests) mapped onto a fixed epoch: the instant the
/// clock was made is `epoch`. Deterministic under paused time.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    epoch: Timestamp,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `epoch` now.
    pub fn new(epoch: Timestamp) -> Self {
        Self {
            epoch,
            origin: tokio::time::Instant::now(),
        }
    }

    /// A clock reading `epoch` at the tokio instant `origin`.
    pub fn with_origin(epoch: Timestamp, origin: tokio::time::Instant) -> Self {
        Self { epoch, origin }
    }

    /// The timestamp of a tokio instant.
    pub fn at(&self, instant: tokio::time::Instant) -> Timestamp {
        self.epoch + instant.saturating_duration_since(self.origin)
    }

    /// The tokio instant of a timestamp (the inverse of [`Self::at`]; a timestamp before the
    /// epoch maps to the origin).
    pub fn instant(&self, at: Timestamp) -> tokio::time::Instant {
        self.origin + at.saturating_duration_since(self.epoch)
    }

    /// The epoch (the timestamp of the clock's creation).
    pub fn epoch(&self) -> Timestamp {
        self.epoch
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.at(tokio::time::Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_round_trips() {
        let t = Timestamp::from_micros(1_500_000);
        assert_eq!(
            t + Duration::from_millis(500),
            Timestamp::from_micros(2_000_000)
        );
        assert_eq!(t - Duration::from_secs(10), Timestamp::UNIX_EPOCH);
        assert_eq!(
            t.saturating_duration_since(Timestamp::from_micros(500_000)),
            Duration::from_secs(1)
        );
        assert_eq!(
            Timestamp::from_micros(1).saturating_duration_since(t),
            Duration::ZERO
        );
        assert_eq!(Timestamp::from_system_time(t.to_system_time()), t);
        assert_eq!(
            Timestamp::from_micros(u64::MAX - 1) + Duration::MAX,
            Timestamp::from_micros(u64::MAX)
        );
        assert_eq!(t.to_string(), "1.500000");
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time_from_its_epoch() {
        let epoch = Timestamp::from_micros(1_700_000_000_000_000);
        let clock = TokioClock::new(epoch);
        assert_eq!(clock.now(), epoch);
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), epoch + Duration::from_secs(90));
    }
}
