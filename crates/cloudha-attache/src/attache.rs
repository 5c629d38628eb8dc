//! The `Attache` trait, the handle type the manager holds for any host, and the request plumbing
//! both kinds share (sequences, sequential ordering, per-request waits, fail-fast on disconnect).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cloudha_protocol::{Answer, Command, HostId, Sequence, StartupAnswer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::connected::ConnectedInner;
use crate::direct::DirectInner;
use crate::error::RequestError;

/// Default wait for a request's answers (CloudStack's `wait`, 1800 s).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(1800);

/// Which kind of attache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttacheKind {
    /// The manager polls a [`crate::ServerResource`] in-process.
    Direct,
    /// An agent on a byte stream speaking the frame codec.
    Connected,
}

/// A request: commands for one host, executed in order, answered one answer per command.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The commands.
    pub commands: Vec<Command>,
    /// Queue behind the host's other sequential requests, one in flight at a time.
    pub sequential: bool,
    /// Stop at the first failed answer (the rest get no answer).
    pub stop_on_error: bool,
    /// How long to wait for the answers. `None`: the commands' own fixed wait
    /// ([`Command::fixed_wait`], the longest of the batch) or else the attache's default.
    pub wait: Option<Duration>,
}

impl Request {
    /// A request for `commands` with default options.
    pub fn new(commands: Vec<Command>) -> Self {
        Self {
            commands,
            sequential: false,
            stop_on_error: false,
            wait: None,
        }
    }

    /// A request for one command.
    pub fn one(command: impl Into<Command>) -> Self {
        Self::new(vec![command.into()])
    }

    /// Sets the wait.
    #[must_use]
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Marks the request sequential.
    #[must_use]
    pub fn sequential(mut self) -> Self {
        self.sequential = true;
        self
    }

    /// The wait that applies, given the attache's default.
    pub fn effective_wait(&self, default: Duration) -> Duration {
        self.wait
            .or_else(|| self.commands.iter().filter_map(Command::fixed_wait).max())
            .unwrap_or(default)
    }
}

/// One managed host's link, of either kind. The manager holds these behind this trait.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait Attache: Send + Sync {
    /// The host.
    fn host_id(&self) -> HostId;

    /// A number unique to this attache in the process; tells a replaced attache from its successor.
    fn generation(&self) -> u64;

    /// Which kind.
    fn kind(&self) -> AttacheKind;

    /// Sends a request and waits for its answers (one per command, fewer with `stop_on_error`).
    ///
    /// # Errors
    /// [`RequestError`]: timeout, disconnect (at once when the attache is disconnected), send failure.
    async fn send(&self, request: Request) -> Result<Vec<Answer>, RequestError>;

    /// The manager accepted the host's startup: a direct attache (re)starts its one ping task at
    /// the answer's interval; a connected attache writes nothing here (the acceptor answers).
    fn on_startup_answer(&self, answer: &StartupAnswer);

    /// Cancels the ping task and every pending request (they fail with `Disconnected` at once),
    /// closes the link, and tells the resource. Idempotent.
    fn disconnect(&self);

    /// Whether [`Attache::disconnect`] ran or the link was lost.
    fn is_closed(&self) -> bool;
}

/// Sends one command and returns its answer.
///
/// # Errors
/// As [`Attache::send`]; a response without an answer is [`RequestError::AnswerCount`].
pub async fn send_one(
    attache: &dyn Attache,
    command: Command,
    wait: Option<Duration>,
) -> Result<Answer, RequestError> {
    let mut request = Request::one(command);
    request.wait = wait;
    let mut answers = attache.send(request).await?;
    match answers.len() {
        1 => Ok(answers.remove(0)),
        got => Err(RequestError::AnswerCount {
            host: attache.host_id(),
            seq: Sequence(0),
            expected: 1,
            got,
        }),
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// State and plumbing shared by both kinds.
#[derive(Debug)]
pub(crate) struct Common {
    pub(crate) host: HostId,
    pub(crate) generation: u64,
    pub(crate) cancel: CancellationToken,
    pub(crate) default_wait: Duration,
    next_seq: AtomicU64,
    sequential: Semaphore,
}

impl Common {
    pub(crate) fn new(host: HostId, cancel: CancellationToken, default_wait: Duration) -> Self {
        // CloudStack starts request sequences at random(0..32767) << 48; we derive the high bits
        // from the host id so runs are reproducible, and keep them apart per host.
        let start = (host.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 49) << 48;
        Self {
            host,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            cancel,
            default_wait,
            next_seq: AtomicU64::new(start),
            sequential: Semaphore::new(1),
        }
    }

    pub(crate) fn next_seq(&self) -> Sequence {
        Sequence(
            self.next_seq
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1),
        )
    }

    /// Runs `work` for request `seq` under the request rules: sequential queueing, the wait, and
    /// an immediate `Disconnected` when the attache is disconnected.
    pub(crate) async fn run<T, F>(
        &self,
        seq: Sequence,
        request: &Request,
        work: F,
    ) -> Result<T, RequestError>
    where
        F: Future<Output = Result<T, RequestError>>,
    {
        let wait = request.effective_wait(self.default_wait);
        let host = self.host;
        let guarded = async {
            let _turn = if request.sequential {
                Some(
                    self.sequential
                        .acquire()
                        .await
                        .map_err(|_| RequestError::Disconnected { host, seq })?,
                )
            } else {
                None
            };
            work.await
        };
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(RequestError::Disconnected { host, seq }),
            r = tokio::time::timeout(wait, guarded) => r.unwrap_or(Err(RequestError::Timeout { host, seq, wait })),
        }
    }
}

#[derive(Clone)]
pub(crate) enum Kind {
    Direct(Arc<DirectInner>),
    Connected(Arc<ConnectedInner>),
}

/// The handle the manager holds for one host's attache, of either kind. Cheap to clone.
#[derive(Clone)]
pub struct AttacheHandle {
    pub(crate) kind: Kind,
}

impl std::fmt::Debug for AttacheHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttacheHandle")
            .field("host", &self.common().host)
            .field("generation", &self.common().generation)
            .field("kind", &self.kind())
            .finish()
    }
}

impl AttacheHandle {
    fn common(&self) -> &Common {
        match &self.kind {
            Kind::Direct(d) => &d.common,
            Kind::Connected(c) => &c.common,
        }
    }
}

#[async_trait::async_trait]
impl Attache for AttacheHandle {
    fn host_id(&self) -> HostId {
        self.common().host
    }

    fn generation(&self) -> u64 {
        self.common().generation
    }

    fn kind(&self) -> AttacheKind {
        match self.kind {
            Kind::Direct(_) => AttacheKind::Direct,
            Kind::Connected(_) => AttacheKind::Connected,
        }
    }

    async fn send(&self, request: Request) -> Result<Vec<Answer>, RequestError> {
        match &self.kind {
            Kind::Direct(d) => d.send(request).await,
            Kind::Connected(c) => c.send(request).await,
        }
    }

    fn on_startup_answer(&self, answer: &StartupAnswer) {
        if let Kind::Direct(d) = &self.kind {
            DirectInner::on_startup_answer(d, answer);
        }
    }

    fn disconnect(&self) {
        match &self.kind {
            Kind::Direct(d) => d.disconnect(),
            Kind::Connected(c) => c.disconnect(),
        }
    }

    fn is_closed(&self) -> bool {
        self.common().cancel.is_cancelled()
    }
}
