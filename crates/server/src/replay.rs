//! Replays stored history into a connection, page by page, at the place of a
//! [`Replay`] item in its outbox.

use std::sync::Arc;

use agentbus_protocol::{ServerFrame, replay_frame};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::Metrics;
use crate::outbox::Replay;
use crate::store::{Store, StoreError, Stored};

/// Messages read from the store per page.
pub const REPLAY_PAGE: usize = 1000;

/// A frame produced by a replay: the `subscribed` reply or a replayed message.
#[derive(Debug, Clone)]
pub struct ReplayFrame {
    /// The message's offset (`None` for the `subscribed` reply).
    pub offset: Option<u64>,
    /// The frame.
    pub frame: Utf8Bytes,
}

/// A replay in progress.
pub struct ReplayCursor {
    replay: Replay,
    metrics: Arc<Metrics>,
    after: u64,
    started: bool,
    done: bool,
}

impl ReplayCursor {
    /// Starts performing `replay`.
    pub fn new(replay: Replay, metrics: Arc<Metrics>) -> Self {
        let after = replay.after;
        Self { replay, metrics, after, started: false, done: false }
    }

    /// The next page of frames, or `None` when the replay is complete.
    pub async fn next_page(&mut self, store: &Arc<dyn Store>) -> Result<Option<Vec<ReplayFrame>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let topic = self.replay.topic.clone();
        let (after, upto, newest) = (self.after, self.replay.upto, self.replay.newest);
        let store = store.clone();
        let page: Vec<Stored> = if upto <= after {
            Vec::new()
        } else {
            tokio::task::spawn_blocking(move || match newest {
                Some(n) => store.read_before(&topic, upto + 1, n as usize),
                None => store.read_range(&topic, after, upto, REPLAY_PAGE),
            })
            .await
            .map_err(|e| StoreError::Database(format!("replay task failed: {e}")))??
        };
        let mut out = Vec::with_capacity(page.len() + 1);
        if !self.started {
            self.started = true;
            if let Some(sub) = self.replay.subscribed.take() {
                let recovered = sub
                    .recovery
                    .then(|| !sub.reset && (upto <= after || page.first().is_some_and(|m| m.offset == after + 1)));
                if let Some(complete) = recovered {
                    self.metrics.recovery(complete);
                }
                let frame = ServerFrame::Subscribed {
                    topic: self.replay.topic.to_string(),
                    offset: upto,
                    epoch: sub.epoch,
                    recovered,
                    reference: sub.reference,
                };
                out.push(ReplayFrame { offset: None, frame: Utf8Bytes::from(frame.to_json()) });
            }
        }
        let last = page.last().map(|m| m.offset);
        let full_page = page.len() >= REPLAY_PAGE;
        let live = self.replay.live;
        out.extend(page.into_iter().map(|m| ReplayFrame {
            offset: Some(m.offset),
            frame: if live { m.frame } else { Utf8Bytes::from(replay_frame(&m.frame)) },
        }));
        match last {
            Some(last) if newest.is_none() && full_page && last < upto => self.after = last,
            _ => self.done = true,
        }
        Ok(Some(out))
    }
}
