//! `KVMHostHATest`: its power-fence cases (the version with power-state confirmation) against
//! [`PowerFencer`].

use std::sync::Arc;
use std::time::Duration;

use cloudha_ha::*;
use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use mockall::Sequence;

use super::*;
use crate::fencing::{Got, got, vm_on};
use cloudha_testkit::*;

fn power_fence_with(oob: MockOutOfBandManagement) -> PowerFencer {
    PowerFencer::new(Arc::new(Oobm::new(
        Arc::new(oob),
        Duration::from_secs(60),
        clock(),
    )))
}

async fn power_fence(oob: MockOutOfBandManagement) -> FenceOutcome {
    let mut target = HostRecord::new(HOST, "h1", HypervisorType::Kvm);
    target.status = Some(Status::Down);
    // The fencer (and with it the mock, whose expectations are checked on drop) ends here.
    power_fence_with(oob).fence(&vm_on(HOST), &target).await
}

fn oob_error(reason: &str) -> OobError {
    OobError::new(HOST, reason)
}

#[tokio::test(start_paused = true)]
async fn testFenceWhenOutOfBandManagementNotEnabled() {
    // A host without out-of-band management: its BMC port refuses; no power-off is sent.
    let mut oob = MockOutOfBandManagement::new();
    oob.expect_power_status().times(1).returning(|_| {
        Err(oob_error(
            "out-of-band management is not enabled for the host",
        ))
    });
    oob.expect_power_off().never();
    let out = power_fence(oob).await;
    assert_eq!(got(&out), Got::Failed, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn testFenceWhenHostAlreadyPoweredOff() {
    let mut oob = MockOutOfBandManagement::new();
    oob.expect_power_status()
        .times(1)
        .returning(|_| Ok(PowerState::Off));
    oob.expect_power_off().never();
    let out = power_fence(oob).await;
    assert_eq!(got(&out), Got::Fenced(ProofKind::PowerFenced), "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn testFenceConfirmedOffAfterPowerOff() {
    let mut oob = MockOutOfBandManagement::new();
    let mut seq = Sequence::new();
    oob.expect_power_status()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(PowerState::On));
    oob.expect_power_off()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(()));
    oob.expect_power_status()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(PowerState::Off));
    let out = power_fence(oob).await;
    assert_eq!(got(&out), Got::Fenced(ProofKind::PowerFenced), "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn testFencePowerOffCommandFailsButHostConfirmedOff() {
    // The chassis is already off and the BMC answers the Off with HTTP 409: the confirmed power
    // state, not the Off's result, is authoritative.
    let mut oob = MockOutOfBandManagement::new();
    let mut seq = Sequence::new();
    oob.expect_power_status()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(PowerState::On));
    oob.expect_power_off()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Err(oob_error("power-off failed: HTTP 409")));
    oob.expect_power_status()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(PowerState::Off));
    let out = power_fence(oob).await;
    assert_eq!(got(&out), Got::Fenced(ProofKind::PowerFenced), "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn testFenceFailsWhenPowerStateCannotBeConfirmedOff() {
    // An unreachable BMC: never fenced (the VMs could still run: split brain).
    let mut oob = MockOutOfBandManagement::new();
    oob.expect_power_status()
        .returning(|_| Err(oob_error("BMC unreachable")));
    oob.expect_power_off()
        .times(0..=1)
        .returning(|_| Err(oob_error("BMC unreachable")));
    let out = power_fence(oob).await;
    assert_eq!(got(&out), Got::Failed, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn testFenceFailsWhenPowerStateCannotBeConfirmedOff_cloudha_differs() {
    // CloudStack sends the Off anyway and reads again; cloudha takes an unreadable power state
    // (like Unknown) as "not fenced" at once: no Off, one reading, retried next round.
    let mut oob = MockOutOfBandManagement::new();
    oob.expect_power_status()
        .times(1)
        .returning(|_| Err(oob_error("BMC unreachable")));
    oob.expect_power_off().never();
    let out = power_fence(oob).await;
    assert_eq!(got(&out), Got::Failed, "{out:?}");
}
