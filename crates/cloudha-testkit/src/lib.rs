//! Fakes for testing code built on cloudha, the ones cloudha's own tests use.
//!
//! The in-memory stores are not here: `InMemoryHostStore` and `InMemoryHaWorkStore`
//! (`cloudha-ports`) and `InMemoryVms` (`cloudha-ha`) are the default implementations of their
//! ports. The fakes here wrap them (to fail on demand, to record) or sit beside them:
//!
//! - [`alerts`]: [`RecordingAlerts`], an `AlertSink` keeping what was raised and cleared.
//! - [`hosts`]: [`FakeHost`], a directly managed host whose behaviour a test switches, and
//!   [`LateHosts`], a host directory set once the agent manager exists.
//! - [`investigator`]: [`ScriptedInvestigator`], whose host and VM verdicts a test sets.
//! - [`commander`]: [`FakeCommander`], whose hosts answer probes (heartbeat checks, ping tests,
//!   fence commands) from a script.
//! - [`bmc`]: [`FakeBmc`], a scripted BMC behind the out-of-band management port.
//! - [`stores`]: [`FaultyHosts`] and [`FlakyWork`], the in-memory host and work stores behind
//!   knobs that make them fail, answer late or hang.
//! - [`harness`]: [`Harness`], an agent manager over an in-memory store, the real registry and
//!   the fakes above on one paused-time clock; [`agent_over`] for HA tests that only need an
//!   agent manager to move host status; [`clock`] and [`tokio_clock`].
//! - `fence` (feature `ha`): `ScriptedFencer`, and `CountingFencer` around a real fencer.
//! - `vms` (feature `ha`): `RecordingVms`, the in-memory orchestrator recording every start (with
//!   the proof it was handed), stop and destroy.
//!
//! Everything is meant for tokio's paused time (`#[tokio::test(start_paused = true)]`): delays
//! are `tokio::time::sleep`s and timestamps come from [`tokio_clock`].
//!
//! ```
//! use cloudha_liveness::LivenessConfig;
//! use cloudha_ports::*;
//! use cloudha_protocol::*;
//! use cloudha_testkit::Harness;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let h = Harness::new(LivenessConfig::default());
//! h.manager.start().await.unwrap();
//! let host = h.add_up(1, HostType::Routing, ResourceState::Enabled).await;
//! assert_eq!(h.status(HostId(1)), Some(Status::Up));
//! host.power_off();
//! h.shutdown().await;
//! # }
//! ```

pub mod alerts;
pub mod bmc;
pub mod commander;
#[cfg(feature = "ha")]
pub mod fence;
pub mod harness;
pub mod hosts;
pub mod investigator;
pub mod stores;
#[cfg(feature = "ha")]
pub mod vms;

pub use alerts::RecordingAlerts;
pub use bmc::{Bmc, FakeBmc};
pub use commander::{ALIVE, DEAD, FakeCommander, Probe, Says, dead_for};
#[cfg(feature = "ha")]
pub use fence::{CountingFencer, ScriptedFencer};
pub use harness::{Harness, RecordingHa, Wiring, agent_over, clock, tokio_clock};
pub use hosts::{FakeHost, LateHosts};
pub use investigator::ScriptedInvestigator;
pub use stores::{FaultyHosts, FlakyWork};
#[cfg(feature = "ha")]
pub use vms::{RecordingVms, StartCall, StartMode};
