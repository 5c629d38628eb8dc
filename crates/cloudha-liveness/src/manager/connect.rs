//! The connect flows (§2), direct hosts, and the sink attaches deliver to.

use super::*;

impl Inner {
    pub(super) async fn direct_scan_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.direct_agent_scan_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let hosts: Vec<HostId> = lock(&self.direct).keys().copied().collect();
            for host in hosts {
                let connected = self.attaches.get(host).is_some_and(|a| !a.is_closed());
                let status = self.hosts.status(host);
                if connected
                    || matches!(
                        status,
                        Some(Status::Up | Status::Connecting | Status::Removed)
                    )
                {
                    continue;
                }
                let me = Arc::clone(&self);
                self.spawn(host, "direct_connect", async move {
                    me.connect_direct(host).await;
                });
            }
        }
    }

    pub(super) async fn connect_direct(self: &Arc<Self>, host: HostId) -> bool {
        let Some(resource) = lock(&self.direct).get(&host).cloned() else {
            return false;
        };
        let startup = tokio::time::timeout(self.config.wait, resource.initialize())
            .await
            .ok()
            .and_then(|cmds| {
                cmds.into_iter().find_map(|c| match c {
                    Command::Startup(s) => Some(s),
                    _ => None,
                })
            });
        let Some(startup) = startup else {
            tracing::debug!(host.id = %host, "direct host gave no startup: not reachable");
            return false;
        };
        let config = DirectConfig {
            ping_retry_count: self.config.host_ping_retry_count,
            ping_retry_timer: self.config.host_ping_retry_timer,
            status_timeout: None,
            max_outstanding: 501,
            default_wait: self.config.wait,
        };
        let sink = Arc::clone(self.sink.get().expect("set in new"));
        let attache: Arc<dyn Attache> = Arc::new(DirectAttache::spawn(
            host,
            resource,
            sink,
            config,
            &self.tasks,
        ));
        let generation = attache.generation();
        if let Some(old) = self.attaches.insert(host, Arc::clone(&attache)) {
            old.disconnect();
        }
        let _guard = self.lock_host(host).await;
        self.connect_flow_locked(host, &startup, generation).await
    }

    /// The connect flow (§2): AgentConnected, the listeners' connect, Ready, then Ready → Up.
    pub(super) async fn connect_flow_locked(
        &self,
        host: HostId,
        startup: &StartupCommand,
        generation: u64,
    ) -> bool {
        let Some(attache) = self
            .attaches
            .get(host)
            .filter(|a| a.generation() == generation)
        else {
            tracing::debug!(host.id = %host, "connect superseded by a newer attache");
            return false;
        };
        if let Err(e) = self
            .apply(host, Event::AgentConnected, "agent connected".into())
            .await
        {
            tracing::warn!(host.id = %host, error = %e, "cannot accept connect");
            if let Some(a) = self.attaches.remove(host, Some(generation)) {
                a.disconnect();
            }
            return false;
        }
        if let Err(refused) = self.registry.dispatch_connect(host, startup, false).await {
            let event = match refused.error.refusal {
                Refusal::Shutdown => Event::ShutdownRequested,
                _ => Event::AgentDisconnected,
            };
            tracing::warn!(host.id = %host, error = %refused, "connect refused by a listener");
            let reason = format!("connect refused: {}", refused.error.reason);
            if let Err(e) = self
                .disconnect_without_investigation_locked(host, event, &reason)
                .await
            {
                tracing::warn!(host.id = %host, error = %e, "disconnect after refusal failed");
            }
            return false;
        }
        let ready = send_one(
            &*attache,
            Command::Ready(ReadyCommand { host_id: host }),
            Some(self.config.ready_command_wait),
        )
        .await;
        if !ready.as_ref().is_ok_and(Answer::success) {
            tracing::warn!(host.id = %host, ?ready, "Ready failed");
            if let Err(e) = self
                .disconnect_without_investigation_locked(
                    host,
                    Event::AgentDisconnected,
                    "Ready command failed",
                )
                .await
            {
                tracing::warn!(host.id = %host, error = %e, "disconnect after a failed Ready failed");
            }
            return false;
        }
        if let Err(e) = self
            .apply(host, Event::Ready, "connect complete".into())
            .await
        {
            tracing::warn!(host.id = %host, error = %e, "cannot mark host ready: disconnecting it, to connect again");
            if let Err(e) = self
                .disconnect_without_investigation_locked(
                    host,
                    Event::AgentDisconnected,
                    "its Ready could not be recorded",
                )
                .await
            {
                tracing::warn!(host.id = %host, error = %e, "disconnect after a failed Ready write failed");
            }
            return false;
        }
        attache.on_startup_answer(&self.startup_answer(startup));
        true
    }

    pub(super) fn startup_answer(&self, startup: &StartupCommand) -> StartupAnswer {
        accept_startup(startup, self.config.ping_interval)
    }

    pub(super) fn ping_answer(status: Option<Status>, gateway_accessible: bool) -> Answer {
        // CloudStack: send-startup when the host is not Up; we also let a Connecting host finish.
        let send_startup =
            gateway_accessible && !matches!(status, Some(Status::Up | Status::Connecting));
        Answer::Ping(PingAnswer {
            avoid_ms: Vec::new(),
            send_startup,
        })
    }
}

#[async_trait::async_trait]
impl CommandSink for ManagerSink {
    fn on_commands(&self, host: HostId, seq: Sequence, commands: &[Command]) -> Vec<Answer> {
        let Some(inner) = self.0.upgrade() else {
            return Vec::new();
        };
        inner.registry.dispatch_commands(host, seq, commands);
        let status = inner.hosts.status(host);
        commands
            .iter()
            .map(|c| match c {
                Command::Ping(_) => Inner::ping_answer(status, true),
                Command::PingRouting(p) => {
                    inner.gateway(host, p.gateway_accessible);
                    Inner::ping_answer(status, p.gateway_accessible)
                }
                Command::Startup(s) => {
                    // The agent redoes its startup on the same link.
                    if let Some(a) = inner.attaches.get(host) {
                        let (me, s, generation) = (Arc::clone(&inner), s.clone(), a.generation());
                        inner.spawn(host, "reconnect", async move {
                            let _guard = me.lock_host(host).await;
                            me.connect_flow_locked(host, &s, generation).await;
                        });
                    }
                    Answer::Startup(inner.startup_answer(s))
                }
                Command::Shutdown(s) => {
                    let (me, reason) = (
                        Arc::clone(&inner),
                        format!("agent shut down: {:?} {}", s.reason, s.details),
                    );
                    inner.spawn(host, "shutdown", async move {
                        let _guard = me.lock_host(host).await;
                        if let Err(e) = me
                            .disconnect_without_investigation_locked(
                                host,
                                Event::ShutdownRequested,
                                &reason,
                            )
                            .await
                        {
                            tracing::warn!(host.id = %host, error = %e, "shutdown handling failed");
                        }
                    });
                    Answer::ok()
                }
                Command::AgentControl(c) => inner
                    .registry
                    .dispatch_control(host, c)
                    .unwrap_or_else(Answer::ok),
                _ => Answer::ok(),
            })
            .collect()
    }

    async fn on_connect(&self, attache: AttacheHandle, startup: StartupCommand) -> StartupAnswer {
        let host = startup.host_id;
        let refuse = |details: String| StartupAnswer {
            success: false,
            host_id: host,
            ping_interval_ms: 0,
            details,
        };
        let Some(inner) = self.0.upgrade() else {
            return refuse("manager stopped".into());
        };
        match inner.hosts.get(host).map(|h| h.status) {
            None => return refuse(format!("host {host} is not known")),
            Some(Some(Status::Removed)) => return refuse(format!("host {host} was removed")),
            Some(_) => {}
        }
        let attache: Arc<dyn Attache> = Arc::new(attache);
        let generation = attache.generation();
        if let Some(old) = inner.attaches.insert(host, attache)
            && old.generation() != generation
        {
            old.disconnect();
        }
        let (me, s) = (Arc::clone(&inner), startup.clone());
        inner.spawn(host, "connect", async move {
            let _guard = me.lock_host(host).await;
            me.connect_flow_locked(host, &s, generation).await;
        });
        inner.startup_answer(&startup)
    }

    fn on_link_lost(&self, host: HostId, generation: u64, error: &LinkError) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        if inner
            .attaches
            .get(host)
            .is_none_or(|a| a.generation() != generation)
        {
            return;
        }
        tracing::info!(host.id = %host, %error, "agent link lost: disconnect with investigation");
        let me = Arc::clone(&inner);
        inner.spawn(host, "link_lost", async move {
            let _guard = me.lock_host(host).await;
            if let Err(e) = me
                .disconnect_with_investigation_locked(
                    host,
                    Event::AgentDisconnected,
                    Some(generation),
                )
                .await
            {
                tracing::warn!(host.id = %host, error = %e, "link-loss handling failed");
            }
        });
    }
}
