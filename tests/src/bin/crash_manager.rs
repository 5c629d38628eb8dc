//! The crash test's manager: the agent manager and the HA manager over a SQLite store and the
//! fake orchestrator, run until killed (the test kills it with SIGKILL at random points).
//!
//! `crash-manager --store sqlite:PATH --orchestrator ADDR --hosts N [--fail HOST]` adds hosts
//! `1..=N` (Up, cluster 1) to an empty store, starts both managers (a restart of the same
//! server: owner 1), brings the other hosts' agents back (the start left them Disconnected),
//! then starts HA (so its first starts find the hosts Up), moves `--fail HOST` to Down when it
//! is not already, prints `ready`, and
//! runs until killed. Fences always succeed (after a few milliseconds); starts are bounded by
//! `wait` (200 ms), shorter than the orchestrator's slow starts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cloudha_ha::{Config, FenceEvidence, FenceOutcome, Fencer, HaManager, HaPorts};
use cloudha_liveness::{AgentManager, HostDownAlert, Ports};
use cloudha_ports::{HostRecord, HostStore, LogAlerts, OwnerId, SystemClock, VmRecord};
use cloudha_protocol::{ClusterId, Event, HostId, HypervisorType, Status, ZoneId};
use cloudha_registry::Registry;
use cloudha_store::SqlStore;
use cloudha_tests::crash::RemoteVms;

/// A fence that always works: the test is about crashes, not fencing.
struct Fences;

#[async_trait::async_trait]
impl Fencer for Fences {
    fn name(&self) -> &'static str {
        "crash-test"
    }

    async fn fence(&self, _vm: &VmRecord, host: &HostRecord) -> FenceOutcome {
        tokio::time::sleep(Duration::from_millis(3)).await;
        FenceOutcome::Fenced(FenceEvidence::Power {
            evidence: format!("host {} powered off (crash test)", host.id),
        })
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let url = arg(&args, "--store").ok_or("--store is required")?;
    let addr: SocketAddr = arg(&args, "--orchestrator")
        .ok_or("--orchestrator is required")?
        .parse()?;
    let hosts: u64 = arg(&args, "--hosts").map_or(Ok(8), |h| h.parse())?;
    let fail: Option<u64> = arg(&args, "--fail").map(|h| h.parse()).transpose()?;

    let store = Arc::new(SqlStore::open(&url).await?);
    if HostStore::list(store.as_ref()).await?.is_empty() {
        for id in 1..=hosts {
            let mut r = HostRecord::new(HostId(id), format!("kvm-{id}"), HypervisorType::Kvm);
            r.cluster = Some(ClusterId(1));
            r.zone = Some(ZoneId(1));
            r.status = Some(Status::Up);
            store.upsert(&r).await?;
        }
    }
    let mut config = Config::default();
    config.liveness.wait = Duration::from_millis(200);
    config.ha.ha_workers = 4;
    config.ha.ha_startup_grace = Duration::ZERO;
    config.ha.ha_brake_fraction = 1.0;
    config.ha.max_retries = 20;
    config.ha.restart_retry_interval = Duration::from_millis(300);
    config.ha.investigate_retry_interval = Duration::from_millis(300);
    config.validate()?;
    let agent = AgentManager::new(
        config.liveness.clone(),
        Ports::new(
            store.clone(),
            Arc::new(Registry::default()),
            Arc::new(LogAlerts),
            Arc::new(SystemClock),
        )
        .with_investigators(Vec::new())
        .with_host_down_alert(HostDownAlert::LeftToHa),
    )?;
    agent.start().await?;
    // The agents of the hosts that have not failed reconnect (a manager start leaves every host
    // Disconnected until its agent comes back).
    for h in 1..=hosts {
        if Some(h) != fail && agent.hosts().status(HostId(h)) == Some(Status::Disconnected) {
            agent
                .apply(HostId(h), Event::AgentConnected, "crash test: agent back")
                .await?;
            agent
                .apply(HostId(h), Event::Ready, "crash test: agent back")
                .await?;
        }
    }
    let ha = HaManager::new(
        config.ha.clone(),
        OwnerId(1),
        &agent,
        HaPorts::new(
            store.clone(),
            Arc::new(RemoteVms::new(addr)),
            vec![Arc::new(Fences)],
            Arc::new(LogAlerts),
        )
        .with_investigators(Vec::new()),
    );
    ha.start().await?;
    if let Some(h) = fail
        && agent.hosts().status(HostId(h)) != Some(Status::Down)
    {
        agent
            .apply(HostId(h), Event::HostDown, "crash test")
            .await?;
    }
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}
