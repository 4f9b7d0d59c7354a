//! The local board: the last tier of the transport chain, a SQLite file opened by the
//! client itself with no server.
//!
//! Several processes share one board file safely: WAL mode, a busy timeout, and every
//! write in a `BEGIN IMMEDIATE` transaction (one writer at a time), inside which each
//! message gets the next offset of its topic. Readers poll cheaply: `PRAGMA
//! data_version` changes only when another connection committed.
//!
//! Schema (version 1):
//!
//! - `board_messages(seq, topic, topic_offset, id UNIQUE, timestamp, from_agent,
//!   to_agent, direct, content, in_reply_to, meta, forwarded, server_offset)`: `seq` is
//!   the global write order (the forwarding order), `topic_offset` the per-topic offset
//!   1, 2, 3, … (`UNIQUE(topic, topic_offset)`), `content`/`meta` JSON text.
//!   `forwarded` is 0 while the message waits for a server, 1 once a server acked it
//!   (`server_offset` then holds its offset there), 2 when a server refused it for good.
//! - `board_search`: an FTS5 index of the content (a JSON string as its text, any other
//!   value as its JSON text), rowid = `seq`.
//! - `board_lease(name, owner, until_ms)`: the forwarding lease, so that one client at a
//!   time forwards (a second forwarder would be harmless, only wasteful: the server
//!   acks a resent id as a duplicate).
//!
//! The engine calls these synchronous methods from `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentbus_protocol::{Message, SearchHit};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde_json::Value;

use crate::draft::Draft;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::now_rfc3339;

/// How long a writer waits for another process's transaction before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Most words of a search query that are used.
const MAX_QUERY_WORDS: usize = 32;

/// The board file used when none is configured: `$AGENTBUS_BOARD`, else
/// `<data dir>/agentbus/board.db` (`$XDG_DATA_HOME/agentbus/board.db` on Linux), else
/// `agentbus-board.db` in the current folder.
pub fn default_board_path() -> PathBuf {
    if let Some(p) = std::env::var_os("AGENTBUS_BOARD").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    match dirs::data_dir() {
        Some(d) => d.join("agentbus").join("board.db"),
        None => PathBuf::from("agentbus-board.db"),
    }
}

/// What a board write returns for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BoardAck {
    pub id: String,
    pub topic: String,
    pub offset: u64,
    pub duplicate: bool,
}

/// A message waiting to be forwarded: its place in the write order and the draft.
#[derive(Debug, Clone)]
pub(crate) struct Unforwarded {
    pub seq: i64,
    pub draft: Draft,
}

/// How forwarding one message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forwarded {
    /// The server acked it (maybe as a duplicate) at this offset.
    Acked(u64),
    /// The server refused it for good (an invalid message); it is never retried.
    Refused,
}

/// A handle to the board file; cheap to clone, one SQLite connection behind a mutex.
#[derive(Clone)]
pub(crate) struct Board {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board").field("path", &self.path).finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS board_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    topic_offset INTEGER NOT NULL,
    id TEXT NOT NULL UNIQUE,
    timestamp TEXT NOT NULL,
    from_agent TEXT NOT NULL,
    to_agent TEXT,
    direct INTEGER NOT NULL DEFAULT 0,
    content TEXT NOT NULL,
    in_reply_to TEXT,
    meta TEXT,
    forwarded INTEGER NOT NULL DEFAULT 0,
    server_offset INTEGER,
    UNIQUE (topic, topic_offset)
);
CREATE INDEX IF NOT EXISTS board_unforwarded ON board_messages (seq) WHERE forwarded = 0;
CREATE VIRTUAL TABLE IF NOT EXISTS board_search USING fts5(body);
CREATE TABLE IF NOT EXISTS board_lease (name TEXT PRIMARY KEY, owner TEXT NOT NULL, until_ms INTEGER NOT NULL);
PRAGMA user_version = 1;
";

const COLUMNS: &str = "topic, topic_offset, id, timestamp, from_agent, to_agent, content, in_reply_to, meta";

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn row_message(row: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    let content: String = row.get(6)?;
    let meta: Option<String> = row.get(8)?;
    Ok(Message {
        topic: row.get(0)?,
        offset: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
        id: row.get(2)?,
        timestamp: row.get(3)?,
        from_agent: row.get(4)?,
        to_agent: row.get(5)?,
        content: serde_json::from_str(&content).unwrap_or(Value::String(content)),
        in_reply_to: row.get(7)?,
        meta: meta.and_then(|m| serde_json::from_str(&m).ok()),
        replay: None,
    })
}

fn search_body(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The FTS5 query for `words`: every alphanumeric run quoted, all required. Never
/// interpreted as query syntax.
pub(crate) fn fts_query(words: &str) -> Option<String> {
    let terms: Vec<String> = words
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(MAX_QUERY_WORDS)
        .map(|w| format!("\"{w}\""))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" "))
}

impl Board {
    /// Opens (creating when needed) the board at `path`, its folder included.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::with_source(ErrorKind::Io, format!("cannot create board folder {}", dir.display()), e)
            })?;
        }
        let conn = Connection::open(path).map_err(|e| Error::board("open", e))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| Error::board("configure", e))?;
        // Switching to WAL needs a moment alone with the file: retry while another
        // process holds it (the mode is persistent, so this happens once per file).
        let mut tries = 0;
        loop {
            match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)) {
                Ok(_) => break,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(error = %e, "board busy while enabling WAL; retrying");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(Error::board("enable WAL", e)),
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(|e| Error::board("configure", e))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap_or(0);
        if version < 1 {
            let tx = conn.unchecked_transaction().map_err(|e| Error::board("create schema", e))?;
            tx.execute_batch(SCHEMA).map_err(|e| Error::board("create schema", e))?;
            tx.commit().map_err(|e| Error::board("create schema", e))?;
        }
        Ok(Self { conn: Arc::new(Mutex::new(conn)), path: path.to_owned() })
    }

    /// Opens the board only if its file exists (forwarding never creates one).
    pub(crate) fn open_existing(path: &Path) -> Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        Self::open(path).map(Some)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent: transactions
        // roll back on drop.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores messages in order, each with the next offset of its topic, all in one
    /// `BEGIN IMMEDIATE` transaction. An id already on the board is not stored again.
    pub(crate) fn append(&self, drafts: &[Draft]) -> Result<Vec<BoardAck>> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| Error::board("begin write", e))?;
        let mut acks = Vec::with_capacity(drafts.len());
        for d in drafts {
            let existing: Option<(String, i64)> = tx
                .query_row("SELECT topic, topic_offset FROM board_messages WHERE id = ?1", [&d.id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .map_err(|e| Error::board("write", e))?;
            if let Some((topic, offset)) = existing {
                acks.push(BoardAck { id: d.id.clone(), topic, offset: offset as u64, duplicate: true });
                continue;
            }
            let last: i64 = tx
                .query_row(
                    "SELECT COALESCE(MAX(topic_offset), 0) FROM board_messages WHERE topic = ?1",
                    [&d.topic],
                    |r| r.get(0),
                )
                .map_err(|e| Error::board("write", e))?;
            let offset = last + 1;
            tx.execute(
                "INSERT INTO board_messages (topic, topic_offset, id, timestamp, from_agent, to_agent, direct, \
                 content, in_reply_to, meta) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    d.topic,
                    offset,
                    d.id,
                    now_rfc3339(),
                    d.from_agent,
                    d.to_agent,
                    d.direct,
                    d.content.to_string(),
                    d.in_reply_to,
                    d.meta.as_ref().map(Value::to_string),
                ],
            )
            .map_err(|e| Error::board("write", e))?;
            let seq = tx.last_insert_rowid();
            tx.execute("INSERT INTO board_search (rowid, body) VALUES (?1, ?2)", params![seq, search_body(&d.content)])
                .map_err(|e| Error::board("index", e))?;
            acks.push(BoardAck { id: d.id.clone(), topic: d.topic.clone(), offset: offset as u64, duplicate: false });
        }
        tx.commit().map_err(|e| Error::board("commit", e))?;
        Ok(acks)
    }

    /// Messages of `topic` with an offset above `after`, oldest first, at most `limit`.
    pub(crate) fn read_after(&self, topic: &str, after: u64, limit: usize) -> Result<Vec<Message>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM board_messages WHERE topic = ?1 AND topic_offset > ?2 \
                 ORDER BY topic_offset LIMIT ?3"
            ))
            .map_err(|e| Error::board("read", e))?;
        let rows = stmt
            .query_map(params![topic, after as i64, limit as i64], row_message)
            .map_err(|e| Error::board("read", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| Error::board("read", e))
    }

    /// The newest `limit` messages of `topic`, oldest first.
    pub(crate) fn history(&self, topic: &str, limit: usize) -> Result<Vec<Message>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM board_messages WHERE topic = ?1 ORDER BY topic_offset DESC LIMIT ?2"
            ))
            .map_err(|e| Error::board("read", e))?;
        let rows = stmt.query_map(params![topic, limit as i64], row_message).map_err(|e| Error::board("read", e))?;
        let mut out = rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| Error::board("read", e))?;
        out.reverse();
        Ok(out)
    }

    /// Full-text search over the content, best first (BM25).
    pub(crate) fn search(&self, words: &str, topic: Option<&str>, limit: usize) -> Result<Vec<SearchHit>> {
        let Some(query) = fts_query(words) else { return Ok(Vec::new()) };
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT m.topic, m.topic_offset, m.id, m.timestamp, m.from_agent, m.to_agent, m.content, \
                 m.in_reply_to, m.meta, snippet(board_search, 0, '[', ']', '…', 12), bm25(board_search) \
                 FROM board_search JOIN board_messages m ON m.seq = board_search.rowid \
                 WHERE board_search MATCH ?1 AND (?2 IS NULL OR m.topic = ?2) \
                 ORDER BY bm25(board_search) LIMIT ?3",
            )
            .map_err(|e| Error::board("search", e))?;
        let rows = stmt
            .query_map(params![query, topic, limit as i64], |r| {
                Ok(SearchHit { message: row_message(r)?, snippet: r.get(9)?, score: -r.get::<_, f64>(10)? })
            })
            .map_err(|e| Error::board("search", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| Error::board("search", e))
    }

    /// The last offset of each topic (0 when it has none).
    pub(crate) fn heads(&self, topics: &[String]) -> Result<Vec<u64>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT COALESCE(MAX(topic_offset), 0) FROM board_messages WHERE topic = ?1")
            .map_err(|e| Error::board("read", e))?;
        topics
            .iter()
            .map(|t| stmt.query_row([t], |r| r.get::<_, i64>(0)).map(|o| o as u64).map_err(|e| Error::board("read", e)))
            .collect()
    }

    /// Changes whenever another connection (another client, another process) commits.
    pub(crate) fn data_version(&self) -> Result<i64> {
        self.lock().pragma_query_value(None, "data_version", |r| r.get(0)).map_err(|e| Error::board("poll", e))
    }

    /// Whether any message waits to be forwarded.
    pub(crate) fn has_unforwarded(&self) -> Result<bool> {
        self.lock()
            .query_row("SELECT EXISTS (SELECT 1 FROM board_messages WHERE forwarded = 0)", [], |r| r.get(0))
            .map_err(|e| Error::board("read", e))
    }

    /// How many messages wait to be forwarded.
    #[cfg(test)]
    pub(crate) fn unforwarded_count(&self) -> Result<u64> {
        self.lock()
            .query_row("SELECT COUNT(*) FROM board_messages WHERE forwarded = 0", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| Error::board("read", e))
    }

    /// Takes (or renews) the forwarding lease for `owner` and returns the oldest `limit`
    /// unforwarded messages after write position `after`, in write order; `None` while
    /// another live client holds the lease.
    pub(crate) fn begin_forward(
        &self,
        owner: &str,
        ttl: Duration,
        after: i64,
        limit: usize,
    ) -> Result<Option<Vec<Unforwarded>>> {
        let mut conn = self.lock();
        let tx =
            conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| Error::board("lease", e))?;
        let now = now_ms();
        let holder: Option<(String, i64)> = tx
            .query_row("SELECT owner, until_ms FROM board_lease WHERE name = 'forwarder'", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(|e| Error::board("lease", e))?;
        if let Some((holder, until)) = holder
            && holder != owner
            && until > now
        {
            return Ok(None);
        }
        let until = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        tx.execute(
            "INSERT INTO board_lease (name, owner, until_ms) VALUES ('forwarder', ?1, ?2) \
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until_ms = excluded.until_ms",
            params![owner, until],
        )
        .map_err(|e| Error::board("lease", e))?;
        let rows = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT seq, topic, to_agent, direct, content, id, in_reply_to, meta, from_agent \
                     FROM board_messages WHERE forwarded = 0 AND seq > ?1 ORDER BY seq LIMIT ?2",
                )
                .map_err(|e| Error::board("read", e))?;
            let rows = stmt
                .query_map([after, limit as i64], |r| {
                    let content: String = r.get(4)?;
                    let meta: Option<String> = r.get(7)?;
                    Ok(Unforwarded {
                        seq: r.get(0)?,
                        draft: Draft {
                            topic: r.get(1)?,
                            to_agent: r.get(2)?,
                            direct: r.get(3)?,
                            content: serde_json::from_str(&content).unwrap_or(Value::String(content)),
                            id: r.get(5)?,
                            in_reply_to: r.get(6)?,
                            meta: meta.and_then(|m| serde_json::from_str(&m).ok()),
                            from_agent: r.get(8)?,
                        },
                    })
                })
                .map_err(|e| Error::board("read", e))?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(|e| Error::board("read", e))?
        };
        tx.commit().map_err(|e| Error::board("lease", e))?;
        Ok(Some(rows))
    }

    /// Records how forwarding went, only after the server answered.
    pub(crate) fn mark_forwarded(&self, done: &[(i64, Forwarded)]) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| Error::board("mark forwarded", e))?;
        {
            let mut stmt = tx
                .prepare_cached("UPDATE board_messages SET forwarded = ?2, server_offset = ?3 WHERE seq = ?1")
                .map_err(|e| Error::board("mark forwarded", e))?;
            for (seq, outcome) in done {
                let (state, offset) = match outcome {
                    Forwarded::Acked(o) => (1, Some(*o as i64)),
                    Forwarded::Refused => (2, None),
                };
                stmt.execute(params![seq, state, offset]).map_err(|e| Error::board("mark forwarded", e))?;
            }
        }
        tx.commit().map_err(|e| Error::board("mark forwarded", e))
    }

    /// Gives the forwarding lease up, if `owner` holds it.
    pub(crate) fn release_lease(&self, owner: &str) -> Result<()> {
        self.lock()
            .execute("DELETE FROM board_lease WHERE name = 'forwarder' AND owner = ?1", [owner])
            .map(drop)
            .map_err(|e| Error::board("lease", e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn draft(topic: &str, id: &str, content: Value) -> Draft {
        Draft {
            topic: topic.into(),
            to_agent: None,
            direct: false,
            content,
            id: id.into(),
            in_reply_to: None,
            meta: None,
            from_agent: "tester".into(),
        }
    }

    #[test]
    fn offsets_grow_by_one_per_topic_and_ids_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let board = Board::open(&dir.path().join("sub/board.db")).unwrap();
        let acks = board
            .append(&[draft("a", "1", json!("x")), draft("b", "2", json!(2)), draft("a", "3", json!({"k": "v"}))])
            .unwrap();
        let offsets: Vec<(&str, u64, bool)> = acks.iter().map(|a| (a.topic.as_str(), a.offset, a.duplicate)).collect();
        assert_eq!(offsets, [("a", 1, false), ("b", 1, false), ("a", 2, false)]);
        let again = board.append(&[draft("a", "3", json!("changed"))]).unwrap();
        assert_eq!((again[0].offset, again[0].duplicate), (2, true));
        let read = board.read_after("a", 0, 10).unwrap();
        assert_eq!(read.iter().map(|m| m.content.clone()).collect::<Vec<_>>(), [json!("x"), json!({"k": "v"})]);
        assert_eq!(board.read_after("a", 1, 10).unwrap().len(), 1);
        assert_eq!(board.history("a", 1).unwrap()[0].offset, 2);
        assert_eq!(board.heads(&["a".into(), "b".into(), "c".into()]).unwrap(), [2, 1, 0]);
    }

    #[test]
    fn two_connections_writing_at_once_never_share_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("board.db");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let board = Board::open(&path).unwrap();
                    for i in 0..50 {
                        board.append(&[draft("shared", &format!("{t}-{i}"), json!(i))]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let board = Board::open(&path).unwrap();
        let all = board.read_after("shared", 0, 1000).unwrap();
        let offsets: Vec<u64> = all.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, (1..=200).collect::<Vec<u64>>());
    }

    #[test]
    fn data_version_moves_only_for_other_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("board.db");
        let (a, b) = (Board::open(&path).unwrap(), Board::open(&path).unwrap());
        let v0 = a.data_version().unwrap();
        a.append(&[draft("t", "own", json!(1))]).unwrap();
        assert_eq!(a.data_version().unwrap(), v0);
        b.append(&[draft("t", "other", json!(2))]).unwrap();
        assert_ne!(a.data_version().unwrap(), v0);
    }

    #[test]
    fn search_finds_words_in_strings_and_json_and_ignores_query_syntax() {
        let dir = tempfile::tempdir().unwrap();
        let board = Board::open(&dir.path().join("board.db")).unwrap();
        board
            .append(&[
                draft("t", "1", json!("please write the tests")),
                draft("u", "2", json!({"step": "write docs"})),
                draft("t", "3", json!("unrelated")),
            ])
            .unwrap();
        let hits = board.search("write", None, 10).unwrap();
        assert_eq!(hits.len(), 2);
        assert!(hits.iter().any(|h| h.snippet.contains("[write]")));
        assert_eq!(board.search("write", Some("u"), 10).unwrap()[0].message.id, "2");
        assert!(board.search("NEAR(\"x\" OR", None, 10).unwrap().is_empty());
        assert!(board.search("   ", None, 10).unwrap().is_empty());
    }

    #[test]
    fn forwarding_takes_a_lease_reads_in_write_order_and_marks_after_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let board = Board::open(&dir.path().join("board.db")).unwrap();
        board.append(&[draft("b", "1", json!(1)), draft("a", "2", json!(2)), draft("b", "3", json!(3))]).unwrap();
        let ttl = Duration::from_secs(10);
        let batch = board.begin_forward("me", ttl, 0, 2).unwrap().unwrap();
        assert_eq!(batch.iter().map(|u| u.draft.id.as_str()).collect::<Vec<_>>(), ["1", "2"]);
        assert!(board.begin_forward("other", ttl, 0, 10).unwrap().is_none(), "the lease is held");
        board.mark_forwarded(&[(batch[0].seq, Forwarded::Acked(7)), (batch[1].seq, Forwarded::Refused)]).unwrap();
        assert_eq!(board.unforwarded_count().unwrap(), 1);
        assert!(board.begin_forward("me", ttl, batch[1].seq + 1, 10).unwrap().unwrap().is_empty());
        let rest = board.begin_forward("me", ttl, 0, 10).unwrap().unwrap();
        assert_eq!(rest.len(), 1);
        board.release_lease("me").unwrap();
        assert_eq!(board.begin_forward("other", ttl, 0, 10).unwrap().unwrap()[0].draft.id, "3");
        board.mark_forwarded(&[(rest[0].seq, Forwarded::Acked(8))]).unwrap();
        assert!(!board.has_unforwarded().unwrap());
    }

    #[test]
    fn a_missing_board_is_not_created_by_open_existing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.db");
        assert!(Board::open_existing(&path).unwrap().is_none());
        assert!(!path.exists());
    }
}
