//! The memory store, for `--ephemeral` and tests: the same behaviour as SQLite,
//! nothing survives a restart.

use std::collections::{HashMap, VecDeque};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use agentbus_protocol::TopicName;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Cursor, KnownId, Record, Retention, SearchQuery, Store, StoreError, Stored, StoredHit, TopicState};

#[derive(Debug)]
struct Entry {
    offset: u64,
    timestamp_ms: i64,
    from_agent: String,
    frame: Utf8Bytes,
}

#[derive(Debug)]
struct Topic {
    epoch: String,
    last: u64,
    messages: VecDeque<Entry>,
}

#[derive(Debug, Default)]
struct Inner {
    topics: HashMap<TopicName, Topic>,
    ids: VecDeque<KnownId>,
    cursors: HashMap<String, u64>,
}

/// History kept in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: RwLock<Inner>,
    /// Client ids remembered for idempotency (oldest forgotten first).
    id_window: usize,
}

impl MemoryStore {
    /// An empty store remembering up to `id_window` client-chosen ids.
    pub fn new(id_window: usize) -> Self {
        Self { inner: RwLock::default(), id_window }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The searchable text of a stored frame: its content, a JSON string as its text.
pub(crate) fn content_text(frame: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Content {
        content: serde_json::Value,
    }
    match serde_json::from_str::<Content>(frame) {
        Ok(Content { content: serde_json::Value::String(s) }) => s,
        Ok(Content { content }) => content.to_string(),
        Err(_) => String::new(),
    }
}

impl Store for MemoryStore {
    fn append(&self, records: &[Record<'_>], cursors: &[Cursor]) -> Result<(), StoreError> {
        let mut inner = self.write();
        // Validate first so that a batch is stored whole or not at all.
        let mut next: HashMap<&TopicName, u64> = HashMap::new();
        for r in records {
            let last = match next.get(r.topic) {
                Some(&o) => o,
                None => inner.topics.get(r.topic).map_or(0, |t| t.last),
            };
            if r.offset != last + 1 {
                return Err(StoreError::OutOfOrder { topic: r.topic.to_string(), last, got: r.offset });
            }
            next.insert(r.topic, r.offset);
        }
        for r in records {
            let topic = inner.topics.entry(r.topic.clone()).or_insert_with(|| Topic {
                epoch: r.epoch.to_owned(),
                last: 0,
                messages: VecDeque::new(),
            });
            topic.last = r.offset;
            topic.messages.push_back(Entry {
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                from_agent: r.from_agent.to_owned(),
                frame: Utf8Bytes::from(r.frame.to_owned()),
            });
            if r.client_id {
                inner.ids.push_back(KnownId { id: r.id.to_owned(), topic: r.topic.clone(), offset: r.offset });
                if inner.ids.len() > self.id_window {
                    inner.ids.pop_front();
                }
            }
        }
        for c in cursors {
            let pos = inner.cursors.entry(c.agent.clone()).or_insert(0);
            *pos = (*pos).max(c.offset);
        }
        Ok(())
    }

    fn read_range(&self, topic: &TopicName, after: u64, upto: u64, limit: usize) -> Result<Vec<Stored>, StoreError> {
        let inner = self.read();
        let Some(t) = inner.topics.get(topic) else { return Ok(Vec::new()) };
        let start = t.messages.partition_point(|e| e.offset <= after);
        Ok(t.messages
            .range(start..)
            .take_while(|e| e.offset <= upto)
            .take(limit)
            .map(|e| Stored { offset: e.offset, frame: e.frame.clone() })
            .collect())
    }

    fn read_before(&self, topic: &TopicName, before: u64, limit: usize) -> Result<Vec<Stored>, StoreError> {
        let inner = self.read();
        let Some(t) = inner.topics.get(topic) else { return Ok(Vec::new()) };
        let end = t.messages.partition_point(|e| e.offset < before);
        let start = end.saturating_sub(limit);
        Ok(t.messages.range(start..end).map(|e| Stored { offset: e.offset, frame: e.frame.clone() }).collect())
    }

    fn topics(&self) -> Result<Vec<TopicState>, StoreError> {
        Ok(self
            .read()
            .topics
            .iter()
            .map(|(name, t)| TopicState {
                topic: name.clone(),
                epoch: t.epoch.clone(),
                first_offset: t.messages.front().map_or(0, |e| e.offset),
                last_offset: t.last,
            })
            .collect())
    }

    fn first_offset(&self, topic: &TopicName) -> Result<u64, StoreError> {
        Ok(self.read().topics.get(topic).and_then(|t| t.messages.front()).map_or(0, |e| e.offset))
    }

    fn last_offset(&self, topic: &TopicName) -> Result<u64, StoreError> {
        Ok(self.read().topics.get(topic).map_or(0, |t| t.last))
    }

    fn recent_ids(&self, limit: usize) -> Result<Vec<KnownId>, StoreError> {
        Ok(self.read().ids.iter().rev().take(limit).cloned().collect())
    }

    fn cursors(&self) -> Result<Vec<Cursor>, StoreError> {
        Ok(self.read().cursors.iter().map(|(agent, &offset)| Cursor { agent: agent.clone(), offset }).collect())
    }

    fn search(&self, query: &SearchQuery) -> Result<Vec<StoredHit>, StoreError> {
        let words: Vec<String> = query.words.split_whitespace().map(str::to_lowercase).collect();
        if words.is_empty() {
            return Ok(Vec::new());
        }
        let inner = self.read();
        let mut hits = Vec::new();
        for (name, t) in &inner.topics {
            if query.topic.as_ref().is_some_and(|q| q != name) {
                continue;
            }
            for e in &t.messages {
                if query.from_agent.as_ref().is_some_and(|a| *a != e.from_agent) {
                    continue;
                }
                let text = content_text(&e.frame);
                let lower = text.to_lowercase();
                if !words.iter().all(|w| lower.contains(w.as_str())) {
                    continue;
                }
                let score = words.iter().map(|w| lower.matches(w.as_str()).count()).sum::<usize>() as f64;
                hits.push((
                    score,
                    e.offset,
                    StoredHit { frame: e.frame.to_string(), snippet: snippet(&text, &words[0]), score },
                ));
            }
        }
        hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        Ok(hits.into_iter().take(query.limit).map(|(_, _, h)| h).collect())
    }

    fn trim(&self, retention: &dyn Fn(&TopicName) -> Retention, now_ms: i64, budget: usize) -> Result<u64, StoreError> {
        let mut inner = self.write();
        let mut removed = 0u64;
        for (name, t) in inner.topics.iter_mut() {
            let r = retention(name);
            while removed < budget as u64 {
                let Some(front) = t.messages.front() else { break };
                let too_many = r.max_messages > 0 && t.messages.len() as u64 > r.max_messages;
                let too_old = r.max_age_ms > 0 && now_ms.saturating_sub(front.timestamp_ms) > r.max_age_ms as i64;
                if !(too_many || too_old) {
                    break;
                }
                t.messages.pop_front();
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Up to about 120 characters of `text` around the first occurrence of `word`, the
/// word marked with `[` `]`.
pub(crate) fn snippet(text: &str, word: &str) -> String {
    let lower = text.to_lowercase();
    let Some(at) = lower.find(word) else { return text.chars().take(120).collect() };
    if lower.len() != text.len() {
        return text.chars().take(120).collect();
    }
    let start = text[..at].char_indices().rev().nth(50).map_or(0, |(i, _)| i);
    let end_word = at + word.len();
    let end = text[end_word..].char_indices().nth(60).map_or(text.len(), |(i, _)| end_word + i);
    format!(
        "{}{}[{}]{}{}",
        if start > 0 { "…" } else { "" },
        &text[start..at],
        &text[at..end_word],
        &text[end_word..end],
        if end < text.len() { "…" } else { "" }
    )
}
