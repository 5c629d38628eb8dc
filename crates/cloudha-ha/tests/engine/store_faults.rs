//! The HA manager over a work store that fails: backend errors (with their source) are retried,
//! the item is neither lost nor run twice; a write refused because the claim moved stops the
//! processing at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cloudha_ha::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use cloudha_testkit::{FlakyWork, ScriptedFencer, agent_over};
use tokio::time::sleep;

struct Rig {
    ha: HaManager,
    vms: Arc<InMemoryVms>,
    work: Arc<FlakyWork>,
    fences: Arc<ScriptedFencer>,
}

/// Host 1 (Down) and host 2 (Up) in cluster 1; HA VM 100 on host 1.
async fn rig(owner: OwnerId, fence_delay: Duration, work: Option<Arc<FlakyWork>>) -> Rig {
    let hosts = Arc::new(InMemoryHostStore::new());
    for (id, status) in [(1, Status::Down), (2, Status::Up)] {
        let mut r = HostRecord::new(HostId(id), format!("h{id}"), HypervisorType::Kvm);
        r.cluster = Some(ClusterId(1));
        r.status = Some(status);
        hosts.insert(r);
    }
    let vms = Arc::new(InMemoryVms::new());
    vms.upsert({
        let mut r = VmRecord::new(VmId(100), "vm100", HypervisorType::Kvm);
        r.host = Some(HostId(1));
        r.state = VmState::Running;
        r.ha_enabled = true;
        r.cluster = Some(ClusterId(1));
        r
    });
    let work = work.unwrap_or_default();
    let fences = Arc::new(ScriptedFencer::new().with_delay(fence_delay));
    let config = {
        let mut c = Config::default();
        c.ha.ha_startup_grace = Duration::ZERO;
        c
    };
    let agent = agent_over(&config.liveness, &hosts, Arc::new(LogAlerts)).await;
    let ha = HaManager::new(
        config.ha,
        owner,
        &agent,
        HaPorts::new(
            work.clone(),
            vms.clone(),
            vec![fences.clone()],
            Arc::new(LogAlerts),
        )
        .with_investigators(Vec::new()),
    );
    Rig {
        ha,
        vms,
        work,
        fences,
    }
}

#[tokio::test(start_paused = true)]
async fn backend_errors_are_retried_and_the_item_is_neither_lost_nor_run_twice() {
    let r = rig(OwnerId(1), Duration::ZERO, None).await;
    // The first take fails, then the write-back of the finished item fails three times over
    // (the mid-processing save too): the store is down for a while.
    r.work.fail_takes.store(1, Ordering::SeqCst);
    r.work.fail_updates.store(4, Ordering::SeqCst);
    r.ha.start().await.unwrap();
    let id =
        r.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .expect("scheduled");
    sleep(Duration::from_secs(120)).await;

    let errors = r.work.errors.lock().unwrap().clone();
    assert_eq!(errors.len(), 5, "{errors:?}");
    assert!(
        errors
            .iter()
            .all(|e| e.ends_with(": connection reset by peer")),
        "each error carries its source: {errors:?}"
    );
    let item = r.work.inner.item(id).expect("not lost");
    assert_eq!(item.step, WorkStep::Done, "{:?}", item.history);
    assert_eq!(
        item.owner, None,
        "the claim was released once the store came back"
    );
    let vm = r.vms.get(VmId(100)).unwrap();
    assert_eq!((vm.state, vm.host), (VmState::Running, Some(HostId(2))));
    assert_eq!(r.fences.calls(), 1, "fenced once");
    assert_eq!(r.work.inner.pending_count(), 0);
    r.ha.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_whose_claim_moved_stops_without_writing() {
    // Owner 1 takes the item and fences slowly (60 s); meanwhile it is declared departed and
    // owner 2 takes the item over. Owner 1's save after its fence is refused: it must neither
    // start the VM nor overwrite owner 2's item.
    let slow = rig(OwnerId(1), Duration::from_secs(60), None).await;
    slow.ha.start().await.unwrap();
    let id = slow
        .ha
        .schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
        .await
        .expect("scheduled");
    sleep(Duration::from_secs(10)).await;
    let held = slow.work.inner.item(id).unwrap();
    assert_eq!(held.owner, Some(OwnerId(1)), "owner 1 is fencing");

    // Owner 2 (its peer) releases owner 1's claims and takes the item itself, by hand.
    assert_eq!(slow.work.release_owner(OwnerId(1)).await.unwrap(), 1);
    let mut taken = slow
        .work
        .take(OwnerId(2), Timestamp::from_micros(u64::MAX))
        .await
        .unwrap()
        .expect("released");
    taken.note(taken.taken.unwrap(), "owner 2 took over");
    taken.version = slow.work.update(OwnerId(2), &taken).await.unwrap();

    sleep(Duration::from_secs(120)).await;
    let item = slow.work.inner.item(id).unwrap();
    assert_eq!(item.owner, Some(OwnerId(2)), "owner 2 still holds it");
    assert_eq!(
        item.version, taken.version,
        "owner 1 wrote nothing after losing the claim"
    );
    let vm = slow.vms.get(VmId(100)).unwrap();
    assert_eq!(
        (vm.state, vm.host),
        (VmState::Running, Some(HostId(1))),
        "owner 1 neither force-stopped nor started the VM"
    );
    slow.ha.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_hung_store_or_fencer_holds_no_worker_forever() {
    // The first take never answers, and the fencer never answers either.
    let r = rig(OwnerId(1), Duration::from_secs(365 * 24 * 3600), None).await;
    r.work.hang_takes.store(1, Ordering::SeqCst);
    r.ha.start().await.unwrap();
    let id =
        r.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .expect("scheduled");
    sleep(STORE_CALL_BOUND + Duration::from_secs(5)).await;
    assert_eq!(
        r.fences.calls(),
        1,
        "the hung take was cut at its bound and the item taken again"
    );
    let wait = Config::default().liveness.wait;
    sleep(wait).await;
    let item = r.work.inner.item(id).expect("not lost");
    assert!(
        item.history
            .iter()
            .any(|e| e.what.contains(&format!("no answer within {wait:?}"))),
        "the hung fence was cut at `wait` and failed: {:?}",
        item.history
    );
    assert_eq!(item.tries, 1, "{:?}", item.history);
    assert_ne!(item.step, WorkStep::Done);
    assert_eq!(item.owner, None, "the worker let the item go");
    let vm = r.vms.get(VmId(100)).unwrap();
    assert_eq!(
        (vm.state, vm.host),
        (VmState::Running, Some(HostId(1))),
        "no proof, no start"
    );
    r.ha.stop().await;
}
