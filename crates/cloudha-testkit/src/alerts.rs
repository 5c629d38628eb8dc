//! Alerts recorded: an [`AlertSink`] keeping every alert raised and every alert cleared.

use std::sync::Mutex;

use cloudha_ports::{Alert, AlertKind, AlertSink};
use cloudha_protocol::HostId;

/// An [`AlertSink`] that keeps the alerts raised and the alerts cleared, each in order.
#[derive(Debug, Default)]
pub struct RecordingAlerts {
    raised: Mutex<Vec<Alert>>,
    cleared: Mutex<Vec<(AlertKind, HostId)>>,
}

impl AlertSink for RecordingAlerts {
    fn raise(&self, alert: Alert) {
        self.raised.lock().unwrap().push(alert);
    }
    fn clear(&self, kind: AlertKind, host: HostId) {
        self.cleared.lock().unwrap().push((kind, host));
    }
}

impl RecordingAlerts {
    /// A sink that has recorded nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every alert raised so far, in order.
    pub fn raised(&self) -> Vec<Alert> {
        self.raised.lock().unwrap().clone()
    }

    /// Every alert cleared so far, as (kind, host), in order.
    pub fn cleared(&self) -> Vec<(AlertKind, HostId)> {
        self.cleared.lock().unwrap().clone()
    }

    /// The alerts of one kind raised about `host`.
    pub fn of(&self, kind: AlertKind, host: HostId) -> Vec<Alert> {
        self.raised
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.kind == kind && a.host == Some(host))
            .cloned()
            .collect()
    }

    /// The kinds of the alerts raised about `host`, in order.
    pub fn kinds(&self, host: HostId) -> Vec<AlertKind> {
        self.raised
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.host == Some(host))
            .map(|a| a.kind)
            .collect()
    }

    /// The kinds of every alert raised, about any host or none, in order.
    pub fn all_kinds(&self) -> Vec<AlertKind> {
        self.raised.lock().unwrap().iter().map(|a| a.kind).collect()
    }
}
