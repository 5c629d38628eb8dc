//! Newer items and operator actions while a start is unknown; the orchestrator delivering late;
//! the HA planner fallback; retries running out.

use super::*;

// ------------------------------------------------------------------------------------------
// Newer items, operator actions.
// ------------------------------------------------------------------------------------------

/// Item 1's start is in flight (it lands at 200 s; no answer). An operator restarts the VM on
/// their word (`schedule_restart(.., AlreadyKnown, ..)`): a newer item for a VM HA stopped.
#[tokio::test(start_paused = true)]
async fn an_operator_restart_while_a_start_is_unknown_does_not_start_twice() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang {
        lands_after: Some(Duration::from_secs(200)),
    });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + Duration::from_secs(1)).await;
    let older = h.item(100);
    assert!(older.start_unknown);
    h.vms.set_start_mode(StartMode::Answer);
    let newer =
        h.ha.schedule_restart(VmId(100), ProveDead::AlreadyKnown, WorkReason::HostDown)
            .await
            .expect("scheduled");
    sleep(Duration::from_secs(1000)).await;
    let calls = keys(&h, 100);
    assert_eq!(
        h.starts(100),
        1,
        "one start while the first one's outcome was unknown: {calls:?}; older {:?}; newer {:?}",
        notes(&h.work.item(older.id).unwrap()),
        notes(&h.work.item(newer).unwrap())
    );
    h.shutdown().await;
}

/// Item 1's start is lost (no answer, never lands). While it is being asked, an operator
/// schedules a restart proven first (`ProveDead::First`); that item waits (another item of the VM
/// is running) and is still pending at item 1's next round.
#[tokio::test(start_paused = true)]
async fn a_newer_item_does_not_strand_an_unknown_start() {
    let mut c = bounded_config();
    // Legit settings: an investigation retried less often than a restart.
    c.ha.investigate_retry_interval = Duration::from_secs(300);
    let h = build(c, 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(10)).await;
    assert!(h.item(100).start_unknown);
    h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
        .await
        .expect("scheduled");
    h.vms.set_start_mode(StartMode::Answer);
    sleep(Duration::from_secs(2000)).await;
    let items = h.work.items_of(VmId(100));
    let histories: Vec<Vec<String>> = items.iter().map(notes).collect();
    let settled = h.starts(100) == 1 && h.vm(100).state == VmState::Running;
    let open = items.iter().any(|i| !i.step.is_final());
    let gave_up = h.kinds().contains(&AlertKind::HaGaveUp);
    assert!(
        settled || open || gave_up,
        "the VM HA stopped is left stopped, silently: {histories:?}"
    );
    assert!(h.starts(100) <= 1);
    h.shutdown().await;
}

/// An operator stops the VM while HA's start is unknown (and still in flight): HA asks nothing
/// more (the VM changed); the start in flight is the orchestrator's.
#[tokio::test(start_paused = true)]
async fn an_operator_stop_while_a_start_is_unknown_makes_ha_ask_nothing_more() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + Duration::from_secs(1)).await;
    assert!(h.item(100).start_unknown);
    let stop =
        h.ha.schedule_stop(VmId(100), HostId(2), WorkType::Stop)
            .await
            .expect("scheduled");
    settle().await;
    assert_eq!(h.work.item(stop).unwrap().step, WorkStep::Done);
    h.vms.set_start_mode(StartMode::Answer);
    sleep(Duration::from_secs(1000)).await;
    let item = h.item_of_type(100, WorkType::Ha);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert!(
        notes(&item).last().unwrap().contains("not started again"),
        "{:?}",
        notes(&item)
    );
    assert_eq!(keys(&h, 100).len(), 1, "asked once");
    assert_eq!(h.starts(100), 0);
    h.shutdown().await;
}

/// An operator destroys the VM while HA's start is unknown: HA asks nothing more.
#[tokio::test(start_paused = true)]
async fn an_operator_destroy_while_a_start_is_unknown_makes_ha_ask_nothing_more() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + Duration::from_secs(1)).await;
    h.ha.schedule_destroy(VmId(100), None)
        .await
        .expect("scheduled");
    settle().await;
    h.vms.set_start_mode(StartMode::Answer);
    sleep(Duration::from_secs(1000)).await;
    assert_eq!(h.vm(100).state, VmState::Destroyed);
    let item = h.item_of_type(100, WorkType::Ha);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(keys(&h, 100).len(), 1, "asked once");
    h.shutdown().await;
}

/// An operator migration of a VM whose start is unknown has nothing to migrate, and the HA item
/// settles its start (same key) once.
#[tokio::test(start_paused = true)]
async fn an_operator_migration_while_a_start_is_unknown_changes_nothing() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + Duration::from_secs(1)).await;
    h.ha.schedule_migration(VmId(100), WorkReason::HostMaintenance)
        .await
        .expect("scheduled");
    settle().await;
    h.vms.set_start_mode(StartMode::Answer);
    sleep(Duration::from_secs(1000)).await;
    let item = h.item_of_type(100, WorkType::Ha);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(h.starts(100), 1);
    let calls = keys(&h, 100);
    assert!(calls.iter().all(|(k, _, _)| *k == calls[0].0), "{calls:?}");
    h.shutdown().await;
}

// ------------------------------------------------------------------------------------------
// The orchestrator.
// ------------------------------------------------------------------------------------------

/// The first start request is delayed in transit and arrives (at 200 s) after HA asked again
/// with the same key (about 161 s), which the orchestrator made at once: the late one starts
/// nothing.
#[tokio::test(start_paused = true)]
async fn a_start_delivered_after_the_same_key_was_asked_again_starts_nothing() {
    let h = build(bounded_config(), 1).await;
    let late = LateFirstVms::new(h.vms.inner.clone(), Duration::from_secs(200));
    let ha = manager_over(&h, OwnerId(7), h.work.clone(), late.clone());
    ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + RETRY + Duration::from_secs(5)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(late.made().len(), 1);
    sleep(Duration::from_secs(1000)).await;
    let made = late.made();
    assert_eq!(made.len(), 1, "{made:?}");
    let asked = late.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0], asked[1], "the same key");
    assert_eq!(h.vm(100).start_key, Some(asked[0]));
    ha.stop().await;
    h.agent.stop().await;
}

/// The VM's planner finds no room, the HA planner's start (a new attempt) goes unanswered and
/// lands at 200 s; the next round asks again with that key (by the VM's planner first: its full
/// cluster) and joins the start under way; a restart in between changes nothing.
#[tokio::test(start_paused = true)]
async fn the_ha_planner_fallback_with_an_unknown_start_starts_once() {
    let mut h = build(bounded_config(), 1).await;
    for host in [2, 3, 4] {
        h.vms.inner.set_capacity(HostId(host), 0);
    }
    let vms = Arc::new(HaPlannerMode {
        inner: h.vms.clone(),
        ha_mode: Mutex::new(StartMode::Hang {
            lands_after: Some(Duration::from_secs(200)),
        }),
    });
    h.mark_down(FAILED).await;
    let first = manager_over(&h, OwnerId(7), h.work.clone(), vms.clone());
    first.start().await.unwrap();
    sleep(Duration::from_secs(10)).await;
    let item = h.item(100);
    assert!(item.start_unknown);
    assert_eq!(item.start_attempts, 2, "{:?}", notes(&item));
    first.stop().await;
    *vms.ha_mode.lock().unwrap() = StartMode::Answer;
    let second = manager_over(&h, OwnerId(7), h.work.clone(), vms.clone());
    second.start().await.unwrap();
    sleep(Duration::from_secs(2000)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(h.starts(100), 1, "{:?}", keys(&h, 100));
    let id = item.id;
    let calls: Vec<(String, Planner, bool)> = h
        .vms
        .start_calls()
        .into_iter()
        .map(|c| (c.params.key.to_string(), c.params.planner, c.repeated))
        .collect();
    // Attempt 2 was in flight: asked again (the VM's planner: joined), never a third attempt.
    assert_eq!(
        calls[..3],
        [
            (format!("{id}/1"), Planner::Default, false),
            (format!("{id}/2"), Planner::Ha, false),
            (format!("{id}/2"), Planner::Default, true),
        ],
        "{calls:?}"
    );
    assert!(
        calls.iter().all(|(k, _, _)| *k != format!("{id}/3")),
        "{calls:?}"
    );
    assert_eq!(h.vm(100).start_key.map(|k| k.attempt), Some(2));
    assert_eq!(h.calls(100), ["force_stop"]);
    second.stop().await;
    h.agent.stop().await;
}

// ------------------------------------------------------------------------------------------
// Retries running out.
// ------------------------------------------------------------------------------------------

/// Every start goes unanswered and never lands: max.retries runs out while the outcome is
/// unknown. The item gives up honestly (the note says the outcome is unknown) and asks nothing
/// more; the key was never changed.
#[tokio::test(start_paused = true)]
async fn retries_running_out_while_a_start_is_unknown_give_up_honestly() {
    let mut c = bounded_config();
    c.ha.max_retries = 3;
    let h = build(c, 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(5000)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    let last = notes(&item).pop().unwrap();
    assert!(
        last.contains("giving up after 3 tries") && last.contains("outcome unknown"),
        "{last}"
    );
    assert!(h.kinds().contains(&AlertKind::HaGaveUp));
    let calls = keys(&h, 100);
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls.iter().all(|(k, _, _)| *k == calls[0].0), "{calls:?}");
    sleep(Duration::from_secs(5000)).await;
    assert_eq!(keys(&h, 100).len(), 3, "nothing asked after giving up");
    h.shutdown().await;
}
