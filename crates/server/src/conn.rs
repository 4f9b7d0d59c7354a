//! One task per WebSocket connection.
//!
//! It reads frames, validates them and hands them to the broker (waiting when the
//! broker's queue is full, which slows only this client's reads); it drains its
//! [`Outbox`] in whole batches, framing them itself and writing them in large chunks; it pings quiet
//! clients and closes with the proper code on protocol violations, slow consumption and
//! shutdown (1001, after flushing what was queued).

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use agentbus_protocol::{
    AgentId, ClientFrame, ErrorCode, FrameError, Ref, ServerFrame, error_frame, frame_is_on_inbox_of, frame_offset,
    history_frame,
};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::auth::Grant;
use crate::broker::{BrokerHandle, Command, ConnId, Reply};
use crate::listener::Counted;
use crate::outbox::{Outbox, OutboxState, Outgoing};
use crate::replay::ReplayCursor;
use crate::shared::{Shared, search_hits};
use crate::ws::{Incoming, OpCode, WsConn, WsError, close_payload, push_frame};

/// Close code sent to a slow consumer (private range: 4000–4999).
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// Reads taken in one go, when data is already there, before the outbox is drained.
const READ_BURST: usize = 8;

/// Longest a single socket write may wait for the client to read. A client that reads
/// nothing for this long is gone or stalled: the connection is dropped, so a dead peer
/// never pins a task and its buffers.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// How long a server-initiated close waits for the client's closing frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Frames of a batch are gathered up to about this many bytes per socket write.
const WRITE_CHUNK: usize = 64 * 1024;

/// The most bytes a frame's header takes (RFC 6455 §5.2, unmasked).
const FRAME_HEADER_MAX: usize = 10;

/// Room kept past [`WRITE_CHUNK`] for the frame that crosses it, so that a chunk of
/// ordinary messages is written without growing the buffer.
const MAX_FRAME_RESERVE: usize = 4 * 1024;

/// Bounds a socket operation by [`WRITE_STALL`]. Most finish at the first poll; only one
/// that has to wait arms a timer.
async fn bounded<T>(op: impl std::future::Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    let mut op = std::pin::pin!(op);
    if let Poll::Ready(result) = std::future::poll_fn(|cx| Poll::Ready(op.as_mut().poll(cx))).await {
        return result;
    }
    // Boxed: the timer is large, and only this slow path needs it.
    match Box::pin(tokio::time::timeout(WRITE_STALL, op)).await {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")),
    }
}

/// Tells the broker the connection is gone, however the task ends.
pub(crate) struct CloseGuard {
    pub(crate) conn: ConnId,
    pub(crate) broker: BrokerHandle,
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        let cmd = Command::Close { conn: self.conn };
        if self.broker.try_send(cmd).is_err() {
            let (broker, conn) = (self.broker.clone(), self.conn);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { broker.send(Command::Close { conn }).await });
            }
        }
    }
}

#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

struct Connection<S> {
    ws: WsConn<S>,
    shared: Arc<Shared>,
    conn: ConnId,
    outbox: Arc<Outbox>,
    agent: Option<AgentId>,
    /// What the client proved it may do (authentication on).
    grant: Option<Arc<Grant>>,
    /// `limits.messages_per_second`, when set.
    rate: Option<Box<DefaultDirectRateLimiter>>,
    last_seen: Instant,
}

/// Serves one upgraded WebSocket (its handshake done) until it closes.
pub async fn run<S>(io: S, shared: Arc<Shared>, grant: Option<Arc<Grant>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = WsConn::new(io, shared.config.limits.max_message_bytes);
    let conn = shared.next_conn_id();
    let outbox = Arc::new(Outbox::new(shared.config.limits.outbox_bytes));
    // Boxed, like every large future awaited once or rarely: the task keeps only what it
    // needs while the connection is idle.
    if Box::pin(shared.broker.send(Command::Open { conn, outbox: outbox.clone() })).await.is_err() {
        return;
    }
    let _guard = CloseGuard { conn, broker: shared.broker.clone() };
    let _alive = shared.tasks.clone();
    let _counted = Counted::new(shared.clone());
    let rate = NonZeroU32::new(shared.config.limits.messages_per_second)
        .map(|n| Box::new(RateLimiter::direct(Quota::per_second(n))));
    let mut c = Connection { ws, shared, conn, outbox, agent: None, grant, rate, last_seen: Instant::now() };
    match c.serve().await {
        Ok(()) => tracing::debug!(conn, "connection closed"),
        Err(e) => tracing::debug!(conn, error = %e, "connection ended"),
    }
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// The connection's loop. Handling what was read, writing a batch and closing are
    /// boxed: the task then keeps only this loop's small state while it waits, not the
    /// largest of those futures (about 1.5 KiB per idle connection).
    async fn serve(&mut self) -> std::io::Result<()> {
        let interval = self.shared.config.limits.ping_interval();
        let mut batch = VecDeque::new();
        loop {
            tokio::select! {
                read = self.ws.fill() => {
                    if read? == 0 || Box::pin(self.on_received()).await? == Flow::Stop {
                        return Ok(());
                    }
                    for _ in 1..READ_BURST {
                        match self.ws.fill().now_or_never() {
                            Some(Ok(0)) => return Ok(()),
                            Some(Ok(_)) => {
                                if Box::pin(self.on_received()).await? == Flow::Stop {
                                    return Ok(());
                                }
                            }
                            Some(Err(e)) => return Err(e),
                            None => break,
                        }
                    }
                }
                state = self.outbox.drain(&mut batch) => match state {
                    OutboxState::Open => Box::pin(self.write_batch(&mut batch)).await?,
                    OutboxState::SlowConsumer => {
                        self.shared.metrics.reject(ErrorCode::SlowConsumer);
                        let agent = self.agent.as_ref().map_or("-", |a| a.as_str());
                        tracing::warn!(conn = self.conn, agent, "closing slow consumer");
                        let msg = "you fell behind by more than the outbox limit; resubscribe with `since` to resume";
                        let frame = error_frame(ErrorCode::SlowConsumer, msg, None);
                        Box::pin(self.send_now(OpCode::Text, frame.as_bytes())).await?;
                        return Box::pin(self.close(CLOSE_SLOW_CONSUMER, "slow consumer")).await;
                    }
                    OutboxState::Closed => return Box::pin(self.close(1001, "server shutting down")).await,
                    OutboxState::Ping => {
                        if !batch.is_empty() {
                            Box::pin(self.write_batch(&mut batch)).await?;
                        }
                        if self.last_seen.elapsed() > interval * 3 {
                            return Box::pin(self.close(1001, "idle timeout")).await;
                        }
                        Box::pin(self.send_now(OpCode::Ping, &[])).await?;
                    }
                },
            }
        }
    }

    /// Writes one frame now (control frames, and errors before a close).
    async fn send_now(&mut self, opcode: OpCode, payload: &[u8]) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 10);
        push_frame(&mut out, opcode, payload);
        let ws = &mut self.ws;
        bounded(ws.write_all(&out)).await
    }

    async fn close(&mut self, code: u16, reason: &'static str) -> std::io::Result<()> {
        self.send_now(OpCode::Close, &close_payload(code, reason)).await?;
        // Wait briefly for the client's closing frame, so the close is a clean handshake
        // and not a reset that could cost the client frames still in flight.
        let ws = &mut self.ws;
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Ok(n) = ws.fill().await
                && n > 0
            {
                loop {
                    match ws.next_message() {
                        Ok(Some(Incoming::Close(_))) | Err(_) => return,
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                    }
                }
            }
        })
        .await;
        Ok(())
    }

    /// Writes a batch from the outbox: the frames are framed here, gathered into chunks
    /// of about [`WRITE_CHUNK`] bytes and written straight to the socket, one write per
    /// chunk.
    async fn write_batch(&mut self, batch: &mut VecDeque<Outgoing>) -> std::io::Result<()> {
        // Sized once for the frames at hand. A replay grows it as it pages: reserving a
        // whole chunk for every subscription's replay left ~130 B more per idle
        // connection (`idle` at 19,000 connections).
        let framed: usize = batch
            .iter()
            .map(|item| match item {
                Outgoing::Frame(f) => f.len() + FRAME_HEADER_MAX,
                Outgoing::Replay(_) => 0,
            })
            .sum();
        let mut out = Vec::with_capacity(framed.min(WRITE_CHUNK + MAX_FRAME_RESERVE));
        let mut inbox_written = 0;
        let mut bytes = 0;
        while let Some(item) = batch.pop_front() {
            match item {
                Outgoing::Frame(f) => {
                    // Delivery on the agent's inbox is reported to the broker.
                    if let Some(agent) = &self.agent
                        && frame_is_on_inbox_of(&f, agent)
                    {
                        inbox_written = frame_offset(&f).unwrap_or(0).max(inbox_written);
                    }
                    bytes += f.len();
                    push_frame(&mut out, OpCode::Text, f.as_bytes());
                    self.write_chunk(&mut out, WRITE_CHUNK).await?;
                }
                Outgoing::Replay(r) => {
                    let is_inbox = self.agent.as_ref().is_some_and(|a| r.topic.inbox_owner() == Some(a.as_str()));
                    let mut cursor = ReplayCursor::new(*r, self.shared.metrics.clone());
                    loop {
                        match cursor.next_page(&self.shared.store).await {
                            Ok(Some(page)) => {
                                for f in page {
                                    if is_inbox {
                                        inbox_written = f.offset.unwrap_or(0).max(inbox_written);
                                    }
                                    bytes += f.frame.len();
                                    push_frame(&mut out, OpCode::Text, f.frame.as_bytes());
                                    self.write_chunk(&mut out, WRITE_CHUNK).await?;
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::error!(conn = self.conn, error = %e, "replay failed");
                                let frame =
                                    error_frame(ErrorCode::Internal, "replay failed (see the server log)", None);
                                push_frame(&mut out, OpCode::Text, frame.as_bytes());
                                break;
                            }
                        }
                    }
                }
            }
        }
        self.write_chunk(&mut out, 1).await?;
        // Hold no queue memory while idle (the outbox gets this empty queue next time).
        *batch = VecDeque::new();
        self.shared.metrics.bytes_out.inc_by(bytes as u64);
        if inbox_written > 0
            && let Some(agent) = &self.agent
        {
            // Best effort: if the broker is busy the messages are offered again at the
            // next registration (at-least-once for direct messages).
            let _ =
                self.shared.broker.try_send(Command::InboxDelivered { agent: agent.clone(), offset: inbox_written });
        }
        Ok(())
    }

    /// Writes `out` to the socket once it holds at least `min` bytes, and empties it.
    async fn write_chunk(&mut self, out: &mut Vec<u8>, min: usize) -> std::io::Result<()> {
        if out.len() < min.max(1) {
            return Ok(());
        }
        let ws = &mut self.ws;
        bounded(ws.write_all(out)).await?;
        out.clear();
        Ok(())
    }

    /// Handles every complete message received so far. Of the pings among them only the
    /// last is answered (RFC 6455 §5.5.3 allows it), so a flood of pings costs one write
    /// per read, not one per ping.
    async fn on_received(&mut self) -> std::io::Result<Flow> {
        self.last_seen = Instant::now();
        let mut pong = None;
        loop {
            match self.ws.next_message() {
                Ok(Some(Incoming::Ping(payload))) => pong = Some(payload),
                Ok(Some(msg)) => {
                    if self.on_incoming(msg).await? == Flow::Stop {
                        return Ok(Flow::Stop);
                    }
                }
                Ok(None) => break,
                Err(e) => return self.on_violation(e).await,
            }
        }
        if let Some(payload) = pong {
            self.send_now(OpCode::Pong, &payload).await?;
        }
        Ok(Flow::Continue)
    }

    async fn on_incoming(&mut self, msg: Incoming) -> std::io::Result<Flow> {
        match msg {
            Incoming::Text(text) => {
                self.shared.metrics.bytes_in.inc_by(text.len() as u64);
                self.on_text(&text).await;
            }
            Incoming::Binary(_) => {
                self.reply_error(
                    ErrorCode::InvalidJson,
                    "binary frames are not supported; send JSON text frames",
                    None,
                );
            }
            Incoming::Ping(payload) => self.send_now(OpCode::Pong, &payload).await?,
            Incoming::Pong => {}
            Incoming::Close(code) => {
                // Complete the closing handshake, echoing the client's code.
                let payload = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
                let _ = self.send_now(OpCode::Close, &payload).await;
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    /// Closes the connection after a frame the limits or the RFC refuse.
    async fn on_violation(&mut self, e: WsError) -> std::io::Result<Flow> {
        match e {
            WsError::TooLarge { size, max } => {
                let msg = format!("frame too large ({size} bytes); at most {max} bytes are allowed");
                self.shared.metrics.reject(ErrorCode::TooLarge);
                self.send_now(OpCode::Text, error_frame(ErrorCode::TooLarge, &msg, None).as_bytes()).await?;
                self.close(1009, "frame too large").await?;
            }
            WsError::Utf8 => self.close(1007, "invalid UTF-8 in a text frame").await?,
            WsError::Protocol(what) => {
                tracing::debug!(conn = self.conn, error = what, "protocol violation");
                let _ = self.close(1002, "protocol error").await;
            }
            WsError::Io(e) => return Err(e),
        }
        Ok(Flow::Stop)
    }

    fn reply_error(&self, code: ErrorCode, message: &str, reference: Option<&Ref>) {
        self.shared.metrics.reject(code);
        let _ = self.outbox.push_frame(error_frame(code, message, reference));
    }

    async fn on_text(&mut self, text: &str) {
        let (frame, reference) = match ClientFrame::parse(text, &self.shared.parse_limits) {
            Ok(parsed) => parsed,
            Err(e) => return self.reply_error(e.code, &e.message, e.reference.as_ref()),
        };
        let echo = reference.clone();
        if let Err(e) = self.dispatch(frame, reference).await {
            self.reply_error(e.code, &e.message, echo.as_ref());
        }
    }

    /// Checks a frame against authentication, permissions and limits, then carries it out.
    async fn dispatch(&mut self, frame: ClientFrame<'_>, reference: Option<Ref>) -> Result<(), FrameError> {
        let conn = self.conn;
        let auth = &self.shared.auth;
        let grant = self.grant.as_deref();
        if auth.required() && grant.is_none() && !matches!(frame, ClientFrame::Register(_) | ClientFrame::Ping) {
            return Err(FrameError::new(ErrorCode::Unauthorized, "register with your key (`token`) first"));
        }
        let cmd = match frame {
            ClientFrame::Register(frame) => {
                if let Some(existing) = &self.agent
                    && *existing != frame.agent_id
                {
                    let msg = format!("this connection is already registered as {existing:?}");
                    return Err(FrameError::new(ErrorCode::InvalidField, msg));
                }
                if auth.required() {
                    let granted = match (&frame.token, &self.grant) {
                        (Some(token), _) => auth.authenticate(token)?,
                        (None, Some(g)) => g.clone(),
                        (None, None) => {
                            return Err(FrameError::new(ErrorCode::Unauthorized, "a key is required (`token`)"));
                        }
                    };
                    if granted.agent != frame.agent_id {
                        let msg = format!("this key is for agent {:?}", granted.agent.as_str());
                        return Err(FrameError::new(ErrorCode::Forbidden, msg));
                    }
                    self.grant = Some(granted);
                }
                self.agent = Some(frame.agent_id.clone());
                Command::Register { conn, frame, reference }
            }
            ClientFrame::Subscribe(frame) => {
                auth.check_read(grant, &frame.topic)?;
                Command::Subscribe { conn, frame, reference }
            }
            ClientFrame::Unsubscribe { topic } => Command::Unsubscribe { conn, topic, reference },
            ClientFrame::Send(send) => {
                if let Some(limiter) = &self.rate
                    && limiter.check().is_err()
                {
                    let per_second = self.shared.config.limits.messages_per_second;
                    return Err(FrameError::new(
                        ErrorCode::RateLimited,
                        format!("over {per_second} messages per second"),
                    ));
                }
                auth.check_publish(grant, &send.destination(), send.from_agent.as_ref())?;
                let origin = Reply::Outbox(self.outbox.clone(), reference);
                let publish = self.shared.prepare_publish(&send, self.agent.as_ref(), None, origin)?;
                Command::Publish(Box::new(publish))
            }
            ClientFrame::Presence { topic } => {
                Command::Presence { topic, reply: Reply::Outbox(self.outbox.clone(), reference) }
            }
            ClientFrame::Ping => {
                let _ = self.outbox.push_frame(ServerFrame::Pong { reference }.to_json());
                return Ok(());
            }
            ClientFrame::History(h) => {
                auth.check_read(grant, &h.topic)?;
                let store = self.shared.store.clone();
                let topic = h.topic.clone();
                let read = tokio::task::spawn_blocking(move || match h.after {
                    Some(after) => store.read_range(&h.topic, after, u64::MAX, h.limit as usize),
                    None => store.read_before(&h.topic, h.before.unwrap_or(u64::MAX), h.limit as usize),
                })
                .await;
                let Ok(Ok(msgs)) = read else {
                    tracing::error!(conn, ?read, "history read failed");
                    return Err(FrameError::new(ErrorCode::Internal, "history read failed"));
                };
                let frame = history_frame(&topic, msgs.iter().map(|m| m.frame.as_str()), reference.as_ref());
                let _ = self.outbox.push_frame(frame);
                return Ok(());
            }
            ClientFrame::Search(s) => {
                if let Some(topic) = &s.topic {
                    auth.check_read(grant, topic)?;
                }
                let store = self.shared.store.clone();
                let query = crate::store::SearchQuery {
                    words: s.query,
                    topic: s.topic,
                    from_agent: s.from_agent.map(|a| a.to_string()),
                    limit: s.limit as usize,
                };
                let found = tokio::task::spawn_blocking(move || store.search(&query)).await;
                let Ok(Ok(hits)) = found else {
                    tracing::error!(conn, ?found, "search failed");
                    return Err(FrameError::new(ErrorCode::Internal, "search failed"));
                };
                let mut hits = search_hits(hits);
                hits.retain(|h| auth.may_see(grant, &h.message.topic));
                let _ = self.outbox.push_frame(ServerFrame::SearchResults { hits, reference }.to_json());
                return Ok(());
            }
        };
        self.shared
            .broker
            .send(cmd)
            .await
            .map_err(|_| FrameError::new(ErrorCode::Unavailable, "the server is shutting down"))
    }
}
