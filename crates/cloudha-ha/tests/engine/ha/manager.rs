//! The manager as a whole: its worker limit, a restart over the same store, a departed peer's
//! claims, work served with VM-HA disabled, its debug form.

use super::*;

#[tokio::test(start_paused = true)]
async fn workers_are_limited_to_ha_workers_and_woken_by_scheduling() {
    // Six failed hosts of one VM each (a fence is per host, so six fences); no brake.
    let mut h = build(
        {
            let mut c = config();
            c.ha.ha_workers = 2;
            c.ha.ha_brake_fraction = 1.0;
            c
        },
        0,
    )
    .await;
    let failed: Vec<HostId> = (21..27).map(HostId).collect();
    for (i, id) in failed.iter().enumerate() {
        let mut r = HostRecord::new(*id, format!("h{id}"), HypervisorType::Kvm);
        r.cluster = Some(ClusterId(1));
        r.zone = Some(ZoneId(1));
        r.status = Some(Status::Up);
        h.agent.add_host(r).await.unwrap();
        h.vms.inner.upsert(vm(100 + i as u64, *id, true));
    }
    h.fencer = Arc::new(
        ScriptedFencer::with_outcome(FenceOutcome::Fenced(FenceEvidence::Power {
            evidence: "slow".into(),
        }))
        .with_delay(Duration::from_secs(10)),
    );
    let ha = new_manager(
        &h.config, &h.agent, &h.vms, &h.work, &h.alerts, &h.verdict, &h.fencer,
    );
    ha.start().await.unwrap();
    sleep(Duration::from_secs(5)).await;
    for id in &failed {
        // The HA manager follows the agent manager's status changes.
        h.mark_down(*id).await;
    }
    sleep(Duration::from_millis(1)).await;
    assert_eq!(h.fencer.calls(), 2, "woken at once, two slots");
    sleep(Duration::from_secs(10)).await;
    assert_eq!(h.fencer.calls(), 4);
    sleep(Duration::from_secs(11)).await;
    assert_eq!(h.fencer.calls(), 6);
    sleep(Duration::from_secs(10)).await;
    for i in 0..6 {
        assert_eq!(h.starts(100 + i), 1, "{:?}", h.item(100 + i).history);
    }
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_manager_restart_mid_work_resumes_everything_through_investigating_once() {
    let config = {
        let mut c = config();
        c.ha.ha_workers = 3;
        c
    };
    let mut h = build(config.clone(), 10).await;
    h.fencer = Arc::new(
        ScriptedFencer::with_outcome(FenceOutcome::Fenced(FenceEvidence::Power {
            evidence: "slow fence".into(),
        }))
        .with_delay(Duration::from_secs(20)),
    );
    // One fence for the host (20 s), then each start takes 10 s: mid-work at 45 s.
    h.vms.set_start_delay(Duration::from_secs(10));
    let first = new_manager(
        &config, &h.agent, &h.vms, &h.work, &h.alerts, &h.verdict, &h.fencer,
    );
    first.start().await.unwrap();
    h.mark_down(FAILED).await;
    sleep(Duration::from_secs(45)).await;
    let done_before = (100..110).filter(|v| h.starts(*v) == 1).count();
    assert!(
        done_before > 0 && done_before < 10,
        "mid-work: {done_before} restarted"
    );
    // The manager process dies: its tasks end, its claims stay in the store.
    first.stop().await;
    assert!(
        h.work.items().iter().any(|i| i.owner.is_some()),
        "claims left behind"
    );
    // It comes back with the same identity over the same store.
    let second = new_manager(
        &config, &h.agent, &h.vms, &h.work, &h.alerts, &h.verdict, &h.fencer,
    );
    second.start().await.unwrap();
    for i in h.work.items() {
        assert!(
            i.step.is_final() || i.step == WorkStep::Investigating,
            "pending items back to Investigating: {i:?}"
        );
        assert!(i.owner.is_none());
    }
    sleep(Duration::from_secs(300)).await;
    for v in 100..110 {
        assert_eq!(h.starts(v), 1, "vm {v} started exactly once");
        assert_eq!(h.vm(v).state, VmState::Running);
        assert_ne!(h.vm(v).host, Some(FAILED));
    }
    assert!(
        h.work.items().iter().all(|i| i.step.is_final()),
        "none lost"
    );
    second.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_departed_peers_claims_are_released_and_served_here() {
    let mut h = build(config(), 1).await;
    h.mark_down(FAILED).await;
    let id =
        h.ha.schedule_restart(VmId(100), ProveDead::First, WorkReason::HostDown)
            .await
            .unwrap();
    // A peer took the item, then died.
    let taken = h
        .work
        .take(OwnerId(99), Timestamp::from_micros(u64::MAX))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(taken.id, id);
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(5)).await;
    assert_eq!(h.starts(100), 0, "claimed by the peer: not ours to run");
    assert_eq!(h.ha.release_peer(OwnerId(99)).await.unwrap(), 1);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(h.starts(100), 1);
    assert_eq!(h.work.item(id).unwrap().step, WorkStep::Done);
    h.shutdown().await;
}

/// Work left in a durable store by a run with VM-HA enabled, served by a manager with VM-HA
/// disabled: nothing is done, no try is spent, and each item waits its own type's interval.
#[tokio::test(start_paused = true)]
async fn with_vm_ha_disabled_pending_work_waits_its_types_interval() {
    let config = {
        let mut c = config();
        c.liveness.vm_ha_enabled = false;
        c.ha.restart_retry_interval = Duration::from_secs(600);
        c.ha.migrate_retry_interval = Duration::from_secs(120);
        c.ha.stop_retry_interval = Duration::from_secs(300);
        c
    };
    let h = build(config, 3).await;
    let t0 = h.clock.now();
    let mut ids = Vec::new();
    for (i, work_type) in [WorkType::Ha, WorkType::Migration, WorkType::Stop]
        .into_iter()
        .enumerate()
    {
        let rec = h.vm(100 + i as u64);
        let item = WorkItem::new(
            work_type,
            WorkStep::Scheduled,
            WorkReason::HostDown,
            &rec,
            Some(FAILED),
            t0,
        );
        ids.push((work_type, h.work.insert(item).await.unwrap()));
    }
    h.ha.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    for (work_type, id) in ids {
        let item = h.work.item(id).unwrap();
        let want = match work_type {
            WorkType::Ha => 600,
            WorkType::Migration => 120,
            _ => 300,
        };
        assert_eq!(
            (
                item.tries,
                item.time_to_try.saturating_duration_since(t0),
                item.step
            ),
            // (back to Investigating at start, §5.6)
            (0, Duration::from_secs(want), WorkStep::Investigating),
            "{work_type:?}"
        );
    }
    assert_eq!(h.starts(100), 0, "nothing started");
    h.shutdown().await;
}

// ---- Guards of scheduling and processing (each pinned by a cargo-mutants survivor). ----

#[tokio::test(start_paused = true)]
async fn the_managers_debug_form_names_its_owner() {
    let h = build(config(), 0).await;
    let s = format!("{:?}", h.ha);
    assert!(
        s.starts_with("HaManager") && s.contains("OwnerId(7)"),
        "{s}"
    );
}
