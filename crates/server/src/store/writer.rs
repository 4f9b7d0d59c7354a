//! The one writer thread: group commit and background upkeep.
//!
//! The broker sends batches of pending messages over a bounded channel
//! ([`WRITER_QUEUE`] batches). The writer takes everything waiting (up to
//! [`MAX_RECORDS_PER_COMMIT`] records), stores it in one transaction, and hands the
//! batches back over the completion channel, in order. While it commits, new batches
//! queue: under load many sends share one commit. After a failed commit the writer
//! refuses every batch (`StoreError::Halted`) until the broker, having rewound its
//! offsets, sends [`ToWriter::Resume`]: so no offset is ever skipped or reused.
//!
//! After each commit into the tables (not an append to the journal) and each tick it
//! wakes the search indexer ([`super::indexer`]), which runs on a thread of its own.
//! When the store journaled batches instead of committing them
//! ([`Store::has_unflushed`]), it moves them into place a step at a time between
//! batches while the store says a move is due ([`Store::flush_due`]), and all at once
//! when no work arrives for [`FLUSH_WHEN_IDLE`]. On [`ToWriter::Tick`] (every second) it trims history beyond
//! retention, [`TRIM_STEP`] rows at a time, looking at the queue between steps.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentbus_protocol::TopicName;
use tokio::sync::mpsc;

use super::indexer::IndexWaker;
use super::{Assigned, Cursor, Record, Retention, Store, StoreError};

/// Batches that may wait for the writer; when full, the broker waits (and so, through
/// its own bounded queue, do the publishers).
pub const WRITER_QUEUE: usize = 256;

/// Most records stored in one transaction.
pub const MAX_RECORDS_PER_COMMIT: usize = 8192;

/// Rows trimmed per upkeep step, between two looks at the queue.
pub const TRIM_STEP: usize = 500;

/// How long the writer waits for more work before it flushes what the store journaled
/// ([`Store::flush`]): under a steady stream the store flushes by itself in large steps.
pub const FLUSH_WHEN_IDLE: Duration = Duration::from_millis(20);

/// Something the writer stores: a message (a record) or a marker that only needs to
/// travel in order with the messages (a duplicate's ack).
pub trait Writable: Send + 'static {
    /// The record to store, if any.
    fn record(&self) -> Option<Record<'_>>;
}

/// Work for the writer.
pub struct WriteBatch<T> {
    /// Messages and markers, in offset order per topic.
    pub items: Vec<T>,
    /// Inbox positions to store with them.
    pub cursors: Vec<Cursor>,
}

/// A message to the writer.
pub enum ToWriter<T> {
    /// Store this batch.
    Batch(WriteBatch<T>),
    /// The broker rewound its offsets after a failure: accept batches again.
    Resume,
    /// Time for upkeep (trimming, indexing).
    Tick,
}

/// A message from the writer, in the order the work was sent.
pub enum FromWriter<T> {
    /// These batches were stored (or not, with the error).
    Done {
        /// The batches, in order.
        batches: Vec<WriteBatch<T>>,
        /// The outcome for all of them.
        result: Result<(), Arc<StoreError>>,
        /// Records in the transaction.
        records: usize,
        /// What each record became, in order, when the store numbers messages itself.
        assigned: Option<Vec<Assigned>>,
    },
    /// The writer accepts batches again.
    Resumed,
}

/// Retention for each topic.
pub type RetentionFn = Arc<dyn Fn(&TopicName) -> Retention + Send + Sync>;

/// Runs the writer until the broker drops its sender. Call on a dedicated thread.
pub fn run<T: Writable>(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<ToWriter<T>>,
    done: mpsc::Sender<FromWriter<T>>,
    retention: RetentionFn,
    indexer: IndexWaker,
) {
    let mut halted = false;
    let mut flush_when_idle = true;
    let mut pending: Option<ToWriter<T>> = None;
    // Only a timer for waiting with a timeout: the queue's futures run on it.
    let timer = tokio::runtime::Builder::new_current_thread().enable_time().build();
    if let Err(e) = &timer {
        tracing::warn!(error = %e, "no timer for the writer: journaled messages move into place every second only");
    }
    loop {
        let first = match pending.take() {
            Some(m) => m,
            None => {
                let next = match &timer {
                    Ok(timer) if flush_when_idle && store.has_unflushed() => {
                        match timer.block_on(async { tokio::time::timeout(FLUSH_WHEN_IDLE, rx.recv()).await }) {
                            Ok(next) => next,
                            Err(_) => {
                                // After a failure, the next try is on the next tick.
                                flush_when_idle = store.flush().is_ok();
                                indexer.wake();
                                continue;
                            }
                        }
                    }
                    _ => rx.blocking_recv(),
                };
                flush_when_idle = true;
                match next {
                    Some(m) => m,
                    None => return,
                }
            }
        };
        let mut batches = match first {
            ToWriter::Batch(b) => vec![b],
            ToWriter::Resume => {
                halted = false;
                if done.blocking_send(FromWriter::Resumed).is_err() {
                    return;
                }
                continue;
            }
            ToWriter::Tick => {
                // Trimming asks for a move of the journal into place (or finishes the
                // one under way first).
                trim(&*store, &retention, &mut rx, &mut pending);
                indexer.wake();
                move_in_steps(&*store, &rx, pending.is_some(), &indexer);
                continue;
            }
        };
        let mut count = batches[0].items.len();
        while count < MAX_RECORDS_PER_COMMIT {
            match rx.try_recv() {
                Ok(ToWriter::Batch(b)) => {
                    count += b.items.len();
                    batches.push(b);
                }
                Ok(other) => {
                    pending = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let (result, records) = if halted {
            (Err(Arc::new(StoreError::Halted)), 0)
        } else {
            let mut records: Vec<Record<'_>> = Vec::with_capacity(batches.iter().map(|b| b.items.len()).sum());
            records.extend(batches.iter().flat_map(|b| b.items.iter().filter_map(Writable::record)));
            let cursors: Vec<Cursor> = batches.iter().flat_map(|b| b.cursors.iter().cloned()).collect();
            let n = records.len();
            let result = if records.is_empty() && cursors.is_empty() {
                Ok(None)
            } else if store.numbers_messages() {
                store.append_numbered(&records, &cursors).map(Some)
            } else {
                store.append(&records, &cursors).map(|()| None)
            };
            if let Err(e) = &result {
                tracing::error!(error = %e, records = n, "store write failed; refusing writes until offsets are rewound");
                halted = true;
            }
            (result.map_err(Arc::new), n)
        };
        // Journaled messages are indexed once they are moved into place.
        if result.is_ok() && records > 0 && !store.has_unflushed() {
            indexer.wake();
        }
        let (result, assigned) = match result {
            Ok(assigned) => (Ok(()), assigned),
            Err(e) => (Err(e), None),
        };
        if done.blocking_send(FromWriter::Done { batches, result, records, assigned }).is_err() {
            return;
        }
        move_in_steps(&*store, &rx, pending.is_some(), &indexer);
    }
}

/// Moves journaled batches into place a step at a time while a move is due, and stops as
/// soon as work is waiting (after at least one step, so that a move ends under any load):
/// the batches behind a move wait for one step, not for all of it. Between two steps it
/// yields the processor: on a server given one core the threads that bring the next
/// batches cannot run while this one does, and the queue would look empty until the
/// whole move was done.
fn move_in_steps<T>(store: &dyn Store, rx: &mpsc::Receiver<ToWriter<T>>, pending: bool, indexer: &IndexWaker) {
    while store.flush_due() {
        if store.flush_step().is_err() {
            return;
        }
        if !store.has_unflushed() {
            indexer.wake();
            return;
        }
        if pending {
            return;
        }
        std::thread::yield_now();
        if !rx.is_empty() {
            return;
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Trims history beyond retention in steps, at least one, stopping as soon as work
/// arrives.
fn trim<T>(
    store: &dyn Store,
    retention: &RetentionFn,
    rx: &mut mpsc::Receiver<ToWriter<T>>,
    pending: &mut Option<ToWriter<T>>,
) {
    loop {
        match store.trim(&**retention, now_ms(), TRIM_STEP) {
            Ok(n) if n as usize >= TRIM_STEP => {}
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "trimming history failed");
                return;
            }
        }
        match rx.try_recv() {
            Ok(ToWriter::Tick) => {}
            Ok(other) => {
                *pending = Some(other);
                return;
            }
            Err(_) => {}
        }
    }
}
