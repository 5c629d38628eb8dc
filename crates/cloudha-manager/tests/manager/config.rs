//! Config: defaults, TOML with CloudStack's key names, errors that name the key.

use std::time::Duration;

use cloudha_manager::Config;

#[test]
fn defaults_are_cloudstacks() {
    let c = Config::default();
    assert_eq!(c.ping_interval, Duration::from_secs(60));
    assert_eq!(c.ping_deadline(), Duration::from_secs(150));
    assert_eq!(c.alert_wait, Duration::from_secs(1800));
    assert_eq!(c.host_ping_retry_count, 0);
    assert_eq!(c.host_ping_retry_timer, Duration::from_secs(5));
    assert_eq!((c.ha_workers, c.max_retries), (5, 5));
    assert_eq!(c.restart_retry_interval, Duration::from_secs(600));
    assert_eq!(c.alert_reinvestigate(), c.ping_interval);
    assert!(c.validate().is_ok());
    // Every key in the documented table exists in the serialized config, and vice versa.
    let serde_json::Value::Object(fields) = serde_json::to_value(&c).unwrap() else {
        panic!("an object")
    };
    let documented: Vec<&str> = cloudha_manager::config::KEYS
        .iter()
        .map(|k| k.key)
        .collect();
    for k in cloudha_manager::config::KEYS {
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
    assert_eq!(c.ping_interval, Duration::from_secs(30));
    assert_eq!(c.ping_deadline(), Duration::from_secs(90));
    assert_eq!(c.alert_wait, Duration::from_secs(900));
    assert_eq!(c.host_ping_retry_timer, Duration::from_secs(90));
    assert_eq!(c.max_retries, 7);
    assert_eq!(c.ha_tag.as_deref(), Some("ha_host"));
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
