//! The HA side: every branch of §5.4 / §5.5, fencing, the brake, the second trigger, the
//! operator's actions and a manager restart over the same store. Paused time, fake and mock ports.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudha_ha::*;
use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use tokio::time::sleep;

use crate::support::{RecordingAlerts, agent_over};

/// A VM investigator whose verdict the test sets.
struct VmVerdicts(Mutex<VmVerdict>);

#[async_trait::async_trait]
impl Investigator for VmVerdicts {
    fn name(&self) -> &'static str {
        "ScriptedVm"
    }
    async fn host_status(&self, _: &HostRecord) -> Option<Finding> {
        None
    }
    async fn vm_alive(&self, _: VmId, _: &HostRecord) -> VmVerdict {
        *self.0.lock().unwrap()
    }
}

/// A fencer whose outcome the test sets; counts calls; may take time.
struct ScriptedFencer {
    outcome: Mutex<FenceOutcome>,
    calls: AtomicUsize,
    delay: Duration,
}

#[async_trait::async_trait]
impl Fencer for ScriptedFencer {
    fn name(&self) -> &'static str {
        "Scripted"
    }
    async fn fence(&self, _: &VmRecord, _: &HostRecord) -> FenceOutcome {
        self.calls.fetch_add(1, Ordering::SeqCst);
        sleep(self.delay).await;
        self.outcome.lock().unwrap().clone()
    }
}

/// The in-memory orchestrator, counting starts per VM; a start may take time. Stops, forced
/// stops and destroys are logged in order.
struct CountingVms {
    inner: InMemoryVms,
    starts: Mutex<HashMap<VmId, Vec<StartParams>>>,
    start_delay: Mutex<Duration>,
    calls: Mutex<Vec<(VmId, &'static str)>>,
}

impl CountingVms {
    fn log(&self, vm: VmId, call: &'static str) {
        self.calls.lock().unwrap().push((vm, call));
    }
}

#[async_trait::async_trait]
impl VmOrchestrator for CountingVms {
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
        let delay = *self.start_delay.lock().unwrap();
        sleep(delay).await;
        let r = self.inner.start(vm, params.clone(), proof).await;
        if r.is_ok() {
            self.starts
                .lock()
                .unwrap()
                .entry(vm)
                .or_default()
                .push(params);
        }
        r
    }
    async fn migrate_away(
        &self,
        vm: VmId,
        from: HostId,
        c: Vec<HostId>,
    ) -> Result<HostId, StartError> {
        self.inner.migrate_away(vm, from, c).await
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

struct H {
    ha: HaManager,
    agent: AgentManager,
    hosts: Arc<InMemoryHostStore>,
    vms: Arc<CountingVms>,
    work: Arc<InMemoryHaWorkStore>,
    alerts: Arc<RecordingAlerts>,
    verdict: Arc<VmVerdicts>,
    fencer: Arc<ScriptedFencer>,
    config: Config,
    clock: TokioClock,
}

const FAILED: HostId = HostId(1);

fn config() -> Config {
    Config {
        ha_startup_grace: Duration::ZERO,
        ..Config::default()
    }
}

/// Cluster 1: hosts 1..=4 (KVM, Up) and cluster 2: hosts 11..=12, zone 1. VM 100+i on host 1.
async fn build(config: Config, vms_on_failed: u64) -> H {
    let hosts = Arc::new(InMemoryHostStore::new());
    let alerts = Arc::new(RecordingAlerts::default());
    let clock = crate::support::tokio_clock();
    for (id, cluster) in [(1, 1), (2, 1), (3, 1), (4, 1), (11, 2), (12, 2)] {
        let mut r = HostRecord::new(HostId(id), format!("h{id}"), HypervisorType::Kvm);
        r.cluster = Some(ClusterId(cluster));
        r.zone = Some(ZoneId(1));
        r.status = Some(Status::Up);
        hosts.insert(r);
    }
    let agent = agent_over(&config, &hosts, alerts.clone()).await;
    let vms = Arc::new(CountingVms {
        inner: InMemoryVms::new(),
        starts: Mutex::new(HashMap::new()),
        start_delay: Mutex::new(Duration::ZERO),
        calls: Mutex::new(Vec::new()),
    });
    for i in 0..vms_on_failed {
        vms.inner.upsert(vm(100 + i, FAILED, true));
    }
    let work = Arc::new(InMemoryHaWorkStore::new());
    let verdict = Arc::new(VmVerdicts(Mutex::new(VmVerdict::Unknown)));
    let fencer = Arc::new(ScriptedFencer {
        outcome: Mutex::new(FenceOutcome::Fenced(FenceEvidence::Power {
            evidence: "test".into(),
        })),
        calls: AtomicUsize::new(0),
        delay: Duration::ZERO,
    });
    let ha = new_manager(&config, &agent, &vms, &work, &alerts, &verdict, &fencer);
    H {
        ha,
        agent,
        hosts,
        vms,
        work,
        alerts,
        verdict,
        fencer,
        config,
        clock,
    }
}

/// Lets the HA manager's tasks take what is ready (the status follower, a scheduling) without
/// moving paused time.
async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

fn new_manager(
    config: &Config,
    agent: &AgentManager,
    vms: &Arc<CountingVms>,
    work: &Arc<InMemoryHaWorkStore>,
    alerts: &Arc<RecordingAlerts>,
    verdict: &Arc<VmVerdicts>,
    fencer: &Arc<ScriptedFencer>,
) -> HaManager {
    HaManager::new(
        config.clone(),
        OwnerId(7),
        agent,
        HaPorts::new(
            work.clone(),
            vms.clone(),
            vec![fencer.clone()],
            alerts.clone(),
        )
        .with_investigators(vec![verdict.clone()]),
    )
}

fn vm(id: u64, host: HostId, ha: bool) -> VmRecord {
    VmRecord {
        id: VmId(id),
        name: format!("vm{id}"),
        kind: VmKind::User,
        host: Some(host),
        last_host: None,
        state: VmState::Running,
        update_count: 1,
        ha_enabled: ha,
        local_root_disk: false,
        hypervisor: HypervisorType::Kvm,
        cluster: Some(ClusterId(1)),
        zone: Some(ZoneId(1)),
    }
}

impl H {
    /// The agent manager moves `id` to Down; a started HA manager schedules its VMs.
    async fn host_down(&self, id: HostId) {
        self.agent.apply(id, Event::HostDown, "test").await.unwrap();
        settle().await;
    }
    /// `id` went Down before this HA manager was built: the agent manager moves it, and a new HA
    /// manager (which follows changes from now on) replaces the old one, which never started.
    async fn mark_down(&mut self, id: HostId) {
        self.agent.apply(id, Event::HostDown, "test").await.unwrap();
        self.ha = new_manager(
            &self.config,
            &self.agent,
            &self.vms,
            &self.work,
            &self.alerts,
            &self.verdict,
            &self.fencer,
        );
    }
    /// The agent manager moves `id` back Up (a reconnect).
    async fn host_up(&self, id: HostId) {
        self.agent
            .apply(id, Event::AgentConnected, "test")
            .await
            .unwrap();
        self.agent.apply(id, Event::Ready, "test").await.unwrap();
        settle().await;
    }
    async fn fail_host(&self) {
        self.host_down(FAILED).await;
    }
    fn item(&self, vm: u64) -> WorkItem {
        self.work.items_of(VmId(vm)).pop().expect("an item")
    }
    fn starts(&self, vm: u64) -> usize {
        self.vms
            .starts
            .lock()
            .unwrap()
            .get(&VmId(vm))
            .map_or(0, Vec::len)
    }
    fn vm(&self, vm: u64) -> VmRecord {
        self.vms.get(VmId(vm)).unwrap()
    }
    /// The stops, forced stops and destroys of a VM, in order.
    fn calls(&self, vm: u64) -> Vec<&'static str> {
        self.vms
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(v, _)| *v == VmId(vm))
            .map(|(_, c)| *c)
            .collect()
    }
    /// The last history entry of an item.
    fn last_note(&self, id: WorkId) -> String {
        self.work
            .item(id)
            .unwrap()
            .history
            .last()
            .unwrap()
            .what
            .clone()
    }
    fn kinds(&self) -> Vec<AlertKind> {
        self.alerts
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.kind)
            .collect()
    }
    async fn shutdown(self) {
        self.ha.stop().await;
        self.agent.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_down_hosts_ha_vm_is_fenced_stopped_and_started_elsewhere() {
    let h = build(config(), 1).await;
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(1)).await;
    let vm = h.vm(100);
    assert_eq!(vm.state, VmState::Running);
    assert_ne!(vm.host, Some(FAILED));
    assert_eq!(vm.cluster, Some(ClusterId(1)));
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done);
    let proof = item.fence_proof.as_ref().expect("a proof");
    assert_eq!(
        (proof.kind, proof.host, proof.evidence.as_str()),
        (ProofKind::PowerFenced, Some(FAILED), "test")
    );
    let log: Vec<&str> = item.history.iter().map(|e| e.what.as_str()).collect();
    assert!(
        log.iter().any(|l| l.contains("VM verdict Unknown")),
        "{log:?}"
    );
    assert!(log.contains(&"fenced: power_fenced: test"), "{log:?}");
    assert!(
        log.last().unwrap().starts_with("done: started on host"),
        "{log:?}"
    );
    // Placement: the VM's cluster first, never the failed host, only Up hosts.
    let params = h.vms.starts.lock().unwrap()[&VmId(100)][0].clone();
    assert_eq!(params.planner, Planner::Default);
    assert_eq!(params.candidates, vec![HostId(2), HostId(3), HostId(4)]);
    assert!(params.ha_operation);
    assert_eq!(h.kinds(), [AlertKind::HostDown, AlertKind::HaRestart]);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn restart_branches_data_driven() {
    struct Case {
        name: &'static str,
        verdict: VmVerdict,
        fence: Option<FenceOutcome>,
        host_up_at_check: bool,
        ha_enabled: bool,
        force_ha: bool,
        local_disk: bool,
        change_vm: bool,
        // expectations after one processing
        step: WorkStep,
        started: bool,
        fenced_calls: usize,
        retry_after: Option<Duration>,
        alert: Option<AlertKind>,
    }
    let fenced = || {
        Some(FenceOutcome::Fenced(FenceEvidence::Power {
            evidence: "ok".into(),
        }))
    };
    let failed = || {
        Some(FenceOutcome::Failed {
            reason: "bmc down".into(),
        })
    };
    let base = |name| Case {
        name,
        verdict: VmVerdict::Unknown,
        fence: fenced(),
        host_up_at_check: false,
        ha_enabled: true,
        force_ha: false,
        local_disk: false,
        change_vm: false,
        step: WorkStep::Done,
        started: true,
        fenced_calls: 1,
        retry_after: None,
        alert: Some(AlertKind::HaRestart),
    };
    let cases = vec![
        base("unknown VM, fenced: restarted"),
        Case {
            fence: failed(),
            step: WorkStep::Investigating,
            started: false,
            retry_after: Some(Duration::from_secs(600)),
            alert: Some(AlertKind::FenceFailed),
            ..base("fencing fails: no start, retry after restart.retry.interval")
        },
        Case {
            verdict: VmVerdict::Dead,
            fenced_calls: 0,
            ..base("VM proven dead: no fencing needed")
        },
        Case {
            verdict: VmVerdict::Alive,
            host_up_at_check: true,
            fenced_calls: 0,
            started: false,
            alert: None,
            ..base("VM alive on an Up host: done, no restart")
        },
        Case {
            verdict: VmVerdict::Alive,
            fenced_calls: 0,
            started: false,
            step: WorkStep::Investigating,
            retry_after: Some(Duration::from_secs(60)),
            alert: None,
            ..base("VM alive, host not Up: retry after investigate.retry.interval")
        },
        Case {
            ha_enabled: false,
            started: false,
            alert: None,
            ..base("non-HA VM: fenced and stopped, stays stopped")
        },
        Case {
            ha_enabled: false,
            force_ha: true,
            ..base("non-HA VM with force.ha: restarted")
        },
        Case {
            local_disk: true,
            started: false,
            alert: None,
            ..base("local root disk: stays stopped")
        },
        Case {
            change_vm: true,
            fenced_calls: 0,
            started: false,
            alert: None,
            ..base("VM changed since scheduling: done")
        },
    ];
    for c in cases {
        let mut cfg = config();
        cfg.force_ha = c.force_ha;
        let mut h = build(cfg, 0).await;
        let mut v = vm(100, FAILED, c.ha_enabled);
        v.local_root_disk = c.local_disk;
        h.vms.inner.upsert(v);
        *h.verdict.0.lock().unwrap() = c.verdict;
        *h.fencer.outcome.lock().unwrap() = c.fence.clone().unwrap();
        if !c.host_up_at_check {
            h.mark_down(FAILED).await;
        }
        // Not a cancellable reason: the "host Up again" cancellation is tested on its own.
        let id =
            h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::Unknown)
                .await
                .expect("scheduled");
        if c.change_vm {
            h.vms
                .inner
                .set_state(VmId(100), VmState::Migrating, Some(FAILED));
        }
        let t0 = h.clock.now();
        h.ha.start().await.unwrap();
        sleep(Duration::from_secs(1)).await;
        let item = h.work.item(id).unwrap();
        let ctx = format!(
            "{}: {:?}",
            c.name,
            item.history.iter().map(|e| &e.what).collect::<Vec<_>>()
        );
        assert_eq!(item.step, c.step, "{ctx}");
        assert_eq!(h.starts(100) == 1, c.started, "{ctx}");
        assert_eq!(
            h.fencer.calls.load(Ordering::SeqCst),
            c.fenced_calls,
            "{ctx}"
        );
        match c.retry_after {
            Some(d) => {
                assert_eq!(item.tries, 1, "{ctx}");
                assert_eq!(item.time_to_try.saturating_duration_since(t0), d, "{ctx}");
            }
            None => assert_eq!(item.tries, 0, "{ctx}"),
        }
        assert_eq!(h.kinds().last().copied(), c.alert, "{ctx}");
        if !c.started && c.step == WorkStep::Done && !c.change_vm && c.verdict != VmVerdict::Alive {
            assert_eq!(
                h.vm(100).state,
                VmState::Stopped,
                "{ctx}: stopped after fencing"
            );
        }
        h.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_fence_is_retried_and_a_later_fence_restarts() {
    let h = build(config(), 1).await;
    *h.fencer.outcome.lock().unwrap() = FenceOutcome::Failed {
        reason: "bmc unreachable".into(),
    };
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(601)).await;
    assert_eq!(
        h.fencer.calls.load(Ordering::SeqCst),
        2,
        "retried after restart.retry.interval"
    );
    assert_eq!(h.vm(100).host, Some(FAILED), "never started while unfenced");
    *h.fencer.outcome.lock().unwrap() = FenceOutcome::Fenced(FenceEvidence::Power {
        evidence: "bmc back: powered off".into(),
    });
    sleep(Duration::from_secs(600)).await;
    assert_eq!(h.vm(100).state, VmState::Running);
    assert_ne!(h.vm(100).host, Some(FAILED));
    assert_eq!(h.item(100).tries, 2);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn max_retries_then_give_up_with_an_alert() {
    let h = build(
        Config {
            max_retries: 3,
            ..config()
        },
        1,
    )
    .await;
    *h.fencer.outcome.lock().unwrap() = FenceOutcome::Failed {
        reason: "no".into(),
    };
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(600 * 5)).await;
    let item = h.item(100);
    assert_eq!((item.step, item.tries), (WorkStep::Done, 3));
    assert!(
        item.history
            .last()
            .unwrap()
            .what
            .starts_with("giving up after 3 tries")
    );
    assert_eq!(h.fencer.calls.load(Ordering::SeqCst), 3);
    assert_eq!(h.kinds().last(), Some(&AlertKind::HaGaveUp));
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn insufficient_capacity_falls_back_to_the_ha_planner() {
    let h = build(config(), 1).await;
    for id in [2, 3, 4] {
        h.vms.inner.set_capacity(HostId(id), 0);
    }
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.vm(100).host,
        Some(HostId(11)),
        "another cluster of the zone"
    );
    let starts = h.vms.starts.lock().unwrap()[&VmId(100)].clone();
    assert_eq!(starts[0].planner, Planner::Ha);
    assert!(
        h.item(100)
            .history
            .iter()
            .any(|e| e.what.contains("trying the HA planner"))
    );
    // No capacity anywhere: alert and retry after restart.retry.interval.
    let h = build(config(), 1).await;
    for id in [2, 3, 4, 11, 12] {
        h.vms.inner.set_capacity(HostId(id), 0);
    }
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(1)).await;
    let item = h.item(100);
    assert_eq!((item.step, item.tries), (WorkStep::Scheduled, 1));
    assert_eq!(h.kinds().last(), Some(&AlertKind::HaRestartFailed));
    h.vms.inner.set_capacity(HostId(12), 10);
    sleep(Duration::from_secs(600)).await;
    assert_eq!(h.vm(100).host, Some(HostId(12)));
    assert_eq!(
        h.fencer.calls.load(Ordering::SeqCst),
        1,
        "the fence is not repeated for a start retry"
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn ha_tag_limits_placement_and_down_hosts_are_never_candidates() {
    let mut h = build(
        Config {
            ha_tag: Some("ha_host".into()),
            ..config()
        },
        1,
    )
    .await;
    let mut r = h.hosts.get(HostId(3)).unwrap();
    r.tags = vec!["ha_host".into()];
    h.agent.add_host(r).await.unwrap();
    h.mark_down(HostId(4)).await;
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.vm(100).host, Some(HostId(3)));
    let params = h.vms.starts.lock().unwrap()[&VmId(100)][0].clone();
    assert_eq!(params.candidates, vec![HostId(3)]);
    assert_eq!(params.ha_tag.as_deref(), Some("ha_host"));
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn newer_items_concurrent_items_gone_vms_and_cancellation() {
    let mut h = build(config(), 2).await;
    h.mark_down(FAILED).await;
    // Two items for VM 100: the older one is dropped.
    let first =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    let second =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    // VM 101 disappears.
    let gone =
        h.ha.schedule_restart(VmId(101), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    h.vms.inner.destroy(VmId(101), Expunge::Now).await.unwrap();
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.work.item(first).unwrap().history.last().unwrap().what,
        "done: a newer HA item exists for the VM"
    );
    assert_eq!(h.work.item(second).unwrap().step, WorkStep::Done);
    assert_eq!(h.starts(100), 1);
    assert_eq!(
        h.work.item(gone).unwrap().history.last().unwrap().what,
        "done: VM gone"
    );

    // An item still investigating a host that is Up again is cancelled.
    let h = build(config(), 1).await;
    let id =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.work.item(id).unwrap().step, WorkStep::Cancelled);
    assert_eq!(h.starts(100), 0);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn workers_are_limited_to_ha_workers_and_woken_by_scheduling() {
    // Six failed hosts of one VM each (a fence is per host, so six fences); no brake.
    let mut h = build(
        Config {
            ha_workers: 2,
            ha_brake_fraction: 1.0,
            ..config()
        },
        0,
    )
    .await;
    let failed: Vec<HostId> = (21..27).map(HostId).collect();
    for (i, id) in failed.iter().enumerate() {
        let mut r = HostRecord::new(*id, format!("h{id}"), HypervisorType::Kvm);
        r.cluster = Some(ClusterId(1));
        r.zone = Some(ZoneId(1));
        r.status = Some(Status::Up);
        h.agent.add_host(r).await.unwrap();
        h.vms.inner.upsert(vm(100 + i as u64, *id, true));
    }
    h.fencer = Arc::new(ScriptedFencer {
        outcome: Mutex::new(FenceOutcome::Fenced(FenceEvidence::Power {
            evidence: "slow".into(),
        })),
        calls: AtomicUsize::new(0),
        delay: Duration::from_secs(10),
    });
    let ha = new_manager(
        &h.config, &h.agent, &h.vms, &h.work, &h.alerts, &h.verdict, &h.fencer,
    );
    ha.start().await.unwrap();
    sleep(Duration::from_secs(5)).await;
    for id in &failed {
        // The HA manager follows the agent manager's status changes.
        h.mark_down(*id).await;
    }
    sleep(Duration::from_millis(1)).await;
    assert_eq!(
        h.fencer.calls.load(Ordering::SeqCst),
        2,
        "woken at once, two slots"
    );
    sleep(Duration::from_secs(10)).await;
    assert_eq!(h.fencer.calls.load(Ordering::SeqCst), 4);
    sleep(Duration::from_secs(11)).await;
    assert_eq!(h.fencer.calls.load(Ordering::SeqCst), 6);
    sleep(Duration::from_secs(10)).await;
    for i in 0..6 {
        assert_eq!(h.starts(100 + i), 1, "{:?}", h.item(100 + i).history);
    }
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_brake_holds_fencing_while_most_of_a_cluster_is_suspect() {
    let h = build(
        Config {
            ha_brake_fraction: 0.5,
            ha_workers: 1,
            ..config()
        },
        1,
    )
    .await;
    h.vms.inner.upsert(VmRecord {
        cluster: Some(ClusterId(2)),
        ..vm(200, HostId(11), true)
    });
    h.ha.start().await.unwrap();
    // 3 of 4 hosts of cluster 1 down: more than half suspect.
    h.host_down(HostId(2)).await;
    h.host_down(HostId(3)).await;
    h.fail_host().await;
    sleep(Duration::from_secs(2)).await;
    let item = h.item(100);
    assert!(item.braked, "{:?}", item.history);
    assert_eq!(item.tries, 0, "braked work spends no try");
    assert_eq!(
        h.fencer.calls.load(Ordering::SeqCst),
        0,
        "nothing fenced while the brake holds"
    );
    assert!(h.kinds().contains(&AlertKind::BrakeHolds));
    assert!(
        h.ha.brake_holds(ClusterId(1))
            .unwrap()
            .contains("3 of 4 hosts")
    );
    // Braked work holds no worker: the one slot serves cluster 2.
    h.host_down(HostId(11)).await;
    // (The HA manager follows the change.)
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.starts(200), 1, "other clusters go on");
    assert!(h.item(100).braked);
    // Two hosts come back (2 of 4 suspect, not more than half): the brake lifts by itself.
    for id in [2, 3] {
        h.host_up(HostId(id)).await;
    }
    sleep(Duration::from_secs(2)).await;
    assert!(!h.item(100).braked);
    assert_eq!(h.starts(100), 1);
    assert_eq!(h.item(100).tries, 0);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_operator_releases_the_brake_or_declares_a_host_dead() {
    let mut h = build(config(), 1).await;
    h.vms.inner.upsert(vm(101, HostId(2), true));
    // Hosts 2 and 3 went Down before this HA manager was built: host 2's VM is not scheduled.
    h.mark_down(HostId(2)).await;
    h.mark_down(HostId(3)).await;
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(2)).await;
    assert!(h.item(100).braked);
    h.ha.release_brake(ClusterId(1)).await;
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.starts(100), 1, "released: fenced and restarted");
    assert_eq!(h.fencer.calls.load(Ordering::SeqCst), 1);
    // Declaring host 2 dead restarts its VMs without fencing, on the operator's word.
    h.ha.declare_host_dead(HostId(2)).await.unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.starts(101), 1);
    assert_eq!(
        h.fencer.calls.load(Ordering::SeqCst),
        1,
        "no fence for the declared host"
    );
    let proof = h.item(101).fence_proof.expect("a proof");
    assert_eq!(
        (proof.kind, proof.host, proof.evidence.as_str()),
        (
            ProofKind::OperatorWord,
            Some(HostId(2)),
            "an operator declared host 2 dead"
        )
    );
    assert_eq!(
        h.hosts.get(HostId(2)).unwrap().resource_state,
        ResourceState::Degraded
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn startup_grace_holds_the_brake_everywhere() {
    let h = build(
        Config {
            ha_startup_grace: Duration::from_secs(300),
            ..config()
        },
        1,
    )
    .await;
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(10)).await;
    assert!(h.item(100).braked);
    assert!(
        h.ha.brake_holds(ClusterId(1))
            .unwrap()
            .starts_with("startup grace")
    );
    sleep(Duration::from_secs(300)).await;
    assert_eq!(h.starts(100), 1);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_ha_vm_reported_off_on_an_up_host_is_restarted() {
    let h = build(config(), 0).await;
    h.vms.inner.upsert(vm(300, HostId(2), true));
    h.vms.inner.upsert(vm(301, HostId(2), false));
    h.vms.inner.upsert(vm(302, HostId(2), true));
    h.ha.start().await.unwrap();
    let report = [
        VmStateReport {
            vm: VmId(300),
            power: VmPowerState::PowerOff,
        },
        VmStateReport {
            vm: VmId(301),
            power: VmPowerState::PowerOff,
        },
        VmStateReport {
            vm: VmId(302),
            power: VmPowerState::PowerOn,
        },
    ];
    h.ha.vm_power_report(HostId(2), &report);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.starts(300), 1);
    assert_eq!(
        h.fencer.calls.load(Ordering::SeqCst),
        0,
        "reported off by its own Up host: no fence needed"
    );
    assert_eq!(h.item(300).reason, WorkReason::VmStoppedOnUpHost);
    assert_eq!(
        h.vm(301).state,
        VmState::Stopped,
        "non-HA: stopped, not restarted"
    );
    assert_eq!(h.starts(301), 0);
    assert!(h.kinds().contains(&AlertKind::VmStopped));
    assert_eq!(h.starts(302), 0);
    // Missing from the reports for longer than T counts as off too.
    h.vms.inner.upsert(vm(303, HostId(3), true));
    for _ in 0..4 {
        h.ha.vm_power_report(HostId(3), &[]);
        sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(h.starts(303), 1);
    // Switched off: no restart.
    let h = build(
        Config {
            ha_vm_restart_hostup: false,
            ..config()
        },
        0,
    )
    .await;
    h.vms.inner.upsert(vm(300, HostId(2), true));
    h.ha.start().await.unwrap();
    h.ha.vm_power_report(HostId(2), &report[..1]);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.starts(300), 0);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn stop_migrate_and_destroy_flows() {
    let h = build(config(), 3).await;
    h.ha.start().await.unwrap();
    let stop =
        h.ha.schedule_stop(VmId(100), FAILED, WorkType::ForceStop)
            .await
            .unwrap();
    let migrate =
        h.ha.schedule_migration(VmId(101), WorkReason::HostMaintenance)
            .await
            .unwrap();
    let destroy =
        h.ha.schedule_destroy(VmId(102), Some(FAILED))
            .await
            .unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.work.item(stop).unwrap().step, WorkStep::Done);
    assert_eq!(h.vm(100).state, VmState::Stopped);
    assert_eq!(h.work.item(migrate).unwrap().step, WorkStep::Done);
    assert_eq!(h.vm(101).host, Some(HostId(2)));
    assert_eq!(h.work.item(destroy).unwrap().step, WorkStep::Done);
    assert_eq!(h.vm(102).state, VmState::Destroyed);
    // CheckStop of a VM that changed meanwhile: done without stopping it.
    h.vms.inner.upsert(vm(103, FAILED, true));
    let id =
        h.ha.schedule_stop(VmId(103), FAILED, WorkType::CheckStop)
            .await
            .unwrap();
    h.vms
        .inner
        .set_state(VmId(103), VmState::Running, Some(HostId(2)));
    sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.work.item(id).unwrap().history.last().unwrap().what,
        "done: VM changed since scheduling"
    );
    assert_eq!(h.vm(103).state, VmState::Running);
    // A migration with no room retries after migrate.retry.interval.
    for id in [2, 3, 4] {
        h.vms.inner.set_capacity(HostId(id), 0);
    }
    h.vms.inner.upsert(vm(104, FAILED, true));
    let t0 = h.clock.now();
    let id =
        h.ha.schedule_migration(VmId(104), WorkReason::HostMaintenance)
            .await
            .unwrap();
    sleep(Duration::from_secs(1)).await;
    let item = h.work.item(id).unwrap();
    assert_eq!(
        (
            item.step,
            item.tries,
            item.time_to_try.saturating_duration_since(t0)
        ),
        (WorkStep::Migrating, 1, Duration::from_secs(120))
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn cleanup_removes_final_items_older_than_time_between_failures() {
    let h = build(
        Config {
            time_between_cleanup: Duration::from_secs(3600),
            time_between_failures: Duration::from_secs(1800),
            ..config()
        },
        1,
    )
    .await;
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(10)).await;
    assert_eq!(h.work.items().len(), 1);
    sleep(Duration::from_secs(3600)).await;
    assert!(
        h.work.items().is_empty(),
        "done 1 h ago, window 30 min: purged at the hourly cleanup"
    );
    // A recent failure is inherited by a new item for the same VM.
    let h = build(
        Config {
            max_retries: 5,
            ..config()
        },
        1,
    )
    .await;
    *h.fencer.outcome.lock().unwrap() = FenceOutcome::Failed {
        reason: "no".into(),
    };
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(601)).await;
    assert_eq!(h.item(100).tries, 2);
    let newer =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    assert_eq!(
        h.work.item(newer).unwrap().tries,
        2,
        "tries inherited within time.between.failures"
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_manager_restart_mid_work_resumes_everything_through_investigating_once() {
    let config = Config {
        ha_workers: 3,
        ..config()
    };
    let mut h = build(config.clone(), 10).await;
    h.fencer = Arc::new(ScriptedFencer {
        outcome: Mutex::new(FenceOutcome::Fenced(FenceEvidence::Power {
            evidence: "slow fence".into(),
        })),
        calls: AtomicUsize::new(0),
        delay: Duration::from_secs(20),
    });
    // One fence for the host (20 s), then each start takes 10 s: mid-work at 45 s.
    *h.vms.start_delay.lock().unwrap() = Duration::from_secs(10);
    let first = new_manager(
        &config, &h.agent, &h.vms, &h.work, &h.alerts, &h.verdict, &h.fencer,
    );
    first.start().await.unwrap();
    h.mark_down(FAILED).await;
    sleep(Duration::from_secs(45)).await;
    let done_before = (100..110).filter(|v| h.starts(*v) == 1).count();
    assert!(
        done_before > 0 && done_before < 10,
        "mid-work: {done_before} restarted"
    );
    // The manager process dies: its tasks end, its claims stay in the store.
    first.stop().await;
    assert!(
        h.work.items().iter().any(|i| i.owner.is_some()),
        "claims left behind"
    );
    // It comes back with the same identity over the same store.
    let second = new_manager(
        &config, &h.agent, &h.vms, &h.work, &h.alerts, &h.verdict, &h.fencer,
    );
    second.start().await.unwrap();
    for i in h.work.items() {
        assert!(
            i.step.is_final() || i.step == WorkStep::Investigating,
            "pending items back to Investigating: {i:?}"
        );
        assert!(i.owner.is_none());
    }
    sleep(Duration::from_secs(300)).await;
    for v in 100..110 {
        assert_eq!(h.starts(v), 1, "vm {v} started exactly once");
        assert_eq!(h.vm(v).state, VmState::Running);
        assert_ne!(h.vm(v).host, Some(FAILED));
    }
    assert!(
        h.work.items().iter().all(|i| i.step.is_final()),
        "none lost"
    );
    second.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_departed_peers_claims_are_released_and_served_here() {
    let mut h = build(config(), 1).await;
    h.mark_down(FAILED).await;
    let id =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    // A peer took the item, then died.
    let taken = h
        .work
        .take(OwnerId(99), Timestamp::from_micros(u64::MAX))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.id, id);
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(5)).await;
    assert_eq!(h.starts(100), 0, "claimed by the peer: not ours to run");
    assert_eq!(h.ha.release_peer(OwnerId(99)).await.unwrap(), 1);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.starts(100), 1);
    assert_eq!(h.work.item(id).unwrap().step, WorkStep::Done);
    h.shutdown().await;
}

/// Work left in a durable store by a run with VM-HA enabled, served by a manager with VM-HA
/// disabled: nothing is done, no try is spent, and each item waits its own type's interval.
#[tokio::test(start_paused = true)]
async fn with_vm_ha_disabled_pending_work_waits_its_types_interval() {
    let config = Config {
        vm_ha_enabled: false,
        restart_retry_interval: Duration::from_secs(600),
        migrate_retry_interval: Duration::from_secs(120),
        stop_retry_interval: Duration::from_secs(300),
        ..config()
    };
    let h = build(config, 3).await;
    let t0 = h.clock.now();
    let mut ids = Vec::new();
    for (i, work_type) in [WorkType::Ha, WorkType::Migration, WorkType::Stop]
        .into_iter()
        .enumerate()
    {
        let rec = h.vm(100 + i as u64);
        let item = WorkItem::new(
            work_type,
            WorkStep::Scheduled,
            WorkReason::HostDown,
            &rec,
            Some(FAILED),
            t0,
        );
        ids.push((work_type, h.work.insert(item).await.unwrap()));
    }
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    for (work_type, id) in ids {
        let item = h.work.item(id).unwrap();
        let want = match work_type {
            WorkType::Ha => 600,
            WorkType::Migration => 120,
            _ => 300,
        };
        assert_eq!(
            (
                item.tries,
                item.time_to_try.saturating_duration_since(t0),
                item.step
            ),
            // (back to Investigating at start, §5.6)
            (0, Duration::from_secs(want), WorkStep::Investigating),
            "{work_type:?}"
        );
    }
    assert_eq!(h.starts(100), 0, "nothing started");
    h.shutdown().await;
}

// ---- Guards of scheduling and processing (each pinned by a cargo-mutants survivor). ----

/// An item for `rec` as another server (or an earlier run) left it in the store.
fn stored_item(
    work_type: WorkType,
    step: WorkStep,
    rec: &VmRecord,
    tries: u32,
    time_to_try: Timestamp,
) -> WorkItem {
    let mut i = WorkItem::new(
        work_type,
        step,
        WorkReason::HostDown,
        rec,
        rec.host.or(rec.last_host),
        time_to_try,
    );
    i.tries = tries;
    i
}

#[tokio::test(start_paused = true)]
async fn the_managers_debug_form_names_its_owner() {
    let h = build(config(), 0).await;
    let s = format!("{:?}", h.ha);
    assert!(
        s.starts_with("HaManager") && s.contains("OwnerId(7)"),
        "{s}"
    );
}

/// CloudStack's `canScheduleNew`: a new restart inherits the tries of an HA item whose time to
/// try is within time.between.failures of now (the bound included); an older HA item, or recent
/// work of another type, passes nothing on.
#[tokio::test(start_paused = true)]
async fn only_recent_ha_items_pass_their_tries_to_a_new_restart() {
    let window = Duration::from_secs(1800);
    let h = build(
        Config {
            time_between_failures: window,
            ..config()
        },
        3,
    )
    .await;
    let t0 = h.clock.now();
    for v in [100, 101] {
        h.work
            .insert(stored_item(WorkType::Ha, WorkStep::Done, &h.vm(v), 3, t0))
            .await
            .unwrap();
    }
    sleep(window).await;
    let at_bound =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    assert_eq!(
        h.work.item(at_bound).unwrap().tries,
        3,
        "failed exactly time.between.failures ago: still inherited"
    );
    sleep(Duration::from_secs(1)).await;
    let past =
        h.ha.schedule_restart(VmId(101), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    assert_eq!(
        h.work.item(past).unwrap().tries,
        0,
        "failed longer ago: a fresh start"
    );
    h.work
        .insert(stored_item(
            WorkType::Stop,
            WorkStep::Done,
            &h.vm(102),
            4,
            h.clock.now(),
        ))
        .await
        .unwrap();
    let other =
        h.ha.schedule_restart(VmId(102), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    assert_eq!(
        h.work.item(other).unwrap().tries,
        0,
        "a stop's tries are not a restart's"
    );
    h.shutdown().await;
}

/// §5.3 `scheduleStop`: a (legacy) Stop is refused while another Stop of the VM is pending; no
/// other work holds it back, it holds no other stop back, and a finished Stop allows a new one.
#[tokio::test(start_paused = true)]
async fn a_stop_is_not_scheduled_twice_and_holds_nothing_else_back() {
    let h = build(config(), 1).await;
    let vm = VmId(100);
    h.ha.schedule_migration(vm, WorkReason::HostMaintenance)
        .await
        .unwrap();
    let stop =
        h.ha.schedule_stop(vm, FAILED, WorkType::Stop)
            .await
            .expect("a pending migration does not hold a stop back");
    assert_eq!(
        h.ha.schedule_stop(vm, FAILED, WorkType::Stop).await,
        None,
        "a Stop is already pending"
    );
    assert!(
        h.ha.schedule_stop(vm, FAILED, WorkType::CheckStop)
            .await
            .is_some()
    );
    assert!(
        h.ha.schedule_stop(vm, FAILED, WorkType::ForceStop)
            .await
            .is_some()
    );
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.work.item(stop).unwrap().step, WorkStep::Done);
    assert!(
        h.ha.schedule_stop(vm, FAILED, WorkType::Stop)
            .await
            .is_some(),
        "the earlier Stop is finished"
    );
    h.shutdown().await;
}

/// The second trigger's grace: a VM missing from its Up host's reports counts as off only once
/// it has been missing for longer than ping.interval × ping.timeout (not at the bound), and a
/// report showing it on starts that clock again.
#[tokio::test(start_paused = true)]
async fn a_vm_missing_from_reports_is_restarted_only_after_the_ping_deadline() {
    let h = build(config(), 0).await;
    let deadline = h.config.ping_deadline();
    h.vms.inner.upsert(vm(300, HostId(2), true));
    h.vms.inner.upsert(vm(301, HostId(3), true));
    h.ha.start().await.unwrap();
    h.ha.vm_power_report(HostId(2), &[]);
    sleep(Duration::from_secs(1)).await;
    assert!(h.work.items_of(VmId(300)).is_empty(), "just went missing");
    sleep(deadline - Duration::from_secs(1)).await;
    h.ha.vm_power_report(HostId(2), &[]);
    sleep(Duration::from_secs(1)).await;
    assert!(
        h.work.items_of(VmId(300)).is_empty(),
        "missing for exactly the deadline, not longer"
    );
    h.ha.vm_power_report(HostId(2), &[]);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.starts(300), 1, "missing for longer than the deadline");

    // VM 301 goes missing, shows up again, goes missing again: the clock restarts.
    let on = [VmStateReport {
        vm: VmId(301),
        power: VmPowerState::PowerOn,
    }];
    h.ha.vm_power_report(HostId(3), &[]);
    sleep(deadline - Duration::from_secs(50)).await;
    h.ha.vm_power_report(HostId(3), &on);
    sleep(Duration::from_secs(100)).await;
    h.ha.vm_power_report(HostId(3), &[]);
    sleep(Duration::from_secs(1)).await;
    assert!(
        h.work.items_of(VmId(301)).is_empty(),
        "seen on since: missing only from now"
    );
    sleep(deadline).await;
    h.ha.vm_power_report(HostId(3), &[]);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.starts(301), 1);
    h.shutdown().await;
}

/// The second trigger leaves a VM with unfinished work to that work; finished work of the VM
/// does not hold a restart back.
#[tokio::test(start_paused = true)]
async fn a_vm_reported_off_with_pending_work_is_left_to_that_work() {
    let h = build(config(), 0).await;
    h.vms.inner.upsert(vm(300, HostId(2), true));
    h.vms.inner.upsert(vm(301, HostId(2), true));
    // Not started: the queue stays as it is.
    h.ha.schedule_migration(VmId(300), WorkReason::HostMaintenance)
        .await
        .unwrap();
    h.work
        .insert(stored_item(
            WorkType::Ha,
            WorkStep::Done,
            &h.vm(301),
            0,
            h.clock.now(),
        ))
        .await
        .unwrap();
    let off = |v| VmStateReport {
        vm: VmId(v),
        power: VmPowerState::PowerOff,
    };
    h.ha.vm_power_report(HostId(2), &[off(300), off(301)]);
    sleep(Duration::from_secs(1)).await;
    let items = h.work.items_of(VmId(300));
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(h.vm(300).state, VmState::Running, "not force-stopped");
    let items = h.work.items_of(VmId(301));
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(
        (items[1].work_type, items[1].reason),
        (WorkType::Ha, WorkReason::VmStoppedOnUpHost)
    );
    assert_eq!(h.vm(301).state, VmState::Stopped);
    h.shutdown().await;
}

/// §5.5 step 1: only a newer, unfinished HA item supersedes a restart; an older pending HA item,
/// a newer finished one or newer work of another type does not.
#[tokio::test(start_paused = true)]
async fn only_a_newer_pending_ha_item_supersedes_a_restart() {
    let mut h = build(config(), 1).await;
    h.mark_down(FAILED).await;
    let rec = h.vm(100);
    let later = h.clock.now() + Duration::from_secs(3600);
    h.work
        .insert(stored_item(
            WorkType::Ha,
            WorkStep::Investigating,
            &rec,
            1,
            later,
        ))
        .await
        .unwrap();
    let id =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    for (work_type, step, at) in [
        (WorkType::Ha, WorkStep::Done, h.clock.now()),
        (WorkType::Migration, WorkStep::Scheduled, later),
    ] {
        h.work
            .insert(stored_item(work_type, step, &rec, 0, at))
            .await
            .unwrap();
    }
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    let note = h.last_note(id);
    assert!(note.starts_with("done: started on host"), "{note}");
    assert_eq!(h.starts(100), 1);
    h.shutdown().await;
}

/// §5.5 step 1: while another HA item of the VM is held by a server, a restart waits
/// investigate.retry.interval (spending a try); other work held by a server does not hold it.
#[tokio::test(start_paused = true)]
async fn a_restart_waits_while_another_ha_item_of_the_vm_is_running() {
    let mut h = build(config(), 2).await;
    h.mark_down(FAILED).await;
    for (work_type, step, v) in [
        (WorkType::Ha, WorkStep::Investigating, 100),
        (WorkType::Migration, WorkStep::Migrating, 101),
    ] {
        let mut held = stored_item(work_type, step, &h.vm(v), 0, h.clock.now());
        held.owner = Some(OwnerId(99));
        held.taken = Some(h.clock.now());
        h.work.insert(held).await.unwrap();
    }
    let waits =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    let goes =
        h.ha.schedule_restart(VmId(101), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    let t0 = h.clock.now();
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    let item = h.work.item(waits).unwrap();
    assert_eq!(
        (
            item.step,
            item.tries,
            item.time_to_try.saturating_duration_since(t0)
        ),
        (WorkStep::Investigating, 1, Duration::from_secs(60)),
        "{:?}",
        item.history
    );
    assert!(
        h.last_note(waits)
            .contains("another HA item for the VM is running")
    );
    assert_eq!(h.starts(100), 0);
    let note = h.last_note(goes);
    assert!(note.starts_with("done: started on host"), "{note}");
    assert_eq!(h.starts(101), 1);
    h.shutdown().await;
}

/// §5.5 step 2: a VM whose record changed since scheduling is left alone, even when only its
/// update counter moved (same state, same host): neither fenced nor restarted.
#[tokio::test(start_paused = true)]
async fn a_vm_updated_in_place_since_scheduling_is_not_restarted() {
    let mut h = build(config(), 1).await;
    h.mark_down(FAILED).await;
    let id =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    h.vms
        .inner
        .set_state(VmId(100), VmState::Running, Some(FAILED));
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    let note = h.last_note(id);
    assert!(
        note.starts_with("done: VM changed since scheduling"),
        "{note}"
    );
    assert_eq!(h.fencer.calls.load(Ordering::SeqCst), 0);
    assert_eq!(h.starts(100), 0);
    assert!(h.calls(100).is_empty());
    h.shutdown().await;
}

/// §5.5 step 3: an item still investigating whose VM is no longer on the host (stopped, with
/// no host, and no proof that HA stopped it) is done: no fence, no restart.
#[tokio::test(start_paused = true)]
async fn an_investigating_item_whose_vm_left_its_host_is_done_without_restart() {
    let mut h = build(config(), 1).await;
    h.mark_down(FAILED).await;
    h.vms.inner.set_state(VmId(100), VmState::Stopped, None);
    let id =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    assert_eq!(h.work.item(id).unwrap().host, Some(FAILED), "its last host");
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.last_note(id), "done: VM no longer on the host");
    assert_eq!(h.fencer.calls.load(Ordering::SeqCst), 0);
    assert_eq!(h.starts(100), 0);
    assert_eq!(h.vm(100).state, VmState::Stopped);
    h.shutdown().await;
}

/// A VM its own Up host reports off is restarted with that host among the candidates: only a
/// host that is not Up is kept out of the placement.
#[tokio::test(start_paused = true)]
async fn a_vm_reported_off_by_its_up_host_may_restart_on_that_host() {
    let h = build(config(), 0).await;
    h.vms.inner.upsert(vm(300, HostId(2), true));
    h.ha.start().await.unwrap();
    h.ha.vm_power_report(
        HostId(2),
        &[VmStateReport {
            vm: VmId(300),
            power: VmPowerState::PowerOff,
        }],
    );
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.starts(300), 1);
    let params = h.vms.starts.lock().unwrap()[&VmId(300)][0].clone();
    assert!(params.candidates.contains(&HostId(2)), "{params:?}");
    h.shutdown().await;
}

/// §5.6: a restart scheduled on proof (the VM reported off by its Up host, force-stopped at
/// once) goes back to Investigating when a manager starts over the store; HA stopped the VM
/// itself, so it is not investigated again but restarted.
#[tokio::test(start_paused = true)]
async fn a_restart_on_proof_resumes_after_a_manager_start_without_investigation() {
    let h = build(config(), 0).await;
    h.vms.inner.upsert(vm(300, HostId(2), true));
    // Reported off before the manager starts: the item waits in the store.
    h.ha.vm_power_report(
        HostId(2),
        &[VmStateReport {
            vm: VmId(300),
            power: VmPowerState::PowerOff,
        }],
    );
    sleep(Duration::from_secs(1)).await;
    let item = h.item(300);
    assert_eq!(item.step, WorkStep::Scheduled);
    assert!(item.fence_proof.is_some());
    assert_eq!((h.vm(300).state, h.vm(300).host), (VmState::Stopped, None));
    h.ha.start().await.unwrap();
    assert_eq!(h.item(300).step, WorkStep::Investigating);
    sleep(Duration::from_secs(1)).await;
    let note = h.last_note(item.id);
    assert!(note.starts_with("done: started on host"), "{note}");
    assert_eq!(h.starts(300), 1);
    assert_eq!(h.fencer.calls.load(Ordering::SeqCst), 0);
    h.shutdown().await;
}

/// §5.5 `stopVM`: Stop always stops, normally; CheckStop stops normally and ForceStop forcibly,
/// but only a VM unchanged since scheduling (same state, update counter and host) and still on
/// a host.
#[tokio::test(start_paused = true)]
async fn stop_work_types_and_the_unchanged_since_scheduling_check() {
    let h = build(config(), 6).await;
    // An item left in the store without a host, for a VM on no host (CloudStack's
    // `vm.getHostId() == null`): nothing to stop.
    h.vms.inner.set_state(VmId(105), VmState::Stopped, None);
    let mut hostless = stored_item(
        WorkType::ForceStop,
        WorkStep::Scheduled,
        &h.vm(105),
        0,
        h.clock.now(),
    );
    hostless.host = None;
    let hostless = h.work.insert(hostless).await.unwrap();
    let cases = [
        (100, WorkType::Stop, Some(HostId(2)), vec!["stop"]),
        (101, WorkType::CheckStop, None, vec!["stop"]),
        (102, WorkType::ForceStop, None, vec!["force_stop"]),
        // Updated in place: same state, same host, only the update counter moved.
        (103, WorkType::CheckStop, Some(FAILED), vec![]),
        (104, WorkType::ForceStop, Some(FAILED), vec![]),
    ];
    let mut ids = Vec::new();
    for (v, work_type, _, _) in &cases {
        ids.push(
            h.ha.schedule_stop(VmId(*v), FAILED, *work_type)
                .await
                .unwrap(),
        );
    }
    for (v, _, moved_to, _) in &cases {
        if let Some(host) = moved_to {
            h.vms
                .inner
                .set_state(VmId(*v), VmState::Running, Some(*host));
        }
    }
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    for ((v, work_type, _, calls), id) in cases.iter().zip(ids) {
        let ctx = format!(
            "vm {v} {work_type:?}: {:?}",
            h.work.item(id).unwrap().history
        );
        assert_eq!(&h.calls(*v), calls, "{ctx}");
        let (note, state) = if calls.is_empty() {
            ("done: VM changed since scheduling", VmState::Running)
        } else {
            ("done: stopped", VmState::Stopped)
        };
        assert_eq!(h.last_note(id), note, "{ctx}");
        assert_eq!(h.vm(*v).state, state, "{ctx}");
    }
    assert_eq!(h.last_note(hostless), "done: VM changed since scheduling");
    assert!(h.calls(105).is_empty());
    h.shutdown().await;
}

/// §5.5 `destroyVM`: a Running VM is force-stopped first, a stopped one is not; an already
/// Destroyed user VM is left as it is, while a console proxy is expunged even then.
#[tokio::test(start_paused = true)]
async fn destroy_force_stops_running_vms_and_skips_destroyed_user_vms() {
    let h = build(config(), 4).await;
    h.vms.inner.upsert(VmRecord {
        kind: VmKind::ConsoleProxy,
        ..vm(103, FAILED, true)
    });
    h.vms.inner.set_state(VmId(101), VmState::Stopped, None);
    for v in [102, 103] {
        h.vms.inner.set_state(VmId(v), VmState::Destroyed, None);
    }
    let mut ids = Vec::new();
    for v in 100..104 {
        ids.push(h.ha.schedule_destroy(VmId(v), Some(FAILED)).await.unwrap());
    }
    let count_102 = h.vm(102).update_count;
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    let want: [(&[&str], &str); 4] = [
        (&["force_stop", "destroy"], "done: destroyed"),
        (&["destroy"], "done: destroyed"),
        (&[], "done: already destroyed"),
        (&["expunge"], "done: destroyed"),
    ];
    for ((v, id), (calls, note)) in (100..104).zip(ids).zip(want) {
        assert_eq!(h.calls(v), calls, "vm {v}");
        assert_eq!(h.last_note(id), note, "vm {v}");
    }
    assert_eq!(h.vm(100).state, VmState::Destroyed);
    assert_eq!(
        h.vm(102).update_count,
        count_102,
        "already destroyed: untouched"
    );
    assert!(h.vms.get(VmId(103)).is_none(), "the console proxy expunged");
    h.shutdown().await;
}

/// §5.6 cleanup: only final items whose time to try is at least time.between.failures old are
/// purged; a recent one stays (its tries are still inherited) until a later round.
#[tokio::test(start_paused = true)]
async fn cleanup_keeps_final_items_younger_than_time_between_failures() {
    let h = build(
        Config {
            time_between_cleanup: Duration::from_secs(3600),
            time_between_failures: Duration::from_secs(1800),
            ..config()
        },
        1,
    )
    .await;
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(3000)).await;
    h.fail_host().await;
    sleep(Duration::from_secs(601)).await;
    assert_eq!(h.item(100).step, WorkStep::Done);
    assert_eq!(
        h.work.items().len(),
        1,
        "done 10 min before the cleanup, window 30 min: kept"
    );
    sleep(Duration::from_secs(3600)).await;
    assert!(h.work.items().is_empty(), "purged at the next round");
    h.shutdown().await;
}
