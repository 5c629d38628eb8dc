//! The host `Status` state machine (spec `cloudstack-ha.md` §4.1, §4.2).
//!
//! The transition table is data ([`TRANSITIONS`]), copied cell by cell from §4.2, so that tools can
//! print it and tests can check it against the spec. [`Status::transition`] is the one lookup.

use serde::{Deserialize, Serialize};

use crate::error::TransitionError;

/// Host status (CloudStack's `Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Status {
    /// The host record is being created.
    Creating,
    /// The agent connected; the connect flow is running.
    Connecting,
    /// Pinging and usable.
    Up,
    /// Proven down: its VMs may be restarted elsewhere.
    Down,
    /// Not connected to a management server, state not alarming yet.
    Disconnected,
    /// Could not be determined; needs attention. VMs are never restarted from Alert.
    Alert,
    /// Removed by the operator.
    Removed,
    /// Creation failed.
    Error,
    /// Being handed to another management server.
    Rebalancing,
    /// Unknown (CloudStack's placeholder for "no status").
    Unknown,
}

impl Status {
    /// Every status, in declaration order.
    pub const ALL: [Status; 10] = [
        Status::Creating,
        Status::Connecting,
        Status::Up,
        Status::Down,
        Status::Disconnected,
        Status::Alert,
        Status::Removed,
        Status::Error,
        Status::Rebalancing,
        Status::Unknown,
    ];

    /// CloudStack's name of the status.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "Creating",
            Status::Connecting => "Connecting",
            Status::Up => "Up",
            Status::Down => "Down",
            Status::Disconnected => "Disconnected",
            Status::Alert => "Alert",
            Status::Removed => "Removed",
            Status::Error => "Error",
            Status::Rebalancing => "Rebalancing",
            Status::Unknown => "Unknown",
        }
    }

    /// Whether a transition into this status records the management server (`updateMS`, §4.1).
    pub const fn update_ms(self) -> bool {
        !matches!(self, Status::Unknown)
    }

    /// Whether a transition into this status checks the previous management server (`checkMS`).
    pub const fn check_ms(self) -> bool {
        matches!(self, Status::Down | Status::Disconnected | Status::Alert)
    }

    /// Whether the host has lost its connection in this status (`lostConnection`).
    pub const fn lost_connection(self) -> bool {
        matches!(
            self,
            Status::Down
                | Status::Disconnected
                | Status::Alert
                | Status::Removed
                | Status::Error
                | Status::Rebalancing
        )
    }

    /// The next status for `event` from `from` (`None` = the host has no status yet).
    ///
    /// # Errors
    /// [`TransitionError`] naming the status and the event when §4.2 has no such transition.
    pub fn transition(from: Option<Status>, event: Event) -> Result<Status, TransitionError> {
        TRANSITIONS
            .iter()
            .find(|t| t.from == from && t.event == event)
            .map(|t| t.to)
            .ok_or(TransitionError { from, event })
    }

    /// [`Status::transition`] from an existing status.
    ///
    /// # Errors
    /// As [`Status::transition`].
    pub fn next(self, event: Event) -> Result<Status, TransitionError> {
        Status::transition(Some(self), event)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = crate::error::ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| crate::error::ParseNameError::new("status", s))
    }
}

/// Host status events (CloudStack's `Status.Event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Event {
    /// An agent connected (Startup received).
    AgentConnected,
    /// The connect flow finished (Ready answered).
    Ready,
    /// The host answered a ping, or an investigation found it Up.
    Ping,
    /// The host fell behind on ping.
    PingTimeout,
    /// The agent's link closed, or investigation found the agent dead but the host alive.
    AgentDisconnected,
    /// The agent asked to shut down, or the manager disconnects it without investigation.
    ShutdownRequested,
    /// Investigation proved the host down.
    HostDown,
    /// The management server stopped or started.
    ManagementServerDown,
    /// A Disconnected host stayed so longer than `alert.wait`.
    WaitedTooLong,
    /// The operator removed the host.
    Remove,
    /// Agent rebalancing to another management server was requested.
    RequestAgentRebalance,
    /// Agent rebalancing started.
    StartAgentRebalance,
    /// Agent rebalancing completed.
    RebalanceCompleted,
    /// Agent rebalancing failed.
    RebalanceFailed,
    /// Host creation failed.
    Error,
}

impl Event {
    /// Every event, in the column order of §4.2 (then `RequestAgentRebalance`, which has no transitions).
    pub const ALL: [Event; 15] = [
        Event::AgentConnected,
        Event::Ready,
        Event::Ping,
        Event::PingTimeout,
        Event::AgentDisconnected,
        Event::ShutdownRequested,
        Event::HostDown,
        Event::ManagementServerDown,
        Event::WaitedTooLong,
        Event::Remove,
        Event::StartAgentRebalance,
        Event::RebalanceCompleted,
        Event::RebalanceFailed,
        Event::Error,
        Event::RequestAgentRebalance,
    ];

    /// CloudStack's name of the event.
    pub const fn as_str(self) -> &'static str {
        match self {
            Event::AgentConnected => "AgentConnected",
            Event::Ready => "Ready",
            Event::Ping => "Ping",
            Event::PingTimeout => "PingTimeout",
            Event::AgentDisconnected => "AgentDisconnected",
            Event::ShutdownRequested => "ShutdownRequested",
            Event::HostDown => "HostDown",
            Event::ManagementServerDown => "ManagementServerDown",
            Event::WaitedTooLong => "WaitedTooLong",
            Event::Remove => "Remove",
            Event::RequestAgentRebalance => "RequestAgentRebalance",
            Event::StartAgentRebalance => "StartAgentRebalance",
            Event::RebalanceCompleted => "RebalanceCompleted",
            Event::RebalanceFailed => "RebalanceFailed",
            Event::Error => "Error",
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Event {
    type Err = crate::error::ParseNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Event::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| crate::error::ParseNameError::new("event", s))
    }
}

/// One cell of the transition table: `from` + `event` → `to`. `from: None` is the (null) row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// The status before, `None` for a host that has none yet.
    pub from: Option<Status>,
    /// The event.
    pub event: Event,
    /// The status after.
    pub to: Status,
}

const fn t(from: Option<Status>, event: Event, to: Status) -> Transition {
    Transition { from, event, to }
}

use Event as E;
use Status as S;

/// The whole transition table of §4.2, row by row. Cells not listed have no transition.
pub const TRANSITIONS: &[Transition] = &[
    // (null)
    t(None, E::AgentConnected, S::Connecting),
    // Creating
    t(Some(S::Creating), E::AgentConnected, S::Connecting),
    t(Some(S::Creating), E::Error, S::Error),
    // Connecting
    t(Some(S::Connecting), E::AgentConnected, S::Connecting),
    t(Some(S::Connecting), E::Ready, S::Up),
    t(Some(S::Connecting), E::Ping, S::Connecting),
    t(Some(S::Connecting), E::PingTimeout, S::Alert),
    t(Some(S::Connecting), E::AgentDisconnected, S::Alert),
    t(Some(S::Connecting), E::ShutdownRequested, S::Disconnected),
    t(Some(S::Connecting), E::HostDown, S::Down),
    t(
        Some(S::Connecting),
        E::ManagementServerDown,
        S::Disconnected,
    ),
    // Up
    t(Some(S::Up), E::AgentConnected, S::Connecting),
    t(Some(S::Up), E::Ping, S::Up),
    t(Some(S::Up), E::PingTimeout, S::Alert),
    t(Some(S::Up), E::AgentDisconnected, S::Alert),
    t(Some(S::Up), E::ShutdownRequested, S::Disconnected),
    t(Some(S::Up), E::HostDown, S::Down),
    t(Some(S::Up), E::ManagementServerDown, S::Disconnected),
    t(Some(S::Up), E::Remove, S::Removed),
    t(Some(S::Up), E::StartAgentRebalance, S::Rebalancing),
    // Disconnected
    t(Some(S::Disconnected), E::AgentConnected, S::Connecting),
    t(Some(S::Disconnected), E::Ping, S::Up),
    t(Some(S::Disconnected), E::PingTimeout, S::Alert),
    t(Some(S::Disconnected), E::AgentDisconnected, S::Disconnected),
    t(Some(S::Disconnected), E::ShutdownRequested, S::Disconnected),
    t(Some(S::Disconnected), E::HostDown, S::Down),
    t(
        Some(S::Disconnected),
        E::ManagementServerDown,
        S::Disconnected,
    ),
    t(Some(S::Disconnected), E::WaitedTooLong, S::Alert),
    t(Some(S::Disconnected), E::Remove, S::Removed),
    // Down
    t(Some(S::Down), E::AgentConnected, S::Connecting),
    t(Some(S::Down), E::PingTimeout, S::Down),
    t(Some(S::Down), E::AgentDisconnected, S::Down),
    t(Some(S::Down), E::HostDown, S::Down),
    t(Some(S::Down), E::ManagementServerDown, S::Down),
    t(Some(S::Down), E::Remove, S::Removed),
    // Alert
    t(Some(S::Alert), E::AgentConnected, S::Connecting),
    t(Some(S::Alert), E::Ping, S::Up),
    t(Some(S::Alert), E::AgentDisconnected, S::Alert),
    t(Some(S::Alert), E::ShutdownRequested, S::Disconnected),
    t(Some(S::Alert), E::HostDown, S::Down),
    t(Some(S::Alert), E::ManagementServerDown, S::Alert),
    t(Some(S::Alert), E::Remove, S::Removed),
    // Rebalancing
    t(Some(S::Rebalancing), E::AgentConnected, S::Connecting),
    t(Some(S::Rebalancing), E::AgentDisconnected, S::Rebalancing),
    t(
        Some(S::Rebalancing),
        E::ManagementServerDown,
        S::Disconnected,
    ),
    t(Some(S::Rebalancing), E::RebalanceCompleted, S::Connecting),
    t(Some(S::Rebalancing), E::RebalanceFailed, S::Disconnected),
    // Error
    t(Some(S::Error), E::AgentConnected, S::Connecting),
];
