//! `CommandSink`: where an attache delivers what comes from its host.
//!
//! The agent manager implements it. The command path is a plain call (it runs for every ping of
//! every host); only the connect of a connected agent is async, since the manager may need to talk
//! to the host before it answers.

use cloudha_protocol::{Answer, Command, HostId, Sequence, StartupAnswer, StartupCommand};

use crate::attache::AttacheHandle;
use crate::error::LinkError;

/// Receives inbound commands and link events from attaches.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait CommandSink: Send + Sync {
    /// Commands from `host` (pings included) in one batch with its sequence. Returns the answers
    /// to send back, one per command, for a connected agent (a `PingAnswer` for a ping); a direct
    /// attache discards them, so the sink may return none.
    fn on_commands(&self, host: HostId, seq: Sequence, commands: &[Command]) -> Vec<Answer>;

    /// A connected agent sent its Startup on a new link. The attache is already reading from the
    /// link (so the sink may send requests through it). Returns the StartupAnswer to write back;
    /// `success: false` closes the link.
    async fn on_connect(&self, attache: AttacheHandle, startup: StartupCommand) -> StartupAnswer;

    /// The link of attache `generation` of `host` was lost (peer closed, I/O error or a bad
    /// frame). Not called when the attache was disconnected by [`crate::Attache::disconnect`].
    fn on_link_lost(&self, host: HostId, generation: u64, error: &LinkError);
}
