//! The registry: two ordered lists (connection monitors and command monitors), per-request
//! listeners with timeouts, and dispatch.
//!
//! Dispatch takes a snapshot of a list (an `Arc` clone under a read lock held for no longer than
//! that) and runs the listeners with no lock held, so a listener may register or unregister during
//! dispatch. Each entry carries an `active` flag checked just before every call: once
//! [`Registry::unregister`] returns, no call to that listener begins.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::Poll;
use std::time::Duration;

use cloudha_protocol::{
    AgentControlCommand, Answer, ClusterId, Command, HostId, ListenerId, Sequence, StartupCommand,
    Status,
};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::ConnectRefused;
use crate::listener::Listener;

/// Which events a registration hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Interest {
    /// Connection events: connect, disconnect, host added / about to be removed / removed.
    pub connections: bool,
    /// Commands, answers and control commands from agents.
    pub commands: bool,
}

impl Interest {
    /// Both kinds.
    pub const ALL: Interest = Interest {
        connections: true,
        commands: true,
    };
    /// Connection events only.
    pub const CONNECTIONS: Interest = Interest {
        connections: true,
        commands: false,
    };
    /// Commands only.
    pub const COMMANDS: Interest = Interest {
        connections: false,
        commands: true,
    };
}

/// Settings of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Time budget of one plain callback; a listener that takes longer is logged and counted.
    pub callback_budget: Duration,
    /// Time budget of one `process_connect`; a listener that takes longer is abandoned for this
    /// connect (logged, counted) and the others still run.
    pub connect_budget: Duration,
    /// Timeout of a per-request listener whose `timeout()` is `Some(0)` (CloudStack's `wait`).
    pub default_request_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            callback_budget: Duration::from_millis(100),
            connect_budget: Duration::from_secs(60),
            default_request_timeout: Duration::from_secs(1800),
        }
    }
}

/// What the registry counted for one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListenerStats {
    /// Callbacks that panicked.
    pub panics: u64,
    /// Callbacks that overran their time budget.
    pub overruns: u64,
}

struct Entry {
    id: ListenerId,
    listener: Arc<dyn Listener>,
    priority: bool,
    active: AtomicBool,
    panics: AtomicU64,
    overruns: AtomicU64,
}

type List = Arc<[Arc<Entry>]>;

struct RequestEntry {
    id: ListenerId,
    listener: Arc<dyn Listener>,
    timer: Option<AbortHandle>,
}

/// The registry side the manager composes (mockable).
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait ListenerRegistry: Send + Sync {
    /// Registers `listener` for the events in `interest`: priority listeners run before the others;
    /// within each group, in registration order. Returns its id.
    fn register(
        &self,
        listener: Arc<dyn Listener>,
        interest: Interest,
        priority: bool,
    ) -> ListenerId;

    /// Removes the registration from every list (and a per-request listener with that id).
    /// Returns whether it existed. No call to it begins after this returns.
    fn unregister(&self, id: ListenerId) -> bool;

    /// Registers a listener for the answers to request `seq` of `host`: it hears them once (or
    /// until unregistered, if recurring); without an answer within its `timeout()` it gets
    /// `process_timeout` once and is dropped.
    fn register_request_listener(
        &self,
        host: HostId,
        seq: Sequence,
        listener: Arc<dyn Listener>,
    ) -> ListenerId;

    /// Commands from a host: every command monitor runs.
    fn dispatch_commands(&self, host: HostId, seq: Sequence, commands: &[Command]);

    /// Answers from a host: its request listener, then every command monitor.
    fn dispatch_answers(&self, host: HostId, seq: Sequence, answers: &[Answer]);

    /// A control command: the first non-`None` answer wins.
    fn dispatch_control(&self, host: HostId, command: &AgentControlCommand) -> Option<Answer>;

    /// A connect: connection monitors in order, stopping at the first refusal.
    ///
    /// # Errors
    /// [`ConnectRefused`] naming the listener and its refusal.
    async fn dispatch_connect(
        &self,
        host: HostId,
        startup: &StartupCommand,
        rebalance: bool,
    ) -> Result<(), ConnectRefused>;

    /// A disconnect: every connection monitor.
    fn dispatch_disconnect(&self, host: HostId, status: Status);

    /// A host record was added.
    fn dispatch_host_added(&self, host: HostId);

    /// A host is about to be removed.
    fn dispatch_host_about_to_be_removed(&self, host: HostId);

    /// A host was removed.
    fn dispatch_host_removed(&self, host: HostId, cluster: Option<ClusterId>);
}

/// The listener registry (CloudStack's `_hostMonitors` and `_cmdMonitors`).
pub struct Registry {
    host_monitors: RwLock<List>,
    cmd_monitors: RwLock<List>,
    all: Mutex<HashMap<ListenerId, Arc<Entry>>>,
    requests: Arc<Mutex<HashMap<(HostId, Sequence), RequestEntry>>>,
    next_id: AtomicU64,
    config: RegistryConfig,
    tracker: TaskTracker,
    cancel: CancellationToken,
    now: fn() -> Instant,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("host_monitors", &read(&self.host_monitors).len())
            .field("cmd_monitors", &read(&self.cmd_monitors).len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new(RegistryConfig::default())
    }
}

fn read(list: &RwLock<List>) -> List {
    Arc::clone(&list.read().unwrap_or_else(PoisonError::into_inner))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    /// An empty registry.
    pub fn new(config: RegistryConfig) -> Self {
        Self::with_clock(config, Instant::now)
    }

    /// An empty registry reading time from `now` to measure callback budgets (tests use it to
    /// make a plain callback "take" time; tokio's paused clock cannot move inside a plain call).
    pub fn with_clock(config: RegistryConfig, now: fn() -> Instant) -> Self {
        Self {
            host_monitors: RwLock::new(Arc::from(Vec::new())),
            cmd_monitors: RwLock::new(Arc::from(Vec::new())),
            all: Mutex::new(HashMap::new()),
            requests: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(1),
            config,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            now,
        }
    }

    /// What was counted for registration `id` (also after it was unregistered, while it is
    /// still referenced by a running dispatch: `None` once gone).
    pub fn stats(&self, id: ListenerId) -> Option<ListenerStats> {
        lock(&self.all).get(&id).map(|e| ListenerStats {
            panics: e.panics.load(Ordering::Relaxed),
            overruns: e.overruns.load(Ordering::Relaxed),
        })
    }

    /// Number of per-request listeners waiting.
    pub fn pending_requests(&self) -> usize {
        lock(&self.requests).len()
    }

    /// Cancels the request-listener timers and waits for them to end.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    fn next_id(&self) -> ListenerId {
        ListenerId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn insert(list: &RwLock<List>, entry: &Arc<Entry>) {
        let mut guard = list.write().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<Arc<Entry>> = guard.iter().cloned().collect();
        // Priority entries first, each group in registration order.
        let at = if entry.priority {
            v.iter().position(|e| !e.priority).unwrap_or(v.len())
        } else {
            v.len()
        };
        v.insert(at, Arc::clone(entry));
        *guard = Arc::from(v);
    }

    fn remove(list: &RwLock<List>, id: ListenerId) -> bool {
        let mut guard = list.write().unwrap_or_else(PoisonError::into_inner);
        if !guard.iter().any(|e| e.id == id) {
            return false;
        }
        let v: Vec<Arc<Entry>> = guard.iter().filter(|e| e.id != id).cloned().collect();
        *guard = Arc::from(v);
        true
    }

    /// Runs `f` on every active entry of `list` with panic isolation and budget accounting;
    /// stops early when `f` returns `Some`.
    fn each<T>(
        &self,
        list: &RwLock<List>,
        what: &'static str,
        host: HostId,
        mut f: impl FnMut(&dyn Listener) -> Option<T>,
    ) -> Option<T> {
        let snapshot = read(list);
        let mut t = (self.now)();
        for entry in snapshot.iter() {
            if !entry.active.load(Ordering::SeqCst) {
                continue;
            }
            let r = catch_unwind(AssertUnwindSafe(|| f(&*entry.listener)));
            let t2 = (self.now)();
            self.account(
                entry,
                what,
                host,
                t2.saturating_duration_since(t),
                self.config.callback_budget,
            );
            t = t2;
            match r {
                Ok(Some(v)) => return Some(v),
                Ok(None) => {}
                Err(_) => {
                    entry.panics.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(listener = %entry.id, %host, what, "listener panicked; isolated, the others still run");
                }
            }
        }
        None
    }

    fn account(
        &self,
        entry: &Entry,
        what: &'static str,
        host: HostId,
        took: Duration,
        budget: Duration,
    ) {
        if took > budget {
            entry.overruns.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(listener = %entry.id, %host, what, ?took, ?budget, "listener overran its time budget");
        }
    }

    fn call_one<T>(
        &self,
        listener: &dyn Listener,
        host: HostId,
        what: &'static str,
        f: impl FnOnce(&dyn Listener) -> T,
    ) -> Option<T> {
        match catch_unwind(AssertUnwindSafe(|| f(listener))) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::error!(%host, what, "request listener panicked; isolated");
                None
            }
        }
    }
}

#[async_trait::async_trait]
impl ListenerRegistry for Registry {
    fn register(
        &self,
        listener: Arc<dyn Listener>,
        interest: Interest,
        priority: bool,
    ) -> ListenerId {
        let entry = Arc::new(Entry {
            id: self.next_id(),
            listener,
            priority,
            active: AtomicBool::new(true),
            panics: AtomicU64::new(0),
            overruns: AtomicU64::new(0),
        });
        lock(&self.all).insert(entry.id, Arc::clone(&entry));
        if interest.connections {
            Self::insert(&self.host_monitors, &entry);
        }
        if interest.commands {
            Self::insert(&self.cmd_monitors, &entry);
        }
        entry.id
    }

    fn unregister(&self, id: ListenerId) -> bool {
        let entry = lock(&self.all).remove(&id);
        if let Some(e) = &entry {
            e.active.store(false, Ordering::SeqCst);
        }
        let in_hosts = Self::remove(&self.host_monitors, id);
        let in_cmds = Self::remove(&self.cmd_monitors, id);
        let mut requests = lock(&self.requests);
        let key = requests.iter().find(|(_, r)| r.id == id).map(|(k, _)| *k);
        let in_requests = key.and_then(|k| requests.remove(&k)).map(|r| {
            if let Some(t) = r.timer {
                t.abort();
            }
        });
        entry.is_some() || in_hosts || in_cmds || in_requests.is_some()
    }

    fn register_request_listener(
        &self,
        host: HostId,
        seq: Sequence,
        listener: Arc<dyn Listener>,
    ) -> ListenerId {
        let id = self.next_id();
        let timeout = listener.timeout().map(|t| {
            if t.is_zero() {
                self.config.default_request_timeout
            } else {
                t
            }
        });
        let mut requests = lock(&self.requests);
        // The timer needs a runtime; without one the listener waits for its answer for ever.
        let timer = timeout
            .filter(|_| tokio::runtime::Handle::try_current().is_ok())
            .map(|after| {
                let (cancel, requests) = (self.cancel.clone(), Arc::clone(&self.requests));
                self.tracker
                    .spawn(async move {
                        tokio::select! {
                            () = cancel.cancelled() => {}
                            () = tokio::time::sleep(after) => expire(&requests, host, seq, id),
                        }
                    })
                    .abort_handle()
            });
        if let Some(old) = requests.insert(
            (host, seq),
            RequestEntry {
                id,
                listener,
                timer,
            },
        ) && let Some(t) = old.timer
        {
            t.abort();
        }
        id
    }

    fn dispatch_commands(&self, host: HostId, seq: Sequence, commands: &[Command]) {
        self.each::<()>(&self.cmd_monitors, "process_commands", host, |l| {
            l.process_commands(host, seq, commands);
            None
        });
    }

    fn dispatch_answers(&self, host: HostId, seq: Sequence, answers: &[Answer]) {
        let request = {
            let mut requests = lock(&self.requests);
            match requests.get(&(host, seq)) {
                Some(r) if r.listener.is_recurring() => Some(Arc::clone(&r.listener)),
                Some(_) => requests.remove(&(host, seq)).map(|r| {
                    if let Some(t) = r.timer {
                        t.abort();
                    }
                    r.listener
                }),
                None => None,
            }
        };
        if let Some(l) = request {
            self.call_one(&*l, host, "process_answers", |l| {
                l.process_answers(host, seq, answers)
            });
        }
        self.each::<()>(&self.cmd_monitors, "process_answers", host, |l| {
            l.process_answers(host, seq, answers);
            None
        });
    }

    fn dispatch_control(&self, host: HostId, command: &AgentControlCommand) -> Option<Answer> {
        self.each(&self.cmd_monitors, "process_control_command", host, |l| {
            l.process_control_command(host, command)
        })
    }

    async fn dispatch_connect(
        &self,
        host: HostId,
        startup: &StartupCommand,
        rebalance: bool,
    ) -> Result<(), ConnectRefused> {
        let snapshot = read(&self.host_monitors);
        for entry in snapshot.iter() {
            if !entry.active.load(Ordering::SeqCst) {
                continue;
            }
            let mut fut = entry.listener.process_connect(host, startup, rebalance);
            let guarded = std::future::poll_fn(|cx| {
                match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
                    Ok(Poll::Ready(r)) => Poll::Ready(Some(r)),
                    Ok(Poll::Pending) => Poll::Pending,
                    Err(_) => Poll::Ready(None),
                }
            });
            match tokio::time::timeout(self.config.connect_budget, guarded).await {
                Ok(Some(Ok(()))) => {}
                Ok(Some(Err(error))) => {
                    return Err(ConnectRefused {
                        host,
                        listener: entry.id,
                        error,
                    });
                }
                Ok(None) => {
                    entry.panics.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(listener = %entry.id, %host, "process_connect panicked; isolated, the others still run");
                }
                Err(_) => {
                    entry.overruns.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(listener = %entry.id, %host, budget = ?self.config.connect_budget,
                        "process_connect overran its time budget; abandoned, the others still run");
                }
            }
        }
        Ok(())
    }

    fn dispatch_disconnect(&self, host: HostId, status: Status) {
        self.each::<()>(&self.host_monitors, "process_disconnect", host, |l| {
            l.process_disconnect(host, status);
            None
        });
    }

    fn dispatch_host_added(&self, host: HostId) {
        self.each::<()>(&self.host_monitors, "process_host_added", host, |l| {
            l.process_host_added(host);
            None
        });
    }

    fn dispatch_host_about_to_be_removed(&self, host: HostId) {
        self.each::<()>(
            &self.host_monitors,
            "process_host_about_to_be_removed",
            host,
            |l| {
                l.process_host_about_to_be_removed(host);
                None
            },
        );
    }

    fn dispatch_host_removed(&self, host: HostId, cluster: Option<ClusterId>) {
        self.each::<()>(&self.host_monitors, "process_host_removed", host, |l| {
            l.process_host_removed(host, cluster);
            None
        });
    }
}

/// A per-request listener's time ran out: drop it and tell it once.
fn expire(
    requests: &Mutex<HashMap<(HostId, Sequence), RequestEntry>>,
    host: HostId,
    seq: Sequence,
    id: ListenerId,
) {
    let entry = {
        let mut map = lock(requests);
        match map.get(&(host, seq)) {
            Some(r) if r.id == id => map.remove(&(host, seq)),
            _ => None,
        }
    };
    if let Some(r) = entry
        && catch_unwind(AssertUnwindSafe(|| r.listener.process_timeout(host, seq))).is_err()
    {
        tracing::error!(%host, %seq, "process_timeout panicked; isolated");
    }
}
