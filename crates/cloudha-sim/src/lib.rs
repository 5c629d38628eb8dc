//! # cloudha-sim
//!
//! A deterministic simulated cloud: one process, paused tokio time, a seeded RNG. Zones, pods
//! and clusters of hosts (KVM hosts with connected agents and a storage heartbeat; XenServer,
//! VMware and simulator hosts polled as direct agents), VMs, BMCs, and faults. It implements every
//! port of the manager against that ground truth and runs the real manager, attaches and
//! registry unchanged, while a checker watches the invariants (no VM runs twice, no unsafe
//! start, HA liveness, no unwanted restart).
//!
//! ```
//! let scenario = cloudha_sim::Scenario::parse(r#"
//! name = "one host dies"
//! duration = "15m"
//! [[cluster]]
//! name = "kvm"
//! hypervisor = "kvm"
//! hosts = 3
//! vms_per_host = 2
//! capacity_per_host = 10
//! [[fault]]
//! at = "1m"
//! kind = "power_off"
//! hosts = ["kvm-h1"]
//! [[expect]]
//! host = "kvm-h1"
//! status = "Down"
//! by = "10m"
//! "#, "inline.toml").unwrap();
//! let report = cloudha_sim::simulate(&scenario, 1);
//! assert!(report.ok(), "{}", report.summary());
//! ```

mod cloud;
mod explore;
mod report;
mod rng;
mod run;
mod scenario;
mod scenario_toml;
mod store;
mod world;

pub use explore::{
    ExploreOptions, Explorer, Finding, Outcome, Phase, Progress, SIMULATOR_PANIC, Schedule,
    Violation, is_lying,
};
pub use report::{Failover, Report, clock};
#[cfg(feature = "fault-injection")]
pub use run::simulate_with;
pub use run::{Injected, simulate, simulate_on};
pub use scenario::{
    ALERT_KINDS, ClusterSpec, Expect, Fault, FaultKind, Hypervisor, INVARIANTS, PROOF_KINDS,
    SIM_KEYS, Scenario, ScenarioError, SelfFence, SimTimings, Storage,
};
pub use store::{Failure, InMemoryStores, Outside, StoreProvider, Stores, wait_outside};
