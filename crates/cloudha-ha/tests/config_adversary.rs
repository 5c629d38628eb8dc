//! Adversary tests of `Config::from_toml`: TOML that is legal but not what the flat table means.

use cloudha_ha::Config;

fn err(text: &str) -> String {
    match Config::from_toml(text, "t.toml") {
        Ok(c) => panic!("accepted {text:?}: {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unquoted_dotted_keys_are_refused_with_their_line() {
    // TOML reads `ping.interval = 1` as the table `ping` holding `interval`.
    let e = err("\"ha.workers\" = 2\nping.interval = 30\n");
    assert!(e.contains("`ping`") && e.contains("line 2"), "{e}");
    let e = err("[ping]\ninterval = 30\n");
    assert!(e.contains("`ping`"), "{e}");
    let e = err("vm.ha.enabled = false\n");
    assert!(e.contains("`vm`"), "{e}");
}

#[test]
fn alias_and_canonical_key_together_are_refused() {
    let e = err("\"max.retries\" = 3\n\"vm.ha.migration.max.retries\" = 7\n");
    assert!(e.contains("max.retries"), "{e}");
    let c = Config::from_toml("\"vm.ha.migration.max.retries\" = 7\n", "t.toml").unwrap();
    assert_eq!(c.ha.max_retries, 7);
    err("\"max.retries\" = 3\n\"max.retries\" = 3\n");
}

#[test]
fn values_of_the_wrong_type_or_range_are_refused() {
    for text in [
        "\"ha.workers\" = \"two\"",
        "\"ha.workers\" = -1",
        "\"ha.workers\" = 5000000000",
        "\"ha.workers\" = 0",
        "\"ping.interval\" = -5",
        "\"ping.interval\" = \"5\"",
        "\"ping.interval\" = \"0s\"",
        "\"ha.brake.fraction\" = nan",
        "\"ha.brake.fraction\" = inf",
        "\"ha.brake.fraction\" = 0",
        "\"force.ha\" = \"yes\"",
        "\"ha.tag\" = 5",
        "\"ping.interval\" = 1e400",
    ] {
        err(text);
    }
}

/// An unknown key's line is the line of that key, not of a longer known key it prefixes.
#[test]
fn the_line_of_an_unknown_key_is_its_own() {
    let e = err("wait = 5\nwai = 1\n");
    assert!(e.contains("line 2"), "{e}");
}

/// A config that parses must not make the engine panic: durations the manager adds up stay in
/// range (or are refused when read).
#[test]
fn huge_durations_do_not_panic_the_deadlines() {
    let big = u64::MAX / 2;
    let text = format!(
        "\"xen.heartbeat.staleness\" = \"{big}s\"\n\"xen.heartbeat.self.reboot.timeout\" = \"{big}s\"\n\
         \"kvm.heartbeat.interval\" = \"{big}s\"\n\"kvm.heartbeat.retry.interval\" = \"{big}s\"\n"
    );
    // durations in ms must fit u64: use seconds as a number instead.
    let text2 = format!(
        "\"xen.heartbeat.staleness\" = {i}\n\"xen.heartbeat.self.reboot.timeout\" = {i}\n\
         \"kvm.heartbeat.interval\" = {i}\n\"kvm.heartbeat.retry.interval\" = {i}\n",
        i = i64::MAX
    );
    let _ = Config::from_toml(&text, "t.toml");
    if let Ok(c) = Config::from_toml(&text2, "t.toml") {
        let x = std::panic::catch_unwind(|| c.ha.xen_self_fence_deadline());
        assert!(
            x.is_ok(),
            "xen_self_fence_deadline panicked on a config from_toml accepted"
        );
        let k = std::panic::catch_unwind(|| c.ha.kvm_self_fence_deadline());
        assert!(
            k.is_ok(),
            "kvm_self_fence_deadline panicked on a config from_toml accepted"
        );
    }
}
