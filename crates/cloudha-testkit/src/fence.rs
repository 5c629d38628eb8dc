//! Fencers for HA tests (feature `ha`): one whose outcome the test sets, and a wrapper counting
//! a real fencer's calls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudha_ha::{FenceEvidence, FenceOutcome, Fencer};
use cloudha_ports::{HostRecord, VmRecord};
use tokio::time::sleep;

/// A [`Fencer`] whose outcome the test sets (by default: fenced by power, with
/// [`ScriptedFencer::EVIDENCE`]); it may take time (an `ha` fence bound cuts a long one) and
/// counts its calls. Its name is `"Scripted"`.
#[derive(Debug)]
pub struct ScriptedFencer {
    outcome: Mutex<FenceOutcome>,
    delay: Mutex<Duration>,
    calls: AtomicUsize,
}

impl ScriptedFencer {
    /// The evidence of the default outcome, a power fence.
    pub const EVIDENCE: &'static str = "powered off, read back Off";

    /// A fencer that fences by power at once.
    pub fn new() -> Self {
        Self::with_outcome(FenceOutcome::Fenced(FenceEvidence::Power {
            evidence: Self::EVIDENCE.into(),
        }))
    }

    /// A fencer that answers `outcome` at once.
    pub fn with_outcome(outcome: FenceOutcome) -> Self {
        Self {
            outcome: Mutex::new(outcome),
            delay: Mutex::new(Duration::ZERO),
            calls: AtomicUsize::new(0),
        }
    }

    /// The same, taking `delay` before each answer.
    pub fn with_delay(self, delay: Duration) -> Self {
        self.set_delay(delay);
        self
    }

    /// From now on, fences come to `outcome`.
    pub fn set_outcome(&self, outcome: FenceOutcome) {
        *self.outcome.lock().unwrap() = outcome;
    }

    /// From now on, fences take `delay`.
    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    /// The fences asked for so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Default for ScriptedFencer {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl Fencer for ScriptedFencer {
    fn name(&self) -> &'static str {
        "Scripted"
    }
    async fn fence(&self, _vm: &VmRecord, _host: &HostRecord) -> FenceOutcome {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let delay = *self.delay.lock().unwrap();
        sleep(delay).await;
        self.outcome.lock().unwrap().clone()
    }
}

/// A [`Fencer`] wrapper counting the calls of the fencer inside (a real one, typically), whose
/// name and outcomes it keeps.
#[derive(Debug)]
pub struct CountingFencer<F> {
    /// The fencer counted.
    pub inner: F,
    calls: AtomicUsize,
}

impl<F> CountingFencer<F> {
    /// `inner`, counted.
    pub fn new(inner: F) -> Arc<Self> {
        Arc::new(Self {
            inner,
            calls: AtomicUsize::new(0),
        })
    }

    /// The fences asked for so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl<F: Fencer> Fencer for CountingFencer<F> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn fence(&self, vm: &VmRecord, host: &HostRecord) -> FenceOutcome {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.fence(vm, host).await
    }
}
