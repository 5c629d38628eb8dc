//! `cloudha explore`'s speed: schedules judged per second on one thread (the goal: at least
//! 200 on a 6-host base of 30 virtual minutes), on that base and on the shipped mixed-hypervisor
//! base. Explore runs one such thread per core. Prints `metric:` lines for `cargo xtask bench`;
//! full size with `CLOUDHA_BENCH_FULL=1`.

use cloudha_sim::{ExploreOptions, Explorer};

const SIX_HOSTS: &str = r#"
name = "six KVM hosts"
duration = "30m"

[[cluster]]
name = "kvm"
hypervisor = "kvm"
hosts = 6
vms_per_host = 4
ha_fraction = 0.5
capacity_per_host = 12
"#;

fn main() {
    let full = std::env::var_os("CLOUDHA_BENCH_FULL").is_some();
    let schedules = if full { 2000 } else { 200 };
    let mixed_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scenarios/explore/mixed-base.toml"
    );
    let mixed = std::fs::read_to_string(mixed_path).expect("the mixed base");
    for (name, text, notes) in [
        (
            "explore::schedules_per_core",
            SIX_HOSTS,
            "6 KVM hosts, 30 min; goal >= 200",
        ),
        (
            "explore::schedules_per_core_mixed",
            mixed.as_str(),
            "scenarios/explore/mixed-base.toml, 7 hosts, 30 min",
        ),
    ] {
        let explorer = Explorer::parse(text, name, false).expect("a valid base");
        let options = ExploreOptions {
            schedules,
            seed: 1,
            jobs: 1,
            shrink_limit: 0,
        };
        #[allow(clippy::disallowed_types, clippy::disallowed_methods)]
        let wall = std::time::Instant::now();
        let outcome = explorer.run(&options, &|_| {});
        let rate = schedules as f64 / wall.elapsed().as_secs_f64();
        println!(
            "metric: {name} {rate:.0} schedules/s ({notes}; one thread, {schedules} schedules, {} violating)",
            outcome.violating
        );
    }
}
