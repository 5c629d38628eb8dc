//! `simulate_on`: the managers' records in stores a provider gives, called from outside the
//! simulation. The report is the in-memory one; a manager restart reads back what the provider
//! gives it (nothing is carried over in the simulator); a store that fails voids the run,
//! naming the store, instead of a report that is not the scenario's.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cloudha_ports::{
    HaWorkStore, HostRecord, HostStore, InMemoryHaWorkStore, InMemoryHostStore, OwnerId,
    StoreError, Timestamp, WorkItem,
};
use cloudha_protocol::{Event, HostId, ResourceState, Status, VmId, WorkId};
use cloudha_sim::{Failure, InMemoryStores, Outside, StoreProvider, Stores, simulate, simulate_on};

use super::shipped;

/// In-memory stores whose every call fails once `calls` reaches `fail_from` (a database that
/// goes away mid-run).
#[derive(Default)]
struct Flaky {
    hosts: InMemoryHostStore,
    work: InMemoryHaWorkStore,
    calls: AtomicUsize,
    fail_from: Option<usize>,
}

impl Flaky {
    fn check(&self) -> Result<(), StoreError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        match self.fail_from {
            Some(from) if n >= from => Err(StoreError::backend(
                "query",
                std::io::Error::other("server closed the connection unexpectedly"),
            )),
            _ => Ok(()),
        }
    }
}

#[async_trait::async_trait]
impl HostStore for Flaky {
    async fn get(&self, id: HostId) -> Result<Option<HostRecord>, StoreError> {
        self.check()?;
        HostStore::get(&self.hosts, id).await
    }
    async fn list(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.check()?;
        HostStore::list(&self.hosts).await
    }
    async fn upsert(&self, record: &HostRecord) -> Result<(), StoreError> {
        self.check()?;
        HostStore::upsert(&self.hosts, record).await
    }
    async fn update_status(
        &self,
        id: HostId,
        expected: Option<Status>,
        update_count: u64,
        to: Status,
        event: Event,
        now: Timestamp,
    ) -> Result<HostRecord, StoreError> {
        self.check()?;
        HostStore::update_status(&self.hosts, id, expected, update_count, to, event, now).await
    }
    async fn set_resource_state(&self, id: HostId, state: ResourceState) -> Result<(), StoreError> {
        self.check()?;
        HostStore::set_resource_state(&self.hosts, id, state).await
    }
    async fn set_last_pings(&self, pings: &[(HostId, Timestamp)]) -> Result<(), StoreError> {
        self.check()?;
        HostStore::set_last_pings(&self.hosts, pings).await
    }
}

#[async_trait::async_trait]
impl HaWorkStore for Flaky {
    async fn insert(&self, item: WorkItem) -> Result<WorkId, StoreError> {
        self.check()?;
        self.work.insert(item).await
    }
    async fn take(&self, owner: OwnerId, now: Timestamp) -> Result<Option<WorkItem>, StoreError> {
        self.check()?;
        self.work.take(owner, now).await
    }
    async fn update(&self, writer: OwnerId, item: &WorkItem) -> Result<u64, StoreError> {
        self.check()?;
        self.work.update(writer, item).await
    }
    async fn get(&self, id: WorkId) -> Result<Option<WorkItem>, StoreError> {
        self.check()?;
        HaWorkStore::get(&self.work, id).await
    }
    async fn for_vm(&self, vm: VmId) -> Result<Vec<WorkItem>, StoreError> {
        self.check()?;
        self.work.for_vm(vm).await
    }
    async fn list(&self) -> Result<Vec<WorkItem>, StoreError> {
        self.check()?;
        HaWorkStore::list(&self.work).await
    }
    async fn pending(&self) -> Result<usize, StoreError> {
        self.check()?;
        self.work.pending().await
    }
    async fn release_owner(&self, owner: OwnerId) -> Result<usize, StoreError> {
        self.check()?;
        self.work.release_owner(owner).await
    }
    async fn mark_pending_investigating(&self, now: Timestamp) -> Result<usize, StoreError> {
        self.check()?;
        self.work.mark_pending_investigating(now).await
    }
    async fn unbrake(&self, now: Timestamp, vms: &[VmId]) -> Result<usize, StoreError> {
        self.check()?;
        self.work.unbrake(now, vms).await
    }
    async fn cleanup(&self, cutoff: Timestamp) -> Result<usize, StoreError> {
        self.check()?;
        self.work.cleanup(cutoff).await
    }
    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        self.check()?;
        self.work.next_due().await
    }
}

/// A provider of stores outside the simulation, on a real-time runtime of its own: the same
/// store at every open (`forgetful`: a new, empty one at each open after the first).
struct Provider {
    runtime: tokio::runtime::Runtime,
    store: std::sync::Mutex<Arc<Flaky>>,
    fail_from: Option<usize>,
    forgetful: bool,
    opens: AtomicUsize,
    failure: Failure,
}

impl Provider {
    fn new(fail_from: Option<usize>, forgetful: bool) -> Arc<Self> {
        Arc::new(Self {
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
            store: std::sync::Mutex::new(Arc::new(Flaky {
                fail_from,
                ..Flaky::default()
            })),
            fail_from,
            forgetful,
            opens: AtomicUsize::new(0),
            failure: Failure::default(),
        })
    }
}

impl StoreProvider for Provider {
    fn open(&self) -> Result<Stores, String> {
        let mut store = self.store.lock().unwrap();
        if self.opens.fetch_add(1, Ordering::SeqCst) > 0 && self.forgetful {
            *store = Arc::new(Flaky {
                fail_from: self.fail_from,
                ..Flaky::default()
            });
        }
        let outside = Arc::new(Outside::new(
            store.clone(),
            self.runtime.handle().clone(),
            "test-db",
            self.failure.clone(),
        ));
        Ok(Stores {
            hosts: outside.clone(),
            work: outside,
        })
    }

    fn failure(&self) -> Option<String> {
        self.failure.get()
    }
}

fn without_wall(report: &cloudha_sim::Report) -> String {
    let mut r = report.clone();
    r.wall_ms = 0;
    r.to_json()
}

#[test]
fn stores_outside_give_the_in_memory_report_and_a_restart_reopens_them() {
    let scenario = shipped("manager-restart-mid-ha.toml");
    let memory = simulate(&scenario, 1);
    let provider = Provider::new(None, false);
    let outside = simulate_on(&scenario, 1, provider.clone()).expect("no store failed");
    assert_eq!(without_wall(&memory), without_wall(&outside));
    assert_eq!(
        provider.opens.load(Ordering::SeqCst),
        2,
        "opened for the first manager and again for the restarted one"
    );
    // The default provider is the in-memory run itself.
    let again = simulate_on(&scenario, 1, Arc::new(InMemoryStores::default())).unwrap();
    assert_eq!(without_wall(&memory), without_wall(&again));
}

#[test]
fn a_restarted_manager_knows_only_what_its_store_gives_it() {
    // A provider that loses everything at the restart: were the simulator to carry the
    // managers' state over, the report would not change.
    let scenario = shipped("manager-restart-mid-ha.toml");
    let memory = simulate(&scenario, 1);
    let lost = simulate_on(&scenario, 1, Provider::new(None, true)).expect("no store failed");
    assert_ne!(
        without_wall(&memory),
        without_wall(&lost),
        "the restarted manager read its hosts and work from the store"
    );
}

#[test]
fn a_store_that_goes_away_mid_run_voids_the_run_naming_it() {
    let scenario = shipped("manager-restart-mid-ha.toml");
    for fail_from in [0, 5, 50, 200] {
        let provider = Provider::new(Some(fail_from), false);
        let e = simulate_on(&scenario, 1, provider.clone()).unwrap_err();
        assert!(
            e.contains("test-db") && e.contains("server closed the connection"),
            "fail from call {fail_from}: {e}"
        );
        let calls = provider.store.lock().unwrap().calls.load(Ordering::SeqCst);
        assert_eq!(
            calls,
            fail_from + 1,
            "after the first failure no call reaches the store (it would wait for a timeout)"
        );
    }
}
