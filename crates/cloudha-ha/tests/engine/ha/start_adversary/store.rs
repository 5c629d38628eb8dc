//! The work store at the saves around a start; keys; the brake; a start under way.

use super::*;

// ------------------------------------------------------------------------------------------
// The work store at the save right before the start.
// ------------------------------------------------------------------------------------------

/// The save recording the key fails (nothing written): no start this round; the next round asks
/// with the key once, and no try is spent.
#[tokio::test(start_paused = true)]
async fn a_failed_key_save_starts_nothing_and_the_next_round_starts_once() {
    let h = build(bounded_config(), 1).await;
    let work = ScriptedWork::new(h.work.clone(), Fault::Fail, key_save);
    let ha = manager_over(&h, OwnerId(7), work.clone(), h.vms.clone());
    ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(1)).await;
    assert_eq!(work.fired(), [Fault::Fail]);
    assert_eq!(keys(&h, 100).len(), 0, "no start without the key recorded");
    sleep(Duration::from_secs(1000)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(item.tries, 0, "{:?}", notes(&item));
    assert_eq!(h.starts(100), 1);
    assert_eq!(keys(&h, 100).len(), 1);
    assert_eq!(h.calls(100), ["force_stop"]);
    ha.stop().await;
    h.agent.stop().await;
}

/// The save recording the key lands, but its answer is lost: no start this round (correct), but
/// the item must not be lost.
#[tokio::test(start_paused = true)]
async fn a_key_save_that_lands_without_an_answer_does_not_strand_the_item() {
    let h = build(bounded_config(), 1).await;
    let work = ScriptedWork::new(h.work.clone(), Fault::LandThenFail, key_save);
    let ha = manager_over(&h, OwnerId(7), work.clone(), h.vms.clone());
    ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(1)).await;
    assert_eq!(work.fired(), [Fault::LandThenFail]);
    assert_eq!(keys(&h, 100).len(), 0, "no start on an unchecked claim");
    sleep(Duration::from_secs(3000)).await;
    let item = h.item(100);
    assert_eq!(
        (item.step, item.owner),
        (WorkStep::Done, None),
        "{:?}",
        notes(&item)
    );
    assert_eq!(h.starts(100), 1);
    ha.stop().await;
    h.agent.stop().await;
}

/// The same loss of an answer, at the save of step Scheduled right after the force-stop.
#[tokio::test(start_paused = true)]
async fn a_scheduled_save_that_lands_without_an_answer_does_not_strand_the_item() {
    let h = build(bounded_config(), 1).await;
    let work = ScriptedWork::new(
        h.work.clone(),
        Fault::LandThenFail,
        scheduled_after_force_stop,
    );
    let ha = manager_over(&h, OwnerId(7), work.clone(), h.vms.clone());
    ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(3000)).await;
    assert_eq!(work.fired(), [Fault::LandThenFail]);
    let item = h.item(100);
    assert_eq!(
        (item.step, item.owner, h.starts(100)),
        (WorkStep::Done, None, 1),
        "{:?}",
        notes(&item)
    );
    ha.stop().await;
    h.agent.stop().await;
}

/// A key save that hangs (cut at the store bound) and a manager restart meanwhile: the new
/// manager settles the start from the record, once; nothing was asked by the first.
#[tokio::test(start_paused = true)]
async fn a_key_save_that_hangs_then_a_restart_starts_once() {
    let mut h = build(bounded_config(), 1).await;
    h.mark_down(FAILED).await;
    let work = ScriptedWork::new(h.work.clone(), Fault::Hang, key_save);
    let first = manager_over(&h, OwnerId(7), work.clone(), h.vms.clone());
    first.start().await.unwrap();
    sleep(Duration::from_secs(5)).await;
    assert_eq!(work.fired(), [Fault::Hang]);
    first.stop().await;
    assert_eq!(keys(&h, 100).len(), 0);
    let second = manager_over(&h, OwnerId(7), work.clone(), h.vms.clone());
    second.start().await.unwrap();
    sleep(Duration::from_secs(1000)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(h.starts(100), 1);
    assert_eq!(h.calls(100), ["force_stop"]);
    second.stop().await;
    h.agent.stop().await;
}

// ------------------------------------------------------------------------------------------
// Keys.
// ------------------------------------------------------------------------------------------

/// Three more failures in a row (a new item each), each start landing with its answer lost:
/// every key sent is new unless repeated (a key names one start), each failure starts the VM
/// once, settled from the record.
#[tokio::test(start_paused = true)]
async fn keys_are_unique_across_items_and_each_failure_starts_once() {
    let h = build(bounded_config(), 1).await;
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(5)).await;
    // The VM runs on host 2 now; it fails there (answer lost), then again on wherever it went.
    let mut seen = HashSet::new();
    for round in 0..3 {
        let on = h.vm(100).host.expect("running");
        assert_ne!(on, FAILED, "round {round}");
        h.vms.set_start_mode(StartMode::LandsButSaysUnknown);
        h.host_down(on).await;
        sleep(Duration::from_secs(5)).await;
        h.vms.set_start_mode(StartMode::Answer);
        sleep(RETRY + Duration::from_secs(5)).await;
        let item = h.item(100);
        assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
        h.host_up(on).await;
    }
    let calls = keys(&h, 100);
    for (k, repeated, _) in &calls {
        assert!(seen.insert(k.clone()) || *repeated, "{calls:?}");
    }
    assert_eq!(h.starts(100), 4, "one per failure: {calls:?}");
    h.shutdown().await;
}

// ------------------------------------------------------------------------------------------
// The brake, a start under way.
// ------------------------------------------------------------------------------------------

/// A start goes unanswered (lost); then most of the cluster fails and the brake holds. The item
/// is braked (it asks nothing while the brake holds), and once the brake lifts it asks again
/// with the same key, once.
#[tokio::test(start_paused = true)]
async fn a_brake_while_a_start_is_unknown_holds_then_asks_with_the_same_key() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + Duration::from_secs(1)).await;
    assert!(h.item(100).start_unknown);
    h.host_down(HostId(3)).await;
    h.host_down(HostId(4)).await;
    assert!(h.ha.brake_holds(ClusterId(1)).is_some());
    h.vms.set_start_mode(StartMode::Answer);
    sleep(RETRY + Duration::from_secs(10)).await;
    let item = h.item(100);
    assert!(item.braked, "{:?}", notes(&item));
    assert_eq!(keys(&h, 100).len(), 1, "nothing asked under the brake");
    h.host_up(HostId(3)).await;
    h.host_up(HostId(4)).await;
    sleep(Duration::from_secs(600)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(h.starts(100), 1);
    let calls = keys(&h, 100);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].0, calls[1].0, "the same key");
    h.shutdown().await;
}

/// The orchestrator commits the key with the VM in Starting and stays there a while: the item
/// waits without spending tries and without asking again, and is done once the VM runs.
#[tokio::test(start_paused = true)]
async fn a_start_seen_under_way_is_waited_for_without_asking_again() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + Duration::from_secs(1)).await;
    let key = h.item(100).start_key().unwrap();
    h.vms.inner.update(VmId(100), |r| {
        r.state = VmState::Starting;
        r.host = Some(HostId(2));
        r.start_key = Some(key);
        r.update_count += 1;
    });
    h.vms.set_start_mode(StartMode::Answer);
    sleep(RETRY * 10).await;
    let item = h.item(100);
    assert!(!item.step.is_final(), "{:?}", notes(&item));
    assert!(item.start_unknown);
    assert_eq!(item.tries, 1, "waiting spends no try: {:?}", notes(&item));
    assert_eq!(keys(&h, 100).len(), 1, "not asked again");
    h.vms.inner.update(VmId(100), |r| {
        r.state = VmState::Running;
        r.update_count += 1;
    });
    sleep(RETRY + Duration::from_secs(1)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert!(
        notes(&item)
            .last()
            .unwrap()
            .contains(&format!("start {key} happened")),
        "{:?}",
        notes(&item)
    );
    assert_eq!(keys(&h, 100).len(), 1);
    h.shutdown().await;
}
