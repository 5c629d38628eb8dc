//! Investigation and the disconnect flows (§4.3, §4.4), Alert re-investigation and the monitor loop.

use super::*;

impl Inner {
    /// CheckHealth on the host itself (only while Up or Connecting, CloudStack's rule).
    pub(super) async fn check_health(&self, rec: &HostRecord) -> bool {
        if !matches!(rec.status, Some(Status::Up | Status::Connecting)) {
            return false;
        }
        let Some(attache) = self.attaches.get(rec.id) else {
            return false;
        };
        let check = Command::CheckHealth(cloudha_protocol::CheckHealthCommand {});
        send_one(&*attache, check, None)
            .await
            .is_ok_and(|a| a.success())
    }

    /// Investigation: CheckHealth on the host and the investigator chain start together; the
    /// verdict is taken as soon as the evidence decides it (CheckHealth answers, or the chain
    /// finds the host Up or settled Down), else once both have answered. Every probe is bounded.
    pub(super) async fn investigate(&self, rec: &HostRecord) -> Option<(Finding, &'static str)> {
        let _busy = self.investigations.begin(rec.id);
        if rec.host_type.is_system_vm() {
            return Some((
                Finding::new(HostVerdict::Alert, "a system VM agent"),
                "system VM agent",
            ));
        }
        let up = || {
            Some((
                Finding::settled(HostVerdict::Up, "the host answers CheckHealth"),
                "CheckHealth",
            ))
        };
        let health = self.check_health(rec);
        tokio::pin!(health);
        if !self.config.vm_ha_enabled {
            // CloudStack's HighAvailabilityManager.investigate: VM-HA disabled ⇒ alert + Alert.
            if health.await {
                return up();
            }
            if self.config.vm_ha_alerts_enabled {
                self.raise(
                    AlertKind::HaDisabled,
                    rec,
                    format!(
                        "Host {} ({}) does not answer, and VM-HA is disabled: nothing is investigated or restarted",
                        rec.name, rec.id
                    ),
                );
            }
            return Some((
                Finding::new(
                    HostVerdict::Alert,
                    "VM-HA is disabled (vm.ha.enabled = false)",
                ),
                "vm.ha.enabled",
            ));
        }
        let chain = investigate::investigate_host(&self.investigators, rec);
        tokio::pin!(chain);
        // Biased: when both are ready at once the outcome must not depend on tokio's own
        // randomness (a seeded simulation must replay exactly).
        tokio::select! {
            biased;
            healthy = &mut health => {
                if healthy { up() } else { chain.await }
            }
            found = &mut chain => match found {
                Some((f, by)) if f.settled || f.verdict == HostVerdict::Up => Some((f, by)),
                other => if health.await { up() } else { other },
            },
        }
    }

    pub(super) async fn disconnect_with_investigation_locked(
        &self,
        host: HostId,
        event: Event,
        generation: Option<u64>,
    ) -> Result<(), ManagerError> {
        if let Some(g) = generation
            && self.attaches.get(host).is_some_and(|a| a.generation() != g)
        {
            tracing::debug!(host.id = %host, "link loss of a replaced attache: ignored");
            return Ok(());
        }
        let rec = self.hosts.get(host).ok_or(StoreError::UnknownHost(host))?;
        let mut event = event;
        let mut reason = format!("{event}");
        if Status::transition(rec.status, event).ok() == Some(Status::Alert) {
            let found = self.investigate(&rec).await;
            let waited = self.since_last_ping(&rec).unwrap_or(Duration::MAX);
            let too_long = waited > self.config.alert_wait;
            reason = match &found {
                Some((f, by)) => format!(
                    "{event}; investigation: {:?} by {by} ({})",
                    f.verdict, f.evidence
                ),
                None => format!("{event}; investigation: unknown (no investigator could tell)"),
            };
            match found.as_ref().map(|(f, _)| f.verdict) {
                None if !too_long => {
                    tracing::info!(host.id = %host, "state cannot be determined; checking again later");
                    self.rearm(&rec);
                    return Ok(());
                }
                None => {
                    reason = format!("{event}; state undeterminable for longer than alert.wait");
                    self.raise(
                        AlertKind::HostAlert,
                        &rec,
                        format!(
                            "Host {} ({}) is in ALERT state: its state cannot be determined",
                            rec.name, host
                        ),
                    );
                }
                Some(HostVerdict::Down) => {
                    if rec.status != Some(Status::Down) {
                        self.host_down_alert(&rec);
                    }
                    event = Event::HostDown;
                }
                Some(HostVerdict::Up) => {
                    if let Err(e) = self.apply(host, Event::Ping, reason).await {
                        self.rearm(&rec);
                        return Err(e);
                    }
                    self.rearm(&rec);
                    return Ok(());
                }
                Some(HostVerdict::Disconnected)
                    if rec.status == Some(Status::Disconnected)
                        || (rec.status == Some(Status::Up)
                            && rec.resource_state == ResourceState::PrepareForMaintenance) =>
                {
                    if !too_long {
                        self.rearm(&rec);
                        return Ok(());
                    }
                    event = Event::WaitedTooLong;
                }
                Some(HostVerdict::Disconnected) if rec.status == Some(Status::Up) => {
                    let why = found.as_ref().map_or("", |(f, _)| f.evidence.as_str());
                    self.raise(
                        AlertKind::HostDisconnected,
                        &rec,
                        format!(
                            "Host {} ({}) disconnected: {why}; it goes to Alert and is not fenced without proof",
                            rec.name, host
                        ),
                    );
                    event = Event::AgentDisconnected;
                }
                Some(_) => {
                    self.raise(
                        AlertKind::HostAlert,
                        &rec,
                        format!("Host {} ({}) is in ALERT state", rec.name, host),
                    );
                }
            }
        }
        // Down is the only path from a disconnect to VM-HA: the HA manager follows the status
        // changes.
        if let Err(e) = self
            .disconnect_without_investigation_locked(host, event, &reason)
            .await
        {
            // No such transition (e.g. Up + WaitedTooLong, which CloudStack throws on), or the
            // store failed: the host keeps its status and is checked again at the next monitor
            // run, never forgotten.
            self.rearm(&rec);
            return Err(e);
        }
        Ok(())
    }

    /// Removes the agent (attache, monitor, listeners) and applies the event (CloudStack's
    /// `removeAgent` + `transitState`). When the status cannot be written the host is checked
    /// again at the next monitor run.
    pub(super) async fn disconnect_without_investigation_locked(
        &self,
        host: HostId,
        event: Event,
        reason: &str,
    ) -> Result<(), ManagerError> {
        let rec = self.hosts.get(host).ok_or(StoreError::UnknownHost(host))?;
        let stays = matches!(
            rec.status,
            Some(Status::Down | Status::Alert | Status::Removed)
        );
        let table = Status::transition(rec.status, event);
        let next = match (stays, table) {
            (true, _) => rec.status.unwrap_or(Status::Unknown),
            (false, Ok(to)) => to,
            (false, Err(source)) => return Err(ManagerError::Transition { host, source }),
        };
        if let Some(attache) = self.attaches.remove(host, None) {
            attache.disconnect();
        }
        if let Some(last) = self.monitor.remove(host) {
            self.queue_last_pings([(host, last)]);
        }
        self.registry.dispatch_disconnect(host, next);
        match table {
            Ok(_) => {
                if let Err(e) = self.apply(host, event, reason.to_owned()).await {
                    self.rearm(&rec);
                    return Err(e);
                }
            }
            // CloudStack throws here (e.g. Alert + PingTimeout) after the agent was removed;
            // we keep the status and say why.
            Err(e) => tracing::debug!(host.id = %host, error = %e, "status kept"),
        }
        Ok(())
    }

    pub(super) async fn reinvestigate_alert(&self, host: HostId) {
        let _guard = self.lock_host(host).await;
        let Some(rec) = self.hosts.get(host) else {
            return;
        };
        if rec.status != Some(Status::Alert) {
            return;
        }
        match self.investigate(&rec).await {
            Some((f, by)) if f.verdict == HostVerdict::Down => {
                self.host_down_alert(&rec);
                if let Err(e) = self
                    .apply(
                        host,
                        Event::HostDown,
                        format!("Alert re-investigation: Down by {by} ({})", f.evidence),
                    )
                    .await
                {
                    tracing::warn!(host.id = %host, error = %e, "cannot mark host down; trying again later");
                    self.monitor
                        .schedule_alert(host, Instant::now() + self.config.alert_reinvestigate());
                }
            }
            _ => self
                .monitor
                .schedule_alert(host, Instant::now() + self.config.alert_reinvestigate()),
        }
    }

    pub(super) async fn on_behind(&self, host: HostId) {
        let _guard = self.lock_host(host).await;
        let Some(rec) = self.hosts.get(host) else {
            return;
        };
        let result = if rec.resource_state.is_out_of_service() || rec.host_type.is_system_vm() {
            self.disconnect_without_investigation_locked(
                host,
                Event::ShutdownRequested,
                "behind on ping (out of service or system VM agent)",
            )
            .await
        } else {
            self.disconnect_with_investigation_locked(host, Event::PingTimeout, None)
                .await
        };
        if let Err(e) = result {
            tracing::warn!(host.id = %host, error = %e, "behind-on-ping handling failed");
        }
    }

    pub(super) async fn monitor_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.ping_monitor_resolution);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            let now = Instant::now();
            let behind = self.monitor.behind(now);
            self.queue_last_pings(behind.iter().copied());
            for (host, last) in behind {
                tracing::info!(host.id = %host, since = ?now.saturating_duration_since(last), "host behind on ping");
                let me = Arc::clone(&self);
                self.spawn(
                    host,
                    "behind_on_ping",
                    async move { me.on_behind(host).await },
                );
            }
            for host in self.monitor.alerts_due(now) {
                let me = Arc::clone(&self);
                self.spawn(host, "alert_reinvestigation", async move {
                    me.reinvestigate_alert(host).await
                });
            }
        }
    }
}
