//! The HA manager: its ports, its state and its public face (this module); scheduling and the
//! status follower ([`schedule`]); the queue, the brake and one item's processing ([`queue`]);
//! the work itself: restart with its proof, migrate, stop, destroy ([`work`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

mod queue;
mod schedule;
mod work;

use cloudha_attache::Tasks;
use cloudha_ports::{Clock, StartKey, StoreError, Timestamp};
use cloudha_protocol::{
    ClusterId, HostId, HostType, ListenerId, ResourceState, Status, VmId, VmPowerState, VmState,
    VmStateReport, WorkId, WorkReason, WorkStep, WorkType,
};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use cloudha_liveness::{
    AgentManager, HostDownAlert, LivenessConfig, ManagerError, StatusChanges, investigate,
};
use cloudha_ports::{
    Alert, AlertKind, AlertSink, HaWorkStore, HostDirectory, HostRecord, Investigator, OwnerId,
    ProofKind, VmKind, VmRecord, VmVerdict, WorkItem,
};
use cloudha_registry::{ConnectError, Interest, Listener};

use crate::bounded::{BoundedFencer, BoundedVms, BoundedWork, STORE_CALL_BOUND};
use crate::config::HaConfig;
use crate::fence::{FenceOutcome, Fencer};
use crate::proof::{DeathProof, ProveDead};
use crate::vm::{Expunge, Planner, StartError, StartParams, VmOrchestrator};

/// The ports the HA manager is built on, besides the agent manager it composes. Make one with
/// [`HaPorts::new`].
#[non_exhaustive]
pub struct HaPorts {
    /// The work queue.
    pub work: Arc<dyn HaWorkStore>,
    /// VM records and actions.
    pub vms: Arc<dyn VmOrchestrator>,
    /// The fence chain, in order.
    pub fencers: Vec<Arc<dyn Fencer>>,
    /// Where alerts go.
    pub alerts: Arc<dyn AlertSink>,
    /// The VM investigator chain; `None`: the agent manager's.
    pub investigators: Option<Vec<Arc<dyn Investigator>>>,
}

impl HaPorts {
    /// The ports, with the agent manager's investigator chain.
    pub fn new(
        work: Arc<dyn HaWorkStore>,
        vms: Arc<dyn VmOrchestrator>,
        fencers: Vec<Arc<dyn Fencer>>,
        alerts: Arc<dyn AlertSink>,
    ) -> Self {
        Self {
            work,
            vms,
            fencers,
            alerts,
            investigators: None,
        }
    }

    /// With this VM investigator chain instead of the agent manager's.
    #[must_use]
    pub fn with_investigators(mut self, investigators: Vec<Arc<dyn Investigator>>) -> Self {
        self.investigators = Some(investigators);
        self
    }
}

/// How one processing of an item ended.
enum Outcome {
    Done(String),
    Cancelled(String),
    /// Try again at `at`; `count` says whether it spends a try.
    Retry {
        at: Timestamp,
        count: bool,
        why: String,
    },
    Braked(ClusterId, String),
    /// The claim moved to another owner (a refused write): drop the item, write nothing.
    Lost(String),
}

/// First pause after a store failure.
const STORE_RETRY: Duration = Duration::from_secs(1);
/// Longest pause between retries of a store write.
const STORE_RETRY_MAX: Duration = Duration::from_secs(30);
/// Tries to store a new work item.
const INSERT_TRIES: u32 = 3;

/// Displays an error with its sources: `a: b: c`.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

struct HaInner {
    config: HaConfig,
    /// The agent manager's settings (VM-HA switches, `wait`, the ping deadline).
    liveness: LivenessConfig,
    owner: OwnerId,
    ports: HaPorts,
    /// The VM investigator chain.
    investigators: Vec<Arc<dyn Investigator>>,
    /// The agent manager's hosts (its cache: status, cluster, tags).
    hosts: Arc<dyn HostDirectory>,
    /// The agent manager (operator actions set a host's administrative state through it).
    agent: AgentManager,
    /// The time of day for work items' times (the agent manager's clock).
    clock: Arc<dyn Clock>,
    /// The status changes, read by the status task from start on.
    changes: Mutex<Option<StatusChanges>>,
    /// The VM states of each connecting host's startup, reported once it is Up.
    connecting: Mutex<HashMap<HostId, Vec<VmStateReport>>>,
    /// The power-report listener in the agent manager's registry.
    listener: OnceLock<ListenerId>,
    life: Mutex<Life>,
    tasks: Tasks,
    wake: Notify,
    slots: Arc<Semaphore>,
    started_at: OnceLock<Instant>,
    released: Mutex<HashSet<ClusterId>>,
    braked: Mutex<HashMap<ClusterId, HashSet<VmId>>>,
    missing: Mutex<HashMap<VmId, Instant>>,
    /// VMs whose power report is being turned into work (at most one scheduling in flight).
    reporting: Mutex<HashSet<VmId>>,
    /// One fence per failed host: the outcome of the last fence of each host, shared by all its
    /// VMs (the async lock makes the VMs of one host wait for a fence under way, not repeat it).
    fences: Mutex<HashMap<HostId, Arc<tokio::sync::Mutex<Option<HostFence>>>>>,
    /// New items the store did not take (it is away), oldest first: kept in memory and
    /// inserted by the `ha_unstored` task as soon as the store is back, in order.
    unstored: Mutex<std::collections::VecDeque<(u64, WorkItem)>>,
    /// Numbers the items of `unstored`.
    unstored_seq: std::sync::atomic::AtomicU64,
    /// Wakes the `ha_unstored` task.
    unstored_wake: Notify,
    /// The items this server's workers are processing.
    working: Mutex<HashSet<WorkId>>,
    /// A claim failed without an answer: the store may hold an item claimed by this server
    /// that no worker of it processes; released at the next contact with the store.
    claims_unsure: std::sync::atomic::AtomicBool,
}

/// The last fence of a host.
struct HostFence {
    /// The host record's update counter then: any status change since (the host reconnected,
    /// came back Up) makes the outcome stale.
    update_count: u64,
    /// The proof, or when and why the fence failed (reused for the rest of that retry round).
    outcome: Result<DeathProof, (Instant, String)>,
}

/// The HA manager. Cheap to clone.
#[derive(Clone)]
pub struct HaManager {
    inner: Arc<HaInner>,
}

impl std::fmt::Debug for HaManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaManager")
            .field("owner", &self.inner.owner)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where a component is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    New,
    Running,
    Stopped,
}

impl HaManager {
    /// An HA manager over `agent`, claiming work as `owner` (keep it stable across restarts of
    /// the same server). It follows `agent`'s status changes from now on (a host going Down has
    /// its VMs scheduled, once started) and registers a listener in its registry for the VM
    /// power reports of pings and connects. Nothing runs until [`HaManager::start`]; the HA
    /// manager owns its tasks, and [`HaManager::stop`] ends them.
    ///
    /// Build `agent` with [`HostDownAlert::LeftToHa`]: the HA manager raises the host-down
    /// alert, with the list of the host's VMs (otherwise both raise one).
    pub fn new(config: HaConfig, owner: OwnerId, agent: &AgentManager, ports: HaPorts) -> Self {
        if agent.host_down_alert() == HostDownAlert::Raise {
            tracing::warn!(
                "the agent manager raises host-down alerts too: build it with HostDownAlert::LeftToHa"
            );
        }
        let slots = Arc::new(Semaphore::new(config.ha_workers as usize));
        let investigators = ports
            .investigators
            .clone()
            .unwrap_or_else(|| agent.investigators());
        // Every port that may hang gets a bound (a store call, a fence, a stop).
        let liveness = agent.config().clone();
        let bound = liveness.wait;
        let ports = HaPorts {
            work: Arc::new(BoundedWork {
                inner: ports.work,
                bound: STORE_CALL_BOUND,
            }),
            vms: Arc::new(BoundedVms {
                inner: ports.vms,
                bound,
            }),
            fencers: ports
                .fencers
                .into_iter()
                .map(|inner| Arc::new(BoundedFencer { inner, bound }) as Arc<dyn Fencer>)
                .collect(),
            ..ports
        };
        let inner = Arc::new(HaInner {
            config,
            liveness,
            owner,
            ports,
            investigators,
            hosts: agent.hosts(),
            agent: agent.clone(),
            clock: Arc::clone(agent.clock()),
            changes: Mutex::new(Some(agent.subscribe())),
            connecting: Mutex::new(HashMap::new()),
            listener: OnceLock::new(),
            life: Mutex::new(Life::New),
            tasks: Tasks::new(),
            wake: Notify::new(),
            slots,
            started_at: OnceLock::new(),
            released: Mutex::new(HashSet::new()),
            braked: Mutex::new(HashMap::new()),
            missing: Mutex::new(HashMap::new()),
            reporting: Mutex::new(HashSet::new()),
            fences: Mutex::new(HashMap::new()),
            unstored: Mutex::new(std::collections::VecDeque::new()),
            unstored_seq: std::sync::atomic::AtomicU64::new(0),
            unstored_wake: Notify::new(),
            working: Mutex::new(HashSet::new()),
            claims_unsure: std::sync::atomic::AtomicBool::new(false),
        });
        let id = agent.registry().register(
            Arc::new(PowerReports(Arc::downgrade(&inner))),
            Interest::ALL,
            false,
        );
        let _ = inner.listener.set(id);
        Self { inner }
    }

    /// The work queue.
    pub fn work(&self) -> &Arc<dyn HaWorkStore> {
        &self.inner.ports.work
    }

    /// Start (§5.6): this server's old claims are released, pending items go back to
    /// Investigating and lose any brake (it is evaluated again), then the workers, the brake
    /// watcher, the cleanup and the status follower start. The startup grace of the brake runs
    /// from now. Starting a running manager does nothing.
    ///
    /// A store that is away does not fail the start: the workers wait until the old claims are
    /// released and pending work is reset (retried with a growing pause, 1 s to 30 s, each
    /// failure logged); new work the store does not take is kept in memory and stored once it
    /// is back (an alert per item says so).
    ///
    /// # Errors
    /// [`ManagerError::Stopped`] after [`Self::stop`].
    pub async fn start(&self) -> Result<(), ManagerError> {
        let inner = &self.inner;
        {
            let mut life = lock(&inner.life);
            match *life {
                Life::Running => return Ok(()),
                Life::Stopped => return Err(ManagerError::Stopped),
                Life::New => *life = Life::Running,
            }
        }
        let _ = inner.started_at.set(Instant::now());
        let resumed = inner.resume().await;
        if resumed.is_ok() {
            let me = Arc::clone(inner);
            inner.tasks.spawn(
                inner.tasks.token().child_token(),
                async move { me.dispatch_loop().await }
                    .instrument(tracing::info_span!("ha_workers")),
            );
        }
        let me = Arc::clone(inner);
        inner.tasks.spawn(
            inner.tasks.token().child_token(),
            async move { me.brake_loop().await }.instrument(tracing::info_span!("ha_brake")),
        );
        let me = Arc::clone(inner);
        inner.tasks.spawn(
            inner.tasks.token().child_token(),
            async move { me.cleanup_loop().await }.instrument(tracing::info_span!("ha_cleanup")),
        );
        let me = Arc::clone(inner);
        inner.tasks.spawn(
            inner.tasks.token().child_token(),
            async move { me.unstored_loop().await }.instrument(tracing::info_span!("ha_unstored")),
        );
        match resumed {
            Ok(()) => {
                // Hosts Down already (a Down no HA manager followed: it was stopped, or built
                // after): their VMs that no HA work ever took are scheduled now.
                if !inner.reconcile_down_hosts().await {
                    let me = Arc::clone(inner);
                    inner.tasks.spawn(
                        inner.tasks.token().child_token(),
                        async move { me.reconcile_until_complete().await }
                            .instrument(tracing::info_span!("ha_reconcile")),
                    );
                }
            }
            Err(e) => {
                // No worker may run before this server's old claims are released and pending
                // work is back to Investigating: both wait for the store.
                tracing::error!(error = %ErrorChain(&e), "HA manager start: cannot resume pending work; workers wait for the store, retrying in {STORE_RETRY:?}");
                let me = Arc::clone(inner);
                inner.tasks.spawn(
                    inner.tasks.token().child_token(),
                    async move {
                        me.resume_until_done().await;
                        let worker = Arc::clone(&me);
                        me.tasks.spawn(
                            me.tasks.token().child_token(),
                            async move { worker.dispatch_loop().await }
                                .instrument(tracing::info_span!("ha_workers")),
                        );
                        me.reconcile_until_complete().await;
                    }
                    .instrument(tracing::info_span!("ha_resume")),
                );
            }
        }
        if let Some(changes) = lock(&inner.changes).take() {
            let me = Arc::clone(inner);
            inner.tasks.spawn(
                inner.tasks.token().child_token(),
                async move { me.status_loop(changes).await }
                    .instrument(tracing::info_span!("ha_status")),
            );
        }
        Ok(())
    }

    /// Stop: the power-report listener leaves the registry and every task of the HA manager
    /// ends before this returns (a worker stops between steps; its claimed item stays in the
    /// store for the next start or a peer). The agent manager is not stopped. Stopping twice
    /// does nothing more.
    pub async fn stop(&self) {
        let inner = &self.inner;
        if std::mem::replace(&mut *lock(&inner.life), Life::Stopped) == Life::Stopped {
            return;
        }
        if let Some(id) = inner.listener.get() {
            inner.agent.registry().unregister(*id);
        }
        inner.tasks.shutdown().await;
        let unstored = lock(&inner.unstored).len();
        if unstored > 0 {
            tracing::error!(
                unstored,
                "HA manager stopped with {unstored} new items the store never took: the next start schedules again the VMs of Down hosts; other such work is lost"
            );
        }
    }

    /// A peer management server left: its claims are released so this server's workers take
    /// its items (CloudStack's `releaseWorkItems(peer)`). Returns how many.
    ///
    /// # Errors
    /// The store's.
    pub async fn release_peer(&self, peer: OwnerId) -> Result<usize, StoreError> {
        let n = self.inner.ports.work.release_owner(peer).await?;
        tracing::info!(?peer, released = n, "peer's HA work released");
        self.inner.wake.notify_one();
        Ok(n)
    }

    /// Schedules a restart of one VM (CloudStack's `scheduleRestart`), proven dead first or on
    /// the caller's word (see [`ProveDead`]). Returns the item, if one was created.
    pub async fn schedule_restart(
        &self,
        vm: VmId,
        prove: ProveDead,
        reason: WorkReason,
    ) -> Option<WorkId> {
        self.inner.schedule_restart(vm, prove, reason).await
    }

    /// Schedules restarts for the VMs of `host` (CloudStack's `scheduleRestartForVmsOnHost`),
    /// raising the host-down alert with their list. The HA manager does this itself for every
    /// host the agent manager moves to Down; this is for an embedder with another source of
    /// proof. `prove`: whether each VM is proven dead (investigated, and fenced if it may run)
    /// before a start.
    pub async fn schedule_restarts_for_host(
        &self,
        host: &HostRecord,
        reason: WorkReason,
        prove: ProveDead,
    ) {
        self.inner.schedule_for_host(host, reason, prove).await;
    }

    /// VM power states reported by `host` (the second HA trigger). The HA manager's registry
    /// listener calls this for an Up routing host's pings and a connect's startup; it is public
    /// for an embedder whose hosts report VM states another way. Plain call: it runs on the
    /// ping path and awaits nothing.
    pub fn vm_power_report(&self, host: HostId, states: &[VmStateReport]) {
        self.inner.power_report(host, states);
    }

    /// Schedules a stop (`Stop`, `CheckStop` or `ForceStop`) of a VM on `host`.
    pub async fn schedule_stop(
        &self,
        vm: VmId,
        host: HostId,
        work_type: WorkType,
    ) -> Option<WorkId> {
        self.inner
            .schedule_simple(vm, Some(host), work_type, WorkReason::Unknown)
            .await
    }

    /// Schedules a migration of a VM away from its host.
    pub async fn schedule_migration(&self, vm: VmId, reason: WorkReason) -> Option<WorkId> {
        let host = self.inner.ports.vms.get(vm).and_then(|v| v.host);
        self.inner
            .schedule_simple(vm, host, WorkType::Migration, reason)
            .await
    }

    /// Schedules a destroy of a VM.
    pub async fn schedule_destroy(&self, vm: VmId, host: Option<HostId>) -> Option<WorkId> {
        self.inner
            .schedule_simple(vm, host, WorkType::Destroy, WorkReason::Unknown)
            .await
    }

    /// Why the brake holds for `cluster` now, if it does.
    pub fn brake_holds(&self, cluster: ClusterId) -> Option<String> {
        self.inner.brake(Some(cluster), Instant::now())
    }

    /// Operator: releases the brake of `cluster` (until its suspect fraction falls back).
    pub async fn release_brake(&self, cluster: ClusterId) {
        tracing::warn!(%cluster, "brake released by the operator");
        lock(&self.inner.released).insert(cluster);
        self.inner.lift_brakes(Instant::now()).await;
    }

    /// Operator: declares `host` dead (CloudStack's `declareHostAsDegraded`): its VMs restart
    /// without fencing, on the operator's word, recorded as such.
    ///
    /// # Errors
    /// Unknown host; the store's (nothing is then scheduled).
    pub async fn declare_host_dead(&self, host: HostId) -> Result<(), cloudha_ports::StoreError> {
        let inner = &self.inner;
        inner
            .agent
            .set_resource_state(host, ResourceState::Degraded)
            .await?;
        let rec = inner
            .hosts
            .get(host)
            .ok_or(cloudha_ports::StoreError::UnknownHost(host))?;
        inner
            .schedule_for_host(&rec, WorkReason::HostDegraded, ProveDead::AlreadyKnown)
            .await;
        Ok(())
    }
}

/// The HA manager's listener in the agent manager's registry: the VM power states of an Up
/// routing host's pings (the second HA trigger) and of a connect's startup (reported once the
/// host is Up, as the connect's VM state sync).
struct PowerReports(std::sync::Weak<HaInner>);

#[async_trait::async_trait]
impl Listener for PowerReports {
    fn process_commands(
        &self,
        host: HostId,
        _seq: cloudha_protocol::Sequence,
        commands: &[cloudha_protocol::Command],
    ) -> bool {
        let Some(inner) = self.0.upgrade() else {
            return false;
        };
        for c in commands {
            if let cloudha_protocol::Command::PingRouting(p) = c
                && inner.hosts.status(host) == Some(Status::Up)
            {
                inner.power_report(host, &p.vm_states);
            }
        }
        false
    }

    async fn process_connect(
        &self,
        host: HostId,
        startup: &cloudha_protocol::StartupCommand,
        _rebalance: bool,
    ) -> Result<(), ConnectError> {
        if let Some(inner) = self.0.upgrade() {
            lock(&inner.connecting).insert(host, startup.vm_states.clone());
        }
        Ok(())
    }

    fn process_disconnect(&self, host: HostId, _status: Status) -> bool {
        if let Some(inner) = self.0.upgrade() {
            lock(&inner.connecting).remove(&host);
        }
        false
    }

    fn is_recurring(&self) -> bool {
        true
    }
}
