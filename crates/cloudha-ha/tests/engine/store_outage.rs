//! The HA manager while its work store is away (a database down or cut off) for minutes: it
//! keeps retrying with a growing pause and says so; no worker runs before its start has
//! released its old claims; new work the store does not take is kept in memory, in order, and
//! stored once the store is back; nothing is lost and no VM runs twice.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cloudha_ha::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use cloudha_testkit::{FlakyWork, RecordingAlerts, ScriptedFencer, agent_over};
use tokio::time::sleep;

pub(super) struct Rig {
    pub(super) agent: cloudha_liveness::AgentManager,
    pub(super) ha: HaManager,
    pub(super) vms: Arc<InMemoryVms>,
    pub(super) work: Arc<FlakyWork>,
    pub(super) fences: Arc<ScriptedFencer>,
    pub(super) alerts: Arc<RecordingAlerts>,
}

/// Host 1 and host 2 Up in cluster 1 (host 1 `down` when asked); HA VMs 100 and 101 on host 1.
async fn rig(down: bool) -> Rig {
    rig_with(down, &[100, 101]).await
}

/// [`rig`] with the HA VMs `vm_ids` on host 1.
pub(super) async fn rig_with(down: bool, vm_ids: &[u64]) -> Rig {
    let hosts = Arc::new(InMemoryHostStore::new());
    for (id, status) in [
        (1, if down { Status::Down } else { Status::Up }),
        (2, Status::Up),
    ] {
        let mut r = HostRecord::new(HostId(id), format!("h{id}"), HypervisorType::Kvm);
        r.cluster = Some(ClusterId(1));
        r.status = Some(status);
        hosts.insert(r);
    }
    let vms = Arc::new(InMemoryVms::new());
    vms.set_capacity(HostId(2), 100);
    for &id in vm_ids {
        vms.upsert({
            let mut r = VmRecord::new(VmId(id), format!("vm{id}"), HypervisorType::Kvm);
            r.host = Some(HostId(1));
            r.state = VmState::Running;
            r.ha_enabled = true;
            r.cluster = Some(ClusterId(1));
            r
        });
    }
    let work = Arc::new(FlakyWork::new());
    let fences = Arc::new(ScriptedFencer::new());
    let alerts = Arc::new(RecordingAlerts::new());
    let config = {
        let mut c = Config::default();
        c.ha.ha_startup_grace = Duration::ZERO;
        c
    };
    let agent = agent_over(&config.liveness, &hosts, alerts.clone()).await;
    let ha = HaManager::new(
        config.ha,
        OwnerId(1),
        &agent,
        HaPorts::new(
            work.clone(),
            vms.clone(),
            vec![fences.clone()],
            alerts.clone(),
        )
        .with_investigators(Vec::new()),
    );
    Rig {
        agent,
        ha,
        vms,
        work,
        fences,
        alerts,
    }
}

pub(super) fn on_host_2(vms: &InMemoryVms, id: u64) -> bool {
    let vm = vms.get(VmId(id)).unwrap();
    (vm.state, vm.host) == (VmState::Running, Some(HostId(2)))
}

#[tokio::test(start_paused = true)]
async fn new_work_the_store_does_not_take_waits_in_memory_in_order_and_is_stored_once_back() {
    let r = rig(false).await;
    r.ha.start().await.unwrap();
    r.work.away.store(true, Ordering::SeqCst);
    // Host 1 is proven Down while the store is away: both its VMs are to be restarted.
    r.agent
        .apply(HostId(1), Event::HostDown, "proven down")
        .await
        .unwrap();
    sleep(Duration::from_secs(5)).await;
    let inserts = r
        .work
        .errors
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.contains("backend: insert"))
        .count();
    assert!(
        (3..=9).contains(&inserts),
        "three tries for the first VM's item, none for the second, which waits behind it, \
         then rounds over both (1 s, then 2 s apart) ({inserts} inserts)"
    );
    let said: Vec<String> = r
        .alerts
        .raised()
        .into_iter()
        .filter(|a| a.kind == AlertKind::HaRestartFailed)
        .map(|a| a.message)
        .collect();
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(
        said.iter()
            .all(|m| m.contains("cannot be stored yet") && m.contains("once the store is back")),
        "{said:?}"
    );
    assert!(
        said[0].contains("connection refused"),
        "the cause is named: {said:?}"
    );

    // Five minutes away: the retries slow down (1 s, 2 s, ... 30 s), not one per second.
    let at_outage = r.work.calls.load(Ordering::SeqCst);
    sleep(Duration::from_secs(300)).await;
    let during = r.work.calls.load(Ordering::SeqCst) - at_outage;
    assert!(
        during <= 60,
        "{during} store calls in 5 minutes: the pauses grow"
    );
    assert!(
        r.work.inner.items().is_empty(),
        "nothing written while away"
    );
    assert!(!on_host_2(&r.vms, 100) && !on_host_2(&r.vms, 101));

    r.work.away.store(false, Ordering::SeqCst);
    sleep(Duration::from_secs(120)).await;
    let items = r.work.inner.items();
    assert_eq!(
        items.iter().map(|i| i.vm).collect::<Vec<_>>(),
        vec![VmId(100), VmId(101)],
        "both stored, in the order scheduled, once each"
    );
    assert!(items.iter().all(|i| i.step == WorkStep::Done), "{items:?}");
    assert!(on_host_2(&r.vms, 100) && on_host_2(&r.vms, 101));
    assert_eq!(r.fences.calls(), 1, "one fence for the host");
    r.ha.stop().await;
}

#[tokio::test(start_paused = true)]
async fn no_worker_runs_before_a_start_has_released_its_old_claims() {
    let r = rig(true).await;
    // This server's item from before its restart: claimed by it, mid-way.
    let mut old = WorkItem::new(
        WorkType::Ha,
        WorkStep::Investigating,
        WorkReason::HostDown,
        &r.vms.get(VmId(100)).unwrap(),
        Some(HostId(1)),
        Timestamp::from_micros(0),
    );
    old.owner = Some(OwnerId(1));
    old.taken = Some(Timestamp::from_micros(0));
    let id = r.work.inner.insert(old).await.unwrap();
    r.work.away.store(true, Ordering::SeqCst);
    r.ha.start()
        .await
        .expect("a store that is away does not fail the start");
    sleep(Duration::from_secs(180)).await;
    assert_eq!(
        r.work.takes.load(Ordering::SeqCst),
        0,
        "no take before the old claims are released"
    );
    assert_eq!(r.work.inner.item(id).unwrap().owner, Some(OwnerId(1)));

    r.work.away.store(false, Ordering::SeqCst);
    sleep(Duration::from_secs(120)).await;
    let item = r.work.inner.item(id).unwrap();
    assert_eq!(item.step, WorkStep::Done, "{:?}", item.history);
    assert!(on_host_2(&r.vms, 100));
    // VM 101 no HA work took: the start's reconciliation, run once the store was back.
    assert!(on_host_2(&r.vms, 101));
    let items = r.work.inner.items();
    assert_eq!(
        items.iter().filter(|i| i.vm == VmId(101)).count(),
        1,
        "scheduled once: {items:?}"
    );
    assert_eq!(r.fences.calls(), 1);
    r.ha.stop().await;
}

#[tokio::test(start_paused = true)]
async fn workers_keep_trying_a_store_that_went_away_with_a_growing_pause() {
    let r = rig(false).await;
    r.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    r.work.away.store(true, Ordering::SeqCst);
    let at_outage = r.work.takes.load(Ordering::SeqCst);
    sleep(Duration::from_secs(600)).await;
    let takes = r.work.takes.load(Ordering::SeqCst) - at_outage;
    // 1 + 2 + 4 + 8 + 16 s, then every 30 s: about 24 in ten minutes (600 at one per second).
    assert!((15..=40).contains(&takes), "{takes} takes in ten minutes");
    r.work.away.store(false, Ordering::SeqCst);
    let at_return = r.work.takes.load(Ordering::SeqCst);
    // Taken again at the next try at the latest (the pause is at most 30 s); then the pause
    // starts again from 1 s.
    sleep(Duration::from_secs(31)).await;
    assert!(r.work.takes.load(Ordering::SeqCst) > at_return);
    r.agent
        .apply(HostId(1), Event::HostDown, "proven down")
        .await
        .unwrap();
    sleep(Duration::from_secs(60)).await;
    assert!(on_host_2(&r.vms, 100) && on_host_2(&r.vms, 101));
    r.ha.stop().await;
}
