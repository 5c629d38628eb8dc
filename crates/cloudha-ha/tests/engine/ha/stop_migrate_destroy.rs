//! The other work types: stops (Stop, CheckStop, ForceStop), migrations and destroys.

use super::*;

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

// ---- Guards of scheduling and processing (each pinned by a cargo-mutants survivor). ----

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
    let mut proxy = vm(103, FAILED, true);
    proxy.kind = VmKind::ConsoleProxy;
    h.vms.inner.upsert(proxy);
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
