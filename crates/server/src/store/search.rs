//! The full-text index of the SQLite store, in a file of its own.
//!
//! `<data>/agentbus-search.db` holds an FTS5 table of each message's searchable text,
//! keyed by the message's `seq`. It is derived data: filled behind the commits from the
//! messages table, it is rebuilt from scratch whenever it is missing, unreadable, or
//! belongs to another store. Being a separate database, it has its own write lock:
//! indexing never holds up a commit of the messages, and it can run on a low-priority
//! thread (see [`super::indexer`]) that yields the processor to publishing.
//!
//! Searches join the index with the messages (readers attach this file), so a trimmed
//! message disappears from results at once; [`SearchIndex::step`] later purges its
//! index entry.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, params};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::sqlite::BUSY_TIMEOUT;

/// The index file inside the data folder.
pub const SEARCH_DB_FILE: &str = "agentbus-search.db";

/// The schema version of the index file (`PRAGMA user_version`).
const INDEX_VERSION: i64 = 1;

/// Index entries checked against the messages per purge step.
const PURGE_STEP: usize = 10_000;

/// Stored `seq`s read per read while purging (see [`READ_CHUNK`]).
const PURGE_READ_CHUNK: usize = 2048;

/// Under steady traffic the index is never idle: it still purges a step this often.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// The index schema: `state` ties the file to one store and records how far it got.
const SCHEMA: &str = "CREATE TABLE state (
        only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
        store_id TEXT NOT NULL,
        indexed_upto INTEGER NOT NULL
    );
    CREATE VIRTUAL TABLE search USING fts5(body);";

/// Entries indexed between two offers of the processor to other threads.
const YIELD_EVERY: usize = 32;

/// Rows read from the messages per read. The indexer runs at the lowest priority and may
/// wait long for the processor while it reads; a read keeps the write-ahead log from
/// being copied past its start, so every read is short, and the searchable text is taken
/// out of the frames after it ([`searchable_text`], what the `message_text` view says).
const READ_CHUNK: usize = 256;

/// The frames of the messages after a `seq`, in order.
const TO_INDEX: &str = "SELECT seq, frame FROM messages WHERE seq > ?1 ORDER BY seq LIMIT ?2";

const INSERT: &str = "INSERT INTO search (rowid, body) VALUES (?1, ?2)";

const SET_INDEXED_UPTO: &str = "UPDATE state SET indexed_upto = ?1";

const INDEXED_AFTER: &str = "SELECT rowid FROM search WHERE rowid > ?1 ORDER BY rowid LIMIT ?2";

const STORED_BETWEEN: &str = "SELECT seq FROM messages WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3";

const DELETE: &str = "DELETE FROM search WHERE rowid = ?1";

/// The index file and a read connection to the messages it indexes.
pub struct SearchIndex {
    /// Reads the messages (read-only, short transactions).
    messages: Connection,
    /// Writes the index.
    index: Connection,
    /// The highest `seq` indexed.
    indexed_upto: i64,
    /// Where the next purge step starts (0: no round under way).
    purge_after: i64,
    /// When the last purge step ran.
    purged_at: Instant,
    /// The store's count of trims when the round under way started.
    round_trims: u64,
    /// The count of trims the last whole round covered (none yet since opening).
    purged_trims: Option<u64>,
}

/// Why an existing index file is not used.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Stale(String),
}

impl SearchIndex {
    /// Opens the index of the store `store_id` (whose database is `messages_db`, with
    /// messages up to `last_seq`) in `data_dir`. An index file that cannot be used is
    /// replaced by an empty one, filled again by [`SearchIndex::step`].
    pub fn open(data_dir: &Path, messages_db: &Path, store_id: &str, last_seq: i64) -> rusqlite::Result<SearchIndex> {
        let path = index_path(data_dir);
        let index = match open_index(&path, store_id, last_seq) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(file = %path.display(), reason = %e, "rebuilding the search index");
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    if let Err(e) = std::fs::remove_file(&file)
                        && e.kind() != std::io::ErrorKind::NotFound
                    {
                        return Err(rusqlite::Error::ToSqlConversionFailure(Box::new(e)));
                    }
                }
                open_index(&path, store_id, last_seq).map_err(|e| match e {
                    Unusable::Sqlite(e) => e,
                    Unusable::Stale(reason) => rusqlite::Error::ToSqlConversionFailure(reason.into()),
                })?
            }
        };
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let messages = Connection::open_with_flags(messages_db, flags)?;
        messages.busy_timeout(BUSY_TIMEOUT)?;
        let indexed_upto = index.query_row("SELECT indexed_upto FROM state", [], |r| r.get(0))?;
        Ok(SearchIndex {
            messages,
            index,
            indexed_upto,
            purge_after: 0,
            purged_at: Instant::now(),
            round_trims: 0,
            purged_trims: None,
        })
    }

    /// Indexes up to `budget` messages not yet indexed, in one transaction, and returns
    /// how many it read. With nothing to index, or once caught up and `PURGE_EVERY`
    /// after the last purge, it also purges the entries of trimmed messages among the
    /// next `PURGE_STEP` entries: while a round of the index is under way, or when the
    /// store has trimmed since the last round (`trims` counts the store's trims). An idle
    /// index whose messages were not trimmed does nothing.
    pub fn step(&mut self, budget: usize, trims: u64) -> rusqlite::Result<u64> {
        if budget == 0 {
            return Ok(0);
        }
        let mut rows: Vec<(i64, String)> = Vec::new();
        let mut after = self.indexed_upto;
        loop {
            let limit = (budget - rows.len()).min(READ_CHUNK);
            let before = rows.len();
            {
                let mut stmt = self.messages.prepare_cached(TO_INDEX)?;
                let mut found = stmt.query(params![after, limit as i64])?;
                while let Some(row) = found.next()? {
                    rows.push((row.get(0)?, row.get(1)?));
                }
            }
            match rows.last() {
                Some(&(seq, _)) if rows.len() - before == limit && rows.len() < budget => after = seq,
                _ => break,
            }
            std::thread::yield_now();
        }
        let Some(&(upto, _)) = rows.last() else {
            if self.purge_due(trims) {
                self.purge(trims)?;
            }
            return Ok(0);
        };
        let tx = self.index.transaction()?;
        {
            let mut insert = tx.prepare_cached(INSERT)?;
            for (i, (seq, frame)) in rows.iter().enumerate() {
                if let Some(body) = searchable_text(frame) {
                    insert.execute(params![seq, body])?;
                }
                if i % YIELD_EVERY == YIELD_EVERY - 1 {
                    std::thread::yield_now();
                }
            }
        }
        tx.prepare_cached(SET_INDEXED_UPTO)?.execute([upto])?;
        tx.commit()?;
        self.indexed_upto = upto;
        if rows.len() < budget && self.purged_at.elapsed() >= PURGE_EVERY && self.purge_due(trims) {
            self.purge(trims)?;
        }
        Ok(rows.len() as u64)
    }

    /// Whether a purge step is due: a round is under way, or the store trimmed since the
    /// last whole round (or none ran since opening).
    fn purge_due(&self, trims: u64) -> bool {
        self.purge_after != 0 || self.purged_trims != Some(trims)
    }

    /// Removes the entries of trimmed messages among the next [`PURGE_STEP`] entries,
    /// going round the index step by step.
    fn purge(&mut self, trims: u64) -> rusqlite::Result<()> {
        self.purged_at = Instant::now();
        if self.purge_after == 0 {
            self.round_trims = trims;
        }
        let limit = i64::try_from(PURGE_STEP).unwrap_or(i64::MAX);
        let indexed: Vec<i64> = {
            let mut stmt = self.index.prepare_cached(INDEXED_AFTER)?;
            stmt.query_map(params![self.purge_after, limit], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        let (Some(&first), Some(&last)) = (indexed.first(), indexed.last()) else {
            self.end_round();
            return Ok(());
        };
        let mut stored = std::collections::HashSet::with_capacity(indexed.len());
        let mut from = first;
        loop {
            let mut stmt = self.messages.prepare_cached(STORED_BETWEEN)?;
            let mut found = stmt.query(params![from, last, PURGE_READ_CHUNK as i64])?;
            let mut n = 0;
            while let Some(row) = found.next()? {
                let seq: i64 = row.get(0)?;
                stored.insert(seq);
                from = seq + 1;
                n += 1;
            }
            if n < PURGE_READ_CHUNK {
                break;
            }
        }
        let gone: Vec<i64> = indexed.iter().copied().filter(|seq| !stored.contains(seq)).collect();
        if !gone.is_empty() {
            let tx = self.index.transaction()?;
            {
                let mut delete = tx.prepare_cached(DELETE)?;
                for seq in gone {
                    delete.execute([seq])?;
                }
            }
            tx.commit()?;
        }
        if indexed.len() < PURGE_STEP {
            self.end_round();
        } else {
            self.purge_after = last;
        }
        Ok(())
    }

    /// The round reached the end of the index: it covered every trim counted when it began.
    fn end_round(&mut self) {
        self.purge_after = 0;
        self.purged_trims = Some(self.round_trims);
    }
}

/// The index file in `data_dir`.
pub fn index_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SEARCH_DB_FILE)
}

/// Attaches the index file at `path` to a read connection as `idx`.
pub fn attach(conn: &Connection, path: &Path) -> rusqlite::Result<()> {
    let path = path.to_str().ok_or_else(|| {
        rusqlite::Error::ToSqlConversionFailure(format!("the path {} is not UTF-8", path.display()).into())
    })?;
    conn.execute("ATTACH DATABASE ?1 AS idx", [path])?;
    Ok(())
}

/// Opens (creating if needed) the index file and checks that it belongs to `store_id`
/// and is not ahead of the messages (`last_seq`, as after restoring an older copy).
fn open_index(path: &Path, store_id: &str, last_seq: i64) -> Result<Connection, Unusable> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let _mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let objects: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    match version {
        0 if objects == 0 => {
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA} INSERT INTO state VALUES (1, '{}', 0); PRAGMA user_version = {INDEX_VERSION}; COMMIT;",
                store_id.replace('\'', "''")
            ))?;
            Ok(conn)
        }
        INDEX_VERSION => {
            let (owner, upto): (String, i64) =
                conn.query_row("SELECT store_id, indexed_upto FROM state", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
            if owner != store_id {
                return Err(Unusable::Stale(format!("it indexes another store ({owner})")));
            }
            if upto > last_seq {
                return Err(Unusable::Stale(format!("it is ahead of the messages ({upto} > {last_seq})")));
            }
            Ok(conn)
        }
        v => Err(Unusable::Stale(format!("unknown index version {v}"))),
    }
}

/// The searchable text of a frame, as the schema's `message_text` view gives it: a JSON
/// string content as its text, any other content as its JSON text; nothing for a frame
/// that is not JSON or has no content.
pub fn searchable_text(frame: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Frame<'a> {
        #[serde(default, borrow, deserialize_with = "present")]
        content: Option<&'a RawValue>,
    }
    fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
        <&RawValue>::deserialize(d).map(Some)
    }
    let raw = serde_json::from_str::<Frame<'_>>(frame).ok()?.content?.get();
    if raw.starts_with('"') { serde_json::from_str(raw).ok() } else { Some(raw.to_owned()) }
}
