//! The second trigger: an HA VM its Up host reports off (or leaves out of its reports) is
//! restarted.

use super::*;

#[tokio::test(start_paused = true)]
async fn an_ha_vm_reported_off_on_an_up_host_is_restarted() {
    let h = build(config(), 0).await;
    h.vms.inner.upsert(vm(300, HostId(2), true));
    h.vms.inner.upsert(vm(301, HostId(2), false));
    h.vms.inner.upsert(vm(302, HostId(2), true));
    h.ha.start().await.unwrap();
    let report = [
        VmStateReport {
            vm: VmId(300),
            power: VmPowerState::PowerOff,
        },
        VmStateReport {
            vm: VmId(301),
            power: VmPowerState::PowerOff,
        },
        VmStateReport {
            vm: VmId(302),
            power: VmPowerState::PowerOn,
        },
    ];
    h.ha.vm_power_report(HostId(2), &report);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.starts(300), 1);
    assert_eq!(
        h.fencer.calls(),
        0,
        "reported off by its own Up host: no fence needed"
    );
    assert_eq!(h.item(300).reason, WorkReason::VmStoppedOnUpHost);
    assert_eq!(
        h.vm(301).state,
        VmState::Stopped,
        "non-HA: stopped, not restarted"
    );
    assert_eq!(h.starts(301), 0);
    assert!(h.kinds().contains(&AlertKind::VmStopped));
    assert_eq!(h.starts(302), 0);
    // Missing from the reports for longer than T counts as off too.
    h.vms.inner.upsert(vm(303, HostId(3), true));
    for _ in 0..4 {
        h.ha.vm_power_report(HostId(3), &[]);
        sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(h.starts(303), 1);
    // Switched off: no restart.
    let h = build(
        {
            let mut c = config();
            c.ha.ha_vm_restart_hostup = false;
            c
        },
        0,
    )
    .await;
    h.vms.inner.upsert(vm(300, HostId(2), true));
    h.ha.start().await.unwrap();
    h.ha.vm_power_report(HostId(2), &report[..1]);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.starts(300), 0);
    h.shutdown().await;
}

// ---- Guards of scheduling and processing (each pinned by a cargo-mutants survivor). ----

/// The second trigger's grace: a VM missing from its Up host's reports counts as off only once
/// it has been missing for longer than ping.interval × ping.timeout (not at the bound), and a
/// report showing it on starts that clock again.
#[tokio::test(start_paused = true)]
async fn a_vm_missing_from_reports_is_restarted_only_after_the_ping_deadline() {
    let h = build(config(), 0).await;
    let deadline = h.config.liveness.ping_deadline();
    h.vms.inner.upsert(vm(300, HostId(2), true));
    h.vms.inner.upsert(vm(301, HostId(3), true));
    h.ha.start().await.unwrap();
    h.ha.vm_power_report(HostId(2), &[]);
    sleep(Duration::from_secs(1)).await;
    assert!(h.work.items_of(VmId(300)).is_empty(), "just went missing");
    sleep(deadline - Duration::from_secs(1)).await;
    h.ha.vm_power_report(HostId(2), &[]);
    sleep(Duration::from_secs(1)).await;
    assert!(
        h.work.items_of(VmId(300)).is_empty(),
        "missing for exactly the deadline, not longer"
    );
    h.ha.vm_power_report(HostId(2), &[]);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.starts(300), 1, "missing for longer than the deadline");

    // VM 301 goes missing, shows up again, goes missing again: the clock restarts.
    let on = [VmStateReport {
        vm: VmId(301),
        power: VmPowerState::PowerOn,
    }];
    h.ha.vm_power_report(HostId(3), &[]);
    sleep(deadline - Duration::from_secs(50)).await;
    h.ha.vm_power_report(HostId(3), &on);
    sleep(Duration::from_secs(100)).await;
    h.ha.vm_power_report(HostId(3), &[]);
    sleep(Duration::from_secs(1)).await;
    assert!(
        h.work.items_of(VmId(301)).is_empty(),
        "seen on since: missing only from now"
    );
    sleep(deadline).await;
    h.ha.vm_power_report(HostId(3), &[]);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.starts(301), 1);
    h.shutdown().await;
}

/// The second trigger leaves a VM with unfinished work to that work; finished work of the VM
/// does not hold a restart back.
#[tokio::test(start_paused = true)]
async fn a_vm_reported_off_with_pending_work_is_left_to_that_work() {
    let h = build(config(), 0).await;
    h.vms.inner.upsert(vm(300, HostId(2), true));
    h.vms.inner.upsert(vm(301, HostId(2), true));
    // Not started: the queue stays as it is.
    h.ha.schedule_migration(VmId(300), WorkReason::HostMaintenance)
        .await
        .unwrap();
    h.work
        .insert(stored_item(
            WorkType::Ha,
            WorkStep::Done,
            &h.vm(301),
            0,
            h.clock.now(),
        ))
        .await
        .unwrap();
    let off = |v| VmStateReport {
        vm: VmId(v),
        power: VmPowerState::PowerOff,
    };
    h.ha.vm_power_report(HostId(2), &[off(300), off(301)]);
    sleep(Duration::from_secs(1)).await;
    let items = h.work.items_of(VmId(300));
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(h.vm(300).state, VmState::Running, "not force-stopped");
    let items = h.work.items_of(VmId(301));
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(
        (items[1].work_type, items[1].reason),
        (WorkType::Ha, WorkReason::VmStoppedOnUpHost)
    );
    assert_eq!(h.vm(301).state, VmState::Stopped);
    h.shutdown().await;
}

/// A VM its own Up host reports off is restarted with that host among the candidates: only a
/// host that is not Up is kept out of the placement.
#[tokio::test(start_paused = true)]
async fn a_vm_reported_off_by_its_up_host_may_restart_on_that_host() {
    let h = build(config(), 0).await;
    h.vms.inner.upsert(vm(300, HostId(2), true));
    h.ha.start().await.unwrap();
    h.ha.vm_power_report(
        HostId(2),
        &[VmStateReport {
            vm: VmId(300),
            power: VmPowerState::PowerOff,
        }],
    );
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.starts(300), 1);
    let params = h.vms.starts(VmId(300))[0].clone();
    assert!(params.candidates.contains(&HostId(2)), "{params:?}");
    h.shutdown().await;
}

/// §5.6: a restart scheduled on proof (the VM reported off by its Up host, force-stopped at
/// once) goes back to Investigating when a manager starts over the store; HA stopped the VM
/// itself, so it is not investigated again but restarted.
#[tokio::test(start_paused = true)]
async fn a_restart_on_proof_resumes_after_a_manager_start_without_investigation() {
    let h = build(config(), 0).await;
    h.vms.inner.upsert(vm(300, HostId(2), true));
    // Reported off before the manager starts: the item waits in the store.
    h.ha.vm_power_report(
        HostId(2),
        &[VmStateReport {
            vm: VmId(300),
            power: VmPowerState::PowerOff,
        }],
    );
    sleep(Duration::from_secs(1)).await;
    let item = h.item(300);
    assert_eq!(item.step, WorkStep::Scheduled);
    assert!(item.fence_proof.is_some());
    assert_eq!((h.vm(300).state, h.vm(300).host), (VmState::Stopped, None));
    h.ha.start().await.unwrap();
    assert_eq!(h.item(300).step, WorkStep::Investigating);
    sleep(Duration::from_secs(1)).await;
    let note = h.last_note(item.id);
    assert!(note.starts_with("done: started on host"), "{note}");
    assert_eq!(h.starts(300), 1);
    assert_eq!(h.fencer.calls(), 0);
    h.shutdown().await;
}
