//! `KVMFencerTest` (all six) against [`NeighbourFencer`].

use std::sync::Arc;

use cloudha_attache::RequestError;
use cloudha_ha::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use mockall::Sequence;
use tokio::time::Instant;

use super::*;
use crate::fencing::{Got, got, vm_on};
use cloudha_testkit::*;

/// The cluster (host 1 first, the one fenced) and the fencer's verdict for host 1.
async fn kvm_fence(
    hosts: &[(Status, HypervisorType)],
    independent: bool,
    commander: MockHostCommander,
) -> FenceOutcome {
    let store = Arc::new(HostCache::new());
    for (i, (status, hypervisor)) in hosts.iter().enumerate() {
        let mut r = HostRecord::new(HostId(1 + i as u64), format!("h{}", i + 1), *hypervisor);
        r.cluster = Some(ClusterId(1));
        r.pod = Some(PodId(1));
        r.zone = Some(ZoneId(1));
        r.status = Some(*status);
        r.self_fence_independent = independent;
        store.upsert(r);
    }
    let target = store.get(HOST).unwrap();
    NeighbourFencer::new(Arc::new(commander), store, clock(), &Config::default())
        .fence(&vm_on(HOST), &target)
        .await
}

/// A neighbour's FenceAnswer: `result` = the target is fenced (its heartbeat is dead), with the
/// heartbeat age it read.
fn fence_answer(result: bool, age_secs: Option<u64>) -> Result<Answer, CommandError> {
    Ok(Answer::Fence(FenceAnswer {
        success: result,
        alive: !result,
        heartbeat_age_ms: age_secs.map(|s| s * 1000),
        details: "ok".into(),
    }))
}

/// Expects exactly `times` FenceCommands for host 1, each sent to host 2 (in `seq`, if given),
/// answered by `answer`.
fn expect_fences(
    c: &mut MockHostCommander,
    times: usize,
    seq: Option<&mut Sequence>,
    answer: impl Fn() -> Result<Answer, CommandError> + Send + 'static,
) {
    let e = c
        .expect_send()
        .withf(|via, command, _| {
            *via == SECOND && matches!(command, Command::Fence(f) if f.target == HOST)
        })
        .times(times);
    if let Some(seq) = seq {
        e.in_sequence(seq);
    }
    e.returning(move |_, _, _| answer());
}

const UP_KVM: (Status, HypervisorType) = (Status::Up, HypervisorType::Kvm);

#[tokio::test(start_paused = true)]
async fn testWithSingleHost() {
    // The only Up host is the one to fence: nobody to ask.
    let mut c = MockHostCommander::new();
    c.expect_send().never();
    let out = kvm_fence(&[UP_KVM], true, c).await;
    assert_eq!(got(&out), Got::Failed, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn testWithSingleHost_cloudha_differs() {
    // CloudStack's host (the agent writes the heartbeat): the neighbour fencer does not apply
    // at all; the chain goes on to the power fencer.
    let mut c = MockHostCommander::new();
    c.expect_send().never();
    let out = kvm_fence(&[UP_KVM], false, c).await;
    assert_eq!(got(&out), Got::NotApplicable, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn testWithSingleHostDown() {
    let mut c = MockHostCommander::new();
    c.expect_send().never();
    let out = kvm_fence(&[(Status::Down, HypervisorType::Kvm)], true, c).await;
    assert_eq!(got(&out), Got::Failed, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn testWithSingleHostDown_cloudha_differs() {
    let mut c = MockHostCommander::new();
    c.expect_send().never();
    let out = kvm_fence(&[(Status::Down, HypervisorType::Kvm)], false, c).await;
    assert_eq!(got(&out), Got::NotApplicable, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn testWithHosts() {
    // CloudStack's assertion holds under our rule for a host that fences itself independently
    // of its agent, once its heartbeat is older than the self-fence deadline (110 s).
    let mut c = MockHostCommander::new();
    expect_fences(&mut c, 1, None, || fence_answer(true, Some(120)));
    let out = kvm_fence(&[UP_KVM, UP_KVM], true, c).await;
    assert_eq!(got(&out), Got::Fenced(ProofKind::SelfFenced), "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn testWithHosts_cloudha_differs() {
    // CloudStack's own answer (`new FenceAnswer(null, true, "ok")`: no heartbeat age) on its
    // own kind of host (the agent writes the heartbeat): not a proof; the chain goes on.
    let mut c = MockHostCommander::new();
    c.expect_send().never();
    let out = kvm_fence(&[UP_KVM, UP_KVM], false, c).await;
    assert_eq!(got(&out), Got::NotApplicable, "agent-dependent: {out:?}");

    // An independent self-fence, but the answer gives no age: asked again once the whole
    // deadline has passed, and still no proof: an age-less "dead" proves no timing.
    let mut c = MockHostCommander::new();
    expect_fences(&mut c, 2, None, || fence_answer(true, None));
    let t0 = Instant::now();
    let out = kvm_fence(&[UP_KVM, UP_KVM], true, c).await;
    assert_eq!(got(&out), Got::Failed, "{out:?}");
    assert!(t0.elapsed() > Config::default().ha.kvm_self_fence_deadline());

    // Dead only 30 s (the host may still be retrying its writes); by the re-read it wrote again.
    let mut c = MockHostCommander::new();
    let mut seq = Sequence::new();
    expect_fences(&mut c, 1, Some(&mut seq), || fence_answer(true, Some(30)));
    expect_fences(&mut c, 1, Some(&mut seq), || fence_answer(false, Some(5)));
    let out = kvm_fence(&[UP_KVM, UP_KVM], true, c).await;
    assert_eq!(got(&out), Got::Alive, "young heartbeat came back: {out:?}");
}

#[tokio::test(start_paused = true)]
async fn testWithFailingFence() {
    // AgentUnavailableException: the neighbour has no attache.
    let mut c = MockHostCommander::new();
    expect_fences(&mut c, 1, None, || Err(CommandError::NoAttache(SECOND)));
    let out = kvm_fence(&[UP_KVM, UP_KVM], true, c).await;
    assert_eq!(got(&out), Got::Failed, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn testWithFailingFence_cloudha_differs() {
    let mut c = MockHostCommander::new();
    c.expect_send().never();
    let out = kvm_fence(&[UP_KVM, UP_KVM], false, c).await;
    assert_eq!(got(&out), Got::NotApplicable, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn testWithTimeoutingFence() {
    // OperationTimedoutException: the request's wait ran out.
    let mut c = MockHostCommander::new();
    expect_fences(&mut c, 1, None, || {
        Err(CommandError::Request(RequestError::Timeout {
            host: SECOND,
            seq: cloudha_protocol::Sequence(0),
            wait: cloudha_ha::fence::FENCE_WAIT,
        }))
    });
    let out = kvm_fence(&[UP_KVM, UP_KVM], true, c).await;
    assert_eq!(got(&out), Got::Failed, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn testWithTimeoutingFence_cloudha_differs() {
    let mut c = MockHostCommander::new();
    c.expect_send().never();
    let out = kvm_fence(&[UP_KVM, UP_KVM], false, c).await;
    assert_eq!(got(&out), Got::NotApplicable, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn testWithSingleNotKVM() {
    // CloudStack's `HypervisorType.Any`: not a hypervisor the fencer knows.
    for independent in [false, true] {
        let mut c = MockHostCommander::new();
        c.expect_send().never();
        let out = kvm_fence(&[(Status::Down, HypervisorType::None)], independent, c).await;
        assert_eq!(got(&out), Got::NotApplicable, "{out:?}");
    }
}
