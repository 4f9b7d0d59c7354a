//! The connection task: the one owner of the transport, the subscriptions, the send
//! queue and the pending requests. [`Client`](crate::Client) handles reach it only
//! through its bounded command queue and get answers on oneshots.
//!
//! It runs one `select!` loop over: commands; frames from the WebSocket it owns;
//! reports of the HTTP tier's helper tasks (bounded channel; they wait when it is
//! full, and the task only `try_send`s back to them, so there is no cycle); the result
//! of the dial in flight; and its timers (reconnect, probe a better tier, board poll,
//! forwarding check, keepalive, retry).
//!
//! Transport chain: at start-up the tiers are tried in order. After a drop the server
//! tiers are retried with capped exponential backoff, sends waiting in memory; after
//! `board_fallback_after` the board joins the attempt. While on a lower tier a probe
//! (with its own backoff) tries the better ones and switches up when one answers. On a
//! server tier, messages sent on the board while the server was away are forwarded
//! first, in write order, with their ids, and marked forwarded after the acks.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use agentbus_protocol::{AgentPresence, ErrorCode, Message, SearchHit, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::backoff::Backoff;
use crate::board::{Board, BoardAck, Forwarded};
use crate::builder::Options;
use crate::draft::{Ack, Draft};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, Transport};
use crate::http::{self, HttpReport, Post};
use crate::topics::{Entry, TopicState, Want};

/// Capacity of the command queue from the handles; a full queue makes callers wait.
pub(crate) const COMMAND_QUEUE: usize = 1024;
/// Capacity of the event broadcast; a receiver further behind skips the oldest.
pub(crate) const EVENT_QUEUE: usize = 1024;
/// Capacity of the HTTP helpers' report queue; helpers wait when it is full.
const HTTP_REPORTS: usize = 1024;
/// Inbox messages kept for a later inbox subscription when nobody follows the inbox.
const UNCLAIMED_INBOX: usize = 1000;
/// Board messages forwarded per round (one lease renewal per round).
const FORWARD_BATCH: usize = 500;
/// How long the forwarding lease lasts without renewal (a crashed forwarder blocks
/// others at most this long).
const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often a client on a server tier looks for board messages to forward.
const FORWARD_CHECK: Duration = Duration::from_secs(1);
/// Messages read from the board per topic per poll.
const BOARD_PAGE: usize = 1000;
/// Retries of a send the server could not store right now (`unavailable`).
const MAX_UNAVAILABLE_RETRIES: u32 = 5;

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A read for [`Command::Query`].
#[derive(Debug)]
pub(crate) enum Query {
    History { topic: String, limit: u64 },
    Search { query: String, topic: Option<String>, limit: u64 },
    Presence { topic: Option<String> },
}

/// The answer to a [`Query`].
#[derive(Debug)]
pub(crate) enum Answer {
    Messages(Vec<Message>),
    Hits(Vec<SearchHit>),
    Agents(Vec<AgentPresence>),
}

/// What a handle asks of the connection task.
#[derive(Debug)]
pub(crate) enum Command {
    Send {
        draft: Draft,
        reply: Option<oneshot::Sender<Result<Ack>>>,
    },
    Subscribe {
        topic: String,
        id: u64,
        want: Want,
        tx: mpsc::Sender<Message>,
        ready: oneshot::Sender<Result<()>>,
    },
    Unsubscribe {
        topic: String,
        id: u64,
    },
    Request {
        draft: Draft,
        /// The topic replies come on, followed while waiting (`None`: the inbox).
        watch: Option<String>,
        reply: oneshot::Sender<Message>,
        ack: oneshot::Sender<Result<Ack>>,
    },
    CancelRequest {
        id: String,
        watch: Option<String>,
    },
    Query {
        query: Query,
        reply: oneshot::Sender<Result<Answer>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// A send waiting for its ack.
#[derive(Debug)]
struct Pending {
    draft: Draft,
    reply: Option<oneshot::Sender<Result<Ack>>>,
    /// The board row, for a forwarded message.
    seq: Option<i64>,
    /// Written to the current link (cleared when the link is lost: it is resent).
    sent: bool,
    attempts: u32,
}

/// What a dial found.
enum Dialed {
    /// A WebSocket to the server at this index of [`Options::servers`].
    Ws(Box<WsStream>, usize),
    /// HTTP to the server at this index.
    Http(usize),
    Board(Board),
}

impl Dialed {
    fn transport(&self) -> Transport {
        match self {
            Dialed::Ws(..) => Transport::Websocket,
            Dialed::Http(_) => Transport::Http,
            Dialed::Board(_) => Transport::Board,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Nothing is up: find anything.
    Reconnect,
    /// A lower tier is up: look for a better one.
    Probe,
}

struct HttpLink {
    /// The poster's queue; `try_send` only (its capacity exceeds the send queue).
    posts: mpsc::Sender<Post>,
    poster: AbortHandle,
    /// Each followed topic's event stream: its `ref` and task.
    streams: HashMap<String, (String, AbortHandle)>,
}

impl HttpLink {
    fn abort(self) {
        self.poster.abort();
        for (_, (_, task)) in self.streams {
            task.abort();
        }
    }
}

enum Link {
    Down,
    Ws(Box<WsStream>),
    Http(HttpLink),
    Board(Board),
}

#[derive(Default)]
struct Forwarding {
    /// A round is in progress: user sends wait so that they follow the older board
    /// messages.
    active: bool,
    /// The board write position read up to in this round.
    cursor: i64,
    done: Vec<(i64, Forwarded)>,
    count: usize,
    /// Messages this client may not send for their author (`forbidden` or
    /// `unauthorized` with authentication on): left on the board for a client that may.
    skip: HashSet<i64>,
}

/// Reads the next batch to forward after `cursor`, leaving out `skip`; `None` while
/// another client holds the lease. Returns the new cursor with the batch.
fn forward_batch(
    board: &Board,
    owner: &str,
    mut cursor: i64,
    skip: &HashSet<i64>,
) -> Result<Option<(i64, Vec<crate::board::Unforwarded>)>> {
    loop {
        let Some(rows) = board.begin_forward(owner, LEASE_TTL, cursor, FORWARD_BATCH)? else { return Ok(None) };
        let Some(last) = rows.last() else { return Ok(Some((cursor, rows))) };
        cursor = last.seq;
        let kept: Vec<_> = rows.into_iter().filter(|r| !skip.contains(&r.seq)).collect();
        if !kept.is_empty() {
            return Ok(Some((cursor, kept)));
        }
    }
}

#[derive(Default)]
struct Timers {
    reconnect: Option<Instant>,
    probe: Option<Instant>,
    poll: Option<Instant>,
    forward_check: Option<Instant>,
    keepalive: Option<Instant>,
    retry: Option<Instant>,
}

struct Closing {
    waiters: Vec<oneshot::Sender<()>>,
    deadline: Instant,
}

/// The connection task.
pub(crate) struct Engine {
    opts: Arc<Options>,
    /// Commands from the handles (bounded, [`COMMAND_QUEUE`]).
    cmds: mpsc::Receiver<Command>,
    /// Reports from the HTTP tier's tasks (bounded, [`HTTP_REPORTS`]).
    http_tx: mpsc::Sender<HttpReport>,
    http_rx: mpsc::Receiver<HttpReport>,
    events: broadcast::Sender<Event>,
    state: watch::Sender<Option<Transport>>,
    http: reqwest::Client,
    /// The server (index into [`Options::servers`]) of the server tiers' link, or of
    /// the last one: tried first when dialing.
    server: usize,
    board: Option<Board>,
    link: Link,
    /// Bumped at every link change; reports from an older link are ignored.
    link_gen: u64,
    current: Option<Transport>,
    last_used: Option<Transport>,
    down_since: Option<Instant>,
    dial: Option<(Purpose, oneshot::Receiver<std::result::Result<Dialed, String>>)>,
    reconnect: Backoff,
    probe: Backoff,
    timers: Timers,
    last_rx: Instant,
    topics: HashMap<String, TopicState>,
    /// In-flight subscribes: `ref` → (topic, since asked).
    sub_refs: HashMap<String, (String, Option<u64>)>,
    inbox: String,
    unclaimed: VecDeque<Message>,
    requests: HashMap<String, oneshot::Sender<Message>>,
    /// User sends not yet acked, in submission order ("send queue").
    outbox: BTreeMap<u64, Pending>,
    /// Board messages being forwarded, in board order; they go before `outbox`.
    forwards: BTreeMap<u64, Pending>,
    forwarding: Forwarding,
    next_key: u64,
    next_ref: u64,
    /// WebSocket queries waiting for their reply, by `ref`.
    calls: HashMap<String, oneshot::Sender<Result<Answer>>>,
    closing: Option<Closing>,
    ready: Option<oneshot::Sender<Result<Transport>>>,
    exit: bool,
    board_version: Option<i64>,
    board_dirty: bool,
    /// This client's name in the board's forwarding lease.
    owner: String,
    /// Set when a write failed: the loop then handles the loss.
    broken: Option<String>,
    /// False once every handle (clients and subscriptions) is dropped.
    cmds_open: bool,
}

fn best_rank(opts: &Options, t: Transport) -> usize {
    opts.transports.iter().position(|x| *x == t).unwrap_or(usize::MAX)
}

fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(16 << 20)).max_frame_size(Some(16 << 20))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Error::new(ErrorKind::Board, format!("board task failed: {e}"))))
}

/// Tries `tiers` in order, each server tier on every server starting with the one at
/// `first`; the first that works wins.
async fn dial(
    opts: Arc<Options>,
    http: reqwest::Client,
    tiers: Vec<Transport>,
    board: Option<Board>,
    first: usize,
) -> std::result::Result<Dialed, String> {
    let mut errors = Vec::new();
    let n = opts.servers.len();
    let order: Vec<usize> = (0..n).map(|k| (first + k) % n.max(1)).collect();
    for t in tiers {
        let servers = if t.is_server() { order.as_slice() } else { &order[..order.len().min(1)] };
        for &i in servers {
            match dial_one(&opts, &http, t, &board, i).await {
                Ok(d) => return Ok(d),
                Err(DialError::Refused(e)) => {
                    errors.push(e);
                    return Err(errors.join("; "));
                }
                Err(DialError::Failed(e)) => errors.push(e),
            }
        }
    }
    Err(errors.join("; "))
}

/// Why one attempt failed.
enum DialError {
    /// Credentials were refused: no other tier or server would take them either.
    Refused(String),
    /// Try the next.
    Failed(String),
}

/// One tier on the server at `server` (the board ignores it).
async fn dial_one(
    opts: &Options,
    http: &reqwest::Client,
    t: Transport,
    board: &Option<Board>,
    server: usize,
) -> std::result::Result<Dialed, DialError> {
    let Some(srv) = opts.servers.get(server) else { return Err(DialError::Failed("no server".to_owned())) };
    // With several servers, say which one failed.
    let name = |tier: &str| if opts.servers.len() > 1 { format!("{tier} {}", srv.ws_url) } else { tier.to_owned() };
    match t {
        Transport::Websocket => {
            let mut request = srv
                .ws_url
                .as_str()
                .into_client_request()
                .map_err(|e| DialError::Failed(format!("{}: {e}", name("websocket"))))?;
            if let Some(token) = &opts.token
                && let Ok(v) = tokio_tungstenite::tungstenite::http::HeaderValue::from_str(&format!("Bearer {token}"))
            {
                request.headers_mut().insert("authorization", v);
            }
            let connect = tokio_tungstenite::connect_async_with_config(request, Some(websocket_config()), true);
            match tokio::time::timeout(opts.connect_timeout, connect).await {
                Ok(Ok((ws, _))) => Ok(Dialed::Ws(Box::new(ws), server)),
                Ok(Err(tokio_tungstenite::tungstenite::Error::Http(res))) if res.status().as_u16() == 401 => {
                    // Refused credentials: another tier would be refused too.
                    Err(DialError::Refused(format!("{}: 401 unauthorized (check the token)", name("websocket"))))
                }
                Ok(Err(e)) => Err(DialError::Failed(format!("{}: {e}", name("websocket")))),
                Err(_) => Err(DialError::Failed(format!("{}: connect timed out", name("websocket")))),
            }
        }
        Transport::Http => match http::probe(http, &srv.http_base, opts.connect_timeout).await {
            Ok(()) => Ok(Dialed::Http(server)),
            Err(e) => Err(DialError::Failed(format!("{}: {e}", name("http")))),
        },
        Transport::Board => {
            let opened = match board.clone() {
                Some(b) => Ok(b),
                None => {
                    let path = opts.board_path.clone();
                    blocking(move || Board::open(&path)).await
                }
            };
            opened.map(Dialed::Board).map_err(|e| DialError::Failed(format!("board: {e}")))
        }
    }
}

async fn next_ws(link: &mut Link) -> Option<std::result::Result<WsMessage, tokio_tungstenite::tungstenite::Error>> {
    match link {
        Link::Ws(ws) => ws.next().await,
        _ => std::future::pending().await,
    }
}

async fn dial_done(
    dial: &mut Option<(Purpose, oneshot::Receiver<std::result::Result<Dialed, String>>)>,
) -> (Purpose, std::result::Result<Dialed, String>) {
    match dial {
        Some((purpose, rx)) => {
            let purpose = *purpose;
            (purpose, rx.await.unwrap_or_else(|_| Err("dial task ended".to_owned())))
        }
        None => std::future::pending().await,
    }
}

fn reference_str(r: &Option<agentbus_protocol::Ref>) -> Option<String> {
    r.as_ref().and_then(|r| r.0.as_str().map(str::to_owned))
}

impl Engine {
    pub(crate) fn new(
        opts: Arc<Options>,
        cmds: mpsc::Receiver<Command>,
        events: broadcast::Sender<Event>,
        state: watch::Sender<Option<Transport>>,
        ready: oneshot::Sender<Result<Transport>>,
    ) -> Self {
        let (http_tx, http_rx) = mpsc::channel(HTTP_REPORTS);
        let inbox = format!("@{}", opts.agent_id);
        let mut topics = HashMap::new();
        let mut inbox_state = TopicState::new(&inbox);
        inbox_state.permanent = true;
        topics.insert(inbox.clone(), inbox_state);
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &opts.token
            && let Ok(mut v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        {
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .default_headers(headers)
            .build()
            .unwrap_or_default();
        Self {
            reconnect: Backoff::new(opts.reconnect_base, opts.reconnect_cap),
            probe: Backoff::new(opts.probe_base, opts.probe_cap),
            owner: format!("{}-{:016x}", opts.agent_id, fastrand::u64(..)),
            opts,
            cmds,
            http_tx,
            http_rx,
            events,
            state,
            http,
            server: 0,
            board: None,
            link: Link::Down,
            link_gen: 0,
            current: None,
            last_used: None,
            down_since: None,
            dial: None,
            timers: Timers::default(),
            last_rx: Instant::now(),
            topics,
            sub_refs: HashMap::new(),
            inbox,
            unclaimed: VecDeque::new(),
            requests: HashMap::new(),
            outbox: BTreeMap::new(),
            forwards: BTreeMap::new(),
            forwarding: Forwarding::default(),
            next_key: 0,
            next_ref: 0,
            calls: HashMap::new(),
            closing: None,
            ready: Some(ready),
            exit: false,
            board_version: None,
            board_dirty: false,
            broken: None,
            cmds_open: true,
        }
    }

    /// Runs until the client is closed (or every handle is gone).
    pub(crate) async fn run(mut self) {
        self.start_dial(Purpose::Reconnect, self.opts.transports.clone());
        while !self.should_exit() {
            let deadline = self.next_deadline();
            tokio::select! {
                cmd = self.cmds.recv(), if self.cmds_open => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => {
                        // Every handle is gone: finish what is queued, then stop.
                        self.cmds_open = false;
                        self.begin_close(None);
                    }
                },
                frame = next_ws(&mut self.link) => self.ws_frame(frame).await,
                Some(report) = self.http_rx.recv() => self.http_report(report).await,
                (purpose, result) = dial_done(&mut self.dial) => self.dialed(purpose, result).await,
                () = tokio::time::sleep_until(deadline) => self.timers_fired().await,
            }
            if let Some(why) = self.broken.take() {
                self.link_lost(&why).await;
            }
        }
        self.shutdown().await;
    }

    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    fn new_ref(&mut self, prefix: &str) -> String {
        self.next_ref += 1;
        format!("{prefix}{}", self.next_ref)
    }

    fn on_server(&self) -> bool {
        matches!(self.link, Link::Ws(_) | Link::Http(_))
    }

    fn should_exit(&self) -> bool {
        if self.exit {
            return true;
        }
        let Some(c) = &self.closing else { return false };
        let idle = self.outbox.is_empty() && self.forwards.is_empty() && !self.forwarding.active;
        idle || Instant::now() >= c.deadline
    }

    fn next_deadline(&self) -> Instant {
        let t = &self.timers;
        [t.reconnect, t.probe, t.poll, t.forward_check, t.keepalive, t.retry, self.closing.as_ref().map(|c| c.deadline)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    fn begin_close(&mut self, done: Option<oneshot::Sender<()>>) {
        let deadline = Instant::now() + self.opts.request_timeout;
        let closing = self.closing.get_or_insert(Closing { waiters: Vec::new(), deadline });
        closing.waiters.extend(done);
        if self.current.is_none() && self.dial.is_none() && self.ready.is_none() && self.outbox.is_empty() {
            self.exit = true;
        }
    }

    async fn shutdown(&mut self) {
        self.finish_forward_round(false, false).await;
        if let Link::Ws(ws) = &mut self.link {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close()).await;
        }
        self.teardown().await;
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Err(Error::closed()));
        }
        for p in std::mem::take(&mut self.outbox).into_values() {
            if let Some(r) = p.reply {
                let _ = r.send(Err(Error::closed()));
            }
        }
        let _ = self.state.send(None);
        if let Some(c) = self.closing.take() {
            for w in c.waiters {
                let _ = w.send(());
            }
        }
    }

    // ----- commands -----

    async fn command(&mut self, cmd: Command) {
        if self.closing.is_some() {
            match cmd {
                Command::Close { done } => self.begin_close(Some(done)),
                Command::Send { reply: Some(r), .. } => {
                    let _ = r.send(Err(Error::closed()));
                }
                Command::Subscribe { ready, .. } => {
                    let _ = ready.send(Err(Error::closed()));
                }
                Command::Query { reply, .. } => {
                    let _ = reply.send(Err(Error::closed()));
                }
                Command::Request { ack, .. } => {
                    let _ = ack.send(Err(Error::closed()));
                }
                _ => {}
            }
            return;
        }
        match cmd {
            Command::Send { draft, reply } => self.send(draft, reply).await,
            Command::Subscribe { topic, id, want, tx, ready } => {
                self.subscribe(topic, Entry::new(id, tx, want, ready)).await
            }
            Command::Unsubscribe { topic, id } => {
                if let Some(ts) = self.topics.get_mut(&topic) {
                    ts.entries.retain(|e| e.id != id);
                }
                self.drop_if_unused(&topic).await;
            }
            Command::Request { draft, watch, reply, ack } => {
                self.requests.insert(draft.id.clone(), reply);
                if let Some(w) = watch {
                    let created = !self.topics.contains_key(&w);
                    let ts = self.topics.entry(w.clone()).or_insert_with(|| TopicState::new(&w));
                    ts.watchers += 1;
                    if created {
                        self.follow_new_topic(&w).await;
                    }
                }
                self.send(draft, Some(ack)).await;
            }
            Command::CancelRequest { id, watch } => {
                self.requests.remove(&id);
                if let Some(w) = watch {
                    if let Some(ts) = self.topics.get_mut(&w) {
                        ts.watchers = ts.watchers.saturating_sub(1);
                    }
                    self.drop_if_unused(&w).await;
                }
            }
            Command::Query { query, reply } => self.query(query, reply).await,
            Command::Close { done } => self.begin_close(Some(done)),
        }
    }

    async fn send(&mut self, draft: Draft, reply: Option<oneshot::Sender<Result<Ack>>>) {
        if let Link::Board(board) = &self.link {
            let board = board.clone();
            let result = blocking(move || board.append(std::slice::from_ref(&draft))).await;
            self.board_dirty = true;
            self.timers.poll = Some(Instant::now());
            let ack = result.and_then(|mut acks| {
                acks.pop().ok_or_else(|| Error::new(ErrorKind::Board, "board write returned no ack"))
            });
            if let Some(r) = reply {
                let _ = r.send(ack.map(board_ack));
            }
            return;
        }
        if !self.on_server() && self.outbox.len() >= self.opts.send_queue {
            if let Some(r) = reply {
                let _ = r.send(Err(Error::new(
                    ErrorKind::QueueFull,
                    format!("{} sends are already waiting for a transport", self.outbox.len()),
                )));
            }
            return;
        }
        self.next_key += 1;
        self.outbox.insert(self.next_key, Pending { draft, reply, seq: None, sent: false, attempts: 0 });
        self.flush().await;
    }

    async fn subscribe(&mut self, topic: String, mut entry: Entry) {
        let created = !self.topics.contains_key(&topic);
        let ts = self.topics.entry(topic.clone()).or_insert_with(|| TopicState::new(&topic));
        let is_inbox = topic == self.inbox;
        let want = entry.want();
        match &self.link {
            Link::Down => {
                entry.confirm(Ok(()));
                ts.entries.push(entry);
            }
            Link::Board(board) => {
                let (board, t) = (board.clone(), topic.clone());
                let read = blocking(move || {
                    let head = board.heads(std::slice::from_ref(&t))?.first().copied().unwrap_or(0);
                    let older = match want {
                        Want::History(h) => board.history(&t, h as usize)?,
                        _ => Vec::new(),
                    };
                    Ok((head, older))
                })
                .await;
                let Some(ts) = self.topics.get_mut(&topic) else { return };
                match read {
                    Ok((head, older)) => {
                        if created {
                            ts.board_head = head;
                        }
                        entry.board_last = older.first().map_or(ts.board_head, |m| m.offset.saturating_sub(1));
                        entry.confirm(Ok(()));
                        ts.entries.push(entry);
                        for m in older {
                            ts.deliver_board(&m);
                        }
                    }
                    Err(e) => entry.confirm(Err(e)),
                }
            }
            Link::Ws(_) | Link::Http(_) => {
                let ws = matches!(self.link, Link::Ws(_));
                if (ts.active || (is_inbox && ws)) && want == Want::Live {
                    entry.last = Some(ts.head);
                    entry.confirm(Ok(()));
                    ts.entries.push(entry);
                } else if ts.active || (ts.subscribing.is_some() && matches!(want, Want::Since(_))) {
                    let start = match want {
                        Want::History(h) => ts.head.saturating_sub(h),
                        Want::Since(s) => s,
                        Want::Live => ts.head,
                    };
                    entry.last = Some(start);
                    let reference = self.new_ref("u");
                    entry.pending = Some(reference.clone());
                    let Some(ts) = self.topics.get_mut(&topic) else { return };
                    ts.entries.push(entry);
                    self.catch_up(&topic, reference, start).await;
                } else if let Some(r) = ts.subscribing.clone() {
                    entry.pending = Some(r);
                    ts.entries.push(entry);
                } else {
                    ts.entries.push(entry);
                    self.open_topic(&topic, None).await;
                }
            }
        }
        if is_inbox && !self.unclaimed.is_empty() {
            let waiting: Vec<Message> = self.unclaimed.drain(..).collect();
            if let Some(e) = self.topics.get_mut(&topic).and_then(|ts| ts.entries.last_mut()) {
                for m in waiting {
                    e.offer(m);
                }
            }
        }
    }

    /// Starts following a topic that a request watches.
    async fn follow_new_topic(&mut self, topic: &str) {
        match &self.link {
            Link::Ws(_) | Link::Http(_) => self.open_topic(topic, None).await,
            Link::Board(board) => {
                let (board, t) = (board.clone(), topic.to_owned());
                if let Ok(heads) = blocking(move || board.heads(&[t])).await
                    && let Some(ts) = self.topics.get_mut(topic)
                {
                    ts.board_head = heads.first().copied().unwrap_or(0);
                }
            }
            Link::Down => {}
        }
    }

    /// Subscribes `topic` on the current server link, from where its entries stand.
    async fn open_topic(&mut self, topic: &str, reference: Option<String>) {
        let reference = reference.unwrap_or_else(|| self.new_ref("u"));
        let Some(ts) = self.topics.get_mut(topic) else { return };
        let plan = ts.plan(&reference);
        let epoch = ts.epoch.clone();
        self.sub_refs.insert(reference.clone(), (topic.to_owned(), plan.since));
        let http_base = self.http_base();
        match &mut self.link {
            Link::Ws(_) => {
                let mut frame = json!({"type": "subscribe", "topic": topic, "ref": reference});
                match plan.since {
                    Some(s) => {
                        frame["since"] = json!(s);
                        if let Some(e) = epoch {
                            frame["epoch"] = json!(e);
                        }
                    }
                    None => frame["history"] = json!(plan.history),
                }
                self.ws_write(vec![frame.to_string()]).await;
            }
            Link::Http(h) => {
                if let Some((_, old)) = h.streams.remove(topic) {
                    old.abort();
                }
                let task = tokio::spawn(http::stream(
                    self.http.clone(),
                    http_base,
                    http::StreamSpec {
                        link: self.link_gen,
                        topic: topic.to_owned(),
                        stream: reference.clone(),
                        plan,
                        epoch,
                    },
                    self.http_tx.clone(),
                ));
                h.streams.insert(topic.to_owned(), (reference, task.abort_handle()));
            }
            Link::Board(_) | Link::Down => {}
        }
    }

    /// Replays a topic from `since` for one new entry (waiting on `reference`).
    async fn catch_up(&mut self, topic: &str, reference: String, since: u64) {
        match &self.link {
            Link::Ws(_) => {
                let epoch = self.topics.get(topic).and_then(|t| t.epoch.clone());
                self.sub_refs.insert(reference.clone(), (topic.to_owned(), Some(since)));
                let mut frame = json!({"type": "subscribe", "topic": topic, "since": since, "ref": reference});
                if let Some(e) = epoch {
                    frame["epoch"] = json!(e);
                }
                self.ws_write(vec![frame.to_string()]).await;
            }
            // One stream per topic: reopen it from the smallest offset any entry needs.
            Link::Http(_) => self.open_topic(topic, Some(reference)).await,
            _ => {}
        }
    }

    async fn drop_if_unused(&mut self, topic: &str) {
        if !self.topics.get(topic).is_some_and(TopicState::unused) {
            return;
        }
        self.topics.remove(topic);
        match &mut self.link {
            Link::Ws(_) => {
                let frame = json!({"type": "unsubscribe", "topic": topic}).to_string();
                self.ws_write(vec![frame]).await;
            }
            Link::Http(h) => {
                if let Some((_, task)) = h.streams.remove(topic) {
                    task.abort();
                }
            }
            _ => {}
        }
    }

    async fn query(&mut self, query: Query, reply: oneshot::Sender<Result<Answer>>) {
        match &self.link {
            Link::Ws(_) => {
                let reference = self.new_ref("q");
                let frame = match &query {
                    Query::History { topic, limit } => {
                        json!({"type": "history", "topic": topic, "limit": limit, "ref": reference})
                    }
                    Query::Search { query, topic, limit } => {
                        let mut f = json!({"type": "search", "query": query, "limit": limit, "ref": reference});
                        if let Some(t) = topic {
                            f["topic"] = json!(t);
                        }
                        f
                    }
                    Query::Presence { topic } => {
                        let mut f = json!({"type": "presence", "ref": reference});
                        if let Some(t) = topic {
                            f["topic"] = json!(t);
                        }
                        f
                    }
                };
                self.calls.insert(reference, reply);
                self.ws_write(vec![frame.to_string()]).await;
            }
            Link::Http(_) => {
                let (http, base) = (self.http.clone(), self.http_base());
                tokio::spawn(async move {
                    let answer = match query {
                        Query::History { topic, limit } => {
                            http::history(&http, &base, &topic, limit).await.map(Answer::Messages)
                        }
                        Query::Search { query, topic, limit } => {
                            http::search(&http, &base, &query, topic.as_deref(), limit).await.map(Answer::Hits)
                        }
                        Query::Presence { topic } => {
                            http::presence(&http, &base, topic.as_deref()).await.map(Answer::Agents)
                        }
                    };
                    let _ = reply.send(answer);
                });
            }
            Link::Board(board) => {
                let board = board.clone();
                tokio::spawn(async move {
                    let answer = blocking(move || match query {
                        Query::History { topic, limit } => board.history(&topic, limit as usize).map(Answer::Messages),
                        Query::Search { query, topic, limit } => {
                            board.search(&query, topic.as_deref(), limit as usize).map(Answer::Hits)
                        }
                        Query::Presence { .. } => Err(Error::new(
                            ErrorKind::Unsupported,
                            "presence needs the server; the client is on the local board",
                        )),
                    })
                    .await;
                    let _ = reply.send(answer);
                });
            }
            Link::Down => {
                let _ = reply.send(Err(Error::disconnected("query")));
            }
        }
    }

    // ----- writing -----

    /// Writes frames to the WebSocket (one flush); a failure loses the link.
    async fn ws_write(&mut self, frames: Vec<String>) {
        let Link::Ws(ws) = &mut self.link else { return };
        let mut result = Ok(());
        for f in frames {
            result = ws.feed(WsMessage::Text(f.into())).await;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = ws.flush().await;
        }
        if let Err(e) = result {
            // Handled by the loop once this event is done (no recursion from here).
            self.broken.get_or_insert_with(|| format!("write failed: {e}"));
        }
    }

    /// Sends what waits: board forwards first, then (once forwarding is done) the
    /// user's sends, in order.
    async fn flush(&mut self) {
        if !self.on_server() {
            return;
        }
        let mut out: Vec<(String, Draft)> = Vec::new();
        for (k, p) in self.forwards.iter_mut().filter(|(_, p)| !p.sent) {
            p.sent = true;
            out.push((format!("f{k}"), p.draft.clone()));
        }
        if !self.forwarding.active {
            for (k, p) in self.outbox.iter_mut().filter(|(_, p)| !p.sent) {
                p.sent = true;
                out.push((format!("s{k}"), p.draft.clone()));
            }
        }
        if out.is_empty() {
            return;
        }
        match &mut self.link {
            Link::Ws(_) => {
                let frames = out.iter().map(|(r, d)| d.frame(r)).collect();
                self.ws_write(frames).await;
            }
            Link::Http(h) => {
                let mut refused = Vec::new();
                for (reference, d) in out {
                    let post = Post { reference: reference.clone(), topic: d.topic.clone(), body: d.body() };
                    if h.posts.try_send(post).is_err() {
                        refused.push(reference);
                    }
                }
                if !refused.is_empty() {
                    for r in refused {
                        if let Some(p) = self.pending_mut(&r) {
                            p.sent = false;
                        }
                    }
                    self.timers.retry = Some(Instant::now() + Duration::from_millis(50));
                }
            }
            _ => {}
        }
    }

    fn pending_mut(&mut self, reference: &str) -> Option<&mut Pending> {
        let (kind, key) = reference.split_at_checked(1)?;
        let key: u64 = key.parse().ok()?;
        match kind {
            "s" => self.outbox.get_mut(&key),
            "f" => self.forwards.get_mut(&key),
            _ => None,
        }
    }

    // ----- answers -----

    async fn acked(&mut self, reference: &str, ack: Ack) {
        let Some((kind, key)) = reference.split_at_checked(1) else { return };
        let Ok(key) = key.parse::<u64>() else { return };
        match kind {
            "s" => {
                if let Some(p) = self.outbox.remove(&key)
                    && let Some(r) = p.reply
                {
                    let _ = r.send(Ok(ack));
                }
            }
            "f" => {
                if let Some(p) = self.forwards.remove(&key)
                    && let Some(seq) = p.seq
                {
                    self.forwarding.done.push((seq, Forwarded::Acked(ack.offset)));
                    self.forwarding.count += 1;
                }
                if self.forwards.is_empty() {
                    self.forward_next().await;
                }
            }
            _ => {}
        }
    }

    async fn send_failed(&mut self, reference: &str, code: ErrorCode, message: String) {
        if code == ErrorCode::Unavailable
            && let Some(p) = self.pending_mut(reference)
            && p.attempts < MAX_UNAVAILABLE_RETRIES
        {
            // Nothing was stored; try again shortly.
            p.attempts += 1;
            p.sent = false;
            let wait = Duration::from_millis(200) * p.attempts;
            self.timers.retry = Some(Instant::now() + wait);
            return;
        }
        let Some((kind, key)) = reference.split_at_checked(1) else { return };
        let Ok(key) = key.parse::<u64>() else { return };
        match kind {
            "s" => {
                if let Some(p) = self.outbox.remove(&key)
                    && let Some(r) = p.reply
                {
                    let _ = r.send(Err(Error::server(code, message)));
                }
            }
            "f" => {
                if let Some(p) = self.forwards.remove(&key)
                    && let Some(seq) = p.seq
                {
                    if matches!(code, ErrorCode::Forbidden | ErrorCode::Unauthorized) {
                        tracing::info!(id = p.draft.id, from = p.draft.from_agent, %code, "board message left for its author to forward");
                        self.forwarding.skip.insert(seq);
                    } else {
                        tracing::warn!(id = p.draft.id, %code, message, "the server refused a board message; dropped");
                        self.forwarding.done.push((seq, Forwarded::Refused));
                    }
                }
                if self.forwards.is_empty() {
                    self.forward_next().await;
                }
            }
            _ => {}
        }
    }

    async fn server_frame(&mut self, frame: ServerFrame, stream: Option<String>) {
        match frame {
            ServerFrame::Message(m) => self.message(m, true).await,
            ServerFrame::Ack { id, topic, offset, duplicate, reference, .. } => {
                if let Some(r) = reference_str(&reference) {
                    let transport = self.current.unwrap_or(Transport::Websocket);
                    self.acked(&r, Ack { id, topic, offset, duplicate, transport }).await;
                }
            }
            ServerFrame::Subscribed { topic, offset, epoch, recovered, reference } => {
                let r = stream.or_else(|| reference_str(&reference));
                let since = r.as_ref().and_then(|r| self.sub_refs.remove(r)).and_then(|(_, s)| s);
                if let Some(ts) = self.topics.get_mut(&topic)
                    && let Some(gap) = ts.subscribed(r.as_deref(), offset, &epoch, recovered, since)
                {
                    tracing::warn!(topic, since, offset, "the server could not replay everything missed");
                    self.emit(gap);
                }
            }
            ServerFrame::History { messages, reference, .. } => self.answer(&reference, Answer::Messages(messages)),
            ServerFrame::SearchResults { hits, reference } => self.answer(&reference, Answer::Hits(hits)),
            ServerFrame::Presence { agents, reference } => self.answer(&reference, Answer::Agents(agents)),
            ServerFrame::Error { code, message, reference } => {
                let Some(r) = reference_str(&reference) else {
                    tracing::warn!(%code, message, "server error");
                    return;
                };
                if r.starts_with('s') || r.starts_with('f') {
                    self.send_failed(&r, code, message).await;
                } else if let Some(call) = self.calls.remove(&r) {
                    let _ = call.send(Err(Error::server(code, message)));
                } else if let Some((topic, _)) = self.sub_refs.remove(&r) {
                    if let Some(ts) = self.topics.get_mut(&topic) {
                        for e in ts.entries.iter_mut().filter(|e| e.pending.as_deref() == Some(&r)) {
                            e.confirm(Err(Error::server(code, message.clone())));
                        }
                        ts.entries.retain(|e| e.pending.as_deref() != Some(&r));
                        ts.subscribing = None;
                    }
                    self.drop_if_unused(&topic).await;
                } else {
                    tracing::warn!(%code, message, reference = r, "server error");
                }
            }
            ServerFrame::Registered { .. } | ServerFrame::Unsubscribed { .. } | ServerFrame::Pong { .. } => {}
        }
    }

    fn answer(&mut self, reference: &Option<agentbus_protocol::Ref>, answer: Answer) {
        if let Some(call) = reference_str(reference).and_then(|r| self.calls.remove(&r)) {
            let _ = call.send(Ok(answer));
        }
    }

    /// A message from the server (`from_server`) or the board.
    async fn message(&mut self, m: Message, from_server: bool) {
        let mut claimed = false;
        if let Some(irt) = &m.in_reply_to
            && let Some(waiter) = self.requests.remove(irt)
        {
            claimed = waiter.send(m.clone()).is_ok();
        }
        let topic = m.topic.clone();
        let Some(ts) = self.topics.get_mut(&topic) else { return };
        if ts.entries.is_empty() && topic == self.inbox {
            ts.head = ts.head.max(m.offset);
            if !claimed {
                if self.unclaimed.len() >= UNCLAIMED_INBOX {
                    self.unclaimed.pop_front();
                }
                self.unclaimed.push_back(m);
            }
            return;
        }
        let d = if from_server { ts.deliver_server(&m) } else { ts.deliver_board(&m) };
        if d.slow {
            tracing::warn!(topic, "a subscription is full; messages are dropped (slow consumer)");
            self.emit(Event::SlowConsumer { topic: topic.clone() });
        }
        if d.closed {
            self.drop_if_unused(&topic).await;
        }
    }

    // ----- events from the link -----

    async fn ws_frame(&mut self, frame: Option<std::result::Result<WsMessage, tokio_tungstenite::tungstenite::Error>>) {
        match frame {
            Some(Ok(WsMessage::Text(text))) => {
                self.last_rx = Instant::now();
                match serde_json::from_str::<ServerFrame>(&text) {
                    Ok(f) => self.server_frame(f, None).await,
                    Err(e) => tracing::debug!(error = %e, "unreadable frame skipped"),
                }
            }
            Some(Ok(WsMessage::Close(c))) => {
                let why = c.map_or_else(|| "closed".to_owned(), |c| format!("closed: {} {}", c.code, c.reason));
                self.link_lost(&why).await;
            }
            Some(Ok(_)) => self.last_rx = Instant::now(),
            Some(Err(e)) => self.link_lost(&e.to_string()).await,
            None => self.link_lost("connection ended").await,
        }
    }

    async fn http_report(&mut self, report: HttpReport) {
        match report {
            HttpReport::Answer { link, reference, result } if link == self.link_gen => match result {
                Ok(ServerFrame::Ack { id, topic, offset, duplicate, .. }) => {
                    self.acked(&reference, Ack { id, topic, offset, duplicate, transport: Transport::Http }).await;
                }
                Ok(other) => {
                    let msg = format!("unexpected answer to a publish: {other:?}");
                    self.send_failed(&reference, ErrorCode::Internal, msg).await;
                }
                Err((code, message)) => self.send_failed(&reference, code, message).await,
            },
            HttpReport::Frame { link, stream, frame } if link == self.link_gen => {
                let topic = match &frame {
                    ServerFrame::Message(m) => m.topic.clone(),
                    ServerFrame::Subscribed { topic, .. } => topic.clone(),
                    _ => return,
                };
                let current = match &self.link {
                    Link::Http(h) => h.streams.get(&topic).is_some_and(|(r, _)| *r == stream),
                    _ => false,
                };
                if current {
                    self.server_frame(frame, Some(stream)).await;
                }
            }
            HttpReport::StreamEnded { link, stream, topic, slow } if link == self.link_gen => {
                let current = match &self.link {
                    Link::Http(h) => h.streams.get(&topic).is_some_and(|(r, _)| *r == stream),
                    _ => false,
                };
                if !current {
                    return;
                }
                if slow {
                    if let Some(ts) = self.topics.get_mut(&topic) {
                        ts.link_lost();
                    }
                    self.open_topic(&topic, None).await;
                } else {
                    self.link_lost("event stream ended").await;
                }
            }
            HttpReport::Down { link, error } if link == self.link_gen => self.link_lost(&error).await,
            _ => {}
        }
    }

    // ----- link changes -----

    /// The HTTP base URL of the current (or last) server. (The builder gives at least
    /// one server, and `self.server` only ever holds an index a dial returned.)
    fn http_base(&self) -> reqwest::Url {
        self.opts.servers[self.server].http_base.clone()
    }

    fn start_dial(&mut self, purpose: Purpose, tiers: Vec<Transport>) {
        if self.dial.is_some() || tiers.is_empty() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        let (opts, http, board, first) = (self.opts.clone(), self.http.clone(), self.board.clone(), self.server);
        tokio::spawn(async move {
            let _ = tx.send(dial(opts, http, tiers, board, first).await);
        });
        self.dial = Some((purpose, rx));
    }

    /// The tiers a reconnect attempt tries: the server ones, and the board once the
    /// server has been away long enough (or before anything ever connected).
    fn reconnect_tiers(&self) -> Vec<Transport> {
        let board_ok = self.down_since.is_none_or(|since| since.elapsed() >= self.opts.board_fallback_after);
        self.opts.transports.iter().copied().filter(|t| t.is_server() || board_ok).collect()
    }

    async fn dialed(&mut self, purpose: Purpose, result: std::result::Result<Dialed, String>) {
        self.dial = None;
        match result {
            Ok(d) => {
                let t = d.transport();
                if let Some(cur) = self.current
                    && best_rank(&self.opts, t) >= best_rank(&self.opts, cur)
                {
                    self.schedule_probe();
                    return;
                }
                self.install(d).await;
            }
            Err(e) => {
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Err(Error::new(ErrorKind::Io, format!("no transport available: {e}"))));
                    self.exit = true;
                    return;
                }
                tracing::debug!(error = e, ?purpose, "dial failed");
                // Whatever the dial was for: with no link, the next attempt is a
                // reconnect (a reconnect timer that fired during a probe started none).
                if self.current.is_none() {
                    self.timers.reconnect = Some(Instant::now() + self.reconnect.next_delay());
                } else {
                    self.schedule_probe();
                }
            }
        }
    }

    fn schedule_probe(&mut self) {
        let Some(cur) = self.current else { return };
        if best_rank(&self.opts, cur) > 0 {
            self.timers.probe = Some(Instant::now() + self.probe.next_delay().max(Duration::from_millis(50)));
        } else {
            self.timers.probe = None;
        }
    }

    /// Drops the current link without a `Disconnected` event: its sends go back to
    /// the queue, its queries fail, its subscriptions wait for the next link.
    async fn teardown(&mut self) {
        self.finish_forward_round(false, false).await;
        let old = std::mem::replace(&mut self.link, Link::Down);
        self.link_gen += 1;
        match old {
            Link::Http(h) => h.abort(),
            Link::Ws(mut ws) => {
                let _ = tokio::time::timeout(Duration::from_millis(200), ws.close()).await;
            }
            Link::Board(_) | Link::Down => {}
        }
        for p in self.outbox.values_mut() {
            p.sent = false;
        }
        self.calls.clear();
        self.sub_refs.clear();
        for ts in self.topics.values_mut() {
            ts.link_lost();
        }
        self.timers = Timers { reconnect: self.timers.reconnect, ..Timers::default() };
    }

    async fn link_lost(&mut self, why: &str) {
        let Some(t) = self.current.take() else { return };
        tracing::warn!(transport = %t, reason = why, "agentbus transport lost; reconnecting");
        self.teardown().await;
        let _ = self.state.send(None);
        self.emit(Event::Disconnected { transport: t });
        self.down_since = Some(Instant::now());
        self.timers.reconnect = Some(Instant::now() + self.reconnect.next_delay());
    }

    async fn install(&mut self, d: Dialed) {
        let t = d.transport();
        if self.current.is_some() {
            self.teardown().await;
        }
        self.link_gen += 1;
        self.link = match d {
            Dialed::Ws(ws, server) => {
                self.server = server;
                Link::Ws(ws)
            }
            Dialed::Board(b) => {
                self.board = Some(b.clone());
                Link::Board(b)
            }
            Dialed::Http(server) => {
                self.server = server;
                let (posts, rx) = mpsc::channel(self.opts.send_queue + FORWARD_BATCH + 64);
                let task = tokio::spawn(http::poster(
                    self.http.clone(),
                    self.http_base(),
                    self.link_gen,
                    rx,
                    self.http_tx.clone(),
                ));
                Link::Http(HttpLink { posts, poster: task.abort_handle(), streams: HashMap::new() })
            }
        };
        self.current = Some(t);
        tracing::info!(transport = %t, "Using '{t}' transport");
        // Publish the transport before `connect()` returns, so `transport()` is set then.
        let _ = self.state.send(Some(t));
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(Ok(t));
            self.emit(Event::Connected { transport: t });
        } else if self.down_since.is_some() {
            self.emit(Event::Reconnected { transport: t });
        }
        if let Some(prev) = self.last_used
            && prev != t
        {
            self.emit(Event::TransportChanged { from: prev, to: t });
        }
        self.last_used = Some(t);
        self.down_since = None;
        self.timers.reconnect = None;
        self.reconnect.reset();
        self.probe.reset();
        self.schedule_probe();
        match t {
            Transport::Websocket => {
                self.last_rx = Instant::now();
                self.timers.keepalive = Some(Instant::now() + self.opts.keepalive);
                let mut register = json!({"type": "register", "agent_id": self.opts.agent_id, "ref": "register"});
                if let Some(token) = &self.opts.token {
                    register["token"] = json!(token);
                }
                if !self.opts.capabilities.is_empty() {
                    register["capabilities"] = json!(self.opts.capabilities);
                }
                self.ws_write(vec![register.to_string()]).await;
                self.resubscribe_all().await;
            }
            Transport::Http => self.resubscribe_all().await,
            Transport::Board => self.enter_board().await,
        }
        if self.on_server() {
            self.timers.forward_check = Some(Instant::now() + FORWARD_CHECK);
            self.maybe_forward().await;
            self.flush().await;
        }
    }

    async fn resubscribe_all(&mut self) {
        let ws = matches!(self.link, Link::Ws(_));
        let names: Vec<String> = self.topics.keys().cloned().collect();
        for name in names {
            let Some(ts) = self.topics.get_mut(&name) else { continue };
            if name == self.inbox && ws && ts.entries.iter().all(|e| e.last.is_none()) {
                // `register` follows the inbox and replays what the agent has not seen.
                ts.active = true;
                let head = ts.head;
                for e in &mut ts.entries {
                    e.last = Some(head);
                    e.confirm(Ok(()));
                }
                continue;
            }
            // Over HTTP the inbox needs a stream of its own (no `register` there).
            let needed = !ts.entries.is_empty() || ts.watchers > 0 || (ts.permanent && !ws);
            if !needed {
                continue;
            }
            self.open_topic(&name, None).await;
        }
    }

    async fn enter_board(&mut self) {
        let Link::Board(board) = &self.link else { return };
        let board = board.clone();
        let names: Vec<String> = self.topics.keys().cloned().collect();
        let keys: Vec<u64> = self.outbox.keys().copied().collect();
        let drafts: Vec<Draft> = self.outbox.values().map(|p| p.draft.clone()).collect();
        let result = blocking(move || {
            let heads = board.heads(&names)?;
            let acks = board.append(&drafts)?;
            Ok((names, heads, acks))
        })
        .await;
        match result {
            Ok((names, heads, acks)) => {
                for (name, head) in names.iter().zip(heads) {
                    if let Some(ts) = self.topics.get_mut(name) {
                        ts.enter_board(head);
                        for e in &mut ts.entries {
                            e.confirm(Ok(()));
                        }
                    }
                }
                // What waited in memory is on the board now, to be forwarded later.
                for (key, ack) in keys.into_iter().zip(acks) {
                    if let Some(p) = self.outbox.remove(&key)
                        && let Some(r) = p.reply
                    {
                        let _ = r.send(Ok(board_ack(ack)));
                    }
                }
                self.board_version = None;
                self.board_dirty = true;
                self.timers.poll = Some(Instant::now());
            }
            Err(e) => self.link_lost(&format!("board unusable: {e}")).await,
        }
    }

    // ----- forwarding -----

    /// Starts a forwarding round if the board has messages waiting and no other client
    /// holds the lease.
    async fn maybe_forward(&mut self) {
        if self.forwarding.active || !self.on_server() {
            return;
        }
        let board = match &self.board {
            Some(b) => b.clone(),
            None => {
                let path = self.opts.board_path.clone();
                match blocking(move || Board::open_existing(&path)).await {
                    Ok(Some(b)) => {
                        self.board = Some(b.clone());
                        b
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open the board to forward");
                        return;
                    }
                }
            }
        };
        let owner = self.owner.clone();
        let skip = self.forwarding.skip.clone();
        let batch = blocking(move || {
            if !board.has_unforwarded()? {
                return Ok(None);
            }
            let batch = forward_batch(&board, &owner, 0, &skip)?;
            if let Some((_, rows)) = &batch
                && rows.is_empty()
            {
                // Nothing for this client after all (forwarded meanwhile, or left for
                // another author): give the lease back at once.
                board.release_lease(&owner)?;
            }
            Ok(batch)
        })
        .await;
        match batch {
            Ok(Some((cursor, rows))) if !rows.is_empty() => {
                tracing::info!(count = rows.len(), board = %self.opts.board_path.display(), "forwarding board messages");
                self.forwarding.active = true;
                self.forwarding.cursor = cursor;
                self.queue_forwards(rows);
                self.flush().await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the board to forward"),
        }
    }

    fn queue_forwards(&mut self, rows: Vec<crate::board::Unforwarded>) {
        for row in rows {
            self.next_key += 1;
            self.forwards.insert(
                self.next_key,
                Pending { draft: row.draft, reply: None, seq: Some(row.seq), sent: false, attempts: 0 },
            );
        }
    }

    /// The round's batch is answered: record it, then read the next batch or end.
    async fn forward_next(&mut self) {
        if !self.forwarding.active {
            return;
        }
        let Some(board) = self.board.clone() else { return };
        let done = std::mem::take(&mut self.forwarding.done);
        let owner = self.owner.clone();
        let (cursor, skip) = (self.forwarding.cursor, self.forwarding.skip.clone());
        let next = blocking(move || {
            board.mark_forwarded(&done)?;
            forward_batch(&board, &owner, cursor, &skip)
        })
        .await;
        match next {
            Ok(Some((cursor, rows))) if !rows.is_empty() => {
                self.forwarding.cursor = cursor;
                self.queue_forwards(rows);
                self.flush().await;
            }
            Ok(_) => self.finish_forward_round(true, true).await,
            Err(e) => {
                tracing::warn!(error = %e, "forwarding stopped; retried later");
                self.finish_forward_round(false, true).await;
            }
        }
    }

    /// Ends a round: records what was answered, gives the lease up, lets user sends go.
    async fn finish_forward_round(&mut self, complete: bool, flush: bool) {
        if !self.forwarding.active {
            return;
        }
        self.forwarding.active = false;
        self.forwarding.cursor = 0;
        self.forwards.clear();
        let done = std::mem::take(&mut self.forwarding.done);
        let count = std::mem::take(&mut self.forwarding.count);
        if let Some(board) = self.board.clone() {
            let owner = self.owner.clone();
            let result = blocking(move || {
                board.mark_forwarded(&done)?;
                board.release_lease(&owner)
            })
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "cannot record forwarded board messages; they will be resent (harmless)");
            }
        }
        if complete && count > 0 {
            tracing::info!(count, "board messages forwarded");
            self.emit(Event::Forwarded { count });
        }
        if flush {
            self.flush().await;
        }
    }

    // ----- timers -----

    async fn timers_fired(&mut self) {
        let now = Instant::now();
        let due = |t: &mut Option<Instant>| t.is_some_and(|t| t <= now).then(|| *t = None).is_some();
        if due(&mut self.timers.reconnect) && self.current.is_none() {
            let tiers = self.reconnect_tiers();
            self.start_dial(Purpose::Reconnect, tiers);
        }
        if due(&mut self.timers.probe)
            && let Some(cur) = self.current
        {
            let rank = best_rank(&self.opts, cur);
            let better: Vec<Transport> = self.opts.transports.iter().copied().take(rank).collect();
            if self.dial.is_some() {
                self.schedule_probe();
            } else {
                self.start_dial(Purpose::Probe, better);
            }
        }
        if due(&mut self.timers.poll) {
            self.poll_board().await;
        }
        if due(&mut self.timers.forward_check) && self.on_server() {
            self.maybe_forward().await;
            self.timers.forward_check = Some(Instant::now() + FORWARD_CHECK);
        }
        if due(&mut self.timers.keepalive) && matches!(self.link, Link::Ws(_)) {
            if self.last_rx.elapsed() > self.opts.keepalive * 3 {
                self.link_lost("no traffic from the server").await;
            } else {
                if let Link::Ws(ws) = &mut self.link
                    && let Err(e) = ws.send(WsMessage::Ping(Default::default())).await
                {
                    self.link_lost(&format!("ping failed: {e}")).await;
                    return;
                }
                self.timers.keepalive = Some(Instant::now() + self.opts.keepalive);
            }
        }
        if due(&mut self.timers.retry) {
            self.flush().await;
        }
    }

    async fn poll_board(&mut self) {
        let Link::Board(board) = &self.link else { return };
        let board = board.clone();
        let force = std::mem::take(&mut self.board_dirty);
        let previous = self.board_version;
        let cursors: Vec<(String, u64)> = self
            .topics
            .values()
            .filter(|t| !t.entries.is_empty() || t.watchers > 0 || t.permanent)
            .map(|t| (t.name.clone(), t.board_head))
            .collect();
        let read = blocking(move || {
            let version = board.data_version()?;
            let mut out = Vec::new();
            let mut more = false;
            if force || previous != Some(version) {
                for (topic, head) in cursors {
                    let page = board.read_after(&topic, head, BOARD_PAGE)?;
                    more |= page.len() == BOARD_PAGE;
                    out.extend(page);
                }
            }
            Ok((version, out, more))
        })
        .await;
        match read {
            Ok((version, messages, more)) => {
                self.board_version = Some(version);
                self.board_dirty |= more;
                for m in messages {
                    self.message(m, false).await;
                }
                let wait = if self.board_dirty { Duration::ZERO } else { self.opts.board_poll };
                self.timers.poll = Some(Instant::now() + wait);
            }
            Err(e) => self.link_lost(&format!("board read failed: {e}")).await,
        }
    }
}

fn board_ack(a: BoardAck) -> Ack {
    Ack { id: a.id, topic: a.topic, offset: a.offset, duplicate: a.duplicate, transport: Transport::Board }
}
