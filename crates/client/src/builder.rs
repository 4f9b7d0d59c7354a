//! [`ClientBuilder`]: every setting of a client, checked once, then `connect()`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agentbus_protocol::AgentId;
use reqwest::Url;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::board::default_board_path;
use crate::client::Client;
use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Transport;
use crate::http::{http_base, ws_url};

/// Sends that may wait for a transport at once, by default.
pub const DEFAULT_SEND_QUEUE: usize = 10_000;
/// Messages a subscription buffers before it is a slow consumer, by default.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 1024;

/// One server of the bus, as the two server tiers reach it.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub ws_url: Url,
    pub http_base: Url,
}

/// The settings the connection task runs with.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// The servers, in the order given; a connection attempt starts with the last one
    /// that worked.
    pub servers: Vec<Server>,
    pub agent_id: String,
    pub token: Option<String>,
    pub capabilities: Vec<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub board_path: PathBuf,
    pub transports: Vec<Transport>,
    /// Capacity of the queue of sends waiting for a transport; when it is full `send`
    /// fails with [`ErrorKind::QueueFull`].
    pub send_queue: usize,
    pub subscription_capacity: usize,
    /// How long the server may be unreachable after a drop before the client moves to
    /// the board (sends wait in memory meanwhile).
    pub board_fallback_after: Duration,
    pub reconnect_base: Duration,
    pub reconnect_cap: Duration,
    pub probe_base: Duration,
    pub probe_cap: Duration,
    pub board_poll: Duration,
    pub keepalive: Duration,
}

/// Builds a [`Client`]: `Client::builder(url)…connect().await`.
///
/// ```no_run
/// # async fn demo() -> Result<(), agentbus::Error> {
/// use std::time::Duration;
/// use agentbus::{Client, Transport};
///
/// let client = Client::builder("ws://localhost:3030")
///     .agent_id("planner")
///     .capabilities(["plan", "review"])
///     .connect_timeout(Duration::from_secs(3))
///     .request_timeout(Duration::from_secs(10))
///     .transports([Transport::Websocket, Transport::Http, Transport::Board])
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    failover: Vec<String>,
    agent_id: Option<String>,
    token: Option<String>,
    capabilities: Vec<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    board_path: Option<PathBuf>,
    transports: Vec<Transport>,
    send_queue: usize,
    subscription_capacity: usize,
    board_fallback_after: Duration,
    reconnect_cap: Duration,
}

impl ClientBuilder {
    pub(crate) fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            failover: Vec::new(),
            agent_id: None,
            token: None,
            capabilities: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            board_path: None,
            transports: Transport::ALL.to_vec(),
            send_queue: DEFAULT_SEND_QUEUE,
            subscription_capacity: DEFAULT_SUBSCRIPTION_CAPACITY,
            board_fallback_after: Duration::from_secs(3),
            reconnect_cap: Duration::from_secs(5),
        }
    }

    /// The agent this client speaks for (its inbox is `@<agent_id>`). Default:
    /// `client-<random>`.
    pub fn agent_id(mut self, id: impl Into<String>) -> Self {
        self.agent_id = Some(id.into());
        self
    }

    /// A token sent with `register` (the server accepts and ignores it for now).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// What the agent can do, shown in presence.
    pub fn capabilities<I, S>(mut self, caps: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.capabilities = caps.into_iter().map(Into::into).collect();
        self
    }

    /// How long one connection attempt (one tier) may take. Default 5 s.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// How long `send`, `subscribe`, `history`, `search` and `presence` wait for their
    /// answer. Default 10 s. A send that times out stays queued.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// The board file. Default: `$AGENTBUS_BOARD`, else
    /// `$XDG_DATA_HOME/agentbus/board.db` (see [`default_board_path`]).
    pub fn board_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.board_path = Some(path.into());
        self
    }

    /// The transport chain, best first. Default: WebSocket, HTTP, board. Leaving out
    /// [`Transport::Board`] makes sends wait in memory while the server is away.
    pub fn transports(mut self, chain: impl IntoIterator<Item = Transport>) -> Self {
        let mut seen = Vec::new();
        for t in chain {
            if !seen.contains(&t) {
                seen.push(t);
            }
        }
        self.transports = seen;
        self
    }

    /// Sends that may wait for a transport at once. Default 10,000.
    pub fn send_queue_capacity(mut self, n: usize) -> Self {
        self.send_queue = n.max(1);
        self
    }

    /// Messages each subscription buffers before it counts as a slow consumer (and
    /// drops). Default 1024; [`SubscribeOptions`](crate::SubscribeOptions) can change
    /// it per subscription.
    pub fn subscription_capacity(mut self, n: usize) -> Self {
        self.subscription_capacity = n.max(1);
        self
    }

    /// How long the server may stay unreachable after a drop before the client moves
    /// down to the board. Default 3 s. (At start-up the chain is tried at once.)
    pub fn board_fallback_after(mut self, t: Duration) -> Self {
        self.board_fallback_after = t;
        self
    }

    /// The longest wait between reconnect attempts. Default 5 s.
    pub fn max_reconnect_delay(mut self, t: Duration) -> Self {
        self.reconnect_cap = t.max(Duration::from_millis(100));
        self
    }

    /// Another server of the same bus (servers sharing one Redis, see the server's
    /// `--redis`), tried in turn when the others cannot be reached: the client moves to
    /// it and recovers its subscriptions by offset, as after any reconnection. May be
    /// given several times.
    pub fn failover(mut self, url: impl Into<String>) -> Self {
        self.failover.push(url.into());
        self
    }

    fn options(self) -> Result<Options> {
        let mut servers = Vec::with_capacity(1 + self.failover.len());
        for url in std::iter::once(&self.url).chain(&self.failover) {
            let parsed = Url::parse(url)
                .map_err(|e| Error::with_source(ErrorKind::InvalidUrl, format!("invalid url {url:?}"), e))?;
            servers.push(Server { ws_url: ws_url(&parsed)?, http_base: http_base(&parsed)? });
        }
        let agent_id = self.agent_id.unwrap_or_else(|| format!("client-{:08x}", fastrand::u32(..)));
        AgentId::new(&agent_id)
            .map_err(|e| Error::with_source(ErrorKind::InvalidName, format!("invalid agent id {agent_id:?}"), e))?;
        if self.transports.is_empty() {
            return Err(Error::new(ErrorKind::InvalidUrl, "the transport chain is empty"));
        }
        Ok(Options {
            servers,
            agent_id,
            token: self.token,
            capabilities: self.capabilities,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            board_path: self.board_path.unwrap_or_else(default_board_path),
            transports: self.transports,
            send_queue: self.send_queue,
            subscription_capacity: self.subscription_capacity,
            board_fallback_after: self.board_fallback_after,
            reconnect_base: Duration::from_millis(100),
            reconnect_cap: self.reconnect_cap,
            probe_base: Duration::from_millis(250),
            probe_cap: Duration::from_secs(5),
            board_poll: Duration::from_millis(100),
            keepalive: Duration::from_secs(15),
        })
    }

    /// Starts the connection task and waits until the first transport of the chain
    /// that works is up (each tried once, in order). Fails when none is.
    pub async fn connect(self) -> Result<Client> {
        let opts = Arc::new(self.options()?);
        let (cmd_tx, cmd_rx) = mpsc::channel(crate::engine::COMMAND_QUEUE);
        let (events, _) = broadcast::channel(crate::engine::EVENT_QUEUE);
        let (state_tx, state_rx) = watch::channel(None);
        let (ready_tx, ready_rx) = oneshot::channel();
        let engine = Engine::new(opts.clone(), cmd_rx, events.clone(), state_tx, ready_tx);
        tokio::spawn(engine.run());
        match ready_rx.await {
            Ok(Ok(transport)) => {
                tracing::debug!(%transport, agent = opts.agent_id, "agentbus client connected");
                Ok(Client::new(opts, cmd_tx, events, state_rx))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::closed()),
        }
    }
}
