//! 10k VMs of 500 failed hosts through restart with instant ports (goal: ≥ 50k work items/s).
//!
//! Prints a `metric:` line for `cargo xtask bench`. Full size with `CLOUDHA_BENCH_FULL=1`.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Instant as StdInstant;

use cloudha_ha::*;
use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use cloudha_registry::Registry;

struct Unknown;
#[async_trait::async_trait]
impl Investigator for Unknown {
    fn name(&self) -> &'static str {
        "Unknown"
    }
    async fn host_status(&self, _: &HostRecord) -> Option<Finding> {
        None
    }
    async fn vm_alive(&self, _: VmId, _: &HostRecord) -> VmVerdict {
        VmVerdict::Unknown
    }
}

struct Fenced;
#[async_trait::async_trait]
impl Fencer for Fenced {
    fn name(&self) -> &'static str {
        "Instant"
    }
    async fn fence(&self, _: &VmRecord, _: &HostRecord) -> FenceOutcome {
        FenceOutcome::Fenced(FenceEvidence::Power {
            evidence: "instant".into(),
        })
    }
}

fn main() {
    let full = std::env::var_os("CLOUDHA_BENCH_FULL").is_some();
    let (failed, per_host) = if full { (500u64, 20u64) } else { (50, 20) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async move {
        let hosts = Arc::new(InMemoryHostStore::new());
        let clusters = failed / 10;
        for id in 0..failed * 2 {
            let mut r = HostRecord::new(HostId(id), format!("h{id}"), HypervisorType::Kvm);
            r.cluster = Some(ClusterId(id % clusters));
            r.zone = Some(ZoneId(1));
            r.status = Some(if id < failed { Status::Down } else { Status::Up });
            hosts.insert(r);
        }
        let vms = Arc::new(InMemoryVms::new());
        for h in 0..failed {
            for j in 0..per_host {
                let id = h * per_host + j;
                vms.upsert({
                    let mut r = VmRecord::new(VmId(id), format!("vm{id}"), HypervisorType::Kvm);
                    r.host = Some(HostId(h));
                    r.state = VmState::Running;
                    r.ha_enabled = true;
                    r.cluster = Some(ClusterId(h % clusters));
                    r.zone = Some(ZoneId(1));
                    r
                });
            }
        }
        let work = Arc::new(InMemoryHaWorkStore::new());
        let config = {
            let mut c = Config::default();
            c.ha.ha_startup_grace = std::time::Duration::ZERO;
            c.ha.ha_brake_fraction = 1.0;
            c
        };
        // An agent manager over the hosts (not started: the failed hosts are Down already).
        let agent = AgentManager::new(
            config.liveness.clone(),
            Ports::new(hosts.clone(), Arc::new(Registry::default()), Arc::new(LogAlerts), Arc::new(SystemClock))
                .with_investigators(Vec::new())
                .with_host_down_alert(HostDownAlert::LeftToHa),
        )
        .unwrap();
        for r in hosts.list() {
            agent.add_host(r).await.unwrap();
        }
        let ha = HaManager::new(
            config.ha,
            OwnerId(1),
            &agent,
            HaPorts::new(work.clone(), vms.clone(), vec![Arc::new(Fenced)], Arc::new(LogAlerts))
                .with_investigators(vec![Arc::new(Unknown)]),
        );
        let start = StdInstant::now();
        ha.start().await.unwrap();
        for h in 0..failed {
            ha.schedule_restarts_for_host(&hosts.get(HostId(h)).unwrap(), WorkReason::HostDown, ProveDead::First).await;
        }
        let total = (failed * per_host) as usize;
        loop {
            tokio::task::yield_now().await;
            if work.pending_count() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let secs = start.elapsed().as_secs_f64();
        let running = vms.all().iter().filter(|v| v.state == VmState::Running && v.host.is_some_and(|h| h.0 >= failed)).count();
        assert_eq!(running, total, "every VM restarted on a healthy host");
        println!("metric: ha::restart_work_items_per_second {:.0} items/s (vms={total}, failed_hosts={failed}, {secs:.2}s)", total as f64 / secs);
        ha.stop().await;
    });
}
