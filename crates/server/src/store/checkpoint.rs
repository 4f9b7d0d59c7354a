//! Checkpoints of the SQLite write-ahead log, on a thread of their own.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses its threshold: the
//! writer thread copies the log into the database file and waits for its `fsync` while
//! every publish behind it waits too. Here the writer's commit hook only wakes the
//! checkpoint thread, which runs a passive checkpoint on its own connection: it never
//! takes the write lock, so commits go on while it copies.

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;
use std::ffi::c_int;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use super::sqlite::BUSY_TIMEOUT;

/// Pages in the log that wake the checkpoint thread (SQLite's own default threshold).
pub const CHECKPOINT_PAGES: c_int = 1000;

/// The checkpoint thread. Dropping it ends the thread (once every hook made by
/// [`Checkpointer::hook`] is gone too) and waits for it.
pub struct Checkpointer {
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a connection to the database at `path` and starts the thread.
    pub fn start(path: &Path) -> rusqlite::Result<Checkpointer> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let (wake, woken) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("agentbus-checkpoint".into())
            .spawn(move || run(&conn, &woken))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer { wake: Some(wake), thread: Some(thread) })
    }

    /// The commit hook for the writer's connection (`Connection::wal_hook`): wakes the
    /// thread once the log holds [`CHECKPOINT_PAGES`]. Should the thread be gone, it
    /// checkpoints inline, as SQLite would.
    pub fn hook(&self) -> impl FnMut(&mut Wal, c_int) -> rusqlite::Result<()> + Send + 'static {
        let wake = self.wake.clone();
        move |wal, pages| {
            if pages < CHECKPOINT_PAGES {
                return Ok(());
            }
            match wake.as_ref().map(|w| w.try_send(())) {
                Some(Ok(()) | Err(TrySendError::Full(()))) => Ok(()),
                Some(Err(TrySendError::Disconnected(()))) | None => wal.checkpoint(),
            }
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
fn run(conn: &Connection, woken: &Receiver<()>) {
    while woken.recv().is_ok() {
        if let Err(e) = conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
            tracing::warn!(error = %e, "checkpoint of the write-ahead log failed");
        }
    }
}
