//! Stores that fail on demand: the in-memory host and work stores behind knobs (backend errors
//! with an I/O source, lost or late replies, conflicts, takes that never answer), every error
//! they returned kept as `what: source`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudha_liveness::LivenessConfig;
use cloudha_ports::*;
use cloudha_protocol::*;
use tokio::time::sleep;

use crate::harness::{Harness, Wiring};

/// Takes one from `counter` if it is above zero.
fn take(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// A backend error about `what` whose source is an I/O error saying `reset`, kept in `errors`
/// as `what: source`.
fn backend_error(errors: &Mutex<Vec<String>>, what: &str, reset: &str) -> StoreError {
    let e = StoreError::backend(
        what,
        std::io::Error::new(std::io::ErrorKind::ConnectionReset, reset.to_owned()),
    );
    let source = std::error::Error::source(&e).map(ToString::to_string);
    errors
        .lock()
        .unwrap()
        .push(format!("{e}: {}", source.unwrap_or_default()));
    e
}

/// A [`HostStore`]: the in-memory one behind knobs a test turns (backend errors with an I/O
/// source, lost replies, late replies, conflicts for ever, failing reads), keeping every error
/// it returned. Fresh, it fails nothing.
#[derive(Debug, Default)]
pub struct FaultyHosts {
    /// The store underneath, to seed and read.
    pub inner: Arc<InMemoryHostStore>,
    /// The next status writes fail (nothing written), whatever their event.
    pub fail_status: AtomicUsize,
    /// For these events: the next writes fail (nothing written).
    pub fail_on: Mutex<HashMap<Event, usize>>,
    /// For this event: commit the status write, then answer a backend error (a lost reply), once.
    pub lose_reply_on: Mutex<Option<Event>>,
    /// For these events: commit, then take this long to answer.
    pub reply_delay: Mutex<HashMap<Event, Duration>>,
    /// Every status write answers `Conflict` (nothing written).
    pub conflict: AtomicBool,
    /// The next last-ping batches fail.
    pub fail_pings: AtomicUsize,
    /// The next loads (`list`) fail.
    pub fail_list: AtomicUsize,
    /// `get` fails.
    pub fail_get: AtomicBool,
    /// The `get` calls so far.
    pub gets: AtomicUsize,
    /// Every error returned, with its source: `what: source`.
    pub errors: Mutex<Vec<String>>,
}

impl FaultyHosts {
    /// A store over an empty in-memory store, failing nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn backend(&self, what: &str) -> StoreError {
        backend_error(&self.errors, what, "connection reset")
    }

    /// A harness (default liveness config) whose manager writes through a new store of this
    /// kind; the harness's `store` is the in-memory store underneath.
    pub fn harness() -> (Harness, Arc<Self>) {
        let store = Arc::new(Self::default());
        let h = Harness::with_wiring(
            LivenessConfig::default(),
            Wiring {
                store: store.inner.clone(),
                store_port: Some(store.clone()),
                ..Wiring::default()
            },
        );
        (h, store)
    }
}

#[async_trait::async_trait]
impl HostStore for FaultyHosts {
    async fn get(&self, id: HostId) -> Result<Option<HostRecord>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        if self.fail_get.load(Ordering::SeqCst) {
            return Err(self.backend("get host"));
        }
        HostStore::get(&*self.inner, id).await
    }
    async fn list(&self) -> Result<Vec<HostRecord>, StoreError> {
        if take(&self.fail_list) {
            return Err(self.backend("list hosts"));
        }
        HostStore::list(&*self.inner).await
    }
    async fn upsert(&self, record: &HostRecord) -> Result<(), StoreError> {
        self.inner.upsert(record).await
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
        if self.conflict.load(Ordering::SeqCst) {
            return Err(StoreError::Conflict {
                host: id,
                expected,
                update_count,
            });
        }
        let failed_event = self
            .fail_on
            .lock()
            .unwrap()
            .get_mut(&event)
            .is_some_and(|n| n.checked_sub(1).map(|m| *n = m).is_some());
        if take(&self.fail_status) || failed_event {
            return Err(self.backend("update host status"));
        }
        let r = self
            .inner
            .update_status(id, expected, update_count, to, event, now)
            .await;
        if r.is_ok() {
            let lose = {
                let mut l = self.lose_reply_on.lock().unwrap();
                let lose = *l == Some(event);
                if lose {
                    *l = None;
                }
                lose
            };
            if lose {
                return Err(self.backend("update host status (reply lost after commit)"));
            }
            let delay = self.reply_delay.lock().unwrap().get(&event).copied();
            if let Some(d) = delay {
                sleep(d).await;
            }
        }
        r
    }
    async fn set_resource_state(&self, id: HostId, state: ResourceState) -> Result<(), StoreError> {
        self.inner.set_resource_state(id, state).await
    }
    async fn set_last_pings(&self, pings: &[(HostId, Timestamp)]) -> Result<(), StoreError> {
        if take(&self.fail_pings) {
            return Err(self.backend("write last pings"));
        }
        self.inner.set_last_pings(pings).await
    }
}

/// An [`HaWorkStore`]: the in-memory one failing the next `fail_takes` takes and `fail_updates`
/// updates with a backend error whose source is an I/O error, never answering the next
/// `hang_takes` takes, failing every call while `away` is set (a database gone), losing the
/// replies of writes that landed, and refusing one VM's inserts for ever; it counts its calls
/// and keeps every error it returned. Fresh, it fails nothing.
#[derive(Debug, Default)]
pub struct FlakyWork {
    /// The store underneath, to seed and read.
    pub inner: InMemoryHaWorkStore,
    /// The next takes fail.
    pub fail_takes: AtomicUsize,
    /// The next updates fail (nothing written).
    pub fail_updates: AtomicUsize,
    /// The next takes never answer.
    pub hang_takes: AtomicUsize,
    /// The store is away: every call fails while this is set (nothing written).
    pub away: AtomicBool,
    /// The next takes that claim an item answer an error after the claim landed (a lost
    /// reply).
    pub lose_take_reply: AtomicUsize,
    /// The next inserts answer an error after the item was stored (a lost reply).
    pub lose_insert_reply: AtomicUsize,
    /// Inserts of this VM's items fail, for ever (a value the database refuses).
    pub refuse_vm: Mutex<Option<VmId>>,
    /// The calls made so far (answered or failed), every kind.
    pub calls: AtomicUsize,
    /// The takes made so far (answered or failed).
    pub takes: AtomicUsize,
    /// Every error returned, with its source: `what: source`.
    pub errors: Mutex<Vec<String>>,
}

impl FlakyWork {
    /// A store over an empty in-memory store, failing nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts the call; fails it while the store is away.
    fn call(&self, what: &str) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.away.load(Ordering::SeqCst) {
            return Err(backend_error(&self.errors, what, "connection refused"));
        }
        Ok(())
    }

    fn fail(&self, counter: &AtomicUsize, what: &str) -> Result<(), StoreError> {
        if take(counter) {
            return Err(backend_error(
                &self.errors,
                what,
                "connection reset by peer",
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl HaWorkStore for FlakyWork {
    async fn insert(&self, item: WorkItem) -> Result<WorkId, StoreError> {
        self.call("insert")?;
        if *self.refuse_vm.lock().unwrap() == Some(item.vm) {
            return Err(backend_error(
                &self.errors,
                "insert",
                "a value the database refuses",
            ));
        }
        let id = self.inner.insert(item).await?;
        if take(&self.lose_insert_reply) {
            return Err(backend_error(
                &self.errors,
                "insert",
                "reply lost after the commit",
            ));
        }
        Ok(id)
    }
    async fn take(&self, owner: OwnerId, now: Timestamp) -> Result<Option<WorkItem>, StoreError> {
        self.takes.fetch_add(1, Ordering::SeqCst);
        self.call("take")?;
        self.fail(&self.fail_takes, "take")?;
        if take(&self.hang_takes) {
            std::future::pending::<()>().await;
        }
        let taken = self.inner.take(owner, now).await?;
        if taken.is_some() && take(&self.lose_take_reply) {
            return Err(backend_error(
                &self.errors,
                "take",
                "reply lost after the commit",
            ));
        }
        Ok(taken)
    }
    async fn update(&self, writer: OwnerId, item: &WorkItem) -> Result<u64, StoreError> {
        self.call("update")?;
        self.fail(&self.fail_updates, "update")?;
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
