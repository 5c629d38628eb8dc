//! The simulated parts the manager talks to: host resources (direct and agent side), the
//! network link of connected agents, BMCs, the VM orchestrator over ground truth, and recording
//! decorators for alerts and fencers.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cloudha_attache::{
    AgentStreamObj, CommandSink, ConnectedConfig, Connector, ServerResource, Tasks, accept_stream,
};
use cloudha_ha::{
    DeathProof, Expunge, FenceOutcome, Fencer, InMemoryVms, OrchestratorError, StartError,
    StartParams, VmOrchestrator,
};
use cloudha_ports::{
    Alert, AlertSink, HostRecord, OobError, OutOfBandManagement, PowerState, VmRecord,
};
use cloudha_protocol::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::world::World;

/// A host as its agent (KVM) or the manager's direct poll (others) sees it.
pub(crate) struct SimResource {
    pub(crate) world: Arc<World>,
    pub(crate) vms: Arc<InMemoryVms>,
    pub(crate) host: HostId,
    pub(crate) startup: StartupCommand,
    /// Direct agents are polled across the management network; connected agents are already on
    /// their side of the link.
    pub(crate) direct: bool,
}

impl SimResource {
    fn available(&self) -> bool {
        match self.world.host(self.host) {
            Some(h) => h.powered && h.agent_alive && !(self.direct && h.mgmt_partitioned),
            None => false,
        }
    }

    fn vm_states(&self) -> Vec<VmStateReport> {
        let running = self.world.running_on(self.host);
        let mut states: Vec<VmStateReport> = running
            .iter()
            .map(|vm| VmStateReport {
                vm: *vm,
                power: VmPowerState::PowerOn,
            })
            .collect();
        // VMs the records place here whose process is gone: the hypervisor reports them shut off.
        // (Ids only: this runs for every ping of every host.)
        for vm in self.vms.running_on(self.host) {
            if !running.contains(&vm) {
                states.push(VmStateReport {
                    vm,
                    power: VmPowerState::PowerOff,
                });
            }
        }
        states
    }
}

#[async_trait::async_trait]
impl ServerResource for SimResource {
    async fn initialize(&self) -> Vec<Command> {
        if !self.available() {
            return Vec::new();
        }
        let mut startup = self.startup.clone();
        startup.vm_states = self.vm_states();
        vec![Command::Startup(startup)]
    }

    async fn get_current_status(&self, host: HostId) -> Option<Command> {
        if let Some(delay) = self.world.host(self.host).and_then(|h| h.ping_delay) {
            tokio::time::sleep(delay).await;
        }
        if !self.available() || self.world.host(self.host).is_some_and(|h| h.ping_loss) {
            return None;
        }
        Some(Command::PingRouting(PingRoutingCommand {
            host_id: host,
            vm_states: self.vm_states(),
            gateway_accessible: true,
        }))
    }

    async fn execute(&self, command: Command) -> Answer {
        if !self.available() {
            return Answer::failure("host unreachable");
        }
        let now = Instant::now();
        let me = self.world.host(self.host).expect("known host");
        match command {
            Command::CheckOnHost(c) => {
                self.world.probe(c.target);
                let Some(target) = self.world.host(c.target) else {
                    return Answer::failure("unknown host");
                };
                // A KVM checker reads the target's file on the shared heartbeat storage; a
                // XenServer pool member reads the pool heartbeat (the statefile).
                if target.kvm() && !me.storage_ok {
                    return Answer::CheckOnHost(CheckOnHostAnswer {
                        success: false,
                        alive: false,
                        heartbeat_age_ms: None,
                        details: "no heartbeat storage".into(),
                    });
                }
                let (age, alive) = self.lie(&target, self.world.heartbeat(c.target, now));
                Answer::CheckOnHost(CheckOnHostAnswer {
                    success: true,
                    alive,
                    heartbeat_age_ms: age.map(|a| a.as_millis() as u64),
                    details: if target.kvm() {
                        "storage heartbeat"
                    } else {
                        "pool heartbeat"
                    }
                    .into(),
                })
            }
            Command::Fence(c) => {
                self.world.probe(c.target);
                let Some(target) = self.world.host(c.target) else {
                    return Answer::failure("unknown host");
                };
                let target_kvm = target.kvm();
                let readable = me.storage_ok || !target_kvm;
                let (age, alive) = self.lie(&target, self.world.heartbeat(c.target, now));
                let alive = readable && alive;
                let success = readable && !alive;
                let details = match (success, target_kvm) {
                    (true, true) => "heartbeat dead".into(),
                    (true, false) => "pool heartbeat dead; VM power state reset".into(),
                    _ => "Heart is still beating (or no storage)".into(),
                };
                Answer::Fence(FenceAnswer {
                    success,
                    alive,
                    heartbeat_age_ms: age.filter(|_| readable).map(|a| a.as_millis() as u64),
                    details,
                })
            }
            Command::PingTest(c) => {
                self.world.probe(c.target);
                let target = self.world.host(c.target);
                let cut = me.neighbour_partitioned
                    || target
                        .as_ref()
                        .is_some_and(|t| t.neighbour_partitioned && t.cluster == me.cluster);
                let success = target.is_some_and(|t| t.powered) && !cut;
                Answer::Generic(GenericAnswer {
                    success,
                    details: String::new(),
                })
            }
            Command::CheckVirtualMachine(c) => {
                let on = self.world.running_on(self.host).contains(&c.vm);
                let power = if on {
                    VmPowerState::PowerOn
                } else {
                    VmPowerState::PowerOff
                };
                Answer::CheckVirtualMachine(CheckVirtualMachineAnswer {
                    success: true,
                    power,
                    details: String::new(),
                })
            }
            Command::CheckHealth(_) => {
                self.world.probe(self.host);
                Answer::ok()
            }
            _ => Answer::ok(),
        }
    }

    fn disconnected(&self) {}
}

impl SimResource {
    /// A neighbour that lies about `target` (`neighbour_lies`) reports a fresh heartbeat dead,
    /// with an age to match: ten minutes.
    fn lie(
        &self,
        target: &crate::world::HostTruth,
        truth: (Option<Duration>, bool),
    ) -> (Option<Duration>, bool) {
        if target.neighbours_lie && truth.1 {
            (Some(Duration::from_secs(600)), false)
        } else {
            truth
        }
    }
}

/// Where the current manager accepts agent links (it changes when the manager restarts).
#[derive(Default)]
pub(crate) struct ManagerSlot {
    pub(crate) current: Mutex<Option<(Arc<dyn CommandSink>, Tasks)>>,
}

impl ManagerSlot {
    pub(crate) fn get(&self) -> Option<(Arc<dyn CommandSink>, Tasks)> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set(&self, v: Option<(Arc<dyn CommandSink>, Tasks)>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = v;
    }
}

/// A KVM agent's connection: a relayed in-memory link the world can silence or cut.
pub(crate) struct SimConnector {
    pub(crate) world: Arc<World>,
    pub(crate) host: HostId,
    pub(crate) manager: Arc<ManagerSlot>,
    pub(crate) sim_tasks: Tasks,
}

#[async_trait::async_trait]
impl Connector for SimConnector {
    async fn connect(&self) -> std::io::Result<Box<dyn AgentStreamObj>> {
        let refused =
            || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "manager unreachable");
        let h = self.world.host(self.host).ok_or_else(refused)?;
        if !h.powered || h.mgmt_partitioned {
            return Err(refused());
        }
        let (sink, manager_tasks) = self.manager.get().ok_or_else(refused)?;
        let (agent_end, relay_a) = tokio::io::duplex(256 * 1024);
        let (relay_b, manager_end) = tokio::io::duplex(256 * 1024);
        let config = ConnectedConfig::default();
        let accept_tasks = manager_tasks.clone();
        manager_tasks.spawn(manager_tasks.token().child_token(), async move {
            if let Err(e) = accept_stream(manager_end, sink, &config, &accept_tasks).await {
                tracing::debug!(error = %e, "simulated agent link rejected");
            }
        });
        let (world, host) = (Arc::clone(&self.world), self.host);
        self.sim_tasks.spawn(
            self.sim_tasks.token().child_token(),
            relay(world, host, relay_a, relay_b),
        );
        Ok(Box::new(agent_end))
    }
}

/// Copies bytes between the agent side `a` and the manager side `b`, dropping them while the
/// host is partitioned from the manager or powered off. An agent that dies on a powered host
/// closes the link (the OS closes its socket); a host that loses power just goes silent. The
/// manager closing its side closes the agent's (once the partition, if any, heals).
async fn relay(
    world: Arc<World>,
    host: HostId,
    a: tokio::io::DuplexStream,
    b: tokio::io::DuplexStream,
) {
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let silent = |w: &World| {
        w.host(host)
            .is_none_or(|h| !h.powered || h.mgmt_partitioned)
    };
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match ar.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if !silent(&world) && bw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match br.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if !silent(&world) && aw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = up => {
            // The agent's side ended. On a powered host the manager sees the close; on a dead
            // host the link just stays silent until the manager drops it.
            if world.host(host).is_some_and(|h| h.powered) {
                drop(bw);
            } else {
                let mut sink = vec![0u8; 16 * 1024];
                while matches!(br.read(&mut sink).await, Ok(n) if n > 0) {}
            }
        }
        () = down => {
            // The manager dropped the link: the agent learns it once the network lets it.
            while world.host(host).is_some_and(|h| h.mgmt_partitioned) {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            drop(aw);
        }
    }
}

/// The BMCs of every host. Every call is counted in ground truth (`bmc_calls`).
pub(crate) struct SimBmc {
    pub(crate) world: Arc<World>,
    pub(crate) on_power_off: Arc<dyn Fn(HostId) + Send + Sync>,
}

impl SimBmc {
    fn reach(&self, host: HostId) -> Result<crate::world::HostTruth, OobError> {
        *self.world.lock().bmc_calls.entry(host).or_default() += 1;
        self.world.probe(host);
        match self.world.host(host) {
            Some(h) if h.bmc_ok => Ok(h),
            _ => Err(OobError::new(host, "BMC unreachable")),
        }
    }
}

#[async_trait::async_trait]
impl OutOfBandManagement for SimBmc {
    async fn power_status(&self, host: HostId) -> Result<PowerState, OobError> {
        let h = self.reach(host)?;
        Ok(if h.bmc_lies || (!h.bmc_stuck && !h.powered) {
            PowerState::Off
        } else {
            PowerState::On
        })
    }

    async fn power_off(&self, host: HostId) -> Result<(), OobError> {
        let h = self.reach(host)?;
        if h.powered && !h.bmc_lies && !h.bmc_stuck {
            if self.world.live(host) {
                self.world.lock().violations.push(crate::world::Violation {
                    at: Instant::now(),
                    invariant: "no_false_down",
                    detail: format!(
                        "{} powered off by a fencer while powered and reachable",
                        h.name
                    ),
                });
            }
            (self.on_power_off)(host);
        }
        if h.bmc_off_fails {
            return Err(OobError::new(
                host,
                "the BMC's answer to Off was lost (timeout)",
            ));
        }
        Ok(())
    }

    async fn power_reset(&self, host: HostId) -> Result<(), OobError> {
        self.power_off(host).await
    }
}

fn lock_pings(
    p: &PingLog,
) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<HostId, Instant>> {
    p.0.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A command monitor that notes when each host last pinged (the report measures detection
/// from it). It only observes: it answers nothing.
#[derive(Default)]
pub(crate) struct PingLog(pub(crate) Mutex<std::collections::BTreeMap<HostId, Instant>>);

#[async_trait::async_trait]
impl cloudha_registry::Listener for PingLog {
    fn process_commands(&self, host: HostId, _seq: Sequence, commands: &[Command]) -> bool {
        if commands.iter().any(Command::is_ping) {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(host, Instant::now());
        }
        false
    }
}

/// The VM orchestrator: records in [`InMemoryVms`], processes in the world.
pub(crate) struct SimVms {
    pub(crate) world: Arc<World>,
    pub(crate) records: Arc<InMemoryVms>,
    /// An injected fault (test harness only): the records claim every VM is HA-enabled.
    pub(crate) ha_flag_lies: bool,
    /// When each host last pinged: a VM starts only through an agent that is back in touch.
    pub(crate) pings: Arc<PingLog>,
}

impl SimVms {
    fn lie(&self, mut r: VmRecord) -> VmRecord {
        if self.ha_flag_lies {
            r.ha_enabled = true;
        }
        r
    }
}

impl SimVms {
    fn can_run(&self, host: HostId) -> bool {
        // A start goes through the host's agent: one that has not pinged since the host last
        // booted is not connected yet, and the command would go nowhere.
        let pinged = lock_pings(&self.pings).get(&host).copied();
        self.world.host(host).is_some_and(|h| {
            h.powered
                && pinged.is_some_and(|p| p > h.booted_at)
                && h.agent_alive
                && !h.mgmt_partitioned
                && !h.no_capacity
                && (self.world.load(host) as u32) < h.capacity
        })
    }

    /// Least-loaded candidate with room (ties: the first), like a capacity-aware planner. An HA
    /// start's death proof (what the manager claims) is judged against the truth.
    fn place(
        &self,
        vm: VmId,
        candidates: &[HostId],
        ha: bool,
        proof: Option<&DeathProof>,
    ) -> Result<HostId, StartError> {
        let Some(&host) = candidates
            .iter()
            .filter(|h| self.can_run(**h))
            .min_by_key(|h| self.world.load(**h))
        else {
            return Err(StartError::InsufficientCapacity(format!(
                "no room on {} candidate hosts",
                candidates.len()
            )));
        };
        let proof = proof.map(DeathProof::record);
        self.records.set_state(vm, VmState::Running, Some(host));
        self.world.start_vm(vm, host, ha, proof.as_ref());
        Ok(host)
    }
}

#[async_trait::async_trait]
impl VmOrchestrator for SimVms {
    fn get(&self, vm: VmId) -> Option<VmRecord> {
        self.records.get(vm).map(|r| self.lie(r))
    }

    fn vms_on_host(&self, host: HostId) -> Vec<VmRecord> {
        self.records
            .vms_on_host(host)
            .into_iter()
            .map(|r| self.lie(r))
            .collect()
    }

    fn running_on(&self, host: HostId) -> Vec<VmId> {
        self.records.running_on(host)
    }

    async fn force_stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError> {
        // Records only: the manager asserts the VM is not running (after a proof).
        self.records.force_stop(vm).await
    }

    async fn stop(&self, vm: VmId) -> Result<VmRecord, OrchestratorError> {
        let host = self.records.get(vm).and_then(|r| r.host);
        if let Some(h) = host
            && !self.world.reachable(h)
        {
            return Err(OrchestratorError::new(vm, format!("host {h} unreachable")));
        }
        if let Some(h) = host {
            self.world.stop_vm_on(vm, h);
        }
        self.records.force_stop(vm).await
    }

    async fn start(
        &self,
        vm: VmId,
        params: StartParams,
        proof: &DeathProof,
    ) -> Result<HostId, StartError> {
        // A key starts the VM at most once, and only a stopped VM starts (the manager's clock is
        // paused while the simulated start runs, so it always answers; the key is kept as a real
        // orchestrator keeps it).
        if let Some(refused) = self.records.start_refusal(vm, params.key) {
            return refused;
        }
        let on = self.place(vm, &params.candidates, params.ha_operation, Some(proof))?;
        self.records.update(vm, |r| r.start_key = Some(params.key));
        Ok(on)
    }

    async fn migrate_away(
        &self,
        vm: VmId,
        from: HostId,
        candidates: Vec<HostId>,
    ) -> Result<HostId, StartError> {
        let c: Vec<HostId> = candidates.into_iter().filter(|h| *h != from).collect();
        self.world.stop_vm_on(vm, from);
        self.place(vm, &c, false, None)
    }

    async fn destroy(&self, vm: VmId, expunge: Expunge) -> Result<(), OrchestratorError> {
        self.world.kill_vm(vm, None);
        self.records.destroy(vm, expunge).await
    }
}

/// An alert with its time.
#[derive(Debug, Clone)]
pub(crate) struct TimedAlert {
    pub(crate) at: Instant,
    pub(crate) alert: Alert,
}

/// Records alerts (with time) for the report.
#[derive(Default)]
pub(crate) struct RecordingAlerts(pub(crate) Mutex<Vec<TimedAlert>>);

impl AlertSink for RecordingAlerts {
    fn raise(&self, alert: Alert) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(TimedAlert {
                at: Instant::now(),
                alert,
            });
    }
}

/// One fence attempt, for the report.
#[derive(Debug, Clone)]
pub(crate) struct FenceRecord {
    pub(crate) at: Instant,
    pub(crate) host: HostId,
    pub(crate) method: &'static str,
    pub(crate) outcome: &'static str,
    pub(crate) evidence: String,
}

/// A fencer that records what the fencer it wraps did (same trait, tower-style).
pub(crate) struct RecordingFencer {
    pub(crate) inner: Arc<dyn Fencer>,
    pub(crate) log: Arc<Mutex<Vec<FenceRecord>>>,
}

#[async_trait::async_trait]
impl Fencer for RecordingFencer {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn fence(&self, vm: &VmRecord, host: &HostRecord) -> FenceOutcome {
        let outcome = self.inner.fence(vm, host).await;
        let (kind, evidence) = (outcome.kind(), outcome.to_string());
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(FenceRecord {
                at: Instant::now(),
                host: host.id,
                method: self.inner.name(),
                outcome: kind,
                evidence,
            });
        outcome
    }
}
