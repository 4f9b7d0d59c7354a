//! The Redis store: history shared by several servers.
//!
//! Every server of a bus points at the same Redis and key prefix. Redis numbers the
//! messages: one Lua script per commit takes each topic's next offset, appends the
//! finished frame to the topic's stream, remembers client-chosen ids, advances inbox
//! cursors, and publishes every frame and cursor on the bus's feed channel, all
//! atomically and in one round trip. Each server follows the feed ([`follow_feed`]) and
//! fans out to its own subscribers; a gap in a topic's offsets is filled from the
//! stream, so pub/sub losing messages (a reconnect) loses nothing.
//!
//! Keys, under the prefix `P`: `P:topics` (set of names), `P:epochs` and `P:last`
//! (hashes: topic → epoch, topic → newest offset), `P:t:<topic>` (a stream per topic,
//! entry id `<offset>-0`, fields `ts`, `from`, `f` = the frame), `P:id:<id>`
//! (`<offset> <topic>`, expiring), `P:cursors` (hash: agent → inbox offset),
//! `P:presence:<server>` (the agents connected to one server, JSON, expiring), `P:epoch`,
//! and the channel `P:feed`.

use std::sync::Mutex;
use std::time::Duration;

use agentbus_protocol::TopicName;
use redis::{Client, Connection};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::search::searchable_text;
use super::{
    Assigned, Cursor, KnownId, Record, Retention, SearchQuery, Store, StoreError, Stored, StoredHit, TopicState,
};

/// How long a client-chosen id is remembered for idempotency.
pub const ID_TTL: Duration = Duration::from_secs(24 * 3600);

/// Connecting, reading and writing give up after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Newest messages per topic a search looks through (Redis has no full-text index).
const SEARCH_SCAN: usize = 2_000;

/// Commands sent in one pipeline when going through every topic.
const PIPELINE_CHUNK: usize = 500;

/// Connections kept for reads between uses.
const IDLE_CONNECTIONS: usize = 8;

/// Appends one commit. `ARGV`: prefix, id lifetime in seconds, record count, then per
/// record topic, epoch, id, client id (`1`/`0`), timestamp ms, sender, and the frame
/// without its offset; then the cursor count and per cursor agent, offset. Returns per
/// record `n<offset>` (stored) or `d<offset> <topic>` (a known id: not stored again).
/// Publishes what it stored on the feed in one message, a line per frame or cursor
/// (frames are JSON: they hold no raw line break).
const APPEND: &str = r#"
local P = ARGV[1]
local ttl = ARGV[2]
local n = tonumber(ARGV[3])
local out = {}
local feed = {}
local last = {}
local i = 4
for r = 1, n do
  local topic, epoch, id, cid, ts, from, prefix =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  i = i + 7
  local known = false
  if cid == '1' then known = redis.call('GET', P .. ':id:' .. id) end
  if known then
    out[r] = 'd' .. known
  else
    local off = last[topic]
    if not off then
      off = tonumber(redis.call('HGET', P .. ':last', topic) or '0')
      -- A script that failed half-way (Redis does not undo it) may have appended
      -- entries past the recorded offset: continue after the stream's newest entry.
      local top = redis.call('XREVRANGE', P .. ':t:' .. topic, '+', '-', 'COUNT', 1)[1]
      if top then off = math.max(off, tonumber(string.match(top[1], '^(%d+)'))) end
      if off == 0 and redis.call('SADD', P .. ':topics', topic) == 1 then
        redis.call('HSETNX', P .. ':epochs', topic, epoch)
      end
    end
    off = off + 1
    last[topic] = off
    local frame = prefix .. off .. '}'
    redis.call('XADD', P .. ':t:' .. topic, off .. '-0', 'ts', ts, 'from', from, 'f', frame)
    if cid == '1' then redis.call('SET', P .. ':id:' .. id, off .. ' ' .. topic, 'EX', ttl) end
    feed[#feed + 1] = frame
    out[r] = 'n' .. off
  end
end
for topic, off in pairs(last) do redis.call('HSET', P .. ':last', topic, off) end
local c = tonumber(ARGV[i])
i = i + 1
for k = 1, c do
  local agent, off = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local cur = tonumber(redis.call('HGET', P .. ':cursors', agent) or '0')
  if off > cur then
    redis.call('HSET', P .. ':cursors', agent, off)
    feed[#feed + 1] = 'c' .. off .. ' ' .. agent
  end
end
if #feed > 0 then redis.call('PUBLISH', P .. ':feed', table.concat(feed, '\n')) end
return out
"#;

/// Stream entries as Redis returns them: id and field/value pairs.
type Entries<V> = Vec<(String, Vec<(String, V)>)>;

/// History in Redis, shared by every server with the same URL and prefix.
pub struct RedisStore {
    client: Client,
    prefix: String,
    epoch: String,
    append: redis::Script,
    idle: Mutex<Vec<Connection>>,
}

fn db_error(e: redis::RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        StoreError::Unreachable(format!("redis: {e}"))
    } else {
        StoreError::Database(format!("redis: {e}"))
    }
}

/// `url` without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match url.split_once("://").and_then(|(scheme, rest)| Some((scheme, rest.rsplit_once('@')?.1))) {
        Some((scheme, host)) => format!("{scheme}://***@{host}"),
        None => url.to_owned(),
    }
}

fn reply_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(format!("unexpected reply from redis: {e}"))
}

/// The frame without its offset (the encoder always writes it last), for Redis to
/// finish with the offset it assigns.
fn without_offset(frame: &str) -> &str {
    const KEY: &str = "\"offset\":";
    frame.rfind(KEY).map_or(frame, |at| &frame[..at + KEY.len()])
}

/// `frame` with its offset replaced by `offset`.
pub fn with_offset(frame: &str, offset: u64) -> String {
    let head = without_offset(frame);
    let mut out = String::with_capacity(head.len() + 21);
    out.push_str(head);
    out.push_str(itoa::Buffer::new().format(offset));
    out.push('}');
    out
}

impl RedisStore {
    /// Connects to `url` (checked with a `PING`) for the bus named by `prefix`.
    pub fn open(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let open_error = |reason: String| StoreError::Open { path: redact(url), reason };
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if prefix.is_empty() || prefix.len() > 64 || !prefix.chars().all(valid) {
            return Err(open_error(format!("invalid prefix {prefix:?}: use 1 to 64 of A-Z a-z 0-9 . _ -")));
        }
        let client = Client::open(url).map_err(|e| open_error(e.to_string()))?;
        let mut store = Self {
            client,
            prefix: prefix.to_owned(),
            epoch: String::new(),
            append: redis::Script::new(APPEND),
            idle: Mutex::new(Vec::new()),
        };
        // The bus's epoch: set by the first server to use this Redis and prefix, and new
        // again if Redis lost everything.
        let key = format!("{prefix}:epoch");
        store.epoch = store
            .with_conn(|c| {
                redis::cmd("SET").arg(&key).arg(super::new_epoch()).arg("NX").query::<()>(c)?;
                redis::cmd("GET").arg(&key).query::<String>(c)
            })
            .map_err(|e| open_error(e.to_string()))?;
        Ok(store)
    }

    /// The name of the feed channel.
    pub fn feed_channel(&self) -> String {
        format!("{}:feed", self.prefix)
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.prefix)
    }

    fn connect(&self) -> redis::RedisResult<Connection> {
        let conn = self.client.get_connection_with_timeout(IO_TIMEOUT)?;
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        conn.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(conn)
    }

    /// Runs `f` on a pooled connection; a connection that failed is dropped, not reused.
    fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>) -> redis::RedisResult<T> {
        let pooled = self.idle.lock().map(|mut idle| idle.pop()).unwrap_or(None);
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        let result = f(&mut conn);
        if result.is_ok()
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < IDLE_CONNECTIONS
        {
            idle.push(conn);
        }
        result
    }

    fn entries(&self, reply: Entries<Vec<u8>>) -> Vec<Stored> {
        reply
            .into_iter()
            .filter_map(|(id, fields)| {
                let offset = id.split('-').next()?.parse().ok()?;
                let frame = fields.into_iter().find(|(k, _)| k == "f")?.1;
                let frame = String::from_utf8(frame).ok()?;
                Some(Stored { offset, frame: Utf8Bytes::from(frame) })
            })
            .collect()
    }

    fn topic_names(&self) -> Result<Vec<TopicName>, StoreError> {
        let names: Vec<String> = self
            .with_conn(|c| redis::cmd("SMEMBERS").arg(format!("{}:topics", self.prefix)).query(c))
            .map_err(db_error)?;
        Ok(names.iter().filter_map(|n| TopicName::new(n).ok()).collect())
    }
}

/// What the append script said of one record.
fn parse_assigned(reply: &str) -> Option<Assigned> {
    let (kind, rest) = reply.split_at_checked(1)?;
    match kind {
        "n" => Some(Assigned { offset: rest.parse().ok()?, duplicate: None }),
        "d" => {
            let (offset, topic) = rest.split_once(' ')?;
            Some(Assigned { offset: offset.parse().ok()?, duplicate: Some(TopicName::new(topic).ok()?) })
        }
        _ => None,
    }
}

impl Store for RedisStore {
    fn append(&self, records: &[Record<'_>], cursors: &[Cursor]) -> Result<(), StoreError> {
        self.append_numbered(records, cursors).map(|_| ())
    }

    fn numbers_messages(&self) -> bool {
        true
    }

    fn shared_epoch(&self) -> Option<String> {
        Some(self.epoch.clone())
    }

    fn append_numbered(&self, records: &[Record<'_>], cursors: &[Cursor]) -> Result<Vec<Assigned>, StoreError> {
        let mut call = self.append.prepare_invoke();
        call.arg(&self.prefix).arg(ID_TTL.as_secs()).arg(records.len());
        for r in records {
            call.arg(r.topic.as_str())
                .arg(r.epoch)
                .arg(r.id)
                .arg(if r.client_id { "1" } else { "0" })
                .arg(r.timestamp_ms)
                .arg(r.from_agent)
                .arg(without_offset(r.frame));
        }
        call.arg(cursors.len());
        for c in cursors {
            call.arg(&c.agent).arg(c.offset);
        }
        let replies: Vec<String> = self.with_conn(|c| call.invoke(c)).map_err(db_error)?;
        if replies.len() != records.len() {
            return Err(StoreError::Database(format!(
                "redis numbered {} of {} messages",
                replies.len(),
                records.len()
            )));
        }
        replies
            .iter()
            .map(|r| {
                parse_assigned(r).ok_or_else(|| StoreError::Database(format!("unexpected reply {r:?} from redis")))
            })
            .collect()
    }

    fn read_range(&self, topic: &TopicName, after: u64, upto: u64, limit: usize) -> Result<Vec<Stored>, StoreError> {
        if upto <= after || limit == 0 {
            return Ok(Vec::new());
        }
        let key = self.key("t", topic.as_str());
        let reply = self
            .with_conn(|c| {
                redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(format!("{}-0", after + 1))
                    .arg(upto)
                    .arg("COUNT")
                    .arg(limit)
                    .query(c)
            })
            .map_err(db_error)?;
        Ok(self.entries(reply))
    }

    fn read_before(&self, topic: &TopicName, before: u64, limit: usize) -> Result<Vec<Stored>, StoreError> {
        if before <= 1 || limit == 0 {
            return Ok(Vec::new());
        }
        let key = self.key("t", topic.as_str());
        let reply = self
            .with_conn(|c| redis::cmd("XREVRANGE").arg(&key).arg(before - 1).arg("-").arg("COUNT").arg(limit).query(c))
            .map_err(db_error)?;
        let mut out = self.entries(reply);
        out.reverse();
        Ok(out)
    }

    fn topics(&self) -> Result<Vec<TopicState>, StoreError> {
        let names = self.topic_names()?;
        let mut out = Vec::with_capacity(names.len());
        // One round trip per chunk of topics: a bus may hold many.
        for chunk in names.chunks(PIPELINE_CHUNK) {
            let mut pipe = redis::pipe();
            for topic in chunk {
                pipe.cmd("HGET").arg(format!("{}:epochs", self.prefix)).arg(topic.as_str());
                pipe.cmd("HGET").arg(format!("{}:last", self.prefix)).arg(topic.as_str());
                pipe.cmd("XRANGE").arg(self.key("t", topic.as_str())).arg("-").arg("+").arg("COUNT").arg(1);
            }
            let replies: Vec<redis::Value> = self.with_conn(|c| pipe.query(c)).map_err(db_error)?;
            for (topic, r) in chunk.iter().zip(replies.chunks(3)) {
                let [epoch, last, first] = r else { return Err(StoreError::Database("short redis reply".into())) };
                let epoch: Option<String> = redis::from_redis_value_ref(epoch).map_err(reply_error)?;
                let last: Option<u64> = redis::from_redis_value_ref(last).map_err(reply_error)?;
                let first: Entries<Vec<u8>> = redis::from_redis_value_ref(first).map_err(reply_error)?;
                out.push(TopicState {
                    topic: topic.clone(),
                    epoch: epoch.unwrap_or_default(),
                    first_offset: self.entries(first).first().map_or(0, |s| s.offset),
                    last_offset: last.unwrap_or(0),
                });
            }
        }
        Ok(out)
    }

    fn first_offset(&self, topic: &TopicName) -> Result<u64, StoreError> {
        let key = self.key("t", topic.as_str());
        let reply = self
            .with_conn(|c| redis::cmd("XRANGE").arg(&key).arg("-").arg("+").arg("COUNT").arg(1).query(c))
            .map_err(db_error)?;
        Ok(self.entries(reply).first().map_or(0, |s| s.offset))
    }

    fn last_offset(&self, topic: &TopicName) -> Result<u64, StoreError> {
        let last: Option<u64> = self
            .with_conn(|c| redis::cmd("HGET").arg(format!("{}:last", self.prefix)).arg(topic.as_str()).query(c))
            .map_err(db_error)?;
        Ok(last.unwrap_or(0))
    }

    fn recent_ids(&self, _limit: usize) -> Result<Vec<KnownId>, StoreError> {
        // Ids are checked by the append script itself, for every server of the bus.
        Ok(Vec::new())
    }

    fn cursors(&self) -> Result<Vec<Cursor>, StoreError> {
        let all: Vec<(String, u64)> = self
            .with_conn(|c| redis::cmd("HGETALL").arg(format!("{}:cursors", self.prefix)).query(c))
            .map_err(db_error)?;
        Ok(all.into_iter().map(|(agent, offset)| Cursor { agent, offset }).collect())
    }

    /// Looks through the newest `SEARCH_SCAN` messages of each topic for every word of
    /// the query (case-insensitive substrings): Redis keeps no full-text index.
    fn search(&self, query: &SearchQuery) -> Result<Vec<StoredHit>, StoreError> {
        let words: Vec<String> = query.words.split_whitespace().map(str::to_lowercase).collect();
        if words.is_empty() || query.limit == 0 {
            return Ok(Vec::new());
        }
        let topics = match &query.topic {
            Some(t) => vec![t.clone()],
            None => self.topic_names()?,
        };
        let mut hits = Vec::new();
        for topic in topics {
            let key = self.key("t", topic.as_str());
            let newest: Entries<String> = self
                .with_conn(|c| {
                    redis::cmd("XREVRANGE").arg(&key).arg("+").arg("-").arg("COUNT").arg(SEARCH_SCAN).query(c)
                })
                .map_err(db_error)?;
            for (_, fields) in newest {
                let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
                let Some(frame) = field("f") else { continue };
                if query.from_agent.as_deref().is_some_and(|from| field("from") != Some(from)) {
                    continue;
                }
                let Some(text) = searchable_text(frame) else { continue };
                let lower = text.to_lowercase();
                if words.iter().all(|w| lower.contains(w.as_str())) {
                    let snippet: String = text.chars().take(160).collect();
                    hits.push(StoredHit { frame: frame.to_owned(), snippet, score: 1.0 });
                    if hits.len() >= query.limit {
                        return Ok(hits);
                    }
                }
            }
        }
        Ok(hits)
    }

    fn trim(&self, retention: &dyn Fn(&TopicName) -> Retention, now_ms: i64, budget: usize) -> Result<u64, StoreError> {
        let mut removed = 0u64;
        let topics = self.topic_names()?;
        // Trimming by count: every topic's stream, one round trip per chunk of topics.
        for chunk in topics.chunks(PIPELINE_CHUNK) {
            let mut pipe = redis::pipe();
            let mut commands = 0;
            for topic in chunk {
                let r = retention(topic);
                if r.max_messages > 0 {
                    pipe.cmd("XTRIM").arg(self.key("t", topic.as_str())).arg("MAXLEN").arg(r.max_messages);
                    commands += 1;
                }
            }
            if commands == 0 {
                continue;
            }
            let counts: Vec<u64> = self.with_conn(|c| pipe.query(c)).map_err(db_error)?;
            removed += counts.iter().sum::<u64>();
        }
        // Trimming by age: the oldest entries, within the budget.
        for topic in &topics {
            if removed >= budget as u64 {
                break;
            }
            let r = retention(topic);
            if r.max_age_ms > 0 {
                let cutoff = now_ms.saturating_sub(i64::try_from(r.max_age_ms).unwrap_or(i64::MAX));
                removed += self.trim_older(&self.key("t", topic.as_str()), cutoff, budget)?;
            }
        }
        Ok(removed)
    }

    fn ready(&self) -> bool {
        self.with_conn(|c| redis::cmd("PING").query::<String>(c)).is_ok()
    }
}

impl RedisStore {
    /// Publishes what `node` has connected (JSON), for `ttl`: a server that stops
    /// refreshing it drops out of the others' presence.
    pub fn put_presence(&self, node: &str, agents: &str, ttl: Duration) -> Result<(), StoreError> {
        let key = self.key("presence", node);
        self.with_conn(|c| redis::cmd("SET").arg(&key).arg(agents).arg("EX").arg(ttl.as_secs().max(1)).query(c))
            .map_err(db_error)
    }

    /// What every other server has connected (their JSON, as published).
    pub fn other_presence(&self, node: &str) -> Result<Vec<String>, StoreError> {
        let own = self.key("presence", node);
        let pattern = self.key("presence", "*");
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .with_conn(|c| redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(500).query(c))
                .map_err(db_error)?;
            keys.extend(batch.into_iter().filter(|k| *k != own));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> =
            self.with_conn(|c| redis::cmd("MGET").arg(&keys).query(c)).map_err(db_error)?;
        Ok(values.into_iter().flatten().collect())
    }

    /// Withdraws `node`'s presence (at shutdown).
    pub fn drop_presence(&self, node: &str) -> Result<(), StoreError> {
        let key = self.key("presence", node);
        self.with_conn(|c| redis::cmd("DEL").arg(&key).query(c)).map_err(db_error)
    }

    /// Removes the entries of stream `key` older than `cutoff_ms`, looking at no more
    /// than `budget` of them.
    fn trim_older(&self, key: &str, cutoff_ms: i64, budget: usize) -> Result<u64, StoreError> {
        let oldest: Entries<String> = self
            .with_conn(|c| redis::cmd("XRANGE").arg(key).arg("-").arg("+").arg("COUNT").arg(budget.max(1)).query(c))
            .map_err(db_error)?;
        let keep = oldest.iter().find(|(_, fields)| {
            fields
                .iter()
                .find(|(k, _)| k == "ts")
                .and_then(|(_, v)| v.parse::<i64>().ok())
                .is_none_or(|ts| ts >= cutoff_ms)
        });
        let min_id = match keep {
            Some((id, _)) => id.clone(),
            // All of these are too old: cut after the last one looked at.
            None => match oldest.last() {
                Some((id, _)) => {
                    let offset: u64 = id.split('-').next().and_then(|o| o.parse().ok()).unwrap_or(0);
                    format!("{}-0", offset + 1)
                }
                None => return Ok(0),
            },
        };
        self.with_conn(|c| redis::cmd("XTRIM").arg(key).arg("MINID").arg(&min_id).query(c)).map_err(db_error)
    }
}

/// What the feed carried.
#[derive(Debug, PartialEq)]
pub enum FeedItem {
    /// A message frame, stored at `offset` of `topic`.
    Message {
        /// The topic.
        topic: TopicName,
        /// Its offset.
        offset: u64,
        /// The frame.
        frame: Utf8Bytes,
    },
    /// An agent's inbox cursor advanced.
    Cursor(Cursor),
}

/// Reads one line of a feed message.
pub fn parse_feed(text: &str) -> Option<FeedItem> {
    if let Some(rest) = text.strip_prefix('c') {
        let (offset, agent) = rest.split_once(' ')?;
        return Some(FeedItem::Cursor(Cursor { agent: agent.to_owned(), offset: offset.parse().ok()? }));
    }
    let after = text.strip_prefix(r#"{"type":"message","topic":""#)?;
    let topic = TopicName::new(&after[..after.find('"')?]).ok()?;
    let offset = agentbus_protocol::frame_offset(text)?;
    Some(FeedItem::Message { topic, offset, frame: Utf8Bytes::from(text.to_owned()) })
}

/// The callbacks of [`follow_feed`].
pub struct FeedHandlers<'a> {
    /// Whether to stop.
    pub stopped: &'a dyn Fn() -> bool,
    /// Takes each item; `false` stops following.
    pub deliver: &'a dyn Fn(FeedItem) -> bool,
    /// Takes a topic's newest offset after every (re)connection (what the feed may have
    /// missed while it was away); `false` stops following.
    pub caught_up: &'a dyn Fn(TopicName, u64) -> bool,
    /// Told of every (re)connection.
    pub connected: &'a dyn Fn(),
}

/// Follows the bus's feed until told to stop. Call on a dedicated thread.
pub fn follow_feed(store: &RedisStore, h: &FeedHandlers<'_>) {
    let stopped = h.stopped;
    let mut backoff = Duration::from_millis(100);
    while !stopped() {
        match follow_once(store, h) {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "the redis feed was lost; reconnecting");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn follow_once(store: &RedisStore, h: &FeedHandlers<'_>) -> Result<(), StoreError> {
    let (stopped, deliver, caught_up) = (h.stopped, h.deliver, h.caught_up);
    let mut conn = store.connect().map_err(db_error)?;
    let mut pubsub = conn.as_pubsub();
    pubsub.subscribe(store.feed_channel()).map_err(db_error)?;
    (h.connected)();
    // Anything stored before the subscription took effect comes from the streams.
    for t in store.topics()? {
        if !caught_up(t.topic, t.last_offset) {
            return Ok(());
        }
    }
    pubsub.set_read_timeout(Some(Duration::from_millis(500))).map_err(db_error)?;
    loop {
        if stopped() {
            return Ok(());
        }
        match pubsub.get_message() {
            Ok(msg) => {
                let payload: String = match msg.get_payload() {
                    Ok(p) => p,
                    Err(_) => continue,
                };
                for line in payload.split('\n') {
                    match parse_feed(line) {
                        Some(item) => {
                            if !deliver(item) {
                                return Ok(());
                            }
                        }
                        None => tracing::warn!("unreadable item on the redis feed ignored"),
                    }
                }
            }
            Err(e) if e.is_timeout() => {}
            Err(e) => return Err(db_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(redact("redis://:secret@10.0.0.5:6379/2"), "redis://***@10.0.0.5:6379/2");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn offsets_are_replaced_in_place() {
        let frame = r#"{"type":"message","topic":"a","id":"x","content":"\"offset\":9","offset":12}"#;
        assert_eq!(
            with_offset(frame, 345),
            r#"{"type":"message","topic":"a","id":"x","content":"\"offset\":9","offset":345}"#
        );
        assert!(without_offset(frame).ends_with(r#""offset":"#));
    }

    #[test]
    fn script_replies_and_feed_items_are_read() {
        assert_eq!(parse_assigned("n42"), Some(Assigned { offset: 42, duplicate: None }));
        assert_eq!(
            parse_assigned("d7 jobs.a"),
            Some(Assigned { offset: 7, duplicate: Some(TopicName::new("jobs.a").unwrap()) })
        );
        assert_eq!(parse_assigned("x1"), None);
        assert_eq!(parse_feed("c12 bob"), Some(FeedItem::Cursor(Cursor { agent: "bob".into(), offset: 12 })));
        let frame = r#"{"type":"message","topic":"@bob","id":"1","offset":3}"#;
        match parse_feed(frame) {
            Some(FeedItem::Message { topic, offset, .. }) => assert_eq!((topic.as_str(), offset), ("@bob", 3)),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_feed("{}"), None);
    }
}
