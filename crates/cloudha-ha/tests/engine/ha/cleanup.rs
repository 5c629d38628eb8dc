//! time.between.failures: the cleanup of final items, and the tries a new restart inherits.

use super::*;

#[tokio::test(start_paused = true)]
async fn cleanup_removes_final_items_older_than_time_between_failures() {
    let h = build(
        {
            let mut c = config();
            c.ha.time_between_cleanup = Duration::from_secs(3600);
            c.ha.time_between_failures = Duration::from_secs(1800);
            c
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
        {
            let mut c = config();
            c.ha.max_retries = 5;
            c
        },
        1,
    )
    .await;
    h.fencer.set_outcome(FenceOutcome::Failed {
        reason: "no".into(),
    });
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

// ---- Guards of scheduling and processing (each pinned by a cargo-mutants survivor). ----

/// CloudStack's `canScheduleNew`: a new restart inherits the tries of an HA item whose time to
/// try is within time.between.failures of now (the bound included); an older HA item, or recent
/// work of another type, passes nothing on.
#[tokio::test(start_paused = true)]
async fn only_recent_ha_items_pass_their_tries_to_a_new_restart() {
    let window = Duration::from_secs(1800);
    let h = build(
        {
            let mut c = config();
            c.ha.time_between_failures = window;
            c
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

/// §5.6 cleanup: only final items whose time to try is at least time.between.failures old are
/// purged; a recent one stays (its tries are still inherited) until a later round.
#[tokio::test(start_paused = true)]
async fn cleanup_keeps_final_items_younger_than_time_between_failures() {
    let h = build(
        {
            let mut c = config();
            c.ha.time_between_cleanup = Duration::from_secs(3600);
            c.ha.time_between_failures = Duration::from_secs(1800);
            c
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
