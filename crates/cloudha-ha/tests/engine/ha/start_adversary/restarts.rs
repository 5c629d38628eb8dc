//! Manager restarts at each point of the start path; claims moving; two managers.

use super::*;

// ------------------------------------------------------------------------------------------
// Manager restarts.
// ------------------------------------------------------------------------------------------

/// A manager stopped (and a new one started over the same stores at once) at many points of the
/// start path, the start landing 150 s after it was asked: one start, same key throughout, the
/// VM force-stopped once, the item done.
#[tokio::test(start_paused = true)]
async fn a_restart_at_any_point_of_an_unknown_start_starts_once() {
    for stop_at in [
        1, 5, 30, 59, 61, 100, 149, 151, 160, 161, 170, 215, 221, 300,
    ] {
        let mut h = build(bounded_config(), 1).await;
        h.vms.set_start_mode(StartMode::Hang {
            lands_after: Some(Duration::from_secs(150)),
        });
        h.mark_down(FAILED).await;
        h.ha.start().await.unwrap();
        sleep(Duration::from_secs(stop_at)).await;
        h.ha.stop().await;
        let second = new_manager(
            &h.config, &h.agent, &h.vms, &h.work, &h.alerts, &h.verdict, &h.fencer,
        );
        second.start().await.unwrap();
        sleep(Duration::from_secs(1000)).await;
        let item = h.item(100);
        assert_eq!(
            item.step,
            WorkStep::Done,
            "stop at {stop_at}: {:?}",
            notes(&item)
        );
        assert_eq!(h.starts(100), 1, "stop at {stop_at}: {:?}", keys(&h, 100));
        let calls = keys(&h, 100);
        let first = &calls[0].0;
        assert!(
            calls.iter().all(|(k, _, _)| k == first),
            "stop at {stop_at}: one key: {calls:?}"
        );
        assert_eq!(h.calls(100), ["force_stop"], "stop at {stop_at}");
        assert_eq!(h.vm(100).state, VmState::Running);
        second.stop().await;
        h.agent.stop().await;
    }
}

/// The manager dies right after HA force-stopped the VM, before it recorded step Scheduled (the
/// save hangs; the manager is stopped meanwhile). The VM is Stopped by HA, on a recorded proof.
#[tokio::test(start_paused = true)]
async fn a_restart_between_force_stop_and_its_save_leaves_the_vm_stopped() {
    let mut h = build(bounded_config(), 1).await;
    h.mark_down(FAILED).await;
    let work = ScriptedWork::new(h.work.clone(), Fault::Hang, scheduled_after_force_stop);
    let first = manager_over(&h, OwnerId(7), work.clone(), h.vms.clone());
    first.start().await.unwrap();
    sleep(Duration::from_secs(5)).await;
    assert_eq!(work.fired(), [Fault::Hang]);
    assert_eq!(h.calls(100), ["force_stop"], "HA stopped the VM");
    assert_eq!(h.vm(100).state, VmState::Stopped);
    first.stop().await;

    let second = manager_over(&h, OwnerId(7), work.clone(), h.vms.clone());
    second.start().await.unwrap();
    sleep(Duration::from_secs(1000)).await;
    let item = h.item(100);
    // HA stopped the VM on its proof: the restart must end with the VM started, once.
    assert_eq!(
        (h.starts(100), h.vm(100).state),
        (1, VmState::Running),
        "{:?}",
        notes(&item)
    );
    assert_eq!(item.step, WorkStep::Done);
    second.stop().await;
    h.agent.stop().await;
}

/// The manager dies while a start is in flight (its outcome unknown, the key recorded) and the
/// failed host comes back Up before a new manager resumes the item.
#[tokio::test(start_paused = true)]
async fn a_restart_then_host_up_cancels_an_unknown_start() {
    let mut h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.mark_down(FAILED).await;
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(10)).await;
    h.ha.stop().await;
    let item = h.item(100);
    assert!(item.start_unknown && item.step == WorkStep::Scheduled);
    assert_eq!(h.calls(100), ["force_stop"]);
    // The start never landed. The failed host reconnects (fenced, it comes back empty).
    h.host_up(FAILED).await;
    h.vms.set_start_mode(StartMode::Answer);
    let second = new_manager(
        &h.config, &h.agent, &h.vms, &h.work, &h.alerts, &h.verdict, &h.fencer,
    );
    second.start().await.unwrap();
    sleep(Duration::from_secs(1000)).await;
    let item = h.item(100);
    assert_eq!(
        (h.starts(100), h.vm(100).state),
        (1, VmState::Running),
        "the VM HA stopped is started (same key): {:?}",
        notes(&item)
    );
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    let calls = keys(&h, 100);
    assert!(calls.iter().all(|(k, _, _)| *k == calls[0].0), "{calls:?}");
    second.stop().await;
    h.agent.stop().await;
}

/// Without a manager restart, the host coming back Up while a start is unknown does not cancel
/// the item (it is past Investigating): the start is settled and made once.
#[tokio::test(start_paused = true)]
async fn the_host_up_while_a_start_is_unknown_settles_the_start() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + Duration::from_secs(1)).await;
    assert!(h.item(100).start_unknown);
    h.host_up(FAILED).await;
    h.vms.set_start_mode(StartMode::Answer);
    sleep(RETRY).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(h.starts(100), 1);
    let calls = keys(&h, 100);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].0, calls[1].0, "the same key");
    h.shutdown().await;
}

// ------------------------------------------------------------------------------------------
// Claims moving, two managers.
// ------------------------------------------------------------------------------------------

/// Owner 7 is stuck in a start (it lands at 30 s, unanswered); its peer 8 releases 7's claims
/// and takes the item: it asks again with the same key (joining the start under way), never a
/// new one; 7's late write-back is refused.
#[tokio::test(start_paused = true)]
async fn a_claim_taken_over_while_a_start_is_unknown_asks_with_the_same_key() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang {
        lands_after: Some(Duration::from_secs(30)),
    });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(10)).await;
    let held = h.item(100);
    assert_eq!(held.owner, Some(OwnerId(7)));
    assert!(held.start_unknown);
    let b = peer(&h, OwnerId(8));
    b.start().await.unwrap();
    assert_eq!(b.release_peer(OwnerId(7)).await.unwrap(), 1);
    settle().await;
    assert_eq!(h.item(100).owner, Some(OwnerId(8)), "8 took the item");
    sleep(Duration::from_secs(1000)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(h.starts(100), 1);
    let calls = keys(&h, 100);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].0, calls[1].0, "8 asked with 7's key");
    assert!(calls[1].1, "and joined the start under way");
    assert_eq!(h.calls(100), ["force_stop"], "8 did not stop the VM again");
    b.stop().await;
    h.shutdown().await;
}

/// Two managers over the same stores and the same agent both follow the host's failure (each
/// schedules an item): one start.
#[tokio::test(start_paused = true)]
async fn two_managers_following_one_failure_start_the_vm_once() {
    let h = build(bounded_config(), 2).await;
    h.vms.set_start_mode(StartMode::Hang {
        lands_after: Some(Duration::from_secs(30)),
    });
    let b = peer(&h, OwnerId(8));
    h.ha.start().await.unwrap();
    b.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(2000)).await;
    for vm in [100, 101] {
        assert_eq!(h.starts(vm), 1, "vm {vm}: {:?}", keys(&h, vm));
        assert!(
            h.work.items_of(VmId(vm)).iter().all(|i| i.step.is_final()),
            "vm {vm}: {:?}",
            h.work.items_of(VmId(vm))
        );
    }
    b.stop().await;
    h.shutdown().await;
}
