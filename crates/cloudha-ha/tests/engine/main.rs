//! The liveness and HA engine (cloudha-liveness, cloudha-ha over cloudha-ports) through its
//! public API, under paused time, with fake or mock ports, the real registry and direct attaches.
//! The fakes shared with other tests come from `cloudha-testkit`; a fake only one file needs
//! stays in that file.

mod adversary;
mod cloudstack_ported;
mod config;
mod connect;
mod fencing;
mod ha;
mod ha_fencing;
mod host_store_faults;
mod investigation;
mod lifecycle;
mod monitor;
mod start_proof;
mod store_faults;
mod verdicts;
