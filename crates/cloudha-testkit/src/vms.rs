//! A recording VM orchestrator for HA tests (feature `ha`): the in-memory one, keeping every
//! start with the proof it was handed, and every stop and destroy.

use std::sync::Mutex;
use std::time::Duration;

use cloudha_ha::{
    DeathProof, Expunge, InMemoryVms, OrchestratorError, StartError, StartParams, VmOrchestrator,
};
use cloudha_ports::{ProofRecord, VmRecord};
use cloudha_protocol::{HostId, VmId};
use tokio::time::sleep;

/// One call of [`VmOrchestrator::start`], as the orchestrator was handed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartCall {
    /// The VM to start.
    pub vm: VmId,
    /// Where it may go, and why.
    pub params: StartParams,
    /// The death proof it was handed, as its record.
    pub proof: ProofRecord,
    /// The host it started on; `None`: the start failed.
    pub placed: Option<HostId>,
}

/// A [`VmOrchestrator`]: [`InMemoryVms`] underneath, recording every start (after an optional
/// delay) and every stop, forced stop and destroy.
///
/// Each start also checks the proof it is handed: its record must say what its public accessors
/// say (a panic otherwise, failing the test).
#[derive(Debug, Default)]
pub struct RecordingVms {
    /// The orchestrator underneath, to seed and read (capacity, states).
    pub inner: InMemoryVms,
    starts: Mutex<Vec<StartCall>>,
    start_delay: Mutex<Duration>,
    calls: Mutex<Vec<(VmId, &'static str)>>,
}

impl RecordingVms {
    /// An orchestrator over no VMs, starting at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, each start takes `delay` before it is made.
    pub fn set_start_delay(&self, delay: Duration) {
        *self.start_delay.lock().unwrap() = delay;
    }

    /// Every start asked for, in order, failed ones included.
    pub fn start_calls(&self) -> Vec<StartCall> {
        self.starts.lock().unwrap().clone()
    }

    /// The parameters of the starts of `vm` that succeeded, in order.
    pub fn starts(&self, vm: VmId) -> Vec<StartParams> {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.vm == vm && s.placed.is_some())
            .map(|s| s.params.clone())
            .collect()
    }

    /// How many starts of `vm` succeeded.
    pub fn start_count(&self, vm: VmId) -> usize {
        self.starts(vm).len()
    }

    /// The stops (`"stop"`), forced stops (`"force_stop"`) and destroys (`"destroy"`,
    /// `"expunge"`) of `vm`, in order.
    pub fn calls(&self, vm: VmId) -> Vec<&'static str> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(v, _)| *v == vm)
            .map(|(_, c)| *c)
            .collect()
    }

    fn log(&self, vm: VmId, call: &'static str) {
        self.calls.lock().unwrap().push((vm, call));
    }
}

#[async_trait::async_trait]
impl VmOrchestrator for RecordingVms {
    fn get(&self, vm: VmId) -> Option<VmRecord> {
        self.inner.get(vm)
    }
    fn vms_on_host(&self, host: HostId) -> Vec<VmRecord> {
        self.inner.vms_on_host(host)
    }
    fn running_on(&self, host: HostId) -> Vec<VmId> {
        self.inner.running_on(host)
    }
    async fn force_stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError> {
        self.log(vm, "force_stop");
        self.inner.force_stop(vm).await
    }
    async fn stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError> {
        self.log(vm, "stop");
        self.inner.stop(vm).await
    }
    async fn start(
        &self,
        vm: VmId,
        params: StartParams,
        proof: &DeathProof,
    ) -> Result<HostId, StartError> {
        let record = proof.record();
        assert_eq!(
            (
                record.kind,
                record.host,
                record.evidence.as_str(),
                record.at
            ),
            (proof.kind(), proof.host(), proof.evidence(), proof.at()),
            "the record says what the proof says"
        );
        let delay = *self.start_delay.lock().unwrap();
        sleep(delay).await;
        let r = self.inner.start(vm, params.clone(), proof).await;
        self.starts.lock().unwrap().push(StartCall {
            vm,
            params,
            proof: record,
            placed: r.as_ref().ok().copied(),
        });
        r
    }
    async fn migrate_away(
        &self,
        vm: VmId,
        from: HostId,
        candidates: Vec<HostId>,
    ) -> Result<HostId, StartError> {
        self.inner.migrate_away(vm, from, candidates).await
    }
    async fn destroy(&self, vm: VmId, expunge: Expunge) -> Result<(), OrchestratorError> {
        let call = match expunge {
            Expunge::Now => "expunge",
            Expunge::Later => "destroy",
        };
        self.log(vm, call);
        self.inner.destroy(vm, expunge).await
    }
}
