//! The HA manager, and the agent manager under it (cloudha-ha, cloudha-liveness over
//! cloudha-ports), through their public API, under paused time, with fake or mock ports, the real
//! registry and direct attaches. The tests of the agent manager alone are in `cloudha-liveness`'s
//! `tests/liveness`.
//! The fakes shared with other tests come from `cloudha-testkit`; a fake only one file needs
//! stays in that file.

mod adversary;
mod cloudstack_ported;
mod config;
mod fencing;
mod ha;
mod ha_fencing;
mod start_proof;
mod store_attack;
mod store_faults;
mod store_outage;
