//! The test harness: a manager over an in-memory store, the real registry, recording alert and
//! HA ports, a scripted investigator, and fake direct hosts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudha_attache::{RequestError, ServerResource};
use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use cloudha_registry::{ListenerRegistry, Registry};
use tokio::time::{Instant, sleep};

/// Records raised alerts (`.0`) and cleared ones (`.1`).
#[derive(Default)]
pub(crate) struct RecordingAlerts(
    pub(crate) Mutex<Vec<Alert>>,
    pub(crate) Mutex<Vec<(AlertKind, HostId)>>,
);

impl AlertSink for RecordingAlerts {
    fn raise(&self, alert: Alert) {
        self.0.lock().unwrap().push(alert);
    }
    fn clear(&self, kind: AlertKind, host: HostId) {
        self.1.lock().unwrap().push((kind, host));
    }
}

impl RecordingAlerts {
    /// The alerts of one kind about `host`.
    pub(crate) fn of(&self, kind: AlertKind, host: HostId) -> Vec<Alert> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.kind == kind && a.host == Some(host))
            .cloned()
            .collect()
    }

    pub(crate) fn kinds(&self, host: HostId) -> Vec<AlertKind> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.host == Some(host))
            .map(|a| a.kind)
            .collect()
    }
}

/// What VM-HA would see, without an HA manager: the hosts that went Down (from the status
/// stream, as the HA manager follows it) and the VM power reports (a registry listener, as the
/// HA manager's: an Up routing host's pings, and each connect's startup).
pub(crate) struct RecordingHa {
    changes: Mutex<StatusChanges>,
    downs: Mutex<Vec<(HostId, WorkReason, bool)>>,
    pub(crate) reports: Arc<AtomicUsize>,
}

struct CountReports {
    hosts: Arc<dyn HostDirectory>,
    reports: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl cloudha_registry::Listener for CountReports {
    fn process_commands(&self, host: HostId, _: Sequence, commands: &[Command]) -> bool {
        for c in commands {
            if matches!(c, Command::PingRouting(_)) && self.hosts.status(host) == Some(Status::Up) {
                self.reports.fetch_add(1, Ordering::Relaxed);
            }
        }
        false
    }
    async fn process_connect(
        &self,
        _: HostId,
        _: &StartupCommand,
        _: bool,
    ) -> Result<(), cloudha_registry::ConnectError> {
        self.reports.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn is_recurring(&self) -> bool {
        true
    }
}

impl RecordingHa {
    fn follow(manager: &AgentManager, registry: &Registry) -> Self {
        let reports = Arc::new(AtomicUsize::new(0));
        registry.register(
            Arc::new(CountReports {
                hosts: manager.hosts(),
                reports: reports.clone(),
            }),
            cloudha_registry::Interest::ALL,
            false,
        );
        Self {
            changes: Mutex::new(manager.subscribe()),
            downs: Mutex::new(Vec::new()),
            reports,
        }
    }

    /// Every host that went Down so far, as HA would schedule it: (host, HostDown, investigate).
    pub(crate) fn scheduled(&self) -> Vec<(HostId, WorkReason, bool)> {
        let mut changes = self.changes.lock().unwrap();
        let mut downs = self.downs.lock().unwrap();
        while let Some(c) = changes.try_recv() {
            if c.to == Status::Down && c.from != Some(Status::Down) {
                downs.push((c.host, WorkReason::HostDown, true));
            }
        }
        downs.clone()
    }
}

/// A host directory set once the agent manager exists: investigators and fencers built before
/// it read its cache.
#[derive(Default)]
pub(crate) struct LateHosts(std::sync::OnceLock<Arc<dyn HostDirectory>>);

impl LateHosts {
    pub(crate) fn set(&self, hosts: Arc<dyn HostDirectory>) {
        assert!(self.0.set(hosts).is_ok(), "set once");
    }
    fn get_hosts(&self) -> &dyn HostDirectory {
        &**self.0.get().expect("the manager's hosts are set")
    }
}

impl HostDirectory for LateHosts {
    fn get(&self, id: HostId) -> Option<HostRecord> {
        self.get_hosts().get(id)
    }
    fn status(&self, id: HostId) -> Option<Status> {
        self.get_hosts().status(id)
    }
    fn list(&self) -> Vec<HostRecord> {
        self.get_hosts().list()
    }
    fn in_cluster(&self, cluster: ClusterId) -> Vec<HostRecord> {
        self.get_hosts().in_cluster(cluster)
    }
    fn in_pod(&self, pod: PodId) -> Vec<HostRecord> {
        self.get_hosts().in_pod(pod)
    }
}

/// An investigator whose host verdict the test sets.
#[derive(Default)]
pub(crate) struct ScriptedInvestigator {
    pub(crate) verdict: Mutex<Option<HostVerdict>>,
    pub(crate) calls: AtomicUsize,
}

#[async_trait::async_trait]
impl Investigator for ScriptedInvestigator {
    fn name(&self) -> &'static str {
        "Scripted"
    }
    async fn host_status(&self, _host: &HostRecord) -> Option<Finding> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.verdict
            .lock()
            .unwrap()
            .map(|v| Finding::new(v, "scripted"))
    }
    async fn vm_alive(&self, _vm: VmId, _host: &HostRecord) -> VmVerdict {
        VmVerdict::Unknown
    }
}

/// A directly managed host whose behaviour the test switches.
pub(crate) struct FakeHost {
    pub(crate) id: HostId,
    pub(crate) host_type: HostType,
    pub(crate) reachable: AtomicBool,
    pub(crate) pinging: AtomicBool,
    pub(crate) health_ok: AtomicBool,
    /// CheckHealth gets no answer (its 50 s wait runs out).
    pub(crate) health_hangs: AtomicBool,
    pub(crate) ready_ok: AtomicBool,
    pub(crate) gateway: AtomicBool,
    pub(crate) pings: Mutex<Vec<Instant>>,
}

impl FakeHost {
    pub(crate) fn new(id: HostId, host_type: HostType) -> Arc<Self> {
        Arc::new(Self {
            id,
            host_type,
            reachable: AtomicBool::new(true),
            pinging: AtomicBool::new(true),
            health_ok: AtomicBool::new(false),
            health_hangs: AtomicBool::new(false),
            ready_ok: AtomicBool::new(true),
            gateway: AtomicBool::new(true),
            pings: Mutex::new(Vec::new()),
        })
    }

    /// The host dies: no status, no startup, no answers.
    pub(crate) fn power_off(&self) {
        self.pinging.store(false, Ordering::SeqCst);
        self.reachable.store(false, Ordering::SeqCst);
    }

    pub(crate) fn last_ping(&self) -> Instant {
        *self.pings.lock().unwrap().last().expect("pinged")
    }
}

#[async_trait::async_trait]
impl ServerResource for FakeHost {
    async fn initialize(&self) -> Vec<Command> {
        if !self.reachable.load(Ordering::SeqCst) {
            return Vec::new();
        }
        vec![Command::Startup(StartupCommand {
            host_id: self.id,
            host_type: Some(self.host_type),
            hypervisor: Some(HypervisorType::XenServer),
            ..Default::default()
        })]
    }
    async fn get_current_status(&self, host: HostId) -> Option<Command> {
        if !self.pinging.load(Ordering::SeqCst) {
            return None;
        }
        self.pings.lock().unwrap().push(Instant::now());
        Some(Command::PingRouting(PingRoutingCommand {
            host_id: host,
            vm_states: vec![],
            gateway_accessible: self.gateway.load(Ordering::SeqCst),
        }))
    }
    async fn execute(&self, command: Command) -> Answer {
        if !self.reachable.load(Ordering::SeqCst) {
            return Answer::failure("unreachable");
        }
        if matches!(command, Command::CheckHealth(_)) && self.health_hangs.load(Ordering::SeqCst) {
            sleep(Duration::from_secs(3600)).await;
        }
        match command {
            Command::Ready(_) if self.ready_ok.load(Ordering::SeqCst) => Answer::ok(),
            Command::Ready(_) => Answer::failure("not ready"),
            Command::CheckHealth(_) if self.health_ok.load(Ordering::SeqCst) => Answer::ok(),
            Command::CheckHealth(_) => Answer::failure("unhealthy"),
            _ => Answer::ok(),
        }
    }
    fn disconnected(&self) {}
}

pub(crate) struct Harness {
    pub(crate) manager: AgentManager,
    pub(crate) clock: TokioClock,
    pub(crate) store: Arc<InMemoryHostStore>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) alerts: Arc<RecordingAlerts>,
    pub(crate) ha: Arc<RecordingHa>,
    pub(crate) investigator: Arc<ScriptedInvestigator>,
}

/// How a harness is wired beyond the defaults of [`harness`].
pub(crate) struct Wiring {
    /// The store (a chain built before the manager needs it).
    pub(crate) store: Arc<InMemoryHostStore>,
    /// The store port the manager writes through; `None`: `store` itself.
    pub(crate) store_port: Option<Arc<dyn HostStore>>,
    /// Host-down alerts are left to VM-HA (as with an HA manager); without, the manager raises
    /// them itself.
    pub(crate) ha: bool,
    /// The investigator chain; `None`: the scripted investigator alone.
    pub(crate) investigators: Option<Vec<Arc<dyn Investigator>>>,
    /// The BMC front.
    pub(crate) oobm: Option<Arc<Oobm>>,
}

impl Default for Wiring {
    fn default() -> Self {
        Self {
            store: Arc::new(InMemoryHostStore::new()),
            store_port: None,
            ha: true,
            investigators: None,
            oobm: None,
        }
    }
}

pub(crate) fn harness(config: Config) -> Harness {
    harness_with(config, Wiring::default())
}

/// The clock of every harness: tokio's paused time from the simulator's epoch.
pub(crate) fn clock() -> Arc<dyn Clock> {
    Arc::new(tokio_clock())
}

/// Every clock of one test maps tokio's paused time onto the epoch from the same instant (the
/// first use in the test's thread), so their timestamps compare.
pub(crate) fn tokio_clock() -> TokioClock {
    thread_local! {
        static ORIGIN: std::cell::OnceCell<Instant> = const { std::cell::OnceCell::new() };
    }
    let origin = ORIGIN.with(|o| *o.get_or_init(Instant::now));
    TokioClock::with_origin(Timestamp::from_micros(1_767_225_600_000_000), origin)
}

/// An agent manager over the records of `store` (loaded into its cache, never started), leaving
/// host-down alerts to HA: for HA tests that move host status through it.
pub(crate) async fn agent_over(
    config: &Config,
    store: &Arc<InMemoryHostStore>,
    alerts: Arc<dyn AlertSink>,
) -> AgentManager {
    let agent = AgentManager::new(
        config.clone(),
        Ports::new(
            store.clone(),
            Arc::new(Registry::default()),
            alerts,
            clock(),
        )
        .with_investigators(Vec::new())
        .with_host_down_alert(HostDownAlert::LeftToHa),
    )
    .unwrap();
    for r in store.list() {
        agent.add_host(r).await.unwrap();
    }
    agent
}

pub(crate) fn harness_with(config: Config, wiring: Wiring) -> Harness {
    let store = wiring.store;
    let port: Arc<dyn HostStore> = wiring.store_port.unwrap_or_else(|| store.clone());
    let registry = Arc::new(Registry::default());
    let alerts = Arc::new(RecordingAlerts::default());
    let investigator = Arc::new(ScriptedInvestigator::default());
    let tokio_clock = tokio_clock();
    let mut ports = Ports::new(
        port,
        registry.clone(),
        alerts.clone(),
        Arc::new(tokio_clock),
    )
    .with_investigators(
        wiring
            .investigators
            .unwrap_or_else(|| vec![investigator.clone()]),
    )
    .with_host_down_alert(if wiring.ha {
        HostDownAlert::LeftToHa
    } else {
        HostDownAlert::Raise
    });
    if let Some(oobm) = wiring.oobm {
        ports = ports.with_oobm(oobm);
    }
    let manager = AgentManager::new(config, ports).unwrap();
    let ha = Arc::new(RecordingHa::follow(&manager, &registry));
    Harness {
        manager,
        clock: tokio_clock,
        store,
        registry,
        alerts,
        ha,
        investigator,
    }
}

impl Harness {
    /// Adds every record already in the store to the manager's cache (a manager that is not
    /// started loads nothing).
    pub(crate) async fn load_store(&self) {
        for r in self.store.list() {
            self.manager.add_host(r).await.unwrap();
        }
    }

    /// The instant of a record's timestamp.
    pub(crate) fn when(&self, at: Timestamp) -> Instant {
        self.clock.instant(at)
    }

    pub(crate) fn status(&self, host: HostId) -> Option<Status> {
        self.store.status(host)
    }

    pub(crate) fn record(
        id: HostId,
        host_type: HostType,
        resource_state: ResourceState,
    ) -> HostRecord {
        let mut r = HostRecord::new(id, format!("h{id}"), HypervisorType::XenServer);
        r.host_type = host_type;
        r.resource_state = resource_state;
        r.cluster = Some(ClusterId(1));
        r.pod = Some(PodId(1));
        r.zone = Some(ZoneId(1));
        r
    }

    /// Adds a direct host and connects it; it ends Up.
    pub(crate) async fn add_up(
        &self,
        id: u64,
        host_type: HostType,
        state: ResourceState,
    ) -> Arc<FakeHost> {
        self.add_up_record(Self::record(HostId(id), host_type, state))
            .await
    }

    /// Adds a direct host with this record and connects it; it ends Up.
    pub(crate) async fn add_up_record(&self, record: HostRecord) -> Arc<FakeHost> {
        let id = record.id;
        let host = FakeHost::new(id, record.host_type);
        self.manager
            .add_direct_host(record, host.clone())
            .await
            .unwrap();
        assert!(self.manager.connect_direct(id).await, "host {id} connects");
        assert_eq!(self.status(id), Some(Status::Up));
        host
    }

    pub(crate) fn events(&self, host: HostId) -> Vec<(Option<Status>, Event, Status)> {
        self.manager
            .history(host)
            .iter()
            .map(|c| (c.from, c.event, c.to))
            .collect()
    }

    pub(crate) fn set_verdict(&self, v: Option<HostVerdict>) {
        *self.investigator.verdict.lock().unwrap() = v;
    }

    pub(crate) fn investigations(&self) -> usize {
        self.investigator.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn scheduled(&self) -> Vec<(HostId, WorkReason, bool)> {
        self.ha.scheduled()
    }

    pub(crate) async fn shutdown(self) {
        self.manager.stop().await;
        self.registry.shutdown().await;
    }
}

/// What a scripted host answers to one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Says {
    /// A heartbeat check (CheckOnHost, or a FenceCommand): alive or dead, with the age it read.
    Beat { alive: bool, age: Option<Duration> },
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
pub(crate) const ALIVE: Says = Says::Beat {
    alive: true,
    age: None,
};
/// A neighbour's heartbeat check: dead, no age given.
pub(crate) const DEAD: Says = Says::Beat {
    alive: false,
    age: None,
};

/// Dead, read `secs` after the last good write.
pub(crate) const fn dead_for(secs: u64) -> Says {
    Says::Beat {
        alive: false,
        age: Some(Duration::from_secs(secs)),
    }
}

/// The kind of a probe command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Probe {
    CheckOnHost,
    PingTest,
    Fence,
    Other,
}

impl Probe {
    pub(crate) fn of(command: &Command) -> Self {
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
#[derive(Default)]
pub(crate) struct FakeCommander {
    script: Mutex<HashMap<Key, VecDeque<Says>>>,
    pub(crate) sent: Mutex<Vec<(Instant, HostId, Command)>>,
}

impl FakeCommander {
    /// From now on `via` answers `probe` about any host with `says` in turn (the last repeats).
    pub(crate) fn on(&self, via: u64, probe: Probe, says: &[Says]) {
        self.script
            .lock()
            .unwrap()
            .insert((HostId(via), probe, None), says.iter().copied().collect());
    }

    /// From now on `via` answers `probe` about `target` with `says` in turn.
    pub(crate) fn on_to(&self, via: u64, probe: Probe, target: HostId, says: &[Says]) {
        self.script.lock().unwrap().insert(
            (HostId(via), probe, Some(target)),
            says.iter().copied().collect(),
        );
    }

    /// The commands of one kind sent, as (via, when).
    pub(crate) fn sent(&self, probe: Probe) -> Vec<(HostId, Instant)> {
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

/// What a scripted BMC does with one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bmc {
    /// Power status: this state. Power off: done.
    Is(PowerState),
    /// Refuses or is unreachable (an error at once).
    Refuses,
    /// No answer (the Oobm's bound runs out).
    Hangs,
}

/// An `OutOfBandManagement` from a script (per call kind a list, the last one repeating), counting
/// every call.
pub(crate) struct FakeBmc {
    status: Mutex<VecDeque<Bmc>>,
    off: Mutex<VecDeque<Bmc>>,
    pub(crate) calls: Mutex<Vec<(&'static str, HostId)>>,
}

impl FakeBmc {
    pub(crate) fn new(status: &[Bmc], off: &[Bmc]) -> Arc<Self> {
        Arc::new(Self {
            status: Mutex::new(status.iter().copied().collect()),
            off: Mutex::new(off.iter().copied().collect()),
            calls: Mutex::new(Vec::new()),
        })
    }

    /// A BMC that always reads `state` and accepts an Off.
    pub(crate) fn reading(state: PowerState) -> Arc<Self> {
        Self::new(&[Bmc::Is(state)], &[Bmc::Is(PowerState::Off)])
    }

    /// The calls of one kind (`"status"`, `"off"`, `"reset"`).
    pub(crate) fn count(&self, what: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(w, _)| *w == what)
            .count()
    }

    /// Every call made.
    pub(crate) fn total(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn next(q: &Mutex<VecDeque<Bmc>>) -> Bmc {
        let mut q = q.lock().unwrap();
        if q.len() > 1 {
            q.pop_front().unwrap()
        } else {
            q.front().copied().unwrap_or(Bmc::Refuses)
        }
    }

    async fn act(host: HostId, b: Bmc) -> Result<PowerState, OobError> {
        match b {
            Bmc::Is(s) => Ok(s),
            Bmc::Refuses => Err(OobError {
                host,
                reason: "BMC unreachable".into(),
            }),
            Bmc::Hangs => {
                sleep(Duration::from_secs(3600)).await;
                Err(OobError {
                    host,
                    reason: "hung".into(),
                })
            }
        }
    }

    /// An `Oobm` over this BMC with the default bound.
    pub(crate) fn front(self: &Arc<Self>) -> Arc<Oobm> {
        Arc::new(Oobm::new(
            self.clone(),
            Config::default().oobm_action_timeout,
            clock(),
        ))
    }
}

#[async_trait::async_trait]
impl OutOfBandManagement for FakeBmc {
    async fn power_status(&self, host: HostId) -> Result<PowerState, OobError> {
        self.calls.lock().unwrap().push(("status", host));
        Self::act(host, Self::next(&self.status)).await
    }
    async fn power_off(&self, host: HostId) -> Result<(), OobError> {
        self.calls.lock().unwrap().push(("off", host));
        Self::act(host, Self::next(&self.off)).await.map(|_| ())
    }
    async fn power_reset(&self, host: HostId) -> Result<(), OobError> {
        self.calls.lock().unwrap().push(("reset", host));
        Ok(())
    }
}

/// A fencer wrapper counting its calls.
pub(crate) struct Counting<F> {
    pub(crate) inner: F,
    pub(crate) calls: AtomicUsize,
}

impl<F> Counting<F> {
    pub(crate) fn new(inner: F) -> Arc<Self> {
        Arc::new(Self {
            inner,
            calls: AtomicUsize::new(0),
        })
    }
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl<F: cloudha_ha::Fencer> cloudha_ha::Fencer for Counting<F> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn fence(&self, vm: &VmRecord, host: &HostRecord) -> cloudha_ha::FenceOutcome {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.fence(vm, host).await
    }
}
