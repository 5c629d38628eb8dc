//! A down host's VMs restarted (§5.4 / §5.5): fenced first, retried, given up, placed; and the
//! checks of §5.5 steps 1 to 3 that leave an item alone.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_down_hosts_ha_vm_is_fenced_stopped_and_started_elsewhere() {
    let h = build(config(), 1).await;
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(1)).await;
    let vm = h.vm(100);
    assert_eq!(vm.state, VmState::Running);
    assert_ne!(vm.host, Some(FAILED));
    assert_eq!(vm.cluster, Some(ClusterId(1)));
    let item = h.item(100);
    assert_eq!(item.step, WorkStep::Done);
    let proof = item.fence_proof.as_ref().expect("a proof");
    assert_eq!(
        (proof.kind, proof.host, proof.evidence.as_str()),
        (
            ProofKind::PowerFenced,
            Some(FAILED),
            ScriptedFencer::EVIDENCE
        )
    );
    let log: Vec<&str> = item.history.iter().map(|e| e.what.as_str()).collect();
    assert!(
        log.iter().any(|l| l.contains("VM verdict Unknown")),
        "{log:?}"
    );
    let fenced = format!("fenced: power_fenced: {}", ScriptedFencer::EVIDENCE);
    assert!(log.contains(&fenced.as_str()), "{log:?}");
    assert!(
        log.last().unwrap().starts_with("done: started on host"),
        "{log:?}"
    );
    // Placement: the VM's cluster first, never the failed host, only Up hosts.
    let params = h.vms.starts(VmId(100))[0].clone();
    assert_eq!(params.planner, Planner::Default);
    assert_eq!(params.candidates, vec![HostId(2), HostId(3), HostId(4)]);
    assert!(params.ha_operation);
    assert_eq!(h.kinds(), [AlertKind::HostDown, AlertKind::HaRestart]);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn restart_branches_data_driven() {
    struct Case {
        name: &'static str,
        verdict: VmVerdict,
        fence: Option<FenceOutcome>,
        host_up_at_check: bool,
        ha_enabled: bool,
        force_ha: bool,
        local_disk: bool,
        change_vm: bool,
        // expectations after one processing
        step: WorkStep,
        started: bool,
        fenced_calls: usize,
        retry_after: Option<Duration>,
        alert: Option<AlertKind>,
    }
    let fenced = || {
        Some(FenceOutcome::Fenced(FenceEvidence::Power {
            evidence: "ok".into(),
        }))
    };
    let failed = || {
        Some(FenceOutcome::Failed {
            reason: "bmc down".into(),
        })
    };
    let base = |name| Case {
        name,
        verdict: VmVerdict::Unknown,
        fence: fenced(),
        host_up_at_check: false,
        ha_enabled: true,
        force_ha: false,
        local_disk: false,
        change_vm: false,
        step: WorkStep::Done,
        started: true,
        fenced_calls: 1,
        retry_after: None,
        alert: Some(AlertKind::HaRestart),
    };
    let cases = vec![
        base("unknown VM, fenced: restarted"),
        Case {
            fence: failed(),
            step: WorkStep::Investigating,
            started: false,
            retry_after: Some(Duration::from_secs(600)),
            alert: Some(AlertKind::FenceFailed),
            ..base("fencing fails: no start, retry after restart.retry.interval")
        },
        Case {
            verdict: VmVerdict::Dead,
            fenced_calls: 0,
            ..base("VM proven dead: no fencing needed")
        },
        Case {
            verdict: VmVerdict::Alive,
            host_up_at_check: true,
            fenced_calls: 0,
            started: false,
            alert: None,
            ..base("VM alive on an Up host: done, no restart")
        },
        Case {
            verdict: VmVerdict::Alive,
            fenced_calls: 0,
            started: false,
            step: WorkStep::Investigating,
            retry_after: Some(Duration::from_secs(60)),
            alert: None,
            ..base("VM alive, host not Up: retry after investigate.retry.interval")
        },
        Case {
            ha_enabled: false,
            started: false,
            alert: None,
            ..base("non-HA VM: fenced and stopped, stays stopped")
        },
        Case {
            ha_enabled: false,
            force_ha: true,
            ..base("non-HA VM with force.ha: restarted")
        },
        Case {
            local_disk: true,
            started: false,
            alert: None,
            ..base("local root disk: stays stopped")
        },
        Case {
            change_vm: true,
            fenced_calls: 0,
            started: false,
            alert: None,
            ..base("VM changed since scheduling: done")
        },
    ];
    for c in cases {
        let mut cfg = config();
        cfg.ha.force_ha = c.force_ha;
        let mut h = build(cfg, 0).await;
        let mut v = vm(100, FAILED, c.ha_enabled);
        v.local_root_disk = c.local_disk;
        h.vms.inner.upsert(v);
        h.verdict.set_vm_verdict(c.verdict);
        h.fencer.set_outcome(c.fence.clone().unwrap());
        if !c.host_up_at_check {
            h.mark_down(FAILED).await;
        }
        // Not a cancellable reason: the "host Up again" cancellation is tested on its own.
        let id =
            h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::Unknown)
                .await
                .expect("scheduled");
        if c.change_vm {
            h.vms
                .inner
                .set_state(VmId(100), VmState::Migrating, Some(FAILED));
        }
        let t0 = h.clock.now();
        h.ha.start().await.unwrap();
        sleep(Duration::from_secs(1)).await;
        let item = h.work.item(id).unwrap();
        let ctx = format!(
            "{}: {:?}",
            c.name,
            item.history.iter().map(|e| &e.what).collect::<Vec<_>>()
        );
        assert_eq!(item.step, c.step, "{ctx}");
        assert_eq!(h.starts(100) == 1, c.started, "{ctx}");
        assert_eq!(h.fencer.calls(), c.fenced_calls, "{ctx}");
        match c.retry_after {
            Some(d) => {
                assert_eq!(item.tries, 1, "{ctx}");
                assert_eq!(item.time_to_try.saturating_duration_since(t0), d, "{ctx}");
            }
            None => assert_eq!(item.tries, 0, "{ctx}"),
        }
        assert_eq!(h.kinds().last().copied(), c.alert, "{ctx}");
        if !c.started && c.step == WorkStep::Done && !c.change_vm && c.verdict != VmVerdict::Alive {
            assert_eq!(
                h.vm(100).state,
                VmState::Stopped,
                "{ctx}: stopped after fencing"
            );
        }
        h.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_fence_is_retried_and_a_later_fence_restarts() {
    let h = build(config(), 1).await;
    h.fencer.set_outcome(FenceOutcome::Failed {
        reason: "bmc unreachable".into(),
    });
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(601)).await;
    assert_eq!(h.fencer.calls(), 2, "retried after restart.retry.interval");
    assert_eq!(h.vm(100).host, Some(FAILED), "never started while unfenced");
    h.fencer
        .set_outcome(FenceOutcome::Fenced(FenceEvidence::Power {
            evidence: "bmc back: powered off".into(),
        }));
    sleep(Duration::from_secs(600)).await;
    assert_eq!(h.vm(100).state, VmState::Running);
    assert_ne!(h.vm(100).host, Some(FAILED));
    assert_eq!(h.item(100).tries, 2);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn max_retries_then_give_up_with_an_alert() {
    let h = build(
        {
            let mut c = config();
            c.ha.max_retries = 3;
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
    sleep(Duration::from_secs(600 * 5)).await;
    let item = h.item(100);
    assert_eq!((item.step, item.tries), (WorkStep::Done, 3));
    assert!(
        item.history
            .last()
            .unwrap()
            .what
            .starts_with("giving up after 3 tries")
    );
    assert_eq!(h.fencer.calls(), 3);
    assert_eq!(h.kinds().last(), Some(&AlertKind::HaGaveUp));
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn insufficient_capacity_falls_back_to_the_ha_planner() {
    let h = build(config(), 1).await;
    for id in [2, 3, 4] {
        h.vms.inner.set_capacity(HostId(id), 0);
    }
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.vm(100).host,
        Some(HostId(11)),
        "another cluster of the zone"
    );
    let starts = h.vms.starts(VmId(100));
    assert_eq!(starts[0].planner, Planner::Ha);
    assert!(
        h.item(100)
            .history
            .iter()
            .any(|e| e.what.contains("trying the HA planner"))
    );
    // No capacity anywhere: alert and retry after restart.retry.interval.
    let h = build(config(), 1).await;
    for id in [2, 3, 4, 11, 12] {
        h.vms.inner.set_capacity(HostId(id), 0);
    }
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(1)).await;
    let item = h.item(100);
    assert_eq!((item.step, item.tries), (WorkStep::Scheduled, 1));
    assert_eq!(h.kinds().last(), Some(&AlertKind::HaRestartFailed));
    h.vms.inner.set_capacity(HostId(12), 10);
    sleep(Duration::from_secs(600)).await;
    assert_eq!(h.vm(100).host, Some(HostId(12)));
    assert_eq!(
        h.fencer.calls(),
        1,
        "the fence is not repeated for a start retry"
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn ha_tag_limits_placement_and_down_hosts_are_never_candidates() {
    let mut h = build(
        {
            let mut c = config();
            c.ha.ha_tag = Some("ha_host".into());
            c
        },
        1,
    )
    .await;
    let mut r = h.hosts.get(HostId(3)).unwrap();
    r.tags = vec!["ha_host".into()];
    h.agent.add_host(r).await.unwrap();
    h.mark_down(HostId(4)).await;
    h.ha.start().await.unwrap();
    h.fail_host().await;
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.vm(100).host, Some(HostId(3)));
    let params = h.vms.starts(VmId(100))[0].clone();
    assert_eq!(params.candidates, vec![HostId(3)]);
    assert_eq!(params.ha_tag.as_deref(), Some("ha_host"));
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn newer_items_concurrent_items_gone_vms_and_cancellation() {
    let mut h = build(config(), 2).await;
    h.mark_down(FAILED).await;
    // Two items for VM 100: the older one is dropped.
    let first =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    let second =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    // VM 101 disappears.
    let gone =
        h.ha.schedule_restart(VmId(101), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    h.vms.inner.destroy(VmId(101), Expunge::Now).await.unwrap();
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.work.item(first).unwrap().history.last().unwrap().what,
        "done: a newer HA item exists for the VM"
    );
    assert_eq!(h.work.item(second).unwrap().step, WorkStep::Done);
    assert_eq!(h.starts(100), 1);
    assert_eq!(
        h.work.item(gone).unwrap().history.last().unwrap().what,
        "done: VM gone"
    );

    // An item still investigating a host that is Up again is cancelled.
    let h = build(config(), 1).await;
    let id =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.work.item(id).unwrap().step, WorkStep::Cancelled);
    assert_eq!(h.starts(100), 0);
    h.shutdown().await;
}

// ---- Guards of scheduling and processing (each pinned by a cargo-mutants survivor). ----

/// §5.5 step 1: only a newer, unfinished HA item supersedes a restart; an older pending HA item,
/// a newer finished one or newer work of another type does not.
#[tokio::test(start_paused = true)]
async fn only_a_newer_pending_ha_item_supersedes_a_restart() {
    let mut h = build(config(), 1).await;
    h.mark_down(FAILED).await;
    let rec = h.vm(100);
    let later = h.clock.now() + Duration::from_secs(3600);
    h.work
        .insert(stored_item(
            WorkType::Ha,
            WorkStep::Investigating,
            &rec,
            1,
            later,
        ))
        .await
        .unwrap();
    let id =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    for (work_type, step, at) in [
        (WorkType::Ha, WorkStep::Done, h.clock.now()),
        (WorkType::Migration, WorkStep::Scheduled, later),
    ] {
        h.work
            .insert(stored_item(work_type, step, &rec, 0, at))
            .await
            .unwrap();
    }
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    let note = h.last_note(id);
    assert!(note.starts_with("done: started on host"), "{note}");
    assert_eq!(h.starts(100), 1);
    h.shutdown().await;
}

/// §5.5 step 1: while another HA item of the VM is held by a server, a restart waits
/// investigate.retry.interval (spending a try); other work held by a server does not hold it.
#[tokio::test(start_paused = true)]
async fn a_restart_waits_while_another_ha_item_of_the_vm_is_running() {
    let mut h = build(config(), 2).await;
    h.mark_down(FAILED).await;
    for (work_type, step, v) in [
        (WorkType::Ha, WorkStep::Investigating, 100),
        (WorkType::Migration, WorkStep::Migrating, 101),
    ] {
        let mut held = stored_item(work_type, step, &h.vm(v), 0, h.clock.now());
        held.owner = Some(OwnerId(99));
        held.taken = Some(h.clock.now());
        h.work.insert(held).await.unwrap();
    }
    let waits =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    let goes =
        h.ha.schedule_restart(VmId(101), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    let t0 = h.clock.now();
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    let item = h.work.item(waits).unwrap();
    assert_eq!(
        (
            item.step,
            item.tries,
            item.time_to_try.saturating_duration_since(t0)
        ),
        (WorkStep::Investigating, 1, Duration::from_secs(60)),
        "{:?}",
        item.history
    );
    assert!(
        h.last_note(waits)
            .contains("another HA item for the VM is running")
    );
    assert_eq!(h.starts(100), 0);
    let note = h.last_note(goes);
    assert!(note.starts_with("done: started on host"), "{note}");
    assert_eq!(h.starts(101), 1);
    h.shutdown().await;
}

/// §5.5 step 2: a VM whose record changed since scheduling is left alone, even when only its
/// update counter moved (same state, same host): neither fenced nor restarted.
#[tokio::test(start_paused = true)]
async fn a_vm_updated_in_place_since_scheduling_is_not_restarted() {
    let mut h = build(config(), 1).await;
    h.mark_down(FAILED).await;
    let id =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    h.vms
        .inner
        .set_state(VmId(100), VmState::Running, Some(FAILED));
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    let note = h.last_note(id);
    assert!(
        note.starts_with("done: VM changed since scheduling"),
        "{note}"
    );
    assert_eq!(h.fencer.calls(), 0);
    assert_eq!(h.starts(100), 0);
    assert!(h.calls(100).is_empty());
    h.shutdown().await;
}

/// §5.5 step 3: an item still investigating whose VM is no longer on the host (stopped, with
/// no host, and no proof that HA stopped it) is done: no fence, no restart.
#[tokio::test(start_paused = true)]
async fn an_investigating_item_whose_vm_left_its_host_is_done_without_restart() {
    let mut h = build(config(), 1).await;
    h.mark_down(FAILED).await;
    h.vms.inner.set_state(VmId(100), VmState::Stopped, None);
    let id =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    assert_eq!(h.work.item(id).unwrap().host, Some(FAILED), "its last host");
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.last_note(id), "done: VM no longer on the host");
    assert_eq!(h.fencer.calls(), 0);
    assert_eq!(h.starts(100), 0);
    assert_eq!(h.vm(100).state, VmState::Stopped);
    h.shutdown().await;
}
