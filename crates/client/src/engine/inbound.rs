//! Frames coming in: acks and refusals of sends, server frames (over the WebSocket or
//! the HTTP tier's streams), query answers and messages for the subscriptions.

use std::time::Duration;

use agentbus_protocol::{ErrorCode, Message, ServerFrame};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::link::Link;
use super::outbound::SentRef;
use super::{Answer, Engine, MAX_UNAVAILABLE_RETRIES, UNCLAIMED_INBOX};
use crate::board::Forwarded;
use crate::draft::Ack;
use crate::error::Error;
use crate::event::{Event, Transport};
use crate::http::HttpReport;

fn reference_str(r: &Option<agentbus_protocol::Ref>) -> Option<String> {
    r.as_ref().and_then(|r| r.0.as_str().map(str::to_owned))
}

impl Engine {
    // ----- answers -----

    async fn acked(&mut self, reference: &str, ack: Ack) {
        match SentRef::parse(reference) {
            Some(SentRef::Send(key)) => {
                if let Some(p) = self.outbox.remove(&key)
                    && let Some(r) = p.reply
                {
                    let _ = r.send(Ok(ack));
                }
            }
            Some(SentRef::Forward(key)) => {
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
            None => {}
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
        match SentRef::parse(reference) {
            Some(SentRef::Send(key)) => {
                if let Some(p) = self.outbox.remove(&key)
                    && let Some(r) = p.reply
                {
                    let _ = r.send(Err(Error::server(code, message)));
                }
            }
            Some(SentRef::Forward(key)) => {
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
            None => {}
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
    pub(super) async fn message(&mut self, m: Message, from_server: bool) {
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

    pub(super) async fn ws_frame(
        &mut self,
        frame: Option<std::result::Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
    ) {
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

    pub(super) async fn http_report(&mut self, report: HttpReport) {
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
}
