//! The brake: fencing held while most of a cluster is suspect, the operator's release and
//! declaration, and the startup grace.

use super::*;

#[tokio::test(start_paused = true)]
async fn the_brake_holds_fencing_while_most_of_a_cluster_is_suspect() {
    let h = build(
        {
            let mut c = config();
            c.ha.ha_brake_fraction = 0.5;
            c.ha.ha_workers = 1;
            c
        },
        1,
    )
    .await;
    let mut other = vm(200, HostId(11), true);
    other.cluster = Some(ClusterId(2));
    h.vms.inner.upsert(other);
    h.ha.start().await.unwrap();
    // 3 of 4 hosts of cluster 1 down: more than half suspect.
    h.host_down(HostId(2)).await;
    h.host_down(HostId(3)).await;
    h.fail_host().await;
    sleep(Duration::from_secs(2)).await;
    let item = h.item(100);
    assert!(item.braked, "{:?}", item.history);
    assert_eq!(item.tries, 0, "braked work spends no try");
    assert_eq!(h.fencer.calls(), 0, "nothing fenced while the brake holds");
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
    h.vms.inner.upsert(vm(101, HostId(4), true));
    // Hosts 2 and 3 went Down before this HA manager was built (they run no VM).
    h.mark_down(HostId(2)).await;
    h.mark_down(HostId(3)).await;
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(2)).await;
    assert!(h.item(100).braked);
    h.ha.release_brake(ClusterId(1)).await;
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.starts(100), 1, "released: fenced and restarted");
    assert_eq!(h.fencer.calls(), 1);
    // Declaring host 4 dead restarts its VMs without fencing, on the operator's word.
    h.ha.declare_host_dead(HostId(4)).await.unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.starts(101), 1);
    assert_eq!(h.fencer.calls(), 1, "no fence for the declared host");
    let proof = h.item(101).fence_proof.expect("a proof");
    assert_eq!(
        (proof.kind, proof.host, proof.evidence.as_str()),
        (
            ProofKind::OperatorWord,
            Some(HostId(4)),
            "an operator declared host 4 dead"
        )
    );
    assert_eq!(
        h.hosts.get(HostId(4)).unwrap().resource_state,
        ResourceState::Degraded
    );
    h.shutdown().await;
}

/// A host that went Down while no HA manager ran has its VMs scheduled when one starts, with
/// one host-down alert; VMs some HA work already took are left to it.
#[tokio::test(start_paused = true)]
async fn a_down_no_ha_manager_followed_is_scheduled_at_start() {
    let mut h = build(config(), 2).await;
    // VM 101 was already taken by HA work (finished or not): not scheduled again.
    let taken =
        h.ha.schedule_restart(VmId(101), ProveDead::First, WorkReason::HostDown)
            .await
            .expect("scheduled");
    h.mark_down(FAILED).await;
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(2)).await;
    assert_eq!(h.starts(100), 1, "the VM no work took is restarted");
    assert_eq!(h.work.items_of(VmId(100)).len(), 1, "once");
    assert_eq!(h.work.items_of(VmId(101)).len(), 1, "its own item only");
    assert_eq!(h.work.item(taken).unwrap().step, WorkStep::Done);
    assert_eq!(
        h.kinds()
            .iter()
            .filter(|k| **k == AlertKind::HostDown)
            .count(),
        1
    );
    h.shutdown().await;
}

/// A VM HA restarted once (its item is final) fails again with its new host while no HA manager
/// runs (the manager died between the status change and the scheduling): the old item answers
/// for the first failure only, and the VM is scheduled at start. A final item for this host that
/// left the VM as it is (HA gave up) still answers for it: no retry loop at every start.
#[tokio::test(start_paused = true)]
async fn a_vm_failing_again_is_scheduled_at_start_despite_its_old_item() {
    let mut h = build(config(), 2).await;
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(2)).await;
    let second = h.vm(100).host.expect("restarted once");
    assert_eq!(h.vm(101).host, Some(second), "both on the first candidate");
    h.ha.stop().await;
    // VM 101: an earlier HA item for `second` gave up on it as it is now.
    let rec = h.vm(101);
    let mut gave_up = stored_item(
        WorkType::Ha,
        WorkStep::Error,
        &rec,
        5,
        Timestamp::UNIX_EPOCH,
    );
    gave_up.host = Some(second);
    h.work.insert(gave_up).await.unwrap();
    // `second` goes Down with no HA manager running.
    h.mark_down(second).await;
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(2)).await;
    assert_eq!(h.starts(100), 2, "failed again, restarted again");
    assert_ne!(h.vm(100).host, Some(second));
    assert_eq!(h.work.items_of(VmId(100)).len(), 2);
    assert_eq!(h.starts(101), 1, "HA gave up on it as it is: left alone");
    assert_eq!(h.work.items_of(VmId(101)).len(), 2);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn startup_grace_holds_the_brake_everywhere() {
    let h = build(
        {
            let mut c = config();
            c.ha.ha_startup_grace = Duration::from_secs(300);
            c
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
