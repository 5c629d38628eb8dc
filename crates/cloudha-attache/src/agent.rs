//! `AgentClient`: the agent side of a connected link (for tests now, and for an agent daemon
//! later). Connects, sends Startup, pings every interval from a [`ServerResource`], answers the
//! manager's commands, honours a PingAnswer's send-startup flag, and reconnects with capped
//! exponential backoff.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use cloudha_protocol::{Answer, Body, Command, Envelope, Flags, FrameCodec, HostId, Sequence};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::connected::AgentStream;
use crate::error::LinkError;
use crate::resource::ServerResource;
use crate::tasks::Tasks;

/// Opens the byte stream to the manager.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait::async_trait]
pub trait Connector: Send + Sync {
    /// Opens a new stream.
    async fn connect(&self) -> std::io::Result<Box<dyn AgentStreamObj>>;
}

/// An object-safe [`AgentStream`].
pub trait AgentStreamObj: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: AgentStream> AgentStreamObj for T {}

/// Connects over TCP.
#[derive(Debug, Clone, Copy)]
pub struct TcpConnector(pub SocketAddr);

#[async_trait::async_trait]
impl Connector for TcpConnector {
    async fn connect(&self) -> std::io::Result<Box<dyn AgentStreamObj>> {
        let s = tokio::net::TcpStream::connect(self.0).await?;
        s.set_nodelay(true)?;
        Ok(Box::new(s))
    }
}

/// Settings of an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The host this agent is.
    pub host: HostId,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Cap on the reconnect delay.
    pub backoff_max: Duration,
    /// Seed of the reconnect jitter (up to +50 % of each delay); the same seed gives the same delays.
    pub jitter_seed: u64,
    /// How long to wait for the StartupAnswer.
    pub startup_wait: Duration,
    /// Largest frame body accepted or sent.
    pub max_frame_len: usize,
}

impl AgentConfig {
    /// Defaults for `host`: backoff 1 s doubling up to 60 s.
    pub fn new(host: HostId) -> Self {
        Self {
            host,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            jitter_seed: host.0,
            startup_wait: Duration::from_secs(60),
            max_frame_len: cloudha_protocol::DEFAULT_MAX_FRAME_LEN,
        }
    }
}

/// A running agent. Dropping the handle does not stop it; [`AgentHandle::stop`] does.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    cancel: CancellationToken,
}

impl AgentHandle {
    /// Stops the agent: its link closes at once (the manager sees a link loss).
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

/// The agent side of a connected link.
pub struct AgentClient {
    config: AgentConfig,
    resource: Arc<dyn ServerResource>,
    connector: Arc<dyn Connector>,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

enum SessionEnd {
    /// The link ended after a successful startup: reconnect from the first delay.
    AfterStartup(LinkError),
    /// The link ended before startup completed: back off further.
    BeforeStartup(LinkError),
}

impl AgentClient {
    /// An agent for `resource`, reaching the manager through `connector`.
    pub fn new(
        config: AgentConfig,
        resource: Arc<dyn ServerResource>,
        connector: Arc<dyn Connector>,
    ) -> Self {
        Self {
            config,
            resource,
            connector,
        }
    }

    /// Starts the agent; its task is owned by `tasks`.
    pub fn spawn(self, tasks: &Tasks) -> AgentHandle {
        let cancel = tasks.token().child_token();
        let span = tracing::debug_span!("agent", host.id = %self.config.host);
        tasks.spawn(cancel.clone(), self.run().instrument(span));
        AgentHandle { cancel }
    }

    async fn run(self) {
        let mut delay = self.config.backoff_initial;
        let mut rng = self.config.jitter_seed | 1;
        loop {
            match self.connector.connect().await {
                Ok(stream) => match self.session(stream).await {
                    SessionEnd::AfterStartup(e) => {
                        tracing::info!(error = %e, "link to manager lost; reconnecting");
                        delay = self.config.backoff_initial;
                    }
                    SessionEnd::BeforeStartup(e) => tracing::warn!(error = %e, "startup failed"),
                },
                Err(e) => tracing::debug!(error = %e, "connect failed"),
            }
            // xorshift jitter: up to +50 % of the delay, reproducible from the seed
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let jitter = delay.mul_f64((rng % 1000) as f64 / 2000.0);
            tokio::time::sleep(delay + jitter).await;
            delay = (delay * 2).min(self.config.backoff_max);
        }
    }

    async fn session(&self, stream: Box<dyn AgentStreamObj>) -> SessionEnd {
        let mut link = Link {
            stream,
            buf: BytesMut::with_capacity(4096),
            out: BytesMut::with_capacity(4096),
            codec: FrameCodec::new(self.config.max_frame_len),
            next_seq: 0,
        };
        let interval = match self.startup(&mut link).await {
            Ok(i) => i,
            Err(e) => return SessionEnd::BeforeStartup(e),
        };
        SessionEnd::AfterStartup(self.connected(&mut link, interval).await)
    }

    /// Sends the resource's startup commands and waits for the StartupAnswer; returns the interval.
    async fn startup(&self, link: &mut Link) -> Result<Duration, LinkError> {
        let commands = self.resource.initialize().await;
        let seq = link
            .send(Envelope::request(Sequence(0), Flags::NONE, commands))
            .await?;
        let wait = self.config.startup_wait;
        tokio::time::timeout(wait, async {
            loop {
                let decoded = link.recv().await?;
                match decoded.envelope.body {
                    Body::Answers(answers) if decoded.envelope.seq == seq => {
                        return match answers.into_iter().next() {
                            Some(Answer::Startup(a)) if a.success && a.ping_interval_ms > 0 => {
                                Ok(a.ping_interval())
                            }
                            Some(Answer::Startup(a)) => Err(LinkError::Refused(a.details)),
                            other => Err(LinkError::Refused(format!(
                                "unexpected startup answer {other:?}"
                            ))),
                        };
                    }
                    // Commands before the StartupAnswer are answered like any other.
                    Body::Commands(cmds) => self.answer(link, decoded.envelope.seq, cmds).await?,
                    Body::Answers(_) => {}
                }
            }
        })
        .await
        .map_err(|_| LinkError::StartupTimeout(wait))?
    }

    async fn connected(&self, link: &mut Link, mut interval: Duration) -> LinkError {
        let host = self.config.host;
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if let Some(ping) = self.resource.get_current_status(host).await
                        && let Err(e) = link.send(Envelope::request(Sequence(0), Flags::NONE, vec![ping])).await
                    {
                        return e;
                    }
                }
                decoded = link.recv() => {
                    let decoded = match decoded {
                        Ok(d) => d,
                        Err(e) => return e,
                    };
                    match decoded.envelope.body {
                        Body::Commands(cmds) => {
                            if let Err(e) = self.answer(link, decoded.envelope.seq, cmds).await {
                                return e;
                            }
                        }
                        Body::Answers(answers) => {
                            let redo = answers.iter().any(|a| matches!(a, Answer::Ping(p) if p.send_startup));
                            if redo {
                                tracing::info!(host.id = %host, "manager asked for a new startup");
                                match self.startup(link).await {
                                    Ok(i) => {
                                        if i != interval {
                                            interval = i;
                                            ticker = tokio::time::interval_at(Instant::now() + interval, interval);
                                            ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
                                        }
                                    }
                                    Err(e) => return e,
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    async fn answer(
        &self,
        link: &mut Link,
        seq: Sequence,
        commands: Vec<Command>,
    ) -> Result<(), LinkError> {
        let mut answers = Vec::with_capacity(commands.len());
        for c in commands {
            answers.push(self.resource.execute(c).await);
        }
        link.send_raw(&Envelope::response(seq, answers)).await
    }
}

struct Link {
    stream: Box<dyn AgentStreamObj>,
    buf: BytesMut,
    out: BytesMut,
    codec: FrameCodec,
    next_seq: u64,
}

impl Link {
    /// Sends a request with the next sequence number; returns it.
    async fn send(&mut self, mut envelope: Envelope) -> Result<Sequence, LinkError> {
        self.next_seq += 1;
        envelope.seq = Sequence(self.next_seq);
        self.send_raw(&envelope).await?;
        Ok(envelope.seq)
    }

    async fn send_raw(&mut self, envelope: &Envelope) -> Result<(), LinkError> {
        self.out.clear();
        self.codec
            .encode(envelope, &mut self.out)
            .map_err(LinkError::BadFrame)?;
        self.stream.write_all(&self.out).await?;
        Ok(())
    }

    /// The next frame. Cancel-safe: bytes read so far stay in the buffer.
    async fn recv(&mut self) -> Result<cloudha_protocol::Decoded, LinkError> {
        loop {
            if let Some(d) = self
                .codec
                .decode(&mut self.buf)
                .map_err(LinkError::BadFrame)?
            {
                return Ok(d);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(match self.codec.decode_eof(&mut self.buf) {
                    Err(e) => LinkError::BadFrame(e),
                    Ok(_) => LinkError::Closed,
                });
            }
        }
    }
}
