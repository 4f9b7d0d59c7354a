//! Frames going out: the send queue ([`Pending`] sends waiting for their ack), user
//! sends, and writing what waits to the current link.

use std::time::Duration;

use futures_util::SinkExt;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::forward::board_ack;
use super::link::Link;
use super::{Engine, blocking};
use crate::draft::{Ack, Draft};
use crate::error::{Error, ErrorKind, Result};
use crate::http::Post;

/// A send waiting for its ack.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) draft: Draft,
    pub(super) reply: Option<oneshot::Sender<Result<Ack>>>,
    /// The board row, for a forwarded message.
    pub(super) seq: Option<i64>,
    /// Written to the current link (cleared when the link is lost: it is resent).
    pub(super) sent: bool,
    pub(super) attempts: u32,
}

impl Engine {
    pub(super) async fn send(&mut self, draft: Draft, reply: Option<oneshot::Sender<Result<Ack>>>) {
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

    /// Writes frames to the WebSocket (one flush); a failure loses the link.
    pub(super) async fn ws_write(&mut self, frames: Vec<String>) {
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
    pub(super) async fn flush(&mut self) {
        if !self.on_server() {
            return;
        }
        let mut out: Vec<(String, Draft)> = Vec::new();
        for (k, p) in self.forwards.iter_mut().filter(|(_, p)| !p.sent) {
            p.sent = true;
            out.push((SentRef::Forward(*k).to_string(), p.draft.clone()));
        }
        if !self.forwarding.active {
            for (k, p) in self.outbox.iter_mut().filter(|(_, p)| !p.sent) {
                p.sent = true;
                out.push((SentRef::Send(*k).to_string(), p.draft.clone()));
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

    pub(super) fn pending_mut(&mut self, reference: &str) -> Option<&mut Pending> {
        match SentRef::parse(reference)? {
            SentRef::Send(key) => self.outbox.get_mut(&key),
            SentRef::Forward(key) => self.forwards.get_mut(&key),
        }
    }
}

/// The `ref` a sent frame carries: `s<key>` for the application's sends (in `outbox`),
/// `f<key>` for messages forwarded from the board (in `forwards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SentRef {
    /// A send of the application.
    Send(u64),
    /// A message forwarded from the board.
    Forward(u64),
}

impl SentRef {
    /// Reads a `ref` this engine gave; `None` for any other.
    pub(super) fn parse(reference: &str) -> Option<SentRef> {
        let (kind, key) = reference.split_at_checked(1)?;
        let key = key.parse().ok()?;
        match kind {
            "s" => Some(SentRef::Send(key)),
            "f" => Some(SentRef::Forward(key)),
            _ => None,
        }
    }
}

impl std::fmt::Display for SentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SentRef::Send(key) => write!(f, "s{key}"),
            SentRef::Forward(key) => write!(f, "f{key}"),
        }
    }
}
