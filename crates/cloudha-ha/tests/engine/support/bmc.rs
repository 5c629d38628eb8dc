//! A scripted BMC behind the out-of-band management port.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use tokio::time::sleep;

use super::clock;

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
            Bmc::Refuses => Err(OobError::new(host, "BMC unreachable")),
            Bmc::Hangs => {
                sleep(Duration::from_secs(3600)).await;
                Err(OobError::new(host, "hung"))
            }
        }
    }

    /// An `Oobm` over this BMC with the default bound.
    pub(crate) fn front(self: &Arc<Self>) -> Arc<Oobm> {
        Arc::new(Oobm::new(
            self.clone(),
            LivenessConfig::default().oobm_action_timeout,
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
