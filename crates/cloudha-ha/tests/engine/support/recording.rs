//! Recording fakes: the alerts raised and cleared, what VM-HA would see, a fencer's calls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use cloudha_registry::{ListenerRegistry, Registry};

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
    pub(super) fn follow(manager: &AgentManager, registry: &Registry) -> Self {
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
