//! The fencers over scripted ports, data-driven, in paused time: the neighbour (KVM) and pool
//! (XenServer) fencers' self-fence deadline rule, and the power fencer's read-back rule.
//!
//! This module holds what both share (the host fenced, the outcome compared, the VM) and the
//! fencers' names; `self_fence` and `power` hold the tests of each rule.

mod power;
mod self_fence;

use std::sync::Arc;
use std::time::Duration;

use cloudha_ha::*;
use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;

use cloudha_testkit::*;

/// The host being fenced; its neighbours are 2, 3, ...
const HOST: HostId = HostId(1);

/// What a fence came to, for comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Got {
    Fenced(ProofKind),
    Failed,
    NotApplicable,
    Alive,
}

pub(crate) fn got(o: &FenceOutcome) -> Got {
    match o {
        FenceOutcome::Fenced(p) => Got::Fenced(p.kind()),
        FenceOutcome::Failed { .. } => Got::Failed,
        FenceOutcome::NotApplicable { .. } => Got::NotApplicable,
        FenceOutcome::Alive { .. } => Got::Alive,
        other => panic!("an outcome these tests do not know: {other:?}"),
    }
}

pub(crate) fn vm_on(host: HostId) -> VmRecord {
    {
        let mut r = VmRecord::new(VmId(100), "vm100", HypervisorType::Kvm);
        r.host = Some(host);
        r.state = VmState::Running;
        r.update_count = 1;
        r.ha_enabled = true;
        r.cluster = Some(ClusterId(1));
        r.zone = Some(ZoneId(1));
        r
    }
}

/// The fencers' names are recorded with every fence (reports, proofs, logs): part of the contract.
#[test]
fn the_fencers_names_are_cloudstacks() {
    let config = Config::default();
    let bmc = FakeBmc::reading(PowerState::On);
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new(Timestamp::UNIX_EPOCH));
    let oobm = Arc::new(Oobm::new(bmc, Duration::from_secs(60), clock.clone()));
    let commander: Arc<dyn HostCommander> = Arc::new(MockHostCommander::new());
    let store: Arc<dyn HostDirectory> = Arc::new(HostCache::new());
    assert_eq!(
        NeighbourFencer::new(commander.clone(), store.clone(), clock.clone(), &config).name(),
        "NeighbourFencer"
    );
    assert_eq!(
        XenPoolFencer::new(commander, store, clock, &config).name(),
        "XenPoolFencer"
    );
    assert_eq!(PowerFencer::new(oobm.clone()).name(), "PowerFencer");
    assert!(format!("{oobm:?}").starts_with("Oobm"), "{oobm:?}");
}
