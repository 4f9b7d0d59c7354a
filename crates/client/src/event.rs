//! The transports of the chain and the connection events a client reports.

use std::fmt;

/// One tier of the transport chain, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// WebSocket to the server: real time, the default.
    Websocket,
    /// HTTP to the same server, when WebSocket upgrades are refused: publish with
    /// `POST`, receive with Server-Sent Events resumed by offset.
    Http,
    /// The local board: a SQLite file shared by the agents of one machine, used with no
    /// server at all. What is sent there is forwarded when a server is reached again.
    Board,
}

impl Transport {
    /// Every transport, in the default order of preference.
    pub const ALL: [Transport; 3] = [Transport::Websocket, Transport::Http, Transport::Board];

    /// The name used in logs and by the CLI: `websocket`, `http` or `board`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Websocket => "websocket",
            Self::Http => "http",
            Self::Board => "board",
        }
    }

    /// Whether this transport reaches the server (WebSocket or HTTP).
    pub fn is_server(self) -> bool {
        !matches!(self, Self::Board)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happened to the client's connection, from
/// [`Client::events`](crate::Client::events).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The first transport came up.
    Connected {
        /// The transport in use.
        transport: Transport,
    },
    /// The transport in use was lost; the client reconnects on its own. Sends wait in
    /// the queue meanwhile.
    Disconnected {
        /// The transport that was lost.
        transport: Transport,
    },
    /// A transport came up again after [`Event::Disconnected`]; every subscription has
    /// been renewed from its last offset.
    Reconnected {
        /// The transport in use now.
        transport: Transport,
    },
    /// The client moved to another tier of the chain (down when a better one failed,
    /// up when a probe found it back).
    TransportChanged {
        /// The tier used before.
        from: Transport,
        /// The tier used now.
        to: Transport,
    },
    /// The server could not replay everything a subscription missed (`recovered:
    /// false`): retention removed some messages, or the topic's history was reset.
    Gap {
        /// The topic.
        topic: String,
        /// The offset the client resumed after.
        since: u64,
        /// The topic's last offset on the server when it answered.
        offset: u64,
        /// True when the topic's history was reset (another epoch): the replay starts
        /// again from the beginning of the new history.
        reset: bool,
    },
    /// A subscription's channel was full: messages for it were dropped instead of
    /// blocking the connection. Raised once per overflow episode.
    SlowConsumer {
        /// The topic of the subscription.
        topic: String,
    },
    /// Messages sent on the board while the server was away were forwarded to it.
    Forwarded {
        /// How many messages this round forwarded.
        count: usize,
    },
}
