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
//! Between batches, on [`ToWriter::Tick`], it trims history beyond retention and runs
//! the store's upkeep (search indexing) in small steps, so publishes never wait long.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use agentbus_protocol::TopicName;
use tokio::sync::mpsc;

use super::{Cursor, Record, Retention, Store, StoreError};

/// Batches that may wait for the writer; when full, the broker waits (and so, through
/// its own bounded queue, do the publishers).
pub const WRITER_QUEUE: usize = 256;

/// Most records stored in one transaction.
pub const MAX_RECORDS_PER_COMMIT: usize = 8192;

/// Rows trimmed or indexed per upkeep step, between two looks at the queue.
pub const UPKEEP_STEP: usize = 2000;

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
) {
    let mut halted = false;
    let mut pending: Option<ToWriter<T>> = None;
    loop {
        let first = match pending.take() {
            Some(m) => m,
            None => match rx.blocking_recv() {
                Some(m) => m,
                None => return,
            },
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
                upkeep(&*store, &retention, &mut rx, &mut pending);
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
            let records: Vec<Record<'_>> =
                batches.iter().flat_map(|b| b.items.iter().filter_map(Writable::record)).collect();
            let cursors: Vec<Cursor> = batches.iter().flat_map(|b| b.cursors.iter().cloned()).collect();
            let n = records.len();
            let result =
                if records.is_empty() && cursors.is_empty() { Ok(()) } else { store.append(&records, &cursors) };
            if let Err(e) = &result {
                tracing::error!(error = %e, records = n, "store write failed; refusing writes until offsets are rewound");
                halted = true;
            }
            (result.map_err(Arc::new), n)
        };
        if done.blocking_send(FromWriter::Done { batches, result, records }).is_err() {
            return;
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Trims and indexes in steps, stopping as soon as work arrives.
fn upkeep<T>(
    store: &dyn Store,
    retention: &RetentionFn,
    rx: &mut mpsc::Receiver<ToWriter<T>>,
    pending: &mut Option<ToWriter<T>>,
) {
    let step = |f: &dyn Fn() -> Result<u64, StoreError>| -> bool {
        match f() {
            Ok(n) => n as usize >= UPKEEP_STEP,
            Err(e) => {
                tracing::warn!(error = %e, "store upkeep failed");
                false
            }
        }
    };
    let mut more_trim = true;
    let mut more_index = true;
    while more_trim || more_index {
        if more_trim {
            more_trim = step(&|| store.trim(&**retention, now_ms(), UPKEEP_STEP));
        }
        if more_index {
            more_index = step(&|| store.maintain(UPKEEP_STEP));
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
