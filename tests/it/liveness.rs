//! End to end: real direct attaches (fake resources over a shared little world), the real
//! registry and the real manager with its real investigator chain. A host whose resource stops
//! answering ends Down or Alert exactly as the neighbours' verdicts dictate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudha_attache::ServerResource;
use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use cloudha_registry::Registry;
use cloudha_testkit::RecordingAlerts;
use tokio::time::sleep;

/// Ground truth: per host, whether its power is on, its agent answers, and its storage
/// heartbeat beats.
#[derive(Default)]
struct World {
    hosts: Mutex<HashMap<HostId, (bool, bool, bool)>>,
}

impl World {
    fn set(&self, host: HostId, powered: bool, agent: bool, heartbeat: bool) {
        self.hosts
            .lock()
            .unwrap()
            .insert(host, (powered, agent, heartbeat));
    }
    fn get(&self, host: HostId) -> (bool, bool, bool) {
        self.hosts
            .lock()
            .unwrap()
            .get(&host)
            .copied()
            .unwrap_or_default()
    }
}

struct Resource {
    id: HostId,
    hypervisor: HypervisorType,
    world: Arc<World>,
}

#[async_trait::async_trait]
impl ServerResource for Resource {
    async fn initialize(&self) -> Vec<Command> {
        let (powered, agent, _) = self.world.get(self.id);
        if !(powered && agent) {
            return Vec::new();
        }
        vec![
            StartupCommand {
                host_id: self.id,
                hypervisor: Some(self.hypervisor),
                host_type: Some(HostType::Routing),
                ..Default::default()
            }
            .into(),
        ]
    }

    async fn get_current_status(&self, host: HostId) -> Option<Command> {
        let (powered, agent, _) = self.world.get(self.id);
        (powered && agent).then(|| {
            PingRoutingCommand {
                host_id: host,
                vm_states: vec![],
                gateway_accessible: true,
            }
            .into()
        })
    }

    async fn execute(&self, command: Command) -> Answer {
        let (powered, agent, _) = self.world.get(self.id);
        if !(powered && agent) {
            return Answer::failure("no answer");
        }
        match command {
            Command::CheckHealth(_) => Answer::ok(),
            Command::CheckOnHost(c) => {
                let (_, _, heartbeat) = self.world.get(c.target);
                Answer::CheckOnHost(CheckOnHostAnswer {
                    success: true,
                    alive: heartbeat,
                    heartbeat_age_ms: None,
                    details: String::new(),
                })
            }
            Command::PingTest(c) => {
                let (powered, _, _) = self.world.get(c.target);
                Answer::Generic(GenericAnswer {
                    success: powered,
                    details: String::new(),
                })
            }
            _ => Answer::ok(),
        }
    }

    fn disconnected(&self) {}
}

struct Fleet {
    manager: AgentManager,
    world: Arc<World>,
    registry: Arc<Registry>,
    /// Every status change since the fleet was made (what an HA manager follows).
    changes: Mutex<StatusChanges>,
    alerts: Arc<RecordingAlerts>,
}

/// A BMC over the world: a host reads On while powered; an Off switches it off.
struct WorldBmc(Arc<World>);

#[async_trait::async_trait]
impl OutOfBandManagement for WorldBmc {
    async fn power_status(&self, host: HostId) -> Result<PowerState, OobError> {
        let (powered, _, _) = self.0.get(host);
        Ok(if powered {
            PowerState::On
        } else {
            PowerState::Off
        })
    }
    async fn power_off(&self, host: HostId) -> Result<(), OobError> {
        self.0.set(host, false, false, false);
        Ok(())
    }
    async fn power_reset(&self, _: HostId) -> Result<(), OobError> {
        Ok(())
    }
}

async fn fleet(hypervisor: HypervisorType, n: u64, config: LivenessConfig) -> Fleet {
    fleet_with_bmc(hypervisor, n, config, false).await
}

/// A fleet; with `bmc`, the manager reads power through a BMC over the world.
async fn fleet_with_bmc(
    hypervisor: HypervisorType,
    n: u64,
    config: LivenessConfig,
    bmc: bool,
) -> Fleet {
    let world = Arc::new(World::default());
    let registry = Arc::new(Registry::default());
    let alerts = Arc::new(RecordingAlerts::new());
    let store = Arc::new(InMemoryHostStore::new());
    let oobm = bmc.then(|| {
        Arc::new(Oobm::new(
            Arc::new(WorldBmc(world.clone())),
            config.oobm_action_timeout,
            Arc::new(TokioClock::new(Timestamp::UNIX_EPOCH)),
        ))
    });
    let mut ports = Ports::new(
        store,
        registry.clone(),
        alerts.clone(),
        Arc::new(TokioClock::new(Timestamp::UNIX_EPOCH)),
    );
    if let Some(oobm) = oobm {
        ports = ports.with_oobm(oobm);
    }
    let manager = AgentManager::new(config, ports).unwrap();
    let changes = Mutex::new(manager.subscribe());
    for i in 1..=n {
        let id = HostId(i);
        world.set(id, true, true, true);
        let mut record = HostRecord::new(id, format!("h{i}"), hypervisor);
        record.cluster = Some(ClusterId(1));
        record.pod = Some(PodId(1));
        manager
            .add_direct_host(
                record,
                Arc::new(Resource {
                    id,
                    hypervisor,
                    world: world.clone(),
                }),
            )
            .await
            .unwrap();
    }
    manager.start().await.unwrap();
    sleep(Duration::from_secs(1)).await;
    for i in 1..=n {
        assert_eq!(manager.hosts().status(HostId(i)), Some(Status::Up));
    }
    Fleet {
        manager,
        world,
        registry,
        changes,
        alerts,
    }
}

impl Fleet {
    fn status(&self, i: u64) -> Option<Status> {
        self.manager.hosts().status(HostId(i))
    }
    /// The hosts that went Down since the last call, in order: what VM-HA would be handed.
    fn downs(&self) -> Vec<HostId> {
        let mut changes = self.changes.lock().unwrap();
        std::iter::from_fn(|| changes.try_recv())
            .filter(|c| c.to == Status::Down && c.from != Some(Status::Down))
            .map(|c| c.host)
            .collect()
    }
    async fn stop(self) {
        self.manager.stop().await;
        self.registry.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_xen_host_that_loses_power_is_proven_down_by_its_neighbours() {
    let f = fleet(HypervisorType::XenServer, 3, LivenessConfig::default()).await;
    f.world.set(HostId(2), false, false, false);
    sleep(Duration::from_secs(150 + 60 + 2)).await;
    assert_eq!(f.status(2), Some(Status::Down));
    assert_eq!(f.status(1), Some(Status::Up));
    assert_eq!(f.downs(), vec![HostId(2)]);
    let down = f.manager.history(HostId(2)).pop().unwrap();
    assert_eq!(down.event, Event::HostDown);
    assert!(
        down.reason.contains("XenServerInvestigator"),
        "{}",
        down.reason
    );
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_kvm_host_whose_agent_dies_with_its_heartbeat_alive_is_never_down() {
    let config = {
        let mut c = LivenessConfig::default();
        c.alert_wait = Duration::from_secs(600);
        c
    };
    let f = fleet(HypervisorType::Kvm, 3, config).await;
    // The host runs on (heartbeat beats, pingable) but its agent stopped answering.
    f.world.set(HostId(2), true, false, true);
    sleep(Duration::from_secs(150 + 60 + 2)).await;
    // KVM neighbours see the heartbeat: Disconnected; the host was Up ⇒ AgentDisconnected ⇒ Alert.
    assert_eq!(f.status(2), Some(Status::Alert));
    let alert = f.manager.history(HostId(2)).pop().unwrap();
    assert_eq!(alert.event, Event::AgentDisconnected);
    assert!(
        alert.reason.contains("Disconnected by KVMInvestigator"),
        "{}",
        alert.reason
    );
    // Re-investigated every interval while in Alert, and never Down while the heartbeat beats.
    sleep(Duration::from_secs(3600)).await;
    assert_eq!(f.status(2), Some(Status::Alert));
    assert!(f.downs().is_empty(), "no VM-HA for a live host");
    // Then the host really dies: the Alert re-investigation proves it Down.
    f.world.set(HostId(2), false, false, false);
    sleep(Duration::from_secs(61)).await;
    assert_eq!(f.status(2), Some(Status::Down));
    assert_eq!(f.downs(), vec![HostId(2)]);
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_lone_host_nobody_can_vouch_for_goes_to_alert_at_detection() {
    // One host: no neighbour can tell. CloudStack answers Disconnected (Alert with a "host
    // disconnected" alert within minutes), never Down, and does not wait for alert.wait.
    let f = fleet(HypervisorType::XenServer, 1, LivenessConfig::default()).await;
    f.world.set(HostId(1), false, false, false);
    sleep(Duration::from_secs(60 + 150 + 2)).await;
    assert_eq!(f.status(1), Some(Status::Alert));
    let alert = f.manager.history(HostId(1)).pop().unwrap();
    assert_eq!(alert.event, Event::AgentDisconnected, "{}", alert.reason);
    assert!(
        alert
            .reason
            .contains("Disconnected by XenServerInvestigator"),
        "{}",
        alert.reason
    );
    assert_eq!(f.alerts.kinds(HostId(1)), [AlertKind::HostDisconnected]);
    // Re-investigated while in Alert, never Down: nobody can vouch for it.
    sleep(Duration::from_secs(1800)).await;
    assert_eq!(f.status(1), Some(Status::Alert));
    assert!(f.downs().is_empty());
    // It powers back on: the direct scan reconnects it.
    f.world.set(HostId(1), true, true, true);
    sleep(Duration::from_secs(91)).await;
    assert_eq!(f.status(1), Some(Status::Up));
    f.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_kvm_agent_restart_on_a_live_host_ends_in_alert_and_comes_back_up() {
    // The agent writes the heartbeat: while it is down the heartbeat is dead, but the host is
    // powered (the BMC reads On) and its neighbours reach it. That is no proof of death.
    let f = fleet_with_bmc(HypervisorType::Kvm, 3, LivenessConfig::default(), true).await;
    f.world.set(HostId(2), true, false, false);
    sleep(Duration::from_secs(60 + 150 + 2)).await;
    assert_eq!(f.status(2), Some(Status::Alert));
    assert_eq!(f.alerts.kinds(HostId(2)), [AlertKind::HostDisconnected]);
    // Five minutes of Alert re-investigation: never Down, never handed to VM-HA.
    sleep(Duration::from_secs(300)).await;
    assert_eq!(f.status(2), Some(Status::Alert));
    assert!(
        f.manager
            .history(HostId(2))
            .iter()
            .all(|c| c.to != Status::Down)
    );
    assert!(f.downs().is_empty(), "a live host is never fenced");
    assert_eq!(
        f.world.get(HostId(2)),
        (true, false, false),
        "still powered"
    );
    // The agent is back: the direct scan reconnects the host.
    f.world.set(HostId(2), true, true, true);
    sleep(Duration::from_secs(91)).await;
    assert_eq!(f.status(2), Some(Status::Up));
    // Then it really loses power: the BMC reads Off, Down at the next detection.
    f.world.set(HostId(2), false, false, false);
    sleep(Duration::from_secs(60 + 150 + 2)).await;
    assert_eq!(f.status(2), Some(Status::Down));
    assert_eq!(f.downs(), vec![HostId(2)]);
    f.stop().await;
}
