//! Config: defaults, TOML with CloudStack's key names, errors that name the key.

use std::time::Duration;

use cloudha_ha::Config;

#[test]
fn defaults_are_cloudstacks() {
    let c = Config::default();
    assert_eq!(c.liveness.ping_interval, Duration::from_secs(60));
    assert_eq!(c.liveness.ping_deadline(), Duration::from_secs(150));
    assert_eq!(c.liveness.alert_wait, Duration::from_secs(1800));
    assert_eq!(c.liveness.host_ping_retry_count, 0);
    assert_eq!(c.liveness.host_ping_retry_timer, Duration::from_secs(5));
    assert_eq!((c.ha.ha_workers, c.ha.max_retries), (5, 5));
    assert_eq!(c.ha.restart_retry_interval, Duration::from_secs(600));
    assert_eq!(c.liveness.alert_reinvestigate(), c.liveness.ping_interval);
    assert!(c.validate().is_ok());
    // Every key in the documented table exists in the serialized config, and vice versa.
    let serde_json::Value::Object(fields) = serde_json::to_value(&c).unwrap() else {
        panic!("an object")
    };
    let documented: Vec<&str> = Config::keys().map(|k| k.key).collect();
    for k in Config::keys() {
        // Keys unset by default are skipped when written.
        assert!(
            fields.contains_key(k.key) || k.default.starts_with('('),
            "documented key {} missing",
            k.key
        );
    }
    for key in fields.keys() {
        assert!(
            documented.contains(&key.as_str()),
            "key {key} is not documented"
        );
    }
    // Each key has one home: no key is documented by both parts.
    let mut sorted = documented.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), documented.len(), "a key documented twice");
}

#[test]
fn each_part_reads_its_own_keys_from_one_file() {
    let c = Config::from_toml(
        r#"
"ping.interval" = "30s"
"wait" = "10m"
"vm.ha.enabled" = false
"ha.workers" = 3
"kvm.heartbeat.staleness" = "90s"
"#,
        "both.toml",
    )
    .unwrap();
    assert_eq!(c.liveness.ping_interval, Duration::from_secs(30));
    assert_eq!(c.liveness.wait, Duration::from_secs(600));
    assert!(!c.liveness.vm_ha_enabled);
    assert_eq!(c.ha.ha_workers, 3);
    assert_eq!(c.ha.kvm_heartbeat_staleness, Duration::from_secs(90));
    // Written back as one flat table, and read again to the same config.
    let text = toml::to_string(&c).unwrap();
    assert_eq!(Config::from_toml(&text, "written.toml").unwrap(), c);
    // A key neither part knows is refused with its line; a value of the wrong form too.
    let err = Config::from_toml("\"ha.workers\" = 3\n\"ha.wokers\" = 4\n", "typo.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("typo.toml") && err.contains("line 2") && err.contains("ha.wokers"),
        "{err}"
    );
    let err = Config::from_toml("\n\"ha.workers\" = \"three\"\n", "form.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("form.toml") && err.contains("line 2") && err.contains("ha.workers"),
        "{err}"
    );
}

#[test]
fn reads_toml_with_units_numbers_and_the_alias() {
    let c = Config::from_toml(
        r#"
"ping.interval" = "30s"
"ping.timeout" = 3
"alert.wait" = 900
"host.ping.retry.timer" = "1m30s"
"vm.ha.migration.max.retries" = 7
"ha.tag" = "ha_host"
"#,
        "test.toml",
    )
    .unwrap();
    assert_eq!(c.liveness.ping_interval, Duration::from_secs(30));
    assert_eq!(c.liveness.ping_deadline(), Duration::from_secs(90));
    assert_eq!(c.liveness.alert_wait, Duration::from_secs(900));
    assert_eq!(c.liveness.host_ping_retry_timer, Duration::from_secs(90));
    assert_eq!(c.ha.max_retries, 7);
    assert_eq!(c.ha.ha_tag.as_deref(), Some("ha_host"));
}

#[test]
fn errors_name_the_key() {
    for (text, needles) in [
        (
            "\"ping.intervall\" = \"60s\"",
            &["test.toml", "ping.intervall"][..],
        ),
        (
            "\"ping.interval\" = \"0s\"",
            &["ping.interval", "greater than zero"][..],
        ),
        ("\"ping.timeout\" = -2.5", &["ping.timeout", "positive"][..]),
        (
            "\"ping.interval\" = \"60x\"",
            &["ping.interval", "unknown unit"][..],
        ),
        ("\"alert.wait\" = -5", &["alert.wait", "negative"][..]),
        ("\"ha.workers\" = 0", &["ha.workers"][..]),
        ("\"ha.brake.fraction\" = 1.5", &["ha.brake.fraction"][..]),
        (
            "\"ha.investigators.order\" = [\"Crystal\"]",
            &["ha.investigators.order", "Crystal"][..],
        ),
        (
            "\"ping.monitor.resolution\" = \"10m\"",
            &["ping.monitor.resolution"][..],
        ),
        ("not toml at all", &["test.toml"][..]),
    ] {
        let err = Config::from_toml(text, "test.toml")
            .unwrap_err()
            .to_string();
        for n in needles {
            assert!(err.contains(n), "`{text}` → `{err}` should mention `{n}`");
        }
    }
}

#[test]
fn an_agreement_a_cluster_cannot_reach_is_refused_naming_the_key_and_the_cluster() {
    /// Clusters as (name, hosts).
    type Clusters = &'static [(&'static str, usize)];
    // (agreement, clusters, the cluster the error names or None: accepted)
    let rows: &[(u32, Clusters, Option<&str>)] = &[
        (2, &[("pair", 2)], Some("pair")),
        (2, &[("big", 5), ("pair", 2)], Some("pair")),
        (2, &[("lone", 1)], None),
        (2, &[("three", 3)], None),
        (3, &[("three", 3)], Some("three")),
        (3, &[("lone", 1), ("four", 4)], None),
        (1, &[("pair", 2), ("lone", 1)], None),
        (1, &[("empty", 0)], None),
        (2, &[], None),
    ];
    for (agreement, clusters, refused) in rows {
        let c = {
            let mut c = Config::default();
            c.liveness.ha_investigators_agreement = *agreement;
            c
        };
        let got = c.liveness.check_clusters(clusters.iter().copied());
        let ctx = format!("agreement {agreement}, clusters {clusters:?}: {got:?}");
        match refused {
            None => assert!(got.is_ok(), "{ctx}"),
            Some(name) => {
                let err = got.expect_err(&ctx).to_string();
                assert!(err.contains("ha.investigators.agreement"), "{ctx}");
                assert!(err.contains(&format!("`{name}`")), "{ctx}");
            }
        }
    }
}

#[test]
fn the_heartbeat_and_bmc_keys_read_from_toml() {
    let c = Config::from_toml(
        r#"
"kvm.heartbeat.interval" = "30s"
"kvm.heartbeat.staleness" = "45s"
"kvm.heartbeat.write.retries" = 2
"kvm.heartbeat.retry.interval" = "15s"
"xen.heartbeat.staleness" = "20s"
"xen.heartbeat.self.reboot.timeout" = "40s"
"outofbandmanagement.action.timeout" = "25s"
"#,
        "test.toml",
    )
    .unwrap();
    assert_eq!(
        c.ha.kvm_self_fence_deadline(),
        Duration::from_secs(45 + 2 * 15)
    );
    assert_eq!(c.ha.xen_self_fence_deadline(), Duration::from_secs(60));
    assert_eq!(c.liveness.oobm_action_timeout, Duration::from_secs(25));
    let d = Config::default();
    assert_eq!(
        (
            d.ha.kvm_self_fence_deadline(),
            d.ha.xen_self_fence_deadline()
        ),
        (Duration::from_secs(110), Duration::from_secs(60)),
        "defaults: 60 s + 5 × 10 s; 30 s + 30 s"
    );
}
