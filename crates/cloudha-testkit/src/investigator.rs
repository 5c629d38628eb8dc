//! A scripted investigator: the host verdict and the VM verdict are the test's to set.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use cloudha_ports::{Finding, HostRecord, HostVerdict, Investigator, VmVerdict};
use cloudha_protocol::VmId;

/// An [`Investigator`] whose verdicts the test sets: a host verdict (`None`, the default: no
/// finding, the chain goes on) with the evidence `"scripted"`, and a VM verdict (default
/// `Unknown`). Counts the host investigations.
#[derive(Debug)]
pub struct ScriptedInvestigator {
    host_verdict: Mutex<Option<HostVerdict>>,
    vm_verdict: Mutex<VmVerdict>,
    host_calls: AtomicUsize,
}

impl Default for ScriptedInvestigator {
    fn default() -> Self {
        Self {
            host_verdict: Mutex::new(None),
            vm_verdict: Mutex::new(VmVerdict::Unknown),
            host_calls: AtomicUsize::new(0),
        }
    }
}

impl ScriptedInvestigator {
    /// An investigator with no host verdict and an `Unknown` VM verdict.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same, answering `verdict` about every VM.
    pub fn with_vm_verdict(verdict: VmVerdict) -> Self {
        let s = Self::default();
        s.set_vm_verdict(verdict);
        s
    }

    /// From now on, host investigations find `verdict` (`None`: no finding).
    pub fn set_host_verdict(&self, verdict: Option<HostVerdict>) {
        *self.host_verdict.lock().unwrap() = verdict;
    }

    /// From now on, VM investigations answer `verdict`.
    pub fn set_vm_verdict(&self, verdict: VmVerdict) {
        *self.vm_verdict.lock().unwrap() = verdict;
    }

    /// The host investigations so far.
    pub fn host_calls(&self) -> usize {
        self.host_calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Investigator for ScriptedInvestigator {
    fn name(&self) -> &'static str {
        "Scripted"
    }
    async fn host_status(&self, _host: &HostRecord) -> Option<Finding> {
        self.host_calls.fetch_add(1, Ordering::SeqCst);
        self.host_verdict
            .lock()
            .unwrap()
            .map(|v| Finding::new(v, "scripted"))
    }
    async fn vm_alive(&self, _vm: VmId, _host: &HostRecord) -> VmVerdict {
        *self.vm_verdict.lock().unwrap()
    }
}
