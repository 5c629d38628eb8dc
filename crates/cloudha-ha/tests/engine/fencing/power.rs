//! The power fencer: only a confirmed Off counts (the BMC front itself is tested in
//! `cloudha-liveness`).

use tokio::time::{Instant, sleep};

use super::*;

struct PowerRow {
    name: &'static str,
    /// The BMC's power readings, in turn (the last repeats).
    status: &'static [Bmc],
    /// What the BMC does with an Off.
    off: Bmc,
    /// A reading taken through the same front this long before the fence (as investigation does).
    read_before: Option<u64>,
    /// The host's agent connected after that reading (it came back since).
    connected_after_read: bool,
    /// Or: it connected this many ms before the reading (0: at the same instant).
    connected_before_read_ms: Option<u64>,
    // expectations
    want: Got,
    /// Status readings (the one before included) and Offs.
    calls: (usize, usize),
    /// Seconds the fence took.
    took: u64,
}

const fn power(
    name: &'static str,
    status: &'static [Bmc],
    want: Got,
    calls: (usize, usize),
) -> PowerRow {
    PowerRow {
        name,
        status,
        off: Bmc::Is(PowerState::Off),
        read_before: None,
        connected_after_read: false,
        connected_before_read_ms: None,
        want,
        calls,
        took: 0,
    }
}

#[tokio::test(start_paused = true)]
async fn the_power_fencer_counts_only_a_confirmed_off() {
    use Bmc::*;
    use PowerState::*;
    let fenced = Got::Fenced(ProofKind::PowerFenced);
    let rows = [
        PowerRow {
            read_before: Some(0),
            ..power(
                "the investigation's reading just failed: straight to Off, then the read-back (3 calls in all)",
                &[Refuses, Is(Off)],
                fenced,
                (2, 1),
            )
        },
        PowerRow {
            read_before: Some(0),
            connected_before_read_ms: Some(5),
            ..power(
                "a reading that failed after the host's last connect counts: straight to Off",
                &[Refuses, Is(Off)],
                fenced,
                (2, 1),
            )
        },
        PowerRow {
            read_before: Some(0),
            connected_before_read_ms: Some(0),
            ..power(
                "a reading that failed the instant the host connected does not count: read again",
                &[Refuses, Is(On), Is(Off)],
                fenced,
                (3, 1),
            )
        },
        PowerRow {
            read_before: Some(0),
            connected_before_read_ms: Some(5),
            ..power(
                "an Off read after the host's last connect stays a proof",
                &[Is(Off)],
                fenced,
                (1, 0),
            )
        },
        PowerRow {
            read_before: Some(61),
            connected_before_read_ms: Some(0),
            ..power(
                "an Off read the instant the host connected is no proof once stale: read again",
                &[Is(Off), Is(On), Is(Off)],
                fenced,
                (3, 1),
            )
        },
        PowerRow {
            read_before: Some(59),
            ..power(
                "a reading failed 59 s ago: still straight to Off",
                &[Refuses, Is(Off)],
                fenced,
                (2, 1),
            )
        },
        PowerRow {
            read_before: Some(60),
            ..power(
                "a reading failed 60 s ago: read again first",
                &[Refuses, Is(On), Is(Off)],
                fenced,
                (3, 1),
            )
        },
        PowerRow {
            read_before: Some(0),
            connected_after_read: true,
            ..power(
                "a reading failed before the host's last connect: read again first",
                &[Refuses, Is(On), Is(Off)],
                fenced,
                (3, 1),
            )
        },
        PowerRow {
            read_before: Some(0),
            connected_after_read: true,
            ..power(
                "an Off read before the host's last connect is no proof: read again",
                &[Is(Off), Is(On), Is(Off)],
                fenced,
                (3, 1),
            )
        },
        power(
            "already off: fenced without an Off",
            &[Is(Off)],
            fenced,
            (1, 0),
        ),
        power(
            "On: Off, read back Off: fenced",
            &[Is(On), Is(Off)],
            fenced,
            (2, 1),
        ),
        PowerRow {
            off: Refuses,
            ..power(
                "the Off errors but the read-back says Off: fenced (#13376)",
                &[Is(On), Is(Off)],
                fenced,
                (2, 1),
            )
        },
        PowerRow {
            off: Hangs,
            took: 60,
            ..power(
                "the Off times out but the read-back says Off: fenced",
                &[Is(On), Is(Off)],
                fenced,
                (2, 1),
            )
        },
        power(
            "read back On: failed",
            &[Is(On), Is(On)],
            Got::Failed,
            (2, 1),
        ),
        power(
            "read back Unknown: failed",
            &[Is(On), Is(Unknown)],
            Got::Failed,
            (2, 1),
        ),
        power(
            "read back errors: failed",
            &[Is(On), Refuses],
            Got::Failed,
            (2, 1),
        ),
        PowerRow {
            took: 60,
            ..power(
                "read back hangs: failed",
                &[Is(On), Hangs],
                Got::Failed,
                (2, 1),
            )
        },
        PowerRow {
            off: Refuses,
            ..power(
                "the Off errors and the read-back says On: failed",
                &[Is(On), Is(On)],
                Got::Failed,
                (2, 1),
            )
        },
        power(
            "Unknown first: failed, no Off",
            &[Is(Unknown)],
            Got::Failed,
            (1, 0),
        ),
        power(
            "unreachable BMC: failed, no Off",
            &[Refuses],
            Got::Failed,
            (1, 0),
        ),
        PowerRow {
            took: 60,
            ..power(
                "the BMC hangs: failed after the bound, no Off",
                &[Hangs],
                Got::Failed,
                (1, 0),
            )
        },
        PowerRow {
            read_before: Some(0),
            ..power(
                "a fresh reading is reused: no extra status call (3 calls in all)",
                &[Is(On), Is(Off)],
                fenced,
                (2, 1),
            )
        },
        PowerRow {
            read_before: Some(59),
            ..power(
                "a fresh Off reading: fenced without another call",
                &[Is(Off)],
                fenced,
                (1, 0),
            )
        },
        PowerRow {
            read_before: Some(0),
            ..power(
                "a fresh Unknown reading: failed without another call",
                &[Is(Unknown)],
                Got::Failed,
                (1, 0),
            )
        },
        PowerRow {
            read_before: Some(0),
            connected_after_read: true,
            ..power(
                "a reading from before the host's last connect is read again",
                &[Is(Off), Is(On), Is(Off)],
                fenced,
                (3, 1),
            )
        },
        PowerRow {
            read_before: Some(61),
            ..power(
                "an Off reading stays a proof, however old, while the host has not connected since",
                &[Is(Off)],
                fenced,
                (1, 0),
            )
        },
        PowerRow {
            read_before: Some(61),
            ..power(
                "a stale On reading (older than 60 s) is read again",
                &[Is(On), Is(On), Is(Off)],
                fenced,
                (3, 1),
            )
        },
    ];
    for r in rows {
        let bmc = FakeBmc::new(r.status, &[r.off]);
        let oobm = bmc.front();
        let mut target = HostRecord::new(HOST, "h1", HypervisorType::Kvm);
        target.status = Some(Status::Down);
        if let Some(age) = r.read_before {
            if let Some(ms) = r.connected_before_read_ms {
                target.connected_at = Some(tokio_clock().now());
                sleep(Duration::from_millis(ms)).await;
            }
            let _ = oobm.power_status(HOST).await;
            if r.connected_after_read {
                // Strictly after the reading.
                sleep(Duration::from_millis(1)).await;
                target.connected_at = Some(tokio_clock().now());
            }
            sleep(Duration::from_secs(age)).await;
        }
        let t0 = Instant::now();
        let outcome = PowerFencer::new(oobm.clone())
            .fence(&vm_on(HOST), &target)
            .await;
        let took = t0.elapsed();
        let ctx = format!("{}: {outcome:?}", r.name);
        assert_eq!(got(&outcome), r.want, "{ctx}");
        assert_eq!((bmc.count("status"), bmc.count("off")), r.calls, "{ctx}");
        assert_eq!(
            oobm.calls(HOST),
            bmc.total() as u64,
            "{ctx}: the front counts every call"
        );
        // A reading from before, or at, the host's last connect says nothing of this round.
        if r.read_before.is_none_or(|age| age < 60)
            && !r.connected_after_read
            && r.connected_before_read_ms != Some(0)
        {
            assert!(bmc.total() <= 3, "{ctx}: at most 3 BMC calls in a round");
        }
        let took_want = Duration::from_secs(r.took);
        assert!(
            took >= took_want && took < took_want + Duration::from_secs(1),
            "{ctx}: took {took:?}"
        );
        if let FenceOutcome::Fenced(proof) = &outcome {
            let about = format!("host {HOST} ");
            assert!(proof.evidence().contains(&about), "{ctx}");
            assert_eq!(proof.timings(), None, "{ctx}: no self-fence timings");
        }
    }
}
