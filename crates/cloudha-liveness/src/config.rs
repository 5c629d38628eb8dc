//! The agent manager's settings, with CloudStack's key names and defaults. Durations are written
//! `"60s"`, `"8m30s"` (or a bare number of seconds, as CloudStack stores them).
//!
//! One config file holds these keys and the HA manager's: `cloudha_ha::Config` reads the file,
//! refuses a key that neither part knows, and validates both. Deserializing a
//! [`LivenessConfig`] alone ignores keys that are not its own.

use std::time::Duration;

use cloudha_protocol::duration::{opt_secs, secs};
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The agent manager's settings: pings, the monitor, investigation, alerting, out-of-band
/// management; and the VM-HA switches, which the agent manager reads first (no investigation
/// while VM-HA is off). Build one from [`Default`] and set fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct LivenessConfig {
    /// `ping.interval`: agent ping period, PingTask period.
    #[serde(rename = "ping.interval", with = "secs")]
    pub ping_interval: Duration,
    /// `ping.timeout`: multiplier; a host is behind on ping after `ping.interval × ping.timeout`.
    #[serde(rename = "ping.timeout")]
    pub ping_timeout: f64,
    /// `ping.monitor.resolution`: a host behind on ping is flagged within this of the deadline.
    #[serde(rename = "ping.monitor.resolution", with = "secs")]
    pub ping_monitor_resolution: Duration,
    /// `alert.wait`: how long an undeterminable or Disconnected host waits, from its last
    /// successful ping, before it goes to Alert.
    #[serde(rename = "alert.wait", with = "secs")]
    pub alert_wait: Duration,
    /// `alert.reinvestigate.interval`: how often hosts in Alert are investigated again
    /// (unset: `ping.interval`).
    #[serde(
        rename = "alert.reinvestigate.interval",
        with = "opt_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub alert_reinvestigate_interval: Option<Duration>,
    /// `wait`: default wait for a command's answer.
    #[serde(rename = "wait", with = "secs")]
    pub wait: Duration,
    /// `ready.command.wait`: wait for the Ready command after connect.
    #[serde(rename = "ready.command.wait", with = "secs")]
    pub ready_command_wait: Duration,
    /// `host.ping.retry.count`: extra `get_current_status` calls of a direct agent's PingTask.
    #[serde(rename = "host.ping.retry.count")]
    pub host_ping_retry_count: u32,
    /// `host.ping.retry.timer`: pause between those retries.
    #[serde(rename = "host.ping.retry.timer", with = "secs")]
    pub host_ping_retry_timer: Duration,
    /// `direct.agent.scan.interval`: how often unconnected direct-agent hosts are tried again.
    #[serde(rename = "direct.agent.scan.interval", with = "secs")]
    pub direct_agent_scan_interval: Duration,
    /// `ha.investigators.order`: the investigator chain, first to last.
    #[serde(rename = "ha.investigators.order")]
    pub ha_investigators_order: Vec<String>,
    /// `ha.investigators.agreement`: neighbour answers that must agree before a neighbour probe
    /// decides (1 = the first definite answer wins, CloudStack's rule).
    #[serde(rename = "ha.investigators.agreement")]
    pub ha_investigators_agreement: u32,
    /// `vm.ha.enabled`: master switch of VM-HA.
    #[serde(rename = "vm.ha.enabled")]
    pub vm_ha_enabled: bool,
    /// `vm.ha.alerts.enabled`: VM-HA alerts.
    #[serde(rename = "vm.ha.alerts.enabled")]
    pub vm_ha_alerts_enabled: bool,
    /// `outofbandmanagement.action.timeout`: bound of every BMC call.
    #[serde(rename = "outofbandmanagement.action.timeout", with = "secs")]
    pub oobm_action_timeout: Duration,
}

/// The investigators this crate implements, by their CloudStack names.
pub const INVESTIGATORS: &[&str] = &[
    "SimpleInvestigator",
    "XenServerInvestigator",
    "KVMInvestigator",
    "VMwareInvestigator",
    "PingInvestigator",
];

impl Default for LivenessConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(60),
            ping_timeout: 2.5,
            ping_monitor_resolution: Duration::from_secs(1),
            alert_wait: Duration::from_secs(1800),
            alert_reinvestigate_interval: None,
            wait: Duration::from_secs(1800),
            ready_command_wait: Duration::from_secs(60),
            host_ping_retry_count: 0,
            host_ping_retry_timer: Duration::from_secs(5),
            direct_agent_scan_interval: Duration::from_secs(90),
            ha_investigators_order: INVESTIGATORS.iter().map(|s| (*s).to_owned()).collect(),
            ha_investigators_agreement: 1,
            vm_ha_enabled: true,
            vm_ha_alerts_enabled: true,
            oobm_action_timeout: Duration::from_secs(60),
        }
    }
}

/// One documented key: name, default as written in a file, meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyDoc {
    /// The key.
    pub key: &'static str,
    /// Its default, as written in a config file.
    pub default: &'static str,
    /// What it does.
    pub meaning: &'static str,
}

impl KeyDoc {
    /// A row of the key table.
    pub const fn new(key: &'static str, default: &'static str, meaning: &'static str) -> Self {
        Self {
            key,
            default,
            meaning,
        }
    }
}

/// The agent manager's keys with their defaults and meanings (`cloudha config --defaults` prints
/// these and the HA manager's).
pub const KEYS: &[KeyDoc] = &[
    KeyDoc::new(
        "ping.interval",
        "60s",
        "agent ping period; period of a direct agent's PingTask",
    ),
    KeyDoc::new(
        "ping.timeout",
        "2.5",
        "multiplier: a host is behind on ping after ping.interval x ping.timeout",
    ),
    KeyDoc::new(
        "ping.monitor.resolution",
        "1s",
        "a host behind on ping is flagged within this of its deadline",
    ),
    KeyDoc::new(
        "alert.wait",
        "30m",
        "an undeterminable or Disconnected host goes to Alert this long after its last successful ping",
    ),
    KeyDoc::new(
        "alert.reinvestigate.interval",
        "(ping.interval)",
        "hosts in Alert are investigated again this often; only a Down verdict acts",
    ),
    KeyDoc::new("wait", "30m", "default wait for a command's answer"),
    KeyDoc::new(
        "ready.command.wait",
        "60s",
        "wait for the Ready command after a host connects",
    ),
    KeyDoc::new(
        "host.ping.retry.count",
        "0",
        "extra get_current_status calls of a direct agent's PingTask",
    ),
    KeyDoc::new("host.ping.retry.timer", "5s", "pause between those retries"),
    KeyDoc::new(
        "direct.agent.scan.interval",
        "90s",
        "unconnected direct-agent hosts are tried again this often",
    ),
    KeyDoc::new(
        "ha.investigators.order",
        "[SimpleInvestigator, XenServerInvestigator, KVMInvestigator, VMwareInvestigator, PingInvestigator]",
        "the investigator chain, first to last",
    ),
    KeyDoc::new(
        "ha.investigators.agreement",
        "1",
        "dead heartbeat answers needed for Down, with no alive one (1: CloudStack's rule; any alive answer vetoes Down)",
    ),
    KeyDoc::new("vm.ha.enabled", "true", "master switch of VM-HA"),
    KeyDoc::new("vm.ha.alerts.enabled", "true", "VM-HA alerts"),
    KeyDoc::new(
        "outofbandmanagement.action.timeout",
        "60s",
        "bound of every BMC call (power status, off)",
    ),
];

impl LivenessConfig {
    /// The ping timeout T = `ping.interval × ping.timeout`.
    pub fn ping_deadline(&self) -> Duration {
        self.ping_interval.mul_f64(self.ping_timeout)
    }

    /// Refuses an `ha.investigators.agreement` above 1 that a cluster cannot reach: a cluster
    /// with neighbours, but fewer than the count (each host has `size - 1`). A one-host cluster
    /// has no neighbour at all: nobody can vouch for its host, whatever the count.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key and the cluster.
    pub fn check_clusters<'a>(
        &self,
        clusters: impl IntoIterator<Item = (&'a str, usize)>,
    ) -> Result<(), ConfigError> {
        let m = self.ha_investigators_agreement as usize;
        if m <= 1 {
            return Ok(());
        }
        for (name, size) in clusters {
            let neighbours = size.saturating_sub(1);
            if neighbours > 0 && neighbours < m {
                return Err(ConfigError::Invalid {
                    key: "ha.investigators.agreement",
                    reason: format!(
                        "is {m}, but a host of cluster `{name}` has only {neighbours} neighbour(s): no host there could ever be proven Down"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The Alert re-investigation interval.
    pub fn alert_reinvestigate(&self) -> Duration {
        self.alert_reinvestigate_interval
            .unwrap_or(self.ping_interval)
    }

    /// Checks every rule; the first broken one is reported with its key.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        let positive = [
            ("ping.interval", self.ping_interval),
            ("ping.monitor.resolution", self.ping_monitor_resolution),
            ("wait", self.wait),
            ("ready.command.wait", self.ready_command_wait),
            (
                "direct.agent.scan.interval",
                self.direct_agent_scan_interval,
            ),
            (
                "outofbandmanagement.action.timeout",
                self.oobm_action_timeout,
            ),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return bad(key, "must be greater than zero".into());
            }
        }
        if !(self.ping_timeout.is_finite() && self.ping_timeout > 0.0) {
            return bad(
                "ping.timeout",
                format!("must be a positive number, got {}", self.ping_timeout),
            );
        }
        if self.ping_monitor_resolution > self.ping_deadline() {
            return bad(
                "ping.monitor.resolution",
                "must not exceed ping.interval x ping.timeout".into(),
            );
        }
        if self
            .alert_reinvestigate_interval
            .is_some_and(|d| d.is_zero())
        {
            return bad(
                "alert.reinvestigate.interval",
                "must be greater than zero".into(),
            );
        }
        if self.ha_investigators_agreement == 0 {
            return bad("ha.investigators.agreement", "must be at least 1".into());
        }
        if let Some(unknown) = self
            .ha_investigators_order
            .iter()
            .find(|n| !INVESTIGATORS.contains(&n.as_str()))
        {
            return bad(
                "ha.investigators.order",
                format!(
                    "unknown investigator `{unknown}` (known: {})",
                    INVESTIGATORS.join(", ")
                ),
            );
        }
        Ok(())
    }
}
