//! Errors of the attache crate.

use std::time::Duration;

use cloudha_protocol::{FrameError, HostId, Sequence};

/// A request to a host that did not get its answers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The attache was disconnected before the answer came (or was already).
    #[error("host {host}: disconnected, request {seq} not answered")]
    Disconnected {
        /// The host.
        host: HostId,
        /// The request's sequence.
        seq: Sequence,
    },
    /// No answer within the request's wait.
    #[error("host {host}: request {seq} timed out after {wait:?}")]
    Timeout {
        /// The host.
        host: HostId,
        /// The request's sequence.
        seq: Sequence,
        /// The wait that ran out.
        wait: Duration,
    },
    /// The request could not be encoded or sent.
    #[error("host {host}: request {seq} could not be sent: {source}")]
    Send {
        /// The host.
        host: HostId,
        /// The request's sequence.
        seq: Sequence,
        /// Why.
        #[source]
        source: FrameError,
    },
    /// The peer's response did not carry one answer per command.
    #[error("host {host}: response to {seq} has {got} answers for {expected} commands")]
    AnswerCount {
        /// The host.
        host: HostId,
        /// The request's sequence.
        seq: Sequence,
        /// Commands sent.
        expected: usize,
        /// Answers received.
        got: usize,
    },
}

/// Why a link (or an attache) ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The peer closed the stream.
    #[error("peer closed the link")]
    Closed,
    /// An I/O error on the stream.
    #[error("link I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent a frame we cannot decode; only this link is closed.
    #[error("bad frame from peer: {0}")]
    BadFrame(#[source] FrameError),
    /// The peer's first frame was not a Startup request.
    #[error("expected a startup request first, got {0}")]
    NoStartup(String),
    /// The peer did not start up in time.
    #[error("no startup within {0:?}")]
    StartupTimeout(Duration),
    /// The manager refused the startup.
    #[error("startup refused: {0}")]
    Refused(String),
}
