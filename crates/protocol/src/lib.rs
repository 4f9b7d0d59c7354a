//! The agentbus wire protocol, version 1.
//!
//! JSON text frames, each an object with a `type`. This crate owns the frame types
//! ([`ClientFrame`], [`ServerFrame`]), the validated names ([`TopicName`], [`AgentId`]),
//! the stable error codes ([`ErrorCode`]) and the limits that bound them. It does no
//! I/O and has no runtime dependency: the server and the client share it.

mod client;
mod encode;
mod error;
mod names;
mod server;

pub use client::{ClientFrame, HistoryFrame, ParseLimits, Ref, RegisterFrame, SearchFrame, SendFrame, SubscribeFrame};
pub use encode::{
    MessageDraft, ack_frame, error_frame, frame_is_on, frame_is_on_inbox_of, frame_offset, history_frame, replay_frame,
};
pub use error::{ErrorCode, FrameError};
pub use names::{AgentId, MAX_NAME_LEN, NameError, TopicName};
pub use server::{AgentPresence, Message, SearchHit, ServerFrame, TopicInfo};

/// The protocol version this crate speaks, reported in `registered.server`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Messages replayed to a new subscriber when `subscribe` gives no `history`.
pub const DEFAULT_HISTORY: u64 = 10;
