//! Starts whose outcome is unknown: each start is bounded by `wait`, carries an idempotency key
//! (work item and attempt), and a start that did not answer is settled from the VM record before
//! anything is asked again, with the same key. Never two starts of one VM.

use cloudha_testkit::StartMode;

use super::*;

pub(super) const WAIT: Duration = Duration::from_secs(60);
pub(super) const RETRY: Duration = Duration::from_secs(100);

/// The rig with starts bounded by [`WAIT`] and retried after [`RETRY`].
pub(super) fn bounded_config() -> Config {
    let mut c = config();
    c.liveness.wait = WAIT;
    c.ha.restart_retry_interval = RETRY;
    c
}

/// Every start call of `vm`: (key, repeated, placed).
pub(super) fn keys(h: &H, vm: u64) -> Vec<(String, bool, Option<HostId>)> {
    h.vms
        .start_calls()
        .into_iter()
        .filter(|c| c.vm == VmId(vm))
        .map(|c| (c.params.key.to_string(), c.repeated, c.placed))
        .collect()
}

/// An item's history, as text.
pub(super) fn notes(item: &WorkItem) -> Vec<String> {
    item.history.iter().map(|e| e.what.clone()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_start_that_landed_without_an_answer_is_not_made_again() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang {
        lands_after: Some(Duration::from_secs(30)),
    });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + Duration::from_secs(1)).await;
    let item = h.item(100);
    assert!(item.start_unknown, "{:?}", notes(&item));
    let key = item.start_key().unwrap();
    assert_eq!(key.attempt, 1);
    assert_eq!(item.step, WorkStep::Scheduled);
    assert!(
        h.alerts
            .raised()
            .iter()
            .any(|a| a.kind == AlertKind::HaRestartFailed && a.message.contains("did not answer")),
        "{:?}",
        h.alerts.raised()
    );
    // The start landed at 30 s; the next round reads the record and asks nothing.
    h.vms.set_start_mode(StartMode::Answer);
    sleep(RETRY).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert!(!item.start_unknown);
    assert!(
        notes(&item)
            .last()
            .unwrap()
            .contains(&format!("start {key} happened: running on host")),
        "{:?}",
        notes(&item)
    );
    assert_eq!(h.starts(100), 1);
    assert_eq!(keys(&h, 100).len(), 1, "asked once: {:?}", keys(&h, 100));
    assert_eq!(h.vm(100).start_key, Some(key));
    assert_eq!(h.calls(100), ["force_stop"]);
    assert_eq!(
        h.kinds(),
        [
            AlertKind::HostDown,
            AlertKind::HaRestartFailed,
            AlertKind::HaRestart
        ]
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_start_is_asked_again_with_the_same_key() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + Duration::from_secs(1)).await;
    assert!(h.item(100).start_unknown);
    h.vms.set_start_mode(StartMode::Answer);
    sleep(RETRY).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    let key = format!("{}/1", item.id);
    let calls = keys(&h, 100);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(
        calls.iter().all(|(k, repeated, _)| *k == key && !repeated),
        "{calls:?}"
    );
    assert_eq!(calls[0].2, None, "the first never landed");
    assert!(calls[1].2.is_some());
    assert!(
        notes(&item)
            .iter()
            .any(|n| n.contains(&format!("start {key} did not land"))),
        "{:?}",
        notes(&item)
    );
    assert_eq!(h.starts(100), 1);
    assert_eq!(h.calls(100), ["force_stop"], "HA's stop is not made again");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_start_still_under_way_is_joined_not_made_twice() {
    let h = build(bounded_config(), 1).await;
    // Lands at 200 s: after the second round (about 161 s) asked again and before the third.
    h.vms.set_start_mode(StartMode::Hang {
        lands_after: Some(Duration::from_secs(200)),
    });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + RETRY + WAIT + Duration::from_secs(5)).await;
    let calls = keys(&h, 100);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].0, calls[1].0, "the same key");
    assert!(calls[1].1, "the second call joined the first");
    assert!(h.item(100).start_unknown);
    sleep(RETRY).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert_eq!(h.starts(100), 1);
    assert_eq!(h.vm(100).state, VmState::Running);
    assert_eq!(keys(&h, 100).len(), 2, "not asked a third time");
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_start_known_to_have_failed_takes_a_new_attempt() {
    let h = build(bounded_config(), 1).await;
    for host in [2, 3, 4, 11, 12] {
        h.vms.inner.set_capacity(HostId(host), 0);
    }
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(1)).await;
    sleep(RETRY).await;
    h.vms.inner.set_capacity(HostId(2), 10);
    sleep(RETRY).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    let attempts: Vec<String> = keys(&h, 100).into_iter().map(|(k, _, _)| k).collect();
    let id = item.id;
    // Each round: the VM's planner, then the HA planner, each a new attempt.
    assert_eq!(
        attempts,
        (1..=5).map(|a| format!("{id}/{a}")).collect::<Vec<_>>()
    );
    assert_eq!(h.vm(100).start_key.unwrap().attempt, 5);
    assert!(!item.start_unknown);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_start_that_landed_while_the_manager_was_down_is_not_made_again() {
    let mut h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang {
        lands_after: Some(Duration::from_secs(30)),
    });
    h.mark_down(FAILED).await;
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(10)).await;
    // The manager dies while its start is in flight; the start lands at 30 s.
    h.ha.stop().await;
    assert!(
        h.item(100).start_unknown,
        "the key was recorded before asking"
    );
    sleep(Duration::from_secs(30)).await;
    h.vms.set_start_mode(StartMode::Answer);
    let second = new_manager(
        &h.config, &h.agent, &h.vms, &h.work, &h.alerts, &h.verdict, &h.fencer,
    );
    second.start().await.unwrap();
    sleep(Duration::from_secs(5)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert!(
        notes(&item)
            .last()
            .unwrap()
            .contains("happened: running on host"),
        "settled from the record: {:?}",
        notes(&item)
    );
    assert_eq!(h.starts(100), 1);
    assert_eq!(keys(&h, 100).len(), 1);
    assert_eq!(h.calls(100), ["force_stop"]);
    second.stop().await;
    h.agent.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_start_lost_with_the_manager_is_asked_again_without_a_second_stop() {
    let mut h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.mark_down(FAILED).await;
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(10)).await;
    h.ha.stop().await;
    h.vms.set_start_mode(StartMode::Answer);
    let second = new_manager(
        &h.config, &h.agent, &h.vms, &h.work, &h.alerts, &h.verdict, &h.fencer,
    );
    second.start().await.unwrap();
    sleep(Duration::from_secs(5)).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    let calls = keys(&h, 100);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].0, calls[1].0, "the same key");
    assert_eq!(h.starts(100), 1);
    assert_eq!(
        h.calls(100),
        ["force_stop"],
        "the record HA left is not written over"
    );
    second.stop().await;
    h.agent.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_vm_that_changed_while_its_start_was_unknown_is_left_alone() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::Hang { lands_after: None });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(WAIT + Duration::from_secs(1)).await;
    // Someone else started the VM meanwhile (an operator, another tool).
    h.vms
        .inner
        .set_state(VmId(100), VmState::Running, Some(HostId(3)));
    h.vms.set_start_mode(StartMode::Answer);
    sleep(RETRY).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert!(
        notes(&item).last().unwrap().contains("not started again"),
        "{:?}",
        notes(&item)
    );
    assert_eq!(keys(&h, 100).len(), 1);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_orchestrator_that_says_it_does_not_know_is_settled_from_the_record() {
    let h = build(bounded_config(), 1).await;
    h.vms.set_start_mode(StartMode::LandsButSaysUnknown);
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(1)).await;
    let item = h.item(100);
    assert!(item.start_unknown, "{:?}", notes(&item));
    assert_eq!(item.step, WorkStep::Scheduled);
    sleep(RETRY).await;
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done, "{:?}", notes(&item));
    assert!(
        notes(&item)
            .last()
            .unwrap()
            .contains("happened: running on host"),
        "{:?}",
        notes(&item)
    );
    assert_eq!(h.starts(100), 1);
    assert_eq!(keys(&h, 100).len(), 1);
    h.shutdown().await;
}

#[test]
fn the_in_memory_orchestrator_answers_a_seen_key_from_its_record() {
    let vms = InMemoryVms::new();
    let mut r = vm(5, HostId(2), true);
    let key = StartKey {
        work: WorkId(9),
        attempt: 2,
    };
    r.start_key = Some(key);
    vms.upsert(r);
    assert_eq!(vms.seen_start(VmId(5), key), Some(Ok(HostId(2))));
    let other = StartKey {
        work: WorkId(9),
        attempt: 3,
    };
    assert_eq!(vms.seen_start(VmId(5), other), None, "a new key is new");
    assert!(
        matches!(
            vms.start_refusal(VmId(5), other),
            Some(Err(StartError::Failed(_)))
        ),
        "but a running VM is not started by any key"
    );
    vms.set_state(VmId(5), VmState::Stopped, None);
    assert!(
        matches!(
            vms.seen_start(VmId(5), key),
            Some(Err(StartError::Failed(_)))
        ),
        "a key starts a VM at most once, even when it has stopped since"
    );
    assert_eq!(key.to_string().parse::<StartKey>(), Ok(key));
    for bad in ["", "9", "9/", "/2", "a/2", "9/2/3", "9/-1"] {
        let err = bad.parse::<StartKey>().unwrap_err();
        assert!(err.contains("WORK/ATTEMPT"), "{bad:?}: {err}");
    }
}
