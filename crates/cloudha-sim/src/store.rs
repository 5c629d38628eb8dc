//! Where a run keeps the managers' records: in memory (the default), or in a durable store that
//! answers from outside the simulation (a database on its own threads and sockets).
//!
//! A store outside is called through [`Outside`]: each call runs on a real-time runtime of its
//! own while the simulation's thread waits for the answer. Simulated time cannot move while a
//! call is in flight (the paused runtime is not running), and no other simulated task runs in
//! between, as with an in-memory store, whose calls finish at once: the order of events, and so
//! the report, is that of the in-memory run.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use cloudha_ports::{
    HaWorkStore, HostRecord, HostStore, InMemoryHaWorkStore, InMemoryHostStore, OwnerId,
    StoreError, Timestamp, WorkItem,
};
use cloudha_protocol::{Event, HostId, ResourceState, Status, VmId, WorkId};

/// The stores of one manager instance.
#[derive(Clone)]
pub struct Stores {
    /// Host records.
    pub hosts: Arc<dyn HostStore>,
    /// HA work items.
    pub work: Arc<dyn HaWorkStore>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stores")
    }
}

/// Gives a run its stores: once for the first manager, and again for each manager started after
/// a `manager_restart`, which must find there everything the one before it wrote (a durable
/// provider reconnects, so the new manager really reads the database again).
pub trait StoreProvider: Send + Sync {
    /// The stores for a manager starting now.
    ///
    /// # Errors
    /// What failed, naming the store.
    fn open(&self) -> Result<Stores, String>;

    /// The first backend failure of any store call of the run, naming the store: a run whose
    /// store failed is void (its report is not that of the scenario).
    fn failure(&self) -> Option<String> {
        None
    }
}

/// The in-memory stores (the default): one pair for the whole run, which a manager restart
/// finds as the crashed manager left it.
#[derive(Debug, Default)]
pub struct InMemoryStores {
    hosts: Arc<InMemoryHostStore>,
    work: Arc<InMemoryHaWorkStore>,
}

impl StoreProvider for InMemoryStores {
    fn open(&self) -> Result<Stores, String> {
        Ok(Stores {
            hosts: self.hosts.clone(),
            work: self.work.clone(),
        })
    }
}

/// The first backend failure of a run, shared by every [`Outside`] of it.
#[derive(Debug, Default, Clone)]
pub struct Failure(Arc<Mutex<Option<String>>>);

impl Failure {
    /// The failure recorded, if any.
    pub fn get(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records `what` unless a failure is already recorded.
    pub fn set(&self, what: String) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(what);
    }
}

/// Runs `future` on `runtime` (a real-time runtime with at least one worker thread) and blocks
/// the calling thread until it ends: from a simulation's task, the paused world stands still
/// meanwhile. `None` when the runtime ended before the future did.
pub fn wait_outside<F>(runtime: &tokio::runtime::Handle, future: F) -> Option<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv().ok()
}

/// A store that lives on a real-time runtime outside the simulation (a database's pool), called
/// from the simulation through [`wait_outside`]. After the first backend failure every call
/// fails at once (the run is void, see [`StoreProvider::failure`]), so a database that went
/// away does not hold the run for a connection timeout per call.
pub struct Outside<S> {
    store: Arc<S>,
    runtime: tokio::runtime::Handle,
    name: String,
    failure: Failure,
}

impl<S> std::fmt::Debug for Outside<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outside")
            .field("store", &self.name)
            .finish()
    }
}

/// The error of a call refused because an earlier one failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Earlier(String);

impl<S: Send + Sync + 'static> Outside<S> {
    /// `store`, which lives on `runtime`, named `name` in failures (never with a password).
    pub fn new(
        store: Arc<S>,
        runtime: tokio::runtime::Handle,
        name: impl Into<String>,
        failure: Failure,
    ) -> Self {
        Self {
            store,
            runtime,
            name: name.into(),
            failure,
        }
    }

    fn call<T, F>(&self, what: &'static str, f: impl FnOnce(Arc<S>) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        if let Some(earlier) = self.failure.get() {
            return Err(StoreError::backend(what, Earlier(earlier)));
        }
        let answer = wait_outside(&self.runtime, f(self.store.clone())).unwrap_or_else(|| {
            Err(StoreError::backend(
                what,
                Earlier("the store's runtime ended".into()),
            ))
        });
        if let Err(e @ StoreError::Backend { .. }) = &answer {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                let said = s.to_string();
                if !text.contains(&said) {
                    text.push_str(&format!(": {said}"));
                }
                source = s.source();
            }
            self.failure
                .set(format!("store `{}`: {what}: {text}", self.name));
        }
        answer
    }
}

#[async_trait::async_trait]
impl<S: HostStore + 'static> HostStore for Outside<S> {
    async fn get(&self, id: HostId) -> Result<Option<HostRecord>, StoreError> {
        self.call("reading a host", move |s| async move { s.get(id).await })
    }

    async fn list(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.call("listing hosts", |s| async move { s.list().await })
    }

    async fn upsert(&self, record: &HostRecord) -> Result<(), StoreError> {
        let record = record.clone();
        self.call("writing a host", |s| async move { s.upsert(&record).await })
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
        self.call("updating a host's status", move |s| async move {
            s.update_status(id, expected, update_count, to, event, now)
                .await
        })
    }

    async fn set_resource_state(&self, id: HostId, state: ResourceState) -> Result<(), StoreError> {
        self.call("setting a resource state", move |s| async move {
            s.set_resource_state(id, state).await
        })
    }

    async fn set_last_pings(&self, pings: &[(HostId, Timestamp)]) -> Result<(), StoreError> {
        let pings = pings.to_vec();
        self.call("writing last pings", |s| async move {
            s.set_last_pings(&pings).await
        })
    }
}

#[async_trait::async_trait]
impl<S: HaWorkStore + 'static> HaWorkStore for Outside<S> {
    async fn insert(&self, item: WorkItem) -> Result<WorkId, StoreError> {
        self.call(
            "inserting a work item",
            |s| async move { s.insert(item).await },
        )
    }

    async fn take(&self, owner: OwnerId, now: Timestamp) -> Result<Option<WorkItem>, StoreError> {
        self.call(
            "claiming work",
            move |s| async move { s.take(owner, now).await },
        )
    }

    async fn update(&self, writer: OwnerId, item: &WorkItem) -> Result<u64, StoreError> {
        let item = item.clone();
        self.call("updating a work item", move |s| async move {
            s.update(writer, &item).await
        })
    }

    async fn get(&self, id: WorkId) -> Result<Option<WorkItem>, StoreError> {
        self.call(
            "reading a work item",
            move |s| async move { s.get(id).await },
        )
    }

    async fn for_vm(&self, vm: VmId) -> Result<Vec<WorkItem>, StoreError> {
        self.call(
            "reading a VM's work",
            move |s| async move { s.for_vm(vm).await },
        )
    }

    async fn list(&self) -> Result<Vec<WorkItem>, StoreError> {
        self.call("listing work", |s| async move { s.list().await })
    }

    async fn pending(&self) -> Result<usize, StoreError> {
        self.call(
            "counting pending work",
            |s| async move { s.pending().await },
        )
    }

    async fn release_owner(&self, owner: OwnerId) -> Result<usize, StoreError> {
        self.call("releasing claims", move |s| async move {
            s.release_owner(owner).await
        })
    }

    async fn mark_pending_investigating(&self, now: Timestamp) -> Result<usize, StoreError> {
        self.call("resetting pending work", move |s| async move {
            s.mark_pending_investigating(now).await
        })
    }

    async fn unbrake(&self, now: Timestamp, vms: &[VmId]) -> Result<usize, StoreError> {
        let vms = vms.to_vec();
        self.call("lifting the brake", move |s| async move {
            s.unbrake(now, &vms).await
        })
    }

    async fn cleanup(&self, cutoff: Timestamp) -> Result<usize, StoreError> {
        self.call("cleaning up work", move |s| async move {
            s.cleanup(cutoff).await
        })
    }

    async fn next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        self.call("reading the next due time", |s| async move {
            s.next_due().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outside_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime")
    }

    #[tokio::test(start_paused = true)]
    async fn paused_time_stands_still_while_a_call_is_outside() {
        let outside = outside_runtime();
        let store = Outside::new(
            Arc::new(InMemoryHostStore::new()),
            outside.handle().clone(),
            "memory",
            Failure::default(),
        );
        let before = tokio::time::Instant::now();
        // A timer due at once would fire if paused time could jump while the call is away.
        let timer = tokio::spawn(tokio::time::sleep(std::time::Duration::from_millis(1)));
        let slow = Arc::new(InMemoryHostStore::new());
        let slow = Outside::new(slow, outside.handle().clone(), "slow", Failure::default());
        // The call takes real time on the outside runtime (a real sleep there).
        let answer = slow.call("waiting", |_| async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            Ok(7)
        });
        assert_eq!(answer.unwrap(), 7);
        assert_eq!(
            tokio::time::Instant::now(),
            before,
            "no simulated time passed"
        );
        assert!(!timer.is_finished(), "no simulated task ran meanwhile");
        HostStore::upsert(
            &store,
            &HostRecord::new(HostId(1), "h1", cloudha_protocol::HypervisorType::Kvm),
        )
        .await
        .unwrap();
        assert!(HostStore::get(&store, HostId(1)).await.unwrap().is_some());
        drop(timer);
        outside.shutdown_background();
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_backend_failure_every_call_fails_at_once_naming_the_store() {
        let outside = outside_runtime();
        let failure = Failure::default();
        let store = Outside::new(
            Arc::new(InMemoryHostStore::new()),
            outside.handle().clone(),
            "sqlite:gone.db",
            failure.clone(),
        );
        let e = store
            .call("writing", |_| async {
                Err::<(), _>(StoreError::backend(
                    "commit",
                    std::io::Error::other("disk I/O error"),
                ))
            })
            .unwrap_err();
        assert!(matches!(e, StoreError::Backend { .. }));
        let recorded = failure.get().expect("recorded");
        assert!(
            recorded.contains("sqlite:gone.db") && recorded.contains("disk I/O error"),
            "{recorded}"
        );
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = calls.clone();
        let again = store.call("reading", move |_| async move {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        });
        assert!(again.is_err());
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "not called"
        );
        // A refusal that is an answer (a stale write) is no failure of the store.
        let fresh = Failure::default();
        let store = Outside::new(
            Arc::new(InMemoryHostStore::new()),
            outside.handle().clone(),
            "x",
            fresh.clone(),
        );
        let _ = store.call("updating", |_| async {
            Err::<(), _>(StoreError::UnknownHost(HostId(9)))
        });
        assert!(fresh.get().is_none());
        outside.shutdown_background();
    }

    #[test]
    fn a_runtime_gone_is_an_error_not_a_hang() {
        let outside = outside_runtime();
        let handle = outside.handle().clone();
        outside.shutdown_background();
        assert!(wait_outside(&handle, async { 1 }).is_none());
    }
}
