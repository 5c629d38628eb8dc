//! `HighAvailabilityManagerImplTest`: its investigate and schedule cases against the agent and HA
//! managers.

use std::sync::Arc;
use std::time::Duration;

use cloudha_ha::*;
use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use tokio::time::sleep;

use super::*;
use cloudha_testkit::*;

// ---------------------------------------------------------------------------------------------
// HighAvailabilityManagerImplTest: investigate
// ---------------------------------------------------------------------------------------------

/// An agent manager whose chain is `investigators`, with host 1 (Up, no attache) in zone 1.
async fn manager_with(config: Config, investigators: Vec<Arc<dyn Investigator>>) -> Harness {
    let h = Harness::with_wiring(
        config.liveness,
        Wiring {
            investigators: Some(investigators),
            ..Wiring::default()
        },
    );
    let mut r = HostRecord::new(HOST, "h1", HypervisorType::Kvm);
    r.zone = Some(ZoneId(1));
    r.pod = Some(PodId(1));
    r.status = Some(Status::Up);
    h.manager.add_host(r).await.unwrap();
    h
}

fn mock_investigator(status: Option<HostVerdict>) -> MockInvestigator {
    let mut inv = MockInvestigator::new();
    inv.expect_name().return_const("CheckOnAgentInvestigator");
    inv.expect_host_status()
        .withf(|host| host.id == HOST)
        .times(1)
        .returning(move |_| status.map(|v| Finding::new(v, "mock")));
    inv
}

#[tokio::test(start_paused = true)]
async fn investigateHostStatusSuccess() {
    let h = manager_with(
        Config::default(),
        vec![Arc::new(mock_investigator(Some(HostVerdict::Down)))],
    )
    .await;
    let found = h.manager.investigate(HOST).await;
    let (f, by) = found.expect("a verdict");
    assert_eq!(
        (f.verdict, by),
        (HostVerdict::Down, "CheckOnAgentInvestigator")
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn investigateHostStatusFailure() {
    let h = manager_with(Config::default(), vec![Arc::new(mock_investigator(None))]).await;
    assert_eq!(h.manager.investigate(HOST).await, None);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn investigateHostStatusHADisabled() {
    // No investigators; VM-HA disabled: Alert, with a "VM-HA disabled" alert (not verified by
    // CloudStack's test; CloudStack sends it).
    let mut never = MockInvestigator::new();
    never.expect_name().return_const("Never");
    never.expect_host_status().never();
    let h = manager_with(
        {
            let mut c = Config::default();
            c.liveness.vm_ha_enabled = false;
            c
        },
        vec![Arc::new(never)],
    )
    .await;
    let (f, _) = h.manager.investigate(HOST).await.expect("a verdict");
    assert_eq!(f.verdict, HostVerdict::Alert);
    let alerts = h.alerts.of(AlertKind::HaDisabled, HOST);
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0].pod, alerts[0].zone),
        (Some(PodId(1)), Some(ZoneId(1)))
    );
    h.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// HighAvailabilityManagerImplTest: scheduleRestartForVmsOnHost, scheduleRestart
// ---------------------------------------------------------------------------------------------

struct Ha {
    ha: HaManager,
    agent: AgentManager,
    hosts: Arc<InMemoryHostStore>,
    vms: Arc<InMemoryVms>,
    work: Arc<InMemoryHaWorkStore>,
    alerts: Arc<RecordingAlerts>,
}

impl Ha {
    async fn new(config: Config) -> Self {
        let hosts = Arc::new(InMemoryHostStore::new());
        let vms = Arc::new(InMemoryVms::new());
        let work = Arc::new(InMemoryHaWorkStore::new());
        let alerts = Arc::new(RecordingAlerts::default());
        let config = {
            let mut c = config;
            c.ha.ha_startup_grace = Duration::ZERO;
            c
        };
        let agent = agent_over(&config.liveness, &hosts, alerts.clone()).await;
        let ha = HaManager::new(
            config.ha,
            OwnerId(1),
            &agent,
            HaPorts::new(work.clone(), vms.clone(), vec![], alerts.clone())
                .with_investigators(vec![]),
        );
        Self {
            ha,
            agent,
            hosts,
            vms,
            work,
            alerts,
        }
    }

    /// A routing host, Down, in pod `pod` of zone 1.
    async fn host(&self, id: u64, name: &str, hypervisor: HypervisorType, pod: u64) -> HostRecord {
        let mut r = HostRecord::new(HostId(id), name, hypervisor);
        r.pod = Some(PodId(pod));
        r.zone = Some(ZoneId(1));
        r.cluster = Some(ClusterId(1));
        r.status = Some(Status::Down);
        self.agent.add_host(r.clone()).await.unwrap();
        r
    }

    fn vm(
        &self,
        id: u64,
        name: &str,
        kind: VmKind,
        host: u64,
        hypervisor: HypervisorType,
        ha: bool,
    ) {
        self.vms.upsert({
            let mut r = VmRecord::new(VmId(id), name, hypervisor);
            r.kind = kind;
            r.host = Some(HostId(host));
            r.state = VmState::Running;
            r.update_count = 1;
            r.ha_enabled = ha;
            r.cluster = Some(ClusterId(1));
            r.zone = Some(ZoneId(1));
            r
        });
    }

    fn kinds(&self) -> Vec<AlertKind> {
        self.alerts.all_kinds()
    }
}

#[tokio::test(start_paused = true)]
async fn scheduleRestartForVmsOnHost() {
    // A KVM routing host with no VM on it: one "host is down" alert, nothing scheduled.
    let t = Ha::new(Config::default()).await;
    let host = t.host(1, "kvm1", HypervisorType::Kvm, 1).await;
    t.ha.schedule_restarts_for_host(&host, WorkReason::HostDown, ProveDead::First)
        .await;
    let alerts = t.alerts.of(AlertKind::HostDown, HOST);
    assert_eq!(t.kinds(), [AlertKind::HostDown]);
    assert_eq!(
        (alerts[0].pod, alerts[0].zone),
        (Some(PodId(1)), Some(ZoneId(1)))
    );
    assert!(t.work.items().is_empty());
}

#[tokio::test(start_paused = true)]
async fn scheduleRestartForVmsOnHostNotSupported() {
    // VMware: its VMs are vSphere HA's; no alert, nothing scheduled, even with HA VMs on it.
    let t = Ha::new(Config::default()).await;
    let host = t.host(1, "esx1", HypervisorType::VMware, 1).await;
    t.vm(
        10,
        "i-2-10-VM",
        VmKind::User,
        1,
        HypervisorType::VMware,
        true,
    );
    t.ha.schedule_restarts_for_host(&host, WorkReason::HostDown, ProveDead::First)
        .await;
    assert!(t.kinds().is_empty(), "{:?}", t.kinds());
    assert!(t.work.items().is_empty());
}

#[tokio::test(start_paused = true)]
async fn scheduleRestartForVmsOnHostHADisabled() {
    let t = Ha::new({
        let mut c = Config::default();
        c.liveness.vm_ha_enabled = false;
        c
    })
    .await;
    let host = t.host(1, "kvm1", HypervisorType::Kvm, 1).await;
    t.vm(10, "i-2-10-VM", VmKind::User, 1, HypervisorType::Kvm, true);
    t.ha.schedule_restarts_for_host(&host, WorkReason::HostDown, ProveDead::First)
        .await;
    assert_eq!(t.kinds(), [AlertKind::HaDisabled]);
    assert!(t.work.items().is_empty());
    assert_eq!(
        t.vms.get(VmId(10)).unwrap().state,
        VmState::Running,
        "not touched"
    );
}

#[tokio::test(start_paused = true)]
async fn scheduleRestartForVmsOnHostNonEmptyVMList() {
    // A user VM and a virtual router, both HA, on a XenServer host: both scheduled (each once;
    // CloudStack's mock setup scheduled the router twice), system VMs first, one host-down
    // alert naming them.
    let t = Ha::new(Config::default()).await;
    let host = t.host(1, "xen1", HypervisorType::XenServer, 1).await;
    t.vm(
        1,
        "i-2-3-VM",
        VmKind::User,
        1,
        HypervisorType::XenServer,
        true,
    );
    t.vm(
        2,
        "r-2-VM",
        VmKind::DomainRouter,
        1,
        HypervisorType::XenServer,
        true,
    );
    t.ha.schedule_restarts_for_host(&host, WorkReason::HostDown, ProveDead::First)
        .await;
    let mut items = t.work.items();
    items.sort_by_key(|i| i.id);
    let got: Vec<_> = items
        .iter()
        .map(|i| (i.vm, i.work_type, i.step, i.reason, i.host))
        .collect();
    assert_eq!(
        got,
        [
            (
                VmId(2),
                WorkType::Ha,
                WorkStep::Investigating,
                WorkReason::HostDown,
                Some(HOST)
            ),
            (
                VmId(1),
                WorkType::Ha,
                WorkStep::Investigating,
                WorkReason::HostDown,
                Some(HOST)
            ),
        ]
    );
    let down = t.alerts.of(AlertKind::HostDown, HOST);
    assert_eq!(down.len(), 1);
    assert!(
        down[0].message.contains("r-2-VM") && down[0].message.contains("i-2-3-VM"),
        "{}",
        down[0].message
    );
}

#[tokio::test(start_paused = true)]
async fn scheduleRestartHADisabled() {
    // VM-HA disabled: the VM is left alone: not stopped, fenced or started, and no try spent.
    let t = Ha::new({
        let mut c = Config::default();
        c.liveness.vm_ha_enabled = false;
        c
    })
    .await;
    t.host(1, "kvm1", HypervisorType::Kvm, 1).await;
    t.host(2, "kvm2", HypervisorType::Kvm, 1).await;
    let mut up = t.hosts.get(HostId(2)).unwrap();
    up.status = Some(Status::Up);
    t.agent.add_host(up).await.unwrap();
    t.vm(1, "i-2-1-VM", VmKind::User, 1, HypervisorType::Kvm, true);
    t.ha.start().await.unwrap();
    assert_eq!(
        t.ha.schedule_restart(VmId(1), ProveDead::First, WorkReason::Unknown)
            .await,
        None,
        "nothing scheduled"
    );
    assert!(t.work.items().is_empty(), "{:?}", t.work.items());
    assert_eq!(t.kinds(), vec![AlertKind::HaDisabled]);
    // The second trigger's path (no investigation) does not force-stop either.
    assert_eq!(
        t.ha.schedule_restart(
            VmId(1),
            ProveDead::AlreadyKnown,
            WorkReason::VmStoppedOnUpHost
        )
        .await,
        None
    );
    sleep(Duration::from_secs(3600)).await;
    let vm = t.vms.get(VmId(1)).unwrap();
    assert_eq!(
        (vm.state, vm.host),
        (VmState::Running, Some(HOST)),
        "not touched"
    );
    assert!(
        t.work
            .items()
            .iter()
            .all(|i| i.tries == 0 && i.fence_proof.is_none()),
        "{:?}",
        t.work.items()
    );
    assert!(!t.kinds().contains(&AlertKind::HaRestart));
    t.ha.stop().await;
}

#[tokio::test(start_paused = true)]
async fn scheduleRestartHostNotSupported() {
    let t = Ha::new(Config::default()).await;
    t.host(1, "esx1", HypervisorType::VMware, 1).await;
    t.vm(1, "i-2-1-VM", VmKind::User, 1, HypervisorType::VMware, true);
    assert_eq!(
        t.ha.schedule_restart(VmId(1), ProveDead::First, WorkReason::Unknown)
            .await,
        None
    );
    assert!(t.work.items().is_empty());
    assert!(t.kinds().is_empty());
}

#[tokio::test(start_paused = true)]
async fn scheduleRestartVmStoppedUnexpectedlyResolvesHostLocation() {
    // A non-HA VM that stopped on its own (ProveDead::AlreadyKnown): one "stopped unexpectedly"
    // alert carrying its host, pod and zone; the VM is marked stopped; nothing scheduled.
    let t = Ha::new(Config::default()).await;
    t.host(5, "cs-kvm06", HypervisorType::Kvm, 2).await;
    t.vm(3, "i-2-3-VM", VmKind::User, 5, HypervisorType::Kvm, false);
    assert_eq!(
        t.ha.schedule_restart(VmId(3), ProveDead::AlreadyKnown, WorkReason::Unknown)
            .await,
        None
    );
    let alerts = t.alerts.raised();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(
        (a.kind, a.host, a.vm, a.pod, a.zone),
        (
            AlertKind::VmStopped,
            Some(HostId(5)),
            Some(VmId(3)),
            Some(PodId(2)),
            Some(ZoneId(1))
        )
    );
    assert!(a.message.contains("i-2-3-VM"), "{}", a.message);
    assert_eq!(t.vms.get(VmId(3)).unwrap().state, VmState::Stopped);
    assert!(t.work.items().is_empty());
}

#[tokio::test(start_paused = true)]
async fn scheduleRestartVmStoppedUnexpectedlyFallsBackWhenHostGone() {
    // The VM's host record is gone: the alert still names the host by id.
    let t = Ha::new(Config::default()).await;
    t.vm(3, "i-2-3-VM", VmKind::User, 5, HypervisorType::Kvm, false);
    assert_eq!(
        t.ha.schedule_restart(VmId(3), ProveDead::AlreadyKnown, WorkReason::Unknown)
            .await,
        None
    );
    let alerts = t.alerts.raised();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        (alerts[0].kind, alerts[0].host, alerts[0].vm),
        (AlertKind::VmStopped, Some(HostId(5)), Some(VmId(3)))
    );
}
