//! Fake hosts: a directly managed host whose behaviour a test switches, and a host directory set
//! once the agent manager exists.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cloudha_attache::ServerResource;
use cloudha_ports::{HostDirectory, HostRecord};
use cloudha_protocol::*;
use tokio::time::{Instant, sleep};

/// A host directory set once the agent manager exists: investigators and fencers built before
/// the manager (they are among its ports) read its cache through this.
#[derive(Default)]
pub struct LateHosts(OnceLock<Arc<dyn HostDirectory>>);

impl LateHosts {
    /// A directory not set yet (reading it panics until [`LateHosts::set`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the directory read from now on, typically `manager.hosts()`. Panics if set twice.
    pub fn set(&self, hosts: Arc<dyn HostDirectory>) {
        assert!(self.0.set(hosts).is_ok(), "set once");
    }

    fn hosts(&self) -> &dyn HostDirectory {
        &**self.0.get().expect("the manager's hosts are set")
    }
}

impl HostDirectory for LateHosts {
    fn get(&self, id: HostId) -> Option<HostRecord> {
        self.hosts().get(id)
    }
    fn status(&self, id: HostId) -> Option<Status> {
        self.hosts().status(id)
    }
    fn list(&self) -> Vec<HostRecord> {
        self.hosts().list()
    }
    fn in_cluster(&self, cluster: ClusterId) -> Vec<HostRecord> {
        self.hosts().in_cluster(cluster)
    }
    fn in_pod(&self, pod: PodId) -> Vec<HostRecord> {
        self.hosts().in_pod(pod)
    }
}

/// A directly managed host (a XenServer-like [`ServerResource`]) whose behaviour the test
/// switches through its public flags. Fresh, it is reachable, pings, is ready, has its gateway
/// and fails health checks.
#[derive(Debug)]
pub struct FakeHost {
    /// Its id.
    pub id: HostId,
    /// What its startup command says it is.
    pub host_type: HostType,
    /// It answers at all: startup and commands (off: no startup, every command fails).
    pub reachable: AtomicBool,
    /// Its PingTask gets a status from it (off: no ping).
    pub pinging: AtomicBool,
    /// CheckHealth succeeds.
    pub health_ok: AtomicBool,
    /// CheckHealth gets no answer (its wait runs out).
    pub health_hangs: AtomicBool,
    /// ReadyCommand succeeds.
    pub ready_ok: AtomicBool,
    /// Its pings say the gateway is reachable.
    pub gateway: AtomicBool,
    /// When each of its pings was taken.
    pub pings: Mutex<Vec<Instant>>,
}

impl FakeHost {
    /// A healthy host of this id and type.
    pub fn new(id: HostId, host_type: HostType) -> Arc<Self> {
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
    pub fn power_off(&self) {
        self.pinging.store(false, Ordering::SeqCst);
        self.reachable.store(false, Ordering::SeqCst);
    }

    /// When its last ping was taken. Panics if it never pinged.
    pub fn last_ping(&self) -> Instant {
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
