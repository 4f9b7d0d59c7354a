//! The per-connection outbox: every frame the server sends to one client waits here.
//!
//! The broker (fan-out, acks, replies) pushes; the connection task drains the whole
//! queue at once, writes every frame and flushes once. The queue is bounded in bytes:
//! a push past the limit marks the connection a slow consumer, drops what was queued
//! and wakes the connection task, which tells the client and closes. A push never
//! waits, so the broker and the publisher are never slowed by a slow reader.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;

use agentbus_protocol::{Ref, TopicName};
use futures_util::task::AtomicWaker;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A stored-history read the connection task performs before it sends anything queued
/// after it: this is how a subscription replays without a gap or a duplicate at the
/// seam with live messages.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The topic.
    pub topic: TopicName,
    /// Replay messages with offsets greater than this.
    pub after: u64,
    /// ... up to and including this one (the last committed offset at subscribe time).
    pub upto: u64,
    /// At most this many messages (the newest ones), when the client asked for `history: N`.
    pub newest: Option<u64>,
    /// Send a `subscribed` reply first, with these details.
    pub subscribed: Option<SubscribedReply>,
    /// Send the frames as they went out live, not marked as replayed: they fill a gap
    /// in live delivery (messages another server stored in a shared store).
    pub live: bool,
}

impl Replay {
    /// The messages of `topic` in `(after, upto]`, sent as live ones.
    pub fn gap(topic: TopicName, after: u64, upto: u64) -> Self {
        Self { topic, after, upto, newest: None, subscribed: None, live: true }
    }
}

/// The `subscribed` reply, finished by the connection task once it knows whether the
/// replay is complete.
#[derive(Debug, Clone)]
pub struct SubscribedReply {
    /// The topic's epoch.
    pub epoch: String,
    /// Whether the client asked for recovery with `since` (then `recovered` is reported).
    pub recovery: bool,
    /// Known already: the client's epoch differs, so its offsets mean nothing here.
    pub reset: bool,
    /// The client's `ref`.
    pub reference: Option<Ref>,
}

/// One item of an outbox.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A complete JSON text frame, shared by every subscriber it goes to.
    Frame(Utf8Bytes),
    /// A history replay to perform in place.
    Replay(Box<Replay>),
}

/// What a drain found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxState {
    /// Frames were drained (possibly none after a spurious wake-up).
    Open,
    /// The connection fell behind by more than the outbox limit: tell it and close.
    SlowConsumer,
    /// The server closed this outbox (shutdown or a duplicate session).
    Closed,
    /// Time to check that the client is alive (the broker's ping tick); frames may have
    /// been drained too.
    Ping,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The push made the connection a slow consumer (reported once).
    Overflow,
    /// The outbox is already overflowed or closed; the item was dropped.
    Gone,
}

#[derive(Debug)]
struct State {
    items: VecDeque<Outgoing>,
    bytes: usize,
    status: OutboxState,
    /// A ping tick is waiting for the consumer.
    ping: bool,
}

/// A byte-bounded, multi-producer, single-consumer queue of frames.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// The consumer's waker (one consumer: an `AtomicWaker` is all it takes, and the
    /// consumer's waiting future holds no waiter of its own).
    waker: AtomicWaker,
    /// Bytes that may wait here; past it the connection is a slow consumer.
    limit_bytes: usize,
}

impl Outbox {
    /// A new, empty outbox holding at most `limit_bytes` of frames.
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State { items: VecDeque::new(), bytes: 0, status: OutboxState::Open, ping: false }),
            waker: AtomicWaker::new(),
            limit_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues an item without waiting.
    pub fn push(&self, item: Outgoing) -> Result<(), PushError> {
        let size = match &item {
            Outgoing::Frame(f) => f.len(),
            Outgoing::Replay(_) => 64,
        };
        let mut state = self.lock();
        if state.status != OutboxState::Open {
            return Err(PushError::Gone);
        }
        if state.bytes + size > self.limit_bytes && !state.items.is_empty() {
            state.status = OutboxState::SlowConsumer;
            state.items = VecDeque::new();
            state.bytes = 0;
            drop(state);
            self.waker.wake();
            return Err(PushError::Overflow);
        }
        let was_empty = state.items.is_empty();
        state.items.push_back(item);
        state.bytes += size;
        drop(state);
        if was_empty {
            self.waker.wake();
        }
        Ok(())
    }

    /// Queues a complete frame.
    pub fn push_frame(&self, frame: impl Into<Utf8Bytes>) -> Result<(), PushError> {
        self.push(Outgoing::Frame(frame.into()))
    }

    /// Closes the outbox: later pushes are dropped and the consumer sees `Closed` once
    /// it has drained what was queued.
    pub fn close(&self) {
        let mut state = self.lock();
        if state.status == OutboxState::Open {
            state.status = OutboxState::Closed;
        }
        drop(state);
        self.waker.wake();
    }

    /// Asks the consumer to check that its client is alive (see [`OutboxState::Ping`]).
    pub fn ping(&self) {
        let mut state = self.lock();
        if state.status != OutboxState::Open {
            return;
        }
        state.ping = true;
        drop(state);
        self.waker.wake();
    }

    /// Whether the outbox still accepts items.
    pub fn is_open(&self) -> bool {
        self.lock().status == OutboxState::Open
    }

    /// Moves everything queued into `into` (which should be empty), waiting until
    /// there is something or the outbox is overflowed or closed. Cancel-safe.
    pub async fn drain(&self, into: &mut VecDeque<Outgoing>) -> OutboxState {
        std::future::poll_fn(|cx| {
            if let Some(state) = self.take(into) {
                return Poll::Ready(state);
            }
            self.waker.register(cx.waker());
            // Anything pushed before the registration is seen here.
            match self.take(into) {
                Some(state) => Poll::Ready(state),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Takes whatever is queued now, without waiting (`Open` when there was nothing).
    pub fn try_drain(&self, into: &mut VecDeque<Outgoing>) -> OutboxState {
        self.take(into).unwrap_or(OutboxState::Open)
    }

    /// Moves the queue into `into` and says what the consumer must do next: `None` when
    /// the outbox is open and empty (wait).
    fn take(&self, into: &mut VecDeque<Outgoing>) -> Option<OutboxState> {
        let mut state = self.lock();
        if state.status == OutboxState::SlowConsumer {
            return Some(OutboxState::SlowConsumer);
        }
        let ping = std::mem::take(&mut state.ping);
        if !state.items.is_empty() {
            std::mem::swap(&mut state.items, into);
            state.bytes = 0;
            // Items queued before a close still go out; the close is seen next time.
            return Some(if ping { OutboxState::Ping } else { OutboxState::Open });
        }
        if state.status == OutboxState::Closed {
            return Some(OutboxState::Closed);
        }
        ping.then_some(OutboxState::Ping)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;

    fn frame(s: &str) -> Outgoing {
        Outgoing::Frame(Utf8Bytes::from(s.to_owned()))
    }

    #[tokio::test]
    async fn a_ping_wakes_the_consumer_and_travels_with_queued_frames() {
        let outbox = Arc::new(Outbox::new(1024));
        let waiting = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut q = VecDeque::new();
                let state = outbox.drain(&mut q).await;
                (state, q.len())
            })
        };
        tokio::task::yield_now().await;
        outbox.ping();
        assert_eq!(waiting.await.unwrap(), (OutboxState::Ping, 0));
        outbox.push(frame("a")).unwrap();
        outbox.ping();
        let mut q = VecDeque::new();
        assert_eq!(outbox.try_drain(&mut q), OutboxState::Ping);
        assert_eq!(q.len(), 1);
        assert_eq!(outbox.try_drain(&mut VecDeque::new()), OutboxState::Open, "a ping is reported once");
        outbox.close();
        outbox.ping();
        assert_eq!(outbox.try_drain(&mut VecDeque::new()), OutboxState::Closed);
    }

    #[tokio::test]
    async fn drains_everything_queued_in_order() {
        let outbox = Outbox::new(1024);
        for s in ["a", "b", "c"] {
            outbox.push(frame(s)).expect("room");
        }
        let mut got = VecDeque::new();
        assert_eq!(outbox.drain(&mut got).await, OutboxState::Open);
        let texts: Vec<_> = got
            .iter()
            .map(|o| match o {
                Outgoing::Frame(f) => f.as_str().to_owned(),
                Outgoing::Replay(_) => String::new(),
            })
            .collect();
        assert_eq!(texts, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn overflow_marks_a_slow_consumer_and_frees_the_queue() {
        let outbox = Outbox::new(10);
        outbox.push(frame("123456")).expect("room");
        assert_eq!(outbox.push(frame("123456")), Err(PushError::Overflow));
        assert_eq!(outbox.push(frame("1")), Err(PushError::Gone));
        let mut got = VecDeque::new();
        assert_eq!(outbox.drain(&mut got).await, OutboxState::SlowConsumer);
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn a_single_frame_larger_than_the_limit_still_goes_out() {
        let outbox = Outbox::new(4);
        outbox.push(frame("a long frame")).expect("an empty outbox takes any frame");
    }

    #[tokio::test]
    async fn close_is_seen_after_queued_items() {
        let outbox = Outbox::new(100);
        outbox.push(frame("x")).expect("room");
        outbox.close();
        assert_eq!(outbox.push(frame("y")), Err(PushError::Gone));
        let mut got = VecDeque::new();
        assert_eq!(outbox.drain(&mut got).await, OutboxState::Open);
        got.clear();
        assert_eq!(outbox.drain(&mut got).await, OutboxState::Closed);
    }
}
