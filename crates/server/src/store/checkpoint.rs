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
//! [`RESTART_BYTES`], the writer runs a `RESTART` checkpoint itself between two commits,
//! and the next commit writes from the start of the file again, reusing its blocks. The
//! writer waits for that checkpoint, so it is made small: once the log holds
//! [`CHECKPOINT_BYTES`] the thread is woken per [`CHECKPOINT_STEP_BYTES`] of new log
//! (each checkpoint syncs the log to disk first: a sync per commit kept the disk busy and
//! made the writer's own sync wait behind it, and steps of 16 MiB made each copy a burst
//! of tens of milliseconds that held up deliveries), it goes on copying while a restart
//! is due, and the writer restarts only once the thread has copied the log past
//! [`RESTART_BYTES`]: what is left for the writer is the few commits since. (Restarting as soon as the size was reached, with the thread
//! stood aside, left the writer copying and syncing up to 100 ms of log: 60 to 230 ms
//! without a commit, every second or so, under many small commits.)

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

/// Bytes of new log that wake the checkpoint thread again once the log holds
/// [`CHECKPOINT_BYTES`]: small steps, so that each copy and sync is short.
pub const CHECKPOINT_STEP_BYTES: i64 = 1 << 20;

/// How long a restart waits for readers to leave the log.
const RESTART_WAIT: Duration = Duration::from_millis(20);

/// How long after a failed restart the next one is tried.
const RESTART_BACKOFF: Duration = Duration::from_millis(100);

/// The checkpoint thread. Dropping it ends the thread (once every hook made by
/// [`Checkpointer::hook`] is gone too) and waits for it.
pub struct Checkpointer {
    wake: Option<SyncSender<()>>,
    /// Pages of log that first wake the thread, pages of new log that wake it again, and
    /// pages of log that make a restart due.
    checkpoint_pages: c_int,
    step_pages: c_int,
    restart_pages: c_int,
    /// Set by the thread once it has copied a log of at least `restart_pages`.
    restart_ready: Arc<AtomicBool>,
    /// No restart before this instant (set when readers kept one from finishing).
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
        let (checkpoint_pages, restart_pages) = (pages(CHECKPOINT_BYTES), pages(RESTART_BYTES));
        let (wake, woken) = sync_channel(1);
        let restart_ready = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("agentbus-checkpoint".into())
            .spawn({
                let restart_ready = restart_ready.clone();
                move || run(&conn, &woken, restart_pages, &restart_ready)
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer {
            wake: Some(wake),
            checkpoint_pages,
            step_pages: pages(CHECKPOINT_STEP_BYTES),
            restart_pages,
            restart_ready,
            retry_at: Mutex::new(None),
            thread: Some(thread),
        })
    }

    /// Restarts the log once the thread has copied it past [`RESTART_BYTES`]. Call on
    /// the writer's connection between transactions (a checkpoint cannot wait for readers
    /// inside the hook). Should the thread hold the checkpoint at that moment, the
    /// restart is tried again after the next commit; should readers keep it from
    /// finishing, `RESTART_BACKOFF` later, so a long read cannot make every commit
    /// wait; other failures are logged.
    pub fn restart_if_due(&self, writer: &Connection) {
        if !self.restart_ready.load(Ordering::Relaxed) {
            return;
        }
        let mut retry_at = self.retry_at.lock().unwrap_or_else(PoisonError::into_inner);
        if retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        // Publishes wait meanwhile: give readers little time.
        let _ = writer.busy_timeout(RESTART_WAIT);
        let started = Instant::now();
        *retry_at = match writer.wal_checkpoint_v2(None::<&str>, CheckpointMode::RESTART) {
            Ok(_) => {
                self.restart_ready.store(false, Ordering::Relaxed);
                None
            }
            // The thread's checkpoint holds the lock (SQLite does not wait for it).
            Err(e) if is_busy(&e) && started.elapsed() < RESTART_WAIT / 2 => None,
            Err(e) if is_busy(&e) => Some(Instant::now() + RESTART_BACKOFF),
            Err(e) => {
                tracing::warn!(error = %e, "restart of the write-ahead log failed");
                Some(Instant::now() + RESTART_BACKOFF)
            }
        };
        let _ = writer.busy_timeout(BUSY_TIMEOUT);
    }

    /// The commit hook for the writer's connection (`Connection::wal_hook`): wakes the
    /// thread when the log reaches [`CHECKPOINT_BYTES`], then each time it has grown by
    /// [`CHECKPOINT_STEP_BYTES`], and once more when it reaches [`RESTART_BYTES`]. Should the thread be gone, it checkpoints inline, as
    /// SQLite would.
    pub fn hook(&self) -> impl FnMut(&mut Wal, c_int) -> rusqlite::Result<()> + Send + 'static {
        let wake = self.wake.clone();
        let (checkpoint_pages, step_pages, restart_pages) =
            (self.checkpoint_pages, self.step_pages, self.restart_pages);
        // The log's size when the thread was last woken.
        let mut woken_at: c_int = 0;
        move |wal, pages| {
            if pages < woken_at {
                // The log started over.
                woken_at = 0;
            }
            let restart_reached = pages >= restart_pages && woken_at < restart_pages;
            let next = if woken_at == 0 { checkpoint_pages } else { woken_at.saturating_add(step_pages) };
            if pages < next && !restart_reached {
                return Ok(());
            }
            woken_at = pages;
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

/// Checkpoints each time it is woken, until every sender is gone; marks a restart as
/// ready once it has copied a log of `restart_pages` or more.
fn run(conn: &Connection, woken: &Receiver<()>, restart_pages: c_int, restart_ready: &AtomicBool) {
    while woken.recv().is_ok() {
        match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
            Ok((log, _)) if log < 0 => tracing::warn!("checkpoint found no write-ahead log"),
            Ok((log, _)) if log >= restart_pages => restart_ready.store(true, Ordering::Relaxed),
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
