//! A fleet of 20,000 KVM hosts and 400,000 VMs (1,000 clusters of 20 hosts, 20 VMs each, half
//! with HA), one host of every cluster (5 %) losing power at 10 minutes, 40 virtual minutes:
//! the wall time and the peak memory of the whole run, every invariant judged. Generated here.
//! Goal: under 30 s and 3 GiB in a release build. Without `CLOUDHA_BENCH_FULL` (that is,
//! outside `cargo xtask bench`) it runs a tenth of the fleet.

// A benchmark measures wall time: the real clock is what it is for.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::fmt::Write;
use std::time::Instant;

use cloudha_sim::{Scenario, simulate};

fn fleet(clusters: usize) -> String {
    let mut s = String::from(
        "name = \"fleet\"\nduration = \"40m\"\nseed = 42\n\n[config]\n\"sim.liveness.bound\" = \"20m\"\n",
    );
    for c in 1..=clusters {
        let _ = write!(
            s,
            "\n[[cluster]]\nname = \"c{c:04}\"\npod = \"pod{}\"\nzone = \"zone{}\"\nhypervisor = \"kvm\"\nhosts = 20\nvms_per_host = 20\nha_fraction = 0.5\ncapacity_per_host = 30\n",
            (c - 1) / 10 + 1,
            (c - 1) / 100 + 1
        );
    }
    let hosts: Vec<String> = (1..=clusters)
        .map(|c| format!("\"c{c:04}-h{}\"", (c * 7) % 20 + 1))
        .collect();
    let _ = write!(
        s,
        "\n[[fault]]\nat = \"10m\"\nkind = \"power_off\"\nhosts = [{}]\n",
        hosts.join(", ")
    );
    s
}

/// Peak resident memory of this process, from /proc (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    let full = std::env::var_os("CLOUDHA_BENCH_FULL").is_some();
    let clusters = std::env::var("CLOUDHA_FLEET_CLUSTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 1000 } else { 100 });
    let text = fleet(clusters);
    let scenario = Scenario::parse(&text, "fleet.toml").expect("a valid fleet");
    let started = Instant::now();
    let report = simulate(&scenario, 42);
    let wall = started.elapsed().as_secs_f64();
    let hosts = clusters * 20;
    assert!(report.ok(), "{}", report.summary());
    println!(
        "metric: fleet::run_{hosts}_hosts {wall:.1} s (wall, {} VMs, 5 % power loss, 40 virtual min; goal < 30 s at 20,000 hosts)",
        hosts * 20
    );
    if let Some(mib) = peak_rss_mib() {
        println!(
            "metric: fleet::peak_rss_{hosts}_hosts {mib:.0} MiB (goal < 3 GiB at 20,000 hosts)"
        );
    }
}
