//! Configuration: one struct with CloudStack's key names and defaults, loadable from TOML and
//! validated once. Durations are written `"60s"`, `"8m30s"` (or a bare number of seconds, as
//! CloudStack stores them). Unknown keys are errors naming the key.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ConfigError;

/// Every setting of the manager (agent side and HA side).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
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
    /// `ha.workers`: concurrent HA work slots.
    #[serde(rename = "ha.workers")]
    pub ha_workers: u32,
    /// `time.to.sleep`: HA worker idle wait.
    #[serde(rename = "time.to.sleep", with = "secs")]
    pub time_to_sleep: Duration,
    /// `max.retries` (also read as `vm.ha.migration.max.retries`): tries of every HA work type.
    #[serde(rename = "max.retries", alias = "vm.ha.migration.max.retries")]
    pub max_retries: u32,
    /// `time.between.failures`: window for counting repeat failures; age of purged work items.
    #[serde(rename = "time.between.failures", with = "secs")]
    pub time_between_failures: Duration,
    /// `time.between.cleanup`: period of the HA work cleanup.
    #[serde(rename = "time.between.cleanup", with = "secs")]
    pub time_between_cleanup: Duration,
    /// `restart.retry.interval`: retry of a VM restart.
    #[serde(rename = "restart.retry.interval", with = "secs")]
    pub restart_retry_interval: Duration,
    /// `stop.retry.interval`: retry of stop / check-stop / force-stop / destroy.
    #[serde(rename = "stop.retry.interval", with = "secs")]
    pub stop_retry_interval: Duration,
    /// `investigate.retry.interval`: retry when a VM is alive but its host is not Up.
    #[serde(rename = "investigate.retry.interval", with = "secs")]
    pub investigate_retry_interval: Duration,
    /// `migrate.retry.interval`: retry of a migration away.
    #[serde(rename = "migrate.retry.interval", with = "secs")]
    pub migrate_retry_interval: Duration,
    /// `force.ha`: restart VMs even without the HA flag.
    #[serde(rename = "force.ha")]
    pub force_ha: bool,
    /// `vm.ha.enabled`: master switch of VM-HA.
    #[serde(rename = "vm.ha.enabled")]
    pub vm_ha_enabled: bool,
    /// `vm.ha.alerts.enabled`: VM-HA alerts.
    #[serde(rename = "vm.ha.alerts.enabled")]
    pub vm_ha_alerts_enabled: bool,
    /// `ha.tag`: host tag for HA restarts.
    #[serde(rename = "ha.tag", skip_serializing_if = "Option::is_none")]
    pub ha_tag: Option<String>,
    /// `ha.vm.restart.hostup`: restart an HA VM reported off on an Up host.
    #[serde(rename = "ha.vm.restart.hostup")]
    pub ha_vm_restart_hostup: bool,
    /// `ha.brake.fraction`: the brake holds for a cluster while more than this fraction of its
    /// hosts are suspect.
    #[serde(rename = "ha.brake.fraction")]
    pub ha_brake_fraction: f64,
    /// `ha.startup.grace`: the brake holds for every cluster this long after the manager starts.
    #[serde(rename = "ha.startup.grace", with = "secs")]
    pub ha_startup_grace: Duration,
    /// `kvm.ha.fence.on.storage.heartbeat.failure`: a host is dead when any heartbeat pool fails.
    #[serde(rename = "kvm.ha.fence.on.storage.heartbeat.failure")]
    pub kvm_ha_fence_on_storage_heartbeat_failure: bool,
    /// `kvm.heartbeat.interval`: what the manager assumes of a KVM host's heartbeat writer:
    /// a write every this long.
    #[serde(rename = "kvm.heartbeat.interval", with = "secs")]
    pub kvm_heartbeat_interval: Duration,
    /// `kvm.heartbeat.staleness`: a heartbeat older than this reads as dead.
    #[serde(rename = "kvm.heartbeat.staleness", with = "secs")]
    pub kvm_heartbeat_staleness: Duration,
    /// `kvm.heartbeat.write.retries`: failed writes retried this many times before the host
    /// fences (reboots) itself.
    #[serde(rename = "kvm.heartbeat.write.retries")]
    pub kvm_heartbeat_write_retries: u32,
    /// `kvm.heartbeat.retry.interval`: the pause between those retries.
    #[serde(rename = "kvm.heartbeat.retry.interval", with = "secs")]
    pub kvm_heartbeat_retry_interval: Duration,
    /// `xen.heartbeat.staleness`: a XenServer pool heartbeat older than this reads as dead.
    #[serde(rename = "xen.heartbeat.staleness", with = "secs")]
    pub xen_heartbeat_staleness: Duration,
    /// `xen.heartbeat.self.reboot.timeout`: a XenServer host that cannot write its pool
    /// heartbeat for this long reboots itself.
    #[serde(rename = "xen.heartbeat.self.reboot.timeout", with = "secs")]
    pub xen_heartbeat_self_reboot_timeout: Duration,
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

impl Default for Config {
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
            ha_workers: 5,
            time_to_sleep: Duration::from_secs(60),
            max_retries: 5,
            time_between_failures: Duration::from_secs(3600),
            time_between_cleanup: Duration::from_secs(86_400),
            restart_retry_interval: Duration::from_secs(600),
            stop_retry_interval: Duration::from_secs(600),
            investigate_retry_interval: Duration::from_secs(60),
            migrate_retry_interval: Duration::from_secs(120),
            force_ha: false,
            vm_ha_enabled: true,
            vm_ha_alerts_enabled: true,
            ha_tag: None,
            ha_vm_restart_hostup: true,
            ha_brake_fraction: 0.5,
            ha_startup_grace: Duration::from_secs(300),
            kvm_ha_fence_on_storage_heartbeat_failure: false,
            kvm_heartbeat_interval: Duration::from_secs(60),
            kvm_heartbeat_staleness: Duration::from_secs(60),
            kvm_heartbeat_write_retries: 5,
            kvm_heartbeat_retry_interval: Duration::from_secs(10),
            xen_heartbeat_staleness: Duration::from_secs(30),
            xen_heartbeat_self_reboot_timeout: Duration::from_secs(30),
            oobm_action_timeout: Duration::from_secs(60),
        }
    }
}

/// One documented key: name, default as written in a file, meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDoc {
    /// The key.
    pub key: &'static str,
    /// Its default, as written in a config file.
    pub default: &'static str,
    /// What it does.
    pub meaning: &'static str,
}

/// Every key with its default and meaning (what `cloudha config --defaults` prints).
pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: "ping.interval",
        default: "60s",
        meaning: "agent ping period; period of a direct agent's PingTask",
    },
    KeyDoc {
        key: "ping.timeout",
        default: "2.5",
        meaning: "multiplier: a host is behind on ping after ping.interval x ping.timeout",
    },
    KeyDoc {
        key: "ping.monitor.resolution",
        default: "1s",
        meaning: "a host behind on ping is flagged within this of its deadline",
    },
    KeyDoc {
        key: "alert.wait",
        default: "30m",
        meaning: "an undeterminable or Disconnected host goes to Alert this long after its last successful ping",
    },
    KeyDoc {
        key: "alert.reinvestigate.interval",
        default: "(ping.interval)",
        meaning: "hosts in Alert are investigated again this often; only a Down verdict acts",
    },
    KeyDoc {
        key: "wait",
        default: "30m",
        meaning: "default wait for a command's answer",
    },
    KeyDoc {
        key: "ready.command.wait",
        default: "60s",
        meaning: "wait for the Ready command after a host connects",
    },
    KeyDoc {
        key: "host.ping.retry.count",
        default: "0",
        meaning: "extra get_current_status calls of a direct agent's PingTask",
    },
    KeyDoc {
        key: "host.ping.retry.timer",
        default: "5s",
        meaning: "pause between those retries",
    },
    KeyDoc {
        key: "direct.agent.scan.interval",
        default: "90s",
        meaning: "unconnected direct-agent hosts are tried again this often",
    },
    KeyDoc {
        key: "ha.investigators.order",
        default: "[SimpleInvestigator, XenServerInvestigator, KVMInvestigator, VMwareInvestigator, PingInvestigator]",
        meaning: "the investigator chain, first to last",
    },
    KeyDoc {
        key: "ha.investigators.agreement",
        default: "1",
        meaning: "dead heartbeat answers needed for Down, with no alive one (1: CloudStack's rule; any alive answer vetoes Down)",
    },
    KeyDoc {
        key: "ha.workers",
        default: "5",
        meaning: "concurrent HA work slots",
    },
    KeyDoc {
        key: "time.to.sleep",
        default: "60s",
        meaning: "HA worker idle wait",
    },
    KeyDoc {
        key: "max.retries",
        default: "5",
        meaning: "tries of every HA work type (alias vm.ha.migration.max.retries)",
    },
    KeyDoc {
        key: "time.between.failures",
        default: "1h",
        meaning: "window for counting repeat failures; age of purged HA work",
    },
    KeyDoc {
        key: "time.between.cleanup",
        default: "24h",
        meaning: "period of the HA work cleanup",
    },
    KeyDoc {
        key: "restart.retry.interval",
        default: "10m",
        meaning: "retry of a VM restart",
    },
    KeyDoc {
        key: "stop.retry.interval",
        default: "10m",
        meaning: "retry of stop, check-stop, force-stop and destroy",
    },
    KeyDoc {
        key: "investigate.retry.interval",
        default: "60s",
        meaning: "retry when a VM is alive but its host is not Up",
    },
    KeyDoc {
        key: "migrate.retry.interval",
        default: "2m",
        meaning: "retry of a migration away",
    },
    KeyDoc {
        key: "force.ha",
        default: "false",
        meaning: "restart VMs even without the HA flag",
    },
    KeyDoc {
        key: "vm.ha.enabled",
        default: "true",
        meaning: "master switch of VM-HA",
    },
    KeyDoc {
        key: "vm.ha.alerts.enabled",
        default: "true",
        meaning: "VM-HA alerts",
    },
    KeyDoc {
        key: "ha.tag",
        default: "(unset)",
        meaning: "host tag for HA restarts",
    },
    KeyDoc {
        key: "ha.vm.restart.hostup",
        default: "true",
        meaning: "restart an HA VM reported off on an Up host",
    },
    KeyDoc {
        key: "ha.brake.fraction",
        default: "0.5",
        meaning: "no fencing or restart in a cluster while more than this fraction of its hosts are suspect",
    },
    KeyDoc {
        key: "ha.startup.grace",
        default: "5m",
        meaning: "the brake holds everywhere this long after the manager starts",
    },
    KeyDoc {
        key: "kvm.ha.fence.on.storage.heartbeat.failure",
        default: "false",
        meaning: "a KVM host is dead when any heartbeat pool fails",
    },
    KeyDoc {
        key: "kvm.heartbeat.interval",
        default: "60s",
        meaning: "assumed: a KVM host writes its storage heartbeat this often",
    },
    KeyDoc {
        key: "kvm.heartbeat.staleness",
        default: "60s",
        meaning: "assumed: a KVM heartbeat older than this reads as dead",
    },
    KeyDoc {
        key: "kvm.heartbeat.write.retries",
        default: "5",
        meaning: "assumed: failed heartbeat writes are retried this often before the host reboots itself",
    },
    KeyDoc {
        key: "kvm.heartbeat.retry.interval",
        default: "10s",
        meaning: "assumed: pause between those retries (a dead heartbeat proves a self-fence only past max(interval, staleness) + retries x this)",
    },
    KeyDoc {
        key: "xen.heartbeat.staleness",
        default: "30s",
        meaning: "assumed: a XenServer pool heartbeat older than this reads as dead",
    },
    KeyDoc {
        key: "xen.heartbeat.self.reboot.timeout",
        default: "30s",
        meaning: "assumed: a XenServer host that cannot write its pool heartbeat this long reboots itself (a pool fence needs staleness + this)",
    },
    KeyDoc {
        key: "outofbandmanagement.action.timeout",
        default: "60s",
        meaning: "bound of every BMC call (power status, off)",
    },
];

impl Config {
    /// The ping timeout T = `ping.interval × ping.timeout`.
    pub fn ping_deadline(&self) -> Duration {
        self.ping_interval.mul_f64(self.ping_timeout)
    }

    /// How old a KVM host's storage heartbeat must be before its self-fence (when independent of
    /// its agent) must have fired: `max(kvm.heartbeat.interval, kvm.heartbeat.staleness)` plus
    /// the whole write-retry window (`kvm.heartbeat.write.retries × kvm.heartbeat.retry.interval`).
    /// The last good write is at most this long ago when the host still runs.
    pub fn kvm_self_fence_deadline(&self) -> Duration {
        self.kvm_heartbeat_interval
            .max(self.kvm_heartbeat_staleness)
            + self
                .kvm_heartbeat_retry_interval
                .saturating_mul(self.kvm_heartbeat_write_retries)
    }

    /// How old a XenServer host's pool heartbeat must be before its self-reboot must have
    /// fired: `xen.heartbeat.staleness + xen.heartbeat.self.reboot.timeout`.
    pub fn xen_self_fence_deadline(&self) -> Duration {
        self.xen_heartbeat_staleness + self.xen_heartbeat_self_reboot_timeout
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

    /// Parses and validates TOML text. `origin` names the text in errors (a file path).
    ///
    /// # Errors
    /// [`ConfigError`] naming the key (and line, for parse errors) that is wrong.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
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
            ("time.to.sleep", self.time_to_sleep),
            ("restart.retry.interval", self.restart_retry_interval),
            ("stop.retry.interval", self.stop_retry_interval),
            (
                "investigate.retry.interval",
                self.investigate_retry_interval,
            ),
            ("migrate.retry.interval", self.migrate_retry_interval),
            ("time.between.cleanup", self.time_between_cleanup),
            ("kvm.heartbeat.interval", self.kvm_heartbeat_interval),
            ("kvm.heartbeat.staleness", self.kvm_heartbeat_staleness),
            ("xen.heartbeat.staleness", self.xen_heartbeat_staleness),
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
        if self.ha_workers == 0 {
            return bad("ha.workers", "must be at least 1".into());
        }
        if self.ha_investigators_agreement == 0 {
            return bad("ha.investigators.agreement", "must be at least 1".into());
        }
        if !(self.ha_brake_fraction > 0.0 && self.ha_brake_fraction <= 1.0) {
            return bad(
                "ha.brake.fraction",
                format!("must be in (0, 1], got {}", self.ha_brake_fraction),
            );
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

/// Durations as `"60s"` strings or bare (non-negative) numbers of seconds.
pub mod secs {
    use super::*;

    /// Writes `"60s"`.
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&cloudha_protocol::duration::format(*d))
    }

    /// Reads `"60s"`, `60` or `1.5`.
    ///
    /// # Errors
    /// A message naming the bad value.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(Visitor)
    }

    pub(super) struct Visitor;

    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as \"60s\" or \"8m30s\", or a number of seconds")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            cloudha_protocol::duration::parse(v).map_err(E::custom)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("a duration must not be negative, got {v}")))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(|_| {
                E::custom(format!(
                    "a duration must be a non-negative number of seconds, got {v}"
                ))
            })
        }
    }
}

/// Optional durations, same forms as [`secs`].
pub mod opt_secs {
    use super::*;

    /// Writes `"60s"` (absent values are skipped by the field attribute).
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => secs::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Reads like [`secs::deserialize`].
    ///
    /// # Errors
    /// A message naming the bad value.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_any(secs::Visitor).map(Some)
    }
}
