//! Commands (manager ↔ agent requests) and their answers.
//!
//! Both are serde enums, internally tagged by `type` in snake_case:
//! `{"type":"ping_routing","host_id":7,...}`. Unknown fields are ignored on receipt (forward
//! compatibility), whatever JSON value they hold; an unknown `type` is a typed error
//! ([`crate::ItemError::UnknownType`]), and so is a second `type` key
//! ([`crate::ItemError::DuplicateType`]).
//! The codec decodes each item with [`Command::from_json`] / [`Answer::from_json`], which read the
//! tag first and then decode the payload struct directly (no intermediate buffering), and agree
//! with serde's derive on every input.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ItemError;
use crate::host::{HostType, HypervisorType};
use crate::ids::{ClusterId, HostId, PodId, VmId, ZoneId};
use crate::vm::{VmPowerState, VmStateReport};

macro_rules! tagged_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident($payload:ty) = $tag:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type")]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $tag)] $variant($payload), )+
        }

        impl $name {
            /// Every wire `type` tag of this enum.
            pub const TYPE_NAMES: &'static [&'static str] = &[$($tag),+];

            /// This value's wire `type` tag.
            pub const fn type_name(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => $tag, )+
                }
            }

            /// Decodes one JSON object, as serde's derive would (the two agree on every input;
            /// `tests/agreement/` checks it).
            ///
            /// An item that starts with its tag, as we encode it (`{"type":"ping",...`), is read
            /// directly: the tag from the text, then the payload struct, with no buffering of the
            /// item. Any other shape (the tag elsewhere, the sequence form `["ping",7]`), and any
            /// item the direct read refuses, is decided by serde's derive itself.
            ///
            /// # Errors
            /// [`ItemError`] for invalid JSON, a missing, unknown or repeated `type`, or a bad
            /// payload (unknown fields are ignored, whatever JSON value they hold, as long as
            /// serde_json can read it as a value).
            pub fn from_json(raw: &str) -> Result<Self, ItemError> {
                let mut direct_error = None;
                if let Some(tag) = crate::item::leading_tag(raw) {
                    match tag {
                        $( $tag => match crate::item::payload::<$payload>(raw) {
                            Ok(p) => return Ok(Self::$variant(p)),
                            Err(crate::item::PayloadError::DuplicateType) => {
                                return Err(ItemError::DuplicateType { what: $what, type_name: $tag });
                            }
                            Err(crate::item::PayloadError::Json(e)) => direct_error = Some(e),
                        }, )+
                        other => {
                            return Err(ItemError::UnknownType { what: $what, type_name: other.to_owned() });
                        }
                    }
                }
                match serde_json::from_str::<Self>(raw) {
                    Ok(v) => Ok(v),
                    Err(e) => Err(Self::item_error(raw, direct_error.unwrap_or(e))),
                }
            }

            /// Names what is wrong with an item serde's derive refused.
            fn item_error(raw: &str, source: serde_json::Error) -> ItemError {
                let scan = crate::item::scan_tags(raw);
                let Some(first) = scan.first else {
                    return ItemError::MissingType { what: $what, source };
                };
                match Self::TYPE_NAMES.iter().find(|t| **t == first) {
                    None => ItemError::UnknownType { what: $what, type_name: first },
                    Some(type_name) if scan.duplicate => ItemError::DuplicateType { what: $what, type_name },
                    Some(type_name) => ItemError::Invalid { what: $what, type_name, source },
                }
            }
        }

        $( impl From<$payload> for $name {
            fn from(v: $payload) -> Self {
                Self::$variant(v)
            }
        } )+
    };
}

tagged_enum! {
    /// A command sent to or from an agent.
    pub enum Command ("command") {
        /// Agent → manager on connect.
        Startup(StartupCommand) = "startup",
        /// Manager → agent after the listeners accepted the connect.
        Ready(ReadyCommand) = "ready",
        /// A direct agent's ping (produced by the PingTask from `ServerResource::get_current_status`).
        Ping(PingCommand) = "ping",
        /// A routing host's ping with its VM power states.
        PingRouting(PingRoutingCommand) = "ping_routing",
        /// Manager → host: are you healthy?
        CheckHealth(CheckHealthCommand) = "check_health",
        /// Manager → neighbour: is the target host's heartbeat alive?
        CheckOnHost(CheckOnHostCommand) = "check_on_host",
        /// Manager → neighbour: confirm the target is fenced (its heartbeat is dead).
        Fence(FenceCommand) = "fence",
        /// Manager → host: can you reach this other host?
        PingTest(PingTestCommand) = "ping_test",
        /// Manager → host: what is this VM's power state?
        CheckVirtualMachine(CheckVirtualMachineCommand) = "check_virtual_machine",
        /// Manager → host: start a VM.
        StartVm(StartVmCommand) = "start_vm",
        /// Manager → host: stop a VM.
        StopVm(StopVmCommand) = "stop_vm",
        /// Agent → manager: I am shutting down (or manager → agent: shut down).
        Shutdown(ShutdownCommand) = "shutdown",
        /// Agent → manager control request, answered by the first listener with an answer.
        AgentControl(AgentControlCommand) = "agent_control",
    }
}

tagged_enum! {
    /// An answer to a [`Command`].
    pub enum Answer ("answer") {
        /// Answer to [`StartupCommand`]: carries the ping interval.
        Startup(StartupAnswer) = "startup_answer",
        /// Answer to a connected agent's ping.
        Ping(PingAnswer) = "ping_answer",
        /// Answer to [`CheckOnHostCommand`], with an explicit `alive` verdict.
        CheckOnHost(CheckOnHostAnswer) = "check_on_host_answer",
        /// Answer to [`FenceCommand`], with an explicit `alive` verdict.
        Fence(FenceAnswer) = "fence_answer",
        /// Answer to [`CheckVirtualMachineCommand`].
        CheckVirtualMachine(CheckVirtualMachineAnswer) = "check_virtual_machine_answer",
        /// Any other answer: success and details.
        Generic(GenericAnswer) = "answer",
    }
}

impl Command {
    /// CloudStack's fixed per-command wait, where the command type has one (spec README:
    /// CheckHealth 50 s, CheckOnHost 20 s). `None`: use the command's own `wait` or the
    /// configured default.
    pub fn fixed_wait(&self) -> Option<Duration> {
        match self {
            Command::CheckHealth(_) => Some(Duration::from_secs(50)),
            Command::CheckOnHost(_) => Some(Duration::from_secs(20)),
            _ => None,
        }
    }

    /// Whether this is a ping (direct or routing).
    pub const fn is_ping(&self) -> bool {
        matches!(self, Command::Ping(_) | Command::PingRouting(_))
    }
}

impl Answer {
    /// Whether the command succeeded.
    pub fn success(&self) -> bool {
        match self {
            Answer::Startup(a) => a.success,
            Answer::Ping(_) => true,
            Answer::CheckOnHost(a) => a.success,
            Answer::Fence(a) => a.success,
            Answer::CheckVirtualMachine(a) => a.success,
            Answer::Generic(a) => a.success,
        }
    }

    /// A failed generic answer with `details`.
    pub fn failure(details: impl Into<String>) -> Self {
        Answer::Generic(GenericAnswer {
            success: false,
            details: details.into(),
        })
    }

    /// A successful generic answer.
    pub fn ok() -> Self {
        Answer::Generic(GenericAnswer {
            success: true,
            details: String::new(),
        })
    }
}

/// Agent → manager on connect (CloudStack's `StartupRoutingCommand` and friends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StartupCommand {
    /// The host record this agent is (assigned when the host was added).
    pub host_id: HostId,
    /// Host name.
    #[serde(default)]
    pub name: String,
    /// Agent version.
    #[serde(default)]
    pub version: String,
    /// Host type; `None` for a plain agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_type: Option<HostType>,
    /// Hypervisor, for routing hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<HypervisorType>,
    /// Placement of the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterId>,
    /// Pod of the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodId>,
    /// Zone of the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<ZoneId>,
    /// Power states of the VMs on a routing host.
    #[serde(default, with = "crate::vm::vm_states_compact")]
    pub vm_states: Vec<VmStateReport>,
}

/// Manager → agent: the connect was accepted; ping every `ping_interval_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartupAnswer {
    /// Accepted.
    pub success: bool,
    /// The host id the manager knows the agent as.
    pub host_id: HostId,
    /// The ping interval in milliseconds.
    pub ping_interval_ms: u64,
    /// Why not, on failure.
    #[serde(default)]
    pub details: String,
}

impl StartupAnswer {
    /// The ping interval.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }
}

/// Manager → agent after the connect listeners ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ReadyCommand {
    /// The host.
    pub host_id: HostId,
}

/// A direct agent's ping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PingCommand {
    /// The pinging host.
    pub host_id: HostId,
}

/// A routing host's ping: VM power states and whether its gateway is reachable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PingRoutingCommand {
    /// The pinging host.
    pub host_id: HostId,
    /// Power state of every VM the hypervisor knows.
    #[serde(default, with = "crate::vm::vm_states_compact")]
    pub vm_states: Vec<VmStateReport>,
    /// Whether the host reaches its default gateway.
    #[serde(default = "yes")]
    pub gateway_accessible: bool,
}

fn yes() -> bool {
    true
}

/// Manager → connected agent, in reply to a ping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PingAnswer {
    /// Management servers the agent should avoid (not Up).
    #[serde(default)]
    pub avoid_ms: Vec<String>,
    /// The agent must redo its connect (Startup) process.
    #[serde(default)]
    pub send_startup: bool,
}

/// Manager → host: health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CheckHealthCommand {}

/// Manager → neighbour: check the target host's storage heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CheckOnHostCommand {
    /// The host being investigated.
    pub target: HostId,
}

/// The answer to [`CheckOnHostCommand`]. `alive` is explicit: `true` means the target's
/// heartbeat is beating. (CloudStack's legacy answer inverted this; we never do.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckOnHostAnswer {
    /// The check could be made.
    pub success: bool,
    /// The target's heartbeat is alive. Meaningful only when `success`.
    pub alive: bool,
    /// Age of the target's newest heartbeat as the checker read it, in milliseconds (`None`:
    /// no stamp found). The manager judges self-fence deadlines from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_age_ms: Option<u64>,
    /// Details.
    #[serde(default)]
    pub details: String,
}

/// Manager → neighbour: confirm the VM's host is fenced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FenceCommand {
    /// The host to fence.
    pub target: HostId,
    /// The VM the fence is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmId>,
}

/// The answer to [`FenceCommand`]: `success` = the target is fenced; `alive` = its heartbeat still beats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FenceAnswer {
    /// The target is fenced.
    pub success: bool,
    /// The target's heartbeat still beats.
    pub alive: bool,
    /// Age of the target's newest heartbeat as the checker read it, in milliseconds (`None`:
    /// no stamp found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_age_ms: Option<u64>,
    /// Details.
    #[serde(default)]
    pub details: String,
}

/// Manager → host: ping another host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PingTestCommand {
    /// The host to ping.
    pub target: HostId,
}

/// Manager → host: what is this VM's power state?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CheckVirtualMachineCommand {
    /// The VM.
    pub vm: VmId,
}

/// The answer to [`CheckVirtualMachineCommand`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckVirtualMachineAnswer {
    /// The check could be made.
    pub success: bool,
    /// The VM's power state.
    pub power: VmPowerState,
    /// Details.
    #[serde(default)]
    pub details: String,
}

/// Manager → host: start a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StartVmCommand {
    /// The VM.
    pub vm: VmId,
    /// Started by HA.
    #[serde(default)]
    pub ha: bool,
}

/// Manager → host: stop a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StopVmCommand {
    /// The VM.
    pub vm: VmId,
    /// Forced stop.
    #[serde(default)]
    pub force: bool,
}

/// Why an agent shuts down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub enum ShutdownReason {
    /// The operator or agent asked for it.
    #[default]
    Requested,
    /// The agent is updating.
    Update,
    /// The host is being deleted.
    DeleteHost,
    /// Unknown.
    Unknown,
}

/// Agent shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ShutdownCommand {
    /// Why.
    #[serde(default)]
    pub reason: ShutdownReason,
    /// Free text.
    #[serde(default)]
    pub details: String,
}

/// An agent control request (answered by the first listener that has an answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AgentControlCommand {
    /// The request name.
    pub name: String,
    /// Parameters.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// A generic answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GenericAnswer {
    /// The command succeeded.
    pub success: bool,
    /// Details.
    #[serde(default)]
    pub details: String,
}
