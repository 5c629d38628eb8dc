//! The HA manager's settings ([`HaConfig`]) and the whole config file ([`Config`]): the agent
//! manager's keys ([`LivenessConfig`]) and the HA manager's, with CloudStack's names, in one
//! TOML table. Durations are written `"60s"`, `"8m30s"` (or a bare number of seconds, as
//! CloudStack stores them). A key neither part knows is an error naming the key.

use std::time::Duration;

use cloudha_liveness::ConfigError;
use cloudha_liveness::LivenessConfig;
use cloudha_liveness::config::KeyDoc;
use cloudha_protocol::duration::secs;
use serde::{Deserialize, Serialize};

/// The HA manager's settings: the work queue, its retries, the brake, and what the fencers
/// assume of a host's self-fence (heartbeat timings). Build one from [`Default`] and set fields.
///
/// The HA manager also reads the agent manager's settings it needs (`vm.ha.enabled`,
/// `vm.ha.alerts.enabled`, `wait`, the ping deadline) from the [`cloudha_liveness::AgentManager`]
/// it follows, so each key has one home.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct HaConfig {
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
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
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
        }
    }
}

/// The HA manager's keys with their defaults and meanings.
pub const KEYS: &[KeyDoc] = &[
    KeyDoc::new("ha.workers", "5", "concurrent HA work slots"),
    KeyDoc::new("time.to.sleep", "60s", "HA worker idle wait"),
    KeyDoc::new(
        "max.retries",
        "5",
        "tries of every HA work type (alias vm.ha.migration.max.retries)",
    ),
    KeyDoc::new(
        "time.between.failures",
        "1h",
        "window for counting repeat failures; age of purged HA work",
    ),
    KeyDoc::new(
        "time.between.cleanup",
        "24h",
        "period of the HA work cleanup",
    ),
    KeyDoc::new("restart.retry.interval", "10m", "retry of a VM restart"),
    KeyDoc::new(
        "stop.retry.interval",
        "10m",
        "retry of stop, check-stop, force-stop and destroy",
    ),
    KeyDoc::new(
        "investigate.retry.interval",
        "60s",
        "retry when a VM is alive but its host is not Up",
    ),
    KeyDoc::new("migrate.retry.interval", "2m", "retry of a migration away"),
    KeyDoc::new("force.ha", "false", "restart VMs even without the HA flag"),
    KeyDoc::new("ha.tag", "(unset)", "host tag for HA restarts"),
    KeyDoc::new(
        "ha.vm.restart.hostup",
        "true",
        "restart an HA VM reported off on an Up host",
    ),
    KeyDoc::new(
        "ha.brake.fraction",
        "0.5",
        "no fencing or restart in a cluster while more than this fraction of its hosts are suspect",
    ),
    KeyDoc::new(
        "ha.startup.grace",
        "5m",
        "the brake holds everywhere this long after the manager starts",
    ),
    KeyDoc::new(
        "kvm.ha.fence.on.storage.heartbeat.failure",
        "false",
        "Host-HA (spec §7): a KVM host is dead when any heartbeat pool fails; read, not used yet (Host-HA is not built)",
    ),
    KeyDoc::new(
        "kvm.heartbeat.interval",
        "60s",
        "assumed: a KVM host writes its storage heartbeat this often",
    ),
    KeyDoc::new(
        "kvm.heartbeat.staleness",
        "60s",
        "assumed: a KVM heartbeat older than this reads as dead",
    ),
    KeyDoc::new(
        "kvm.heartbeat.write.retries",
        "5",
        "assumed: failed heartbeat writes are retried this often before the host reboots itself",
    ),
    KeyDoc::new(
        "kvm.heartbeat.retry.interval",
        "10s",
        "assumed: pause between those retries (a dead heartbeat proves a self-fence only past max(interval, staleness) + retries x this)",
    ),
    KeyDoc::new(
        "xen.heartbeat.staleness",
        "30s",
        "assumed: a XenServer pool heartbeat older than this reads as dead",
    ),
    KeyDoc::new(
        "xen.heartbeat.self.reboot.timeout",
        "30s",
        "assumed: a XenServer host that cannot write its pool heartbeat this long reboots itself (a pool fence needs staleness + this)",
    ),
];

impl HaConfig {
    /// How old a KVM host's storage heartbeat must be before its self-fence (when independent of
    /// its agent) must have fired: `max(kvm.heartbeat.interval, kvm.heartbeat.staleness)` plus
    /// the whole write-retry window (`kvm.heartbeat.write.retries × kvm.heartbeat.retry.interval`).
    /// The last good write is at most this long ago when the host still runs.
    pub fn kvm_self_fence_deadline(&self) -> Duration {
        // Saturating: a window past what a Duration holds is never reached, never a panic.
        self.kvm_heartbeat_interval
            .max(self.kvm_heartbeat_staleness)
            .saturating_add(
                self.kvm_heartbeat_retry_interval
                    .saturating_mul(self.kvm_heartbeat_write_retries),
            )
    }

    /// How old a XenServer host's pool heartbeat must be before its self-reboot must have
    /// fired: `xen.heartbeat.staleness + xen.heartbeat.self.reboot.timeout`.
    pub fn xen_self_fence_deadline(&self) -> Duration {
        self.xen_heartbeat_staleness
            .saturating_add(self.xen_heartbeat_self_reboot_timeout)
    }

    /// Checks every rule; the first broken one is reported with its key.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, reason: String| Err(ConfigError::Invalid { key, reason });
        let positive = [
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
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return bad(key, "must be greater than zero".into());
            }
        }
        if self.ha_workers == 0 {
            return bad("ha.workers", "must be at least 1".into());
        }
        if !(self.ha_brake_fraction > 0.0 && self.ha_brake_fraction <= 1.0) {
            return bad(
                "ha.brake.fraction",
                format!("must be in (0, 1], got {}", self.ha_brake_fraction),
            );
        }
        Ok(())
    }
}

/// Keys read under another name (CloudStack's older names).
const ALIASES: &[(&str, &str)] = &[("vm.ha.migration.max.retries", "max.retries")];

/// The whole config file: the agent manager's keys and the HA manager's, in one flat TOML table
/// with CloudStack's key names (`cloudha config --defaults` lists them).
///
/// ```
/// let c = cloudha_ha::Config::from_toml(
///     "\"ping.interval\" = \"30s\"\n\"ha.workers\" = 2\n",
///     "example.toml",
/// )
/// .unwrap();
/// assert_eq!(c.liveness.ping_interval.as_secs(), 30);
/// assert_eq!(c.ha.ha_workers, 2);
/// let err = cloudha_ha::Config::from_toml("\"ping.intervall\" = 1", "example.toml").unwrap_err();
/// assert!(err.to_string().contains("ping.intervall"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Config {
    /// The agent manager's part (pings, monitor, investigation, alerts, OOBM, VM-HA switches).
    #[serde(flatten)]
    pub liveness: LivenessConfig,
    /// The HA manager's part (work queue, retries, brake, fencing assumptions).
    #[serde(flatten)]
    pub ha: HaConfig,
}

impl Config {
    /// The two parts, as given.
    pub fn new(liveness: LivenessConfig, ha: HaConfig) -> Self {
        Self { liveness, ha }
    }

    /// Every documented key: the agent manager's, then the HA manager's.
    pub fn keys() -> impl Iterator<Item = &'static KeyDoc> {
        cloudha_liveness::config::KEYS.iter().chain(KEYS)
    }

    /// Parses and validates TOML text. `origin` names the text in errors (a file path).
    ///
    /// # Errors
    /// [`ConfigError`] naming the key (and line, for a value of the wrong form) that is wrong,
    /// a key that neither part knows included.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let parse = |message: String| ConfigError::Parse {
            origin: origin.to_owned(),
            message,
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| parse(trimmed(&e)))?;
        let known = |key: &str| {
            Self::keys().any(|k| k.key == key) || ALIASES.iter().any(|(alias, _)| *alias == key)
        };
        if let Some(unknown) = table.keys().find(|k| !known(k)) {
            let line = text
                .lines()
                .position(|l| {
                    // The key itself (quoted or bare), followed by `=` or a dot, or a table
                    // header: not a longer key it is the start of.
                    let l = l.trim_start();
                    let l = l.strip_prefix('[').map_or(l, str::trim_start);
                    let quoted = format!("\"{unknown}\"");
                    let rest = l
                        .strip_prefix(quoted.as_str())
                        .or_else(|| l.strip_prefix(unknown.as_str()));
                    rest.is_some_and(|r| {
                        matches!(r.trim_start().chars().next(), Some('=' | '.' | ']'))
                    })
                })
                .map(|i| format!("line {}: ", i + 1))
                .unwrap_or_default();
            return Err(parse(format!("{line}unknown key `{unknown}`")));
        }
        // Each part reads its own keys from the text itself, so a value of the wrong form is
        // reported with its line.
        let liveness: LivenessConfig = toml::from_str(text).map_err(|e| parse(trimmed(&e)))?;
        let ha: HaConfig = toml::from_str(text).map_err(|e| parse(trimmed(&e)))?;
        let config = Self { liveness, ha };
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule of both parts; the first broken one is reported with its key.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.liveness.validate()?;
        self.ha.validate()
    }
}

fn trimmed(e: &toml::de::Error) -> String {
    e.to_string().trim_end().to_owned()
}
