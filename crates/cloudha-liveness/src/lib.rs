//! # cloudha-liveness
//!
//! The agent manager: the heart of liveness. Pings from attaches (PingTask, connected agents)
//! reach the manager's [`cloudha_attache::CommandSink`], go through the listener registry to every
//! command monitor, among them the behind-on-ping [`PingMonitor`]; a host not heard from for
//! `ping.interval × ping.timeout` is disconnected with investigation (CheckHealth, then the
//! [`cloudha_ports::Investigator`] chain, then the verdict table of spec §4.4), and only a host proven **Down**
//! is handed to VM-HA through the [`HaScheduler`] port.
//!
//! It composes `cloudha-attache` and `cloudha-registry` behind their traits (`Attache`,
//! `ListenerRegistry`), works over the ports of `cloudha-ports` (host store, alerts,
//! investigators, probes, out-of-band management) and defines one port of its own,
//! [`HaScheduler`] (a mock with the `mock` feature).
//!
//! The HA manager (crate `cloudha-ha`) implements [`HaScheduler`].
//!
//! Status changes go through one place ([`AgentManager::apply`]), which uses the §4.2 table,
//! records every change in a per-host history and sends it to subscribers.
//!
//! ```
//! use std::sync::Arc;
//! use cloudha_attache::Tasks;
//! use cloudha_liveness::{AgentManager, Config, Ports};
//! use cloudha_ports::{HostRecord, HostStore, InMemoryHostStore, LogAlerts};
//! use cloudha_protocol::{Event, HostId, HypervisorType, Status};
//! use cloudha_registry::Registry;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let store = Arc::new(InMemoryHostStore::new());
//! let ports = Ports {
//!     store: store.clone(),
//!     registry: Arc::new(Registry::default()),
//!     alerts: Arc::new(LogAlerts),
//!     ha: None,            // or an HaManager, later through `set_ha`
//!     investigators: None, // the chain of `ha.investigators.order`
//!     oobm: None,          // BMC access: power readings are evidence, shared with fencing
//! };
//! let manager = AgentManager::new(Config::default(), ports, Tasks::new()).unwrap();
//! manager.add_host(HostRecord::new(HostId(1), "kvm-1", HypervisorType::Kvm));
//! manager.apply(HostId(1), Event::AgentConnected, "agent connected").unwrap();
//! assert_eq!(store.status(HostId(1)), Some(Status::Connecting));
//! // An absent cell of the §4.2 table is a typed error naming status and event.
//! assert!(manager.apply(HostId(1), Event::WaitedTooLong, "no such transition").is_err());
//! manager.start().await; // monitor, direct-agent scan
//! manager.stop().await; // every task ended
//! # }
//! ```

pub mod config;
pub mod error;
pub mod investigate;
mod manager;
pub mod monitor;
pub mod oobm;
pub mod ports;

pub use config::Config;
pub use error::{ConfigError, ManagerError};
pub use manager::{AgentManager, Attaches, HISTORY_LIMIT, Investigations, Ports, StatusChange};
pub use monitor::PingMonitor;
pub use oobm::Oobm;
pub use ports::{HaScheduler, NoHa};

#[cfg(any(test, feature = "mock"))]
pub use ports::MockHaScheduler;
