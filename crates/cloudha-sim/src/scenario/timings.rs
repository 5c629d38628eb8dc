//! What the simulated hosts really do: the `sim.*` timing keys of a scenario's `[config]`.

use std::time::Duration;

/// What the simulated hosts really do (the `sim.*` keys of `[config]`). The manager's own
/// assumptions about the same timings are its `kvm.heartbeat.*` and `xen.heartbeat.*` keys;
/// both default to the same values, and a scenario may make them disagree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimTimings {
    /// `sim.heartbeat.interval`: a KVM host writes its storage heartbeat this often.
    pub heartbeat_interval: Duration,
    /// `sim.heartbeat.staleness`: a neighbour reads a KVM heartbeat older than this as dead.
    pub heartbeat_staleness: Duration,
    /// `sim.heartbeat.write.retries`: failed writes retried this often before the host reboots.
    pub heartbeat_write_retries: u32,
    /// `sim.heartbeat.retry.interval`: the pause between those retries.
    pub heartbeat_retry_interval: Duration,
    /// `sim.boot.time`: how long a host takes to boot after a self-reboot.
    pub boot_time: Duration,
    /// `sim.xen.heartbeat.interval`: a XenServer host writes its pool heartbeat this often.
    pub xen_heartbeat_interval: Duration,
    /// `sim.xen.heartbeat.staleness`: a pool member reads a pool heartbeat older than this as dead.
    pub xen_heartbeat_staleness: Duration,
    /// `sim.xen.self.reboot.timeout`: a XenServer host that could not write its pool heartbeat
    /// for this long reboots itself.
    pub xen_self_reboot_timeout: Duration,
}

impl Default for SimTimings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(60),
            heartbeat_staleness: Duration::from_secs(60),
            heartbeat_write_retries: 5,
            heartbeat_retry_interval: Duration::from_secs(10),
            boot_time: Duration::from_secs(300),
            xen_heartbeat_interval: Duration::from_secs(10),
            xen_heartbeat_staleness: Duration::from_secs(30),
            xen_self_reboot_timeout: Duration::from_secs(30),
        }
    }
}

impl SimTimings {
    /// Sets one `sim.*` key (other than `sim.liveness.bound`); `Ok(false)`: not a timing key.
    pub(super) fn set(&mut self, key: &str, value: &toml::Value) -> Result<bool, String> {
        let duration = |v: &toml::Value| -> Result<Duration, String> {
            match v {
                toml::Value::String(s) => {
                    cloudha_protocol::duration::parse(s).map_err(|e| e.to_string())
                }
                toml::Value::Integer(n) if *n >= 0 => Ok(Duration::from_secs(*n as u64)),
                _ => Err("must be a duration such as \"60s\"".into()),
            }
        };
        let slot = match key {
            "sim.heartbeat.interval" => &mut self.heartbeat_interval,
            "sim.heartbeat.staleness" => &mut self.heartbeat_staleness,
            "sim.heartbeat.retry.interval" => &mut self.heartbeat_retry_interval,
            "sim.boot.time" => &mut self.boot_time,
            "sim.xen.heartbeat.interval" => &mut self.xen_heartbeat_interval,
            "sim.xen.heartbeat.staleness" => &mut self.xen_heartbeat_staleness,
            "sim.xen.self.reboot.timeout" => &mut self.xen_self_reboot_timeout,
            "sim.heartbeat.write.retries" => {
                self.heartbeat_write_retries = value
                    .as_integer()
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n <= 1000)
                    .ok_or("must be a whole number from 0 to 1000")?;
                return Ok(true);
            }
            _ => return Ok(false),
        };
        let d = duration(value)?;
        if d.is_zero() && key != "sim.heartbeat.retry.interval" {
            return Err("must be greater than zero".into());
        }
        *slot = d;
        Ok(true)
    }
}

/// The simulator's own keys, for error messages.
pub const SIM_KEYS: &[&str] = &[
    "sim.liveness.bound",
    "sim.heartbeat.interval",
    "sim.heartbeat.staleness",
    "sim.heartbeat.write.retries",
    "sim.heartbeat.retry.interval",
    "sim.boot.time",
    "sim.xen.heartbeat.interval",
    "sim.xen.heartbeat.staleness",
    "sim.xen.self.reboot.timeout",
];
