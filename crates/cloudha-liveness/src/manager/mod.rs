//! The agent manager: host records, attaches, the registry, the ping monitor, investigation and
//! host status (spec §1.2, §2, §3, §4, §8).
//!
//! The data flow, one module each: a ping reaches the manager's sink ([`connect`]: the sink
//! attaches deliver to, and the connect flows), goes through the registry to the ping monitor
//! ([`crate::monitor`]); a host behind on ping is investigated and disconnected ([`disconnect`]);
//! every status change goes through the §4.2 table, is written through to the store and sent to
//! subscribers ([`status`]), where the HA manager learns of hosts going Down.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use cloudha_attache::{
    Attache, AttacheHandle, CommandSink, DirectAttache, DirectConfig, LinkError, ServerResource,
    Tasks, accept_startup, send_one,
};
use cloudha_protocol::{
    Answer, Command, Event, HostId, HostType, PingAnswer, ReadyCommand, ResourceState, Sequence,
    StartupAnswer, StartupCommand, Status,
};
use cloudha_registry::{Interest, ListenerRegistry, Refusal};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use cloudha_ports::{
    Alert, AlertKind, AlertSink, Clock, CommandError, Finding, HostCache, HostCommander,
    HostDirectory, HostRecord, HostStore, HostVerdict, Investigator, StoreError, Timestamp,
};

use crate::config::LivenessConfig;
use crate::error::ManagerError;
use crate::investigate;
use crate::monitor::PingMonitor;
use crate::oobm::Oobm;

mod attaches;
mod connect;
mod disconnect;
mod status;

pub(crate) use attaches::{Attaches, Investigations};
pub use status::{StatusChange, StatusChanges};

/// Who raises the host-down alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostDownAlert {
    /// The agent manager raises it (liveness alone, no VM-HA).
    #[default]
    Raise,
    /// An HA manager over this agent manager raises it, with the list of the host's VMs (as
    /// CloudStack's `scheduleRestartForVmsOnHost` does); the agent manager stays silent.
    LeftToHa,
}

/// The ports the manager is built on. Make one with [`Ports::new`] and add what is optional.
#[non_exhaustive]
pub struct Ports {
    /// Host records, durable. Loaded into the manager's cache at [`AgentManager::start`]; status
    /// changes are written through, last-ping times in batches.
    pub store: Arc<dyn HostStore>,
    /// The listener registry (the manager registers its ping monitor in it).
    pub registry: Arc<dyn ListenerRegistry>,
    /// Where alerts go.
    pub alerts: Arc<dyn AlertSink>,
    /// The time of day for records (`SystemClock`, or a `TokioClock` under paused time).
    pub clock: Arc<dyn Clock>,
    /// The investigator chain; `None`: built from `ha.investigators.order` over the manager's
    /// own attaches, host cache and `oobm`.
    pub investigators: Option<Vec<Arc<dyn Investigator>>>,
    /// Out-of-band management: a host's power reading is evidence independent of its agent
    /// (share the same [`Oobm`] with the power fencer, so a fence reuses a fresh reading).
    pub oobm: Option<Arc<Oobm>>,
    /// Who raises the host-down alert.
    pub host_down_alert: HostDownAlert,
}

impl Ports {
    /// The required ports; no investigators of its own (the configured chain), no BMC access,
    /// and the agent manager raises host-down alerts.
    pub fn new(
        store: Arc<dyn HostStore>,
        registry: Arc<dyn ListenerRegistry>,
        alerts: Arc<dyn AlertSink>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            registry,
            alerts,
            clock,
            investigators: None,
            oobm: None,
            host_down_alert: HostDownAlert::Raise,
        }
    }

    /// With this investigator chain instead of the configured one.
    #[must_use]
    pub fn with_investigators(mut self, investigators: Vec<Arc<dyn Investigator>>) -> Self {
        self.investigators = Some(investigators);
        self
    }

    /// With out-of-band management.
    #[must_use]
    pub fn with_oobm(mut self, oobm: Arc<Oobm>) -> Self {
        self.oobm = Some(oobm);
        self
    }

    /// With this choice of who raises host-down alerts.
    #[must_use]
    pub fn with_host_down_alert(mut self, who: HostDownAlert) -> Self {
        self.host_down_alert = who;
        self
    }
}

/// Status changes kept per host (the newest; older ones are dropped in batches).
pub const HISTORY_LIMIT: usize = 1024;

/// Where a component is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    New,
    Running,
    Stopped,
}

struct Inner {
    config: LivenessConfig,
    store: Arc<dyn HostStore>,
    /// Every host record, loaded at start: what the ping path and every decision read.
    hosts: Arc<HostCache>,
    clock: Arc<dyn Clock>,
    registry: Arc<dyn ListenerRegistry>,
    alerts: Arc<dyn AlertSink>,
    host_down_alert: HostDownAlert,
    investigations: Arc<Investigations>,
    investigators: Vec<Arc<dyn Investigator>>,
    attaches: Arc<Attaches>,
    monitor: Arc<PingMonitor>,
    direct: Mutex<BTreeMap<HostId, Arc<dyn ServerResource>>>,
    tasks: Tasks,
    life: Mutex<Life>,
    history: Mutex<HashMap<HostId, Vec<StatusChange>>>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<StatusChange>>>,
    host_locks: Mutex<HashMap<HostId, Arc<tokio::sync::Mutex<()>>>>,
    /// Per host: held by a status write (`apply`) from its read of the cache to its record.
    status_locks: Mutex<HashMap<HostId, Arc<tokio::sync::Mutex<()>>>>,
    /// Per host: a counter bumped by every status change, and the counter at which each kind of
    /// alert was last raised (an alert repeats only after the status changed).
    epochs: Mutex<HashMap<HostId, u64>>,
    raised: Mutex<HashMap<(HostId, AlertKind), u64>>,
    lost_gateway: Mutex<HashSet<HostId>>,
    /// Last-ping times not yet written to the store (a failed batch is kept for the next).
    unsaved_pings: Mutex<HashMap<HostId, Timestamp>>,
    sink: OnceLock<Arc<dyn CommandSink>>,
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
    /// A manager over `ports`. Registers the ping monitor in the registry. Nothing runs until
    /// [`AgentManager::start`]; the manager owns its tasks (attaches, flows, loops), and
    /// [`AgentManager::stop`] ends them all.
    ///
    /// # Errors
    /// The config's validation error.
    pub fn new(config: LivenessConfig, ports: Ports) -> Result<Self, crate::error::ConfigError> {
        config.validate()?;
        let attaches = Arc::new(Attaches::default());
        let hosts = Arc::new(HostCache::new());
        let commander: Arc<dyn HostCommander> = attaches.clone();
        let directory: Arc<dyn HostDirectory> = hosts.clone();
        let investigators = ports.investigators.unwrap_or_else(|| {
            investigate::chain(&config, &commander, &directory, ports.oobm.as_ref())
        });
        let monitor = Arc::new(PingMonitor::new(
            config.ping_monitor_resolution,
            config.ping_deadline(),
        ));
        ports
            .registry
            .register(monitor.clone(), Interest::ALL, false);
        let investigations = Arc::new(Investigations::with_monitor(
            Arc::clone(&monitor),
            config.ping_interval.mul_f64(1.25),
        ));
        let inner = Arc::new(Inner {
            config,
            store: ports.store,
            hosts,
            clock: ports.clock,
            registry: ports.registry,
            alerts: ports.alerts,
            host_down_alert: ports.host_down_alert,
            investigations,
            investigators,
            attaches,
            monitor,
            direct: Mutex::new(BTreeMap::new()),
            tasks: Tasks::new(),
            life: Mutex::new(Life::New),
            history: Mutex::new(HashMap::new()),
            subscribers: Mutex::new(Vec::new()),
            host_locks: Mutex::new(HashMap::new()),
            status_locks: Mutex::new(HashMap::new()),
            epochs: Mutex::new(HashMap::new()),
            raised: Mutex::new(HashMap::new()),
            lost_gateway: Mutex::new(HashSet::new()),
            unsaved_pings: Mutex::new(HashMap::new()),
            sink: OnceLock::new(),
        });
        let _ = inner
            .sink
            .set(Arc::new(ManagerSink(Arc::downgrade(&inner))));
        Ok(Self { inner })
    }

    /// The config.
    pub fn config(&self) -> &LivenessConfig {
        &self.inner.config
    }

    /// The sink attaches deliver to (give it to the acceptor: [`cloudha_attache::listen`]).
    pub fn sink(&self) -> Arc<dyn CommandSink> {
        Arc::clone(self.inner.sink.get().expect("set in new"))
    }

    /// The tasks of the manager: give them to the acceptor, so that connected agents' attaches
    /// end with the manager.
    pub fn tasks(&self) -> &Tasks {
        &self.inner.tasks
    }

    /// Sends commands to hosts through their attaches (what investigators and fencers use).
    pub fn commander(&self) -> Arc<dyn HostCommander> {
        self.inner.attaches.clone()
    }

    /// The listener registry the manager dispatches to (another component, such as the HA
    /// manager, registers its own listeners there).
    pub fn registry(&self) -> &Arc<dyn ListenerRegistry> {
        &self.inner.registry
    }

    /// The investigator chain (the HA side uses it for VM verdicts).
    pub fn investigators(&self) -> Vec<Arc<dyn Investigator>> {
        self.inner.investigators.clone()
    }

    /// Whether `host` is suspect right now: under investigation, or tracked by the ping
    /// monitor and silent for longer than `1.25 × ping.interval` (it missed a ping). The HA
    /// manager's brake counts these.
    pub fn is_suspect(&self, host: HostId) -> bool {
        self.inner.investigations.suspect(host)
    }

    /// Whether `host` is being investigated right now.
    pub fn is_investigating(&self, host: HostId) -> bool {
        self.inner.investigations.contains(host)
    }

    /// The hosts as the manager knows them (its cache of the store: plain, fast reads).
    pub fn hosts(&self) -> Arc<dyn HostDirectory> {
        self.inner.hosts.clone()
    }

    /// The time of day the manager stamps records with.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Who raises host-down alerts.
    pub fn host_down_alert(&self) -> HostDownAlert {
        self.inner.host_down_alert
    }

    /// The last ping of `host` while the monitor tracks it (exact; the record's `last_ping` is
    /// written in batches).
    pub fn last_ping(&self, host: HostId) -> Option<Timestamp> {
        let at = self.inner.monitor.last_ping(host)?;
        Some(self.inner.stamp(at))
    }

    /// Hosts the ping monitor tracks (connected, and not behind on ping).
    pub fn tracked(&self) -> usize {
        self.inner.monitor.tracked()
    }

    /// The attache of `host`, if connected.
    pub fn attache(&self, host: HostId) -> Option<Arc<dyn Attache>> {
        self.inner.attaches.get(host)
    }

    /// Adds a host record (its agent connects later) and tells the connection listeners.
    ///
    /// # Errors
    /// The store's: the host is then not added.
    pub async fn add_host(&self, record: HostRecord) -> Result<(), StoreError> {
        let id = record.id;
        self.inner.store.upsert(&record).await?;
        self.inner.hosts.upsert(record);
        self.inner.registry.dispatch_host_added(id);
        Ok(())
    }

    /// Adds a directly managed host, polled through `resource`. It is connected by the
    /// direct-agent scan (at start, then every `direct.agent.scan.interval`) or [`Self::connect_direct`].
    ///
    /// # Errors
    /// The store's: the host is then not added.
    pub async fn add_direct_host(
        &self,
        record: HostRecord,
        resource: Arc<dyn ServerResource>,
    ) -> Result<(), StoreError> {
        let id = record.id;
        self.add_host(record).await?;
        lock(&self.inner.direct).insert(id, resource);
        Ok(())
    }

    /// Registers the resource of a direct host whose record is already in the store (a manager
    /// restarting over a surviving store).
    pub fn register_direct(&self, host: HostId, resource: Arc<dyn ServerResource>) {
        lock(&self.inner.direct).insert(host, resource);
    }

    /// Sets a host's administrative state (enable, disable, maintenance, degraded): the monitor
    /// rules read it. Written to the store first.
    ///
    /// # Errors
    /// Unknown host; the store's.
    pub async fn set_resource_state(
        &self,
        host: HostId,
        state: ResourceState,
    ) -> Result<(), StoreError> {
        if self.inner.hosts.get(host).is_none() {
            return Err(StoreError::UnknownHost(host));
        }
        self.inner.store.set_resource_state(host, state).await?;
        self.inner.hosts.set_resource_state(host, state)
    }

    /// Follows every status change from now on, none lost: the stream holds what the subscriber
    /// has not read yet, so a subscriber must keep reading (the HA manager does). Dropping it
    /// unsubscribes.
    pub fn subscribe(&self) -> StatusChanges {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.inner.subscribers).push(tx);
        StatusChanges::new(rx)
    }

    /// The status changes of `host`, oldest first (at least the last [`HISTORY_LIMIT`]).
    pub fn history(&self, host: HostId) -> Vec<StatusChange> {
        lock(&self.inner.history)
            .get(&host)
            .cloned()
            .unwrap_or_default()
    }

    /// Manager start (§8, spec README): every host record is loaded from the store; every host
    /// not Down gets `ManagementServerDown` and a ping deadline of now + T; hosts already in
    /// Alert are re-investigated; the monitor, the last-ping writer and the direct-agent scan
    /// start. Starting a running manager does nothing.
    ///
    /// # Errors
    /// [`ManagerError::Stopped`] after [`Self::stop`]; the store's when the records cannot be
    /// loaded (nothing then runs: call again).
    pub async fn start(&self) -> Result<(), ManagerError> {
        let inner = &self.inner;
        match *lock(&inner.life) {
            Life::Running => return Ok(()),
            Life::Stopped => return Err(ManagerError::Stopped),
            Life::New => {}
        }
        let records = inner.store.list().await?;
        {
            let mut life = lock(&inner.life);
            if *life != Life::New {
                return if *life == Life::Running {
                    Ok(())
                } else {
                    Err(ManagerError::Stopped)
                };
            }
            *life = Life::Running;
        }
        inner.hosts.replace_all(records);
        let now = Instant::now();
        for rec in inner.hosts.list() {
            let Some(status) = rec.status else { continue };
            if matches!(status, Status::Down | Status::Removed) {
                continue;
            }
            if Status::transition(Some(status), Event::ManagementServerDown).is_ok()
                && let Err(e) = inner
                    .apply(
                        rec.id,
                        Event::ManagementServerDown,
                        "management server started".into(),
                    )
                    .await
            {
                tracing::warn!(host.id = %rec.id, error = %e, "start: status not changed");
            }
            if inner.hosts.status(rec.id) == Some(Status::Alert) {
                inner
                    .monitor
                    .schedule_alert(rec.id, now + inner.config.alert_reinvestigate());
            }
            inner.monitor.arm(rec.id, now);
        }
        inner.run("ping_monitor", Inner::monitor_loop);
        inner.run("last_pings", Inner::last_ping_loop);
        inner.run("direct_scan", Inner::direct_scan_loop);
        Ok(())
    }

    /// Manager stop: attached hosts get `ManagementServerDown`, attaches are disconnected, the
    /// last pings are written, and every task of the manager ends before this returns. Stopping
    /// twice does nothing more; other components (an HA manager) are not stopped.
    pub async fn stop(&self) {
        let inner = &self.inner;
        if std::mem::replace(&mut *lock(&inner.life), Life::Stopped) == Life::Stopped {
            return;
        }
        inner.tasks.shutdown().await;
        for (host, attache) in inner.attaches.drain() {
            attache.disconnect();
            if let Err(e) = inner
                .apply(
                    host,
                    Event::ManagementServerDown,
                    "management server stopping".into(),
                )
                .await
            {
                tracing::warn!(host.id = %host, error = %e, "stop: status not changed");
            }
        }
        inner.save_last_pings().await;
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

    /// Disconnect without investigation (§4.3): the agent is removed and the host takes the
    /// event's status.
    ///
    /// # Errors
    /// A refused transition or store error.
    pub async fn disconnect_without_investigation(
        &self,
        host: HostId,
        event: Event,
    ) -> Result<(), ManagerError> {
        let _guard = self.inner.lock_host(host).await;
        self.inner
            .disconnect_without_investigation_locked(host, event, "disconnect requested")
            .await
    }

    /// Investigates a host: CheckHealth on the host (while Up or Connecting) and the chain at
    /// once; returns the finding and who made it.
    pub async fn investigate(&self, host: HostId) -> Option<(Finding, &'static str)> {
        let rec = self.inner.hosts.get(host)?;
        self.inner.investigate(&rec).await
    }

    /// Applies a status event through the §4.2 table (the one place that changes status),
    /// written through to the store.
    ///
    /// # Errors
    /// [`ManagerError::Transition`] naming the status and event when the table has no such
    /// cell; the store's (the status is then unchanged).
    pub async fn apply(
        &self,
        host: HostId,
        event: Event,
        reason: impl Into<String>,
    ) -> Result<StatusChange, ManagerError> {
        self.inner.apply(host, event, reason.into()).await
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

    /// Runs one of the manager's loops until stop.
    fn run<F, Fut>(self: &Arc<Self>, name: &'static str, body: F)
    where
        F: FnOnce(Arc<Self>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let fut = body(Arc::clone(self));
        self.tasks.spawn(
            self.tasks.token().child_token(),
            fut.instrument(tracing::info_span!("agent_manager", task = name)),
        );
    }

    /// The time of day of a monotonic instant in the past (or now).
    fn stamp(&self, at: Instant) -> Timestamp {
        self.clock
            .now()
            .saturating_sub(Instant::now().saturating_duration_since(at))
    }
}
