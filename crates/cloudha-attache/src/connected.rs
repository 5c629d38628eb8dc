//! Connected attaches: an agent on a byte stream (TCP in production, an in-memory duplex in
//! tests) speaking the frame codec, and the TCP acceptor that turns incoming agent connections
//! into connected attaches (the manager's listening port).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use cloudha_protocol::{
    Answer, Body, Command, Decoded, Envelope, Flags, FrameCodec, HostId, Sequence, StartupAnswer,
    StartupCommand,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::attache::{AttacheHandle, Common, DEFAULT_WAIT, Kind, Request};
use crate::error::{LinkError, RequestError};
use crate::sink::CommandSink;
use crate::tasks::Tasks;

/// A byte stream an agent link runs over.
pub trait AgentStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AgentStream for T {}

/// Settings of connected attaches and the acceptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedConfig {
    /// Largest frame body accepted or sent.
    pub max_frame_len: usize,
    /// How long a new link may take to send its Startup.
    pub startup_timeout: Duration,
    /// `wait`: default wait for a request's answers.
    pub default_wait: Duration,
    /// Outbound frames queued per link before senders wait.
    pub outbound_queue: usize,
}

impl Default for ConnectedConfig {
    fn default() -> Self {
        Self {
            max_frame_len: cloudha_protocol::DEFAULT_MAX_FRAME_LEN,
            startup_timeout: Duration::from_secs(30),
            default_wait: DEFAULT_WAIT,
            outbound_queue: 256,
        }
    }
}

pub(crate) struct ConnectedInner {
    pub(crate) common: Common,
    sink: Arc<dyn CommandSink>,
    pending: Mutex<HashMap<Sequence, oneshot::Sender<Vec<Answer>>>>,
    outbound: mpsc::Sender<Outbound>,
}

/// What the writer task is asked to do.
enum Outbound {
    Frame(Envelope),
    /// Flush what was queued before, then close the link.
    Close,
}

impl ConnectedInner {
    pub(crate) async fn send(&self, request: Request) -> Result<Vec<Answer>, RequestError> {
        let seq = self.common.next_seq();
        let host = self.common.host;
        let expected = request.commands.len();
        let mut flags = Flags::FROM_SERVER;
        if request.sequential {
            flags = flags | Flags::SEQUENTIAL;
        }
        if request.stop_on_error {
            flags = flags | Flags::STOP_ON_ERROR;
        }
        let result = self
            .common
            .run(seq, &request, async {
                let (tx, rx) = oneshot::channel();
                self.pending_map().insert(seq, tx);
                let envelope = Envelope::request(seq, flags, request.commands.clone());
                self.outbound
                    .send(Outbound::Frame(envelope))
                    .await
                    .map_err(|_| RequestError::Disconnected { host, seq })?;
                let answers = rx
                    .await
                    .map_err(|_| RequestError::Disconnected { host, seq })?;
                if answers.len() != expected && !(request.stop_on_error && answers.len() < expected)
                {
                    return Err(RequestError::AnswerCount {
                        host,
                        seq,
                        expected,
                        got: answers.len(),
                    });
                }
                Ok(answers)
            })
            .await;
        if result.is_err() {
            self.pending_map().remove(&seq);
        }
        result
    }

    fn pending_map(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Sequence, oneshot::Sender<Vec<Answer>>>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn disconnect(&self) {
        self.common.cancel.cancel();
        self.pending_map().clear();
    }

    /// Handles one decoded frame from the agent.
    async fn on_frame(&self, decoded: Decoded) {
        let host = self.common.host;
        let Decoded { envelope, rejected } = decoded;
        match envelope.body {
            Body::Answers(answers) => {
                let waiter = self.pending_map().remove(&envelope.seq);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(answers);
                    }
                    None => {
                        tracing::debug!(host.id = %host, seq = %envelope.seq, "answer for no pending request")
                    }
                }
            }
            Body::Commands(commands) => {
                for r in &rejected {
                    tracing::warn!(host.id = %host, seq = %envelope.seq, index = r.index, error = %r.error, "rejected command from agent");
                }
                let mut answers = self
                    .sink
                    .on_commands(host, envelope.seq, &commands)
                    .into_iter();
                if envelope.flags.contains(Flags::NO_REPLY) {
                    return;
                }
                // One answer per command as sent: rejected items get a failure in their place.
                let total = commands.len() + rejected.len();
                let mut rejected = rejected.into_iter().peekable();
                let mut out = Vec::with_capacity(total);
                for index in 0..total {
                    match rejected.peek() {
                        Some(r) if r.index == index => {
                            let r = rejected.next().expect("peeked");
                            out.push(Answer::failure(r.error.to_string()));
                        }
                        _ => out.push(answers.next().unwrap_or_else(Answer::ok)),
                    }
                }
                let _ = self
                    .outbound
                    .send(Outbound::Frame(Envelope::response(envelope.seq, out)))
                    .await;
            }
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::Receiver<Outbound>,
    codec: FrameCodec,
    host: HostId,
    cancel: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(4096);
    while let Some(outbound) = rx.recv().await {
        let envelope = match outbound {
            Outbound::Frame(envelope) => envelope,
            Outbound::Close => {
                let _ = writer.shutdown().await;
                cancel.cancel();
                return;
            }
        };
        buf.clear();
        if let Err(e) = codec.encode(&envelope, &mut buf) {
            tracing::warn!(host.id = %host, seq = %envelope.seq, error = %e, "cannot encode frame; dropped");
            continue;
        }
        if let Err(e) = writer.write_all(&buf).await {
            tracing::debug!(host.id = %host, error = %e, "write failed; the reader reports the link");
            return;
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    inner: Arc<ConnectedInner>,
    mut reader: R,
    mut buf: BytesMut,
    codec: FrameCodec,
) {
    let error = loop {
        match codec.decode(&mut buf) {
            Ok(Some(decoded)) => inner.on_frame(decoded).await,
            Ok(None) => match reader.read_buf(&mut buf).await {
                Ok(0) if buf.is_empty() => break LinkError::Closed,
                Ok(0) => match codec.decode_eof(&mut buf) {
                    Err(e) => break LinkError::BadFrame(e),
                    Ok(_) => break LinkError::Closed,
                },
                Ok(_) => {}
                Err(e) => break LinkError::Io(e),
            },
            Err(e) => break LinkError::BadFrame(e),
        }
    };
    let host = inner.common.host;
    match &error {
        LinkError::BadFrame(e) => {
            tracing::warn!(host.id = %host, error = %e, "bad frame from agent: closing its link")
        }
        e => tracing::info!(host.id = %host, error = %e, "agent link lost"),
    }
    // Fail the waiters at once, then tell the manager (we are not cancelled: a disconnect by the
    // manager drops this future before it gets here).
    inner.disconnect();
    inner
        .sink
        .on_link_lost(host, inner.common.generation, &error);
}

fn spawn_attache<S: AgentStream>(
    host: HostId,
    stream: S,
    leftover: BytesMut,
    sink: Arc<dyn CommandSink>,
    config: &ConnectedConfig,
    tasks: &Tasks,
    cancel: CancellationToken,
) -> AttacheHandle {
    let (reader, writer): (ReadHalf<S>, WriteHalf<S>) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(config.outbound_queue.max(1));
    let inner = Arc::new(ConnectedInner {
        common: Common::new(host, cancel, config.default_wait),
        sink,
        pending: Mutex::new(HashMap::new()),
        outbound: tx,
    });
    let codec = FrameCodec::new(config.max_frame_len);
    let span = tracing::debug_span!("agent_link", host.id = %host);
    tasks.spawn(
        inner.common.cancel.clone(),
        write_loop(writer, rx, codec, host, inner.common.cancel.clone()).instrument(span.clone()),
    );
    tasks.spawn(
        inner.common.cancel.clone(),
        read_loop(Arc::clone(&inner), reader, leftover, codec).instrument(span),
    );
    AttacheHandle {
        kind: Kind::Connected(inner),
    }
}

/// Runs the connect handshake on a new agent stream: reads its Startup (within the startup
/// timeout), creates the connected attache, asks the sink, and writes the StartupAnswer. A refused
/// startup closes the link.
///
/// # Errors
/// [`LinkError`] when the agent did not start up properly; nothing was created then.
pub async fn accept_stream<S: AgentStream>(
    mut stream: S,
    sink: Arc<dyn CommandSink>,
    config: &ConnectedConfig,
    tasks: &Tasks,
) -> Result<AttacheHandle, LinkError> {
    let codec = FrameCodec::new(config.max_frame_len);
    let mut buf = BytesMut::with_capacity(1024);
    let first = tokio::time::timeout(config.startup_timeout, async {
        loop {
            if let Some(d) = codec.decode(&mut buf).map_err(LinkError::BadFrame)? {
                return Ok::<_, LinkError>(d);
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(match codec.decode_eof(&mut buf) {
                    Err(e) => LinkError::BadFrame(e),
                    Ok(_) => LinkError::Closed,
                });
            }
        }
    })
    .await
    .map_err(|_| LinkError::StartupTimeout(config.startup_timeout))??;
    let seq = first.envelope.seq;
    let startup = match first.envelope.body {
        Body::Commands(mut cmds) if matches!(cmds.first(), Some(Command::Startup(_))) => {
            match cmds.swap_remove(0) {
                Command::Startup(s) => s,
                _ => unreachable!("checked above"),
            }
        }
        other => {
            return Err(LinkError::NoStartup(
                format!("{other:?}").chars().take(120).collect(),
            ));
        }
    };
    let host = startup.host_id;
    let attache = spawn_attache(
        host,
        stream,
        buf,
        Arc::clone(&sink),
        config,
        tasks,
        tasks.token().child_token(),
    );
    let answer = sink.on_connect(attache.clone(), startup).await;
    let refused = (!answer.success).then(|| answer.details.clone());
    if let Kind::Connected(inner) = &attache.kind {
        let _ = inner
            .outbound
            .send(Outbound::Frame(Envelope::response(
                seq,
                vec![Answer::Startup(answer)],
            )))
            .await;
        if let Some(details) = refused {
            // The writer flushes the refusal, then closes the link.
            let _ = inner.outbound.send(Outbound::Close).await;
            return Err(LinkError::Refused(details));
        }
    }
    Ok(attache)
}

/// The manager's listening port: accepts agent connections and turns each into a connected
/// attache through [`accept_stream`]. Returns the bound address; the accept loop is owned by `tasks`.
///
/// # Errors
/// The bind error.
pub async fn listen(
    addr: SocketAddr,
    sink: Arc<dyn CommandSink>,
    config: ConnectedConfig,
    tasks: &Tasks,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let loop_tasks = tasks.clone();
    tasks.spawn(tasks.token().child_token(), async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (sink, config, tasks) = (Arc::clone(&sink), config.clone(), loop_tasks.clone());
            loop_tasks.spawn(loop_tasks.token().child_token(), async move {
                if let Err(e) = accept_stream(stream, sink, &config, &tasks).await {
                    tracing::warn!(%peer, error = %e, "agent connection rejected");
                }
            });
        }
    });
    Ok(local)
}

/// Builds the StartupAnswer a sink usually returns.
pub fn accept_startup(startup: &StartupCommand, ping_interval: Duration) -> StartupAnswer {
    StartupAnswer {
        success: true,
        host_id: startup.host_id,
        ping_interval_ms: u64::try_from(ping_interval.as_millis()).unwrap_or(u64::MAX),
        details: String::new(),
    }
}
