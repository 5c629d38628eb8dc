//! Direct attaches: the manager polls a host's [`ServerResource`] in-process (CloudStack's
//! `DirectAgentAttache`), with exactly one PingTask per attache.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudha_protocol::{Answer, Command, HostId, Sequence, StartupAnswer};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use crate::attache::{AttacheHandle, Common, DEFAULT_WAIT, Kind, Request};
use crate::error::RequestError;
use crate::resource::ServerResource;
use crate::sink::CommandSink;
use crate::tasks::Tasks;

/// Settings of a direct attache (CloudStack's names in the field docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectConfig {
    /// `host.ping.retry.count`: extra `get_current_status` calls when one returns nothing.
    pub ping_retry_count: u32,
    /// `host.ping.retry.timer`: the pause before each retry.
    pub ping_retry_timer: Duration,
    /// Bound on one `get_current_status` call; a call that takes longer counts as "nothing".
    /// `None`: the ping interval.
    pub status_timeout: Option<Duration>,
    /// Cap on outstanding work (pings and requests) per attache: `round(500 × direct.agent.thread.cap) + 1`.
    pub max_outstanding: usize,
    /// `wait`: default wait for a request's answers.
    pub default_wait: Duration,
}

impl Default for DirectConfig {
    fn default() -> Self {
        Self {
            ping_retry_count: 0,
            ping_retry_timer: Duration::from_secs(5),
            status_timeout: None,
            max_outstanding: 501,
            default_wait: DEFAULT_WAIT,
        }
    }
}

/// A direct attache under construction; see [`DirectAttache::spawn`].
#[derive(Debug)]
pub struct DirectAttache;

impl DirectAttache {
    /// Creates the attache for `host`. No ping task runs until the manager accepts the host's
    /// startup ([`crate::Attache::on_startup_answer`]); its tasks are owned by `tasks`.
    pub fn spawn(
        host: HostId,
        resource: Arc<dyn ServerResource>,
        sink: Arc<dyn CommandSink>,
        config: DirectConfig,
        tasks: &Tasks,
    ) -> AttacheHandle {
        let inner = DirectInner {
            common: Common::new(host, tasks.token().child_token(), config.default_wait),
            outstanding: Semaphore::new(config.max_outstanding),
            resource,
            sink,
            config,
            tasks: tasks.clone(),
            ping_task: Mutex::new(None),
            ping_seq: AtomicU64::new(0),
            released: AtomicBool::new(false),
        };
        AttacheHandle {
            kind: Kind::Direct(Arc::new(inner)),
        }
    }
}

pub(crate) struct DirectInner {
    pub(crate) common: Common,
    resource: Arc<dyn ServerResource>,
    sink: Arc<dyn CommandSink>,
    config: DirectConfig,
    tasks: Tasks,
    outstanding: Semaphore,
    /// The one ping task; a new startup answer aborts it and starts another. (An abort handle,
    /// not a child token: it costs no allocation per attache.)
    ping_task: Mutex<Option<AbortHandle>>,
    /// Attache-local ping sequence, from 0, separate from request sequences.
    ping_seq: AtomicU64,
    released: AtomicBool,
}

impl DirectInner {
    pub(crate) fn on_startup_answer(this: &Arc<Self>, answer: &StartupAnswer) {
        if !answer.success || this.common.cancel.is_cancelled() {
            return;
        }
        let interval = answer.ping_interval();
        if interval.is_zero() {
            tracing::warn!(host.id = %this.common.host, "startup answer with a zero ping interval: no ping task");
            return;
        }
        // The grid starts now, not when the task is first polled.
        let first = Instant::now() + interval;
        let me = Arc::clone(this);
        let span = tracing::debug_span!("ping_task", host.id = %this.common.host);
        let mut slot = this
            .ping_task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(previous) = slot.take() {
            previous.abort();
        }
        *slot = Some(this.tasks.spawn(
            this.common.cancel.clone(),
            async move { me.ping_loop(first, interval).await }.instrument(span),
        ));
    }

    async fn ping_loop(&self, first: Instant, interval: Duration) {
        let mut ticker = tokio::time::interval_at(first, interval);
        // A ping that overran its slot (a slow resource, retries) skips the missed ticks and
        // keeps the original grid: never a burst of catch-up pings.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            ticker.tick().await;
            // Boxed: the idle task then holds only its ticker, not the largest state of a ping.
            Box::pin(self.ping_once(interval)).await;
        }
    }

    async fn ping_once(&self, interval: Duration) {
        let host = self.common.host;
        let Ok(_permit) = self.outstanding.try_acquire() else {
            tracing::warn!(host.id = %host, "maximum outstanding task limit reached: ping skipped");
            return;
        };
        let timeout = self.config.status_timeout.unwrap_or(interval);
        let mut status = self.current_status(timeout).await;
        let mut retried = 0;
        while status.is_none() && retried < self.config.ping_retry_count {
            retried += 1;
            tokio::time::sleep(self.config.ping_retry_timer).await;
            status = self.current_status(timeout).await;
        }
        let Some(ping) = status else {
            tracing::warn!(host.id = %host, retried, "unable to get current status");
            return;
        };
        let seq = Sequence(self.ping_seq.fetch_add(1, Ordering::Relaxed));
        // Direct agents have no PingAnswer: the sink's answers are dropped.
        let _ = self
            .sink
            .on_commands(host, seq, std::slice::from_ref(&ping));
    }

    async fn current_status(&self, timeout: Duration) -> Option<Command> {
        let host = self.common.host;
        match tokio::time::timeout(timeout, self.resource.get_current_status(host)).await {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!(host.id = %host, ?timeout, "get_current_status timed out");
                None
            }
        }
    }

    pub(crate) async fn send(&self, request: Request) -> Result<Vec<Answer>, RequestError> {
        let seq = self.common.next_seq();
        let host = self.common.host;
        self.common
            .run(seq, &request, async {
                let _permit = self
                    .outstanding
                    .acquire()
                    .await
                    .map_err(|_| RequestError::Disconnected { host, seq })?;
                let mut answers = Vec::with_capacity(request.commands.len());
                for command in &request.commands {
                    let answer = self.resource.execute(command.clone()).await;
                    let failed = !answer.success();
                    answers.push(answer);
                    if failed && request.stop_on_error {
                        break;
                    }
                }
                Ok(answers)
            })
            .await
    }

    pub(crate) fn disconnect(&self) {
        self.common.cancel.cancel();
        self.outstanding.close();
        if !self.released.swap(true, Ordering::AcqRel) {
            self.resource.disconnected();
        }
    }
}
