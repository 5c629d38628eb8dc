//! The frame codec: a 4-byte big-endian length prefix, then the envelope as JSON.
//!
//! Runtime-free: it works on [`bytes::BytesMut`] buffers, so any I/O layer (tokio, blocking,
//! a simulator) can drive it. A frame whose prefix announces more than the limit is refused
//! before its body is buffered; below the limit, the buffer grows with the bytes that arrive,
//! never with what the prefix promises. Decoding never panics.

use bytes::{Buf, BufMut, BytesMut};

use crate::envelope::{Body, Decoded, Envelope, RejectedItem, WireIn, WireOut};
use crate::error::FrameError;
use crate::{Answer, Command};

/// Length of the frame prefix.
pub const PREFIX_LEN: usize = 4;
/// Default maximum body length: 4 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 4 << 20;
/// The room [`FrameCodec::decode`] makes for the rest of an incomplete frame: at most this much
/// beyond what has arrived. `BytesMut` grows its allocation geometrically when it must, so a
/// big frame still costs a logarithmic number of reallocations, while a prefix promising 4 MiB
/// costs 8 KiB until the bytes come.
const RESERVE_AHEAD: usize = 8 << 10;

/// Encoder and decoder of envelope frames.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame_len: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl FrameCodec {
    /// A codec refusing bodies longer than `max_frame_len` bytes.
    pub const fn new(max_frame_len: usize) -> Self {
        Self { max_frame_len }
    }

    /// The body limit.
    pub const fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Appends one frame for `envelope` to `dst`.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] if the body exceeds the limit (`dst` is left as it was).
    pub fn encode(&self, envelope: &Envelope, dst: &mut BytesMut) -> Result<(), FrameError> {
        let start = dst.len();
        dst.put_u32(0);
        let wire = match &envelope.body {
            Body::Commands(c) => WireOut {
                seq: envelope.seq,
                flags: envelope.flags,
                commands: Some(c),
                answers: None,
            },
            Body::Answers(a) => WireOut {
                seq: envelope.seq,
                flags: envelope.flags,
                commands: None,
                answers: Some(a),
            },
        };
        if let Err(source) = serde_json::to_writer(dst.writer(), &wire) {
            dst.truncate(start);
            return Err(FrameError::Encode { source });
        }
        let len = dst.len() - start - PREFIX_LEN;
        if len > self.max_frame_len {
            dst.truncate(start);
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        let prefix = u32::try_from(len).map_err(|_| FrameError::TooLarge {
            len,
            max: self.max_frame_len,
        })?;
        dst[start..start + PREFIX_LEN].copy_from_slice(&prefix.to_be_bytes());
        Ok(())
    }

    /// Encodes one frame into a fresh buffer.
    ///
    /// # Errors
    /// As [`FrameCodec::encode`].
    pub fn encode_to_vec(&self, envelope: &Envelope) -> Result<Vec<u8>, FrameError> {
        let mut buf = BytesMut::new();
        self.encode(envelope, &mut buf)?;
        Ok(buf.to_vec())
    }

    /// Takes one frame from the front of `src` if it is complete.
    ///
    /// `Ok(None)`: more bytes are needed; `src` then has room for some of them (8 KiB ahead; the
    /// allocation grows geometrically with what has arrived), never for the whole body the prefix
    /// announces. A complete frame is consumed even when its body is invalid
    /// ([`FrameError::is_recoverable`]); [`FrameError::TooLarge`] consumes nothing and the
    /// stream cannot go on.
    ///
    /// # Errors
    /// [`FrameError`] saying what is wrong with the frame.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        let Some(len) = self.body_len(src)? else {
            return Ok(None);
        };
        let missing = (PREFIX_LEN + len).saturating_sub(src.len());
        if missing > 0 {
            // The prefix is the peer's promise: the buffer grows with the bytes that arrive.
            src.reserve(missing.min(RESERVE_AHEAD));
            return Ok(None);
        }
        src.advance(PREFIX_LEN);
        let body = src.split_to(len);
        decode_body(&body).map(Some)
    }

    /// Like [`FrameCodec::decode`] at the end of the stream: leftover bytes are a truncated frame.
    ///
    /// # Errors
    /// [`FrameError::Truncated`] for leftovers, or as [`FrameCodec::decode`].
    pub fn decode_eof(&self, src: &mut BytesMut) -> Result<Option<Decoded>, FrameError> {
        match self.decode(src)? {
            Some(d) => Ok(Some(d)),
            None if src.is_empty() => Ok(None),
            None => Err(self.truncated(src)),
        }
    }

    /// Decodes the one frame at the start of `bytes`, returning it and the bytes it took.
    ///
    /// # Errors
    /// [`FrameError`]; an incomplete frame is [`FrameError::Truncated`].
    pub fn decode_slice(&self, bytes: &[u8]) -> Result<(Decoded, usize), FrameError> {
        let Some(len) = self.body_len(bytes)? else {
            return Err(self.truncated(bytes));
        };
        let end = PREFIX_LEN + len;
        let body = bytes
            .get(PREFIX_LEN..end)
            .ok_or_else(|| self.truncated(bytes))?;
        Ok((decode_body(body)?, end))
    }

    fn body_len(&self, src: &[u8]) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = src.get(..PREFIX_LEN) else {
            return Ok(None);
        };
        let mut raw = [0u8; PREFIX_LEN];
        raw.copy_from_slice(prefix);
        let len = u32::from_be_bytes(raw) as usize;
        if len > self.max_frame_len {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        Ok(Some(len))
    }

    fn truncated(&self, src: &[u8]) -> FrameError {
        let needed = match self.body_len(src) {
            Ok(Some(len)) => PREFIX_LEN + len,
            _ => PREFIX_LEN,
        };
        FrameError::Truncated {
            needed,
            available: src.len(),
        }
    }
}

/// Decodes one envelope body (the JSON after the prefix).
///
/// # Errors
/// [`FrameError::InvalidJson`] or [`FrameError::BadBody`]; undecodable items are not errors,
/// they are listed in [`Decoded::rejected`].
pub fn decode_body(body: &[u8]) -> Result<Decoded, FrameError> {
    let wire: WireIn<'_> =
        serde_json::from_slice(body).map_err(|source| FrameError::InvalidJson { source })?;
    let mut rejected = Vec::new();
    let body = match (wire.commands, wire.answers) {
        (Some(items), None) => {
            Body::Commands(decode_items(&items, Command::from_json, &mut rejected))
        }
        (None, Some(items)) => {
            Body::Answers(decode_items(&items, Answer::from_json, &mut rejected))
        }
        _ => return Err(FrameError::BadBody),
    };
    Ok(Decoded {
        envelope: Envelope {
            seq: wire.seq,
            flags: wire.flags,
            body,
        },
        rejected,
    })
}

fn decode_items<T>(
    items: &[&serde_json::value::RawValue],
    decode: fn(&str) -> Result<T, crate::ItemError>,
    rejected: &mut Vec<RejectedItem>,
) -> Vec<T> {
    let mut out = Vec::with_capacity(items.len());
    for (index, raw) in items.iter().enumerate() {
        match decode(raw.get()) {
            Ok(v) => out.push(v),
            Err(error) => rejected.push(RejectedItem { index, error }),
        }
    }
    out
}
