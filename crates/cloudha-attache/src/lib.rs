//! # cloudha-attache
//!
//! One attache per managed host: the link the manager uses to reach it, and the liveness source
//! that feeds the manager its pings.
//!
//! - [`DirectAttache`]: the manager polls a host's [`ServerResource`] in-process with exactly one
//!   PingTask per attache (CloudStack's `DirectAgentAttache.PingTask`): every `ping.interval`,
//!   `get_current_status` retried `host.ping.retry.count` times every `host.ping.retry.timer`; a
//!   ping goes to the [`CommandSink`]; nothing at all is a warning and no event.
//! - Connected attaches: an agent on a byte stream speaking the protocol codec
//!   ([`accept_stream`], the TCP acceptor [`listen`]); inbound pings go to the sink and its answer
//!   is written back; link loss or a bad frame is reported to the sink and closes only that link.
//! - [`AgentClient`]: the agent side of a connected link.
//!
//! Both kinds sit behind one [`AttacheHandle`] implementing [`Attache`]: request sequences,
//! sequential requests with one in flight, per-request waits, and every waiter failing at once on
//! disconnect.
//!
//! Depends on `cloudha-protocol` only; it defines the traits it needs ([`ServerResource`],
//! [`CommandSink`], [`Connector`]). Every task is owned by a [`Tasks`] set and cancellable.
//! With the `mock` feature, `MockServerResource`, `MockCommandSink`, `MockAttache` and
//! `MockConnector` are exported for downstream tests.
//!
//! ```
//! use std::sync::Arc;
//! use cloudha_attache::{DirectAttache, DirectConfig, Tasks, Attache};
//! # use cloudha_protocol::*;
//! # struct Host; struct Sink;
//! # #[async_trait::async_trait] impl cloudha_attache::ServerResource for Host {
//! #   async fn initialize(&self) -> Vec<Command> { vec![] }
//! #   async fn get_current_status(&self, host: HostId) -> Option<Command> { Some(PingCommand { host_id: host }.into()) }
//! #   async fn execute(&self, _: Command) -> Answer { Answer::ok() }
//! #   fn disconnected(&self) {}
//! # }
//! # #[async_trait::async_trait] impl cloudha_attache::CommandSink for Sink {
//! #   fn on_commands(&self, _: HostId, _: Sequence, _: &[Command]) -> Vec<Answer> { vec![] }
//! #   async fn on_connect(&self, _: cloudha_attache::AttacheHandle, s: StartupCommand) -> StartupAnswer { cloudha_attache::accept_startup(&s, std::time::Duration::from_secs(60)) }
//! #   fn on_link_lost(&self, _: HostId, _: u64, _: &cloudha_attache::LinkError) {}
//! # }
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let tasks = Tasks::new();
//! let attache = DirectAttache::spawn(HostId(1), Arc::new(Host), Arc::new(Sink), DirectConfig::default(), &tasks);
//! attache.on_startup_answer(&StartupAnswer { success: true, host_id: HostId(1), ping_interval_ms: 60_000, details: String::new() });
//! attache.disconnect();
//! tasks.shutdown().await;
//! # }
//! ```

mod agent;
mod attache;
mod connected;
mod direct;
mod error;
mod resource;
mod sink;
mod tasks;

#[cfg(any(test, feature = "mock"))]
pub use agent::MockConnector;
pub use agent::{AgentClient, AgentConfig, AgentHandle, AgentStreamObj, Connector, TcpConnector};
#[cfg(any(test, feature = "mock"))]
pub use attache::MockAttache;
pub use attache::{Attache, AttacheHandle, AttacheKind, DEFAULT_WAIT, Request, send_one};
pub use connected::{AgentStream, ConnectedConfig, accept_startup, accept_stream, listen};
pub use direct::{DirectAttache, DirectConfig};
pub use error::{LinkError, RequestError};
#[cfg(any(test, feature = "mock"))]
pub use resource::MockServerResource;
pub use resource::ServerResource;
pub use sink::CommandSink;
#[cfg(any(test, feature = "mock"))]
pub use sink::MockCommandSink;
pub use tasks::Tasks;
