//! Attacks on the HA manager over a work store that fails at the worst moment: a claim or an
//! insert that lands without its answer, an item the store refuses for ever, a store that comes
//! and goes while hosts go Down.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudha_ha::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use cloudha_testkit::{RecordingAlerts, ScriptedFencer, agent_over};
use tokio::time::sleep;

fn err(what: &str) -> StoreError {
    StoreError::backend(
        what.to_owned(),
        std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset"),
    )
}

fn take1(c: &AtomicUsize) -> bool {
    c.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// The in-memory work store behind knobs: answers lost after the write landed, a VM whose
/// items it refuses for ever, away altogether.
#[derive(Debug, Default)]
struct Treacherous {
    inner: InMemoryHaWorkStore,
    /// The next takes claim, then answer an error (the reply was lost).
    lose_take_reply: AtomicUsize,
    /// The next inserts store the item, then answer an error.
    lose_insert_reply: AtomicUsize,
    /// Inserts of this VM's items fail, for ever.
    refuse_vm: Mutex<Option<VmId>>,
    /// Every call fails.
    away: AtomicBool,
    takes: AtomicUsize,
}

impl Treacherous {
    fn call(&self, what: &str) -> Result<(), StoreError> {
        if self.away.load(Ordering::SeqCst) {
            return Err(err(what));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl HaWorkStore for Treacherous {
    async fn insert(&self, item: WorkItem) -> Result<WorkId, StoreError> {
        self.call("insert")?;
        if *self.refuse_vm.lock().unwrap() == Some(item.vm) {
            return Err(err("insert (a value the database refuses)"));
        }
        let id = self.inner.insert(item).await?;
        if take1(&self.lose_insert_reply) {
            return Err(err("insert (reply lost after commit)"));
        }
        Ok(id)
    }
    async fn take(&self, owner: OwnerId, now: Timestamp) -> Result<Option<WorkItem>, StoreError> {
        self.takes.fetch_add(1, Ordering::SeqCst);
        self.call("take")?;
        let r = self.inner.take(owner, now).await?;
        if r.is_some() && take1(&self.lose_take_reply) {
            return Err(err("take (reply lost after commit)"));
        }
        Ok(r)
    }
    async fn update(&self, writer: OwnerId, item: &WorkItem) -> Result<u64, StoreError> {
        self.call("update")?;
        self.inner.update(writer, item).await
    }
    async fn get(&self, id: WorkId) -> Result<Option<WorkItem>, StoreError> {
        self.call("get")?;
        self.inner.get(id).await
    }
    async fn for_vm(&self, vm: VmId) -> Result<Vec<WorkItem>, StoreError> {
        self.call("for vm")?;
        self.inner.for_vm(vm).await
    }
    async fn list(&self) -> Result<Vec<WorkItem>, StoreError> {
        self.call("list")?;
        self.inner.list().await
    }
    async fn pending(&self) -> Result<usize, StoreError> {
        self.call("pending")?;
        self.inner.pending().await
    }
    async fn release_owner(&self, owner: OwnerId) -> Result<usize, StoreError> {
        self.call("release owner")?;
        self.inner.release_owner(owner).await
    }
    async fn mark_pending_investigating(&self, now: Timestamp) -> Result<usize, StoreError> {
        self.call("mark pending investigating")?;
        self.inner.mark_pending_investigating(now).await
    }
    async fn unbrake(&self, now: Timestamp, vms: &[VmId]) -> Result<usize, StoreError> {
        self.call("unbrake")?;
        self.inner.unbrake(now, vms).await
    }
    async fn cleanup(&self, cutoff: Timestamp) -> Result<usize, StoreError> {
        self.call("cleanup")?;
        self.inner.cleanup(cutoff).await
    }
    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        self.call("next due")?;
        self.inner.next_due().await
    }
}

struct Rig {
    agent: cloudha_liveness::AgentManager,
    ha: HaManager,
    vms: Arc<InMemoryVms>,
    work: Arc<Treacherous>,
    fences: Arc<ScriptedFencer>,
    #[allow(dead_code)]
    alerts: Arc<RecordingAlerts>,
}

/// Hosts 1 and 2 Up in cluster 1; HA VMs `vms` on host 1; host 2 has room.
async fn rig(vm_ids: &[u64]) -> Rig {
    let hosts = Arc::new(InMemoryHostStore::new());
    for id in [1, 2] {
        let mut r = HostRecord::new(HostId(id), format!("h{id}"), HypervisorType::Kvm);
        r.cluster = Some(ClusterId(1));
        r.status = Some(Status::Up);
        hosts.insert(r);
    }
    let vms = Arc::new(InMemoryVms::new());
    vms.set_capacity(HostId(2), 100);
    for &id in vm_ids {
        vms.upsert({
            let mut r = VmRecord::new(VmId(id), format!("vm{id}"), HypervisorType::Kvm);
            r.host = Some(HostId(1));
            r.state = VmState::Running;
            r.ha_enabled = true;
            r.cluster = Some(ClusterId(1));
            r
        });
    }
    let work = Arc::new(Treacherous::default());
    let fences = Arc::new(ScriptedFencer::new());
    let alerts = Arc::new(RecordingAlerts::new());
    let config = {
        let mut c = Config::default();
        c.ha.ha_startup_grace = Duration::ZERO;
        c
    };
    let agent = agent_over(&config.liveness, &hosts, alerts.clone()).await;
    let ha = HaManager::new(
        config.ha,
        OwnerId(1),
        &agent,
        HaPorts::new(
            work.clone(),
            vms.clone(),
            vec![fences.clone()],
            alerts.clone(),
        )
        .with_investigators(Vec::new()),
    );
    Rig {
        agent,
        ha,
        vms,
        work,
        fences,
        alerts,
    }
}

fn on_host_2(vms: &InMemoryVms, id: u64) -> bool {
    let vm = vms.get(VmId(id)).unwrap();
    (vm.state, vm.host) == (VmState::Running, Some(HostId(2)))
}

/// The claim of the only item lands, its answer is lost (a connection cut after the commit):
/// the item is this manager's claim in the store, and nobody works on it. The VM must still be
/// restarted (within the hour: the claim is this server's own).
#[tokio::test(start_paused = true)]
async fn a_claim_whose_answer_was_lost_is_still_worked() {
    let r = rig(&[100]).await;
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
    let r = rig(&[100, 101, 102]).await;
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
    let r = rig(&[100, 101]).await;
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
    let r = rig(&ids).await;
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
    let r = rig(&[100]).await;
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
