//! VM states and the HA work enums (spec `cloudstack-ha.md` §5.1).

use serde::{Deserialize, Serialize};

use crate::ids::VmId;

/// The power state of a VM as a hypervisor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum VmPowerState {
    /// Running.
    PowerOn,
    /// Not running.
    PowerOff,
    /// The hypervisor could not tell.
    PowerUnknown,
    /// The VM was missing from the host's report.
    PowerReportMissing,
}

/// One VM's power state in a Startup or PingRouting report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VmStateReport {
    /// The VM.
    pub vm: VmId,
    /// Its power state on the reporting host.
    pub power: VmPowerState,
}

impl VmPowerState {
    /// CloudStack's name of the power state.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PowerOn => "PowerOn",
            Self::PowerOff => "PowerOff",
            Self::PowerUnknown => "PowerUnknown",
            Self::PowerReportMissing => "PowerReportMissing",
        }
    }

    fn from_name(s: &[u8]) -> Option<Self> {
        Some(match s {
            b"PowerOn" => Self::PowerOn,
            b"PowerOff" => Self::PowerOff,
            b"PowerUnknown" => Self::PowerUnknown,
            b"PowerReportMissing" => Self::PowerReportMissing,
            _ => return None,
        })
    }
}

/// Serde support for a list of VM power-state reports in the compact wire form
/// `"101=PowerOn,102=PowerOff"` (one JSON string: a routing ping of a busy host carries many, and
/// an array of objects costs several times more to encode and decode). On receipt the verbose
/// form, an array of `{"vm":101,"power":"PowerOn"}`, is accepted too.
pub mod vm_states_compact {
    use std::fmt::Write as _;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    use super::{VmPowerState, VmStateReport};
    use crate::ids::VmId;

    /// Writes the compact form.
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(states: &[VmStateReport], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(states.len() * 16);
        for (i, st) in states.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{}={}", st.vm.0, st.power.as_str());
        }
        s.serialize_str(&out)
    }

    /// Reads the compact or the verbose form.
    ///
    /// # Errors
    /// A custom error naming the entry that is wrong.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<VmStateReport>, D::Error> {
        d.deserialize_any(StatesVisitor)
    }

    /// Parses the compact form.
    ///
    /// # Errors
    /// A message naming the bad entry.
    pub fn parse(s: &str) -> Result<Vec<VmStateReport>, String> {
        if s.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(s.len() / 14 + 1);
        for entry in s.split(',') {
            let parsed = entry.split_once('=').and_then(|(id, power)| {
                Some(VmStateReport {
                    vm: VmId(id.parse().ok()?),
                    power: VmPowerState::from_name(power.as_bytes())?,
                })
            });
            match parsed {
                Some(r) => out.push(r),
                None => {
                    return Err(format!(
                        "invalid VM state entry `{entry}` (expected `<vm id>=<PowerState>`)"
                    ));
                }
            }
        }
        Ok(out)
    }

    struct StatesVisitor;

    impl<'de> Visitor<'de> for StatesVisitor {
        type Value = Vec<VmStateReport>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string `<vm id>=<PowerState>,...` or an array of VM state reports")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse(v).map_err(E::custom)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(r) = seq.next_element::<VmStateReport>()? {
                out.push(r);
            }
            Ok(out)
        }
    }
}

/// The orchestration state of a VM (CloudStack's `VirtualMachine.State`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum VmState {
    /// Being started.
    Starting,
    /// Running on a host.
    Running,
    /// Being stopped.
    Stopping,
    /// Stopped.
    Stopped,
    /// Destroyed, not yet expunged.
    Destroyed,
    /// Being expunged.
    Expunging,
    /// Being migrated.
    Migrating,
    /// In error.
    Error,
    /// Unknown.
    Unknown,
    /// Shut down from inside the guest.
    Shutdown,
}

/// The kind of an HA work item (CloudStack's `WorkType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WorkType {
    /// Migrate the VM away from its host (evacuation).
    Migration,
    /// Stop the VM (legacy).
    Stop,
    /// Stop the VM if it has not changed since scheduling.
    CheckStop,
    /// Force-stop the VM.
    ForceStop,
    /// Destroy the VM.
    Destroy,
    /// Restart the VM elsewhere.
    #[serde(rename = "HA")]
    Ha,
}

/// The step an HA work item is at (CloudStack's `Step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WorkStep {
    /// Ready to act without further investigation.
    Scheduled,
    /// The VM must be investigated (and fenced if it may run) before acting.
    Investigating,
    /// Fencing the VM's host.
    Fencing,
    /// Stopping the VM.
    Stopping,
    /// Restarting the VM.
    Restarting,
    /// Migrating the VM.
    Migrating,
    /// Cancelled (the host came back).
    Cancelled,
    /// Finished.
    Done,
    /// Failed for good.
    Error,
}

impl WorkStep {
    /// Final steps: the item is never taken again.
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Cancelled | Self::Error)
    }
}

/// Why HA work was scheduled (CloudStack's `ReasonType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WorkReason {
    /// Not known.
    Unknown,
    /// The host enters maintenance.
    HostMaintenance,
    /// The host was proven down.
    HostDown,
    /// The operator declared the host degraded (dead).
    HostDegraded,
    /// The VM was reported off on a live host.
    VmStoppedOnUpHost,
}

impl WorkReason {
    /// Reasons whose pending investigation is cancelled when the host turns out Up (§5.4).
    pub const fn is_cancellable(self) -> bool {
        matches!(
            self,
            Self::HostMaintenance | Self::HostDown | Self::HostDegraded
        )
    }
}
