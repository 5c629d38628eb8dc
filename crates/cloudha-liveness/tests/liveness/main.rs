//! The agent manager (cloudha-liveness over cloudha-ports) through its public API, under paused
//! time, with the fakes of `cloudha-testkit` (an in-memory host store, the real registry,
//! direct fake hosts, scripted probes, investigators and BMC) and mock ports: connect, the
//! monitor, investigation and its verdicts, start and stop, a failing host store, the BMC front.
//! The tests that need the HA manager are in `cloudha-ha`'s `tests/engine`.

mod connect;
mod host_store_faults;
mod investigation;
mod lifecycle;
mod monitor;
mod oobm;
mod verdicts;
