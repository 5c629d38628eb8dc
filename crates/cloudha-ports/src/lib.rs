//! # cloudha-ports
//!
//! What the agent manager (`cloudha-liveness`) and the HA manager (`cloudha-ha`) share, and what
//! an embedder implements to plug the engine into its own cloud: the records (hosts, VMs, HA
//! work items, what death proofs said), the store ports ([`HostStore`], [`HaWorkStore`]), the
//! alert port ([`AlertSink`]), the probe port ([`HostCommander`]), the investigator port
//! ([`Investigator`]) and the out-of-band management port ([`OutOfBandManagement`]), with their
//! errors. In-memory stores ([`InMemoryHostStore`], [`InMemoryHaWorkStore`]) are the default
//! implementations. Every trait has a mockall mock behind the `mock` feature.

pub mod alert;
pub mod error;
pub mod host;
pub mod oobm;
pub mod proof;
pub mod time;
pub mod verdict;
pub mod vm;
pub mod work;

pub use alert::{Alert, AlertKind, AlertSink, LogAlerts};
pub use error::{CommandError, StoreError};
pub use host::{HostCache, HostDirectory, HostRecord, HostStore, InMemoryHostStore};
pub use oobm::{OobError, OutOfBandManagement, PowerState};
pub use proof::{ProofKind, ProofRecord, SelfFenceTimings};
pub use time::{Clock, SystemClock, Timestamp, TokioClock};
pub use verdict::{Finding, HostCommander, HostVerdict, Investigator, VmVerdict};
pub use vm::{StartKey, VmKind, VmRecord};
pub use work::{HaWorkStore, InMemoryHaWorkStore, OwnerId, WorkEvent, WorkItem};

#[cfg(any(test, feature = "mock"))]
pub use alert::MockAlertSink;
#[cfg(any(test, feature = "mock"))]
pub use host::{MockHostDirectory, MockHostStore};
#[cfg(any(test, feature = "mock"))]
pub use oobm::MockOutOfBandManagement;
#[cfg(any(test, feature = "mock"))]
pub use time::MockClock;
#[cfg(any(test, feature = "mock"))]
pub use verdict::{MockHostCommander, MockInvestigator};
#[cfg(any(test, feature = "mock"))]
pub use work::MockHaWorkStore;
