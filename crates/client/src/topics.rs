//! The subscriptions of one topic and the rules that make each of them see every
//! message once, in order, across reconnects and transport changes. Plain synchronous
//! code owned by the connection task.
//!
//! One server subscription per topic feeds every [`Entry`] (one per
//! [`Subscription`](crate::Subscription)). Each entry remembers the last server offset
//! it was handed and takes only larger ones, so a replay after a reconnect (subscribe
//! `since` the smallest of them) fills each entry's gap without duplicates. Messages read
//! from the board carry board offsets, tracked apart; their ids are remembered so that
//! the same message, forwarded to the server later, is not handed out a second time.

use std::collections::{HashSet, VecDeque};

use agentbus_protocol::Message;
use tokio::sync::{mpsc, oneshot};

use crate::error::Result;
use crate::event::Event;

/// Most board-delivered ids an entry remembers while waiting to see them again from
/// the server.
const BOARD_SEEN_CAP: usize = 10_000;

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// Only messages published from now on.
    Live,
    /// The newest N stored messages first.
    History(u64),
    /// Every stored message after this server offset.
    Since(u64),
}

impl Want {
    fn history(self) -> u64 {
        match self {
            Want::History(h) => h,
            _ => 0,
        }
    }
}

/// A bounded set of ids in insertion order.
#[derive(Debug, Default)]
struct SeenIds {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl SeenIds {
    fn insert(&mut self, id: &str) {
        if self.set.insert(id.to_owned()) {
            self.order.push_back(id.to_owned());
            if self.order.len() > BOARD_SEEN_CAP
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }

    fn take(&mut self, id: &str) -> bool {
        if self.set.remove(id) {
            self.order.retain(|i| i != id);
            true
        } else {
            false
        }
    }
}

/// One subscription's view of its topic.
#[derive(Debug)]
pub(crate) struct Entry {
    pub id: u64,
    /// The subscription's bounded channel; fed with `try_send` only.
    tx: mpsc::Sender<Message>,
    /// The last server offset handed to (or skipped for) this entry; `None` until the
    /// server told where the topic stands.
    pub last: Option<u64>,
    /// The last board offset handed to this entry.
    pub board_last: u64,
    /// The `ref` of the subscribe (or HTTP stream) this entry waits for; messages are
    /// held back from it until that answer, which precedes its replay.
    pub pending: Option<String>,
    want: Want,
    ready: Option<oneshot::Sender<Result<()>>>,
    slow: bool,
    board_seen: SeenIds,
}

impl Entry {
    pub(crate) fn new(id: u64, tx: mpsc::Sender<Message>, want: Want, ready: oneshot::Sender<Result<()>>) -> Self {
        let last = match want {
            Want::Since(s) => Some(s),
            _ => None,
        };
        Self {
            id,
            tx,
            last,
            board_last: 0,
            pending: None,
            want,
            ready: Some(ready),
            slow: false,
            board_seen: SeenIds::default(),
        }
    }

    pub(crate) fn want(&self) -> Want {
        self.want
    }

    /// Tells the subscriber its subscription is in place.
    pub(crate) fn confirm(&mut self, result: Result<()>) {
        if let Some(r) = self.ready.take() {
            let _ = r.send(result);
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Hands `m` to the subscriber without waiting. `Some(true)` when this overflow
    /// starts a slow-consumer episode, `None` when the subscriber is gone.
    pub(crate) fn offer(&mut self, m: Message) -> Option<bool> {
        match self.tx.try_send(m) {
            Ok(()) => {
                self.slow = false;
                Some(false)
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let started = !self.slow;
                self.slow = true;
                Some(started)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => None,
        }
    }
}

/// What a subscribe (WebSocket frame or SSE stream) for a topic asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub since: Option<u64>,
    pub history: u64,
}

/// Everything the client knows about one topic.
#[derive(Debug)]
pub(crate) struct TopicState {
    pub name: String,
    pub entries: Vec<Entry>,
    /// Requests waiting for replies on this topic.
    pub watchers: usize,
    /// Kept even without entries (the agent's own inbox).
    pub permanent: bool,
    pub epoch: Option<String>,
    /// The highest server offset known on the current link.
    pub head: u64,
    /// The server confirmed the subscription on the current link.
    pub active: bool,
    /// The `ref` of the topic's subscribe in flight on the current link.
    pub subscribing: Option<String>,
    /// The last board offset read by polling.
    pub board_head: u64,
}

/// What delivering one message led to.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Delivered {
    /// Entries that overflowed (raise `SlowConsumer` once).
    pub slow: bool,
    /// Entries whose subscriber is gone (removed).
    pub closed: bool,
}

impl TopicState {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            entries: Vec::new(),
            watchers: 0,
            permanent: false,
            epoch: None,
            head: 0,
            active: false,
            subscribing: None,
            board_head: 0,
        }
    }

    /// Whether nothing needs this topic any more.
    pub(crate) fn unused(&self) -> bool {
        self.entries.is_empty() && self.watchers == 0 && !self.permanent
    }

    /// Forgets the state of the link that was lost.
    pub(crate) fn link_lost(&mut self) {
        self.active = false;
        self.subscribing = None;
        for e in &mut self.entries {
            e.pending = None;
        }
    }

    /// What to ask for on a fresh link; entries that still need a starting point wait
    /// for the answer to `reference`.
    pub(crate) fn plan(&mut self, reference: &str) -> Plan {
        self.subscribing = Some(reference.to_owned());
        let since = self.entries.iter().filter_map(|e| e.last).min();
        for e in &mut self.entries {
            if e.last.is_none() {
                e.pending = Some(reference.to_owned());
            }
        }
        match since {
            Some(s) => Plan { since: Some(s), history: 0 },
            None if self.entries.is_empty() && self.head > 0 => Plan { since: Some(self.head), history: 0 },
            None => Plan { since: None, history: self.entries.iter().map(|e| e.want.history()).max().unwrap_or(0) },
        }
    }

    /// The server's `subscribed` answer to `reference`. Returns a `Gap` event when the
    /// server could not replay everything asked for.
    pub(crate) fn subscribed(
        &mut self,
        reference: Option<&str>,
        offset: u64,
        epoch: &str,
        recovered: Option<bool>,
        since: Option<u64>,
    ) -> Option<Event> {
        let reset = self.epoch.as_deref().is_some_and(|e| e != epoch) || since.is_some_and(|s| s > offset);
        if reset {
            // Another history: its offsets mean nothing to what was seen before, and
            // the server replays it from the start.
            for e in &mut self.entries {
                if e.last.is_some() {
                    e.last = Some(0);
                }
            }
            self.head = offset;
        }
        self.epoch = Some(epoch.to_owned());
        self.head = self.head.max(offset);
        self.active = true;
        if reference.is_some() && self.subscribing.as_deref() == reference {
            self.subscribing = None;
        }
        for e in &mut self.entries {
            if e.pending.is_some() && e.pending.as_deref() == reference {
                e.pending = None;
                if e.last.is_none() {
                    e.last = Some(offset.saturating_sub(e.want.history()));
                }
                e.confirm(Ok(()));
            }
        }
        (recovered == Some(false) || reset).then(|| Event::Gap {
            topic: self.name.clone(),
            since: since.unwrap_or(0),
            offset,
            reset,
        })
    }

    /// A message from the server (WebSocket or HTTP): each ready entry takes it once,
    /// in offset order, unless it already had it from the board.
    pub(crate) fn deliver_server(&mut self, m: &Message) -> Delivered {
        self.head = self.head.max(m.offset);
        let mut out = Delivered::default();
        for e in &mut self.entries {
            let Some(last) = e.last else { continue };
            if e.pending.is_some() || m.offset <= last {
                continue;
            }
            e.last = Some(m.offset);
            if e.board_seen.take(&m.id) {
                continue;
            }
            match e.offer(m.clone()) {
                Some(slow) => out.slow |= slow,
                None => out.closed = true,
            }
        }
        if out.closed {
            self.entries.retain(|e| !e.is_closed());
        }
        out
    }

    /// A message read from the board: each entry takes it once, in board order.
    pub(crate) fn deliver_board(&mut self, m: &Message) -> Delivered {
        self.board_head = self.board_head.max(m.offset);
        let mut out = Delivered::default();
        for e in &mut self.entries {
            if m.offset <= e.board_last {
                continue;
            }
            e.board_last = m.offset;
            e.board_seen.insert(&m.id);
            match e.offer(m.clone()) {
                Some(slow) => out.slow |= slow,
                None => out.closed = true,
            }
        }
        if out.closed {
            self.entries.retain(|e| !e.is_closed());
        }
        out
    }

    /// Starts every entry's board cursor at the board's current head (entering the
    /// board tier: what is older there was forwarded or will be).
    pub(crate) fn enter_board(&mut self, head: u64) {
        self.board_head = head;
        for e in &mut self.entries {
            e.board_last = head;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn msg(offset: u64, id: &str) -> Message {
        Message {
            topic: "t".into(),
            id: id.into(),
            offset,
            timestamp: String::new(),
            from_agent: "a".into(),
            to_agent: None,
            content: json!(offset),
            in_reply_to: None,
            meta: None,
            replay: None,
        }
    }

    fn entry(ts: &mut TopicState, id: u64, want: Want, cap: usize) -> mpsc::Receiver<Message> {
        let (tx, rx) = mpsc::channel(cap);
        let (ready, _) = oneshot::channel();
        ts.entries.push(Entry::new(id, tx, want, ready));
        rx
    }

    fn drain(rx: &mut mpsc::Receiver<Message>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(m.offset);
        }
        out
    }

    #[test]
    fn a_replay_after_reconnect_fills_each_gap_without_duplicates() {
        let mut ts = TopicState::new("t");
        let mut a = entry(&mut ts, 1, Want::Live, 100);
        let p = ts.plan("u1");
        assert_eq!(p, Plan { since: None, history: 0 });
        assert!(ts.subscribed(Some("u1"), 3, "e", None, None).is_none());
        for o in 4..=6 {
            ts.deliver_server(&msg(o, &o.to_string()));
        }
        let mut b = entry(&mut ts, 2, Want::Live, 100);
        ts.entries[1].last = Some(ts.head);
        ts.deliver_server(&msg(7, "7"));
        ts.link_lost();
        // Reconnect: resume after the smallest offset any entry has; the replay
        // overlaps, entries take only what they lack.
        assert_eq!(ts.plan("u2"), Plan { since: Some(7), history: 0 });
        ts.subscribed(Some("u2"), 9, "e", Some(true), Some(7));
        for o in 5..=9 {
            ts.deliver_server(&msg(o, &o.to_string()));
        }
        assert_eq!(drain(&mut a), [4, 5, 6, 7, 8, 9]);
        assert_eq!(drain(&mut b), [7, 8, 9]);
    }

    #[test]
    fn history_entries_start_n_before_the_subscribed_offset() {
        let mut ts = TopicState::new("t");
        let mut h = entry(&mut ts, 1, Want::History(2), 100);
        assert_eq!(ts.plan("u1"), Plan { since: None, history: 2 });
        ts.subscribed(Some("u1"), 10, "e", None, None);
        for o in 9..=11 {
            ts.deliver_server(&msg(o, &o.to_string()));
        }
        assert_eq!(drain(&mut h), [9, 10, 11]);
    }

    #[test]
    fn a_new_epoch_is_a_gap_that_restarts_the_replay() {
        let mut ts = TopicState::new("t");
        let mut a = entry(&mut ts, 1, Want::Since(5), 100);
        ts.epoch = Some("old".into());
        let gap = ts.subscribed(None, 2, "new", Some(false), Some(5)).unwrap();
        assert_eq!(gap, Event::Gap { topic: "t".into(), since: 5, offset: 2, reset: true });
        ts.deliver_server(&msg(1, "x"));
        ts.deliver_server(&msg(2, "y"));
        assert_eq!(drain(&mut a), [1, 2]);
    }

    #[test]
    fn board_messages_are_not_handed_out_again_when_they_come_back_from_the_server() {
        let mut ts = TopicState::new("t");
        let mut a = entry(&mut ts, 1, Want::Live, 100);
        ts.entries[0].last = Some(3);
        ts.enter_board(10);
        ts.deliver_board(&msg(10, "old"));
        ts.deliver_board(&msg(11, "b1"));
        ts.deliver_board(&msg(12, "b2"));
        // Back on the server: the forwarded messages replay with server offsets.
        ts.deliver_server(&msg(4, "s4"));
        ts.deliver_server(&msg(5, "b1"));
        ts.deliver_server(&msg(6, "b2"));
        ts.deliver_server(&msg(7, "s7"));
        let ids: Vec<String> = std::iter::from_fn(|| a.try_recv().ok()).map(|m| m.id).collect();
        assert_eq!(ids, ["b1", "b2", "s4", "s7"]);
    }

    #[test]
    fn a_full_subscription_raises_one_slow_consumer_per_episode_and_a_dropped_one_is_removed() {
        let mut ts = TopicState::new("t");
        let mut a = entry(&mut ts, 1, Want::Live, 2);
        ts.entries[0].last = Some(0);
        let slow: Vec<bool> = (1..=5).map(|o| ts.deliver_server(&msg(o, &o.to_string())).slow).collect();
        assert_eq!(slow, [false, false, true, false, false]);
        assert_eq!(drain(&mut a), [1, 2]);
        assert!(!ts.deliver_server(&msg(6, "6")).slow);
        assert!(!ts.deliver_server(&msg(7, "7")).slow);
        assert!(ts.deliver_server(&msg(8, "8")).slow);
        drop(a);
        assert!(ts.deliver_server(&msg(9, "9")).closed);
        assert!(ts.entries.is_empty());
    }

    #[test]
    fn pending_entries_wait_for_their_own_answer() {
        let mut ts = TopicState::new("t");
        let mut a = entry(&mut ts, 1, Want::Live, 100);
        ts.plan("u1");
        ts.subscribed(Some("u1"), 5, "e", None, None);
        let mut b = entry(&mut ts, 2, Want::Since(2), 100);
        ts.entries[1].pending = Some("u2".into());
        ts.deliver_server(&msg(6, "6"));
        ts.subscribed(Some("u2"), 6, "e", Some(true), Some(2));
        for o in 3..=7 {
            ts.deliver_server(&msg(o, &o.to_string()));
        }
        assert_eq!(drain(&mut a), [6, 7]);
        assert_eq!(drain(&mut b), [3, 4, 5, 6, 7]);
    }
}
