//! # cloudha-liveness
//!
//! The agent manager: the heart of liveness. Pings from attaches (PingTask, connected agents)
//! reach the manager's [`cloudha_attache::CommandSink`], go through the listener registry to every
//! command monitor, among them the behind-on-ping monitor (a timing wheel); a host not heard from for
//! `ping.interval × ping.timeout` is disconnected with investigation (CheckHealth, then the
//! [`cloudha_ports::Investigator`] chain, then the verdict table of spec §4.4), and only a host
//! proven **Down** moves to Down: the HA manager (crate `cloudha-ha`) follows the
//! [`StatusChanges`] stream and restarts its VMs.
//!
//! It composes `cloudha-attache` and `cloudha-registry` behind their traits (`Attache`,
//! `ListenerRegistry`) and works over the ports of `cloudha-ports` (host store, alerts,
//! investigators, probes, out-of-band management, clock). It knows nothing of VM-HA.
//!
//! Host records are loaded from the [`cloudha_ports::HostStore`] at start into the manager's
//! cache, which the ping path and every decision read ([`AgentManager::hosts`]); status changes
//! go through one place ([`AgentManager::apply`]), which uses the §4.2 table, writes the change
//! through to the store (a compare-and-set), records it in a per-host history and sends it to
//! subscribers. Last-ping times reach the store in batches, once per `ping.interval`.
//!
//! ```
//! use std::sync::Arc;
//! use cloudha_liveness::{AgentManager, LivenessConfig, Ports};
//! use cloudha_ports::{HostDirectory, HostRecord, InMemoryHostStore, LogAlerts, SystemClock};
//! use cloudha_protocol::{Event, HostId, HypervisorType, Status};
//! use cloudha_registry::Registry;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let store = Arc::new(InMemoryHostStore::new());
//! let ports = Ports::new(
//!     store.clone(),
//!     Arc::new(Registry::default()),
//!     Arc::new(LogAlerts),
//!     Arc::new(SystemClock),
//! ); // `.with_investigators(..)`, `.with_oobm(..)`: optional
//! let manager = AgentManager::new(LivenessConfig::default(), ports).unwrap();
//! manager.start().await.unwrap(); // loads the store; monitor, last-ping writer, direct scan
//! manager.add_host(HostRecord::new(HostId(1), "kvm-1", HypervisorType::Kvm)).await.unwrap();
//! let mut changes = manager.subscribe();
//! manager.apply(HostId(1), Event::AgentConnected, "agent connected").await.unwrap();
//! // Written through: the store and the manager's cache agree.
//! assert_eq!(store.status(HostId(1)), Some(Status::Connecting));
//! assert_eq!(manager.hosts().status(HostId(1)), Some(Status::Connecting));
//! assert_eq!(changes.recv().await.unwrap().to, Status::Connecting);
//! // An absent cell of the §4.2 table is a typed error naming status and event.
//! assert!(manager.apply(HostId(1), Event::WaitedTooLong, "no such transition").await.is_err());
//! manager.stop().await; // every task of the manager ended
//! # }
//! ```

pub mod config;
pub mod error;
pub mod investigate;
mod manager;
mod monitor;
pub mod oobm;

pub use config::LivenessConfig;
pub use error::{ConfigError, ManagerError};
pub use manager::{AgentManager, HISTORY_LIMIT, HostDownAlert, Ports, StatusChange, StatusChanges};

/// Internals for this crate's benchmarks (feature `internals`): not a stable API.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::monitor::PingMonitor;
}
pub use oobm::Oobm;
