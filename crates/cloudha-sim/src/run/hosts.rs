//! What the simulated hosts do on their own (agents connecting, power, the KVM heartbeat
//! writer and XenServer's pool heartbeat, self-reboots), and the scenario's faults applied to
//! them and cleared; every change of the truth is followed by the deaths it causes.

use std::sync::Arc;
use std::time::Duration;

use cloudha_attache::{AgentClient, AgentConfig};
use cloudha_protocol::HostId;
use tokio::time::Instant;

use super::{Cloud, lock};
use crate::cloud::SimConnector;
use crate::scenario::FaultKind;
use crate::world::{Cause, Death, World};

impl Cloud {
    pub(super) fn start_agent(self: &Arc<Self>, host: HostId) {
        let Some(resource) = self.resources.get(&host).cloned() else {
            return;
        };
        let mut config = AgentConfig::new(host);
        config.jitter_seed = lock(&self.rng).next();
        config.backoff_max = Duration::from_secs(60);
        let connector = Arc::new(SimConnector {
            world: self.world.clone(),
            host,
            manager: self.slot.clone(),
            sim_tasks: self.sim_tasks.clone(),
        });
        let handle = AgentClient::new(config, resource, connector).spawn(&self.sim_tasks);
        if let Some(old) = lock(&self.agents).insert(host, handle) {
            old.stop();
        }
    }

    fn stop_agent(&self, host: HostId) {
        if let Some(a) = lock(&self.agents).remove(&host) {
            a.stop();
        }
    }

    pub(super) fn power_off(self: &Arc<Self>, host: HostId) {
        let deaths = self.world.power_off(host);
        self.stop_agent(host);
        self.after_change(&[host], deaths);
    }

    /// After any change of the truth about `hosts`: their clusters' reach is recorded, the VMs
    /// of hosts that just became cut off die (for `ha_liveness`), and every death gets its judge.
    fn after_change(self: &Arc<Self>, hosts: &[HostId], mut deaths: Vec<Death>) {
        for host in self.world.update_reach(Some(hosts)) {
            for vm in self.world.running_on(host) {
                deaths.push(self.world.death(vm, host, Cause::CutOff));
            }
        }
        for d in deaths {
            if !self.obliged(&d) {
                continue;
            }
            lock(&self.deaths).push(d);
            let me = Arc::clone(self);
            self.sim_tasks
                .spawn(self.sim_tasks.token().child_token(), async move {
                    me.judge(d).await
                });
        }
    }

    fn power_on(self: &Arc<Self>, host: HostId) {
        let was = self
            .world
            .with_host(host, |h| std::mem::replace(&mut h.powered, true));
        if was == Some(false) {
            self.world.with_host(host, |h| {
                h.agent_alive = true;
                h.booted_at = Instant::now();
            });
            if self.world.host(host).is_some_and(|h| h.kvm()) {
                self.start_agent(host);
            }
        }
        self.after_change(&[host], Vec::new());
    }

    /// Writes `host`'s heartbeat stamp now if its storage works; returns whether it did.
    fn write_heartbeat(&self, host: HostId) -> bool {
        self.world.with_host(host, |h| {
            if h.storage_ok {
                h.heartbeat = Some(Instant::now());
            }
            h.storage_ok
        }) == Some(true)
    }

    /// The host reboots itself: off now, on again after `sim.boot.time`.
    async fn self_reboot(self: &Arc<Self>, host: HostId) {
        self.power_off(host);
        tokio::time::sleep(self.scenario.sim.boot_time).await;
        self.power_on(host);
    }

    /// The KVM agent's heartbeat writer (and, with `self_fence = independent`, a watchdog that
    /// outlives the agent): every `sim.heartbeat.interval`; a failed write is retried
    /// `sim.heartbeat.write.retries` times every `sim.heartbeat.retry.interval`, then the host
    /// reboots itself.
    pub(super) async fn heartbeat_loop(self: Arc<Self>, host: HostId, offset: Duration) {
        let t = self.scenario.sim;
        tokio::time::sleep(offset).await;
        let mut ticker = tokio::time::interval(t.heartbeat_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            let writer = |w: &World| {
                w.host(host)
                    .is_some_and(|h| h.powered && (h.agent_alive || h.independent_self_fence))
            };
            if !writer(&self.world) {
                continue;
            }
            let mut written = self.write_heartbeat(host);
            for _ in 0..t.heartbeat_write_retries {
                if written {
                    break;
                }
                tokio::time::sleep(t.heartbeat_retry_interval).await;
                if !writer(&self.world) {
                    break;
                }
                written = self.write_heartbeat(host);
            }
            if !written && writer(&self.world) {
                tracing::info!(host.id = %host, "heartbeat writes failed: the host reboots itself");
                self.self_reboot(host).await;
            }
        }
    }

    /// A XenServer host's pool heartbeat (xapi's HA statefile, not the CloudStack agent): written
    /// every `sim.xen.heartbeat.interval` while the host runs and its storage works; a host that
    /// could not write it for `sim.xen.self.reboot.timeout` reboots itself.
    pub(super) async fn pool_heartbeat_loop(self: Arc<Self>, host: HostId, offset: Duration) {
        let t = self.scenario.sim;
        tokio::time::sleep(offset).await;
        let mut ticker = tokio::time::interval(t.xen_heartbeat_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_good = Instant::now();
        loop {
            ticker.tick().await;
            if !self.world.host(host).is_some_and(|h| h.powered) {
                last_good = Instant::now();
                continue;
            }
            if self.write_heartbeat(host) {
                last_good = Instant::now();
            } else if last_good.elapsed() >= t.xen_self_reboot_timeout {
                tracing::info!(host.id = %host, "pool heartbeat lost: the XenServer host reboots itself");
                self.self_reboot(host).await;
                last_good = Instant::now();
            }
        }
    }

    pub(super) async fn apply(
        self: &Arc<Self>,
        kind: FaultKind,
        hosts: &[String],
        vms: &[String],
        delay: Option<Duration>,
    ) {
        let ids: Vec<HostId> = hosts
            .iter()
            .filter_map(|h| self.names.get(h).copied())
            .collect();
        let now = Instant::now();
        for id in &ids {
            let last_ping = lock(&self.pings.0).get(id).copied();
            lock(&self.faults_seen).push((*id, kind, now, last_ping));
        }
        tracing::info!(?kind, ?hosts, ?vms, "fault");
        for &id in &ids {
            match kind {
                FaultKind::PowerOff => self.power_off(id),
                FaultKind::PowerOn => self.power_on(id),
                FaultKind::AgentCrash => {
                    self.world.with_host(id, |h| h.agent_alive = false);
                    self.stop_agent(id);
                }
                FaultKind::AgentRestart => {
                    let powered = self.world.with_host(id, |h| {
                        h.agent_alive = true;
                        h.powered
                    });
                    if powered == Some(true) && self.world.host(id).is_some_and(|h| h.kvm()) {
                        self.start_agent(id);
                    }
                }
                FaultKind::MgmtPartition => {
                    _ = self.world.with_host(id, |h| h.mgmt_partitioned = true)
                }
                FaultKind::MgmtHeal => _ = self.world.with_host(id, |h| h.mgmt_partitioned = false),
                FaultKind::NeighbourPartition => {
                    _ = self.world.with_host(id, |h| h.neighbour_partitioned = true)
                }
                FaultKind::NeighbourHeal => {
                    _ = self
                        .world
                        .with_host(id, |h| h.neighbour_partitioned = false)
                }
                FaultKind::StorageLoss => _ = self.world.with_host(id, |h| h.storage_ok = false),
                FaultKind::StorageHeal => _ = self.world.with_host(id, |h| h.storage_ok = true),
                FaultKind::PingLoss => _ = self.world.with_host(id, |h| h.ping_loss = true),
                FaultKind::PingDelay => _ = self.world.with_host(id, |h| h.ping_delay = delay),
                FaultKind::BmcUnreachable => _ = self.world.with_host(id, |h| h.bmc_ok = false),
                FaultKind::BmcOffFails => _ = self.world.with_host(id, |h| h.bmc_off_fails = true),
                FaultKind::BmcLies => _ = self.world.with_host(id, |h| h.bmc_lies = true),
                FaultKind::BmcStuck => _ = self.world.with_host(id, |h| h.bmc_stuck = true),
                FaultKind::NeighbourLies => {
                    _ = self.world.with_host(id, |h| h.neighbours_lie = true)
                }
                FaultKind::NoCapacity => _ = self.world.with_host(id, |h| h.no_capacity = true),
                FaultKind::VmCrash | FaultKind::ManagerRestart => {}
            }
        }
        let mut deaths = Vec::new();
        match kind {
            FaultKind::VmCrash => {
                for v in vms {
                    if let Some(id) = self.vm_names.get(v) {
                        deaths.extend(self.world.kill_vm(*id, Some(Cause::Crash)));
                    }
                }
            }
            FaultKind::ManagerRestart => {
                let downtime = self
                    .scenario
                    .faults
                    .iter()
                    .find(|f| {
                        f.kind == FaultKind::ManagerRestart
                            && f.at == now.saturating_duration_since(self.world.t0)
                    })
                    .and_then(|f| f.duration);
                // In its own task: the faults timed during the downtime happen at their instant.
                let c = Arc::clone(self);
                self.sim_tasks
                    .spawn(self.sim_tasks.token().child_token(), async move {
                        c.restart_manager(downtime).await;
                    });
            }
            _ => {}
        }
        self.after_change(&ids, deaths);
    }

    /// Ends a state fault after its duration.
    pub(super) fn clear(&self, kind: FaultKind, hosts: &[String]) {
        for id in hosts.iter().filter_map(|h| self.names.get(h)) {
            self.world.with_host(*id, |h| match kind {
                FaultKind::PingLoss => h.ping_loss = false,
                FaultKind::PingDelay => h.ping_delay = None,
                FaultKind::BmcUnreachable => h.bmc_ok = true,
                FaultKind::BmcOffFails => h.bmc_off_fails = false,
                FaultKind::BmcLies => h.bmc_lies = false,
                FaultKind::BmcStuck => h.bmc_stuck = false,
                FaultKind::NeighbourLies => h.neighbours_lie = false,
                FaultKind::NoCapacity => h.no_capacity = false,
                _ => {}
            });
        }
    }
}
