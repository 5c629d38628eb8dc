//! The test harness: a manager over an in-memory store, the real registry, recording alert and
//! HA ports, a scripted investigator, and fake direct hosts.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cloudha_attache::{ServerResource, Tasks};
use cloudha_manager::*;
use cloudha_protocol::*;
use cloudha_registry::Registry;
use tokio::time::Instant;

pub(crate) struct RecordingAlerts(pub(crate) Mutex<Vec<Alert>>);

impl AlertSink for RecordingAlerts {
    fn raise(&self, alert: Alert) {
        self.0.lock().unwrap().push(alert);
    }
}

impl RecordingAlerts {
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

#[derive(Default)]
pub(crate) struct RecordingHa {
    pub(crate) scheduled: Mutex<Vec<(HostId, WorkReason, bool)>>,
    pub(crate) reports: AtomicUsize,
}

#[async_trait::async_trait]
impl HaScheduler for RecordingHa {
    async fn schedule_restarts_for_host(
        &self,
        host: &HostRecord,
        reason: WorkReason,
        investigate: bool,
    ) {
        self.scheduled
            .lock()
            .unwrap()
            .push((host.id, reason, investigate));
    }
    fn vm_power_report(&self, _host: HostId, _states: &[VmStateReport]) {
        self.reports.fetch_add(1, Ordering::Relaxed);
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
    async fn host_status(&self, _host: &HostRecord) -> Option<HostVerdict> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.verdict.lock().unwrap()
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
    pub(crate) tasks: Tasks,
    pub(crate) store: Arc<InMemoryHostStore>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) alerts: Arc<RecordingAlerts>,
    pub(crate) ha: Arc<RecordingHa>,
    pub(crate) investigator: Arc<ScriptedInvestigator>,
}

pub(crate) fn harness(config: Config) -> Harness {
    let tasks = Tasks::new();
    let store = Arc::new(InMemoryHostStore::new());
    let registry = Arc::new(Registry::default());
    let alerts = Arc::new(RecordingAlerts(Mutex::new(Vec::new())));
    let ha = Arc::new(RecordingHa::default());
    let investigator = Arc::new(ScriptedInvestigator::default());
    let manager = AgentManager::new(
        config,
        Ports {
            store: store.clone(),
            registry: registry.clone(),
            alerts: alerts.clone(),
            ha: Some(ha.clone()),
            investigators: Some(vec![investigator.clone()]),
        },
        tasks.clone(),
    )
    .unwrap();
    Harness {
        manager,
        tasks,
        store,
        registry,
        alerts,
        ha,
        investigator,
    }
}

impl Harness {
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
        let host = FakeHost::new(HostId(id), host_type);
        self.manager
            .add_direct_host(Self::record(HostId(id), host_type, state), host.clone());
        assert!(
            self.manager.connect_direct(HostId(id)).await,
            "host {id} connects"
        );
        assert_eq!(self.status(HostId(id)), Some(Status::Up));
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
        self.ha.scheduled.lock().unwrap().clone()
    }

    pub(crate) async fn shutdown(self) {
        self.manager.stop().await;
        self.registry.shutdown().await;
    }
}
