//! `ServerResource`: what a host looks like to the code that talks to it.
//!
//! A directly managed host (XenServer, VMware, simulator) is polled in-process by its direct
//! attache through this trait; an agent daemon ([`crate::AgentClient`]) uses it on the host side.

use cloudha_protocol::{Answer, Command, HostId};

/// A host's resource (CloudStack's `ServerResource`).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait ServerResource: Send + Sync {
    /// The startup commands the host sends when it (re)connects: a Startup command, typically
    /// with the VM power states of a routing host.
    async fn initialize(&self) -> Vec<Command>;

    /// The host's current status as a ping (`Ping` or `PingRouting`), or `None` when it cannot be
    /// reached. Called by the PingTask every `ping.interval`.
    async fn get_current_status(&self, host: HostId) -> Option<Command>;

    /// Executes one command on the host.
    async fn execute(&self, command: Command) -> Answer;

    /// The attache was disconnected; release whatever the resource holds.
    fn disconnected(&self);
}
