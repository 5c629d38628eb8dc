//! The harness itself: an agent manager over an in-memory store, the real registry and the
//! recording fakes, on one paused-time clock.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use cloudha_registry::Registry;
use tokio::time::Instant;

use super::{FakeHost, RecordingAlerts, RecordingHa, ScriptedInvestigator};

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

pub(crate) fn harness(config: LivenessConfig) -> Harness {
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
    config: &LivenessConfig,
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

pub(crate) fn harness_with(config: LivenessConfig, wiring: Wiring) -> Harness {
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
