//! # cloudha-protocol
//!
//! The wire and domain types every cloudha crate speaks: identifiers, host descriptors, the host
//! [`Status`] state machine (CloudStack's §4.2 table held as data), commands and answers, the
//! request/response [`Envelope`] and its length-prefixed JSON [`FrameCodec`].
//!
//! This crate has no runtime: it knows nothing of tokio, tasks or clocks, and depends on no other
//! cloudha crate.
//!
//! ```
//! use cloudha_protocol::{Event, Status};
//!
//! assert_eq!(Status::Up.next(Event::PingTimeout), Ok(Status::Alert));
//! assert!(Status::Alert.next(Event::PingTimeout).is_err());
//! ```
//!
//! ```
//! use bytes::BytesMut;
//! use cloudha_protocol::{Command, Envelope, Flags, FrameCodec, HostId, PingCommand, Sequence};
//!
//! let codec = FrameCodec::default();
//! let ping = Envelope::request(Sequence(1), Flags::NONE, vec![Command::Ping(PingCommand { host_id: HostId(7) })]);
//! let mut buf = BytesMut::new();
//! codec.encode(&ping, &mut buf).unwrap();
//! let decoded = codec.decode(&mut buf).unwrap().unwrap();
//! assert_eq!(decoded.envelope, ping);
//! ```

pub mod codec;
pub mod command;
pub mod duration;
pub mod envelope;
pub mod error;
pub mod host;
pub mod ids;
mod item;
pub mod status;
pub mod vm;

pub use codec::{DEFAULT_MAX_FRAME_LEN, FrameCodec};
pub use command::*;
pub use envelope::{Body, Decoded, Envelope, Flags, RejectedItem};
pub use error::{FrameError, ItemError, ParseNameError, TransitionError};
pub use host::{HostType, HypervisorType, ResourceState};
pub use ids::{ClusterId, HostId, ListenerId, PodId, Sequence, VmId, WorkId, ZoneId};
pub use status::{Event, Status, TRANSITIONS, Transition};
pub use vm::{VmPowerState, VmState, VmStateReport, WorkReason, WorkStep, WorkType};
