//! The bounded BMC front (`Oobm`) over a scripted BMC: every call bounded and counted, a power
//! reading kept for reuse only while fresh.

use std::time::Duration;

use cloudha_liveness::oobm::POWER_READING_FRESH;
use cloudha_liveness::*;
use cloudha_ports::*;
use cloudha_protocol::*;
use cloudha_testkit::{Bmc, FakeBmc, clock, tokio_clock};
use tokio::time::{Instant, sleep};

/// The host whose BMC is read.
const HOST: HostId = HostId(1);

/// The BMC front: every call bounded and counted, a reading kept for reuse only while fresh,
/// taken after the host's last connect, and not contradicted since (a failed reading or an Off).
#[tokio::test(start_paused = true)]
async fn the_oobm_front_bounds_counts_and_forgets() {
    use PowerState::*;
    let bmc = FakeBmc::new(
        &[
            Bmc::Is(On),
            Bmc::Is(On),
            Bmc::Refuses,
            Bmc::Is(Off),
            Bmc::Hangs,
        ],
        &[Bmc::Is(Off)],
    );
    let wait = Duration::from_secs(25);
    let oobm = Oobm::new(bmc.clone(), wait, clock());
    assert_eq!(oobm.fresh(HOST, None), None, "nothing read yet");
    let t0 = tokio_clock().now();
    assert_eq!(oobm.power_status(HOST).await.ok(), Some(On));
    assert_eq!(
        oobm.fresh(HOST, None).map(|r| (r.state, r.at)),
        Some((On, t0))
    );
    assert_eq!(oobm.fresh(HOST, Some(t0)), None, "not after the connect");
    assert!(
        oobm.fresh(HOST, Some(t0 - Duration::from_secs(1)))
            .is_some()
    );
    sleep(POWER_READING_FRESH - Duration::from_millis(1)).await;
    assert!(oobm.fresh(HOST, None).is_some(), "still fresh");
    sleep(Duration::from_millis(1)).await;
    assert_eq!(
        oobm.fresh(HOST, None),
        None,
        "stale at {POWER_READING_FRESH:?}"
    );
    // A failed reading forgets the older one.
    assert_eq!(oobm.power_status(HOST).await.ok(), Some(On));
    assert!(oobm.power_status(HOST).await.is_err());
    assert_eq!(
        oobm.fresh(HOST, None),
        None,
        "an older reading must not stand in"
    );
    // An Off forgets it too.
    assert_eq!(oobm.power_status(HOST).await.ok(), Some(Off));
    assert!(oobm.power_off(HOST).await.is_ok());
    assert_eq!(oobm.fresh(HOST, None), None);
    // A hung BMC is cut at the bound.
    let t1 = Instant::now();
    let hung = oobm.power_status(HOST).await;
    assert!(hung.is_err(), "{hung:?}");
    assert!(
        t1.elapsed() >= wait && t1.elapsed() < wait + Duration::from_secs(1),
        "cut at {:?}",
        t1.elapsed()
    );
    assert_eq!(oobm.calls(HOST), 6);
    assert_eq!(oobm.calls(HostId(2)), 0);
    assert_eq!(bmc.total(), 6);
}
