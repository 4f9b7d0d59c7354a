//! Dialing and the live link: the tiers tried in order, the link a dial found and
//! installs, its loss and teardown, and the probe for a better tier.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Engine, FORWARD_BATCH, FORWARD_CHECK, Timers, blocking};
use crate::board::Board;
use crate::builder::Options;
use crate::error::{Error, ErrorKind};
use crate::event::{Event, Transport};
use crate::http::{self, Post};

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a dial found.
pub(super) enum Dialed {
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
pub(super) enum Purpose {
    /// Nothing is up: find anything.
    Reconnect,
    /// A lower tier is up: look for a better one.
    Probe,
}

pub(super) struct HttpLink {
    /// The poster's queue; `try_send` only (its capacity exceeds the send queue).
    pub(super) posts: mpsc::Sender<Post>,
    poster: AbortHandle,
    /// Each followed topic's event stream: its `ref` and task.
    pub(super) streams: HashMap<String, (String, AbortHandle)>,
}

impl HttpLink {
    fn abort(self) {
        self.poster.abort();
        for (_, (_, task)) in self.streams {
            task.abort();
        }
    }
}

pub(super) enum Link {
    Down,
    Ws(Box<WsStream>),
    Http(HttpLink),
    Board(Board),
}

pub(super) fn best_rank(opts: &Options, t: Transport) -> usize {
    opts.transports.iter().position(|x| *x == t).unwrap_or(usize::MAX)
}

fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(16 << 20)).max_frame_size(Some(16 << 20))
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

pub(super) async fn next_ws(
    link: &mut Link,
) -> Option<std::result::Result<WsMessage, tokio_tungstenite::tungstenite::Error>> {
    match link {
        Link::Ws(ws) => ws.next().await,
        _ => std::future::pending().await,
    }
}

pub(super) async fn dial_done(
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

impl Engine {
    /// The HTTP base URL of the current (or last) server. (The builder gives at least
    /// one server, and `self.server` only ever holds an index a dial returned.)
    pub(super) fn http_base(&self) -> reqwest::Url {
        self.opts.servers[self.server].http_base.clone()
    }

    pub(super) fn start_dial(&mut self, purpose: Purpose, tiers: Vec<Transport>) {
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
    pub(super) fn reconnect_tiers(&self) -> Vec<Transport> {
        let board_ok = self.down_since.is_none_or(|since| since.elapsed() >= self.opts.board_fallback_after);
        self.opts.transports.iter().copied().filter(|t| t.is_server() || board_ok).collect()
    }

    pub(super) async fn dialed(&mut self, purpose: Purpose, result: std::result::Result<Dialed, String>) {
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

    pub(super) fn schedule_probe(&mut self) {
        let Some(cur) = self.current else { return };
        if best_rank(&self.opts, cur) > 0 {
            self.timers.probe = Some(Instant::now() + self.probe.next_delay().max(Duration::from_millis(50)));
        } else {
            self.timers.probe = None;
        }
    }

    /// Drops the current link without a `Disconnected` event: its sends go back to
    /// the queue, its queries fail, its subscriptions wait for the next link.
    pub(super) async fn teardown(&mut self) {
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

    pub(super) async fn link_lost(&mut self, why: &str) {
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
}
