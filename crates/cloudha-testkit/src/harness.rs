//! The harness: an agent manager over an in-memory host store, the real registry, recording
//! alerts and a scripted investigator, on one paused-time clock; what VM-HA would see of it; the
//! clocks every fake shares; an agent manager for HA tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use cloudha_registry::{ListenerRegistry, Registry};
use tokio::time::Instant;

use crate::{FakeHost, RecordingAlerts, ScriptedInvestigator};

/// An agent manager (not started) over an in-memory host store, the real registry, recording
/// alerts, a scripted investigator and [`tokio_clock`]; with what VM-HA would see of it.
pub struct Harness {
    /// The agent manager under test.
    pub manager: AgentManager,
    /// Its clock.
    pub clock: TokioClock,
    /// The in-memory store (under the store port, if the wiring gave another).
    pub store: Arc<InMemoryHostStore>,
    /// The registry the manager dispatches through.
    pub registry: Arc<Registry>,
    /// The alerts the manager raised and cleared.
    pub alerts: Arc<RecordingAlerts>,
    /// What VM-HA would see.
    pub ha: Arc<RecordingHa>,
    /// The scripted investigator (in the chain unless the wiring gave another chain).
    pub investigator: Arc<ScriptedInvestigator>,
}

/// How a harness is wired beyond the defaults of [`Harness::new`].
pub struct Wiring {
    /// The in-memory store (given, to seed it or to build ports over it before the harness).
    pub store: Arc<InMemoryHostStore>,
    /// The store port the manager writes through; `None`: `store` itself.
    pub store_port: Option<Arc<dyn HostStore>>,
    /// Host-down alerts are left to VM-HA (as with an HA manager); without, the manager raises
    /// them itself.
    pub ha: bool,
    /// The investigator chain; `None`: the scripted investigator alone.
    pub investigators: Option<Vec<Arc<dyn Investigator>>>,
    /// The BMC front.
    pub oobm: Option<Arc<Oobm>>,
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

/// The clock of every harness: tokio's paused time from the simulator's epoch (2026-01-01).
pub fn clock() -> Arc<dyn Clock> {
    Arc::new(tokio_clock())
}

/// [`clock`] as a [`TokioClock`]. Every clock of one test maps tokio's paused time onto the epoch
/// from the same instant (the first call in the test's thread), so their timestamps compare.
pub fn tokio_clock() -> TokioClock {
    thread_local! {
        static ORIGIN: std::cell::OnceCell<Instant> = const { std::cell::OnceCell::new() };
    }
    let origin = ORIGIN.with(|o| *o.get_or_init(Instant::now));
    TokioClock::with_origin(Timestamp::from_micros(1_767_225_600_000_000), origin)
}

/// An agent manager over the records of `store` (loaded into its cache, never started), leaving
/// host-down alerts to HA: for HA tests that move host status through it. Panics if the manager
/// refuses `config`.
pub async fn agent_over(
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

impl Harness {
    /// The default wiring: host-down alerts left to VM-HA, the scripted investigator alone.
    /// Panics if the manager refuses `config`.
    pub fn new(config: LivenessConfig) -> Self {
        Self::with_wiring(config, Wiring::default())
    }

    /// Wired as `wiring` says. Panics if the manager refuses `config`.
    pub fn with_wiring(config: LivenessConfig, wiring: Wiring) -> Self {
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

    /// Adds every record already in the store to the manager's cache (a manager that is not
    /// started loads nothing).
    pub async fn load_store(&self) {
        for r in self.store.list() {
            self.manager.add_host(r).await.unwrap();
        }
    }

    /// The instant of a record's timestamp.
    pub fn when(&self, at: Timestamp) -> Instant {
        self.clock.instant(at)
    }

    /// The stored status of `host`.
    pub fn status(&self, host: HostId) -> Option<Status> {
        self.store.status(host)
    }

    /// A XenServer host record in cluster, pod and zone 1, named `h<id>`.
    pub fn record(id: HostId, host_type: HostType, resource_state: ResourceState) -> HostRecord {
        let mut r = HostRecord::new(id, format!("h{id}"), HypervisorType::XenServer);
        r.host_type = host_type;
        r.resource_state = resource_state;
        r.cluster = Some(ClusterId(1));
        r.pod = Some(PodId(1));
        r.zone = Some(ZoneId(1));
        r
    }

    /// Adds a direct host ([`Harness::record`]) and connects it; it ends Up (panics otherwise).
    pub async fn add_up(
        &self,
        id: u64,
        host_type: HostType,
        state: ResourceState,
    ) -> Arc<FakeHost> {
        self.add_up_record(Self::record(HostId(id), host_type, state))
            .await
    }

    /// Adds a direct host with this record and connects it; it ends Up (panics otherwise).
    pub async fn add_up_record(&self, record: HostRecord) -> Arc<FakeHost> {
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

    /// The status changes of `host` the manager made, as (from, event, to).
    pub fn events(&self, host: HostId) -> Vec<(Option<Status>, Event, Status)> {
        self.manager
            .history(host)
            .iter()
            .map(|c| (c.from, c.event, c.to))
            .collect()
    }

    /// From now on the scripted investigator finds `v` about any host.
    pub fn set_verdict(&self, v: Option<HostVerdict>) {
        self.investigator.set_host_verdict(v);
    }

    /// The host investigations the scripted investigator made.
    pub fn investigations(&self) -> usize {
        self.investigator.host_calls()
    }

    /// Every host that went Down so far, as HA would schedule it (see [`RecordingHa`]).
    pub fn scheduled(&self) -> Vec<(HostId, WorkReason, bool)> {
        self.ha.scheduled()
    }

    /// Stops the manager and shuts the registry down.
    pub async fn shutdown(self) {
        self.manager.stop().await;
        self.registry.shutdown().await;
    }
}

/// What VM-HA would see, without an HA manager: the hosts that went Down (from the status
/// stream, as the HA manager follows it) and the VM power reports (a registry listener, as the
/// HA manager's: an Up routing host's pings, and each connect's startup).
pub struct RecordingHa {
    changes: Mutex<StatusChanges>,
    downs: Mutex<Vec<(HostId, WorkReason, bool)>>,
    /// The VM power reports so far: an Up routing host's pings and each connect's startup.
    pub reports: Arc<AtomicUsize>,
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
    /// Follows `manager`'s status changes from now on, and counts the power reports through a
    /// recurring listener registered with `registry`.
    pub fn follow(manager: &AgentManager, registry: &Registry) -> Self {
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
    pub fn scheduled(&self) -> Vec<(HostId, WorkReason, bool)> {
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
