//! Errors of the protocol crate. Decoding never panics: every malformed input is one of these.

use crate::status::{Event, Status};

/// §4.2 has no transition for this status and event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no host status transition from {} on event {event}", from.map_or("(null)", Status::as_str))]
pub struct TransitionError {
    /// The status before (`None` = no status yet).
    pub from: Option<Status>,
    /// The event.
    pub event: Event,
}

/// A name that is not one of CloudStack's names for the kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} name `{value}`")]
pub struct ParseNameError {
    /// What kind of name (status, event, ...).
    pub what: &'static str,
    /// The text given.
    pub value: String,
}

impl ParseNameError {
    pub(crate) fn new(what: &'static str, value: &str) -> Self {
        Self {
            what,
            value: value.to_owned(),
        }
    }
}

/// One item of a batch (a command or an answer) that could not be decoded. The rest of the
/// batch, and the stream, are unaffected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ItemError {
    /// Not a JSON object with a string `type`.
    #[error("{what} has no readable `type` tag: {source}")]
    MissingType {
        /// "command" or "answer".
        what: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The `type` is not one we know.
    #[error("unknown {what} type `{type_name}`")]
    UnknownType {
        /// "command" or "answer".
        what: &'static str,
        /// The unknown tag.
        type_name: String,
    },
    /// The item has a second `type` key (serde's derive refuses it too): which one is meant?
    #[error("{what} `{type_name}` has a second `type` tag")]
    DuplicateType {
        /// "command" or "answer".
        what: &'static str,
        /// The first tag.
        type_name: &'static str,
    },
    /// The tag is known but the payload does not match it.
    #[error("invalid {what} `{type_name}`: {source}")]
    Invalid {
        /// "command" or "answer".
        what: &'static str,
        /// The tag.
        type_name: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// A frame that could not be decoded or encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The input ended inside a frame.
    #[error("truncated frame: {available} of {needed} bytes")]
    Truncated {
        /// Bytes the frame needs (prefix included).
        needed: usize,
        /// Bytes there were.
        available: usize,
    },
    /// The length prefix announces more than the limit; refused before the body is read.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced (or, on encode, actual) body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not a JSON envelope.
    #[error("invalid envelope JSON: {source}")]
    InvalidJson {
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The envelope carries neither `commands` nor `answers`, or both.
    #[error("envelope must carry exactly one of `commands` and `answers`")]
    BadBody,
    /// Encoding failed (a serializer error; not expected for our types).
    #[error("encoding failed: {source}")]
    Encode {
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

impl FrameError {
    /// Whether the byte stream can go on after this error (frame boundaries are intact).
    pub const fn is_recoverable(&self) -> bool {
        matches!(self, Self::InvalidJson { .. } | Self::BadBody)
    }
}
