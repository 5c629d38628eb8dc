//! The test harness: a manager over an in-memory store, the real registry, recording alert and
//! HA ports, a scripted investigator, and fake direct hosts.
//!
//! By kind of fake: `recording` (alerts, what VM-HA would see, a counting fencer), `hosts` (a
//! late host directory, a scripted investigator, a fake direct host), `commander` (scripted
//! probes), `faulty_hosts` (a host store that fails on demand), `bmc` (a scripted BMC) and `harness` (the manager wired over them).

mod bmc;
mod commander;
mod faulty_hosts;
mod harness;
mod hosts;
mod recording;

pub(crate) use bmc::*;
pub(crate) use commander::*;
pub(crate) use faulty_hosts::*;
pub(crate) use harness::*;
pub(crate) use hosts::*;
pub(crate) use recording::*;
