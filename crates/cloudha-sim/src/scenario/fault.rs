//! Faults of a scenario: their kinds, what each kind aims at, and a resolved fault.

use std::time::Duration;

use serde::Deserialize;

/// What a fault does (see `docs/scenarios.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The host stops at once; its link goes silent.
    PowerOff,
    /// The host boots; its agent connects again.
    PowerOn,
    /// The agent dies and its link closes; VMs keep running.
    AgentCrash,
    /// The agent starts again.
    AgentRestart,
    /// Manager↔host traffic dropped both ways.
    MgmtPartition,
    /// Ends a management partition.
    MgmtHeal,
    /// Host↔its cluster neighbours traffic dropped.
    NeighbourPartition,
    /// Ends a neighbour partition.
    NeighbourHeal,
    /// Heartbeat writes fail.
    StorageLoss,
    /// Heartbeat writes work again.
    StorageHeal,
    /// Only that host's pings are dropped.
    PingLoss,
    /// That host's pings are delayed by `delay`.
    PingDelay,
    /// The host's BMC does not answer.
    BmcUnreachable,
    /// The host's BMC carries out an Off but answers it with an error (a lost answer); power
    /// status reads still work.
    BmcOffFails,
    /// Lying part: the BMCs of those hosts report Off and accept Off while the hosts run on.
    BmcLies,
    /// Lying part: every neighbour reports the heartbeat of those hosts dead (CheckOnHost and
    /// Fence answers, ages included) while it is fresh.
    NeighbourLies,
    /// Lying part: the BMCs of those hosts report On and ignore Off, whatever the truth.
    BmcStuck,
    /// No VM can start on those hosts.
    NoCapacity,
    /// A VM process dies on a live host.
    VmCrash,
    /// The manager process restarts (stores survive).
    ManagerRestart,
}

impl FaultKind {
    /// The fault that undoes this one after its `duration`.
    pub const fn heal(self) -> Option<FaultKind> {
        Some(match self {
            Self::PowerOff => Self::PowerOn,
            Self::AgentCrash => Self::AgentRestart,
            Self::MgmtPartition => Self::MgmtHeal,
            Self::NeighbourPartition => Self::NeighbourHeal,
            Self::StorageLoss => Self::StorageHeal,
            Self::PingLoss
            | Self::PingDelay
            | Self::BmcUnreachable
            | Self::BmcOffFails
            | Self::BmcLies
            | Self::NeighbourLies
            | Self::BmcStuck
            | Self::NoCapacity => {
                return None;
            }
            _ => return None,
        })
    }

    pub(crate) fn needs(self) -> Target {
        match self {
            Self::VmCrash => Target::Vms,
            Self::ManagerRestart => Target::Nothing,
            _ => Target::Hosts,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Hosts,
    Vms,
    Nothing,
}

/// One fault, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// When, from the start.
    pub at: Duration,
    /// What.
    pub kind: FaultKind,
    /// Host names.
    pub hosts: Vec<String>,
    /// VM names.
    pub vms: Vec<String>,
    /// Heals after this long.
    pub duration: Option<Duration>,
    /// For `ping_delay`.
    pub delay: Option<Duration>,
}
