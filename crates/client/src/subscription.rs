//! [`Subscription`]: a stream of the messages of one topic, fed by the connection task
//! through a bounded channel.

use std::pin::Pin;
use std::task::{Context, Poll};

use agentbus_protocol::Message;
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::engine::Command;
use crate::error::{Error, Result};

/// Where a subscription starts and how much it buffers; see
/// [`Client::subscribe_with`](crate::Client::subscribe_with).
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    pub(crate) history: u64,
    pub(crate) since: Option<u64>,
    pub(crate) capacity: Option<usize>,
}

impl SubscribeOptions {
    /// Live messages only (the default).
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts with the newest `n` stored messages.
    pub fn history(mut self, n: u64) -> Self {
        self.history = n;
        self
    }

    /// Starts with every stored message after this server offset (resuming where an
    /// earlier subscription stopped).
    pub fn since(mut self, offset: u64) -> Self {
        self.since = Some(offset);
        self
    }

    /// How many messages this subscription buffers before it drops them and raises
    /// [`Event::SlowConsumer`](crate::Event::SlowConsumer).
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = Some(n.max(1));
        self
    }
}

/// The messages of one topic, in order and each once, across reconnects: a
/// [`Stream`] of [`Message`]. Dropping it unsubscribes.
///
/// Each subscription has its own bounded buffer. The connection task never waits for
/// a subscriber: when the buffer is full it drops the message and raises
/// [`Event::SlowConsumer`](crate::Event::SlowConsumer).
#[derive(Debug)]
pub struct Subscription {
    topic: String,
    id: u64,
    rx: mpsc::Receiver<Message>,
    /// The connection task's command queue, for unsubscribing on drop (`try_send`; the
    /// task also notices a dropped subscription on its next message).
    cmds: mpsc::Sender<Command>,
    done: bool,
}

impl Subscription {
    pub(crate) fn new(topic: String, id: u64, rx: mpsc::Receiver<Message>, cmds: mpsc::Sender<Command>) -> Self {
        Self { topic, id, rx, cmds, done: false }
    }

    /// The topic followed.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next message; `None` once the client is closed.
    pub async fn next_message(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// Stops following the topic.
    pub async fn unsubscribe(mut self) -> Result<()> {
        self.done = true;
        self.cmds
            .send(Command::Unsubscribe { topic: self.topic.clone(), id: self.id })
            .await
            .map_err(|_| Error::closed())
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.cmds.try_send(Command::Unsubscribe { topic: self.topic.clone(), id: self.id });
        }
    }
}
