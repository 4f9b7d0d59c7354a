//! Checkpoints of the SQLite write-ahead log, on a thread of their own.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold: the
//! writer thread copies the log into the database file and waits for its `fsync` while
//! every publish behind it waits too. Here the writer's commit hook only wakes the
//! checkpoint thread, which runs a passive checkpoint on its own connection: it never
//! takes the write lock, so commits go on while it copies.
//!
//! A passive checkpoint copies the log but cannot make the writer start it over: under
//! steady traffic new frames arrive while it copies, the log is never wholly copied, and
//! it would grow without end (hundreds of MB a minute). So once the log holds
//! [`RESTART_BYTES`], the writer runs a `RESTART` checkpoint itself after that commit:
//! it copies the little the thread has not, waits briefly for readers to leave the log,
//! and the next commit writes from the start of the file again, reusing its blocks.

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;
use std::ffi::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::sqlite::BUSY_TIMEOUT;

/// Bytes of log that wake the checkpoint thread. A page written by many commits in a row
/// is copied once per checkpoint, so the longer the log the less it copies.
pub const CHECKPOINT_BYTES: i64 = 16 << 20;

/// Bytes of log past which the writer restarts it.
pub const RESTART_BYTES: i64 = 4 * CHECKPOINT_BYTES;

/// How long a restart waits for readers to leave the log.
const RESTART_WAIT: Duration = Duration::from_millis(20);

/// How long after a failed restart the next one is tried.
const RESTART_BACKOFF: Duration = Duration::from_millis(100);

/// The checkpoint thread. Dropping it ends the thread (once every hook made by
/// [`Checkpointer::hook`] is gone too) and waits for it.
pub struct Checkpointer {
    wake: Option<SyncSender<()>>,
    /// Pages of log that wake the thread, and that make a restart due.
    checkpoint_pages: c_int,
    restart_pages: c_int,
    restart_due: Arc<AtomicBool>,
    /// No restart before this instant (set when one fails).
    retry_at: Mutex<Option<Instant>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a connection to the database at `path` and starts the thread.
    pub fn start(path: &Path) -> rusqlite::Result<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // A connection learns that the database is in WAL mode when it first reads it;
        // until then its checkpoints do nothing (and report no log at all).
        let _tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages = |bytes: i64| c_int::try_from(bytes / page_size.max(512)).unwrap_or(c_int::MAX);
        let (wake, woken) = sync_channel(1);
        let restart_due = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("agentbus-checkpoint".into())
            .spawn({
                let restart_due = restart_due.clone();
                move || run(&conn, &woken, &restart_due)
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer {
            wake: Some(wake),
            checkpoint_pages: pages(CHECKPOINT_BYTES),
            restart_pages: pages(RESTART_BYTES),
            restart_due,
            retry_at: Mutex::new(None),
            thread: Some(thread),
        })
    }

    /// Restarts the log if the hook found it too long. Call on the writer's connection
    /// between transactions (a checkpoint cannot wait for readers inside the hook).
    /// After a restart that found readers in the log, the next try waits
    /// [`RESTART_BACKOFF`], so a long read cannot make every commit wait; other
    /// failures are logged.
    pub fn restart_if_due(&self, writer: &Connection) {
        if !self.restart_due.swap(false, Ordering::Relaxed) {
            return;
        }
        let mut retry_at = self.retry_at.lock().unwrap_or_else(PoisonError::into_inner);
        if retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // Publishes wait meanwhile: give readers little time.
        let _ = writer.busy_timeout(RESTART_WAIT);
        *retry_at = match writer.wal_checkpoint_v2(None::<&str>, CheckpointMode::RESTART) {
            Ok(_) => None,
            Err(e) if is_busy(&e) => Some(Instant::now() + RESTART_BACKOFF),
            Err(e) => {
                tracing::warn!(error = %e, "restart of the write-ahead log failed");
                Some(Instant::now() + RESTART_BACKOFF)
            }
        };
        let _ = writer.busy_timeout(BUSY_TIMEOUT);
    }

    /// The commit hook for the writer's connection (`Connection::wal_hook`): wakes the
    /// thread once the log holds [`CHECKPOINT_BYTES`], and once it holds
    /// [`RESTART_BYTES`] marks a restart as due ([`Checkpointer::restart_if_due`]).
    /// Should the thread be gone, it checkpoints inline, as SQLite would.
    pub fn hook(&self) -> impl FnMut(&mut Wal, c_int) -> rusqlite::Result<()> + Send + 'static {
        let wake = self.wake.clone();
        let restart = self.restart_due.clone();
        let (checkpoint_pages, restart_pages) = (self.checkpoint_pages, self.restart_pages);
        move |wal, pages| {
            if pages < checkpoint_pages {
                return Ok(());
            }
            if pages >= restart_pages {
                // The writer's checkpoint does the thread's work, and must not find it
                // holding the checkpoint lock.
                restart.store(true, Ordering::Relaxed);
                return Ok(());
            }
            // The commit is done when the hook runs: an error returned here would report
            // a stored batch as failed, so a failed inline checkpoint is only logged.
            match wake.as_ref().map(|w| w.try_send(())) {
                Some(Ok(()) | Err(TrySendError::Full(()))) => {}
                Some(Err(TrySendError::Disconnected(()))) | None => {
                    if let Err(e) = wal.checkpoint() {
                        tracing::warn!(error = %e, "checkpoint of the write-ahead log failed");
                    }
                }
            }
            Ok(())
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Checkpoints each time it is woken, until every sender is gone.
fn run(conn: &Connection, woken: &Receiver<()>, restart_due: &AtomicBool) {
    while woken.recv().is_ok() {
        if restart_due.load(Ordering::Relaxed) {
            continue;
        }
        match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
            Ok((log, _)) if log < 0 => tracing::warn!("checkpoint found no write-ahead log"),
            Ok(_) => {}
            // The writer is restarting the log: its checkpoint does this one's work.
            Err(e) if is_busy(&e) => {}
            Err(e) => tracing::warn!(error = %e, "checkpoint of the write-ahead log failed"),
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
}
