//! Ports the agent manager hands work to: VM-HA scheduling (implemented by the HA side).

use cloudha_ports::HostRecord;
use cloudha_protocol::{HostId, VmStateReport, WorkReason};

/// Where the agent manager hands a host proven Down (and VM power reports) to VM-HA.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait HaScheduler: Send + Sync {
    /// Schedules restarts for the VMs of `host` (CloudStack's `scheduleRestartForVmsOnHost`).
    async fn schedule_restarts_for_host(
        &self,
        host: &HostRecord,
        reason: WorkReason,
        investigate: bool,
    );

    /// VM power states reported by an Up routing host's ping (the second HA trigger). Plain call:
    /// it runs on the ping path.
    fn vm_power_report(&self, host: HostId, states: &[VmStateReport]);
}

/// A scheduler that does nothing (liveness only, no VM-HA).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHa;

#[async_trait::async_trait]
impl HaScheduler for NoHa {
    async fn schedule_restarts_for_host(
        &self,
        host: &HostRecord,
        reason: WorkReason,
        _investigate: bool,
    ) {
        tracing::info!(host.id = %host.id, ?reason, "host down; VM-HA not configured");
    }

    fn vm_power_report(&self, _host: HostId, _states: &[VmStateReport]) {}
}
