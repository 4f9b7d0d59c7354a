//! What the broker is asked and answers: its commands, where replies go, acks, counts
//! and settings.

use std::sync::Arc;
use std::time::Instant;

use agentbus_protocol::{
    AgentId, AgentPresence, FrameError, MessageDraft, Ref, RegisterFrame, SubscribeFrame, TopicInfo, TopicName,
};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::outbox::Outbox;
use crate::store::Cursor;

/// Identifies one connection (WebSocket or SSE stream) for the life of the server.
pub type ConnId = u64;

/// Where a reply goes: a connection's outbox (as a frame with the client's `ref`) or
/// an HTTP handler waiting on a oneshot.
pub enum Reply<T> {
    /// Serialize into this outbox.
    Outbox(Arc<Outbox>, Option<Ref>),
    /// Hand the value to a waiting handler.
    Oneshot(oneshot::Sender<T>),
}

/// An acknowledged publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The message id.
    pub id: String,
    /// Where it was stored.
    pub topic: TopicName,
    /// Its offset.
    pub offset: u64,
    /// Subscriptions it was delivered to.
    pub delivered: usize,
    /// True when the id was already stored and nothing was delivered again.
    pub duplicate: bool,
}

/// Where the ack (or error) of a publish goes.
pub type Origin = Reply<Result<Ack, FrameError>>;

/// A publish, prepared by the connection or handler that received it.
pub struct Publish {
    /// Destination topic (an inbox for direct messages).
    pub topic: TopicName,
    /// Message id.
    pub id: String,
    /// Whether the client chose the id (the send is then idempotent).
    pub client_id: bool,
    /// The sender.
    pub from_agent: Arc<str>,
    /// Receive time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Receive instant, for latency metrics.
    pub received: Instant,
    /// The encoded message, lacking its offset.
    pub draft: MessageDraft,
    /// Where the ack goes.
    pub origin: Origin,
}

/// A request to the broker.
pub enum Command {
    /// A connection opened; frames for it go to `outbox`.
    Open {
        /// The connection.
        conn: ConnId,
        /// Its outbox.
        outbox: Arc<Outbox>,
    },
    /// A connection closed: drop its subscriptions and presence.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// `register`.
    Register {
        /// The connection.
        conn: ConnId,
        /// The validated frame.
        frame: RegisterFrame,
        /// The client's `ref`.
        reference: Option<Ref>,
    },
    /// `subscribe`.
    Subscribe {
        /// The connection.
        conn: ConnId,
        /// The validated frame.
        frame: SubscribeFrame,
        /// The client's `ref`.
        reference: Option<Ref>,
    },
    /// `unsubscribe`.
    Unsubscribe {
        /// The connection.
        conn: ConnId,
        /// The topic.
        topic: TopicName,
        /// The client's `ref`.
        reference: Option<Ref>,
    },
    /// `send` or HTTP publish.
    Publish(Box<Publish>),
    /// A connection of `agent` wrote its inbox messages up to `offset` to the socket:
    /// they are not handed over again when the agent next registers.
    InboxDelivered {
        /// The agent.
        agent: AgentId,
        /// The last inbox offset written.
        offset: u64,
    },
    /// Counts for the metrics gauges.
    Stats {
        /// Where the answer goes.
        reply: oneshot::Sender<Stats>,
    },
    /// Agents online (optionally only those following `topic`).
    Presence {
        /// The filter.
        topic: Option<TopicName>,
        /// Where the answer goes.
        reply: Reply<Vec<AgentPresence>>,
    },
    /// Every known topic.
    Topics {
        /// Where the answer goes.
        reply: oneshot::Sender<Vec<TopicInfo>>,
    },
    /// Answer with the topic's last committed offset as soon as it exceeds `after`
    /// (long-poll).
    WaitFor {
        /// The topic.
        topic: TopicName,
        /// The offset the caller has.
        after: u64,
        /// Fired with the last committed offset.
        reply: oneshot::Sender<u64>,
    },
    /// Time for every connection to check that its client is alive.
    PingAll,
    /// The server is shutting down: close every outbox, now and on opening.
    Shutdown,
    /// A message another server stored in the shared store.
    Remote {
        /// Its topic.
        topic: TopicName,
        /// Its offset.
        offset: u64,
        /// The frame.
        frame: Utf8Bytes,
    },
    /// The shared store holds `topic` up to `last` (after the feed was away).
    CaughtUp {
        /// The topic.
        topic: TopicName,
        /// Its newest offset.
        last: u64,
    },
    /// An agent's inbox cursor advanced on another server.
    RemoteCursor(Cursor),
    /// This server's agents only (for the other servers of a shared store).
    LocalPresence {
        /// Where the answer goes.
        reply: oneshot::Sender<Vec<AgentPresence>>,
    },
    /// The agents connected to the other servers of a shared store, replacing the last
    /// such list.
    RemotePresence(Vec<AgentPresence>),
}

/// The broker's counts, for the metrics gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Open connections and SSE streams.
    pub connections: usize,
    /// Agents online.
    pub agents: usize,
    /// Known topics.
    pub topics: usize,
    /// Live subscriptions.
    pub subscriptions: usize,
    /// Whether the store's writer is running (it stops only by a fault).
    pub store_writer_running: bool,
}

/// Settings of the broker.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Name and version reported in `registered`.
    pub server_name: String,
    /// Unique to this run: prefixes sessions.
    pub boot_epoch: String,
    /// Epoch given to the topics this run creates (the run's own, or the bus's when the
    /// store is shared).
    pub topic_epoch: String,
    /// Offsets are given by a store shared with other servers: the broker's are
    /// provisional, client ids are checked by the store, and other servers' messages
    /// arrive as [`Command::Remote`].
    pub shared_store: bool,
    /// Client ids remembered for idempotency.
    pub dedupe_window: usize,
    /// Most subscriptions per connection.
    pub max_subscriptions: usize,
    /// Waiters (long-polls) allowed per topic.
    pub max_waiters: usize,
}
