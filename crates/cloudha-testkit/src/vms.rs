//! A recording VM orchestrator for HA tests (feature `ha`): the in-memory one, keeping every
//! start with the proof it was handed, and every stop and destroy. Its starts can also go
//! unanswered (landing later on the orchestrator's own task, or never), as a real orchestrator's
//! may.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudha_ha::{
    DeathProof, Expunge, InMemoryVms, OrchestratorError, StartError, StartParams, VmOrchestrator,
};
use cloudha_ports::{ProofRecord, StartKey, VmRecord};
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
    /// The host it started on; `None`: the start failed, or has not landed (yet).
    pub placed: Option<HostId>,
    /// Its key had been seen (made, or in flight): nothing was started by this call.
    pub repeated: bool,
}

/// How the orchestrator answers starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartMode {
    /// It answers (after the start delay).
    #[default]
    Answer,
    /// It never answers; the start lands on the orchestrator's own task after `lands_after`
    /// (whatever became of the caller; a call with the same key meanwhile joins it), or never
    /// when `None` (the request was lost on its way).
    Hang {
        /// When the start lands, from the call.
        lands_after: Option<Duration>,
    },
    /// It makes the start, then answers [`StartError::OutcomeUnknown`] (its answer was lost on
    /// the way back, and it says so).
    LandsButSaysUnknown,
}

/// A [`VmOrchestrator`]: [`InMemoryVms`] underneath, recording every start (after an optional
/// delay) and every stop, forced stop and destroy.
///
/// Each start also checks the proof it is handed: its record must say what its public accessors
/// say (a panic otherwise, failing the test).
///
/// Like a real orchestrator it is idempotent by [`StartParams::key`]: a start whose key it has
/// seen (made, or still in flight) starts nothing; it is recorded with `repeated` set.
#[derive(Debug, Default)]
pub struct RecordingVms {
    /// The orchestrator underneath, to seed and read (capacity, states).
    pub inner: Arc<InMemoryVms>,
    starts: Arc<Mutex<Vec<StartCall>>>,
    start_delay: Mutex<Duration>,
    mode: Mutex<StartMode>,
    in_flight: Arc<Mutex<HashSet<StartKey>>>,
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

    /// From now on, starts are answered as `mode` says.
    pub fn set_start_mode(&self, mode: StartMode) {
        *self.mode.lock().unwrap() = mode;
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
            .filter(|s| s.vm == vm && s.placed.is_some() && !s.repeated)
            .map(|s| s.params.clone())
            .collect()
    }

    /// How many starts of `vm` succeeded (a repeated key starts nothing and is not counted).
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
        let key = params.key;
        let call = StartCall {
            vm,
            params: params.clone(),
            proof: record,
            placed: None,
            repeated: false,
        };
        if self.in_flight.lock().unwrap().contains(&key) {
            // The same start is under way: this call joins it, and gets no answer either.
            self.starts.lock().unwrap().push(StartCall {
                repeated: true,
                ..call
            });
            return std::future::pending().await;
        }
        if let Some(seen) = self.inner.seen_start(vm, key) {
            self.starts.lock().unwrap().push(StartCall {
                repeated: true,
                placed: seen.as_ref().ok().copied(),
                ..call
            });
            return seen;
        }
        let mode = *self.mode.lock().unwrap();
        if let StartMode::Hang { lands_after } = mode {
            let index = {
                let mut starts = self.starts.lock().unwrap();
                starts.push(call);
                starts.len() - 1
            };
            if let Some(after) = lands_after {
                self.in_flight.lock().unwrap().insert(key);
                // The orchestrator's own task: it lands whatever became of the caller (on the
                // first candidate, capacity aside), committing the key with the record.
                let (inner, starts, in_flight) = (
                    self.inner.clone(),
                    self.starts.clone(),
                    self.in_flight.clone(),
                );
                tokio::spawn(async move {
                    sleep(after).await;
                    let on = params.candidates.first().copied();
                    let placed = on.and_then(|on| {
                        inner
                            .update(vm, |r| {
                                // Only a stopped VM is started (a late start finds it started).
                                if r.state != cloudha_protocol::VmState::Stopped || r.host.is_some()
                                {
                                    return None;
                                }
                                if r.host.is_some() {
                                    r.last_host = r.host;
                                }
                                r.host = Some(on);
                                r.state = cloudha_protocol::VmState::Running;
                                r.start_key = Some(key);
                                r.update_count += 1;
                                Some(on)
                            })
                            .flatten()
                    });
                    starts.lock().unwrap()[index].placed = placed;
                    in_flight.lock().unwrap().remove(&key);
                });
            }
            return std::future::pending().await;
        }
        let delay = *self.start_delay.lock().unwrap();
        sleep(delay).await;
        let r = self.inner.start(vm, params, proof).await;
        self.starts.lock().unwrap().push(StartCall {
            placed: r.as_ref().ok().copied(),
            ..call
        });
        if mode == StartMode::LandsButSaysUnknown {
            return Err(StartError::OutcomeUnknown(format!(
                "start {key}: connection reset before the answer"
            )));
        }
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
