//! # cloudha-registry
//!
//! The listener registry and dispatch: CloudStack's agent manager hands every command from every
//! host to a list of listeners (`_cmdMonitors`) and every connection event to another
//! (`_hostMonitors`); the behind-on-ping monitor is one of them. This crate is that registry,
//! reusable by any service.
//!
//! - [`Listener`]: the whole contract of spec §2, every callback with a default. Only
//!   `process_connect` is async (a listener may talk to the host while it connects); the command
//!   path is a plain call because it runs for every ping of every host.
//! - [`Registry`]: registration by id into either or both lists, priority listeners first (then
//!   registration order), unregister by id from every list, per-request listeners with timeouts,
//!   and dispatch with no lock held while a listener runs. A listener that panics or overruns its
//!   time budget is logged, counted ([`Registry::stats`]) and the others still run.
//! - [`ListenerRegistry`]: the trait the manager composes the registry behind (mockable with the
//!   `mock` feature: `MockListenerRegistry`, `MockListener`).
//!
//! Depends on `cloudha-protocol` only.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use cloudha_protocol::{Command, HostId, PingCommand, Sequence};
//! use cloudha_registry::{Interest, Listener, ListenerRegistry, Registry};
//!
//! #[derive(Default)]
//! struct PingCounter(AtomicU64);
//! impl Listener for PingCounter {
//!     fn process_commands(&self, _: HostId, _: Sequence, commands: &[Command]) -> bool {
//!         self.0.fetch_add(commands.iter().filter(|c| c.is_ping()).count() as u64, Ordering::Relaxed);
//!         false
//!     }
//! }
//!
//! let registry = Registry::default();
//! let counter = Arc::new(PingCounter::default());
//! let id = registry.register(counter.clone(), Interest::COMMANDS, false);
//! registry.dispatch_commands(HostId(1), Sequence(0), &[PingCommand { host_id: HostId(1) }.into()]);
//! assert_eq!(counter.0.load(Ordering::Relaxed), 1);
//! assert!(registry.unregister(id));
//! ```

mod error;
mod listener;
mod registry;

pub use error::{ConnectError, ConnectRefused, Refusal};
pub use listener::Listener;
#[cfg(any(test, feature = "mock"))]
pub use listener::MockListener;
#[cfg(any(test, feature = "mock"))]
pub use registry::MockListenerRegistry;
pub use registry::{Interest, ListenerRegistry, ListenerStats, Registry, RegistryConfig};
