//! Host records and the `HostStore` port (spec §4.1: optimistic status updates).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use cloudha_protocol::{
    ClusterId, Event, HostId, HostType, HypervisorType, PodId, ResourceState, Status, ZoneId,
};
use tokio::time::Instant;

use crate::error::StoreError;

/// What the manager knows of a host.
#[derive(Debug, Clone, PartialEq)]
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
    /// When it last pinged (or connected, or was found Up), on the manager's monotonic clock.
    pub last_ping: Option<Instant>,
    /// When it was last disconnected.
    pub disconnected_on: Option<Instant>,
    /// When its agent last connected (`AgentConnected`): evidence older than this (a heartbeat
    /// stamp, a power reading) says nothing about the host as it runs now.
    pub connected_at: Option<Instant>,
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
}

/// Where host records live. Calls are plain (not async): the ping path reads host status, so an
/// implementation must answer fast (a durable one keeps a write-through cache).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
pub trait HostStore: Send + Sync {
    /// One host.
    fn get(&self, id: HostId) -> Option<HostRecord>;

    /// Only its status (cheap; used on the ping path).
    fn status(&self, id: HostId) -> Option<Status>;

    /// Every host.
    fn list(&self) -> Vec<HostRecord>;

    /// The hosts of a cluster.
    fn in_cluster(&self, cluster: ClusterId) -> Vec<HostRecord>;

    /// The hosts of a pod.
    fn in_pod(&self, pod: PodId) -> Vec<HostRecord>;

    /// Adds or replaces a host record.
    fn upsert(&self, record: HostRecord);

    /// Moves the host from `expected` (at update `update_count`) to `to` because of `event`.
    /// Sets `last_ping` on `Ping` and `AgentConnected`, and `disconnected_on` when `to` has lost
    /// its connection. Returns the new record.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the record changed since it was read; `UnknownHost`.
    fn update_status(
        &self,
        id: HostId,
        expected: Option<Status>,
        update_count: u64,
        to: Status,
        event: Event,
        now: Instant,
    ) -> Result<HostRecord, StoreError>;

    /// Sets the administrative state.
    ///
    /// # Errors
    /// `UnknownHost`.
    fn set_resource_state(&self, id: HostId, state: ResourceState) -> Result<(), StoreError>;

    /// Records the last successful ping (kept by the ping monitor while the host is tracked).
    ///
    /// # Errors
    /// `UnknownHost`.
    fn set_last_ping(&self, id: HostId, at: Instant) -> Result<(), StoreError>;
}

/// A `HostStore` in memory, indexed by cluster and pod (HA asks for a cluster's hosts for every
/// work item: a scan of every host would cost a fleet dearly).
#[derive(Debug, Default)]
pub struct InMemoryHostStore {
    hosts: Mutex<Hosts>,
}

#[derive(Debug, Default)]
struct Hosts {
    by_id: HashMap<HostId, HostRecord>,
    by_cluster: HashMap<ClusterId, std::collections::BTreeSet<HostId>>,
    by_pod: HashMap<PodId, std::collections::BTreeSet<HostId>>,
}

impl InMemoryHostStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hosts> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every host, by id.
    fn all(&self) -> Vec<HostRecord> {
        let mut v: Vec<_> = self.lock().by_id.values().cloned().collect();
        v.sort_by_key(|h| h.id);
        v
    }

    /// The hosts of an index entry, by id.
    fn indexed(
        &self,
        pick: impl Fn(&Hosts) -> Option<&std::collections::BTreeSet<HostId>>,
    ) -> Vec<HostRecord> {
        let hosts = self.lock();
        pick(&hosts)
            .into_iter()
            .flatten()
            .filter_map(|id| hosts.by_id.get(id).cloned())
            .collect()
    }
}

impl HostStore for InMemoryHostStore {
    fn get(&self, id: HostId) -> Option<HostRecord> {
        self.lock().by_id.get(&id).cloned()
    }

    fn status(&self, id: HostId) -> Option<Status> {
        self.lock().by_id.get(&id).and_then(|h| h.status)
    }

    fn list(&self) -> Vec<HostRecord> {
        self.all()
    }

    fn in_cluster(&self, cluster: ClusterId) -> Vec<HostRecord> {
        self.indexed(|h| h.by_cluster.get(&cluster))
    }

    fn in_pod(&self, pod: PodId) -> Vec<HostRecord> {
        self.indexed(|h| h.by_pod.get(&pod))
    }

    fn upsert(&self, record: HostRecord) {
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

    fn update_status(
        &self,
        id: HostId,
        expected: Option<Status>,
        update_count: u64,
        to: Status,
        event: Event,
        now: Instant,
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
        h.status = Some(to);
        h.update_count += 1;
        if event == Event::AgentConnected {
            h.connected_at = Some(now);
        }
        if matches!(event, Event::Ping | Event::AgentConnected) {
            h.last_ping = Some(now);
        }
        if to.lost_connection() && !expected.is_some_and(Status::lost_connection) {
            h.disconnected_on = Some(now);
        }
        Ok(h.clone())
    }

    fn set_resource_state(&self, id: HostId, state: ResourceState) -> Result<(), StoreError> {
        self.lock()
            .by_id
            .get_mut(&id)
            .ok_or(StoreError::UnknownHost(id))?
            .resource_state = state;
        Ok(())
    }

    fn set_last_ping(&self, id: HostId, at: Instant) -> Result<(), StoreError> {
        self.lock()
            .by_id
            .get_mut(&id)
            .ok_or(StoreError::UnknownHost(id))?
            .last_ping = Some(at);
        Ok(())
    }
}
