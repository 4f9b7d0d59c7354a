//! The search indexer: a thread at the lowest scheduling priority that calls
//! [`Store::maintain`] behind the writer's commits.
//!
//! The writer wakes it after each commit into the tables and each tick; it lets commits
//! gather for [`GATHER`], then indexes in steps of [`INDEX_STEP`] messages until it has
//! caught up, and, once a second while the store trims, purges what trimming removed. An
//! idle server's indexer finds nothing to do. (Purging on every wake-up went round the
//! whole index, 10,000 entries a second, on a server that received nothing: 0.85% of a
//! core with 536,000 messages stored.) (Under 1,000 one-message commits a second, indexing
//! each commit on its own took 0.31 s of processor time in 5 s; gathered, 0.08 s.) At
//! nice 19 the scheduler gives it a small share of a busy processor (a weight of 15
//! against 1,024 for an ordinary thread): under a publishing load that saturates the
//! processor the index falls behind, still moving, and catches up when the load drops.
//! Searches find a message once it is indexed. It offers the processor to other threads
//! between reads and every 32 entries (`sched_yield`): the scheduler otherwise let a
//! step run 1–3.5 ms at a stretch on a busy core (`perf sched timehist`), a pause in
//! whatever fan-out was under way (`rate` p99: 3.1 → 2.6 ms, eight alternating runs). (`SCHED_IDLE`, a weight of 3, left it
//! holding a read of the messages for seconds at a time, and the write-ahead log cannot
//! be started over while a reader is in it.)

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use thread_priority::{
    NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
};

use super::Store;

/// Messages indexed per step (one transaction in the index file).
pub const INDEX_STEP: usize = 2000;

/// Longest sleep between two looks at the index (for purging after trims).
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// How long the indexer lets commits gather after being woken, so that a stream of small
/// commits is indexed in a few transactions instead of one each.
pub const GATHER: Duration = Duration::from_millis(50);

/// Wakes the indexer; cheap and never blocking.
#[derive(Clone)]
pub struct IndexWaker(SyncSender<()>);

impl IndexWaker {
    /// Asks the indexer to look for new messages.
    pub fn wake(&self) {
        match self.0.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }
}

/// Starts the indexer thread for `store`; it ends when every [`IndexWaker`] is gone.
pub fn start(store: Arc<dyn Store>) -> std::io::Result<IndexWaker> {
    let (tx, rx) = sync_channel(1);
    std::thread::Builder::new().name("agentbus-indexer".into()).spawn(move || run(&*store, &rx))?;
    Ok(IndexWaker(tx))
}

fn run(store: &dyn Store, woken: &Receiver<()>) {
    let lowest = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Other);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, lowest) {
        tracing::debug!(error = ?e, "the search indexer runs at normal priority");
    }
    loop {
        loop {
            match store.maintain(INDEX_STEP) {
                Ok(n) if n as usize >= INDEX_STEP => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "search indexing failed");
                    break;
                }
            }
        }
        match woken.recv_timeout(IDLE_WAKE) {
            Ok(()) => std::thread::sleep(GATHER),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
