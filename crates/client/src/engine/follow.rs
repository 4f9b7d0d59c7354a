//! Following topics: subscribing on whichever tier is up, catching a new
//! subscription up, and dropping a topic nobody follows any more.

use agentbus_protocol::Message;
use serde_json::json;

use super::link::Link;
use super::{Engine, blocking};
use crate::http;
use crate::topics::{Entry, TopicState, Want};

impl Engine {
    pub(super) async fn subscribe(&mut self, topic: String, mut entry: Entry) {
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
    pub(super) async fn follow_new_topic(&mut self, topic: &str) {
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
    pub(super) async fn open_topic(&mut self, topic: &str, reference: Option<String>) {
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

    pub(super) async fn drop_if_unused(&mut self, topic: &str) {
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
}
