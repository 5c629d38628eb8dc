//! A host store that fails on demand: the in-memory store behind knobs (backend errors with an
//! I/O source, lost replies, late replies, conflicts for ever, failing reads), every error it
//! returned kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudha_ha::Config;
use cloudha_ports::*;
use cloudha_protocol::*;
use tokio::time::sleep;

use super::harness::{Harness, Wiring, harness_with};

#[derive(Default)]
pub(crate) struct FaultyHosts {
    pub(crate) inner: Arc<InMemoryHostStore>,
    /// The next status writes fail (nothing written), whatever their event.
    pub(crate) fail_status: AtomicUsize,
    /// For these events: the next writes fail (nothing written).
    pub(crate) fail_on: Mutex<HashMap<Event, usize>>,
    /// For this event: commit the status write, then answer a backend error (a lost reply), once.
    pub(crate) lose_reply_on: Mutex<Option<Event>>,
    /// For these events: commit, then take this long to answer.
    pub(crate) reply_delay: Mutex<HashMap<Event, Duration>>,
    /// Every status write answers `Conflict` (nothing written).
    pub(crate) conflict: AtomicBool,
    /// The next last-ping batches fail.
    pub(crate) fail_pings: AtomicUsize,
    /// The next loads (`list`) fail.
    pub(crate) fail_list: AtomicUsize,
    /// `get` fails.
    pub(crate) fail_get: AtomicBool,
    pub(crate) gets: AtomicUsize,
    /// Every error returned, with its source: `what: source`.
    pub(crate) errors: Mutex<Vec<String>>,
}

/// Takes one from `counter` if it is above zero.
fn take(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl FaultyHosts {
    fn backend(&self, what: &str) -> StoreError {
        let e = StoreError::backend(
            what,
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset"),
        );
        let source = std::error::Error::source(&e).map(ToString::to_string);
        self.errors
            .lock()
            .unwrap()
            .push(format!("{e}: {}", source.unwrap_or_default()));
        e
    }

    /// A harness whose manager writes through this store.
    pub(crate) fn harness() -> (Harness, Arc<Self>) {
        let store = Arc::new(Self::default());
        let h = harness_with(
            Config::default().liveness,
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
