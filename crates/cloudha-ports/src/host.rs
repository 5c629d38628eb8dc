//! Host records, the [`HostStore`] port (durable; async, fallible, compare-and-set on status,
//! spec §4.1) and the [`HostDirectory`] the engine reads hosts through (plain calls, answered
//! from the agent manager's [`HostCache`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};

use cloudha_protocol::{
    ClusterId, Event, HostId, HostType, HypervisorType, PodId, ResourceState, Status, ZoneId,
};

use crate::error::StoreError;
use crate::time::Timestamp;

/// What the manager knows of a host.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HostRecord {
    /// The host.
    pub id: HostId,
    /// Its name.
    pub name: String,
    /// Its type.
    pub host_type: HostType,
    /// Its hypervisor.
    pub hypervisor: HypervisorType,
    /// Its cluster.
    pub cluster: Option<ClusterId>,
    /// Its pod.
    pub pod: Option<PodId>,
    /// Its zone.
    pub zone: Option<ZoneId>,
    /// Its status (`None`: never connected).
    pub status: Option<Status>,
    /// Its administrative state.
    pub resource_state: ResourceState,
    /// When it last pinged (or connected, or was found Up). The agent manager keeps the exact
    /// time in memory and writes it to the store in batches, so a stored value may be up to one
    /// `ping.interval` old.
    pub last_ping: Option<Timestamp>,
    /// When it was last disconnected.
    pub disconnected_on: Option<Timestamp>,
    /// When its agent last connected (`AgentConnected`): evidence older than this (a heartbeat
    /// stamp, a power reading) says nothing about the host as it runs now.
    pub connected_at: Option<Timestamp>,
    /// Optimistic-lock counter, incremented by every status update.
    pub update_count: u64,
    /// Host tags (for `ha.tag`).
    pub tags: Vec<String>,
    /// The host fences itself when its storage heartbeat fails, independently of its agent (a
    /// watchdog, sanlock). Only then does a neighbour's "heartbeat dead" prove a fence; with
    /// CloudStack's agent-run heartbeat writer it does not (an agent crash stops the heartbeat
    /// while the VMs run on).
    pub self_fence_independent: bool,
}

impl HostRecord {
    /// A new routing host with no status yet.
    pub fn new(id: HostId, name: impl Into<String>, hypervisor: HypervisorType) -> Self {
        Self {
            id,
            name: name.into(),
            host_type: HostType::Routing,
            hypervisor,
            cluster: None,
            pod: None,
            zone: None,
            status: None,
            resource_state: ResourceState::Enabled,
            last_ping: None,
            disconnected_on: None,
            connected_at: None,
            update_count: 0,
            tags: Vec::new(),
            self_fence_independent: false,
        }
    }

    /// The record moved from its status to `to` by `event` at `now`: the status, the update
    /// counter, and the times the event sets (`connected_at` on `AgentConnected`, `last_ping`
    /// on `Ping` and `AgentConnected`, `disconnected_on` when the host loses its connection).
    /// What every [`HostStore::update_status`] does once its compare succeeded.
    pub fn apply_status(&mut self, to: Status, event: Event, now: Timestamp) {
        let from = self.status;
        self.status = Some(to);
        self.update_count += 1;
        if event == Event::AgentConnected {
            self.connected_at = Some(now);
        }
        if matches!(event, Event::Ping | Event::AgentConnected) {
            // Never back (as `set_last_pings`): a newer ping already recorded stays.
            self.last_ping = Some(self.last_ping.map_or(now, |last| last.max(now)));
        }
        if to.lost_connection() && !from.is_some_and(Status::lost_connection) {
            self.disconnected_on = Some(now);
        }
    }
}

/// Where host records live durably. Async and fallible: an implementation talks to a database.
/// The engine never awaits it on the ping path: the agent manager loads every record at start
/// into its [`HostCache`], answers reads from there, writes status changes through (a
/// compare-and-set on status and `update_count`, so two writers cannot both move a host), and
/// writes last-ping times in batches, as CloudStack keeps its ping map in memory.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait HostStore: Send + Sync {
    /// One host.
    ///
    /// # Errors
    /// The backend's.
    async fn get(&self, id: HostId) -> Result<Option<HostRecord>, StoreError>;

    /// Every host, by id.
    ///
    /// # Errors
    /// The backend's.
    async fn list(&self) -> Result<Vec<HostRecord>, StoreError>;

    /// Adds or replaces a host record.
    ///
    /// # Errors
    /// The backend's.
    async fn upsert(&self, record: &HostRecord) -> Result<(), StoreError>;

    /// Moves the host from `expected` (at update `update_count`) to `to` because of `event`, as
    /// [`HostRecord::apply_status`] does. Returns the new record.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the record changed since it was read; `UnknownHost`; the
    /// backend's.
    async fn update_status(
        &self,
        id: HostId,
        expected: Option<Status>,
        update_count: u64,
        to: Status,
        event: Event,
        now: Timestamp,
    ) -> Result<HostRecord, StoreError>;

    /// Sets the administrative state.
    ///
    /// # Errors
    /// `UnknownHost`; the backend's.
    async fn set_resource_state(&self, id: HostId, state: ResourceState) -> Result<(), StoreError>;

    /// Records the last successful pings of several hosts (a batch; unknown hosts are skipped;
    /// a time older than the stored one is ignored, so a late batch never moves it back).
    ///
    /// # Errors
    /// The backend's.
    async fn set_last_pings(&self, pings: &[(HostId, Timestamp)]) -> Result<(), StoreError>;
}

/// Plain, fast reads of the hosts the engine knows (the agent manager's [`HostCache`]): what
/// investigators, fencers and the HA manager read on every decision.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait HostDirectory: Send + Sync {
    /// One host.
    fn get(&self, id: HostId) -> Option<HostRecord>;

    /// Only its status (cheap; used on the ping path).
    fn status(&self, id: HostId) -> Option<Status>;

    /// Every host, by id.
    fn list(&self) -> Vec<HostRecord>;

    /// The hosts of a cluster, by id.
    fn in_cluster(&self, cluster: ClusterId) -> Vec<HostRecord>;

    /// The hosts of a pod, by id.
    fn in_pod(&self, pod: PodId) -> Vec<HostRecord>;
}

/// Host records in memory, indexed by cluster and pod (HA asks for a cluster's hosts for every
/// work item: a scan of every host would cost a fleet dearly). The agent manager's cache, and
/// the heart of [`InMemoryHostStore`].
#[derive(Debug, Default)]
pub struct HostCache {
    hosts: Mutex<Hosts>,
}

#[derive(Debug, Default)]
struct Hosts {
    by_id: HashMap<HostId, HostRecord>,
    by_cluster: HashMap<ClusterId, BTreeSet<HostId>>,
    by_pod: HashMap<PodId, BTreeSet<HostId>>,
}

impl HostCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hosts> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The hosts of an index entry, by id.
    fn indexed(&self, pick: impl Fn(&Hosts) -> Option<&BTreeSet<HostId>>) -> Vec<HostRecord> {
        let hosts = self.lock();
        pick(&hosts)
            .into_iter()
            .flatten()
            .filter_map(|id| hosts.by_id.get(id).cloned())
            .collect()
    }

    /// Adds or replaces a record.
    pub fn upsert(&self, record: HostRecord) {
        let mut hosts = self.lock();
        let id = record.id;
        if let Some(old) = hosts.by_id.get(&id).map(|o| (o.cluster, o.pod)) {
            if let Some(c) = old.0 {
                hosts.by_cluster.entry(c).or_default().remove(&id);
            }
            if let Some(p) = old.1 {
                hosts.by_pod.entry(p).or_default().remove(&id);
            }
        }
        if let Some(c) = record.cluster {
            hosts.by_cluster.entry(c).or_default().insert(id);
        }
        if let Some(p) = record.pod {
            hosts.by_pod.entry(p).or_default().insert(id);
        }
        hosts.by_id.insert(id, record);
    }

    /// Replaces every record (a load from the store).
    pub fn replace_all(&self, records: Vec<HostRecord>) {
        *self.lock() = Hosts::default();
        for r in records {
            self.upsert(r);
        }
    }

    /// The compare-and-set of [`HostStore::update_status`], in memory.
    ///
    /// # Errors
    /// `Conflict` when the record changed since it was read; `UnknownHost`.
    pub fn update_status(
        &self,
        id: HostId,
        expected: Option<Status>,
        update_count: u64,
        to: Status,
        event: Event,
        now: Timestamp,
    ) -> Result<HostRecord, StoreError> {
        let mut hosts = self.lock();
        let h = hosts
            .by_id
            .get_mut(&id)
            .ok_or(StoreError::UnknownHost(id))?;
        if h.status != expected || h.update_count != update_count {
            return Err(StoreError::Conflict {
                host: id,
                expected,
                update_count,
            });
        }
        h.apply_status(to, event, now);
        Ok(h.clone())
    }

    /// Sets the administrative state.
    ///
    /// # Errors
    /// `UnknownHost`.
    pub fn set_resource_state(&self, id: HostId, state: ResourceState) -> Result<(), StoreError> {
        self.lock()
            .by_id
            .get_mut(&id)
            .ok_or(StoreError::UnknownHost(id))?
            .resource_state = state;
        Ok(())
    }

    /// Sets last-ping times (unknown hosts are skipped; a time older than the record's stays
    /// out: a late batch never moves a last ping back).
    pub fn set_last_pings(&self, pings: &[(HostId, Timestamp)]) {
        let mut hosts = self.lock();
        for (id, at) in pings {
            if let Some(h) = hosts.by_id.get_mut(id)
                && h.last_ping.is_none_or(|last| last < *at)
            {
                h.last_ping = Some(*at);
            }
        }
    }
}

impl HostDirectory for HostCache {
    fn get(&self, id: HostId) -> Option<HostRecord> {
        self.lock().by_id.get(&id).cloned()
    }

    fn status(&self, id: HostId) -> Option<Status> {
        self.lock().by_id.get(&id).and_then(|h| h.status)
    }

    fn list(&self) -> Vec<HostRecord> {
        let mut v: Vec<_> = self.lock().by_id.values().cloned().collect();
        v.sort_by_key(|h| h.id);
        v
    }

    fn in_cluster(&self, cluster: ClusterId) -> Vec<HostRecord> {
        self.indexed(|h| h.by_cluster.get(&cluster))
    }

    fn in_pod(&self, pod: PodId) -> Vec<HostRecord> {
        self.indexed(|h| h.by_pod.get(&pod))
    }
}

/// A [`HostStore`] in memory (the default, and what tests inspect): a [`HostCache`] behind the
/// async port. Its plain reads (inherent `get`, `status`, `list`) show what was written to the
/// store, which may lag the agent manager's cache by one batch of last-ping times.
#[derive(Debug, Default)]
pub struct InMemoryHostStore {
    hosts: HostCache,
}

impl InMemoryHostStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a record at once (setting up a test or a simulation).
    pub fn insert(&self, record: HostRecord) {
        self.hosts.upsert(record);
    }

    /// One host, as stored (a plain read, for tests and simulations).
    pub fn get(&self, id: HostId) -> Option<HostRecord> {
        self.hosts.get(id)
    }

    /// A host's stored status.
    pub fn status(&self, id: HostId) -> Option<Status> {
        self.hosts.status(id)
    }

    /// Every stored host, by id.
    pub fn list(&self) -> Vec<HostRecord> {
        self.hosts.list()
    }
}

#[async_trait::async_trait]
impl HostStore for InMemoryHostStore {
    async fn get(&self, id: HostId) -> Result<Option<HostRecord>, StoreError> {
        Ok(self.hosts.get(id))
    }

    async fn list(&self) -> Result<Vec<HostRecord>, StoreError> {
        Ok(self.hosts.list())
    }

    async fn upsert(&self, record: &HostRecord) -> Result<(), StoreError> {
        self.hosts.upsert(record.clone());
        Ok(())
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
        self.hosts
            .update_status(id, expected, update_count, to, event, now)
    }

    async fn set_resource_state(&self, id: HostId, state: ResourceState) -> Result<(), StoreError> {
        self.hosts.set_resource_state(id, state)
    }

    async fn set_last_pings(&self, pings: &[(HostId, Timestamp)]) -> Result<(), StoreError> {
        self.hosts.set_last_pings(pings);
        Ok(())
    }
}
