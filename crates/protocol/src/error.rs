//! Stable error codes and the error a bad frame produces.

use serde::{Deserialize, Serialize};

use crate::client::Ref;

/// The stable `code` of an `error` frame. Clients match on it; the human `message`
/// may change between versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON, or is JSON but not an object (binary frames too).
    InvalidJson,
    /// The `type` is not one the server knows.
    UnknownType,
    /// A required field (including `type`) is absent.
    MissingField,
    /// A field has the wrong JSON type or an invalid value (for example an agent id).
    InvalidField,
    /// A topic name is not 1–128 characters of `A-Z a-z 0-9 . _ - : /` (or `@<agent>`).
    InvalidTopic,
    /// The frame needs a registered agent and the connection has none.
    NotRegistered,
    /// Missing or wrong credentials.
    Unauthorized,
    /// The credentials do not allow this topic or identity.
    Forbidden,
    /// The thing asked for does not exist (HTTP only).
    NotFound,
    /// A frame or value is over its size limit.
    TooLarge,
    /// The connection sends faster than its rate limit allows.
    RateLimited,
    /// The connection does not read fast enough; it is closed and should resume by offset.
    SlowConsumer,
    /// The server cannot store right now (disk full, shutting down); nothing was acked.
    Unavailable,
    /// An unexpected server-side failure; details are in the server log.
    Internal,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 14] = [
        Self::InvalidJson,
        Self::UnknownType,
        Self::MissingField,
        Self::InvalidField,
        Self::InvalidTopic,
        Self::NotRegistered,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::TooLarge,
        Self::RateLimited,
        Self::SlowConsumer,
        Self::Unavailable,
        Self::Internal,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::UnknownType => "unknown_type",
            Self::MissingField => "missing_field",
            Self::InvalidField => "invalid_field",
            Self::InvalidTopic => "invalid_topic",
            Self::NotRegistered => "not_registered",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::SlowConsumer => "slow_consumer",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status the same condition maps to.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidJson
            | Self::UnknownType
            | Self::MissingField
            | Self::InvalidField
            | Self::InvalidTopic
            | Self::NotRegistered => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::TooLarge => 413,
            Self::RateLimited | Self::SlowConsumer => 429,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A frame the server refuses: the code, a human message, and the client's `ref` when
/// it could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FrameError {
    /// The stable code.
    pub code: ErrorCode,
    /// What was wrong, for people.
    pub message: String,
    /// The `ref` of the refused frame, echoed back.
    pub reference: Option<Ref>,
}

impl FrameError {
    /// A new error without a `ref`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), reference: None }
    }

    /// Attaches the frame's `ref`.
    pub fn with_ref(mut self, reference: Option<Ref>) -> Self {
        self.reference = reference;
        self
    }
}
