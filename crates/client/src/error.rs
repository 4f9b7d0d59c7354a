//! The client's one error type: an [`ErrorKind`] to match on, a message for people and
//! the underlying cause when there is one.

use agentbus_protocol::ErrorCode;

/// What kind of failure an [`Error`] is. Match on this; the message may change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No answer within the configured time (`request_timeout`, `connect_timeout` or
    /// the timeout given to [`Client::request`](crate::Client::request)). A send that
    /// timed out stays queued and is still delivered, once, when a transport returns.
    Timeout,
    /// No transport is up right now and the operation cannot wait for one (queries
    /// while reconnecting), or the link dropped while the reply was on its way.
    Disconnected,
    /// The client was closed with [`Client::close`](crate::Client::close).
    Closed,
    /// The queue of sends waiting for a transport is full; nothing was queued.
    QueueFull,
    /// The server refused the operation with an `error` frame (or HTTP error body).
    Server {
        /// The stable code.
        code: ErrorCode,
        /// The server's message, for people.
        message: String,
    },
    /// A network or file-system failure.
    Io,
    /// The server URL cannot be used.
    InvalidUrl,
    /// A topic name or agent id that the protocol does not allow.
    InvalidName,
    /// The local board (SQLite) failed.
    Board,
    /// The current transport cannot do this (presence on the board).
    Unsupported,
    /// The peer sent something this client does not understand.
    Protocol,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("timed out"),
            Self::Disconnected => f.write_str("disconnected"),
            Self::Closed => f.write_str("client closed"),
            Self::QueueFull => f.write_str("send queue full"),
            Self::Server { code, message } => write!(f, "server error {code}: {message}"),
            Self::Io => f.write_str("i/o error"),
            Self::InvalidUrl => f.write_str("invalid url"),
            Self::InvalidName => f.write_str("invalid name"),
            Self::Board => f.write_str("board error"),
            Self::Unsupported => f.write_str("unsupported on this transport"),
            Self::Protocol => f.write_str("protocol error"),
        }
    }
}

/// An error of the agentbus client.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind` with a message for people.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), source: None }
    }

    /// A new error of `kind` caused by `source`.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self { kind, message: message.into(), source: Some(Box::new(source)) }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The message, for people.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn closed() -> Self {
        Self::new(ErrorKind::Closed, "the client is closed")
    }

    pub(crate) fn disconnected(what: &str) -> Self {
        Self::new(ErrorKind::Disconnected, format!("{what}: no transport is connected"))
    }

    pub(crate) fn board(what: &str, e: rusqlite::Error) -> Self {
        Self::with_source(ErrorKind::Board, format!("board {what} failed: {e}"), e)
    }

    pub(crate) fn server(code: ErrorCode, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(ErrorKind::Server { code, message: message.clone() }, message)
    }
}

/// The result of client operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
