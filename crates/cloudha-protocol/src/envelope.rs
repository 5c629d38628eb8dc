//! The request/response envelope: a sequence number, flags and a batch of commands or answers.

use serde::{Deserialize, Serialize};

use crate::command::{Answer, Command};
use crate::error::ItemError;
use crate::ids::Sequence;

/// Envelope flags (a bit set, CloudStack's `Request` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Flags(pub u16);

impl Flags {
    /// No flags.
    pub const NONE: Flags = Flags(0);
    /// The envelope is a response.
    pub const RESPONSE: Flags = Flags(1);
    /// Sequential: queued behind other sequential requests, one in flight.
    pub const SEQUENTIAL: Flags = Flags(1 << 1);
    /// Stop executing the batch at the first failure.
    pub const STOP_ON_ERROR: Flags = Flags(1 << 2);
    /// Sent by the management server.
    pub const FROM_SERVER: Flags = Flags(1 << 3);
    /// A control request.
    pub const CONTROL: Flags = Flags(1 << 4);
    /// No answer is expected (a ping's answer is still sent for connected agents).
    pub const NO_REPLY: Flags = Flags(1 << 5);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets.
    #[must_use]
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        self.with(rhs)
    }
}

/// What an envelope carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A request: commands to execute, in order.
    Commands(Vec<Command>),
    /// A response: one answer per command of the request, in order.
    Answers(Vec<Answer>),
}

/// One frame's content.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Request sequence; a response carries its request's sequence.
    pub seq: Sequence,
    /// Flags.
    pub flags: Flags,
    /// The batch.
    pub body: Body,
}

impl Envelope {
    /// A request carrying `commands`.
    pub fn request(seq: Sequence, flags: Flags, commands: Vec<Command>) -> Self {
        Self {
            seq,
            flags,
            body: Body::Commands(commands),
        }
    }

    /// A response to `seq` carrying `answers`.
    pub fn response(seq: Sequence, answers: Vec<Answer>) -> Self {
        Self {
            seq,
            flags: Flags::RESPONSE,
            body: Body::Answers(answers),
        }
    }

    /// Whether this is a response.
    pub const fn is_response(&self) -> bool {
        matches!(self.body, Body::Answers(_))
    }
}

/// An item of a received batch that could not be decoded.
#[derive(Debug)]
pub struct RejectedItem {
    /// Its position in the batch as sent.
    pub index: usize,
    /// Why.
    pub error: ItemError,
}

/// A received envelope: the items that decoded, and those that did not.
///
/// A receiver answers rejected commands with a failure at their `index` and carries on.
#[derive(Debug)]
pub struct Decoded {
    /// The envelope, with the items that decoded, in order.
    pub envelope: Envelope,
    /// The items that did not decode.
    pub rejected: Vec<RejectedItem>,
}

#[derive(Serialize)]
pub(crate) struct WireOut<'a> {
    pub(crate) seq: Sequence,
    pub(crate) flags: Flags,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) commands: Option<&'a [Command]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) answers: Option<&'a [Answer]>,
}

#[derive(Deserialize)]
pub(crate) struct WireIn<'a> {
    pub(crate) seq: Sequence,
    #[serde(default)]
    pub(crate) flags: Flags,
    #[serde(default, borrow)]
    pub(crate) commands: Option<Vec<&'a serde_json::value::RawValue>>,
    #[serde(default, borrow)]
    pub(crate) answers: Option<Vec<&'a serde_json::value::RawValue>>,
}
