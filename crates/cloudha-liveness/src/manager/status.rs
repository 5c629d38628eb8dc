//! Status changes through the §4.2 table: written through to the store, recorded in each host's
//! history and sent to subscribers; the alerts they raise; last-ping times written in batches.

use super::*;

/// One applied status event, as recorded in a host's history and sent to subscribers.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StatusChange {
    /// When (the manager's clock).
    pub at: Timestamp,
    /// The host.
    pub host: HostId,
    /// The status before (`None`: no status yet).
    pub from: Option<Status>,
    /// The event.
    pub event: Event,
    /// The status after.
    pub to: Status,
    /// Why, in words (the verdict and who gave it, the flow that applied it).
    pub reason: String,
}

/// Every status change from the moment of [`AgentManager::subscribe`], in order, none lost.
#[derive(Debug)]
pub struct StatusChanges(mpsc::UnboundedReceiver<StatusChange>);

impl StatusChanges {
    pub(super) fn new(rx: mpsc::UnboundedReceiver<StatusChange>) -> Self {
        Self(rx)
    }

    /// The next change; `None` once the manager is gone.
    pub async fn recv(&mut self) -> Option<StatusChange> {
        self.0.recv().await
    }

    /// The next change if one is waiting.
    pub fn try_recv(&mut self) -> Option<StatusChange> {
        self.0.try_recv().ok()
    }
}

/// Conflicting writes (another writer moved the host) retried before giving up.
const CONFLICT_RETRIES: u32 = 3;

impl Inner {
    /// The one place that changes status: the §4.2 table on the cached record, a
    /// compare-and-set in the store, then the cache, the history and the subscribers. A
    /// conflict (another writer moved the host) reloads the record and tries again.
    pub(super) async fn apply(
        &self,
        host: HostId,
        event: Event,
        reason: String,
    ) -> Result<StatusChange, ManagerError> {
        // One write at a time per host: the cache and the stream follow the store's order.
        let writing = Arc::clone(lock(&self.status_locks).entry(host).or_default());
        let _writing = writing.lock().await;
        let mut attempt = 0;
        loop {
            let rec = self.hosts.get(host).ok_or(StoreError::UnknownHost(host))?;
            let to = Status::transition(rec.status, event)
                .map_err(|source| ManagerError::Transition { host, source })?;
            let now = self.clock.now();
            match self
                .store
                .update_status(host, rec.status, rec.update_count, to, event, now)
                .await
            {
                Ok(mut stored) => {
                    // The store's record, with the cache's newer last ping.
                    if let Some(last) = rec.last_ping
                        && stored.last_ping.is_none_or(|s| s < last)
                    {
                        stored.last_ping = Some(last);
                    }
                    self.hosts.upsert(stored);
                    let change = StatusChange {
                        at: now,
                        host,
                        from: rec.status,
                        event,
                        to,
                        reason,
                    };
                    self.record(&change);
                    return Ok(change);
                }
                Err(StoreError::Conflict { .. }) if attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(host.id = %host, attempt, "status conflict: reloading the record");
                    let Some(fresh) = self.store.get(host).await? else {
                        return Err(StoreError::UnknownHost(host).into());
                    };
                    let found = fresh.status;
                    self.hosts.upsert(fresh);
                    // The store moved without this cache seeing it (a write whose reply was
                    // lost, or another writer): the move is a status change like any other, so
                    // subscribers (VM-HA) learn of it.
                    if let Some(found) = found
                        && rec.status != Some(found)
                    {
                        let ours = found == to;
                        let change = StatusChange {
                            at: now,
                            host,
                            from: rec.status,
                            event,
                            to: found,
                            reason: if ours {
                                format!(
                                    "{reason} (written, found in the store after its reply was lost)"
                                )
                            } else {
                                format!(
                                    "found in the store, moved by another writer (while applying {event}: {reason})"
                                )
                            },
                        };
                        self.record(&change);
                        if ours {
                            return Ok(change);
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(super) fn record(&self, change: &StatusChange) {
        tracing::info!(host.id = %change.host, from = ?change.from, event = %change.event, to = %change.to, reason = %change.reason, "host status");
        {
            let mut history = lock(&self.history);
            let h = history.entry(change.host).or_default();
            h.push(change.clone());
            // Bounded: a flapping host must not grow the manager without end.
            if h.len() > 2 * HISTORY_LIMIT {
                h.drain(..HISTORY_LIMIT);
            }
        }
        lock(&self.subscribers).retain(|tx| tx.send(change.clone()).is_ok());
        if change.from != Some(change.to) {
            *lock(&self.epochs).entry(change.host).or_default() += 1;
            if change.to == Status::Alert {
                self.monitor.schedule_alert(
                    change.host,
                    Instant::now() + self.config.alert_reinvestigate(),
                );
            } else if change.from == Some(Status::Alert) {
                self.monitor.cancel_alert(change.host);
            }
        }
    }

    /// Raises an alert unless the same kind was raised for this host since its last status change.
    pub(super) fn raise(&self, kind: AlertKind, rec: &HostRecord, message: String) {
        let epoch = lock(&self.epochs).get(&rec.id).copied().unwrap_or(0);
        if lock(&self.raised).insert((rec.id, kind), epoch) == Some(epoch) {
            tracing::debug!(host.id = %rec.id, %kind, "alert already raised for this status");
            return;
        }
        self.alerts.raise({
            let mut r = Alert::new(kind, message);
            r.host = Some(rec.id);
            r.cluster = rec.cluster;
            r.pod = rec.pod;
            r.zone = rec.zone;
            r
        });
    }

    /// How long since `host` was last heard from: the monitor's exact time, else the record's.
    pub(super) fn since_last_ping(&self, rec: &HostRecord) -> Option<Duration> {
        match self.monitor.last_ping(rec.id) {
            Some(at) => Some(at.elapsed()),
            None => rec
                .last_ping
                .map(|t| self.clock.now().saturating_duration_since(t)),
        }
    }

    /// Checks again at the next monitor run (after `ping.interval`), keeping the last ping.
    pub(super) fn rearm(&self, rec: &HostRecord) {
        let now = Instant::now();
        let last = self
            .since_last_ping(rec)
            .and_then(|d| now.checked_sub(d))
            .unwrap_or(now);
        self.monitor
            .arm_until(rec.id, last, now + self.config.ping_interval);
    }

    /// The host-down alert, when no HA manager raises its own (with the VM list).
    pub(super) fn host_down_alert(&self, rec: &HostRecord) {
        if self.host_down_alert == HostDownAlert::Raise
            && !matches!(
                rec.host_type,
                HostType::SecondaryStorage | HostType::ConsoleProxy
            )
        {
            self.raise(
                AlertKind::HostDown,
                rec,
                format!("Host {} ({}) is down", rec.name, rec.id),
            );
        }
    }

    pub(super) fn gateway(&self, host: HostId, accessible: bool) {
        let changed = {
            let mut lost = lock(&self.lost_gateway);
            if accessible {
                lost.remove(&host)
            } else {
                lost.insert(host)
            }
        };
        if changed && let Some(rec) = self.hosts.get(host) {
            if accessible {
                tracing::info!(host.id = %host, "gateway reachable again");
                self.alerts.clear(AlertKind::LostGateway, host);
            } else {
                self.raise(
                    AlertKind::LostGateway,
                    &rec,
                    format!("Host {} ({}) lost its gateway", rec.name, host),
                );
            }
        }
    }

    /// Queues the last pings of hosts that left the monitor, for the next batch.
    pub(super) fn queue_last_pings(&self, pings: impl IntoIterator<Item = (HostId, Instant)>) {
        let mut unsaved = lock(&self.unsaved_pings);
        for (host, at) in pings {
            unsaved.insert(host, self.stamp(at));
        }
    }

    /// Writes one batch of last-ping times: the monitor's since the last batch, and any that
    /// failed before. The cache takes them too. A failed batch is kept for the next.
    pub(super) async fn save_last_pings(&self) {
        let fresh = self.monitor.take_pinged();
        let batch: Vec<(HostId, Timestamp)> = {
            let mut unsaved = lock(&self.unsaved_pings);
            for (host, at) in fresh {
                unsaved.insert(host, self.stamp(at));
            }
            if unsaved.is_empty() {
                return;
            }
            let mut batch: Vec<_> = unsaved.drain().collect();
            batch.sort_unstable_by_key(|(h, _)| *h);
            batch
        };
        self.hosts.set_last_pings(&batch);
        if let Err(e) = self.store.set_last_pings(&batch).await {
            tracing::warn!(error = %e, hosts = batch.len(), "last pings not written; kept for the next batch");
            let mut unsaved = lock(&self.unsaved_pings);
            for (host, at) in batch {
                let at = unsaved.get(&host).map_or(at, |newer| (*newer).max(at));
                unsaved.insert(host, at);
            }
        }
    }

    /// Writes last pings once per `ping.interval`.
    pub(super) async fn last_ping_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.ping_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            self.save_last_pings().await;
        }
    }
}
