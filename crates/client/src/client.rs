//! [`Client`]: the cheap `Clone` handle. Every method turns into a [`Command`] on the
//! connection task's bounded queue and waits for its answer on a oneshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentbus_protocol::{AgentId, AgentPresence, Message, SearchHit, TopicName};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::builder::{ClientBuilder, Options};
use crate::draft::{Ack, Draft};
use crate::engine::{Answer, Command, Query};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, Transport};
use crate::ids::IdGen;
use crate::subscription::{SubscribeOptions, Subscription};
use crate::topics::Want;

struct Inner {
    opts: Arc<Options>,
    /// The connection task's command queue (bounded: callers wait when it is full).
    cmds: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    transport: watch::Receiver<Option<Transport>>,
    ids: IdGen,
    next_sub: AtomicU64,
}

/// A connection to the bus: a cheap `Clone` handle over one background task that owns
/// the transport and every subscription, reconnects on its own and moves along the
/// transport chain (WebSocket, HTTP, local board) as the server comes and goes.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("agent_id", &self.inner.opts.agent_id)
            .field("transport", &self.transport())
            .finish()
    }
}

fn topic_name(topic: &str) -> Result<()> {
    TopicName::new(topic)
        .map(drop)
        .map_err(|e| Error::with_source(ErrorKind::InvalidName, format!("invalid topic {topic:?}"), e))
}

fn agent_name(agent: &str) -> Result<()> {
    AgentId::new(agent)
        .map(drop)
        .map_err(|e| Error::with_source(ErrorKind::InvalidName, format!("invalid agent id {agent:?}"), e))
}

impl Client {
    /// Starts building a client for the bus at `url` (`ws://host:port`; an
    /// `http://` URL means the same server).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// Connects with the default settings.
    pub async fn connect(url: impl Into<String>) -> Result<Client> {
        ClientBuilder::new(url).connect().await
    }

    pub(crate) fn new(
        opts: Arc<Options>,
        cmds: mpsc::Sender<Command>,
        events: broadcast::Sender<Event>,
        transport: watch::Receiver<Option<Transport>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner { opts, cmds, events, transport, ids: IdGen::new(), next_sub: AtomicU64::new(1) }),
        }
    }

    /// The agent this client speaks for.
    pub fn agent_id(&self) -> &str {
        &self.inner.opts.agent_id
    }

    /// The board file this client falls back to (and forwards from).
    pub fn board_path(&self) -> &std::path::Path {
        &self.inner.opts.board_path
    }

    /// The transport in use, or `None` while reconnecting.
    pub fn transport(&self) -> Option<Transport> {
        *self.inner.transport.borrow()
    }

    /// Waits until `transport` is the one in use (for example after the server came
    /// back), up to `timeout`.
    pub async fn wait_for_transport(&self, transport: Transport, timeout: Duration) -> Result<()> {
        let mut rx = self.inner.transport.clone();
        tokio::time::timeout(timeout, rx.wait_for(|t| *t == Some(transport)))
            .await
            .map_err(|_| Error::new(ErrorKind::Timeout, format!("{transport} did not come up in time")))?
            .map(drop)
            .map_err(|_| Error::closed())
    }

    /// Connection events from now on: connected, disconnected, reconnected, transport
    /// changes, gaps, slow consumers. Each call gets its own stream; a stream that
    /// falls more than 1024 events behind skips the oldest.
    pub fn events(&self) -> impl Stream<Item = Event> + Send + Unpin + 'static {
        let rx = self.inner.events.subscribe();
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(e) => return Some((e, rx)),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "event stream fell behind");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }))
    }

    async fn command(&self, cmd: Command) -> Result<()> {
        self.inner.cmds.send(cmd).await.map_err(|_| Error::closed())
    }

    async fn answer<T>(&self, what: &str, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.inner.opts.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::disconnected(what)),
            Err(_) => Err(Error::new(ErrorKind::Timeout, format!("{what}: no answer in time"))),
        }
    }

    /// Follows `topic` from now on. See [`Client::subscribe_with`].
    pub async fn subscribe(&self, topic: &str) -> Result<Subscription> {
        self.subscribe_with(topic, SubscribeOptions::default()).await
    }

    /// Follows `topic`, optionally starting with stored messages. Returns once the
    /// subscription is in place: anything published after that is delivered. (While
    /// no transport is up it returns at once; the subscription starts with the next
    /// one.) Across
    /// reconnects the subscription resumes after the last offset it received, so it
    /// sees every message once and in order (or an [`Event::Gap`] says what the server
    /// could no longer replay). Subscribe to `@<your agent id>` for direct messages.
    pub async fn subscribe_with(&self, topic: &str, options: SubscribeOptions) -> Result<Subscription> {
        topic_name(topic)?;
        let capacity = options.capacity.unwrap_or(self.inner.opts.subscription_capacity);
        let (tx, rx) = mpsc::channel(capacity);
        let id = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
        let want = match (options.since, options.history) {
            (Some(s), _) => Want::Since(s),
            (None, 0) => Want::Live,
            (None, h) => Want::History(h),
        };
        let (ready, ready_rx) = oneshot::channel();
        self.command(Command::Subscribe { topic: topic.to_owned(), id, want, tx, ready }).await?;
        let sub = Subscription::new(topic.to_owned(), id, rx, self.inner.cmds.clone());
        self.answer("subscribe", ready_rx).await?;
        Ok(sub)
    }

    /// Calls `callback` for every message of `topic` on a task of its own, until the
    /// returned handle is aborted or the client closes.
    pub async fn on<F>(&self, topic: &str, mut callback: F) -> Result<tokio::task::JoinHandle<()>>
    where
        F: FnMut(Message) + Send + 'static,
    {
        let mut sub = self.subscribe(topic).await?;
        Ok(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                callback(m);
            }
        }))
    }

    /// Publishes `content` (any JSON value: `"text"`, `json!({...})`, numbers) to
    /// `topic` and waits for the acknowledgement. See [`Client::publish`] for the
    /// other fields.
    pub async fn send(&self, topic: &str, content: impl Into<Value>) -> Result<Ack> {
        self.publish(topic).content(content).send().await
    }

    /// Sends `content` to `agent`'s inbox `@<agent>`.
    pub async fn send_direct(&self, agent: &str, content: impl Into<Value>) -> Result<Ack> {
        agent_name(agent)?;
        self.publish(&format!("@{agent}")).to_agent(agent).content(content).send().await
    }

    /// A message to build: `client.publish("tasks").content(..).to_agent("coder").send()`.
    /// `topic` may be an inbox `@<agent>` (a direct message).
    pub fn publish(&self, topic: &str) -> Publish {
        Publish {
            client: self.clone(),
            topic: topic.to_owned(),
            content: Value::Null,
            to_agent: None,
            id: None,
            in_reply_to: None,
            meta: None,
        }
    }

    /// Answers `message`: on its topic, or to its sender's inbox when it came to an
    /// inbox, with `in_reply_to` set to its id.
    pub async fn reply(&self, message: &Message, content: impl Into<Value>) -> Result<Ack> {
        let p = if message.topic.starts_with('@') {
            self.publish(&format!("@{}", message.from_agent)).to_agent(&message.from_agent)
        } else {
            self.publish(&message.topic)
        };
        p.in_reply_to(&message.id).content(content).send().await
    }

    /// Sends `content` with a fresh id and returns the first message whose
    /// `in_reply_to` is that id. `target` is a topic (replies are expected on that
    /// topic, which the client follows while it waits) or `@<agent>` (replies are
    /// expected in this client's inbox).
    pub async fn request(&self, target: &str, content: impl Into<Value>, timeout: Duration) -> Result<Message> {
        topic_name(target)?;
        let id = self.inner.ids.next();
        let mut p = self.publish(target).content(content).id(&id);
        if let Some(agent) = target.strip_prefix('@') {
            p = p.to_agent(agent);
        }
        let draft = p.draft()?;
        let watch = (!target.starts_with('@')).then(|| target.to_owned());
        let (reply, reply_rx) = oneshot::channel();
        let (ack, ack_rx) = oneshot::channel();
        self.command(Command::Request { draft, watch: watch.clone(), reply, ack }).await?;
        let wait = async {
            // The reply is kept by its oneshot even if it comes before the ack.
            if let Ok(Err(e)) = ack_rx.await {
                return Err(e);
            }
            reply_rx.await.map_err(|_| Error::closed())
        };
        let result = tokio::time::timeout(timeout, wait).await;
        if !matches!(result, Ok(Ok(_))) {
            let _ = self.inner.cmds.try_send(Command::CancelRequest { id: id.clone(), watch: watch.clone() });
        } else if watch.is_some() {
            let _ = self.inner.cmds.try_send(Command::CancelRequest { id, watch });
        }
        match result {
            Ok(r) => r,
            Err(_) => Err(Error::new(ErrorKind::Timeout, format!("no reply to {target} within {timeout:?}"))),
        }
    }

    /// The newest `limit` stored messages of `topic`, oldest first (from the board
    /// when the server is away).
    pub async fn history(&self, topic: &str, limit: u64) -> Result<Vec<Message>> {
        topic_name(topic)?;
        let (reply, rx) = oneshot::channel();
        self.command(Command::Query { query: Query::History { topic: topic.to_owned(), limit }, reply }).await?;
        match self.answer("history", rx).await? {
            Answer::Messages(m) => Ok(m),
            _ => Err(Error::new(ErrorKind::Protocol, "unexpected answer to history")),
        }
    }

    /// Full-text search over stored messages, best first (from the board when the
    /// server is away).
    pub async fn search(&self, query: &str, topic: Option<&str>) -> Result<Vec<SearchHit>> {
        if let Some(t) = topic {
            topic_name(t)?;
        }
        let q = Query::Search { query: query.to_owned(), topic: topic.map(str::to_owned), limit: 20 };
        let (reply, rx) = oneshot::channel();
        self.command(Command::Query { query: q, reply }).await?;
        match self.answer("search", rx).await? {
            Answer::Hits(h) => Ok(h),
            _ => Err(Error::new(ErrorKind::Protocol, "unexpected answer to search")),
        }
    }

    /// The agents online. Needs the server ([`ErrorKind::Unsupported`] on the board).
    pub async fn presence(&self) -> Result<Vec<AgentPresence>> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Query { query: Query::Presence { topic: None }, reply }).await?;
        match self.answer("presence", rx).await? {
            Answer::Agents(a) => Ok(a),
            _ => Err(Error::new(ErrorKind::Protocol, "unexpected answer to presence")),
        }
    }

    /// Closes the client: waits (up to the request timeout) for queued sends and
    /// board forwarding to be acknowledged, closes the transport and ends every
    /// subscription stream. Other handles get [`ErrorKind::Closed`] afterwards.
    pub async fn close(&self) -> Result<()> {
        let (done, rx) = oneshot::channel();
        if self.inner.cmds.send(Command::Close { done }).await.is_err() {
            return Ok(());
        }
        let _ = rx.await;
        Ok(())
    }

    pub(crate) async fn submit(&self, draft: Draft) -> Result<Ack> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Send { draft, reply: Some(reply) }).await?;
        match tokio::time::timeout(self.inner.opts.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::closed()),
            Err(_) => Err(Error::new(ErrorKind::Timeout, "no acknowledgement in time; the send stays queued")),
        }
    }
}

/// A message being built by [`Client::publish`]; [`Publish::send`] publishes it.
#[derive(Debug, Clone)]
#[must_use = "a Publish does nothing until .send() is awaited"]
pub struct Publish {
    client: Client,
    topic: String,
    content: Value,
    to_agent: Option<String>,
    id: Option<String>,
    in_reply_to: Option<String>,
    meta: Option<Value>,
}

impl Publish {
    /// The payload, any JSON value (default `null`).
    pub fn content(mut self, content: impl Into<Value>) -> Self {
        self.content = content.into();
        self
    }

    /// The addressee, recorded with the message (for a topic `@<agent>`, the default).
    pub fn to_agent(mut self, agent: &str) -> Self {
        self.to_agent = Some(agent.to_owned());
        self
    }

    /// A client-chosen id (default: a fresh unique one). A resend with the same id is
    /// acknowledged again and never delivered twice.
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.to_owned());
        self
    }

    /// The id of the message this one answers.
    pub fn in_reply_to(mut self, id: &str) -> Self {
        self.in_reply_to = Some(id.to_owned());
        self
    }

    /// Free-form metadata (must be a JSON object).
    pub fn meta(mut self, meta: Value) -> Self {
        self.meta = Some(meta);
        self
    }

    fn draft(self) -> Result<Draft> {
        topic_name(&self.topic)?;
        let to_agent = self.to_agent.or_else(|| self.topic.strip_prefix('@').map(str::to_owned));
        if let Some(a) = &to_agent {
            agent_name(a)?;
        }
        for (what, v) in [("id", &self.id), ("in_reply_to", &self.in_reply_to)] {
            if let Some(v) = v
                && (v.is_empty() || v.len() > 128)
            {
                return Err(Error::new(ErrorKind::InvalidName, format!("`{what}` must be 1 to 128 bytes")));
            }
        }
        if self.meta.as_ref().is_some_and(|m| !m.is_object()) {
            return Err(Error::new(ErrorKind::InvalidName, "`meta` must be a JSON object"));
        }
        let inner = &self.client.inner;
        Ok(Draft {
            topic: self.topic,
            to_agent,
            direct: false,
            content: self.content,
            id: self.id.unwrap_or_else(|| inner.ids.next()),
            in_reply_to: self.in_reply_to,
            meta: self.meta,
            from_agent: inner.opts.agent_id.clone(),
        })
    }

    /// Publishes and waits for the acknowledgement (from the server, or from the board
    /// when the server is away). Sent while no transport is up, the message waits in
    /// the send queue and goes out, with its id, as soon as one is.
    pub async fn send(self) -> Result<Ack> {
        let client = self.client.clone();
        let draft = self.draft()?;
        client.submit(draft).await
    }
}
