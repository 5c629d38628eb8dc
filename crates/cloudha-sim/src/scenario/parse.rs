//! Parsing scenario text: the raw TOML forms, and their checks into a typed [`Scenario`], every
//! error naming the file and the line.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use cloudha_ha::Config;
use cloudha_protocol::{Status, VmState};
use serde::Deserialize;
use toml::Spanned;

use super::{
    ALERT_KINDS, ClusterSpec, Expect, Fault, FaultKind, INVARIANTS, PROOF_KINDS, SIM_KEYS,
    Scenario, ScenarioError, SimTimings, Target,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    at: String,
    kind: FaultKind,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    vms: Vec<String>,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    delay: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    host: Option<String>,
    vm: Option<String>,
    alert: Option<String>,
    status: Option<String>,
    state: Option<String>,
    by: Option<String>,
    after: Option<String>,
    never: Option<bool>,
    on: Option<String>,
    not_on: Option<String>,
    restarted: Option<bool>,
    min: Option<u64>,
    max: Option<u64>,
    proof: Option<String>,
    bmc_calls: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    duration: Spanned<String>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    config: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    cluster: Vec<Spanned<ClusterSpec>>,
    #[serde(default)]
    fault: Vec<Spanned<RawFault>>,
    #[serde(default)]
    expect: Vec<Spanned<RawExpect>>,
    #[serde(default)]
    violates: Option<Spanned<String>>,
    /// `[explore]`: read by `cloudha explore` (explore/); a run ignores it.
    #[serde(default, rename = "explore")]
    _explore: Option<serde::de::IgnoredAny>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(0, |t| t.lines().count().max(1))
}

impl Scenario {
    /// Parses and checks scenario text; `file` names it in errors.
    ///
    /// # Errors
    /// [`ScenarioError`] with the file, line and what is wrong.
    pub fn parse(text: &str, file: &str) -> Result<Self, ScenarioError> {
        let err = |line: usize, message: String| ScenarioError {
            file: file.to_owned(),
            line,
            message,
        };
        let raw: RawScenario = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start + 1));
            err(line, e.message().to_owned())
        })?;
        let dur = |s: &str, line: usize, what: &str| {
            cloudha_protocol::duration::parse(s).map_err(|e| err(line, format!("`{what}`: {e}")))
        };
        let duration = dur(
            raw.duration.get_ref(),
            line_of(text, raw.duration.span().start + 1),
            "duration",
        )?;

        // [config]: sim keys first, the rest through the manager's own loader.
        let mut liveness_bound = Duration::from_secs(20 * 60);
        let mut sim = SimTimings::default();
        let mut table = toml::Table::new();
        for (key, value) in &raw.config {
            let line = line_of(text, value.span().start + 1);
            if key.starts_with("sim.") && key != "sim.liveness.bound" {
                match sim.set(key, value.get_ref()) {
                    Ok(true) => continue,
                    Ok(false) => {
                        return Err(err(
                            line,
                            format!(
                                "[config]: unknown simulator key `{key}` (known: {})",
                                SIM_KEYS.join(", ")
                            ),
                        ));
                    }
                    Err(why) => return Err(err(line, format!("[config]: `{key}` {why}"))),
                }
            }
            if key == "sim.liveness.bound" {
                let Some(s) = value.get_ref().as_str() else {
                    return Err(err(
                        line,
                        "`sim.liveness.bound` must be a duration string such as \"20m\"".into(),
                    ));
                };
                liveness_bound = dur(s, line, key)?;
            } else {
                table.insert(key.clone(), value.get_ref().clone());
            }
        }
        let config_text = table.to_string();
        let config = Config::from_toml(&config_text, "[config]").map_err(|e| {
            let key = raw
                .config
                .keys()
                .find(|k| e.to_string().contains(k.as_str()));
            let line = key
                .and_then(|k| raw.config.get(k))
                .map_or(0, |v| line_of(text, v.span().start + 1));
            err(line, format!("[config]: {e}"))
        })?;

        let mut clusters = Vec::new();
        let mut host_names = HashSet::new();
        let mut vm_names = HashSet::new();
        for c in &raw.cluster {
            let line = line_of(text, c.span().start + 1);
            let spec = c.get_ref().clone();
            if spec.hosts == 0 {
                return Err(err(
                    line,
                    format!("cluster `{}`: `hosts` must be at least 1", spec.name),
                ));
            }
            if !(0.0..=1.0).contains(&spec.ha_fraction) {
                return Err(err(
                    line,
                    format!(
                        "cluster `{}`: `ha_fraction` must be in 0..1, got {}",
                        spec.name, spec.ha_fraction
                    ),
                ));
            }
            if clusters.iter().any(|o: &ClusterSpec| o.name == spec.name) {
                return Err(err(
                    line,
                    format!("cluster `{}` is defined twice", spec.name),
                ));
            }
            for h in 1..=spec.hosts {
                host_names.insert(format!("{}-h{h}", spec.name));
                for v in 1..=spec.vms_per_host {
                    vm_names.insert(format!("{}-h{h}-vm{v}", spec.name));
                }
            }
            clusters.push(spec);
        }
        if clusters.is_empty() {
            return Err(err(0, "a scenario needs at least one [[cluster]]".into()));
        }
        config
            .liveness
            .check_clusters(clusters.iter().map(|c| (c.name.as_str(), c.hosts as usize)))
            .map_err(|e| {
                let line = raw
                    .config
                    .get("ha.investigators.agreement")
                    .map_or(0, |v| line_of(text, v.span().start + 1));
                err(line, format!("[config]: {e}"))
            })?;

        let mut faults = Vec::new();
        for f in &raw.fault {
            let line = line_of(text, f.span().start + 1);
            let r = f.get_ref();
            let at = dur(&r.at, line, "at")?;
            if at > duration {
                return Err(err(
                    line,
                    format!(
                        "fault `{:?}` at {} is after the scenario's `duration` ({})",
                        r.kind,
                        cloudha_protocol::duration::format(at),
                        cloudha_protocol::duration::format(duration)
                    ),
                ));
            }
            let need = r.kind.needs();
            match need {
                Target::Hosts if r.hosts.is_empty() => {
                    return Err(err(line, format!("fault `{:?}` needs `hosts`", r.kind)));
                }
                Target::Vms if r.vms.is_empty() => {
                    return Err(err(line, "fault `vm_crash` needs `vms`".into()));
                }
                Target::Nothing if !(r.hosts.is_empty() && r.vms.is_empty()) => {
                    return Err(err(
                        line,
                        "fault `manager_restart` takes no `hosts` or `vms`".into(),
                    ));
                }
                _ => {}
            }
            if let Some(h) = r.hosts.iter().find(|h| !host_names.contains(*h)) {
                return Err(err(line, format!("unknown host `{h}`")));
            }
            if let Some(v) = r.vms.iter().find(|v| !vm_names.contains(*v)) {
                return Err(err(line, format!("unknown VM `{v}`")));
            }
            if r.kind == FaultKind::PingDelay && r.delay.is_none() {
                return Err(err(line, "fault `ping_delay` needs `delay`".into()));
            }
            faults.push(Fault {
                at,
                kind: r.kind,
                hosts: r.hosts.clone(),
                vms: r.vms.clone(),
                duration: r
                    .duration
                    .as_deref()
                    .map(|d| dur(d, line, "duration"))
                    .transpose()?,
                delay: r
                    .delay
                    .as_deref()
                    .map(|d| dur(d, line, "delay"))
                    .transpose()?,
            });
        }
        faults.sort_by_key(|f| f.at);

        let mut expects = Vec::new();
        for e in &raw.expect {
            let line = line_of(text, e.span().start + 1);
            let r = e.get_ref();
            let by = r.by.as_deref().map(|d| dur(d, line, "by")).transpose()?;
            let after = r
                .after
                .as_deref()
                .map(|d| dur(d, line, "after"))
                .transpose()?
                .unwrap_or_default();
            let count = |what: &str| {
                if r.min.is_none() && r.max.is_none() {
                    return Err(err(
                        line,
                        format!("a {what} expectation needs `min` and/or `max`"),
                    ));
                }
                if let (Some(a), Some(b)) = (r.min, r.max)
                    && a > b
                {
                    return Err(err(line, format!("`min` ({a}) is above `max` ({b})")));
                }
                Ok(())
            };
            if let Some(kind) = &r.proof {
                if r.host.is_some() || r.vm.is_some() || r.alert.is_some() || r.bmc_calls.is_some()
                {
                    return Err(err(
                        line,
                        "a `proof` expectation takes only `min` and `max`".into(),
                    ));
                }
                if !PROOF_KINDS.contains(&kind.as_str()) {
                    return Err(err(
                        line,
                        format!(
                            "unknown proof kind `{kind}` (known: {})",
                            PROOF_KINDS.join(", ")
                        ),
                    ));
                }
                count("proof")?;
                expects.push(Expect::ProofCount {
                    kind: kind.clone(),
                    min: r.min,
                    max: r.max,
                });
                continue;
            }
            if let Some(host) = &r.bmc_calls {
                if r.host.is_some() || r.vm.is_some() || r.alert.is_some() {
                    return Err(err(
                        line,
                        "a `bmc_calls` expectation takes only `min` and `max`".into(),
                    ));
                }
                if !host_names.contains(host) {
                    return Err(err(line, format!("unknown host `{host}`")));
                }
                count("bmc_calls")?;
                expects.push(Expect::BmcCalls {
                    host: host.clone(),
                    min: r.min,
                    max: r.max,
                });
                continue;
            }
            let expect =
                match (&r.host, &r.vm, &r.alert) {
                    (Some(host), None, None) => {
                        if !host_names.contains(host) {
                            return Err(err(line, format!("unknown host `{host}`")));
                        }
                        let status: Status = r
                            .status
                            .as_deref()
                            .ok_or_else(|| err(line, "a host expectation needs `status`".into()))?
                            .parse()
                            .map_err(|e| err(line, format!("{e}")))?;
                        match (r.never, by) {
                            (Some(true), None) => Expect::HostNever {
                                host: host.clone(),
                                status,
                            },
                            (None | Some(false), Some(by)) => Expect::HostStatus {
                                host: host.clone(),
                                status,
                                after,
                                by,
                            },
                            _ => {
                                return Err(err(
                                    line,
                                    "a host expectation needs either `by` or `never = true`".into(),
                                ));
                            }
                        }
                    }
                    (None, Some(vm), None) => {
                        if !vm_names.contains(vm) {
                            return Err(err(line, format!("unknown VM `{vm}`")));
                        }
                        match (r.restarted, &r.state) {
                            (Some(false), None) => Expect::VmNotRestarted { vm: vm.clone() },
                            (None, Some(state)) => {
                                let state = match state.as_str() {
                                    "Running" => VmState::Running,
                                    "Stopped" => VmState::Stopped,
                                    other => {
                                        return Err(err(
                                            line,
                                            format!(
                                                "VM state must be Running or Stopped, got `{other}`"
                                            ),
                                        ));
                                    }
                                };
                                let by = by.ok_or_else(|| {
                                    err(line, "a VM state expectation needs `by`".into())
                                })?;
                                for h in [&r.on, &r.not_on].into_iter().flatten() {
                                    if !host_names.contains(h) {
                                        return Err(err(line, format!("unknown host `{h}`")));
                                    }
                                }
                                Expect::VmState {
                                    vm: vm.clone(),
                                    state,
                                    by,
                                    on: r.on.clone(),
                                    not_on: r.not_on.clone(),
                                }
                            }
                            _ => return Err(err(
                                line,
                                "a VM expectation needs `state` and `by`, or `restarted = false`"
                                    .into(),
                            )),
                        }
                    }
                    (None, None, Some(kind)) => {
                        if !ALERT_KINDS.contains(&kind.as_str()) {
                            return Err(err(
                                line,
                                format!(
                                    "unknown alert kind `{kind}` (known: {})",
                                    ALERT_KINDS.join(", ")
                                ),
                            ));
                        }
                        if r.min.is_none() && r.max.is_none() {
                            return Err(err(
                                line,
                                "an alert expectation needs `min` and/or `max`".into(),
                            ));
                        }
                        Expect::AlertCount {
                            kind: kind.clone(),
                            min: r.min,
                            max: r.max,
                        }
                    }
                    _ => {
                        return Err(err(
                            line,
                            "an expectation names exactly one of `host`, `vm` or `alert`".into(),
                        ));
                    }
                };
            expects.push(expect);
        }

        let violates = match raw.violates {
            None => None,
            Some(v) if INVARIANTS.contains(&v.get_ref().as_str()) => Some(v.into_inner()),
            Some(v) => {
                return Err(err(
                    line_of(text, v.span().start + 1),
                    format!(
                        "`violates` names no invariant: `{}` (known: {})",
                        v.get_ref(),
                        INVARIANTS.join(", ")
                    ),
                ));
            }
        };
        Ok(Scenario {
            name: raw.name,
            description: raw.description,
            duration,
            seed: raw.seed,
            config,
            liveness_bound,
            sim,
            clusters,
            faults,
            expects,
            violates,
        })
    }
}
