//! Server-Sent Events: `GET /v1/topics/{topic}/events`, resumable with
//! `Last-Event-ID` (the last offset seen) or `?since=`.
//!
//! Each stream is a subscriber like a WebSocket connection: it has its own outbox in
//! the broker and replays from the store at the seam, so a resumed stream has no gap
//! and no duplicate.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use agentbus_protocol::{ErrorCode, SubscribeFrame, error_frame, frame_offset};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream;

use super::ApiError;
use super::api::{topic_param, u64_param};
use crate::broker::Command;
use crate::conn::CloseGuard;
use crate::outbox::{Outbox, OutboxState, Outgoing};
use crate::replay::ReplayCursor;
use crate::shared::Shared;

struct Stream {
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    queue: VecDeque<Outgoing>,
    events: VecDeque<Event>,
    replay: Option<ReplayCursor>,
    done: bool,
    _guard: CloseGuard,
}

fn message_event(frame: &str, offset: Option<u64>) -> Event {
    let event = Event::default().event("message").data(frame);
    match offset {
        Some(o) => event.id(o.to_string()),
        None => event,
    }
}

/// `GET /v1/topics/{topic}/events?since=&history=&epoch=`.
pub(super) async fn events(
    State(shared): State<Arc<Shared>>,
    caller: super::Caller,
    Path(topic): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let topic = topic_param(&topic)?;
    shared.auth.check_read(caller.grant(), &topic)?;
    let last_event_id = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(v) if !v.trim().is_empty() => Some(v.trim().parse::<u64>().map_err(|_| {
            ApiError::new(ErrorCode::InvalidField, "Last-Event-ID must be the offset of the last event received")
        })?),
        _ => None,
    };
    let since = last_event_id.or(u64_param(&params, "since")?);
    let history = u64_param(&params, "history")?.map(|h| h.min(shared.config.limits.max_page));
    let epoch = params.get("epoch").cloned();
    let conn = shared.next_conn_id();
    let outbox = Arc::new(Outbox::new(shared.config.limits.outbox_bytes));
    let gone = || ApiError::new(ErrorCode::Unavailable, "the server is shutting down");
    shared.broker.send(Command::Open { conn, outbox: outbox.clone() }).await.map_err(|_| gone())?;
    let guard = CloseGuard { conn, broker: shared.broker.clone() };
    let frame = SubscribeFrame { topic, history, since, epoch };
    shared.broker.send(Command::Subscribe { conn, frame, reference: None }).await.map_err(|_| gone())?;
    let state = Stream {
        shared,
        outbox,
        queue: VecDeque::new(),
        events: VecDeque::new(),
        replay: None,
        done: false,
        _guard: guard,
    };
    let body = stream::unfold(state, |mut st| async move {
        let event = st.next_event().await?;
        Some((Ok::<_, Infallible>(event), st))
    });
    Ok(Sse::new(body).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

impl Stream {
    async fn next_event(&mut self) -> Option<Event> {
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            if let Some(cursor) = &mut self.replay {
                match cursor.next_page(&self.shared.store).await {
                    Ok(Some(page)) => {
                        for f in page {
                            self.events.push_back(match f.offset {
                                Some(o) => message_event(&f.frame, Some(o)),
                                None => Event::default().event("subscribed").data(f.frame.as_str()),
                            });
                        }
                    }
                    Ok(None) => self.replay = None,
                    Err(e) => {
                        tracing::error!(error = %e, "SSE replay failed");
                        self.fail(ErrorCode::Internal, "replay failed (see the server log)");
                    }
                }
                continue;
            }
            if let Some(item) = self.queue.pop_front() {
                match item {
                    Outgoing::Frame(f) => {
                        // Only messages travel on a stream; its outbox gets nothing else.
                        self.events.push_back(message_event(&f, frame_offset(&f)));
                    }
                    Outgoing::Replay(r) => {
                        self.replay = Some(ReplayCursor::new(*r, self.shared.metrics.clone()));
                    }
                }
                continue;
            }
            tokio::select! {
                state = self.outbox.drain(&mut self.queue) => match state {
                    // A stream has its own keep-alive comments.
                    OutboxState::Open | OutboxState::Ping => {}
                    OutboxState::SlowConsumer => self.fail(
                        ErrorCode::SlowConsumer,
                        "you fell behind by more than the outbox limit; reconnect with Last-Event-ID to resume",
                    ),
                    OutboxState::Closed => self.done = true,
                },
                _ = shutdown.changed() => self.done = true,
            }
        }
    }

    fn fail(&mut self, code: ErrorCode, message: &str) {
        self.events.push_back(Event::default().event("error").data(error_frame(code, message, None)));
        self.done = true;
    }
}
