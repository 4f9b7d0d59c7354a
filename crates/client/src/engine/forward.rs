//! The local board: entering the board tier, polling it for messages, and forwarding
//! what was written on it to the server once a server tier is back.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use super::link::Link;
use super::outbound::Pending;
use super::{BOARD_PAGE, Engine, FORWARD_BATCH, LEASE_TTL, blocking};
use crate::board::{Board, BoardAck, Forwarded};
use crate::draft::{Ack, Draft};
use crate::error::Result;
use crate::event::{Event, Transport};

#[derive(Default)]
pub(super) struct Forwarding {
    /// A round is in progress: user sends wait so that they follow the older board
    /// messages.
    pub(super) active: bool,
    /// The board write position read up to in this round.
    cursor: i64,
    pub(super) done: Vec<(i64, Forwarded)>,
    pub(super) count: usize,
    /// Messages this client may not send for their author (`forbidden` or
    /// `unauthorized` with authentication on): left on the board for a client that may.
    pub(super) skip: HashSet<i64>,
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

impl Engine {
    pub(super) async fn enter_board(&mut self) {
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

    /// Starts a forwarding round if the board has messages waiting and no other client
    /// holds the lease.
    pub(super) async fn maybe_forward(&mut self) {
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
    pub(super) async fn forward_next(&mut self) {
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
    pub(super) async fn finish_forward_round(&mut self, complete: bool, flush: bool) {
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

    pub(super) async fn poll_board(&mut self) {
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

pub(super) fn board_ack(a: BoardAck) -> Ack {
    Ack { id: a.id, topic: a.topic, offset: a.offset, duplicate: a.duplicate, transport: Transport::Board }
}
