//! Apache CloudStack's own unit tests, ported and named after them (camelCase kept so they are
//! found by name): `KVMFencerTest` (all six) against [`NeighbourFencer`], the power-fence cases
//! of `KVMHostHATest` (the version with power-state confirmation) against [`PowerFencer`], and
//! `HighAvailabilityManagerImplTest`'s investigate and schedule cases against the agent and HA
//! managers. CloudStack's TRUE / FALSE / null map to Fenced / Failed / NotApplicable.
//!
//! Where cloudha's rule deliberately differs, the case is ported twice: once set up so that
//! CloudStack's assertion holds under our rule, once as `<name>_cloudha_differs` asserting ours.
//! Mockito's strict stubs become mockall expectations with call counts (checked on drop).
#![allow(non_snake_case)]

mod high_availability_manager;
mod kvm_fencer;
mod kvm_host_ha;

use cloudha_protocol::HostId;

const HOST: HostId = HostId(1);
const SECOND: HostId = HostId(2);
