//! Alerts the manager raises, and the `AlertSink` port they go to.

use cloudha_protocol::{ClusterId, HostId, PodId, VmId, ZoneId};

/// The kind of an alert (snake_case in reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum AlertKind {
    /// A host was proven down; HA starts for its VMs.
    HostDown,
    /// A host's agent is disconnected while the host seems alive.
    HostDisconnected,
    /// A host went to Alert: its state cannot be determined.
    HostAlert,
    /// A routing host lost its gateway.
    LostGateway,
    /// The correlated-failure brake holds for a cluster.
    BrakeHolds,
    /// A VM stopped unexpectedly.
    VmStopped,
    /// HA restarted (started) a VM.
    HaRestart,
    /// A VM could not be restarted (fencing failed, no capacity, ...).
    HaRestartFailed,
    /// A host could not be fenced.
    FenceFailed,
    /// HA gave up on a work item after `max.retries`.
    HaGaveUp,
    /// A host is dead or unreachable but VM-HA is disabled (`vm.ha.enabled = false`): nothing
    /// is restarted. The only kind `vm.ha.alerts.enabled = false` mutes.
    HaDisabled,
}

impl AlertKind {
    /// The snake_case name used in reports and scenario files.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HostDown => "host_down",
            Self::HostDisconnected => "host_disconnected",
            Self::HostAlert => "host_alert",
            Self::LostGateway => "lost_gateway",
            Self::BrakeHolds => "brake_holds",
            Self::VmStopped => "vm_stopped",
            Self::HaRestart => "ha_restart",
            Self::HaRestartFailed => "ha_restart_failed",
            Self::FenceFailed => "fence_failed",
            Self::HaGaveUp => "ha_gave_up",
            Self::HaDisabled => "ha_disabled",
        }
    }
}

impl std::fmt::Display for AlertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alert. Build one with [`Alert::new`] and set what it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Alert {
    /// What kind.
    pub kind: AlertKind,
    /// The host it is about.
    pub host: Option<HostId>,
    /// The VM it is about.
    pub vm: Option<VmId>,
    /// The cluster it is about.
    pub cluster: Option<ClusterId>,
    /// The pod it is about.
    pub pod: Option<PodId>,
    /// The zone it is about.
    pub zone: Option<ZoneId>,
    /// Human-readable text.
    pub message: String,
}

impl Alert {
    /// An alert of `kind` about nothing in particular yet; set `host`, `vm`, `cluster`, `pod`,
    /// `zone`.
    pub fn new(kind: AlertKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            host: None,
            vm: None,
            cluster: None,
            pod: None,
            zone: None,
            message: message.into(),
        }
    }
}

/// Where alerts go (email, a pager, the simulator's report).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait AlertSink: Send + Sync {
    /// Raises one alert.
    fn raise(&self, alert: Alert);

    /// Clears the alert of `kind` for `host` (its cause is gone, e.g. the gateway is back).
    fn clear(&self, kind: AlertKind, host: HostId) {
        tracing::info!(%kind, host = %host, "alert cleared");
    }
}

/// An `AlertSink` that only logs.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogAlerts;

impl AlertSink for LogAlerts {
    fn raise(&self, alert: Alert) {
        tracing::warn!(kind = %alert.kind, host = ?alert.host, vm = ?alert.vm, "{}", alert.message);
    }
}
