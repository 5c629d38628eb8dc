//! The `Listener` contract (spec §2): every callback has a default, so a listener implements
//! only what it needs.
//!
//! Which callbacks are async, and why: only [`Listener::process_connect`] is, because a listener
//! may have to talk to the host while it connects (send it parameters, read its state). Every
//! other callback is a plain call: the command path runs for every ping of every host and must
//! cost no allocation or task switch, and the lifecycle callbacks only update the listener's state.
//! A listener that needs to do slow work from a plain callback hands it to its own task.

use std::time::Duration;

use cloudha_protocol::{
    AgentControlCommand, Answer, ClusterId, Command, HostId, Sequence, StartupCommand, Status,
};

use crate::error::ConnectError;

/// Hears commands, answers and connection events of hosts (CloudStack's `Listener`).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait Listener: Send + Sync {
    /// Answers from `host` to request `seq`: to a per-request listener for its own request, and to
    /// every command monitor for every answer. The return value is only logged.
    fn process_answers(&self, host: HostId, seq: Sequence, answers: &[Answer]) -> bool {
        let _ = (host, seq, answers);
        false
    }

    /// Commands from `host`, pings included. Every command monitor always runs; the return value
    /// is only logged.
    fn process_commands(&self, host: HostId, seq: Sequence, commands: &[Command]) -> bool {
        let _ = (host, seq, commands);
        false
    }

    /// An agent control command; the first listener that returns an answer wins.
    fn process_control_command(
        &self,
        host: HostId,
        command: &AgentControlCommand,
    ) -> Option<Answer> {
        let _ = (host, command);
        None
    }

    /// A host connects (once per Startup, in registration order). An error refuses the connect and
    /// says whether the host is disconnected or shut down; later listeners are not called.
    async fn process_connect(
        &self,
        host: HostId,
        startup: &StartupCommand,
        rebalance: bool,
    ) -> Result<(), ConnectError> {
        let _ = (host, startup, rebalance);
        Ok(())
    }

    /// A host was disconnected; `status` is the status it goes to.
    fn process_disconnect(&self, host: HostId, status: Status) -> bool {
        let _ = (host, status);
        false
    }

    /// A host record was added.
    fn process_host_added(&self, host: HostId) {
        let _ = host;
    }

    /// A host is about to be removed.
    fn process_host_about_to_be_removed(&self, host: HostId) {
        let _ = host;
    }

    /// A host was removed.
    fn process_host_removed(&self, host: HostId, cluster: Option<ClusterId>) {
        let _ = (host, cluster);
    }

    /// A per-request listener's request `seq` got no answer in time. Called once; the listener is
    /// then dropped.
    fn process_timeout(&self, host: HostId, seq: Sequence) -> bool {
        let _ = (host, seq);
        false
    }

    /// A per-request listener that keeps listening after its first answer.
    fn is_recurring(&self) -> bool {
        false
    }

    /// How long a per-request listener waits for its answer: `None` = for ever (CloudStack's −1),
    /// `Some(Duration::ZERO)` = the registry's default (CloudStack fired at once; a documented bug).
    fn timeout(&self) -> Option<Duration> {
        None
    }
}
