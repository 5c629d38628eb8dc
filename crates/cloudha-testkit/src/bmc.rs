//! A scripted BMC behind the out-of-band management port.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudha_liveness::{LivenessConfig, Oobm};
use cloudha_ports::{OobError, OutOfBandManagement, PowerState};
use cloudha_protocol::HostId;
use tokio::time::sleep;

use crate::harness::clock;

/// What a scripted BMC does with one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bmc {
    /// Power status: this state. Power off: done.
    Is(PowerState),
    /// Refuses or is unreachable (an error at once).
    Refuses,
    /// No answer (an hour's sleep: the `Oobm`'s bound runs out first).
    Hangs,
}

/// An [`OutOfBandManagement`] from a script: per call kind (power status, power off) a list of
/// what the BMC does, in turn, the last one repeating (an empty list refuses). Power resets
/// always succeed. Every call is recorded.
#[derive(Debug)]
pub struct FakeBmc {
    status: Mutex<VecDeque<Bmc>>,
    off: Mutex<VecDeque<Bmc>>,
    /// Every call made, in order: (`"status"`, `"off"` or `"reset"`, the host).
    pub calls: Mutex<Vec<(&'static str, HostId)>>,
}

impl FakeBmc {
    /// A BMC answering power-status calls from `status` and power-off calls from `off`.
    pub fn new(status: &[Bmc], off: &[Bmc]) -> Arc<Self> {
        Arc::new(Self {
            status: Mutex::new(status.iter().copied().collect()),
            off: Mutex::new(off.iter().copied().collect()),
            calls: Mutex::new(Vec::new()),
        })
    }

    /// A BMC that always reads `state` and accepts an Off.
    pub fn reading(state: PowerState) -> Arc<Self> {
        Self::new(&[Bmc::Is(state)], &[Bmc::Is(PowerState::Off)])
    }

    /// The calls of one kind (`"status"`, `"off"`, `"reset"`).
    pub fn count(&self, what: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(w, _)| *w == what)
            .count()
    }

    /// Every call made.
    pub fn total(&self) -> usize {
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

    /// An [`Oobm`] front over this BMC with the default bound, on [`clock`].
    pub fn front(self: &Arc<Self>) -> Arc<Oobm> {
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
