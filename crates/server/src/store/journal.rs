//! The journal of the SQLite store: acknowledged batches on their way into the tables.
//!
//! `<data>/agentbus.journal` is an append-only file. Each append is one group: its length
//! and CRC-32, then its records and cursors. A batch is acknowledged once its group is
//! written (and, with `sync = "full"`, flushed to disk): one write of about the batch's
//! own size, where a commit of the tables rewrites whole 16 KiB pages of the table and of
//! each topic's index. The store moves the journaled batches into the tables in large
//! transactions behind the acks and then empties the file; on opening, whatever the file
//! still holds is moved in before anything else happens.
//!
//! The file starts with `MAGIC` and the id of the store it belongs to, so that a
//! journal is never applied to another database. A group cut short by a crash (or whose
//! checksum does not match) ends the journal: it and anything after it are dropped.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use agentbus_protocol::TopicName;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Cursor, Record};

/// The journal file inside the data folder.
pub const JOURNAL_FILE: &str = "agentbus.journal";

/// The first bytes of a journal file (then the store id's length and the store id).
const MAGIC: &[u8; 8] = b"abjrnl01";

/// Bytes before each group's payload: its length and its CRC-32, little-endian.
const GROUP_HEADER: usize = 8;

/// The largest group read back (a batch is at most some thousands of frames).
const MAX_GROUP: usize = 1 << 30;

/// A message of a journaled batch, owned.
#[derive(Debug, Clone)]
pub struct JournaledRecord {
    /// The topic.
    pub topic: TopicName,
    /// The topic's epoch.
    pub epoch: String,
    /// Its offset.
    pub offset: u64,
    /// The message id.
    pub id: String,
    /// Whether the client chose the id.
    pub client_id: bool,
    /// Receive time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The sender.
    pub from_agent: String,
    /// The complete frame.
    pub frame: Utf8Bytes,
}

impl JournaledRecord {
    /// An owned copy of `r`.
    pub fn new(r: &Record<'_>) -> Self {
        JournaledRecord {
            topic: r.topic.clone(),
            epoch: r.epoch.to_owned(),
            offset: r.offset,
            id: r.id.to_owned(),
            client_id: r.client_id,
            timestamp_ms: r.timestamp_ms,
            from_agent: r.from_agent.to_owned(),
            frame: Utf8Bytes::from(r.frame.to_owned()),
        }
    }

    /// The record to store.
    pub fn record(&self) -> Record<'_> {
        Record {
            topic: &self.topic,
            epoch: &self.epoch,
            offset: self.offset,
            id: &self.id,
            client_id: self.client_id,
            timestamp_ms: self.timestamp_ms,
            from_agent: &self.from_agent,
            frame: self.frame.as_str(),
        }
    }
}

/// One journaled batch.
#[derive(Debug, Clone, Default)]
pub struct JournaledBatch {
    /// Its messages, in order.
    pub records: Vec<JournaledRecord>,
    /// Its inbox positions.
    pub cursors: Vec<Cursor>,
}

impl JournaledBatch {
    /// An owned copy of a batch.
    pub fn new(records: &[Record<'_>], cursors: &[Cursor]) -> Self {
        JournaledBatch { records: records.iter().map(JournaledRecord::new).collect(), cursors: cursors.to_vec() }
    }

    /// The bytes of its frames.
    pub fn frame_bytes(&self) -> usize {
        self.records.iter().map(|r| r.frame.len()).sum()
    }
}

/// Why a journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The file belongs to another store.
    #[error("{path} belongs to another store ({found}, not {expected})")]
    Foreign {
        /// The file.
        path: String,
        /// The id in the file.
        found: String,
        /// This store's id.
        expected: String,
    },
}

/// The open journal file.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    /// Where the header ends (an empty journal is this long).
    start: u64,
    /// Where the next group goes.
    len: u64,
    /// Flush each group to disk before returning.
    sync: bool,
    /// The group being written (reused).
    buf: Vec<u8>,
}

impl Journal {
    /// Opens (creating if needed) the journal of store `store_id` in `data_dir` and
    /// returns it with the batches it holds, in order. A torn or damaged tail is cut off.
    pub fn open(data_dir: &Path, store_id: &str, sync: bool) -> Result<(Journal, Vec<JournaledBatch>), JournalError> {
        let path = data_dir.join(JOURNAL_FILE);
        let io = |source| JournalError::Io { path: path.display().to_string(), source };
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let mut header = Vec::with_capacity(MAGIC.len() + 4 + store_id.len());
        header.extend_from_slice(MAGIC);
        put_str(&mut header, store_id);
        let start = header.len() as u64;
        let mut journal = Journal { file, path: path.clone(), start, len: start, sync, buf: Vec::new() };
        if bytes.is_empty() {
            journal.rewrite_header(&header)?;
            return Ok((journal, Vec::new()));
        }
        let found = bytes.strip_prefix(MAGIC.as_slice()).and_then(|rest| Reader::new(rest).str().map(str::to_owned));
        match found {
            Some(found) if found == store_id => {}
            found => {
                return Err(JournalError::Foreign {
                    path: path.display().to_string(),
                    found: found.unwrap_or_else(|| "not a journal".to_owned()),
                    expected: store_id.to_owned(),
                });
            }
        }
        let (batches, end) = read_groups(&bytes, header.len());
        if end < bytes.len() {
            tracing::warn!(
                file = %path.display(),
                dropped_bytes = bytes.len() - end,
                "the journal ends in an incomplete or damaged group (a write cut short); it is dropped"
            );
        }
        journal.len = end as u64;
        journal.file.set_len(journal.len).map_err(io)?;
        Ok((journal, batches))
    }

    /// Moves a journal that belongs to no store of this folder aside, to `<file>.<suffix>`.
    pub fn set_aside(data_dir: &Path, suffix: &str) -> std::io::Result<PathBuf> {
        let from = data_dir.join(JOURNAL_FILE);
        let to = data_dir.join(format!("{JOURNAL_FILE}.{suffix}"));
        std::fs::rename(&from, &to)?;
        Ok(to)
    }

    /// Appends a batch as one group. On failure the file is cut back to where it was:
    /// nothing of the batch stays.
    pub fn append(&mut self, records: &[Record<'_>], cursors: &[Cursor]) -> std::io::Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(&[0; GROUP_HEADER]);
        encode(&mut buf, records, cursors);
        let payload = buf.len() - GROUP_HEADER;
        let len = u32::try_from(payload).map_err(|_| std::io::Error::other("batch too large for the journal"))?;
        let crc = crc32fast::hash(&buf[GROUP_HEADER..]);
        buf[..4].copy_from_slice(&len.to_le_bytes());
        buf[4..GROUP_HEADER].copy_from_slice(&crc.to_le_bytes());
        let result = self.write_at_end(&buf);
        self.buf = buf;
        if let Err(e) = result {
            // Best effort: a group left half-written is dropped when the file is read.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += self.buf.len() as u64;
        Ok(())
    }

    fn write_at_end(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        write_at(&mut self.file, bytes, self.len)?;
        if self.sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Empties the journal (everything in it is in the tables).
    pub fn clear(&mut self) -> std::io::Result<()> {
        if self.len == self.start {
            return Ok(());
        }
        self.file.set_len(self.start)?;
        self.len = self.start;
        Ok(())
    }

    fn rewrite_header(&mut self, header: &[u8]) -> Result<(), JournalError> {
        let io = |source| JournalError::Io { path: self.path.display().to_string(), source };
        self.file.set_len(0).map_err(io)?;
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.file.write_all(header).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        self.len = self.start;
        Ok(())
    }
}

/// Writes `bytes` at `offset` of `file`: one system call where the platform has one.
#[cfg(unix)]
fn write_at(file: &mut File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

/// Writes `bytes` at `offset` of `file`.
#[cfg(not(unix))]
fn write_at(file: &mut File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(bytes)
}

/// The batches of the groups from `at`, and where the last whole, intact group ends.
fn read_groups(bytes: &[u8], mut at: usize) -> (Vec<JournaledBatch>, usize) {
    let mut batches = Vec::new();
    while let Some(header) = bytes.get(at..at + GROUP_HEADER) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(payload) = bytes.get(at + GROUP_HEADER..at + GROUP_HEADER + len) else { break };
        if len > MAX_GROUP || crc32fast::hash(payload) != crc {
            break;
        }
        match decode(payload) {
            Some(batch) => batches.push(batch),
            None => break,
        }
        at += GROUP_HEADER + len;
    }
    (batches, at)
}

/// Writes a batch: record count, records, cursor count, cursors.
fn encode(out: &mut Vec<u8>, records: &[Record<'_>], cursors: &[Cursor]) {
    put_u64(out, records.len() as u64);
    for r in records {
        put_str(out, r.topic.as_str());
        put_str(out, r.epoch);
        put_u64(out, r.offset);
        put_str(out, r.id);
        out.push(u8::from(r.client_id));
        put_u64(out, r.timestamp_ms as u64);
        put_str(out, r.from_agent);
        put_str(out, r.frame);
    }
    put_u64(out, cursors.len() as u64);
    for c in cursors {
        put_str(out, &c.agent);
        put_u64(out, c.offset);
    }
}

/// Reads what [`encode`] wrote; `None` if it is not that.
fn decode(payload: &[u8]) -> Option<JournaledBatch> {
    let mut r = Reader::new(payload);
    let n = usize::try_from(r.u64()?).ok()?;
    let mut records = Vec::with_capacity(n.min(payload.len() / 16));
    for _ in 0..n {
        let topic = TopicName::new(r.str()?).ok()?;
        let epoch = r.str()?.to_owned();
        let offset = r.u64()?;
        let id = r.str()?.to_owned();
        let client_id = r.byte()? != 0;
        let timestamp_ms = r.u64()? as i64;
        let from_agent = r.str()?.to_owned();
        let frame = Utf8Bytes::from(r.str()?.to_owned());
        records.push(JournaledRecord { topic, epoch, offset, id, client_id, timestamp_ms, from_agent, frame });
    }
    let n = usize::try_from(r.u64()?).ok()?;
    let mut cursors = Vec::with_capacity(n.min(payload.len() / 12));
    for _ in 0..n {
        let agent = r.str()?.to_owned();
        cursors.push(Cursor { agent, offset: r.u64()? });
    }
    r.rest.is_empty().then_some(JournaledBatch { records, cursors })
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads the fields of a group, failing on anything short or not UTF-8.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        Some(head)
    }

    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        std::str::from_utf8(self.take(len)?).ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn record<'a>(topic: &'a TopicName, offset: u64, frame: &'a str) -> Record<'a> {
        Record {
            topic,
            epoch: "e1",
            offset,
            id: "m1",
            client_id: offset.is_multiple_of(2),
            timestamp_ms: 1_700_000_000_000,
            from_agent: "alice",
            frame,
        }
    }

    #[test]
    fn batches_come_back_in_order_after_reopening_and_clearing_empties_it() {
        let dir = tempfile::tempdir().unwrap();
        let t = TopicName::new("notes").unwrap();
        {
            let (mut j, found) = Journal::open(dir.path(), "s1", false).unwrap();
            assert!(found.is_empty());
            j.append(&[record(&t, 1, "{\"a\":1}"), record(&t, 2, "é")], &[]).unwrap();
            j.append(&[], &[Cursor { agent: "bob".into(), offset: 2 }]).unwrap();
        }
        let (mut j, found) = Journal::open(dir.path(), "s1", false).unwrap();
        assert_eq!(found.len(), 2);
        let offsets: Vec<u64> = found[0].records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![1, 2]);
        assert_eq!(found[0].records[1].frame.as_str(), "é");
        assert!(found[0].records[1].client_id);
        assert_eq!(found[1].cursors, vec![Cursor { agent: "bob".into(), offset: 2 }]);
        j.clear().unwrap();
        drop(j);
        let (_, found) = Journal::open(dir.path(), "s1", false).unwrap();
        assert!(found.is_empty());
    }

    #[test]
    fn a_torn_or_damaged_last_group_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let t = TopicName::new("notes").unwrap();
        {
            let (mut j, _) = Journal::open(dir.path(), "s1", false).unwrap();
            j.append(&[record(&t, 1, "one")], &[]).unwrap();
            j.append(&[record(&t, 2, "two")], &[]).unwrap();
        }
        let path = dir.path().join(JOURNAL_FILE);
        let whole = std::fs::read(&path).unwrap();
        // Cut inside the second group, then damage a byte of it instead.
        std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        let (mut j, found) = Journal::open(dir.path(), "s1", false).unwrap();
        assert_eq!(found.len(), 1);
        // The cut tail is gone: the next group follows the first.
        j.append(&[record(&t, 2, "two again")], &[]).unwrap();
        drop(j);
        let (_, found) = Journal::open(dir.path(), "s1", false).unwrap();
        assert_eq!(found[1].records[0].frame.as_str(), "two again");
        let mut damaged = std::fs::read(&path).unwrap();
        let last = damaged.len() - 2;
        damaged[last] ^= 0xff;
        std::fs::write(&path, &damaged).unwrap();
        let (_, found) = Journal::open(dir.path(), "s1", false).unwrap();
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn a_journal_of_another_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Journal::open(dir.path(), "s1", false).unwrap());
        let err = Journal::open(dir.path(), "s2", false).unwrap_err();
        assert!(matches!(err, JournalError::Foreign { .. }), "{err}");
        std::fs::write(dir.path().join(JOURNAL_FILE), b"something else").unwrap();
        assert!(matches!(Journal::open(dir.path(), "s2", false), Err(JournalError::Foreign { .. })));
    }
}
