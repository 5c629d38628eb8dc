//! The HA manager: scheduling, workers and the work-processing rules.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use cloudha_attache::Tasks;
use cloudha_ports::{Clock, StoreError, Timestamp};
use cloudha_protocol::{
    ClusterId, HostId, HostType, ListenerId, ResourceState, Status, VmId, VmPowerState, VmState,
    VmStateReport, WorkId, WorkReason, WorkStep, WorkType,
};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use cloudha_liveness::{
    AgentManager, Config, HostDownAlert, Investigations, ManagerError, StatusChanges, investigate,
};
use cloudha_ports::{
    Alert, AlertKind, AlertSink, HaWorkStore, HostDirectory, HostRecord, Investigator, OwnerId,
    ProofKind, VmKind, VmRecord, VmVerdict, WorkItem,
};
use cloudha_registry::{ConnectError, Interest, Listener};

use crate::bounded::{BoundedFencer, BoundedVms, BoundedWork, STORE_CALL_BOUND};
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
    config: Config,
    owner: OwnerId,
    ports: HaPorts,
    /// The VM investigator chain.
    investigators: Vec<Arc<dyn Investigator>>,
    /// The agent manager's hosts (its cache: status, cluster, tags).
    hosts: Arc<dyn HostDirectory>,
    /// The hosts the agent manager suspects (under investigation, or silent past their ping):
    /// they count as suspect for the brake.
    investigations: Arc<Investigations>,
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
    pub fn new(config: Config, owner: OwnerId, agent: &AgentManager, ports: HaPorts) -> Self {
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
        let bound = config.wait;
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
            owner,
            ports,
            investigators,
            hosts: agent.hosts(),
            investigations: agent.investigations(),
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
        let now = inner.now();
        let work = &inner.ports.work;
        let resumed = async {
            let released = work.release_owner(inner.owner).await?;
            let braked: Vec<VmId> = work
                .list()
                .await?
                .iter()
                .filter(|i| i.braked)
                .map(|i| i.vm)
                .collect();
            work.unbrake(now, &braked).await?;
            let pending = work.mark_pending_investigating(now).await?;
            Ok::<_, StoreError>((released, pending))
        };
        match resumed.await {
            Ok((released, pending)) => tracing::info!(released, pending, "HA manager started"),
            // The workers still start: they take what the store gives once it is back.
            Err(e) => {
                tracing::error!(error = %ErrorChain(&e), "HA manager start: cannot resume pending work")
            }
        }
        let me = Arc::clone(inner);
        inner.tasks.spawn(
            inner.tasks.token().child_token(),
            async move { me.dispatch_loop().await }.instrument(tracing::info_span!("ha_workers")),
        );
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

impl HaInner {
    /// Raises an alert about `host` (cluster, pod and zone from its record) and/or a VM.
    /// `vm.ha.alerts.enabled = false` mutes only the "VM-HA disabled" alerts (CloudStack).
    fn alert(
        &self,
        kind: AlertKind,
        host: Option<HostId>,
        vm: Option<VmId>,
        cluster: Option<ClusterId>,
        message: String,
    ) {
        if kind == AlertKind::HaDisabled && !self.config.vm_ha_alerts_enabled {
            return;
        }
        let rec = host.and_then(|h| self.hosts.get(h));
        self.ports.alerts.raise(Alert {
            kind,
            host,
            vm,
            cluster: cluster.or(rec.as_ref().and_then(|r| r.cluster)),
            pod: rec.as_ref().and_then(|r| r.pod),
            zone: rec.as_ref().and_then(|r| r.zone),
            message,
        });
    }

    fn retry_interval(&self, t: WorkType) -> Duration {
        match t {
            WorkType::Ha => self.config.restart_retry_interval,
            WorkType::Migration => self.config.migrate_retry_interval,
            _ => self.config.stop_retry_interval,
        }
    }

    async fn schedule_for_host(
        self: &Arc<Self>,
        host: &HostRecord,
        reason: WorkReason,
        prove: ProveDead,
    ) {
        if host.host_type != HostType::Routing {
            return;
        }
        if host.hypervisor.has_native_ha() {
            tracing::info!(host.id = %host.id, "VMs left to the hypervisor's own HA");
            return;
        }
        let mut vms = self.ports.vms.vms_on_host(host.id);
        vms.retain(|v| v.host == Some(host.id));
        vms.sort_by_key(|v| (!v.kind.is_system(), v.id));
        let names: Vec<&str> = vms
            .iter()
            .filter(|v| v.ha_enabled)
            .map(|v| v.name.as_str())
            .collect();
        if !self.config.vm_ha_enabled {
            self.alert(
                AlertKind::HaDisabled,
                Some(host.id),
                None,
                host.cluster,
                format!(
                    "Host {} is down; VM-HA is disabled: no restart of {}",
                    host.name,
                    names.join(", ")
                ),
            );
            return;
        }
        self.alert(
            AlertKind::HostDown,
            Some(host.id),
            None,
            host.cluster,
            format!(
                "Host {} is down; HA VMs to restart: [{}]",
                host.name,
                names.join(", ")
            ),
        );
        for vm in vms {
            if vm.local_root_disk {
                tracing::info!(vm = %vm.id, "root disk on local storage: its fate is its host's");
                continue;
            }
            self.schedule_restart(vm.id, prove, reason).await;
        }
    }

    async fn schedule_restart(
        self: &Arc<Self>,
        vm: VmId,
        prove: ProveDead,
        reason: WorkReason,
    ) -> Option<WorkId> {
        let mut rec = self.ports.vms.get(vm)?;
        if rec.hypervisor.has_native_ha() {
            return None;
        }
        if !self.config.vm_ha_enabled {
            // CloudStack: VM-HA disabled ⇒ alert only; nothing force-stopped or scheduled.
            self.alert(
                AlertKind::HaDisabled,
                rec.host,
                Some(vm),
                rec.cluster,
                format!(
                    "VM {} needs HA, but VM-HA is disabled: nothing is done",
                    rec.name
                ),
            );
            return None;
        }
        let wants_ha = rec.ha_enabled || self.config.force_ha;
        if prove == ProveDead::AlreadyKnown {
            if !wants_ha {
                self.alert(
                    AlertKind::VmStopped,
                    rec.host,
                    Some(vm),
                    rec.cluster,
                    format!("VM {} stopped unexpectedly", rec.name),
                );
            }
            match self.ports.vms.force_stop(vm).await {
                Ok(r) => rec = r,
                Err(e) => tracing::warn!(vm = %vm, error = %e, "force stop failed"),
            }
            if !wants_ha {
                return None;
            }
        }
        let now = self.now();
        // A VM that failed recently inherits its tries (CloudStack's "cannot schedule new").
        let others = match self.ports.work.for_vm(vm).await {
            Ok(others) => others,
            Err(e) => {
                tracing::error!(vm = %vm, error = %ErrorChain(&e), "cannot read the VM's HA work");
                Vec::new()
            }
        };
        let tries = others
            .into_iter()
            .filter(|i| {
                i.work_type == WorkType::Ha
                    && i.time_to_try + self.config.time_between_failures >= now
            })
            .map(|i| i.tries)
            .max()
            .unwrap_or(0);
        let step = match prove {
            ProveDead::First => WorkStep::Investigating,
            ProveDead::AlreadyKnown => WorkStep::Scheduled,
        };
        let mut item = WorkItem::new(
            WorkType::Ha,
            step,
            reason,
            &rec,
            rec.host.or(rec.last_host),
            now,
        );
        item.tries = tries;
        if prove == ProveDead::AlreadyKnown {
            item.fence_proof = Some(
                match (reason, item.host) {
                    (WorkReason::HostDegraded, Some(h)) => DeathProof::operator_word(h),
                    (_, h) => DeathProof::vm_reported_off(h),
                }
                .recorded_at(now)
                .record(),
            );
        }
        let id = self.insert(item).await?;
        tracing::info!(vm = %vm, work = %id, ?reason, "scheduled HA restart");
        self.wake.notify_one();
        Some(id)
    }

    async fn schedule_simple(
        &self,
        vm: VmId,
        host: Option<HostId>,
        work_type: WorkType,
        reason: WorkReason,
    ) -> Option<WorkId> {
        if !self.config.vm_ha_enabled {
            tracing::warn!(vm = %vm, ?work_type, "VM-HA disabled: not scheduled");
            return None;
        }
        let rec = self.ports.vms.get(vm)?;
        if work_type == WorkType::Stop {
            let others = match self.ports.work.for_vm(vm).await {
                Ok(others) => others,
                Err(e) => {
                    tracing::error!(vm = %vm, error = %ErrorChain(&e), "cannot read the VM's work: not scheduled");
                    return None;
                }
            };
            if others
                .iter()
                .any(|i| i.work_type == WorkType::Stop && !i.step.is_final())
            {
                return None;
            }
        }
        let item = WorkItem::new(
            work_type,
            WorkStep::Scheduled,
            reason,
            &rec,
            host,
            self.now(),
        );
        let id = self.insert(item).await?;
        self.wake.notify_one();
        Some(id)
    }

    /// Follows the agent manager's status changes: a host that goes Down has its VMs scheduled
    /// (CloudStack's `scheduleRestartForVmsOnHost`, investigating each VM first); a host that
    /// comes Up after a connect has the VM states of its startup reported.
    async fn status_loop(self: Arc<Self>, mut changes: StatusChanges) {
        while let Some(change) = changes.recv().await {
            match change.to {
                Status::Down if change.from != Some(Status::Down) => {
                    let Some(rec) = self.hosts.get(change.host) else {
                        continue;
                    };
                    self.schedule_for_host(&rec, WorkReason::HostDown, ProveDead::First)
                        .await;
                }
                Status::Up if change.event == cloudha_protocol::Event::Ready => {
                    let states = lock(&self.connecting).remove(&change.host);
                    if let Some(states) = states {
                        self.power_report(change.host, &states);
                    }
                }
                _ => {}
            }
        }
    }

    /// The second trigger: an HA VM the records say runs on `host` is reported off (or missing
    /// for longer than T) by that Up host.
    fn power_report(self: &Arc<Self>, host: HostId, states: &[VmStateReport]) {
        if !self.config.ha_vm_restart_hostup {
            return;
        }
        let now = Instant::now();
        for vm in self.ports.vms.running_on(host) {
            let power = states.iter().find(|s| s.vm == vm).map(|s| s.power);
            let off = match power {
                Some(VmPowerState::PowerOn) => {
                    if !lock(&self.missing).is_empty() {
                        lock(&self.missing).remove(&vm);
                    }
                    false
                }
                Some(VmPowerState::PowerOff) => true,
                None | Some(VmPowerState::PowerReportMissing) => {
                    let since = *lock(&self.missing).entry(vm).or_insert(now);
                    now.saturating_duration_since(since) > self.config.ping_deadline()
                }
                Some(_) => false,
            };
            if !off {
                continue;
            }
            lock(&self.missing).remove(&vm);
            // One scheduling in flight per VM: the ping path does not await the store.
            if !lock(&self.reporting).insert(vm) {
                continue;
            }
            let me = Arc::clone(self);
            self.tasks
                .spawn(self.tasks.token().child_token(), async move {
                    match me.ports.work.for_vm(vm).await {
                        Ok(items) if items.iter().any(|i| !i.step.is_final()) => {}
                        Ok(_) => {
                            me.schedule_restart(vm, ProveDead::AlreadyKnown, WorkReason::VmStoppedOnUpHost)
                                .await;
                        }
                        Err(e) => {
                            tracing::error!(vm = %vm, error = %ErrorChain(&e), "power report: cannot read the VM's work; the next report retries");
                        }
                    }
                    lock(&me.reporting).remove(&vm);
                });
        }
    }

    /// Why the brake holds for `cluster` at `now`, if it does.
    fn brake(&self, cluster: Option<ClusterId>, now: Instant) -> Option<String> {
        let released = cluster.is_some_and(|c| lock(&self.released).contains(&c));
        if let Some(start) = self.started_at.get()
            && now < *start + self.config.ha_startup_grace
            && !released
        {
            return Some(format!(
                "startup grace: {:?} left",
                (*start + self.config.ha_startup_grace) - now
            ));
        }
        let c = cluster?;
        let hosts: Vec<HostRecord> = self
            .hosts
            .in_cluster(c)
            .into_iter()
            .filter(|h| !h.resource_state.is_out_of_service())
            .collect();
        let size = hosts.len();
        let suspect = hosts
            .iter()
            .filter(|h| h.status != Some(Status::Up) || self.investigations.suspect(h.id))
            .count();
        // A correlated failure takes at least two hosts: one failed host of a one-host cluster
        // (100 % suspect) is an ordinary failure, not a partition of the manager.
        if suspect >= 2 && suspect as f64 > self.config.ha_brake_fraction * size as f64 {
            if released {
                return None;
            }
            return Some(format!(
                "{suspect} of {size} hosts of cluster {c} are suspect (more than ha.brake.fraction = {})",
                self.config.ha_brake_fraction
            ));
        }
        // The fraction fell back: an operator's release has served its purpose.
        if released {
            lock(&self.released).remove(&c);
        }
        None
    }

    async fn lift_brakes(&self, now: Instant) {
        let clusters: Vec<ClusterId> = lock(&self.braked).keys().copied().collect();
        let mut woke = false;
        for c in clusters {
            if self.brake(Some(c), now).is_some() {
                continue;
            }
            let vms: Vec<VmId> = lock(&self.braked)
                .remove(&c)
                .into_iter()
                .flatten()
                .collect();
            match self.ports.work.unbrake(self.now(), &vms).await {
                Ok(n) => {
                    tracing::info!(cluster = %c, items = n, "brake lifted");
                    woke |= n > 0;
                }
                Err(e) => {
                    // Held until the next round.
                    tracing::error!(cluster = %c, error = %ErrorChain(&e), "cannot lift the brake");
                    lock(&self.braked).entry(c).or_default().extend(vms);
                }
            }
        }
        if woke {
            self.wake.notify_one();
        }
    }

    async fn brake_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(
            self.config
                .ping_monitor_resolution
                .max(Duration::from_secs(1)),
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            self.lift_brakes(Instant::now()).await;
        }
    }

    async fn cleanup_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.time_between_cleanup);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let cutoff = self.now() - self.config.time_between_failures;
            match self.ports.work.cleanup(cutoff).await {
                Ok(n) => tracing::debug!(removed = n, "HA work cleanup"),
                Err(e) => tracing::warn!(error = %ErrorChain(&e), "HA work cleanup failed"),
            }
        }
    }

    async fn dispatch_loop(self: Arc<Self>) {
        loop {
            let Ok(permit) = Arc::clone(&self.slots).acquire_owned().await else {
                return;
            };
            let now = self.now();
            match self.ports.work.take(self.owner, now).await {
                Ok(Some(item)) => {
                    let me = Arc::clone(&self);
                    let span = tracing::info_span!("ha_work", work = %item.id, vm = %item.vm);
                    self.tasks.spawn(
                        self.tasks.token().child_token(),
                        async move {
                            me.process(item).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Ok(None) => {
                    drop(permit);
                    let idle = self.config.time_to_sleep;
                    let wait = match self.ports.work.next_due().await {
                        Ok(next) => {
                            next.map_or(idle, |t| t.saturating_duration_since(now).min(idle))
                        }
                        Err(e) => {
                            tracing::warn!(error = %ErrorChain(&e), "HA work store: cannot read the next due item");
                            idle.min(STORE_RETRY)
                        }
                    };
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                Err(e) => {
                    drop(permit);
                    tracing::error!(error = %ErrorChain(&e), "HA work store: cannot take work; retrying");
                    tokio::time::sleep(STORE_RETRY).await;
                }
            }
        }
    }

    async fn process(self: &Arc<Self>, mut item: WorkItem) {
        let now = self.now();
        let outcome = if self.config.vm_ha_enabled {
            match item.work_type {
                WorkType::Ha => self.restart(&mut item).await,
                WorkType::Migration => self.migrate(&mut item).await,
                WorkType::Destroy => self.destroy(&mut item).await,
                _ => self.stop(&mut item).await,
            }
        } else {
            Outcome::Retry {
                at: now + self.retry_interval(item.work_type),
                count: false,
                why: "VM-HA disabled".into(),
            }
        };
        let now = self.now();
        match outcome {
            Outcome::Lost(why) => {
                tracing::warn!(work = %item.id, "claim lost: {why}; the item is left to its new owner");
                self.wake.notify_one();
                return;
            }
            Outcome::Done(why) => {
                item.step = WorkStep::Done;
                item.note(now, format!("done: {why}"));
            }
            Outcome::Cancelled(why) => {
                item.step = WorkStep::Cancelled;
                item.note(now, format!("cancelled: {why}"));
            }
            Outcome::Retry { at, count, why } => {
                if count {
                    item.tries += 1;
                }
                if item.tries >= self.config.max_retries {
                    item.step = WorkStep::Done;
                    item.note(now, format!("giving up after {} tries: {why}", item.tries));
                    let vm = self.ports.vms.get(item.vm);
                    self.alert(
                        AlertKind::HaGaveUp,
                        item.host,
                        Some(item.vm),
                        vm.as_ref().and_then(|v| v.cluster),
                        format!(
                            "HA gave up on VM {} after {} tries: {why}",
                            vm.map_or(item.vm.to_string(), |v| v.name),
                            item.tries
                        ),
                    );
                } else {
                    item.time_to_try = at;
                    item.note(
                        now,
                        format!(
                            "try {} failed: {why}; next at +{:?}",
                            item.tries,
                            at.saturating_duration_since(now)
                        ),
                    );
                }
            }
            Outcome::Braked(cluster, why) => {
                item.braked = true;
                item.note(now, format!("braked: {why}"));
                let first = {
                    let mut braked = lock(&self.braked);
                    let first = !braked.contains_key(&cluster);
                    braked.entry(cluster).or_default().insert(item.vm);
                    first
                };
                if first {
                    self.alert(AlertKind::BrakeHolds, None, None, Some(cluster), format!("HA brake holds for cluster {cluster}: {why}; no fencing or restart there until it lifts"));
                }
            }
        }
        item.owner = None;
        item.taken = None;
        self.write_back(&item).await;
        self.wake.notify_one();
    }

    /// Writes a processed item back, releasing the claim. A backend failure is retried (with a
    /// growing pause, until it succeeds or the manager stops): the item is never dropped. A
    /// refused write (the claim moved to another owner) is dropped: the new owner decides.
    async fn write_back(&self, item: &WorkItem) {
        let mut pause = STORE_RETRY;
        loop {
            match self.ports.work.update(self.owner, item).await {
                Ok(_) => return,
                Err(e @ (StoreError::Stale { .. } | StoreError::UnknownWork(_))) => {
                    tracing::warn!(work = %item.id, error = %ErrorChain(&e), "write-back refused: the claim moved");
                    return;
                }
                Err(e) => {
                    tracing::error!(work = %item.id, error = %ErrorChain(&e), "write-back failed; retrying in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(STORE_RETRY_MAX);
                }
            }
        }
    }

    /// Saves an item mid-processing (still claimed) and so checks the claim before an action.
    /// A refused write means the claim moved: processing stops at once, writing nothing. A
    /// backend failure means the claim cannot be checked: no action now, the item is tried
    /// again later without spending a try (the write-back retries until the store is back).
    async fn save(&self, item: &mut WorkItem) -> Result<(), Outcome> {
        match self.ports.work.update(self.owner, item).await {
            Ok(version) => {
                item.version = version;
                Ok(())
            }
            Err(e @ (StoreError::Stale { .. } | StoreError::UnknownWork(_))) => {
                Err(Outcome::Lost(e.to_string()))
            }
            Err(e) => Err(Outcome::Retry {
                at: self.now() + self.config.investigate_retry_interval,
                count: false,
                why: format!("cannot check the claim: {}", ErrorChain(&e)),
            }),
        }
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Inserts a new item; a backend failure is retried a few times (bounded: scheduling runs
    /// in investigation and ping flows), then reported.
    async fn insert(&self, item: WorkItem) -> Option<WorkId> {
        let mut pause = STORE_RETRY;
        for attempt in 1..=INSERT_TRIES {
            match self.ports.work.insert(item.clone()).await {
                Ok(id) => return Some(id),
                Err(e) if attempt < INSERT_TRIES => {
                    tracing::warn!(vm = %item.vm, error = %ErrorChain(&e), "cannot store HA work; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(STORE_RETRY_MAX);
                }
                Err(e) => {
                    tracing::error!(vm = %item.vm, error = %ErrorChain(&e), "cannot store HA work");
                    self.alert(
                        AlertKind::HaRestartFailed,
                        item.host,
                        Some(item.vm),
                        None,
                        format!(
                            "HA work for VM {} could not be stored: {}",
                            item.vm,
                            ErrorChain(&e)
                        ),
                    );
                }
            }
        }
        None
    }

    /// The item's VM as it is now, or the outcome when the item is not needed any more: the VM
    /// is gone, or (`checkAndCancelWorkIfNeeded`) its host is Up again.
    fn current_vm(&self, item: &WorkItem) -> Result<VmRecord, Outcome> {
        let Some(vm) = self.ports.vms.get(item.vm) else {
            return Err(Outcome::Done("VM gone".into()));
        };
        if self.cancelled(item) {
            return Err(Outcome::Cancelled("its host is Up again".into()));
        }
        Ok(vm)
    }

    /// `checkAndCancelWorkIfNeeded`: an item still investigating a host that is Up again is
    /// not needed.
    fn cancelled(&self, item: &WorkItem) -> bool {
        item.step == WorkStep::Investigating
            && item.reason.is_cancellable()
            && item.reason != WorkReason::HostDegraded
            && item
                .host
                .is_some_and(|h| self.hosts.status(h) == Some(Status::Up))
    }

    fn retry(&self, interval: Duration, why: impl Into<String>) -> Outcome {
        Outcome::Retry {
            at: self.now() + interval,
            count: true,
            why: why.into(),
        }
    }

    fn candidates(&self, vm: &VmRecord, failed: Option<HostId>, planner: Planner) -> Vec<HostId> {
        let pool = match (planner, vm.cluster) {
            (Planner::Default, Some(c)) => self.hosts.in_cluster(c),
            _ => self
                .hosts
                .list()
                .into_iter()
                .filter(|h| h.zone == vm.zone)
                .collect(),
        };
        pool.into_iter()
            .filter(|h| {
                h.status == Some(Status::Up)
                    && h.resource_state == ResourceState::Enabled
                    && h.host_type == HostType::Routing
                    && h.hypervisor == vm.hypervisor
                    && Some(h.id) != failed
                    && self
                        .config
                        .ha_tag
                        .as_ref()
                        .is_none_or(|t| h.tags.contains(t))
            })
            .map(|h| h.id)
            .collect()
    }

    async fn restart(self: &Arc<Self>, item: &mut WorkItem) -> Outcome {
        let others = match self.ports.work.for_vm(item.vm).await {
            Ok(others) => others,
            Err(e) => {
                return Outcome::Retry {
                    at: self.now() + self.config.investigate_retry_interval,
                    count: false,
                    why: format!("cannot read the VM's HA work: {}", ErrorChain(&e)),
                };
            }
        };
        if others
            .iter()
            .any(|o| o.work_type == WorkType::Ha && o.id > item.id && !o.step.is_final())
        {
            return Outcome::Done("a newer HA item exists for the VM".into());
        }
        if others.iter().any(|o| {
            o.work_type == WorkType::Ha
                && o.id != item.id
                && o.owner.is_some()
                && !o.step.is_final()
        }) {
            return self.retry(
                self.config.investigate_retry_interval,
                "another HA item for the VM is running",
            );
        }
        let vm = match self.current_vm(item) {
            Ok(vm) => vm,
            Err(outcome) => return outcome,
        };
        if vm.state != item.previous_state || vm.update_count != item.update_count {
            return Outcome::Done(format!(
                "VM changed since scheduling ({:?} now, {:?} then)",
                vm.state, item.previous_state
            ));
        }
        let host = item.host.and_then(|h| self.hosts.get(h));
        let cluster = vm.cluster.or(host.as_ref().and_then(|h| h.cluster));
        if item.reason != WorkReason::HostDegraded
            && let Some(why) = self.brake(cluster, Instant::now())
        {
            return Outcome::Braked(cluster.unwrap_or(ClusterId(0)), why);
        }
        let proof = if item.step == WorkStep::Investigating {
            // A VM HA stopped on a recorded proof (a resumed item) is not investigated again.
            let proof = match (DeathProof::standing(item, &vm), &host) {
                (Some(proof), _) => proof,
                (None, Some(host)) if vm.host != Some(host.id) => {
                    return Outcome::Done("VM no longer on the host".into());
                }
                (None, Some(host)) => match self.prove_dead(item, &vm, host).await {
                    Ok(proof) => proof,
                    Err(outcome) => return outcome,
                },
                (None, None) => {
                    return self.retry(
                        self.config.restart_retry_interval,
                        "no record of the VM's host: it cannot be proven dead",
                    );
                }
            };
            // The proof is recorded, and the claim checked, before acting: a worker whose claim
            // moved while it fenced must not touch the VM.
            if let Err(outcome) = self.save(item).await {
                return outcome;
            }
            match self.ports.vms.force_stop(vm.id).await {
                Ok(r) => {
                    item.previous_state = r.state;
                    item.update_count = r.update_count;
                }
                Err(e) => {
                    return self.retry(
                        self.config.restart_retry_interval,
                        format!("force stop failed: {e}"),
                    );
                }
            }
            item.step = WorkStep::Scheduled;
            item.note(self.now(), "force-stopped; step Scheduled");
            if let Err(outcome) = self.save(item).await {
                return outcome;
            }
            proof
        } else {
            // Scheduled: HA stopped the VM on a proof, in an earlier try or when scheduling.
            let Some(proof) = DeathProof::standing(item, &vm) else {
                return Outcome::Done(
                    "no death proof stands: the VM is not as HA stopped it".into(),
                );
            };
            proof
        };
        let Some(vm) = self.ports.vms.get(item.vm) else {
            return Outcome::Done("VM gone".into());
        };
        if !vm.ha_enabled && !self.config.force_ha {
            return Outcome::Done("VM is not HA-enabled: it stays stopped".into());
        }
        let host_up = host
            .as_ref()
            .is_some_and(|h| self.hosts.status(h.id) == Some(Status::Up));
        if !host_up && vm.local_root_disk {
            return Outcome::Done("root disk on local storage: cannot restart elsewhere".into());
        }
        let failed = item.host.filter(|_| !host_up);
        let mut params = StartParams {
            candidates: self.candidates(&vm, failed, Planner::Default),
            planner: Planner::Default,
            ha_tag: self.config.ha_tag.clone(),
            ha_operation: true,
        };
        // The claim is checked right before the start (a fencing token): never two starts.
        if let Err(outcome) = self.save(item).await {
            return outcome;
        }
        let mut result = self.ports.vms.start(vm.id, params.clone(), &proof).await;
        if matches!(result, Err(StartError::InsufficientCapacity(_))) {
            item.note(
                self.now(),
                "insufficient capacity with the VM's planner; trying the HA planner",
            );
            params.candidates = self.candidates(&vm, failed, Planner::Ha);
            params.planner = Planner::Ha;
            result = self.ports.vms.start(vm.id, params, &proof).await;
        }
        match result {
            Ok(on) => {
                let from = item.host.map_or("?".into(), |h| h.to_string());
                self.alert(
                    AlertKind::HaRestart,
                    Some(on),
                    Some(vm.id),
                    vm.cluster,
                    format!(
                        "HA starting VM {} on host {on} (was on host {from})",
                        vm.name
                    ),
                );
                Outcome::Done(format!("started on host {on}"))
            }
            Err(e) => {
                self.alert(
                    AlertKind::HaRestartFailed,
                    item.host,
                    Some(vm.id),
                    vm.cluster,
                    format!("Unable to restart VM {}: {e}", vm.name),
                );
                if let Some(now) = self.ports.vms.get(vm.id) {
                    item.previous_state = now.state;
                    item.update_count = now.update_count;
                }
                self.retry(self.config.restart_retry_interval, e.to_string())
            }
        }
    }

    /// Proves the VM's old copy cannot run: investigators, then the host's fence (one per host,
    /// shared by its VMs). Records the proof, and returns it.
    async fn prove_dead(
        &self,
        item: &mut WorkItem,
        vm: &VmRecord,
        host: &HostRecord,
    ) -> Result<DeathProof, Outcome> {
        let now = self.now();
        if item.reason == WorkReason::HostDegraded {
            let proof = DeathProof::operator_word(host.id).recorded_at(now);
            item.note(now, format!("no fencing: {proof}"));
            item.fence_proof = Some(proof.record());
            return Ok(proof);
        }
        let (verdict, by) = investigate::investigate_vm(&self.investigators, vm.id, host).await;
        item.note(
            now,
            format!("VM verdict {verdict:?} by {}", by.unwrap_or("nobody")),
        );
        match verdict {
            VmVerdict::Alive => {
                return Err(if self.hosts.status(host.id) == Some(Status::Up) {
                    Outcome::Done("VM alive and its host is Up: no restart needed".into())
                } else {
                    self.retry(
                        self.config.investigate_retry_interval,
                        "VM alive but its host is not Up",
                    )
                });
            }
            VmVerdict::Dead => {
                let proof = DeathProof::dead_verdict(
                    host.id,
                    format!(
                        "{} found the VM not running on host {}",
                        by.unwrap_or("?"),
                        host.id
                    ),
                )
                .recorded_at(now);
                item.note(now, format!("proof: {proof}"));
                item.fence_proof = Some(proof.record());
                return Ok(proof);
            }
            VmVerdict::Unknown => {}
        }
        match self.fence_host(vm, host).await {
            (Ok(proof), reused) => {
                let how = if reused {
                    "host already fenced"
                } else {
                    "fenced"
                };
                item.note(self.now(), format!("{how}: {proof}"));
                let proof = proof.recorded_at(self.now());
                item.fence_proof = Some(proof.record());
                Ok(proof)
            }
            (Err(why), _) => {
                item.note(self.now(), format!("not fenced: {why}"));
                Err(self.retry(
                    self.config.restart_retry_interval,
                    format!("no fencer could fence the host: {why}"),
                ))
            }
        }
    }

    /// Fences `host` once for all its VMs: a proof is reused until the host's status changes
    /// (it reconnects or comes back Up); a failure is reused for the rest of its retry round,
    /// so its "Unable to fence off host" alert is raised once per host and round. Returns the
    /// outcome and whether it was reused.
    async fn fence_host(
        &self,
        vm: &VmRecord,
        host: &HostRecord,
    ) -> (Result<DeathProof, String>, bool) {
        let slot = Arc::clone(lock(&self.fences).entry(host.id).or_default());
        let mut last = slot.lock().await;
        let now = Instant::now();
        let current = self
            .hosts
            .get(host.id)
            .map_or(host.update_count, |h| h.update_count);
        if let Some(f) = last.as_ref()
            && f.update_count == current
        {
            match &f.outcome {
                Ok(proof) => return (Ok(proof.duplicate()), true),
                Err((at, why)) if now < *at + self.config.restart_retry_interval => {
                    return (Err(why.clone()), true);
                }
                Err(_) => {}
            }
        }
        let mut reasons = Vec::new();
        let mut outcome = None;
        let mut alive = false;
        for fencer in &self.ports.fencers {
            match fencer.fence(vm, host).await {
                // The fencer's evidence becomes a proof here, for the host it was asked to fence.
                FenceOutcome::Fenced(evidence) => {
                    outcome = Some((fencer.name(), DeathProof::fenced(host.id, evidence)));
                    break;
                }
                FenceOutcome::Failed { reason } | FenceOutcome::NotApplicable { reason } => {
                    reasons.push(format!("{}: {reason}", fencer.name()));
                }
                FenceOutcome::Alive { reason } => {
                    // Signs of life: no fencer may act on this host now.
                    reasons.push(format!("{}: {reason}; the chain stops", fencer.name()));
                    alive = true;
                    break;
                }
            }
        }
        if let Some((by, proof)) = &outcome {
            tracing::info!(host.id = %host.id, fencer = by, %proof, "host fenced");
        }
        let result = outcome
            .map(|(_, proof)| proof)
            .ok_or_else(|| reasons.join("; "));
        if let Err(why) = &result
            && !alive
        {
            self.alert(
                AlertKind::FenceFailed,
                Some(host.id),
                None,
                host.cluster,
                format!(
                    "Unable to fence off host {}: {why}; its HA VMs wait (next try in {:?})",
                    host.name, self.config.restart_retry_interval
                ),
            );
        }
        // A pool fence resets the power state of one VM in the pool: each VM needs its own.
        if !matches!(&result, Ok(p) if p.kind() == ProofKind::PoolFenced) {
            *last = Some(HostFence {
                update_count: current,
                outcome: result
                    .as_ref()
                    .map(DeathProof::duplicate)
                    .map_err(|why| (now, why.clone())),
            });
        }
        (result, false)
    }

    async fn migrate(&self, item: &mut WorkItem) -> Outcome {
        let vm = match self.current_vm(item) {
            Ok(vm) => vm,
            Err(outcome) => return outcome,
        };
        let Some(from) = item.host.or(vm.host) else {
            return Outcome::Done("VM has no host".into());
        };
        item.step = WorkStep::Migrating;
        if let Err(outcome) = self.save(item).await {
            return outcome;
        }
        let candidates = self.candidates(&vm, Some(from), Planner::Default);
        match self.ports.vms.migrate_away(vm.id, from, candidates).await {
            Ok(to) => Outcome::Done(format!("migrated to host {to}")),
            Err(StartError::InsufficientCapacity(e)) => self.retry(
                self.config.migrate_retry_interval,
                format!("insufficient capacity: {e}"),
            ),
            Err(e) => self.retry(self.config.migrate_retry_interval, e.to_string()),
        }
    }

    async fn stop(&self, item: &mut WorkItem) -> Outcome {
        let vm = match self.current_vm(item) {
            Ok(vm) => vm,
            Err(outcome) => return outcome,
        };
        // The claim is checked before acting on the VM.
        if let Err(outcome) = self.save(item).await {
            return outcome;
        }
        let changed = vm.state != item.previous_state
            || vm.update_count != item.update_count
            || vm.host.is_none()
            || vm.host != item.host;
        let result = match item.work_type {
            WorkType::Stop => self.ports.vms.stop(vm.id).await,
            _ if changed => return Outcome::Done("VM changed since scheduling".into()),
            WorkType::CheckStop => self.ports.vms.stop(vm.id).await,
            _ => self.ports.vms.force_stop(vm.id).await,
        };
        match result {
            Ok(_) => Outcome::Done("stopped".into()),
            Err(e) => self.retry(self.config.stop_retry_interval, e.to_string()),
        }
    }

    async fn destroy(&self, item: &mut WorkItem) -> Outcome {
        let vm = match self.current_vm(item) {
            Ok(vm) => vm,
            Err(outcome) => return outcome,
        };
        if let Err(outcome) = self.save(item).await {
            return outcome;
        }
        let expunge = if matches!(vm.kind, VmKind::SecondaryStorageVm | VmKind::ConsoleProxy) {
            Expunge::Now
        } else {
            Expunge::Later
        };
        if expunge == Expunge::Later && item.previous_state == VmState::Destroyed {
            return Outcome::Done("already destroyed".into());
        }
        if item.previous_state == VmState::Running
            && let Err(e) = self.ports.vms.force_stop(vm.id).await
        {
            return self.retry(self.config.stop_retry_interval, e.to_string());
        }
        if item.previous_state == VmState::Expunging {
            return self.retry(self.config.stop_retry_interval, "VM still expunging");
        }
        match self.ports.vms.destroy(vm.id, expunge).await {
            Ok(()) => Outcome::Done("destroyed".into()),
            Err(e) => self.retry(self.config.stop_retry_interval, e.to_string()),
        }
    }
}
