//! Expectations of a scenario, and the proof and alert kinds they may name.

use std::time::Duration;

use cloudha_protocol::{Status, VmState};

/// One expectation, resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// The host enters `status` at some moment in [`after`, `by`].
    HostStatus {
        /// Host name.
        host: String,
        /// The status.
        status: Status,
        /// Earliest.
        after: Duration,
        /// Latest.
        by: Duration,
    },
    /// The host never enters `status`.
    HostNever {
        /// Host name.
        host: String,
        /// The status.
        status: Status,
    },
    /// The VM's last placement at or before `by` has `state` (and host).
    VmState {
        /// VM name.
        vm: String,
        /// Running or Stopped.
        state: VmState,
        /// When.
        by: Duration,
        /// On this host.
        on: Option<String>,
        /// Not on this host.
        not_on: Option<String>,
    },
    /// The VM is never restarted.
    VmNotRestarted {
        /// VM name.
        vm: String,
    },
    /// How many HA work items recorded a death proof of a kind.
    ProofCount {
        /// Proof kind (snake_case: power_fenced, pool_fenced, self_fenced, dead_verdict,
        /// vm_reported_off, operator_word).
        kind: String,
        /// At least.
        min: Option<u64>,
        /// At most.
        max: Option<u64>,
    },
    /// How many calls the host's BMC received (status, off, reset), in ground truth.
    BmcCalls {
        /// Host name.
        host: String,
        /// At least.
        min: Option<u64>,
        /// At most.
        max: Option<u64>,
    },
    /// How many alerts of a kind.
    AlertCount {
        /// Alert kind (snake_case).
        kind: String,
        /// At least.
        min: Option<u64>,
        /// At most.
        max: Option<u64>,
    },
}

/// Proof kinds a `proof` expectation may name.
pub const PROOF_KINDS: &[&str] = &[
    "power_fenced",
    "pool_fenced",
    "self_fenced",
    "dead_verdict",
    "vm_reported_off",
    "operator_word",
];

/// Alert kinds an expectation may name.
pub const ALERT_KINDS: &[&str] = &[
    "host_down",
    "host_disconnected",
    "host_alert",
    "lost_gateway",
    "brake_holds",
    "vm_stopped",
    "ha_restart",
    "ha_restart_failed",
    "fence_failed",
    "ha_gave_up",
    "ha_disabled",
];
