//! The attaches of connected hosts and the hosts under investigation.

use super::*;

/// The attaches of every connected host. Also the [`HostCommander`] probes go through: a host
/// with no attache fails at once.
#[derive(Default)]
pub(crate) struct Attaches {
    map: Mutex<HashMap<HostId, Arc<dyn Attache>>>,
}

impl std::fmt::Debug for Attaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attaches")
            .field("hosts", &self.lock().len())
            .finish()
    }
}

impl Attaches {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<HostId, Arc<dyn Attache>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The attache of `host`.
    pub(crate) fn get(&self, host: HostId) -> Option<Arc<dyn Attache>> {
        self.lock().get(&host).cloned()
    }

    pub(super) fn insert(
        &self,
        host: HostId,
        attache: Arc<dyn Attache>,
    ) -> Option<Arc<dyn Attache>> {
        self.lock().insert(host, attache)
    }

    /// Removes the attache of `host` unless a newer one (another generation) replaced it.
    pub(super) fn remove(&self, host: HostId, generation: Option<u64>) -> Option<Arc<dyn Attache>> {
        let mut map = self.lock();
        match (map.get(&host), generation) {
            (Some(a), Some(g)) if a.generation() != g => None,
            (Some(_), _) => map.remove(&host),
            (None, _) => None,
        }
    }

    pub(super) fn drain(&self) -> Vec<(HostId, Arc<dyn Attache>)> {
        let mut v: Vec<_> = self.lock().drain().collect();
        v.sort_by_key(|(h, _)| *h);
        v
    }
}

#[async_trait::async_trait]
impl HostCommander for Attaches {
    async fn send(
        &self,
        host: HostId,
        command: Command,
        wait: Duration,
    ) -> Result<Answer, CommandError> {
        let attache = self.get(host).ok_or(CommandError::NoAttache(host))?;
        Ok(send_one(&*attache, command, Some(wait)).await?)
    }
}

/// What the agent manager knows of hosts under suspicion, for the brake: the hosts being
/// investigated right now, and (with a ping monitor) the hosts silent for longer than they
/// should be. A rack that loses power is detected host by host over one ping interval; by the
/// time its first host is flagged the others have already missed a ping, so the brake sees the
/// whole rack even when each verdict takes no time.
#[derive(Debug, Default)]
pub(crate) struct Investigations {
    hosts: Mutex<HashSet<HostId>>,
    pings: Option<(Arc<PingMonitor>, Duration)>,
}

impl Investigations {
    pub(super) fn with_monitor(monitor: Arc<PingMonitor>, late_after: Duration) -> Self {
        Self {
            hosts: Mutex::default(),
            pings: Some((monitor, late_after)),
        }
    }

    /// Whether `host` is being investigated.
    pub(crate) fn contains(&self, host: HostId) -> bool {
        lock(&self.hosts).contains(&host)
    }

    /// Whether `host` is suspect for the brake: being investigated, or tracked by the ping
    /// monitor and silent for longer than `1.25 × ping.interval` (it missed a ping).
    pub(crate) fn suspect(&self, host: HostId) -> bool {
        self.contains(host)
            || self.pings.as_ref().is_some_and(|(monitor, after)| {
                monitor
                    .last_ping(host)
                    .is_some_and(|last| last.elapsed() > *after)
            })
    }

    pub(super) fn begin(&self, host: HostId) -> InvestigationGuard<'_> {
        lock(&self.hosts).insert(host);
        InvestigationGuard(self, host)
    }
}

pub(super) struct InvestigationGuard<'a>(&'a Investigations, HostId);

impl Drop for InvestigationGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.hosts).remove(&self.1);
    }
}
