//! Writing a scenario back as TOML text that [`Scenario::parse`](crate::Scenario::parse) reads:
//! the base file's own `[config]` and `[[cluster]]` tables (values kept as written there, so
//! every key round-trips), a header, and a fault list. `cloudha explore` writes its minimal
//! failing scenarios with it.

use std::fmt::Write as _;
use std::time::Duration;

use crate::scenario::Fault;

/// The `[config]` and `[[cluster]]` tables of a scenario file, as TOML text with the values as
/// the file wrote them (the rest of the file, faults, expectations and `[explore]` included, is
/// left out). A cluster's `name` comes first, then the keys in the docs' order.
///
/// # Errors
/// The TOML parser's, when `text` is not TOML.
pub(crate) fn cloud_sections(text: &str) -> Result<String, toml::de::Error> {
    const ORDER: &[&str] = &[
        "name",
        "pod",
        "zone",
        "hypervisor",
        "hosts",
        "vms_per_host",
        "ha_fraction",
        "storage",
        "capacity_per_host",
        "self_fence",
    ];
    let table: toml::Table = toml::from_str(text)?;
    let mut out = String::new();
    if let Some(config) = table.get("config").and_then(toml::Value::as_table) {
        out.push_str("[config]\n");
        for (key, value) in config {
            let _ = writeln!(out, "{} = {value}", quoted(key));
        }
    }
    let clusters = table.get("cluster").and_then(toml::Value::as_array);
    for cluster in clusters
        .into_iter()
        .flatten()
        .filter_map(toml::Value::as_table)
    {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str("[[cluster]]\n");
        let mut keys: Vec<&String> = cluster.keys().collect();
        keys.sort_by_key(|k| ORDER.iter().position(|o| o == k).unwrap_or(ORDER.len()));
        for key in keys {
            let _ = writeln!(out, "{key} = {}", cluster[key]);
        }
    }
    Ok(out)
}

/// A TOML string literal (quoted and escaped).
pub(crate) fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A duration as the scenario files write it (`"8m30s"`).
pub(crate) fn duration(d: Duration) -> String {
    quoted(&cloudha_protocol::duration::format(d))
}

fn list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| quoted(s)).collect();
    format!("[{}]", items.join(", "))
}

/// The top of a written scenario.
pub(crate) struct Header<'a> {
    /// Comment lines (without `#`), written first.
    pub(crate) comments: &'a [String],
    pub(crate) name: &'a str,
    pub(crate) description: &'a str,
    pub(crate) duration: Duration,
    pub(crate) seed: u64,
}

/// A whole scenario file: header, the cloud's sections (from [`cloud_sections`]), then one
/// `[[fault]]` per fault in the order given; `kind_name` names a kind as files do.
pub(crate) fn write(
    header: &Header<'_>,
    sections: &str,
    faults: &[Fault],
    kind_name: impl Fn(&Fault) -> String,
) -> String {
    let mut out = String::new();
    for line in header.comments {
        let line = line.replace(['\n', '\r'], " ");
        let _ = writeln!(out, "# {line}");
    }
    let _ = writeln!(out, "name = {}", quoted(header.name));
    let _ = writeln!(out, "description = {}", quoted(header.description));
    let _ = writeln!(out, "duration = {}", duration(header.duration));
    let _ = writeln!(out, "seed = {}", header.seed);
    if !sections.is_empty() {
        out.push('\n');
        out.push_str(sections);
    }
    for f in faults {
        let _ = writeln!(out, "\n[[fault]]");
        let _ = writeln!(out, "at = {}", duration(f.at));
        let _ = writeln!(out, "kind = {}", quoted(&kind_name(f)));
        if !f.hosts.is_empty() {
            let _ = writeln!(out, "hosts = {}", list(&f.hosts));
        }
        if !f.vms.is_empty() {
            let _ = writeln!(out, "vms = {}", list(&f.vms));
        }
        if let Some(d) = f.duration {
            let _ = writeln!(out, "duration = {}", duration(d));
        }
        if let Some(d) = f.delay {
            let _ = writeln!(out, "delay = {}", duration(d));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FaultKind, Scenario};

    const BASE: &str = r#"
name = "base"
duration = "30m"
seed = 3

[config]
"ping.interval" = "30s"
"sim.liveness.bound" = "25m"
"ping.timeout" = 2.5
"sim.boot.time" = "2m"

[[cluster]]
name = "k \"v\" m"
hypervisor = "kvm"
hosts = 3
vms_per_host = 2
ha_fraction = 0.5
capacity_per_host = 10
self_fence = "independent"

[[cluster]]
name = "xen"
hypervisor = "xenserver"
capacity_per_host = 4
zone = "z2"
hosts = 2

[[fault]]
at = "1m"
kind = "power_off"
hosts = ["xen-h1"]

[[expect]]
alert = "host_down"
min = 1

[explore]
faults = [1, 2]
"#;

    #[test]
    fn a_written_scenario_parses_back_to_the_same_cloud_and_faults() {
        let base = Scenario::parse(BASE, "base.toml").unwrap();
        let faults = vec![
            Fault {
                at: Duration::from_secs(90),
                kind: FaultKind::PingDelay,
                hosts: vec!["k \"v\" m-h1".into(), "xen-h2".into()],
                vms: vec![],
                duration: Some(Duration::from_millis(61_500)),
                delay: Some(Duration::from_secs(45)),
            },
            Fault {
                at: Duration::from_secs(600),
                kind: FaultKind::VmCrash,
                hosts: vec![],
                vms: vec!["k \"v\" m-h2-vm1".into()],
                duration: None,
                delay: None,
            },
            Fault {
                at: Duration::from_secs(601),
                kind: FaultKind::ManagerRestart,
                hosts: vec![],
                vms: vec![],
                duration: Some(Duration::from_secs(30)),
                delay: None,
            },
        ];
        let text = write(
            &Header {
                comments: &["found\nby a test".into()],
                name: "round \"trip\"",
                description: "d",
                duration: base.duration,
                seed: 42,
            },
            &cloud_sections(BASE).unwrap(),
            &faults,
            |f| match f.kind {
                FaultKind::PingDelay => "ping_delay".into(),
                FaultKind::VmCrash => "vm_crash".into(),
                _ => "manager_restart".into(),
            },
        );
        let back = Scenario::parse(&text, "written.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back.name, "round \"trip\"");
        assert_eq!(back.seed, Some(42));
        assert_eq!(back.duration, base.duration);
        assert_eq!(back.clusters, base.clusters);
        assert_eq!(back.sim, base.sim);
        assert_eq!(back.config, base.config);
        assert_eq!(back.liveness_bound, base.liveness_bound);
        assert_eq!(back.faults, faults);
        assert!(back.expects.is_empty());
        assert!(text.starts_with("# found by a test\n"), "{text}");
    }
}
