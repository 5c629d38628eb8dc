//! Attacks on the HA manager over a work store that fails at the worst moment: a claim or an
//! insert that lands without its answer, an item the store refuses for ever, a store that comes
//! and goes while hosts go Down.

use std::sync::atomic::Ordering;
use std::time::Duration;

use cloudha_ha::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use tokio::time::sleep;

use super::store_outage::{on_host_2, rig_with};

/// The claim of the only item lands, its answer is lost (a connection cut after the commit):
/// the item is this manager's claim in the store, and nobody works on it. The VM must still be
/// restarted (within the hour: the claim is this server's own).
#[tokio::test(start_paused = true)]
async fn a_claim_whose_answer_was_lost_is_still_worked() {
    let r = rig_with(false, &[100]).await;
    r.ha.start().await.unwrap();
    r.work.lose_take_reply.store(1, Ordering::SeqCst);
    r.agent
        .apply(HostId(1), Event::HostDown, "proven down")
        .await
        .unwrap();
    sleep(Duration::from_secs(3600)).await;
    let items = r.work.inner.items();
    let ok = on_host_2(&r.vms, 100);
    r.ha.stop().await;
    assert!(
        ok,
        "VM 100 never restarted: its item is claimed by this manager and orphaned: {items:?}"
    );
}

/// One VM's item the store refuses every time (a value it cannot hold): the items scheduled
/// after it must not wait behind it for ever.
#[tokio::test(start_paused = true)]
async fn one_item_the_store_refuses_for_ever_holds_up_no_other_work() {
    let r = rig_with(false, &[100, 101, 102]).await;
    r.ha.start().await.unwrap();
    *r.work.refuse_vm.lock().unwrap() = Some(VmId(100));
    r.agent
        .apply(HostId(1), Event::HostDown, "proven down")
        .await
        .unwrap();
    sleep(Duration::from_secs(1800)).await;
    let stored: Vec<VmId> = r.work.inner.items().iter().map(|i| i.vm).collect();
    let restarted = (on_host_2(&r.vms, 101), on_host_2(&r.vms, 102));
    r.ha.stop().await;
    assert_eq!(
        restarted,
        (true, true),
        "VMs 101 and 102 wait behind VM 100's item for ever (stored: {stored:?})"
    );
}

/// An insert lands, its answer is lost: the manager keeps the item (retries, then in memory)
/// and stores it again. Each VM must end with one item and be started once.
#[tokio::test(start_paused = true)]
async fn an_insert_that_landed_without_its_answer_is_stored_once() {
    let r = rig_with(false, &[100, 101]).await;
    r.ha.start().await.unwrap();
    r.work.lose_insert_reply.store(1, Ordering::SeqCst);
    r.agent
        .apply(HostId(1), Event::HostDown, "proven down")
        .await
        .unwrap();
    sleep(Duration::from_secs(600)).await;
    let items = r.work.inner.items();
    // A second item is tolerated when it stands down for the other ("a newer HA item exists").
    let per_vm = |v: u64| {
        items
            .iter()
            .filter(|i| {
                i.vm == VmId(v)
                    && !i
                        .history
                        .iter()
                        .any(|e| e.what.contains("a newer HA item exists"))
            })
            .count()
    };
    let counts = (per_vm(100), per_vm(101));
    let placed = (on_host_2(&r.vms, 100), on_host_2(&r.vms, 101));
    r.ha.stop().await;
    assert_eq!(placed, (true, true));
    assert_eq!(
        counts,
        (1, 1),
        "a VM's HA item stored twice, both working: {:#?}",
        items
            .iter()
            .map(|i| (i.id, i.vm, i.step, i.history.clone()))
            .collect::<Vec<_>>()
    );
}

/// The store goes away and comes back at awkward moments while hosts go Down and VMs wait: in
/// the end every VM runs on host 2, one fence, no VM with two unfinished items.
#[tokio::test(start_paused = true)]
async fn a_store_that_comes_and_goes_loses_no_vm() {
    let ids: Vec<u64> = (100..120).collect();
    let r = rig_with(false, &ids).await;
    r.work.away.store(true, Ordering::SeqCst);
    r.ha.start().await.unwrap();
    let mut flips = 0u64;
    let mut rng = 0x1234_5678_9abc_def1u64;
    let mut downed = false;
    for step in 0..120 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        if rng.is_multiple_of(3) {
            let away = !r.work.away.load(Ordering::SeqCst);
            r.work.away.store(away, Ordering::SeqCst);
            flips += 1;
        }
        if step == 7 && !downed {
            r.agent
                .apply(HostId(1), Event::HostDown, "proven down")
                .await
                .unwrap();
            downed = true;
        }
        sleep(Duration::from_millis(300 + rng % 4000)).await;
    }
    r.work.away.store(false, Ordering::SeqCst);
    sleep(Duration::from_secs(900)).await;
    let items = r.work.inner.items();
    let missing: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|&v| !on_host_2(&r.vms, v))
        .collect();
    let open_twice: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|&v| {
            items
                .iter()
                .filter(|i| i.vm == VmId(v) && !i.step.is_final())
                .count()
                > 1
        })
        .collect();
    let fences = r.fences.calls();
    r.ha.stop().await;
    assert!(flips > 10);
    assert!(missing.is_empty(), "not restarted: {missing:?}; {items:?}");
    assert!(open_twice.is_empty(), "{open_twice:?}");
    assert_eq!(fences, 1);
}

/// The store away at start and back, then away again while the resume retries: the resumed
/// start releases the old claim exactly, no worker before it.
#[tokio::test(start_paused = true)]
async fn no_take_before_resume_even_when_the_store_blinks() {
    let r = rig_with(false, &[100]).await;
    let mut old = WorkItem::new(
        WorkType::Ha,
        WorkStep::Fencing,
        WorkReason::HostDown,
        &r.vms.get(VmId(100)).unwrap(),
        Some(HostId(1)),
        Timestamp::from_micros(0),
    );
    old.owner = Some(OwnerId(1));
    old.taken = Some(Timestamp::from_micros(0));
    r.work.inner.insert(old).await.unwrap();
    r.work.away.store(true, Ordering::SeqCst);
    r.ha.start().await.unwrap();
    // Blink: back for a moment between the resume's tries (1 s, 2 s, 4 s ...), away again.
    for _ in 0..20 {
        sleep(Duration::from_millis(700)).await;
        r.work.away.store(false, Ordering::SeqCst);
        sleep(Duration::from_millis(10)).await;
        r.work.away.store(true, Ordering::SeqCst);
    }
    let takes_while_unresumed = r.work.takes.load(Ordering::SeqCst);
    let owner = r.work.inner.items()[0].owner;
    r.work.away.store(false, Ordering::SeqCst);
    sleep(Duration::from_secs(120)).await;
    r.ha.stop().await;
    if owner == Some(OwnerId(1)) {
        assert_eq!(takes_while_unresumed, 0, "a take before the resume");
    }
}
