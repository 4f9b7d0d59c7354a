//! History with offsets: the [`Store`] interface and its implementations.
//!
//! One writer thread ([`writer`]) appends batches, one transaction each (group commit);
//! reads (replay, history, search) run on blocking threads alongside it. The broker only
//! acknowledges and fans out a message after [`Store::append`] returned for its batch.

pub mod checkpoint;
pub mod indexer;
pub mod journal;
pub mod memory;
pub mod redis;
pub mod search;
pub mod sqlite;
pub mod writer;

use agentbus_protocol::TopicName;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A message to store: its routing columns and the complete encoded frame.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The topic.
    pub topic: &'a TopicName,
    /// The topic's epoch (recorded when the topic is first stored).
    pub epoch: &'a str,
    /// Its offset: exactly one more than the topic's previous one.
    pub offset: u64,
    /// The message id.
    pub id: &'a str,
    /// Whether the client chose the id (such ids are remembered for idempotency).
    pub client_id: bool,
    /// Receive time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The sender.
    pub from_agent: &'a str,
    /// The complete `message` frame as sent live.
    pub frame: &'a str,
}

/// The offset a store that numbers messages itself gave a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    /// Its offset.
    pub offset: u64,
    /// Set when the record's client-chosen id was already stored (at `offset` of this
    /// topic): nothing was stored.
    pub duplicate: Option<TopicName>,
}

/// An agent's inbox position: every inbox message up to `offset` was handed to one of
/// its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The agent.
    pub agent: String,
    /// The last delivered inbox offset.
    pub offset: u64,
}

/// A stored message as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Its offset.
    pub offset: u64,
    /// The complete `message` frame.
    pub frame: Utf8Bytes,
}

/// What the store knows of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    /// The topic.
    pub topic: TopicName,
    /// Its epoch.
    pub epoch: String,
    /// The oldest stored offset (0 when nothing is stored).
    pub first_offset: u64,
    /// The newest stored offset (0 when nothing was ever stored).
    pub last_offset: u64,
}

/// A recently stored client-chosen id (for idempotency across restarts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownId {
    /// The id.
    pub id: String,
    /// Where it was stored.
    pub topic: TopicName,
    /// At which offset.
    pub offset: u64,
}

/// A full-text query.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// The words (never interpreted as query syntax).
    pub words: String,
    /// Only this topic.
    pub topic: Option<TopicName>,
    /// Only this sender.
    pub from_agent: Option<String>,
    /// Most hits.
    pub limit: usize,
}

/// One search hit as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredHit {
    /// The complete `message` frame.
    pub frame: String,
    /// An excerpt around the match.
    pub snippet: String,
    /// Relevance, higher is better.
    pub score: f64,
}

/// How much history a topic keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most messages (0 = no limit).
    pub max_messages: u64,
    /// Oldest message, in milliseconds (0 = no limit).
    pub max_age_ms: u64,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database or disk is full: nothing of the batch was stored.
    #[error("the store is full: {0}")]
    Full(String),
    /// The data folder or database cannot be opened or is not a valid database.
    #[error("cannot open the store at {path}: {reason}")]
    Open {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The store refused a batch because an earlier one failed and the broker has not
    /// re-synchronised its offsets yet.
    #[error("an earlier write failed; the batch was not stored")]
    Halted,
    /// A batch broke the offset sequence of a topic (a bug).
    #[error("offset {got} of topic {topic} does not follow {last}")]
    OutOfOrder {
        /// The topic.
        topic: String,
        /// The last stored offset.
        last: u64,
        /// The offset refused.
        got: u64,
    },
    /// The store is a server that cannot be reached right now: nothing of the batch was
    /// stored, and a later batch may succeed.
    #[error("the store cannot be reached: {0}")]
    Unreachable(String),
    /// Any other database failure.
    #[error("database error: {0}")]
    Database(String),
}

/// History storage. Writes come from one thread; reads from any.
pub trait Store: Send + Sync + 'static {
    /// Stores `records` and `cursors` atomically: all or nothing.
    fn append(&self, records: &[Record<'_>], cursors: &[Cursor]) -> Result<(), StoreError>;

    /// Whether the store numbers messages itself (it is shared by several servers): the
    /// broker's offsets are then provisional and [`Store::append_numbered`] gives the
    /// real ones.
    fn numbers_messages(&self) -> bool {
        false
    }

    /// The epoch of every topic, when the store is shared by several servers (each
    /// would otherwise give topics it creates its own).
    fn shared_epoch(&self) -> Option<String> {
        None
    }

    /// [`Store::append`], returning what each record became, in order.
    fn append_numbered(&self, records: &[Record<'_>], cursors: &[Cursor]) -> Result<Vec<Assigned>, StoreError> {
        self.append(records, cursors)?;
        Ok(records.iter().map(|r| Assigned { offset: r.offset, duplicate: None }).collect())
    }

    /// Messages of `topic` with offsets in `(after, upto]`, oldest first, at most `limit`.
    fn read_range(&self, topic: &TopicName, after: u64, upto: u64, limit: usize) -> Result<Vec<Stored>, StoreError>;

    /// The newest `limit` messages of `topic` with offsets below `before`, oldest first.
    fn read_before(&self, topic: &TopicName, before: u64, limit: usize) -> Result<Vec<Stored>, StoreError>;

    /// Every topic the store holds.
    fn topics(&self) -> Result<Vec<TopicState>, StoreError>;

    /// The oldest stored offset of a topic (0 when it holds nothing).
    fn first_offset(&self, topic: &TopicName) -> Result<u64, StoreError>;

    /// The newest offset ever stored in a topic (0 when none), even if trimmed since.
    fn last_offset(&self, topic: &TopicName) -> Result<u64, StoreError>;

    /// The most recent client-chosen ids, newest first, at most `limit`.
    fn recent_ids(&self, limit: usize) -> Result<Vec<KnownId>, StoreError>;

    /// Every agent's inbox position.
    fn cursors(&self) -> Result<Vec<Cursor>, StoreError>;

    /// Full-text search, best first.
    fn search(&self, query: &SearchQuery) -> Result<Vec<StoredHit>, StoreError>;

    /// Removes messages beyond each topic's retention, at most `budget` rows per call;
    /// returns how many were removed. Called from the writer thread between batches.
    fn trim(&self, retention: &dyn Fn(&TopicName) -> Retention, now_ms: i64, budget: usize) -> Result<u64, StoreError>;

    /// Whether appended batches wait to be moved into place (see [`Store::flush`]).
    fn has_unflushed(&self) -> bool {
        false
    }

    /// Moves what [`Store::append`] journaled into place (the SQLite store's tables, where
    /// search and trimming see it). Called by the writer thread when it is idle.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether a move of journaled batches into place is due or under way: the writer
    /// then calls [`Store::flush_step`] between batches until it is not.
    fn flush_due(&self) -> bool {
        false
    }

    /// Moves the next part of what is journaled into place: a step short enough that the
    /// batches behind it do not wait long (see [`Store::flush_due`]).
    fn flush_step(&self) -> Result<(), StoreError> {
        self.flush()
    }

    /// Background upkeep between batches (for example indexing for search), at most
    /// `budget` rows; returns how many rows it handled.
    fn maintain(&self, _budget: usize) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Whether the store can serve (for `/readyz`).
    fn ready(&self) -> bool {
        true
    }
}

/// A new epoch: unique per history (the moment it began, in milliseconds, base 36; one
/// process never gives the same one twice, even within a millisecond).
pub fn new_epoch() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let previous = LAST.fetch_max(now, Ordering::Relaxed);
    let ms = if previous >= now { LAST.fetch_add(1, Ordering::Relaxed) + 1 } else { now };
    let mut n = ms;
    let mut out = Vec::new();
    while n > 0 {
        out.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}
