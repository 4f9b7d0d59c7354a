//! The SQLite store: the embedded default.
//!
//! One file, `<data>/agentbus.db`, in WAL mode. The writer thread stores each group of
//! batches in one transaction, except small groups: a commit rewrites whole pages (of the
//! table and of each topic's index), so a small group is acknowledged once it is in the
//! journal ([`super::journal`]), one write of about its own size. The writer moves
//! journaled batches into the tables in large transactions behind the acks: a move
//! starts when [`INGEST_RECORDS`] messages or [`INGEST_BYTES`] wait, or at the tick, and
//! goes [`MOVE_STEP`] messages at a time between batches, which are journaled behind it,
//! in one transaction that commits once it has them all (`Moving`). The next large
//! group, an idle writer, trimming and closing finish it at once. Until then reads take
//! the journaled messages from memory, so every acknowledged message is readable at once.
//! A thread of its own checkpoints the log ([`super::checkpoint`]). The search index lives in a
//! second file ([`super::search`]), filled behind the commits. Reads take a connection
//! from a small pool, so replay, history and search run alongside commits.
//!
//! Schema, version [`SCHEMA_VERSION`] (kept in `PRAGMA user_version`):
//!
//! - `topics(id, name, epoch, last_offset)`: the newest offset ever assigned is the
//!   greater of `last_offset` and the topic's newest stored message. Trimming writes
//!   `last_offset` before it deletes, so the offset survives trimming every message;
//!   appends leave the row alone (one page fewer to write per commit).
//! - `messages(seq, topic_id, offset, id, client_id, ts, from_agent, frame)`: `seq` is the
//!   rowid, a global sequence in append order; `(topic_id, offset)` is unique. `frame` is
//!   the complete encoded frame, returned verbatim. A partial index on `seq` of the rows
//!   with a client-chosen id (`client_id = 1`) finds the recent ids without scanning every
//!   message; appends of messages without such an id do not touch it.
//! - `cursors(agent, offset)`: inbox positions.
//! - `meta(store_id, seq_floor)`: a random id naming this store (its search index file
//!   carries it) and a `seq` no new message may go below, raised when trimming, so a
//!   `seq` is never given to two messages.
//! - `message_text(seq, body)`: a view of each message's searchable text (a JSON string
//!   content as its text, any other value as its JSON text): what the indexer indexes,
//!   for anyone reading the file (the indexer computes the same from each frame itself,
//!   outside its reads, and a test holds the two equal).
//!
//! Version 1 kept the search index in this file; opening one moves it out (the index is
//! rebuilt in the background). Version 2 rewrote `topics.last_offset` on every append;
//! it opens as version 3 as it is.

use foldhash::{HashMap, HashMapExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use agentbus_protocol::TopicName;
use rusqlite::types::Type;
use rusqlite::{Connection, ErrorCode, OpenFlags, Row, Transaction, params};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::config::{StoreConfig, SyncMode};

use super::checkpoint::Checkpointer;
use super::journal::{Journal, JournalError, JournaledBatch};
use super::search::{self, SearchIndex};
use super::{Cursor, KnownId, Record, Retention, SearchQuery, Store, StoreError, Stored, StoredHit, TopicState};

/// The database file inside the data folder.
pub const DB_FILE: &str = "agentbus.db";

/// The schema version this code writes and reads (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 3;

/// Idle read connections kept for reuse; more are opened when needed.
const IDLE_READERS: usize = 8;

/// How long a connection (of this store, its index or its checkpoints) waits for a lock
/// held by another one.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Page size of a new database.
const PAGE_SIZE: i64 = 16 * 1024;

/// Largest write-ahead log kept after a checkpoint, in bytes.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Page cache of the write connection, in KiB (trimming touches pages all over the table).
const WRITER_CACHE_KIB: i64 = 16 * 1024;

/// Batches of at least this many messages go straight into the tables: their commit
/// writes pages they mostly fill themselves. Smaller ones are journaled.
pub const DIRECT_RECORDS: usize = 256;

/// Journaled messages that make the writer move the journal into the tables.
pub const INGEST_RECORDS: usize = 4096;

/// Journaled frame bytes that make the writer move the journal into the tables (with a
/// size cap, at most a sixteenth of it).
pub const INGEST_BYTES: usize = 4 << 20;

/// Journaled messages inserted per step of a move into the tables: the writer journals
/// (and acknowledges) new batches between two steps, so a move never holds it longer.
pub const MOVE_STEP: usize = 256;

/// Journaled messages past which an append moves the whole journal at once: steps have
/// not kept up (they run between batches, at least one per batch).
pub const MAX_JOURNALED_RECORDS: usize = 4 * INGEST_RECORDS;

/// Most query words used in a search (the rest are ignored).
const MAX_SEARCH_WORDS: usize = 32;

/// The searchable text of a message: its content, a JSON string as its text and any other
/// JSON value as its JSON text (NULL for a frame that is not JSON).
macro_rules! body_sql {
    () => {
        "CASE WHEN json_valid(frame) THEN \
            CASE json_type(frame, '$.content') WHEN 'text' THEN frame ->> '$.content' \
            ELSE frame -> '$.content' END \
         END"
    };
}

/// The schema of a new database. (Version 3 has the tables of version 2; only what
/// `topics.last_offset` means changed: appends stopped keeping it, so a version-2 build
/// must not open a version-3 database, whose topics it would take to be behind.)
const SCHEMA: &str = concat!(
    "CREATE TABLE topics (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        epoch TEXT NOT NULL,
        last_offset INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY,
        topic_id INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        id TEXT NOT NULL,
        client_id INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        from_agent TEXT NOT NULL,
        frame TEXT NOT NULL
    );
    CREATE UNIQUE INDEX messages_topic_offset ON messages (topic_id, offset);
    CREATE INDEX messages_client_ids ON messages (seq) WHERE client_id = 1;
    CREATE TABLE cursors (agent TEXT PRIMARY KEY, offset INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE meta (
        only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
        store_id TEXT NOT NULL,
        seq_floor INTEGER NOT NULL
    );
    INSERT INTO meta VALUES (1, lower(hex(randomblob(16))), 0);
    CREATE VIEW message_text (seq, body) AS SELECT seq, ",
    body_sql!(),
    " FROM messages;"
);

/// From version 1: the search index moves to its own file.
const V1_TO_V2: &str = "CREATE TABLE meta (
        only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
        store_id TEXT NOT NULL,
        seq_floor INTEGER NOT NULL
    );
    INSERT INTO meta SELECT 1, lower(hex(randomblob(16))), indexed_upto FROM search_state;
    DROP TABLE search;
    DROP TABLE search_state;";

const INSERT_MESSAGE: &str = "INSERT INTO messages (seq, topic_id, offset, id, client_id, ts, from_agent, frame) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

const INSERT_TOPIC: &str = "INSERT INTO topics (name, epoch) VALUES (?1, ?2)";

const UPDATE_TOPIC_LAST: &str = "UPDATE topics SET last_offset = ?2 WHERE id = ?1";

/// The newest offset of the topic row `topics` (see the schema).
macro_rules! newest_sql {
    () => {
        "max(topics.last_offset, coalesce((SELECT max(offset) FROM messages WHERE topic_id = topics.id), 0))"
    };
}

const UPSERT_CURSOR: &str = "INSERT INTO cursors (agent, offset) VALUES (?1, ?2) \
     ON CONFLICT (agent) DO UPDATE SET offset = max(offset, excluded.offset)";

const READ_RANGE: &str = "SELECT offset, frame FROM messages \
     WHERE topic_id = (SELECT id FROM topics WHERE name = ?1) AND offset > ?2 AND offset <= ?3 \
     ORDER BY offset LIMIT ?4";

const READ_BEFORE: &str = "SELECT offset, frame FROM messages \
     WHERE topic_id = (SELECT id FROM topics WHERE name = ?1) AND offset < ?2 \
     ORDER BY offset DESC LIMIT ?3";

const TOPICS: &str = concat!(
    "SELECT name, epoch, ",
    newest_sql!(),
    ", (SELECT min(offset) FROM messages WHERE topic_id = topics.id) FROM topics ORDER BY id"
);

const FIRST_OFFSET: &str = "SELECT min(offset) FROM messages WHERE topic_id = (SELECT id FROM topics WHERE name = ?1)";

const LAST_OFFSET: &str = concat!("SELECT ", newest_sql!(), " FROM topics WHERE name = ?1");

const RECENT_IDS: &str = "SELECT m.id, t.name, m.offset FROM messages AS m CROSS JOIN topics AS t \
     ON t.id = m.topic_id WHERE m.client_id = 1 ORDER BY m.seq DESC LIMIT ?1";

const CURSORS: &str = "SELECT agent, offset FROM cursors ORDER BY agent";

const SEARCH: &str = "SELECT m.frame, snippet(search, 0, '[', ']', '…', 24), search.rank \
     FROM idx.search AS search CROSS JOIN messages AS m ON m.seq = search.rowid CROSS JOIN topics AS t ON t.id = m.topic_id \
     WHERE search MATCH ?1 AND (?2 IS NULL OR t.name = ?2) AND (?3 IS NULL OR m.from_agent = ?3) \
     ORDER BY search.rank, m.seq DESC LIMIT ?4";

const OLDEST: &str = "SELECT offset, ts FROM messages WHERE topic_id = ?1 ORDER BY offset LIMIT ?2";

const DELETE_THROUGH: &str = "DELETE FROM messages WHERE topic_id = ?1 AND offset <= ?2";

const RAISE_SEQ_FLOOR: &str = "UPDATE meta SET seq_floor = max(seq_floor, ?1)";

/// History in a SQLite database.
pub struct SqliteStore {
    /// The database file.
    path: PathBuf,
    /// The write connection and what it remembers, used by the writer thread only.
    writer: Mutex<Writer>,
    /// Acknowledged batches not yet in the tables, oldest first.
    journaled: Mutex<Journaled>,
    /// The search index file.
    search_path: PathBuf,
    /// The search index, filled by [`Store::maintain`].
    search: Mutex<SearchIndex>,
    /// Idle read connections.
    readers: Mutex<Vec<Connection>>,
    /// Trims that removed messages, counted so that the search index purges only after one.
    trims: AtomicU64,
    /// Checkpoints the write-ahead log off the writer's thread (dropped last: it waits
    /// for the thread, whose wake-ups the writer's connection holds).
    checkpointer: Checkpointer,
}

/// A topic as the writer knows it.
#[derive(Debug, Clone, Copy)]
struct TopicRow {
    /// Its row id.
    id: i64,
    /// Its newest offset.
    last: u64,
}

/// The write connection and the state it keeps in memory, always equal to the database's.
struct Writer {
    /// The only connection that writes.
    conn: Connection,
    /// Every topic in the tables, by name.
    topics: HashMap<TopicName, TopicRow>,
    /// The `seq` of the next message.
    next_seq: i64,
    /// This store's id (see `meta`).
    store_id: String,
    /// The journal file.
    journal: Option<Journal>,
    /// The newest journaled offset of each topic with journaled messages.
    latest: HashMap<TopicName, u64>,
    /// Why the last move into the tables failed, while it keeps failing: appends are
    /// refused (what is journaled stays journaled and readable).
    refusing: Option<Refusal>,
    /// [`INGEST_BYTES`], or less under a size cap.
    ingest_bytes: usize,
    /// The move of the journal into the tables under way, if one is.
    moving: Option<Moving>,
    /// A move is wanted although the journal is below its thresholds (the tick asked).
    move_wanted: bool,
}

/// A move of the journal into the tables under way. Its transaction is open on the
/// writer's connection, and the journaled batches go into it a step at a time while new
/// batches are journaled behind them; it commits once it has them all. Until then reads
/// take them from memory, as before the move began.
struct Moving {
    /// Journaled batches inserted so far, oldest first.
    batches: usize,
    /// `next_seq` before the move.
    seq_before: i64,
    /// Each topic the move changed, as it was before (`None`: created by the move).
    topics_before: HashMap<TopicName, Option<TopicRow>>,
    /// The newest inbox position of each agent among the batches inserted so far.
    cursors: HashMap<String, u64>,
}

/// Why appends are refused.
#[derive(Debug, Clone)]
enum Refusal {
    Full(String),
    Database(String),
}

impl Refusal {
    fn of(e: &StoreError) -> Refusal {
        match e {
            StoreError::Full(m) => Refusal::Full(m.clone()),
            other => Refusal::Database(other.to_string()),
        }
    }

    fn error(&self) -> StoreError {
        match self {
            Refusal::Full(m) => StoreError::Full(m.clone()),
            Refusal::Database(m) => StoreError::Database(m.clone()),
        }
    }
}

/// Journaled batches not yet in the tables, shared by the writer and the readers.
#[derive(Debug, Default)]
struct Journaled {
    /// The batches, oldest first.
    batches: Vec<Arc<JournaledBatch>>,
    /// Their messages.
    records: usize,
    /// Their frames' bytes.
    bytes: usize,
}

impl Journaled {
    /// The journaled messages of `topic` whose offsets `keep` accepts, oldest first.
    fn of(&self, topic: &TopicName, keep: impl Fn(u64) -> bool) -> Vec<Stored> {
        self.batches
            .iter()
            .flat_map(|b| &b.records)
            .filter(|r| &r.topic == topic && keep(r.offset))
            .map(|r| Stored { offset: r.offset, frame: r.frame.clone() })
            .collect()
    }

    /// The oldest and newest journaled offsets of `topic`.
    fn bounds(&self, topic: &TopicName) -> Option<(u64, u64)> {
        let mut offsets = self.batches.iter().flat_map(|b| &b.records).filter(|r| &r.topic == topic).map(|r| r.offset);
        let first = offsets.next()?;
        Some((first, offsets.last().unwrap_or(first)))
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir`, checking that it is readable.
    pub fn open(data_dir: &Path, config: &StoreConfig) -> Result<SqliteStore, StoreError> {
        let path = data_dir.join(DB_FILE);
        std::fs::create_dir_all(data_dir)
            .map_err(|e| open_error(&path, &format!("cannot create the folder {}: {e}", data_dir.display())))?;
        let fail = |e: rusqlite::Error| open_error(&path, &e.to_string());
        let mut writer = Writer::open(&path, config).map_err(fail)?;
        let found = writer.open_journal(data_dir, config)?;
        let checkpointer = Checkpointer::start(&path).map_err(fail)?;
        writer.conn.wal_hook(Some(checkpointer.hook())).map_err(fail)?;
        let search_path = search::index_path(data_dir);
        let index = SearchIndex::open(data_dir, &path, &writer.store_id, writer.next_seq - 1)
            .map_err(|e| open_error(&search_path, &e.to_string()))?;
        let reader = open_reader(&path, &search_path).map_err(fail)?;
        let store = SqliteStore {
            path,
            writer: Mutex::new(writer),
            journaled: Mutex::new(Journaled::default()),
            search_path,
            search: Mutex::new(index),
            readers: Mutex::new(vec![reader]),
            trims: AtomicU64::new(0),
            checkpointer,
        };
        if !found.is_empty() {
            let mut writer = store.writer();
            store.recover(&mut writer, found);
            // A full database starts refusing writes (trimming may make room); any other
            // failure stops the start.
            if let Some(Refusal::Database(e)) = &writer.refusing {
                return Err(open_error(&writer.journal_path(data_dir), &format!("cannot apply the journal: {e}")));
            }
        }
        Ok(store)
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn journaled(&self) -> MutexGuard<'_, Journaled> {
        self.journaled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the batches a journal held when the store opened and moves them into the
    /// tables: each topic's messages that continue its stored offsets. The tables may
    /// already hold some (a crash after a move, before the journal was emptied). With
    /// `sync = "normal"` a power loss may also have lost the last commits of the tables
    /// but not the journal written after them: the messages after such a gap cannot keep
    /// their offsets and are dropped, with a warning, as the lost commits were.
    fn recover(&self, writer: &mut Writer, found: Vec<JournaledBatch>) {
        let mut next: HashMap<TopicName, u64> = HashMap::new();
        let (mut kept, mut dropped) = (0usize, 0usize);
        for mut batch in found {
            batch.records.retain(|r| {
                let expected = next
                    .entry(r.topic.clone())
                    .or_insert_with(|| writer.topics.get(&r.topic).map_or(0, |t| t.last).saturating_add(1));
                if r.offset < *expected {
                    return false;
                }
                if r.offset > *expected {
                    dropped += 1;
                    return false;
                }
                *expected += 1;
                true
            });
            kept += batch.records.len();
            self.track(writer, Arc::new(batch));
        }
        if dropped > 0 {
            tracing::warn!(dropped, "journaled messages after a gap in their topic's stored offsets were dropped");
        }
        tracing::info!(messages = kept, "moving the journal into the tables");
        self.ingest(writer);
    }

    /// Adds a journaled batch to what reads see and to the offsets appends continue.
    fn track(&self, writer: &mut Writer, batch: Arc<JournaledBatch>) {
        for r in &batch.records {
            writer.latest.insert(r.topic.clone(), r.offset);
        }
        let mut journaled = self.journaled();
        journaled.records += batch.records.len();
        journaled.bytes += batch.frame_bytes();
        journaled.batches.push(batch);
    }

    /// Moves every journaled batch into the tables (finishing the move under way, if
    /// any), then empties the journal. On failure the batches stay journaled (and
    /// readable) and appends are refused until a later attempt succeeds.
    fn ingest(&self, writer: &mut Writer) {
        let _ = self.move_journal(writer, usize::MAX, &[], &[]);
    }

    /// [`SqliteStore::ingest`], with a batch that was not journaled after the journaled
    /// ones in the same transaction. Fails if that transaction fails.
    fn ingest_with(&self, writer: &mut Writer, records: &[Record<'_>], cursors: &[Cursor]) -> Result<(), StoreError> {
        self.move_journal(writer, usize::MAX, records, cursors)
    }

    /// Moves about `budget` journaled messages more into the tables ([`Writer::move_step`]);
    /// with `usize::MAX`, all of them and then `records` and `cursors`. Once the move has
    /// committed, the journal is emptied. On failure the move is undone, and if batches
    /// were journaled, appends are refused until a later attempt succeeds.
    fn move_journal(
        &self,
        writer: &mut Writer,
        budget: usize,
        records: &[Record<'_>],
        cursors: &[Cursor],
    ) -> Result<(), StoreError> {
        // The next batches, about `budget` messages (at least one batch). Only this thread
        // journals, so the journal does not change while the step runs.
        let from = writer.moving.as_ref().map_or(0, |m| m.batches);
        let (step, total) = {
            let journaled = self.journaled();
            let all = &journaled.batches;
            let (mut to, mut taken) = (from, 0usize);
            while to < all.len() && (to == from || taken < budget) {
                taken += all[to].records.len();
                to += 1;
            }
            (all[from..to].to_vec(), all.len())
        };
        if total == 0 && records.is_empty() && cursors.is_empty() {
            writer.refusing = None;
            writer.move_wanted = false;
            return Ok(());
        }
        let last = from + step.len() == total;
        let (records, cursors) = if last { (records, cursors) } else { (&[][..], &[][..]) };
        match writer.move_step(&step, last, records, cursors) {
            Ok(false) => Ok(()),
            Ok(true) => {
                writer.refusing = None;
                writer.move_wanted = false;
                if total > 0 {
                    {
                        let mut journaled = self.journaled();
                        journaled.batches.drain(..total);
                        journaled.records = journaled.batches.iter().map(|b| b.records.len()).sum();
                        journaled.bytes = journaled.batches.iter().map(|b| b.frame_bytes()).sum();
                    }
                    // Only this thread journals: everything journaled is now in the tables.
                    writer.latest.clear();
                    if let Some(journal) = writer.journal.as_mut()
                        && let Err(e) = journal.clear()
                    {
                        tracing::warn!(error = %e, "cannot empty the journal (what it holds is skipped when it is read)");
                    }
                }
                self.checkpointer.restart_if_due(&writer.conn);
                Ok(())
            }
            Err(e) => {
                writer.undo_move();
                if total > 0 {
                    if writer.refusing.is_none() {
                        let messages = self.journaled().records + records.len();
                        tracing::error!(error = %e, messages, "cannot move the journal into the tables; refusing writes");
                    }
                    writer.refusing = Some(Refusal::of(&e));
                }
                Err(e)
            }
        }
    }

    fn search_index(&self) -> MutexGuard<'_, SearchIndex> {
        self.search.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn idle_readers(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a read connection from the pool (a new one if none is idle).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let idle = self.idle_readers().pop();
        let conn = match idle {
            Some(c) => c,
            None => open_reader(&self.path, &self.search_path).map_err(db_error)?,
        };
        let result = f(&conn).map_err(db_error);
        let mut idle = self.idle_readers();
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }
}

impl Writer {
    /// Opens the write connection, creates or checks the schema and loads the state.
    fn open(path: &Path, config: &StoreConfig) -> rusqlite::Result<Writer> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Only a new database takes it (an existing one keeps its page size).
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_refusal(&format!("the file system does not support WAL (journal mode {mode})")));
        }
        let sync = match config.sync {
            SyncMode::Normal => "NORMAL",
            SyncMode::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        // Statement journals (kept by a statement that changes several rows and may fail
        // half-way) and temporary tables in memory: a copy, not a write and a read.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        migrate(&conn)?;
        limit_size(&conn, config.max_size_bytes)?;
        let topics = load_topics(&conn)?;
        let (store_id, next_seq) = load_meta(&conn)?;
        let ingest_bytes = match config.max_size_bytes {
            0 => INGEST_BYTES,
            cap => usize::try_from(cap / 16).unwrap_or(INGEST_BYTES).clamp(4096, INGEST_BYTES),
        };
        Ok(Writer {
            conn,
            topics,
            next_seq,
            store_id,
            journal: None,
            latest: HashMap::new(),
            refusing: None,
            ingest_bytes,
            moving: None,
            move_wanted: false,
        })
    }

    /// Opens the journal of this store and returns the batches it holds. A journal of
    /// another store is moved aside (with a warning) and a new one started.
    fn open_journal(&mut self, data_dir: &Path, config: &StoreConfig) -> Result<Vec<JournaledBatch>, StoreError> {
        let sync = config.sync == SyncMode::Full;
        let fail = |e: JournalError| open_error(&self.journal_path(data_dir), &e.to_string());
        let (journal, found) = match Journal::open(data_dir, &self.store_id, sync) {
            Err(e @ JournalError::Foreign { .. }) => {
                let suffix = format!("foreign-{}", super::new_epoch());
                let aside = Journal::set_aside(data_dir, &suffix)
                    .map_err(|io| open_error(&self.journal_path(data_dir), &io.to_string()))?;
                tracing::warn!(reason = %e, moved_to = %aside.display(), "a journal of another store was set aside");
                Journal::open(data_dir, &self.store_id, sync).map_err(fail)?
            }
            other => other.map_err(fail)?,
        };
        self.journal = Some(journal);
        Ok(found)
    }

    fn journal_path(&self, data_dir: &Path) -> PathBuf {
        data_dir.join(super::journal::JOURNAL_FILE)
    }

    /// Journals a batch (its offsets must continue the journaled ones).
    fn journal_batch(&mut self, records: &[Record<'_>], cursors: &[Cursor]) -> Result<(), StoreError> {
        check_offsets(&self.topics, &self.latest, records)?;
        match self.journal.as_mut() {
            Some(journal) => journal.append(records, cursors).map_err(io_error),
            None => Err(StoreError::Database("the journal is not open".into())),
        }
    }

    /// Inserts `step`, the next journaled batches, into the move's transaction, beginning
    /// it if none is open. When `last`, it then inserts `records`, stores the inbox
    /// positions of the whole move and `cursors`, and commits. Returns whether it
    /// committed; on an error the caller undoes the move ([`Writer::undo_move`]).
    fn move_step(
        &mut self,
        step: &[Arc<JournaledBatch>],
        last: bool,
        records: &[Record<'_>],
        cursors: &[Cursor],
    ) -> Result<bool, StoreError> {
        if self.moving.is_none() {
            self.conn.execute_batch("BEGIN").map_err(db_error)?;
            self.moving = Some(Moving {
                batches: 0,
                seq_before: self.next_seq,
                topics_before: HashMap::new(),
                cursors: HashMap::new(),
            });
        }
        let mut rows: Vec<Record<'_>> = step.iter().flat_map(|b| b.records.iter().map(|r| r.record())).collect();
        if last {
            rows.extend_from_slice(records);
        }
        check_offsets(&self.topics, &HashMap::new(), &rows)?;
        let (touched, next_seq) = insert_records(&self.conn, &self.topics, self.next_seq, &rows)?;
        let Some(moving) = self.moving.as_mut() else {
            return Err(StoreError::Database("the move of the journal was lost".into()));
        };
        for (name, row) in touched {
            let before = self.topics.insert(name.clone(), row);
            moving.topics_before.entry(name.clone()).or_insert(before);
        }
        self.next_seq = next_seq;
        moving.batches += step.len();
        // One row per agent: the batches move each inbox position forward many times.
        for c in step.iter().flat_map(|b| &b.cursors).chain(if last { cursors } else { &[] }) {
            let offset = moving.cursors.entry(c.agent.clone()).or_default();
            *offset = (*offset).max(c.offset);
        }
        if !last {
            return Ok(false);
        }
        let newest: Vec<Cursor> =
            std::mem::take(&mut moving.cursors).into_iter().map(|(agent, offset)| Cursor { agent, offset }).collect();
        upsert_cursors(&self.conn, &newest).map_err(db_error)?;
        self.conn.execute_batch("COMMIT").map_err(db_error)?;
        self.moving = None;
        Ok(true)
    }

    /// Undoes the move under way, if any: its transaction, and what it changed in memory.
    fn undo_move(&mut self) {
        let Some(moving) = self.moving.take() else {
            return;
        };
        // A conflict in an `OR ROLLBACK` insert has already ended the transaction.
        if !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::warn!(error = %e, "cannot roll back a failed move of the journal");
        }
        self.next_seq = moving.seq_before;
        for (name, before) in moving.topics_before {
            match before {
                Some(row) => {
                    self.topics.insert(name, row);
                }
                None => {
                    self.topics.remove(&name);
                }
            }
        }
    }

    /// Removes messages beyond retention, at most `budget`, in one transaction.
    fn trim(
        &mut self,
        retention: &dyn Fn(&TopicName) -> Retention,
        now_ms: i64,
        budget: usize,
    ) -> rusqlite::Result<u64> {
        let tx = self.conn.transaction()?;
        let mut removed = 0u64;
        for (name, topic) in &self.topics {
            let left = (budget as u64).saturating_sub(removed);
            if left == 0 {
                break;
            }
            let r = retention(name);
            if r.max_messages == 0 && r.max_age_ms == 0 {
                continue;
            }
            if let Some((cut, count)) = trim_point(&tx, *topic, r, now_ms, left)? {
                tx.prepare_cached(UPDATE_TOPIC_LAST)?.execute(params![topic.id, sql_bound(topic.last)])?;
                delete_through(&tx, topic.id, cut)?;
                removed += count;
            }
        }
        if removed > 0 {
            tx.prepare_cached(RAISE_SEQ_FLOOR)?.execute([self.next_seq - 1])?;
        }
        tx.commit()?;
        Ok(removed)
    }
}

/// Refuses a batch whose offsets do not continue each topic's sequence (its journaled
/// offsets in `latest`, else those in the tables).
fn check_offsets(
    topics: &HashMap<TopicName, TopicRow>,
    latest: &HashMap<TopicName, u64>,
    records: &[Record<'_>],
) -> Result<(), StoreError> {
    let mut next: HashMap<&TopicName, u64> = HashMap::new();
    for r in records {
        let last = match next.get(r.topic).or_else(|| latest.get(r.topic)) {
            Some(&o) => o,
            None => topics.get(r.topic).map_or(0, |t| t.last),
        };
        if last.checked_add(1) != Some(r.offset) {
            return Err(StoreError::OutOfOrder { topic: r.topic.to_string(), last, got: r.offset });
        }
        next.insert(r.topic, r.offset);
    }
    Ok(())
}

/// Inserts the messages (creating new topics); returns the touched topics, with their
/// newest offsets, and the next `seq`.
fn insert_records<'r>(
    tx: &Connection,
    known: &HashMap<TopicName, TopicRow>,
    mut seq: i64,
    records: &[Record<'r>],
) -> Result<(HashMap<&'r TopicName, TopicRow>, i64), StoreError> {
    let mut touched: HashMap<&'r TopicName, TopicRow> = HashMap::new();
    let mut topic_ids = Vec::with_capacity(records.len());
    for r in records {
        let id = match touched.get(r.topic).or_else(|| known.get(r.topic)) {
            Some(t) => t.id,
            None => create_topic(tx, r.topic, r.epoch).map_err(db_error)?,
        };
        touched.insert(r.topic, TopicRow { id, last: r.offset });
        topic_ids.push(id);
    }
    // Rows go in one at a time with their `seq`, except runs of one topic's messages after
    // the first row, which go INSERT_ROWS to a statement that lets SQLite number them: the
    // largest `seq` plus one, and the row before them is the newest. A statement of
    // several rows that may fail half-way keeps a journal of every page it changes, so
    // that it can be undone alone (16 KiB copies of the table's and the index's last
    // pages, or of one index page per topic for rows of many topics). Numbered by SQLite
    // and `OR ROLLBACK` (a conflict undoes the whole transaction, as a failed append does
    // anyway), it cannot fail half-way and keeps none.
    let mut insert_run = tx.prepare_cached(insert_run_sql()).map_err(db_error)?;
    let mut insert_one = tx.prepare_cached(INSERT_MESSAGE).map_err(db_error)?;
    let mut i = 0;
    while i < records.len() {
        let run = i > 0 && topic_ids.get(i..i + INSERT_ROWS).is_some_and(|ids| ids.iter().all(|&id| id == ids[0]));
        if run {
            for (k, (r, id)) in records[i..i + INSERT_ROWS].iter().zip(&topic_ids[i..]).enumerate() {
                bind_record(&mut insert_run, k * RUN_COLUMNS, None, *id, r)?;
            }
            insert_run.raw_execute().map_err(db_error)?;
            seq += INSERT_ROWS as i64;
            if tx.last_insert_rowid() != seq - 1 {
                return Err(StoreError::Database(format!(
                    "messages numbered up to {} instead of {}",
                    tx.last_insert_rowid(),
                    seq - 1
                )));
            }
            i += INSERT_ROWS;
        } else {
            bind_record(&mut insert_one, 0, Some(seq), topic_ids[i], &records[i])?;
            insert_one.raw_execute().map_err(db_error)?;
            seq += 1;
            i += 1;
        }
    }
    Ok((touched, seq))
}

/// Rows per multi-row insert of one topic's messages: one statement step instead of one
/// per row.
const INSERT_ROWS: usize = 32;

/// Values per row of a run's insert (every column of [`INSERT_MESSAGE`] but `seq`).
const RUN_COLUMNS: usize = 7;

/// The insert of a run of [`INSERT_ROWS`] messages, numbered by SQLite.
fn insert_run_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        let row = "(?,?,?,?,?,?,?)";
        let mut sql = String::from(
            "INSERT OR ROLLBACK INTO messages (topic_id, offset, id, client_id, ts, from_agent, frame) VALUES ",
        );
        sql.push_str(&vec![row; INSERT_ROWS].join(","));
        sql
    })
}

/// Binds one message to the parameters from `at + 1` of `stmt`: its `seq` first if
/// given, then the columns of [`RUN_COLUMNS`].
fn bind_record(
    stmt: &mut rusqlite::Statement<'_>,
    mut at: usize,
    seq: Option<i64>,
    topic_id: i64,
    r: &Record<'_>,
) -> Result<(), StoreError> {
    let offset = sql_offset(r.offset)?;
    let mut bind = |stmt: &mut rusqlite::Statement<'_>| -> rusqlite::Result<()> {
        if let Some(seq) = seq {
            at += 1;
            stmt.raw_bind_parameter(at, seq)?;
        }
        stmt.raw_bind_parameter(at + 1, topic_id)?;
        stmt.raw_bind_parameter(at + 2, offset)?;
        stmt.raw_bind_parameter(at + 3, r.id)?;
        stmt.raw_bind_parameter(at + 4, r.client_id)?;
        stmt.raw_bind_parameter(at + 5, r.timestamp_ms)?;
        stmt.raw_bind_parameter(at + 6, r.from_agent)?;
        stmt.raw_bind_parameter(at + 7, r.frame)
    };
    bind(stmt).map_err(db_error)
}

/// Creates a topic row; returns its id.
fn create_topic(tx: &Connection, topic: &TopicName, epoch: &str) -> rusqlite::Result<i64> {
    tx.prepare_cached(INSERT_TOPIC)?.execute(params![topic.as_str(), epoch])?;
    Ok(tx.last_insert_rowid())
}

/// Stores inbox positions, never moving one back.
fn upsert_cursors(tx: &Connection, cursors: &[Cursor]) -> rusqlite::Result<()> {
    let mut upsert = tx.prepare_cached(UPSERT_CURSOR)?;
    for c in cursors {
        upsert.execute(params![c.agent, i64::try_from(c.offset).unwrap_or(i64::MAX)])?;
    }
    Ok(())
}

/// The newest offset of `topic` to trim and how many messages that removes (at most
/// `limit`), walking from the oldest message as long as it is beyond retention.
fn trim_point(
    tx: &Transaction<'_>,
    topic: TopicRow,
    r: Retention,
    now_ms: i64,
    limit: u64,
) -> rusqlite::Result<Option<(u64, u64)>> {
    // Offsets are contiguous, so the newest `max_messages` are those above this one.
    let beyond_count = if r.max_messages > 0 { topic.last.saturating_sub(r.max_messages) } else { 0 };
    let max_age = i64::try_from(r.max_age_ms).unwrap_or(i64::MAX);
    let mut oldest = tx.prepare_cached(OLDEST)?;
    let mut rows = oldest.query(params![topic.id, i64::try_from(limit).unwrap_or(i64::MAX)])?;
    let mut point = None;
    let mut count = 0u64;
    while let Some(row) = rows.next()? {
        let offset = get_u64(row, 0)?;
        let ts: i64 = row.get(1)?;
        let too_many = offset <= beyond_count;
        let too_old = max_age > 0 && now_ms.saturating_sub(ts) > max_age;
        if !(too_many || too_old) {
            break;
        }
        count += 1;
        point = Some((offset, count));
    }
    Ok(point)
}

/// Deletes the messages of a topic up to offset `cut`.
fn delete_through(tx: &Transaction<'_>, topic_id: i64, cut: u64) -> rusqlite::Result<()> {
    let cut = i64::try_from(cut).unwrap_or(i64::MAX);
    tx.prepare_cached(DELETE_THROUGH)?.execute(params![topic_id, cut])?;
    Ok(())
}

/// Creates the schema in a new database; refuses one written by a newer version.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    // Reading the schema is a real query: a corrupt or foreign file fails here.
    let objects: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    match version {
        SCHEMA_VERSION => Ok(()),
        0 if objects == 0 => {
            conn.execute_batch(&format!("BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"))
        }
        1 => conn.execute_batch(&format!("BEGIN; {V1_TO_V2} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")),
        // Version 2 kept `last_offset` exact, which version 3's meaning includes.
        2 => conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};")),
        0 => Err(open_refusal("the database holds tables but no agentbus schema")),
        v => Err(open_refusal(&format!("schema version {v} is not supported (this build reads {SCHEMA_VERSION})"))),
    }
}

/// Caps the database at `max_bytes` (0 = no cap) so that writes past it fail with
/// SQLITE_FULL. A database already larger keeps its size as the cap.
fn limit_size(conn: &Connection, max_bytes: u64) -> rusqlite::Result<()> {
    if max_bytes == 0 {
        return Ok(());
    }
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages = i64::try_from(max_bytes).unwrap_or(i64::MAX) / page_size.max(512);
    let _set: i64 = conn.pragma_update_and_check(None, "max_page_count", pages.max(1), |r| r.get(0))?;
    Ok(())
}

/// Every topic with its id and last offset.
fn load_topics(conn: &Connection) -> rusqlite::Result<HashMap<TopicName, TopicRow>> {
    let mut stmt = conn.prepare(concat!("SELECT id, name, ", newest_sql!(), " FROM topics"))?;
    let rows = stmt.query_map([], |r| Ok((topic_name(r, 1)?, TopicRow { id: r.get(0)?, last: get_u64(r, 2)? })))?;
    rows.collect()
}

/// The store's id and the next `seq` (above every `seq` ever given).
fn load_meta(conn: &Connection) -> rusqlite::Result<(String, i64)> {
    let newest: i64 = conn.query_row("SELECT coalesce(max(seq), 0) FROM messages", [], |r| r.get(0))?;
    let (id, floor): (String, i64) =
        conn.query_row("SELECT store_id, seq_floor FROM meta", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok((id, newest.max(floor) + 1))
}

/// Opens a read-only connection, with the search index attached.
fn open_reader(path: &Path, search_path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    search::attach(&conn, search_path)?;
    Ok(conn)
}

/// The FTS5 query for `words`: every alphanumeric run quoted as a string, all required.
/// `None` when there is no word.
fn match_expression(words: &str) -> Option<String> {
    let tokens: Vec<String> = words
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .take(MAX_SEARCH_WORDS)
        .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
        .collect();
    if tokens.is_empty() { None } else { Some(tokens.join(" ")) }
}

/// Reads a topic name column.
fn topic_name(row: &Row<'_>, idx: usize) -> rusqlite::Result<TopicName> {
    let name: String = row.get(idx)?;
    TopicName::new(&name).map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

/// Reads a column holding a non-negative integer.
fn get_u64(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(idx)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}

/// Reads a column holding a non-negative integer or NULL.
fn get_opt_u64(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<u64>> {
    match row.get::<_, Option<i64>>(idx)? {
        Some(v) => u64::try_from(v).map(Some).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v)),
        None => Ok(None),
    }
}

/// Reads a stored message (offset, frame).
fn stored(row: &Row<'_>) -> rusqlite::Result<Stored> {
    Ok(Stored { offset: get_u64(row, 0)?, frame: Utf8Bytes::from(row.get::<_, String>(1)?) })
}

/// An offset to store: refused if SQLite cannot hold it.
fn sql_offset(offset: u64) -> Result<i64, StoreError> {
    i64::try_from(offset).map_err(|_| StoreError::Database(format!("offset {offset} is too large to store")))
}

/// An offset bound for a query (larger than any stored offset when it does not fit).
fn sql_bound(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

/// A row count for `LIMIT`.
fn sql_count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Maps a failed journal write: a full disk is [`StoreError::Full`].
fn io_error(e: std::io::Error) -> StoreError {
    match e.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            StoreError::Full(format!("cannot write the journal: {e}"))
        }
        _ => StoreError::Database(format!("cannot write the journal: {e}")),
    }
}

/// Maps a database error: a full database or disk is [`StoreError::Full`].
fn db_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Full(e.to_string()),
        _ => StoreError::Database(e.to_string()),
    }
}

/// An error for a database that cannot be used, raised while opening it.
fn open_refusal(reason: &str) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN), Some(reason.to_owned()))
}

/// [`StoreError::Open`] with a one-line reason.
fn open_error(path: &Path, reason: &str) -> StoreError {
    StoreError::Open {
        path: path.display().to_string(),
        reason: reason.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

impl Store for SqliteStore {
    fn append(&self, records: &[Record<'_>], cursors: &[Cursor]) -> Result<(), StoreError> {
        if records.is_empty() && cursors.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer();
        if writer.refusing.is_some() {
            self.ingest(&mut writer);
            if let Some(r) = &writer.refusing {
                return Err(r.error());
            }
        }
        if records.len() >= DIRECT_RECORDS {
            // A large batch fills its pages by itself: straight into the tables, after
            // whatever is journaled.
            return self.ingest_with(&mut writer, records, cursors);
        }
        writer.journal_batch(records, cursors)?;
        self.track(&mut writer, Arc::new(JournaledBatch::new(records, cursors)));
        // The writer moves the journal a step at a time between batches
        // (`flush_due`, `flush_step`); if those steps fall far behind, all of it now. The
        // batch is journaled: it is acknowledged even if this fails.
        let backlog = {
            let journaled = self.journaled();
            journaled.records >= MAX_JOURNALED_RECORDS || journaled.bytes >= writer.ingest_bytes.saturating_mul(4)
        };
        if backlog {
            self.ingest(&mut writer);
        }
        Ok(())
    }

    fn has_unflushed(&self) -> bool {
        !self.journaled().batches.is_empty()
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut writer = self.writer();
        self.ingest(&mut writer);
        writer.refusing.as_ref().map_or(Ok(()), |r| Err(r.error()))
    }

    fn flush_due(&self) -> bool {
        let writer = self.writer();
        if writer.refusing.is_some() {
            // Appends retry the move; steps would only fail again.
            return false;
        }
        if writer.moving.is_some() {
            return true;
        }
        let journaled = self.journaled();
        !journaled.batches.is_empty()
            && (writer.move_wanted || journaled.records >= INGEST_RECORDS || journaled.bytes >= writer.ingest_bytes)
    }

    fn flush_step(&self) -> Result<(), StoreError> {
        let mut writer = self.writer();
        self.move_journal(&mut writer, MOVE_STEP, &[], &[])
    }

    // Reads take the journaled messages before the tables: a batch moved into the tables
    // in between is then found twice (and kept once), never missed.

    fn read_range(&self, topic: &TopicName, after: u64, upto: u64, limit: usize) -> Result<Vec<Stored>, StoreError> {
        if limit == 0 || after >= upto {
            return Ok(Vec::new());
        }
        let journaled = self.journaled().of(topic, |o| o > after && o <= upto);
        let mut rows = self.read(|conn| {
            let mut stmt = conn.prepare_cached(READ_RANGE)?;
            let rows =
                stmt.query_map(params![topic.as_str(), sql_bound(after), sql_bound(upto), sql_count(limit)], stored)?;
            rows.collect::<rusqlite::Result<Vec<Stored>>>()
        })?;
        append_newer(&mut rows, journaled);
        rows.truncate(limit);
        Ok(rows)
    }

    fn read_before(&self, topic: &TopicName, before: u64, limit: usize) -> Result<Vec<Stored>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let journaled = self.journaled().of(topic, |o| o < before);
        let mut rows = self.read(|conn| {
            let mut stmt = conn.prepare_cached(READ_BEFORE)?;
            let rows = stmt.query_map(params![topic.as_str(), sql_bound(before), sql_count(limit)], stored)?;
            rows.collect::<rusqlite::Result<Vec<Stored>>>()
        })?;
        rows.reverse();
        append_newer(&mut rows, journaled);
        let extra = rows.len().saturating_sub(limit);
        rows.drain(..extra);
        Ok(rows)
    }

    fn topics(&self) -> Result<Vec<TopicState>, StoreError> {
        let journaled: Vec<(TopicName, String, u64)> = {
            let j = self.journaled();
            j.batches.iter().flat_map(|b| &b.records).map(|r| (r.topic.clone(), r.epoch.clone(), r.offset)).collect()
        };
        let mut states = self.read(|conn| {
            let mut stmt = conn.prepare_cached(TOPICS)?;
            let rows = stmt.query_map([], |r| {
                Ok(TopicState {
                    topic: topic_name(r, 0)?,
                    epoch: r.get(1)?,
                    last_offset: get_u64(r, 2)?,
                    first_offset: get_opt_u64(r, 3)?.unwrap_or(0),
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<TopicState>>>()
        })?;
        let mut index: HashMap<TopicName, usize> =
            states.iter().enumerate().map(|(i, s)| (s.topic.clone(), i)).collect();
        for (topic, epoch, offset) in journaled {
            let i = *index.entry(topic.clone()).or_insert_with(|| {
                states.push(TopicState { topic, epoch, first_offset: 0, last_offset: 0 });
                states.len() - 1
            });
            let state = &mut states[i];
            if state.first_offset == 0 {
                state.first_offset = offset;
            }
            state.last_offset = state.last_offset.max(offset);
        }
        Ok(states)
    }

    fn first_offset(&self, topic: &TopicName) -> Result<u64, StoreError> {
        let journaled = self.journaled().bounds(topic);
        let first =
            self.read(|conn| conn.prepare_cached(FIRST_OFFSET)?.query_row([topic.as_str()], |r| get_opt_u64(r, 0)))?;
        Ok(first.or(journaled.map(|(first, _)| first)).unwrap_or(0))
    }

    fn last_offset(&self, topic: &TopicName) -> Result<u64, StoreError> {
        let journaled = self.journaled().bounds(topic).map_or(0, |(_, last)| last);
        let last = self.read(|conn| {
            let mut stmt = conn.prepare_cached(LAST_OFFSET)?;
            let mut rows = stmt.query([topic.as_str()])?;
            match rows.next()? {
                Some(row) => get_u64(row, 0),
                None => Ok(0),
            }
        })?;
        Ok(last.max(journaled))
    }

    fn recent_ids(&self, limit: usize) -> Result<Vec<KnownId>, StoreError> {
        let mut ids: Vec<KnownId> = {
            let j = self.journaled();
            j.batches
                .iter()
                .rev()
                .flat_map(|b| b.records.iter().rev())
                .filter(|r| r.client_id)
                .take(limit)
                .map(|r| KnownId { id: r.id.clone(), topic: r.topic.clone(), offset: r.offset })
                .collect()
        };
        let stored = self.read(|conn| {
            let mut stmt = conn.prepare_cached(RECENT_IDS)?;
            let rows = stmt.query_map([sql_count(limit)], |r| {
                Ok(KnownId { id: r.get(0)?, topic: topic_name(r, 1)?, offset: get_u64(r, 2)? })
            })?;
            rows.collect::<rusqlite::Result<Vec<KnownId>>>()
        })?;
        for known in stored {
            if !ids.iter().any(|k| k.topic == known.topic && k.offset == known.offset) {
                ids.push(known);
            }
        }
        ids.truncate(limit);
        Ok(ids)
    }

    fn cursors(&self) -> Result<Vec<Cursor>, StoreError> {
        let journaled: Vec<Cursor> = self.journaled().batches.iter().flat_map(|b| b.cursors.iter().cloned()).collect();
        let mut cursors = self.read(|conn| {
            let mut stmt = conn.prepare_cached(CURSORS)?;
            let rows = stmt.query_map([], |r| Ok(Cursor { agent: r.get(0)?, offset: get_u64(r, 1)? }))?;
            rows.collect::<rusqlite::Result<Vec<Cursor>>>()
        })?;
        for c in journaled {
            match cursors.iter_mut().find(|k| k.agent == c.agent) {
                Some(k) => k.offset = k.offset.max(c.offset),
                None => cursors.push(c),
            }
        }
        Ok(cursors)
    }

    fn search(&self, query: &SearchQuery) -> Result<Vec<StoredHit>, StoreError> {
        let Some(expression) = match_expression(&query.words) else { return Ok(Vec::new()) };
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let topic = query.topic.as_ref().map(TopicName::as_str);
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(SEARCH)?;
            let rows =
                stmt.query_map(params![expression, topic, query.from_agent.as_deref(), sql_count(query.limit)], |r| {
                    Ok(StoredHit {
                        frame: r.get(0)?,
                        snippet: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                        // bm25 is negative, lower is better.
                        score: -r.get::<_, f64>(2)?,
                    })
                })?;
            rows.collect()
        })
    }

    fn trim(&self, retention: &dyn Fn(&TopicName) -> Retention, now_ms: i64, budget: usize) -> Result<u64, StoreError> {
        if budget == 0 {
            return Ok(0);
        }
        let mut writer = self.writer();
        if writer.moving.is_some() || writer.refusing.is_some() {
            // Trimming needs the connection the move holds (and may be what a refused
            // move needs next).
            self.ingest(&mut writer);
        } else if self.has_unflushed() {
            // What is journaled moves a step at a time behind this tick's trim. Until
            // then trimming counts only the messages in the tables.
            writer.move_wanted = true;
        }
        let removed = writer.trim(retention, now_ms, budget).map_err(db_error)?;
        if removed > 0 {
            // Counted once the rows are gone: a purge that sees the count sees the removal.
            self.trims.fetch_add(1, Ordering::Release);
        }
        if removed > 0 && writer.refusing.is_some() {
            // The room freed may be what the journal needed.
            self.ingest(&mut writer);
        }
        Ok(removed)
    }

    fn maintain(&self, budget: usize) -> Result<u64, StoreError> {
        if budget == 0 {
            return Ok(0);
        }
        let trims = self.trims.load(Ordering::Acquire);
        self.search_index().step(budget, trims).map_err(db_error)
    }

    fn ready(&self) -> bool {
        self.read(|conn| conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))).is_ok()
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        let mut writer = self.writer();
        self.ingest(&mut writer);
    }
}

/// Appends to `rows` (oldest first) the journaled messages newer than its newest: those
/// not also found in the tables.
fn append_newer(rows: &mut Vec<Stored>, journaled: Vec<Stored>) {
    let newest = rows.last().map_or(0, |r| r.offset);
    rows.extend(journaled.into_iter().filter(|r| r.offset > newest));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::search::searchable_text;
    use rusqlite::Connection;

    /// The indexer takes the text out of the frames itself; it must agree with the
    /// schema's `message_text` view.
    #[test]
    fn the_indexed_text_is_what_the_message_text_view_gives() {
        let conn = Connection::open_in_memory().unwrap();
        let sql = concat!("SELECT ", body_sql!(), " FROM (SELECT ?1 AS frame)");
        for frame in [
            r#"{"type":"message","content":"plain text"}"#,
            r#"{"type":"message","content":"say \"hi\" \u00e9\n\ud83d\ude00 \\ end"}"#,
            r#"{"type":"message","content":{"kind":"review","body":"ok","n":[1,2.5,-3e2]}}"#,
            r#"{"type":"message","content":["walrus",42,true,null]}"#,
            r#"{"type":"message","content":123456}"#,
            r#"{"type":"message","content":null}"#,
            r#"{"type":"message","content":false}"#,
            r#"{"type":"message","content":""}"#,
            r#"{"type":"message"}"#,
            r#"{"type":"message","content":"unterminated"#,
            "not json at all",
            "",
        ] {
            let view: Option<String> = conn.query_row(sql, [frame], |r| r.get(0)).unwrap();
            assert_eq!(searchable_text(frame), view, "frame {frame}");
        }
    }
}
