//! Fake hosts and what reads them: a host directory set late, a scripted investigator, and a
//! directly managed host whose behaviour the test switches.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudha_attache::ServerResource;
use cloudha_ports::*;
use cloudha_protocol::*;
use tokio::time::{Instant, sleep};

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
