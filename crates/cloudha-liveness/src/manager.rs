//! The agent manager: host records, attaches, the registry, the ping monitor, investigation and
//! host status (spec §1.2, §2, §3, §4, §8).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use cloudha_attache::{
    Attache, AttacheHandle, CommandSink, DirectAttache, DirectConfig, LinkError, ServerResource,
    Tasks, accept_startup, send_one,
};
use cloudha_protocol::{
    Answer, Command, Event, HostId, HostType, PingAnswer, ReadyCommand, ResourceState, Sequence,
    StartupAnswer, StartupCommand, Status, WorkReason,
};
use cloudha_registry::{Interest, ListenerRegistry, Refusal};
use tokio::sync::broadcast;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use cloudha_ports::{
    Alert, AlertKind, AlertSink, CommandError, Finding, HostCommander, HostRecord, HostStore,
    HostVerdict, Investigator, StoreError,
};

use crate::config::Config;
use crate::error::ManagerError;
use crate::investigate;
use crate::monitor::PingMonitor;
use crate::oobm::Oobm;
use crate::ports::HaScheduler;

/// One applied status event, as recorded in a host's history and sent to subscribers.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    /// When.
    pub at: Instant,
    /// The host.
    pub host: HostId,
    /// The status before (`None`: no status yet).
    pub from: Option<Status>,
    /// The event.
    pub event: Event,
    /// The status after.
    pub to: Status,
    /// Why, in words (the verdict and who gave it, the flow that applied it).
    pub reason: String,
}

/// The ports the manager is built on.
pub struct Ports {
    /// Host records.
    pub store: Arc<dyn HostStore>,
    /// The listener registry (the manager registers its ping monitor in it).
    pub registry: Arc<dyn ListenerRegistry>,
    /// Where alerts go.
    pub alerts: Arc<dyn AlertSink>,
    /// Where a host proven Down is handed to VM-HA; `None`: set later with
    /// [`AgentManager::set_ha`] (the HA manager is built from the agent manager's investigators).
    pub ha: Option<Arc<dyn HaScheduler>>,
    /// The investigator chain; `None`: built from `ha.investigators.order` over the manager's
    /// own attaches, store and `oobm`.
    pub investigators: Option<Vec<Arc<dyn Investigator>>>,
    /// Out-of-band management: a host's power reading is evidence independent of its agent
    /// (share the same [`Oobm`] with the power fencer, so a fence reuses a fresh reading).
    pub oobm: Option<Arc<Oobm>>,
}

/// The attaches of every connected host. Also the [`HostCommander`] probes go through: a host
/// with no attache fails at once.
#[derive(Default)]
pub struct Attaches {
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
    pub fn get(&self, host: HostId) -> Option<Arc<dyn Attache>> {
        self.lock().get(&host).cloned()
    }

    fn insert(&self, host: HostId, attache: Arc<dyn Attache>) -> Option<Arc<dyn Attache>> {
        self.lock().insert(host, attache)
    }

    /// Removes the attache of `host` unless a newer one (another generation) replaced it.
    fn remove(&self, host: HostId, generation: Option<u64>) -> Option<Arc<dyn Attache>> {
        let mut map = self.lock();
        match (map.get(&host), generation) {
            (Some(a), Some(g)) if a.generation() != g => None,
            (Some(_), _) => map.remove(&host),
            (None, _) => None,
        }
    }

    fn drain(&self) -> Vec<(HostId, Arc<dyn Attache>)> {
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
pub struct Investigations {
    hosts: Mutex<HashSet<HostId>>,
    pings: Option<(Arc<PingMonitor>, Duration)>,
}

impl Investigations {
    fn with_monitor(monitor: Arc<PingMonitor>, late_after: Duration) -> Self {
        Self {
            hosts: Mutex::default(),
            pings: Some((monitor, late_after)),
        }
    }

    /// Whether `host` is being investigated.
    pub fn contains(&self, host: HostId) -> bool {
        lock(&self.hosts).contains(&host)
    }

    /// Whether `host` is suspect for the brake: being investigated, or tracked by the ping
    /// monitor and silent for longer than `1.25 × ping.interval` (it missed a ping).
    pub fn suspect(&self, host: HostId) -> bool {
        self.contains(host)
            || self.pings.as_ref().is_some_and(|(monitor, after)| {
                monitor
                    .last_ping(host)
                    .is_some_and(|last| last.elapsed() > *after)
            })
    }

    fn begin(&self, host: HostId) -> InvestigationGuard<'_> {
        lock(&self.hosts).insert(host);
        InvestigationGuard(self, host)
    }
}

struct InvestigationGuard<'a>(&'a Investigations, HostId);

impl Drop for InvestigationGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.hosts).remove(&self.1);
    }
}

static NO_HA: crate::ports::NoHa = crate::ports::NoHa;

/// Status changes kept per host (the newest; older ones are dropped in batches).
pub const HISTORY_LIMIT: usize = 1024;

struct Inner {
    config: Config,
    store: Arc<dyn HostStore>,
    registry: Arc<dyn ListenerRegistry>,
    alerts: Arc<dyn AlertSink>,
    ha: OnceLock<Arc<dyn HaScheduler>>,
    investigations: Arc<Investigations>,
    investigators: Vec<Arc<dyn Investigator>>,
    attaches: Arc<Attaches>,
    monitor: Arc<PingMonitor>,
    direct: Mutex<std::collections::BTreeMap<HostId, Arc<dyn ServerResource>>>,
    tasks: Tasks,
    history: Mutex<HashMap<HostId, Vec<StatusChange>>>,
    changes: broadcast::Sender<StatusChange>,
    host_locks: Mutex<HashMap<HostId, Arc<tokio::sync::Mutex<()>>>>,
    /// Per host: a counter bumped by every status change, and the counter at which each kind of
    /// alert was last raised (an alert repeats only after the status changed).
    epochs: Mutex<HashMap<HostId, u64>>,
    raised: Mutex<HashMap<(HostId, AlertKind), u64>>,
    lost_gateway: Mutex<HashSet<HostId>>,
    sink: OnceLock<Arc<dyn CommandSink>>,
    started_at: OnceLock<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The agent manager. Cheap to clone; all clones share one manager.
#[derive(Clone)]
pub struct AgentManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AgentManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentManager")
            .field("config", &self.inner.config)
            .field("attaches", &self.inner.attaches)
            .finish_non_exhaustive()
    }
}

/// The manager as its attaches see it: holds it weakly, so attaches never keep it alive.
struct ManagerSink(Weak<Inner>);

impl AgentManager {
    /// A manager over `ports`, with its tasks owned by `tasks`. Registers the ping monitor in the
    /// registry. Nothing runs until [`AgentManager::start`].
    ///
    /// # Errors
    /// The config's validation error.
    pub fn new(
        config: Config,
        ports: Ports,
        tasks: Tasks,
    ) -> Result<Self, crate::error::ConfigError> {
        config.validate()?;
        let attaches = Arc::new(Attaches::default());
        let commander: Arc<dyn HostCommander> = attaches.clone();
        let investigators = ports.investigators.unwrap_or_else(|| {
            investigate::chain(&config, &commander, &ports.store, ports.oobm.as_ref())
        });
        let monitor = Arc::new(PingMonitor::new(
            config.ping_monitor_resolution,
            config.ping_deadline(),
        ));
        ports
            .registry
            .register(monitor.clone(), Interest::ALL, false);
        let (changes, _) = broadcast::channel(4096);
        let investigations = Arc::new(Investigations::with_monitor(
            Arc::clone(&monitor),
            config.ping_interval.mul_f64(1.25),
        ));
        let inner = Arc::new(Inner {
            config,
            store: ports.store,
            registry: ports.registry,
            alerts: ports.alerts,
            ha: ports.ha.map(OnceLock::from).unwrap_or_default(),
            investigations,
            investigators,
            attaches,
            monitor,
            direct: Mutex::new(std::collections::BTreeMap::new()),
            tasks,
            history: Mutex::new(HashMap::new()),
            changes,
            host_locks: Mutex::new(HashMap::new()),
            epochs: Mutex::new(HashMap::new()),
            raised: Mutex::new(HashMap::new()),
            lost_gateway: Mutex::new(HashSet::new()),
            sink: OnceLock::new(),
            started_at: OnceLock::new(),
        });
        let _ = inner
            .sink
            .set(Arc::new(ManagerSink(Arc::downgrade(&inner))));
        Ok(Self { inner })
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The sink attaches deliver to (give it to the acceptor: [`cloudha_attache::listen`]).
    pub fn sink(&self) -> Arc<dyn CommandSink> {
        Arc::clone(self.inner.sink.get().expect("set in new"))
    }

    /// Sends commands to hosts through their attaches (what investigators and fencers use).
    pub fn commander(&self) -> Arc<dyn HostCommander> {
        self.inner.attaches.clone()
    }

    /// Hands hosts proven Down to `ha` from now on (once; later calls are ignored).
    pub fn set_ha(&self, ha: Arc<dyn HaScheduler>) {
        if self.inner.ha.set(ha).is_err() {
            tracing::warn!("HA scheduler already set");
        }
    }

    /// The investigator chain (the HA side uses it for VM verdicts).
    pub fn investigators(&self) -> Vec<Arc<dyn Investigator>> {
        self.inner.investigators.clone()
    }

    /// The hosts under investigation right now.
    pub fn investigations(&self) -> Arc<Investigations> {
        Arc::clone(&self.inner.investigations)
    }

    /// The host store.
    pub fn store(&self) -> &Arc<dyn HostStore> {
        &self.inner.store
    }

    /// The ping monitor.
    pub fn monitor(&self) -> &PingMonitor {
        &self.inner.monitor
    }

    /// The attache of `host`, if connected.
    pub fn attache(&self, host: HostId) -> Option<Arc<dyn Attache>> {
        self.inner.attaches.get(host)
    }

    /// Adds a host record (its agent connects later) and tells the connection listeners.
    pub fn add_host(&self, record: HostRecord) {
        let id = record.id;
        self.inner.store.upsert(record);
        self.inner.registry.dispatch_host_added(id);
    }

    /// Adds a directly managed host, polled through `resource`. It is connected by the
    /// direct-agent scan (at start, then every `direct.agent.scan.interval`) or [`Self::connect_direct`].
    pub fn add_direct_host(&self, record: HostRecord, resource: Arc<dyn ServerResource>) {
        lock(&self.inner.direct).insert(record.id, resource);
        self.add_host(record);
    }

    /// Registers the resource of a direct host whose record is already in the store (a manager
    /// restarting over a surviving store).
    pub fn register_direct(&self, host: HostId, resource: Arc<dyn ServerResource>) {
        lock(&self.inner.direct).insert(host, resource);
    }

    /// Sets a host's administrative state (enable, disable, maintenance): the monitor rules read it.
    ///
    /// # Errors
    /// Unknown host.
    pub fn set_resource_state(&self, host: HostId, state: ResourceState) -> Result<(), StoreError> {
        self.inner.store.set_resource_state(host, state)
    }

    /// Follows every status change from now on (a slow subscriber may miss changes; see
    /// [`Self::history`] for the full record).
    pub fn subscribe(&self) -> broadcast::Receiver<StatusChange> {
        self.inner.changes.subscribe()
    }

    /// The status changes of `host`, oldest first (at least the last [`HISTORY_LIMIT`]).
    pub fn history(&self, host: HostId) -> Vec<StatusChange> {
        lock(&self.inner.history)
            .get(&host)
            .cloned()
            .unwrap_or_default()
    }

    /// Manager start (§8, spec README): every host not Down gets `ManagementServerDown` and a
    /// ping deadline of now + T; hosts already in Alert are re-investigated; the monitor and the
    /// direct-agent scan start.
    pub async fn start(&self) {
        let inner = &self.inner;
        let now = Instant::now();
        let _ = inner.started_at.set(now);
        for rec in inner.store.list() {
            let Some(status) = rec.status else { continue };
            if matches!(status, Status::Down | Status::Removed) {
                continue;
            }
            if Status::transition(Some(status), Event::ManagementServerDown).is_ok() {
                let _ = inner.apply(
                    rec.id,
                    Event::ManagementServerDown,
                    "management server started".into(),
                );
            }
            if inner.store.status(rec.id) == Some(Status::Alert) {
                inner
                    .monitor
                    .schedule_alert(rec.id, now + inner.config.alert_reinvestigate());
            }
            inner.monitor.arm(rec.id, now);
        }
        let me = Arc::clone(inner);
        inner.tasks.spawn(
            inner.tasks.token().child_token(),
            async move { me.monitor_loop().await }.instrument(tracing::info_span!("ping_monitor")),
        );
        let me = Arc::clone(inner);
        inner.tasks.spawn(
            inner.tasks.token().child_token(),
            async move { me.direct_scan_loop().await }
                .instrument(tracing::info_span!("direct_scan")),
        );
    }

    /// Manager stop: attached hosts get `ManagementServerDown`, attaches are disconnected and every
    /// task ends before this returns.
    pub async fn stop(&self) {
        for (host, attache) in self.inner.attaches.drain() {
            attache.disconnect();
            let _ = self.inner.apply(
                host,
                Event::ManagementServerDown,
                "management server stopping".into(),
            );
        }
        self.inner.tasks.shutdown().await;
    }

    /// Connects a direct host now: its resource's startup commands, the connect flow, then its
    /// ping task. Returns whether it ended Up.
    pub async fn connect_direct(&self, host: HostId) -> bool {
        self.inner.connect_direct(host).await
    }

    /// Disconnect with investigation (§4.4) for `event` (`PingTimeout`, `AgentDisconnected`).
    ///
    /// # Errors
    /// A refused transition or store error.
    pub async fn disconnect_with_investigation(
        &self,
        host: HostId,
        event: Event,
    ) -> Result<(), ManagerError> {
        let _guard = self.inner.lock_host(host).await;
        self.inner
            .disconnect_with_investigation_locked(host, event, None)
            .await
    }

    /// Disconnect without investigation (§4.3).
    ///
    /// # Errors
    /// A refused transition or store error.
    pub async fn disconnect_without_investigation(
        &self,
        host: HostId,
        event: Event,
    ) -> Result<(), ManagerError> {
        let _guard = self.inner.lock_host(host).await;
        self.inner.disconnect_without_investigation_locked(
            host,
            event,
            true,
            true,
            "disconnect requested",
        )
    }

    /// Investigates a host: CheckHealth on the host (while Up or Connecting) and the chain at
    /// once; returns the finding and who made it.
    pub async fn investigate(&self, host: HostId) -> Option<(Finding, &'static str)> {
        let rec = self.inner.store.get(host)?;
        self.inner.investigate(&rec).await
    }

    /// Applies a status event through the §4.2 table (the one place that changes status).
    ///
    /// # Errors
    /// [`ManagerError::Transition`] naming the status and event when the table has no such cell.
    pub fn apply(
        &self,
        host: HostId,
        event: Event,
        reason: impl Into<String>,
    ) -> Result<StatusChange, ManagerError> {
        self.inner.apply(host, event, reason.into())
    }
}

impl Inner {
    async fn lock_host(&self, host: HostId) -> tokio::sync::OwnedMutexGuard<()> {
        let m = Arc::clone(lock(&self.host_locks).entry(host).or_default());
        m.lock_owned().await
    }

    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(
        &self,
        host: HostId,
        what: &'static str,
        fut: F,
    ) {
        let span = tracing::info_span!("host_flow", host.id = %host, flow = what);
        self.tasks
            .spawn(self.tasks.token().child_token(), fut.instrument(span));
    }

    fn apply(
        &self,
        host: HostId,
        event: Event,
        reason: String,
    ) -> Result<StatusChange, ManagerError> {
        let mut attempt = 0;
        loop {
            let rec = self.store.get(host).ok_or(StoreError::UnknownHost(host))?;
            let to = Status::transition(rec.status, event)
                .map_err(|source| ManagerError::Transition { host, source })?;
            let now = Instant::now();
            match self
                .store
                .update_status(host, rec.status, rec.update_count, to, event, now)
            {
                Ok(_) => {
                    let change = StatusChange {
                        at: now,
                        host,
                        from: rec.status,
                        event,
                        to,
                        reason,
                    };
                    self.record(&change);
                    return Ok(change);
                }
                Err(StoreError::Conflict { .. }) if attempt < 3 => attempt += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn record(&self, change: &StatusChange) {
        tracing::info!(host.id = %change.host, from = ?change.from, event = %change.event, to = %change.to, reason = %change.reason, "host status");
        {
            let mut history = lock(&self.history);
            let h = history.entry(change.host).or_default();
            h.push(change.clone());
            // Bounded: a flapping host must not grow the manager without end.
            if h.len() > 2 * HISTORY_LIMIT {
                h.drain(..HISTORY_LIMIT);
            }
        }
        let _ = self.changes.send(change.clone());
        if change.from != Some(change.to) {
            *lock(&self.epochs).entry(change.host).or_default() += 1;
            if change.to == Status::Alert {
                self.monitor
                    .schedule_alert(change.host, change.at + self.config.alert_reinvestigate());
            } else if change.from == Some(Status::Alert) {
                self.monitor.cancel_alert(change.host);
            }
        }
    }

    /// Raises an alert unless the same kind was raised for this host since its last status change.
    fn raise(&self, kind: AlertKind, rec: &HostRecord, message: String) {
        let epoch = lock(&self.epochs).get(&rec.id).copied().unwrap_or(0);
        if lock(&self.raised).insert((rec.id, kind), epoch) == Some(epoch) {
            tracing::debug!(host.id = %rec.id, %kind, "alert already raised for this status");
            return;
        }
        self.alerts.raise(Alert {
            kind,
            host: Some(rec.id),
            vm: None,
            cluster: rec.cluster,
            pod: rec.pod,
            zone: rec.zone,
            message,
        });
    }

    fn last_ping(&self, rec: &HostRecord) -> Option<Instant> {
        self.monitor.last_ping(rec.id).or(rec.last_ping)
    }

    /// Checks again at the next monitor run (after `ping.interval`), keeping the last ping.
    fn rearm(&self, rec: &HostRecord) {
        let now = Instant::now();
        let last = self.last_ping(rec).unwrap_or(now);
        self.monitor
            .arm_until(rec.id, last, now + self.config.ping_interval);
    }

    fn ha(&self) -> &dyn HaScheduler {
        self.ha
            .get()
            .map_or(&NO_HA as &dyn HaScheduler, |h| h.as_ref())
    }

    /// Whether HA is wired in (it then raises the one host-down alert, listing the VMs).
    fn has_ha(&self) -> bool {
        self.ha.get().is_some()
    }

    /// The host-down alert, when no HA manager raises its own (with the VM list).
    fn host_down_alert(&self, rec: &HostRecord) {
        if !self.has_ha()
            && !matches!(
                rec.host_type,
                HostType::SecondaryStorage | HostType::ConsoleProxy
            )
        {
            self.raise(
                AlertKind::HostDown,
                rec,
                format!("Host {} ({}) is down", rec.name, rec.id),
            );
        }
    }

    /// CheckHealth on the host itself (only while Up or Connecting, CloudStack's rule).
    async fn check_health(&self, rec: &HostRecord) -> bool {
        if !matches!(rec.status, Some(Status::Up | Status::Connecting)) {
            return false;
        }
        let Some(attache) = self.attaches.get(rec.id) else {
            return false;
        };
        let check = Command::CheckHealth(cloudha_protocol::CheckHealthCommand {});
        send_one(&*attache, check, None)
            .await
            .is_ok_and(|a| a.success())
    }

    /// Investigation: CheckHealth on the host and the investigator chain start together; the
    /// verdict is taken as soon as the evidence decides it (CheckHealth answers, or the chain
    /// finds the host Up or settled Down), else once both have answered. Every probe is bounded.
    async fn investigate(&self, rec: &HostRecord) -> Option<(Finding, &'static str)> {
        let _busy = self.investigations.begin(rec.id);
        if rec.host_type.is_system_vm() {
            return Some((
                Finding::new(HostVerdict::Alert, "a system VM agent"),
                "system VM agent",
            ));
        }
        let up = || {
            Some((
                Finding::settled(HostVerdict::Up, "the host answers CheckHealth"),
                "CheckHealth",
            ))
        };
        let health = self.check_health(rec);
        tokio::pin!(health);
        if !self.config.vm_ha_enabled {
            // CloudStack's HighAvailabilityManager.investigate: VM-HA disabled ⇒ alert + Alert.
            if health.await {
                return up();
            }
            if self.config.vm_ha_alerts_enabled {
                self.raise(
                    AlertKind::HaDisabled,
                    rec,
                    format!(
                        "Host {} ({}) does not answer, and VM-HA is disabled: nothing is investigated or restarted",
                        rec.name, rec.id
                    ),
                );
            }
            return Some((
                Finding::new(
                    HostVerdict::Alert,
                    "VM-HA is disabled (vm.ha.enabled = false)",
                ),
                "vm.ha.enabled",
            ));
        }
        let chain = investigate::investigate_host(&self.investigators, rec);
        tokio::pin!(chain);
        // Biased: when both are ready at once the outcome must not depend on tokio's own
        // randomness (a seeded simulation must replay exactly).
        tokio::select! {
            biased;
            healthy = &mut health => {
                if healthy { up() } else { chain.await }
            }
            found = &mut chain => match found {
                Some((f, by)) if f.settled || f.verdict == HostVerdict::Up => Some((f, by)),
                other => if health.await { up() } else { other },
            },
        }
    }

    async fn disconnect_with_investigation_locked(
        &self,
        host: HostId,
        event: Event,
        generation: Option<u64>,
    ) -> Result<(), ManagerError> {
        if let Some(g) = generation
            && self.attaches.get(host).is_some_and(|a| a.generation() != g)
        {
            tracing::debug!(host.id = %host, "link loss of a replaced attache: ignored");
            return Ok(());
        }
        let rec = self.store.get(host).ok_or(StoreError::UnknownHost(host))?;
        let mut event = event;
        let mut reason = format!("{event}");
        if Status::transition(rec.status, event).ok() == Some(Status::Alert) {
            let found = self.investigate(&rec).await;
            let now = Instant::now();
            let waited = self
                .last_ping(&rec)
                .map_or(Duration::MAX, |l| now.saturating_duration_since(l));
            let too_long = waited > self.config.alert_wait;
            reason = match &found {
                Some((f, by)) => format!(
                    "{event}; investigation: {:?} by {by} ({})",
                    f.verdict, f.evidence
                ),
                None => format!("{event}; investigation: unknown (no investigator could tell)"),
            };
            match found.as_ref().map(|(f, _)| f.verdict) {
                None if !too_long => {
                    tracing::info!(host.id = %host, "state cannot be determined; checking again later");
                    self.rearm(&rec);
                    return Ok(());
                }
                None => {
                    reason = format!("{event}; state undeterminable for longer than alert.wait");
                    self.raise(
                        AlertKind::HostAlert,
                        &rec,
                        format!(
                            "Host {} ({}) is in ALERT state: its state cannot be determined",
                            rec.name, host
                        ),
                    );
                }
                Some(HostVerdict::Down) => {
                    if rec.status != Some(Status::Down) {
                        self.host_down_alert(&rec);
                    }
                    event = Event::HostDown;
                }
                Some(HostVerdict::Up) => {
                    self.apply(host, Event::Ping, reason)?;
                    self.rearm(&rec);
                    return Ok(());
                }
                Some(HostVerdict::Disconnected)
                    if rec.status == Some(Status::Disconnected)
                        || (rec.status == Some(Status::Up)
                            && rec.resource_state == ResourceState::PrepareForMaintenance) =>
                {
                    if !too_long {
                        self.rearm(&rec);
                        return Ok(());
                    }
                    event = Event::WaitedTooLong;
                }
                Some(HostVerdict::Disconnected) if rec.status == Some(Status::Up) => {
                    let why = found.as_ref().map_or("", |(f, _)| f.evidence.as_str());
                    self.raise(
                        AlertKind::HostDisconnected,
                        &rec,
                        format!(
                            "Host {} ({}) disconnected: {why}; it goes to Alert and is not fenced without proof",
                            rec.name, host
                        ),
                    );
                    event = Event::AgentDisconnected;
                }
                Some(_) => {
                    self.raise(
                        AlertKind::HostAlert,
                        &rec,
                        format!("Host {} ({}) is in ALERT state", rec.name, host),
                    );
                }
            }
        }
        if let Err(e) =
            self.disconnect_without_investigation_locked(host, event, true, true, &reason)
        {
            // No such transition (e.g. Up + WaitedTooLong, which CloudStack throws on): the host
            // keeps its status and is checked again at the next monitor run, never forgotten.
            self.rearm(&rec);
            return Err(e);
        }
        // Down is the only path from a disconnect to VM-HA; a host that was Down already had
        // its VMs scheduled when it went Down.
        if let Some(now) = self.store.get(host)
            && now.status == Some(Status::Down)
            && rec.status != Some(Status::Down)
        {
            self.ha()
                .schedule_restarts_for_host(&now, WorkReason::HostDown, true)
                .await;
        }
        Ok(())
    }

    fn disconnect_without_investigation_locked(
        &self,
        host: HostId,
        event: Event,
        transit: bool,
        remove: bool,
        reason: &str,
    ) -> Result<(), ManagerError> {
        let rec = self.store.get(host).ok_or(StoreError::UnknownHost(host))?;
        let stays = matches!(
            rec.status,
            Some(Status::Down | Status::Alert | Status::Removed)
        );
        let table = Status::transition(rec.status, event);
        let next = match (stays, table) {
            (true, _) => rec.status.unwrap_or(Status::Unknown),
            (false, Ok(to)) => to,
            (false, Err(source)) => return Err(ManagerError::Transition { host, source }),
        };
        if remove {
            if let Some(attache) = self.attaches.remove(host, None) {
                attache.disconnect();
            }
            if let Some(last) = self.monitor.remove(host) {
                let _ = self.store.set_last_ping(host, last);
            }
            self.registry.dispatch_disconnect(host, next);
        }
        if transit {
            match table {
                Ok(_) => {
                    self.apply(host, event, reason.to_owned())?;
                }
                // CloudStack throws here (e.g. Alert + PingTimeout) after the agent was removed;
                // we keep the status and say why.
                Err(e) => tracing::debug!(host.id = %host, error = %e, "status kept"),
            }
        }
        Ok(())
    }

    async fn reinvestigate_alert(&self, host: HostId) {
        let _guard = self.lock_host(host).await;
        let Some(rec) = self.store.get(host) else {
            return;
        };
        if rec.status != Some(Status::Alert) {
            return;
        }
        match self.investigate(&rec).await {
            Some((f, by)) if f.verdict == HostVerdict::Down => {
                self.host_down_alert(&rec);
                if let Err(e) = self.apply(
                    host,
                    Event::HostDown,
                    format!("Alert re-investigation: Down by {by} ({})", f.evidence),
                ) {
                    tracing::warn!(host.id = %host, error = %e, "cannot mark host down");
                    return;
                }
                if let Some(rec) = self.store.get(host) {
                    self.ha()
                        .schedule_restarts_for_host(&rec, WorkReason::HostDown, true)
                        .await;
                }
            }
            _ => self
                .monitor
                .schedule_alert(host, Instant::now() + self.config.alert_reinvestigate()),
        }
    }

    async fn on_behind(&self, host: HostId) {
        let _guard = self.lock_host(host).await;
        let Some(rec) = self.store.get(host) else {
            return;
        };
        let result = if rec.resource_state.is_out_of_service() || rec.host_type.is_system_vm() {
            self.disconnect_without_investigation_locked(
                host,
                Event::ShutdownRequested,
                true,
                true,
                "behind on ping (out of service or system VM agent)",
            )
        } else {
            self.disconnect_with_investigation_locked(host, Event::PingTimeout, None)
                .await
        };
        if let Err(e) = result {
            tracing::warn!(host.id = %host, error = %e, "behind-on-ping handling failed");
        }
    }

    async fn monitor_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.ping_monitor_resolution);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            let now = Instant::now();
            for (host, last) in self.monitor.behind(now) {
                tracing::info!(host.id = %host, since = ?now.saturating_duration_since(last), "host behind on ping");
                let _ = self.store.set_last_ping(host, last);
                let me = Arc::clone(&self);
                self.spawn(
                    host,
                    "behind_on_ping",
                    async move { me.on_behind(host).await },
                );
            }
            for host in self.monitor.alerts_due(now) {
                let me = Arc::clone(&self);
                self.spawn(host, "alert_reinvestigation", async move {
                    me.reinvestigate_alert(host).await
                });
            }
        }
    }

    async fn direct_scan_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.direct_agent_scan_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let hosts: Vec<HostId> = lock(&self.direct).keys().copied().collect();
            for host in hosts {
                let connected = self.attaches.get(host).is_some_and(|a| !a.is_closed());
                let status = self.store.status(host);
                if connected
                    || matches!(
                        status,
                        Some(Status::Up | Status::Connecting | Status::Removed)
                    )
                {
                    continue;
                }
                let me = Arc::clone(&self);
                self.spawn(host, "direct_connect", async move {
                    me.connect_direct(host).await;
                });
            }
        }
    }

    async fn connect_direct(self: &Arc<Self>, host: HostId) -> bool {
        let Some(resource) = lock(&self.direct).get(&host).cloned() else {
            return false;
        };
        let startup = tokio::time::timeout(self.config.wait, resource.initialize())
            .await
            .ok()
            .and_then(|cmds| {
                cmds.into_iter().find_map(|c| match c {
                    Command::Startup(s) => Some(s),
                    _ => None,
                })
            });
        let Some(startup) = startup else {
            tracing::debug!(host.id = %host, "direct host gave no startup: not reachable");
            return false;
        };
        let config = DirectConfig {
            ping_retry_count: self.config.host_ping_retry_count,
            ping_retry_timer: self.config.host_ping_retry_timer,
            status_timeout: None,
            max_outstanding: 501,
            default_wait: self.config.wait,
        };
        let sink = Arc::clone(self.sink.get().expect("set in new"));
        let attache: Arc<dyn Attache> = Arc::new(DirectAttache::spawn(
            host,
            resource,
            sink,
            config,
            &self.tasks,
        ));
        let generation = attache.generation();
        if let Some(old) = self.attaches.insert(host, Arc::clone(&attache)) {
            old.disconnect();
        }
        let _guard = self.lock_host(host).await;
        self.connect_flow_locked(host, &startup, generation).await
    }

    /// The connect flow (§2): AgentConnected, the listeners' connect, Ready, then Ready → Up.
    async fn connect_flow_locked(
        &self,
        host: HostId,
        startup: &StartupCommand,
        generation: u64,
    ) -> bool {
        let Some(attache) = self
            .attaches
            .get(host)
            .filter(|a| a.generation() == generation)
        else {
            tracing::debug!(host.id = %host, "connect superseded by a newer attache");
            return false;
        };
        if let Err(e) = self.apply(host, Event::AgentConnected, "agent connected".into()) {
            tracing::warn!(host.id = %host, error = %e, "cannot accept connect");
            if let Some(a) = self.attaches.remove(host, Some(generation)) {
                a.disconnect();
            }
            return false;
        }
        if let Err(refused) = self.registry.dispatch_connect(host, startup, false).await {
            let event = match refused.error.refusal {
                Refusal::Shutdown => Event::ShutdownRequested,
                _ => Event::AgentDisconnected,
            };
            tracing::warn!(host.id = %host, error = %refused, "connect refused by a listener");
            let reason = format!("connect refused: {}", refused.error.reason);
            if let Err(e) =
                self.disconnect_without_investigation_locked(host, event, true, true, &reason)
            {
                tracing::warn!(host.id = %host, error = %e, "disconnect after refusal failed");
            }
            return false;
        }
        let ready = send_one(
            &*attache,
            Command::Ready(ReadyCommand { host_id: host }),
            Some(self.config.ready_command_wait),
        )
        .await;
        if !ready.as_ref().is_ok_and(Answer::success) {
            tracing::warn!(host.id = %host, ?ready, "Ready failed");
            let _ = self.disconnect_without_investigation_locked(
                host,
                Event::AgentDisconnected,
                true,
                true,
                "Ready command failed",
            );
            return false;
        }
        if let Err(e) = self.apply(host, Event::Ready, "connect complete".into()) {
            tracing::warn!(host.id = %host, error = %e, "cannot mark host ready");
            return false;
        }
        attache.on_startup_answer(&self.startup_answer(startup));
        // The VM state sync of a connect: the host's own report of its VMs (an HA VM the
        // records place here that it reports off is restarted, as on a ping).
        self.ha().vm_power_report(host, &startup.vm_states);
        true
    }

    fn startup_answer(&self, startup: &StartupCommand) -> StartupAnswer {
        accept_startup(startup, self.config.ping_interval)
    }

    fn ping_answer(status: Option<Status>, gateway_accessible: bool) -> Answer {
        // CloudStack: send-startup when the host is not Up; we also let a Connecting host finish.
        let send_startup =
            gateway_accessible && !matches!(status, Some(Status::Up | Status::Connecting));
        Answer::Ping(PingAnswer {
            avoid_ms: Vec::new(),
            send_startup,
        })
    }

    fn gateway(&self, host: HostId, accessible: bool) {
        let changed = {
            let mut lost = lock(&self.lost_gateway);
            if accessible {
                lost.remove(&host)
            } else {
                lost.insert(host)
            }
        };
        if changed && let Some(rec) = self.store.get(host) {
            if accessible {
                tracing::info!(host.id = %host, "gateway reachable again");
                self.alerts.clear(AlertKind::LostGateway, host);
            } else {
                self.raise(
                    AlertKind::LostGateway,
                    &rec,
                    format!("Host {} ({}) lost its gateway", rec.name, host),
                );
            }
        }
    }
}

#[async_trait::async_trait]
impl CommandSink for ManagerSink {
    fn on_commands(&self, host: HostId, seq: Sequence, commands: &[Command]) -> Vec<Answer> {
        let Some(inner) = self.0.upgrade() else {
            return Vec::new();
        };
        inner.registry.dispatch_commands(host, seq, commands);
        let status = inner.store.status(host);
        commands
            .iter()
            .map(|c| match c {
                Command::Ping(_) => Inner::ping_answer(status, true),
                Command::PingRouting(p) => {
                    inner.gateway(host, p.gateway_accessible);
                    if status == Some(Status::Up) {
                        inner.ha().vm_power_report(host, &p.vm_states);
                    }
                    Inner::ping_answer(status, p.gateway_accessible)
                }
                Command::Startup(s) => {
                    // The agent redoes its startup on the same link.
                    if let Some(a) = inner.attaches.get(host) {
                        let (me, s, generation) = (Arc::clone(&inner), s.clone(), a.generation());
                        inner.spawn(host, "reconnect", async move {
                            let _guard = me.lock_host(host).await;
                            me.connect_flow_locked(host, &s, generation).await;
                        });
                    }
                    Answer::Startup(inner.startup_answer(s))
                }
                Command::Shutdown(s) => {
                    let (me, reason) = (
                        Arc::clone(&inner),
                        format!("agent shut down: {:?} {}", s.reason, s.details),
                    );
                    inner.spawn(host, "shutdown", async move {
                        let _guard = me.lock_host(host).await;
                        if let Err(e) = me.disconnect_without_investigation_locked(
                            host,
                            Event::ShutdownRequested,
                            true,
                            true,
                            &reason,
                        ) {
                            tracing::warn!(host.id = %host, error = %e, "shutdown handling failed");
                        }
                    });
                    Answer::ok()
                }
                Command::AgentControl(c) => inner
                    .registry
                    .dispatch_control(host, c)
                    .unwrap_or_else(Answer::ok),
                _ => Answer::ok(),
            })
            .collect()
    }

    async fn on_connect(&self, attache: AttacheHandle, startup: StartupCommand) -> StartupAnswer {
        let host = startup.host_id;
        let refuse = |details: String| StartupAnswer {
            success: false,
            host_id: host,
            ping_interval_ms: 0,
            details,
        };
        let Some(inner) = self.0.upgrade() else {
            return refuse("manager stopped".into());
        };
        match inner.store.get(host).map(|h| h.status) {
            None => return refuse(format!("host {host} is not known")),
            Some(Some(Status::Removed)) => return refuse(format!("host {host} was removed")),
            Some(_) => {}
        }
        let attache: Arc<dyn Attache> = Arc::new(attache);
        let generation = attache.generation();
        if let Some(old) = inner.attaches.insert(host, attache)
            && old.generation() != generation
        {
            old.disconnect();
        }
        let (me, s) = (Arc::clone(&inner), startup.clone());
        inner.spawn(host, "connect", async move {
            let _guard = me.lock_host(host).await;
            me.connect_flow_locked(host, &s, generation).await;
        });
        inner.startup_answer(&startup)
    }

    fn on_link_lost(&self, host: HostId, generation: u64, error: &LinkError) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        if inner
            .attaches
            .get(host)
            .is_none_or(|a| a.generation() != generation)
        {
            return;
        }
        tracing::info!(host.id = %host, %error, "agent link lost: disconnect with investigation");
        let me = Arc::clone(&inner);
        inner.spawn(host, "link_lost", async move {
            let _guard = me.lock_host(host).await;
            if let Err(e) = me
                .disconnect_with_investigation_locked(
                    host,
                    Event::AgentDisconnected,
                    Some(generation),
                )
                .await
            {
                tracing::warn!(host.id = %host, error = %e, "link-loss handling failed");
            }
        });
    }
}
