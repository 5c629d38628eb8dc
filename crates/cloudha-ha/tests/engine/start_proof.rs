//! No start without proof, through the public API: every start the HA manager makes is handed
//! the proof recorded on its work item, and a record loaded back from the store starts nothing
//! unless HA itself stopped the VM on it (and nothing touched the VM since).

use std::sync::Arc;
use std::time::Duration;

use cloudha_ha::*;
use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use cloudha_testkit::{
    RecordingVms, ScriptedFencer, ScriptedInvestigator, agent_over, tokio_clock,
};
use tokio::time::sleep;

struct Rig {
    ha: HaManager,
    vms: Arc<RecordingVms>,
    work: Arc<InMemoryHaWorkStore>,
    fencer: Arc<ScriptedFencer>,
    clock: TokioClock,
    /// Keeps the agent manager the HA manager is built over.
    _agent: AgentManager,
}

const FAILED: HostId = HostId(1);
const VM: VmId = VmId(100);

/// Host 1 (Down) and hosts 2, 3 (Up) in cluster 1; HA VM 100 on host 1. VM investigators
/// answer `verdict`.
async fn rig(verdict: VmVerdict) -> Rig {
    let hosts = Arc::new(InMemoryHostStore::new());
    for (id, status) in [(1, Status::Down), (2, Status::Up), (3, Status::Up)] {
        let mut r = HostRecord::new(HostId(id), format!("h{id}"), HypervisorType::Kvm);
        r.cluster = Some(ClusterId(1));
        r.status = Some(status);
        hosts.insert(r);
    }
    let vms = Arc::new(RecordingVms::new());
    vms.inner.upsert({
        let mut r = VmRecord::new(VM, "vm100", HypervisorType::Kvm);
        r.host = Some(FAILED);
        r.state = VmState::Running;
        r.update_count = 1;
        r.ha_enabled = true;
        r.cluster = Some(ClusterId(1));
        r
    });
    let work = Arc::new(InMemoryHaWorkStore::new());
    let fencer = Arc::new(ScriptedFencer::new());
    let clock = tokio_clock();
    let config = {
        let mut c = Config::default();
        c.ha.ha_startup_grace = Duration::ZERO;
        c
    };
    let agent = agent_over(&config.liveness, &hosts, Arc::new(LogAlerts)).await;
    let ha = HaManager::new(
        config.ha,
        OwnerId(1),
        &agent,
        HaPorts::new(
            work.clone(),
            vms.clone(),
            vec![fencer.clone()],
            Arc::new(LogAlerts),
        )
        .with_investigators(vec![Arc::new(ScriptedInvestigator::with_vm_verdict(
            verdict,
        ))]),
    );
    Rig {
        ha,
        vms,
        work,
        fencer,
        clock,
        _agent: agent,
    }
}

impl Rig {
    /// Every start asked for, with the proof it was handed (whose record the orchestrator checked
    /// against the proof's public accessors).
    fn starts(&self) -> Vec<(VmId, ProofRecord)> {
        self.vms
            .start_calls()
            .into_iter()
            .map(|call| (call.vm, call.proof))
            .collect()
    }
    fn vm(&self) -> VmRecord {
        self.vms.get(VM).unwrap()
    }
}

/// Every path that produces proof: the start is handed the very proof recorded on the item.
#[tokio::test(start_paused = true)]
async fn every_start_is_handed_the_proof_recorded_on_its_item() {
    enum Path {
        Fence,
        DeadVerdict,
        ReportedOff,
        OperatorWord,
    }
    let cases = [
        (Path::Fence, ProofKind::PowerFenced, 1),
        (Path::DeadVerdict, ProofKind::DeadVerdict, 0),
        (Path::ReportedOff, ProofKind::VmReportedOff, 0),
        (Path::OperatorWord, ProofKind::OperatorWord, 0),
    ];
    for (path, kind, fences) in cases {
        let verdict = match path {
            Path::DeadVerdict => VmVerdict::Dead,
            _ => VmVerdict::Unknown,
        };
        let r = rig(verdict).await;
        r.ha.start().await.unwrap();
        let id = match path {
            Path::Fence | Path::DeadVerdict => {
                r.ha.schedule_restart(VM, ProveDead::First, WorkReason::HostDown)
                    .await
            }
            Path::ReportedOff => {
                r.ha.schedule_restart(VM, ProveDead::AlreadyKnown, WorkReason::VmStoppedOnUpHost)
                    .await
            }
            Path::OperatorWord => {
                r.ha.schedule_restart(VM, ProveDead::AlreadyKnown, WorkReason::HostDegraded)
                    .await
            }
        }
        .expect("scheduled");
        sleep(Duration::from_secs(1)).await;
        let item = r.work.item(id).unwrap();
        let recorded = item.fence_proof.clone().expect("a proof recorded");
        assert_eq!((recorded.kind, recorded.host), (kind, Some(FAILED)));
        assert_eq!(r.starts(), vec![(VM, recorded)], "{:?}", item.history);
        assert_eq!(r.fencer.calls(), fences, "{kind}");
        assert_eq!(r.vm().state, VmState::Running, "{kind}");
        r.ha.stop().await;
    }
}

/// A record loaded back from the store is data: it starts the VM only if HA itself stopped the
/// VM on it and nothing touched the VM since. Otherwise the item is done without a start, or
/// (still investigating) the VM is proven dead again, and the start is handed that new proof.
#[tokio::test(start_paused = true)]
async fn a_record_loaded_from_the_store_starts_only_a_vm_ha_stopped_on_it() {
    struct Case {
        name: &'static str,
        step: WorkStep,
        /// Stored before the manager starts (so it resumes through Investigating).
        resumed: bool,
        /// The VM as the item finds it: stopped by HA (Stopped, on no host) or still Running
        /// on the failed host.
        stopped: bool,
        record: bool,
        /// The host the item names.
        host: Option<HostId>,
        /// The kind of the proof the start is handed, if any.
        started_on: Option<ProofKind>,
        fences: usize,
        note: &'static str,
    }
    const STARTED: &str = "done: started on host";
    const NO_PROOF: &str = "done: no death proof stands: the VM is not as HA stopped it";
    let case = |name, step, resumed, stopped, record| Case {
        name,
        step,
        resumed,
        stopped,
        record,
        host: Some(FAILED),
        started_on: None,
        fences: 0,
        note: NO_PROOF,
    };
    use WorkStep::{Investigating, Scheduled};
    let cases = [
        Case {
            started_on: Some(ProofKind::OperatorWord),
            note: STARTED,
            ..case(
                "a record, the VM as HA stopped it",
                Scheduled,
                false,
                true,
                true,
            )
        },
        Case {
            started_on: Some(ProofKind::OperatorWord),
            note: STARTED,
            ..case("the same, resumed", Scheduled, true, true, true)
        },
        case("no record", Scheduled, false, true, false),
        Case {
            note: "done: VM no longer on the host",
            ..case("no record, resumed", Scheduled, true, true, false)
        },
        case(
            "a record, but HA never stopped the VM",
            Scheduled,
            false,
            false,
            true,
        ),
        Case {
            started_on: Some(ProofKind::PowerFenced),
            fences: 1,
            note: STARTED,
            ..case(
                "a record, still investigating a running VM",
                Investigating,
                false,
                false,
                true,
            )
        },
        Case {
            host: None,
            note: "try 1 failed: no record of the VM's host: it cannot be proven dead",
            ..case(
                "no host to prove it dead on",
                Investigating,
                false,
                false,
                false,
            )
        },
    ];
    for c in cases {
        let r = rig(VmVerdict::Unknown).await;
        if c.stopped {
            r.vms.inner.set_state(VM, VmState::Stopped, None);
        }
        let before = r.vm();
        let mut item = WorkItem::new(
            WorkType::Ha,
            c.step,
            WorkReason::HostDown,
            &before,
            c.host,
            r.clock.now(),
        );
        // What a store hands back: anyone can write a record.
        item.fence_proof = c.record.then(|| {
            ProofRecord::new(
                ProofKind::OperatorWord,
                Some(FAILED),
                "loaded back from the store",
                r.clock.now(),
                None,
            )
        });
        if !c.resumed {
            r.ha.start().await.unwrap();
        }
        let id = r.work.insert(item).await.unwrap();
        if c.resumed {
            r.ha.start().await.unwrap();
        }
        // Past the workers' idle sleep: an item stored behind the manager's back is found.
        sleep(Duration::from_secs(61)).await;
        let item = r.work.item(id).unwrap();
        let ctx = format!("{}: {:?}", c.name, item.history);
        let kinds: Vec<ProofKind> = r.starts().iter().map(|(_, p)| p.kind).collect();
        assert_eq!(kinds, Vec::from_iter(c.started_on), "{ctx}");
        assert_eq!(r.fencer.calls(), c.fences, "{ctx}");
        let last = &item.history.last().unwrap().what;
        assert!(last.starts_with(c.note), "{ctx}");
        if c.started_on.is_none() {
            assert_eq!(r.vm(), before, "{ctx}: the VM is left as it was");
        }
        r.ha.stop().await;
    }
}
