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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use agentbus_protocol::{AgentPresence, Message, SearchHit};
use futures_util::SinkExt;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::backoff::Backoff;
use crate::board::Board;
use crate::builder::Options;
use crate::draft::{Ack, Draft};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, Transport};
use crate::http::HttpReport;
use crate::topics::{Entry, TopicState, Want};

mod follow;
mod forward;
mod inbound;
mod link;
mod outbound;
mod query;

use forward::Forwarding;
use link::{Dialed, Link, Purpose, best_rank, dial_done, next_ws};
use outbound::Pending;

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

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Error::new(ErrorKind::Board, format!("board task failed: {e}"))))
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
}
