//! The store conformance suite: every behaviour of the `Store` interface, written once and
//! run against each implementation (`memory::*` and `sqlite::*`, and `redis::*` for what
//! a store that numbers messages itself shares with them), plus what only the SQLite
//! store has to do (survive a reopen, refuse bad files, stop at its size cap) and what
//! only the Redis store does (number messages, check client ids, share one history
//! between stores with the same prefix), against a real `redis-server`.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use agentbus_protocol::TopicName;
use agentbus_server::config::{StoreConfig, SyncMode};
use agentbus_server::store::memory::MemoryStore;
use agentbus_server::store::redis::RedisStore;
use agentbus_server::store::sqlite::SqliteStore;
use agentbus_server::store::{Cursor, Record, Retention, SearchQuery, Store, StoreError, StoredHit};

/// Keeps a store's files (or server) alive for the duration of a test.
type Guard = Box<dyn std::any::Any>;

/// Makes a fresh, empty store.
type Factory = fn() -> (Arc<dyn Store>, Guard);

fn memory_store() -> (Arc<dyn Store>, Guard) {
    (Arc::new(MemoryStore::new(1000)), Box::new(()))
}

fn sqlite_store() -> (Arc<dyn Store>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), &StoreConfig::default()).unwrap();
    (Arc::new(store), Box::new(dir))
}

/// A `redis-server` of its own on a free loopback port, stopped when dropped.
struct RedisServer {
    child: std::process::Child,
    url: String,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `redis-server` can run here; in CI (`CI=true`) it must.
fn redis_available() -> bool {
    let found = std::process::Command::new("redis-server")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "redis-server is not installed (run scripts/test.sh)");
        eprintln!("redis-server is not installed: Redis store tests skipped");
    }
    found
}

fn start_redis() -> RedisServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let server = RedisServer { child, url: format!("redis://127.0.0.1:{port}/") };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    server
}

fn redis_store() -> (Arc<dyn Store>, Guard) {
    let server = start_redis();
    let store = RedisStore::open(&server.url, "test").unwrap();
    (Arc::new(store), Box::new(server))
}

// ---------------------------------------------------------------------------------------
// Building messages
// ---------------------------------------------------------------------------------------

/// An owned message, to borrow a `Record` from.
#[derive(Debug, Clone)]
struct Msg {
    topic: TopicName,
    epoch: String,
    offset: u64,
    id: String,
    client_id: bool,
    ts: i64,
    from: String,
    frame: String,
}

impl Msg {
    /// A message whose content is the JSON string `text`.
    fn text(topic: &str, offset: u64, text: &str) -> Msg {
        Msg::json(topic, offset, &serde_json::to_string(text).unwrap())
    }

    /// A message whose content is the JSON value `content`.
    fn json(topic: &str, offset: u64, content: &str) -> Msg {
        let mut m = Msg {
            topic: TopicName::new(topic).unwrap(),
            epoch: "e1".to_owned(),
            offset,
            id: format!("srv-{topic}-{offset}"),
            client_id: false,
            ts: 1_000 * offset as i64,
            from: "alice".to_owned(),
            frame: String::new(),
        };
        m.frame = m.encode(content);
        m
    }

    fn encode(&self, content: &str) -> String {
        format!(
            r#"{{"type":"message","topic":"{}","id":{},"timestamp":"2026-01-01T00:00:00Z","from_agent":{},"content":{},"offset":{}}}"#,
            self.topic,
            serde_json::to_string(&self.id).unwrap(),
            serde_json::to_string(&self.from).unwrap(),
            content,
            self.offset
        )
    }

    fn from(mut self, agent: &str) -> Msg {
        self.from = agent.to_owned();
        self
    }

    fn ts(mut self, ts: i64) -> Msg {
        self.ts = ts;
        self
    }

    fn epoch(mut self, epoch: &str) -> Msg {
        self.epoch = epoch.to_owned();
        self
    }

    fn client_id(mut self, id: &str) -> Msg {
        self.id = id.to_owned();
        self.client_id = true;
        self
    }

    fn record(&self) -> Record<'_> {
        Record {
            topic: &self.topic,
            epoch: &self.epoch,
            offset: self.offset,
            id: &self.id,
            client_id: self.client_id,
            timestamp_ms: self.ts,
            from_agent: &self.from,
            frame: &self.frame,
        }
    }
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

/// Appends `msgs` and, as the writer does when it is idle, flushes them into place (for
/// search and trimming). A failed flush refuses the next append.
fn append(store: &dyn Store, msgs: &[Msg]) -> Result<(), StoreError> {
    append_only(store, msgs)?;
    let _ = store.flush();
    Ok(())
}

/// Appends `msgs` without flushing.
fn append_only(store: &dyn Store, msgs: &[Msg]) -> Result<(), StoreError> {
    let records: Vec<Record<'_>> = msgs.iter().map(Msg::record).collect();
    store.append(&records, &[])
}

/// Messages `from..=to` of `topic`, with content "message N".
fn numbered(topic: &str, from: u64, to: u64) -> Vec<Msg> {
    (from..=to).map(|o| Msg::text(topic, o, &format!("message {o}"))).collect()
}

fn offsets(stored: &[agentbus_server::store::Stored]) -> Vec<u64> {
    stored.iter().map(|s| s.offset).collect()
}

fn keep(max_messages: u64, max_age_ms: u64) -> impl Fn(&TopicName) -> Retention {
    move |_| Retention { max_messages, max_age_ms }
}

fn search(store: &dyn Store, words: &str) -> Vec<StoredHit> {
    search_with(store, SearchQuery { words: words.to_owned(), limit: 100, ..SearchQuery::default() })
}

fn search_with(store: &dyn Store, query: SearchQuery) -> Vec<StoredHit> {
    store.maintain(10_000).unwrap();
    store.search(&query).unwrap()
}

/// The offsets of hits, read back from their frames.
fn hit_offsets(hits: &[StoredHit]) -> Vec<u64> {
    let mut v: Vec<u64> = hits
        .iter()
        .map(|h| serde_json::from_str::<serde_json::Value>(&h.frame).unwrap()["offset"].as_u64().unwrap())
        .collect();
    v.sort_unstable();
    v
}

fn sorted_cursors(store: &dyn Store) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = store.cursors().unwrap().into_iter().map(|c| (c.agent, c.offset)).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// The suite, for every store
// ---------------------------------------------------------------------------------------

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $name() { super::$name(super::memory_store) } )*
        }
        mod sqlite {
            $( #[test] fn $name() { super::$name(super::sqlite_store) } )*
        }
    };
}

/// What the Redis store shares with the others (it numbers messages itself, so the
/// checks of offsets given by the broker do not apply, and it has no full-text index).
macro_rules! redis_conformance {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $( #[test] fn $name() { if super::redis_available() { super::$name(super::redis_store) } } )*
        }
    };
}

redis_conformance!(
    read_range_returns_offsets_after_up_to_oldest_first_within_the_limit,
    read_before_returns_the_newest_below_oldest_first,
    unknown_topics_read_as_empty,
    frames_are_returned_verbatim,
    a_batch_may_interleave_topics_and_offsets_continue_across_batches,
    long_runs_of_one_topic_and_interleaved_topics_in_one_batch_are_all_stored,
    topics_report_first_and_last_offsets_and_the_first_epoch,
    cursors_are_upserted_and_never_move_back,
    trimming_by_count_keeps_the_newest_messages,
    trimming_by_age_removes_messages_older_than_the_limit,
    unlimited_retention_trims_nothing,
    search_requires_every_word,
    search_ignores_the_other_fields_of_the_frame,
    search_filters_by_topic_and_sender,
    hostile_queries_are_plain_words_and_never_fail,
    an_empty_query_finds_nothing,
    trimmed_messages_disappear_from_search,
    reads_run_while_batches_are_appended,
    a_fresh_store_is_ready_and_empty,
);

conformance!(
    read_range_returns_offsets_after_up_to_oldest_first_within_the_limit,
    read_before_returns_the_newest_below_oldest_first,
    unknown_topics_read_as_empty,
    frames_are_returned_verbatim,
    a_batch_with_a_gap_stores_nothing,
    a_repeated_or_skipped_first_offset_is_refused,
    a_batch_may_interleave_topics_and_offsets_continue_across_batches,
    long_runs_of_one_topic_and_interleaved_topics_in_one_batch_are_all_stored,
    topics_report_first_and_last_offsets_and_the_first_epoch,
    recent_ids_are_newest_first_and_only_client_chosen,
    cursors_are_upserted_and_never_move_back,
    a_refused_batch_stores_none_of_its_cursors,
    trimming_by_count_keeps_the_newest_messages,
    trimming_by_age_removes_messages_older_than_the_limit,
    trimming_removes_at_most_the_budget_across_topics,
    trimming_every_message_keeps_the_last_offset,
    unlimited_retention_trims_nothing,
    search_requires_every_word,
    search_indexes_string_content_as_text_and_other_values_as_json,
    search_ignores_the_other_fields_of_the_frame,
    search_filters_by_topic_and_sender,
    search_ranks_better_matches_first_with_positive_scores_and_respects_the_limit,
    search_snippets_mark_the_match,
    hostile_queries_are_plain_words_and_never_fail,
    an_empty_query_finds_nothing,
    trimmed_messages_disappear_from_search,
    messages_trimmed_before_indexing_never_appear_in_search,
    reads_run_while_batches_are_appended,
    a_fresh_store_is_ready_and_empty,
);

fn read_range_returns_offsets_after_up_to_oldest_first_within_the_limit(make: Factory) {
    let (store, _g) = make();
    append(&*store, &numbered("t", 1, 10)).unwrap();
    let t = topic("t");
    assert_eq!(offsets(&store.read_range(&t, 0, 10, 100).unwrap()), (1..=10).collect::<Vec<_>>());
    assert_eq!(offsets(&store.read_range(&t, 3, 6, 100).unwrap()), vec![4, 5, 6]);
    assert_eq!(offsets(&store.read_range(&t, 3, 10, 2).unwrap()), vec![4, 5]);
    assert_eq!(offsets(&store.read_range(&t, 8, u64::MAX, 100).unwrap()), vec![9, 10]);
    assert!(store.read_range(&t, 10, 20, 100).unwrap().is_empty());
    assert!(store.read_range(&t, 5, 5, 100).unwrap().is_empty());
    assert!(store.read_range(&t, 0, 10, 0).unwrap().is_empty());
}

fn read_before_returns_the_newest_below_oldest_first(make: Factory) {
    let (store, _g) = make();
    append(&*store, &numbered("t", 1, 10)).unwrap();
    let t = topic("t");
    assert_eq!(offsets(&store.read_before(&t, 8, 3).unwrap()), vec![5, 6, 7]);
    assert_eq!(offsets(&store.read_before(&t, 3, 10).unwrap()), vec![1, 2]);
    assert_eq!(offsets(&store.read_before(&t, u64::MAX, 2).unwrap()), vec![9, 10]);
    assert!(store.read_before(&t, 1, 10).unwrap().is_empty());
    assert!(store.read_before(&t, 10, 0).unwrap().is_empty());
}

fn unknown_topics_read_as_empty(make: Factory) {
    let (store, _g) = make();
    append(&*store, &numbered("t", 1, 3)).unwrap();
    let other = topic("other");
    assert!(store.read_range(&other, 0, 100, 100).unwrap().is_empty());
    assert!(store.read_before(&other, 100, 100).unwrap().is_empty());
    assert_eq!(store.first_offset(&other).unwrap(), 0);
}

fn frames_are_returned_verbatim(make: Factory) {
    let (store, _g) = make();
    let odd = Msg::json("t", 1, r#" { "b" : [1, 2.50, "é\u00e9 \"q\" 🦀"] ,"a":null } "#);
    append(&*store, std::slice::from_ref(&odd)).unwrap();
    let read = store.read_range(&topic("t"), 0, 1, 10).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].frame.as_str(), odd.frame);
}

fn a_batch_with_a_gap_stores_nothing(make: Factory) {
    let (store, _g) = make();
    append(&*store, &numbered("t", 1, 2)).unwrap();
    // One good record (t:3, a new topic u:1) and one bad (t:5).
    let batch = vec![Msg::text("t", 3, "good"), Msg::text("u", 1, "good"), Msg::text("t", 5, "bad")];
    match append(&*store, &batch) {
        Err(StoreError::OutOfOrder { topic, last, got }) => assert_eq!((topic.as_str(), last, got), ("t", 3, 5)),
        other => panic!("expected OutOfOrder, got {other:?}"),
    }
    assert_eq!(offsets(&store.read_range(&topic("t"), 0, 100, 100).unwrap()), vec![1, 2]);
    assert!(store.read_range(&topic("u"), 0, 100, 100).unwrap().is_empty());
    let topics = store.topics().unwrap();
    assert_eq!(topics.len(), 1, "the new topic of a refused batch must not exist: {topics:?}");
    assert_eq!(topics[0].last_offset, 2);
    // The store's own bookkeeping was not advanced: the good records can follow now.
    append(&*store, &[Msg::text("t", 3, "good"), Msg::text("u", 1, "good")]).unwrap();
    assert_eq!(offsets(&store.read_range(&topic("t"), 0, 100, 100).unwrap()), vec![1, 2, 3]);
    assert_eq!(offsets(&store.read_range(&topic("u"), 0, 100, 100).unwrap()), vec![1]);
}

fn a_repeated_or_skipped_first_offset_is_refused(make: Factory) {
    let (store, _g) = make();
    assert!(matches!(append(&*store, &numbered("t", 2, 3)), Err(StoreError::OutOfOrder { last: 0, got: 2, .. })));
    assert!(matches!(append(&*store, &numbered("t", 0, 0)), Err(StoreError::OutOfOrder { last: 0, got: 0, .. })));
    append(&*store, &numbered("t", 1, 3)).unwrap();
    assert!(matches!(append(&*store, &numbered("t", 3, 3)), Err(StoreError::OutOfOrder { last: 3, got: 3, .. })));
    let dup_in_batch = vec![Msg::text("t", 4, "a"), Msg::text("t", 4, "b")];
    assert!(matches!(append(&*store, &dup_in_batch), Err(StoreError::OutOfOrder { last: 4, got: 4, .. })));
    assert_eq!(offsets(&store.read_range(&topic("t"), 0, 100, 100).unwrap()), vec![1, 2, 3]);
}

fn a_batch_may_interleave_topics_and_offsets_continue_across_batches(make: Factory) {
    let (store, _g) = make();
    let batch = vec![Msg::text("a", 1, "x"), Msg::text("b", 1, "x"), Msg::text("a", 2, "x"), Msg::text("b", 2, "x")];
    append(&*store, &batch).unwrap();
    append(&*store, &[Msg::text("b", 3, "x"), Msg::text("a", 3, "x")]).unwrap();
    assert_eq!(offsets(&store.read_range(&topic("a"), 0, 100, 100).unwrap()), vec![1, 2, 3]);
    assert_eq!(offsets(&store.read_range(&topic("b"), 0, 100, 100).unwrap()), vec![1, 2, 3]);
    // An empty batch is fine.
    store.append(&[], &[]).unwrap();
}

fn long_runs_of_one_topic_and_interleaved_topics_in_one_batch_are_all_stored(make: Factory) {
    let (store, _g) = make();
    // 40 of `a` (longer than one multi-row insert), 30 alternating `a` and `b`, 70 of `b`,
    // then 33 of `c` after one of `a`: every shape the SQLite store inserts differently.
    let mut next = std::collections::HashMap::new();
    let mut batch = Vec::new();
    let mut add = |t: &'static str| {
        let o = next.entry(t).or_insert(0u64);
        *o += 1;
        batch.push(Msg::text(t, *o, &format!("{t} {o}")));
    };
    (0..40).for_each(|_| add("a"));
    (0..30).for_each(|i| add(if i % 2 == 0 { "a" } else { "b" }));
    (0..70).for_each(|_| add("b"));
    add("a");
    (0..33).for_each(|_| add("c"));
    append(&*store, &batch).unwrap();
    for (t, last) in [("a", 56), ("b", 85), ("c", 33)] {
        let stored = store.read_range(&topic(t), 0, 1000, 1000).unwrap();
        assert_eq!(offsets(&stored), (1..=last).collect::<Vec<u64>>(), "topic {t}");
        for s in &stored {
            let frame: serde_json::Value = serde_json::from_str(&s.frame).unwrap();
            assert_eq!(frame["content"], format!("{t} {}", s.offset), "topic {t}");
        }
    }
}

fn topics_report_first_and_last_offsets_and_the_first_epoch(make: Factory) {
    let (store, _g) = make();
    assert!(store.topics().unwrap().is_empty());
    append(&*store, &[Msg::text("a", 1, "x").epoch("ea"), Msg::text("@bob", 1, "x").epoch("eb")]).unwrap();
    append(&*store, &[Msg::text("a", 2, "x").epoch("later")]).unwrap();
    let mut topics = store.topics().unwrap();
    topics.sort_by(|x, y| x.topic.as_str().cmp(y.topic.as_str()));
    let seen: Vec<(&str, &str, u64, u64)> =
        topics.iter().map(|t| (t.topic.as_str(), t.epoch.as_str(), t.first_offset, t.last_offset)).collect();
    assert_eq!(seen, vec![("@bob", "eb", 1, 1), ("a", "ea", 1, 2)]);
    assert_eq!(store.first_offset(&topic("a")).unwrap(), 1);
}

fn recent_ids_are_newest_first_and_only_client_chosen(make: Factory) {
    let (store, _g) = make();
    append(
        &*store,
        &[Msg::text("a", 1, "x").client_id("c1"), Msg::text("a", 2, "x"), Msg::text("b", 1, "x").client_id("c2")],
    )
    .unwrap();
    append(&*store, &[Msg::text("a", 3, "x").client_id("c3"), Msg::text("a", 4, "x")]).unwrap();
    let ids: Vec<(String, String, u64)> =
        store.recent_ids(10).unwrap().into_iter().map(|k| (k.id, k.topic.to_string(), k.offset)).collect();
    assert_eq!(ids, vec![("c3".into(), "a".into(), 3), ("c2".into(), "b".into(), 1), ("c1".into(), "a".into(), 1)]);
    let two: Vec<String> = store.recent_ids(2).unwrap().into_iter().map(|k| k.id).collect();
    assert_eq!(two, vec!["c3", "c2"]);
}

fn cursors_are_upserted_and_never_move_back(make: Factory) {
    let (store, _g) = make();
    let c = |agent: &str, offset| Cursor { agent: agent.to_owned(), offset };
    store.append(&[], &[c("bob", 5), c("carol", 2)]).unwrap();
    let msgs = numbered("@bob", 1, 1);
    let records: Vec<Record<'_>> = msgs.iter().map(Msg::record).collect();
    store.append(&records, &[c("bob", 3), c("carol", 7), c("dave", 1)]).unwrap();
    assert_eq!(sorted_cursors(&*store), vec![("bob".into(), 5), ("carol".into(), 7), ("dave".into(), 1)]);
    store.append(&[], &[c("bob", 9), c("bob", 6)]).unwrap();
    assert_eq!(sorted_cursors(&*store)[0], ("bob".into(), 9));
}

fn a_refused_batch_stores_none_of_its_cursors(make: Factory) {
    let (store, _g) = make();
    let msgs = numbered("t", 2, 2);
    let records: Vec<Record<'_>> = msgs.iter().map(Msg::record).collect();
    let err = store.append(&records, &[Cursor { agent: "bob".into(), offset: 4 }]);
    assert!(matches!(err, Err(StoreError::OutOfOrder { .. })));
    assert!(store.cursors().unwrap().is_empty());
}

fn trimming_by_count_keeps_the_newest_messages(make: Factory) {
    let (store, _g) = make();
    append(&*store, &numbered("t", 1, 10)).unwrap();
    append(&*store, &numbered("u", 1, 2)).unwrap();
    assert_eq!(store.trim(&keep(3, 0), 0, 1000).unwrap(), 7);
    assert_eq!(offsets(&store.read_range(&topic("t"), 0, 100, 100).unwrap()), vec![8, 9, 10]);
    assert_eq!(offsets(&store.read_range(&topic("u"), 0, 100, 100).unwrap()), vec![1, 2]);
    assert_eq!(store.first_offset(&topic("t")).unwrap(), 8);
    let t = store.topics().unwrap().into_iter().find(|s| s.topic.as_str() == "t").unwrap();
    assert_eq!((t.first_offset, t.last_offset), (8, 10));
    assert_eq!(store.trim(&keep(3, 0), 0, 1000).unwrap(), 0);
}

fn trimming_by_age_removes_messages_older_than_the_limit(make: Factory) {
    let (store, _g) = make();
    let msgs: Vec<Msg> = (1..=4).map(|o| Msg::text("t", o, "x").ts(o as i64 * 1000)).collect();
    append(&*store, &msgs).unwrap();
    // At 5000 ms with a 2500 ms limit, the messages of 1000 and 2000 ms are too old.
    assert_eq!(store.trim(&keep(0, 2500), 5000, 1000).unwrap(), 2);
    assert_eq!(offsets(&store.read_range(&topic("t"), 0, 100, 100).unwrap()), vec![3, 4]);
    assert_eq!(store.trim(&keep(0, 2500), 5000, 1000).unwrap(), 0);
    // Both limits at once: whichever removes more applies.
    assert_eq!(store.trim(&keep(1, 1_000_000), 5000, 1000).unwrap(), 1);
    assert_eq!(store.first_offset(&topic("t")).unwrap(), 4);
}

fn trimming_removes_at_most_the_budget_across_topics(make: Factory) {
    let (store, _g) = make();
    append(&*store, &numbered("a", 1, 6)).unwrap();
    append(&*store, &numbered("b", 1, 6)).unwrap();
    // 5 + 5 to remove, 4 at a time.
    let mut steps = Vec::new();
    loop {
        let n = store.trim(&keep(1, 0), 0, 4).unwrap();
        steps.push(n);
        if n == 0 {
            break;
        }
    }
    assert_eq!(steps, vec![4, 4, 2, 0]);
    assert_eq!(offsets(&store.read_range(&topic("a"), 0, 100, 100).unwrap()), vec![6]);
    assert_eq!(offsets(&store.read_range(&topic("b"), 0, 100, 100).unwrap()), vec![6]);
}

fn trimming_every_message_keeps_the_last_offset(make: Factory) {
    let (store, _g) = make();
    let msgs: Vec<Msg> = (1..=3).map(|o| Msg::text("t", o, "x").ts(0)).collect();
    append(&*store, &msgs).unwrap();
    assert_eq!(store.trim(&keep(0, 10), 1_000_000, 1000).unwrap(), 3);
    let t = &store.topics().unwrap()[0];
    assert_eq!((t.first_offset, t.last_offset, t.epoch.as_str()), (0, 3, "e1"));
    assert_eq!(store.first_offset(&topic("t")).unwrap(), 0);
    assert_eq!(store.last_offset(&topic("t")).unwrap(), 3);
    assert_eq!(store.last_offset(&topic("never")).unwrap(), 0);
    assert!(matches!(append(&*store, &numbered("t", 1, 1)), Err(StoreError::OutOfOrder { last: 3, .. })));
    append(&*store, &numbered("t", 4, 4)).unwrap();
    assert_eq!(offsets(&store.read_range(&topic("t"), 0, 100, 100).unwrap()), vec![4]);
}

fn unlimited_retention_trims_nothing(make: Factory) {
    let (store, _g) = make();
    let msgs: Vec<Msg> = (1..=3).map(|o| Msg::text("t", o, "x").ts(0)).collect();
    append(&*store, &msgs).unwrap();
    assert_eq!(store.trim(&keep(0, 0), i64::MAX, 1000).unwrap(), 0);
    assert_eq!(store.trim(&keep(3, 0), i64::MAX, 0).unwrap(), 0);
    assert_eq!(store.read_range(&topic("t"), 0, 100, 100).unwrap().len(), 3);
}

fn search_requires_every_word(make: Factory) {
    let (store, _g) = make();
    append(
        &*store,
        &[
            Msg::text("t", 1, "apple banana"),
            Msg::text("t", 2, "apple cherry"),
            Msg::text("t", 3, "banana cherry apple"),
        ],
    )
    .unwrap();
    assert_eq!(hit_offsets(&search(&*store, "apple")), vec![1, 2, 3]);
    assert_eq!(hit_offsets(&search(&*store, "apple banana")), vec![1, 3]);
    assert_eq!(hit_offsets(&search(&*store, "cherry banana apple")), vec![3]);
    assert_eq!(hit_offsets(&search(&*store, "Cherry  APPLE")), vec![2, 3]);
    assert!(search(&*store, "apple durian").is_empty());
}

fn search_indexes_string_content_as_text_and_other_values_as_json(make: Factory) {
    let (store, _g) = make();
    append(
        &*store,
        &[
            Msg::text("t", 1, "say \"hello\" to the zebra"),
            Msg::json("t", 2, r#"{"kind":"review","body":"the giraffe approves"}"#),
            Msg::json("t", 3, r#"["walrus", 42]"#),
            Msg::json("t", 4, "123456"),
        ],
    )
    .unwrap();
    assert_eq!(hit_offsets(&search(&*store, "hello zebra")), vec![1]);
    assert_eq!(hit_offsets(&search(&*store, "giraffe")), vec![2]);
    assert_eq!(hit_offsets(&search(&*store, "kind review")), vec![2], "object keys and values are searchable");
    assert_eq!(hit_offsets(&search(&*store, "walrus")), vec![3]);
    assert_eq!(hit_offsets(&search(&*store, "123456")), vec![4]);
    let hit = &search(&*store, "giraffe")[0];
    assert!(hit.frame.contains(r#""body":"the giraffe approves""#), "the frame is returned whole: {}", hit.frame);
}

fn search_ignores_the_other_fields_of_the_frame(make: Factory) {
    let (store, _g) = make();
    append(&*store, &[Msg::text("topicword", 1, "plain").from("senderword")]).unwrap();
    assert!(search(&*store, "senderword").is_empty());
    assert!(search(&*store, "topicword").is_empty());
    assert!(search(&*store, "message").is_empty(), "the frame type is not content");
    assert_eq!(search(&*store, "plain").len(), 1);
}

fn search_filters_by_topic_and_sender(make: Factory) {
    let (store, _g) = make();
    append(
        &*store,
        &[
            Msg::text("a", 1, "needle one").from("alice"),
            Msg::text("a", 2, "needle two").from("bob"),
            Msg::text("b", 1, "needle three").from("alice"),
            Msg::text("b", 2, "haystack").from("bob"),
        ],
    )
    .unwrap();
    let q = |topic: Option<&str>, from: Option<&str>| SearchQuery {
        words: "needle".into(),
        topic: topic.map(self::topic),
        from_agent: from.map(str::to_owned),
        limit: 10,
    };
    let frames = |hits: Vec<StoredHit>| {
        let mut v: Vec<String> = hits
            .into_iter()
            .map(|h| {
                let f: serde_json::Value = serde_json::from_str(&h.frame).unwrap();
                format!("{}:{}", f["topic"].as_str().unwrap(), f["offset"])
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(frames(search_with(&*store, q(None, None))), vec!["a:1", "a:2", "b:1"]);
    assert_eq!(frames(search_with(&*store, q(Some("a"), None))), vec!["a:1", "a:2"]);
    assert_eq!(frames(search_with(&*store, q(None, Some("alice")))), vec!["a:1", "b:1"]);
    assert_eq!(frames(search_with(&*store, q(Some("b"), Some("alice")))), vec!["b:1"]);
    assert!(search_with(&*store, q(Some("b"), Some("bob"))).is_empty());
    assert!(search_with(&*store, q(Some("nowhere"), None)).is_empty());
}

fn search_ranks_better_matches_first_with_positive_scores_and_respects_the_limit(make: Factory) {
    let (store, _g) = make();
    append(
        &*store,
        &[
            Msg::text("t", 1, "kiwi mango papaya guava lime"),
            Msg::text("t", 2, "kiwi kiwi kiwi"),
            Msg::text("t", 3, "lemon"),
        ],
    )
    .unwrap();
    let hits = search(&*store, "kiwi");
    assert_eq!(hit_offsets(&hits[..1]), vec![2], "more occurrences rank first: {hits:?}");
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().all(|h| h.score > 0.0 && h.score.is_finite()), "{hits:?}");
    assert!(hits[0].score >= hits[1].score);
    let one = search_with(&*store, SearchQuery { words: "kiwi".into(), limit: 1, ..SearchQuery::default() });
    assert_eq!(hit_offsets(&one), vec![2]);
    let none = search_with(&*store, SearchQuery { words: "kiwi".into(), limit: 0, ..SearchQuery::default() });
    assert!(none.is_empty());
}

fn search_snippets_mark_the_match(make: Factory) {
    let (store, _g) = make();
    append(&*store, &[Msg::text("t", 1, "the quick brown fox jumps over the lazy dog")]).unwrap();
    let hits = search(&*store, "brown");
    assert_eq!(hits.len(), 1);
    assert!(hits[0].snippet.contains("[brown]"), "{:?}", hits[0].snippet);
    assert!(hits[0].snippet.contains("quick"), "{:?}", hits[0].snippet);
}

fn hostile_queries_are_plain_words_and_never_fail(make: Factory) {
    let (store, _g) = make();
    append(&*store, &[Msg::text("t", 1, "apple banana"), Msg::text("t", 2, "x or y")]).unwrap();
    store.maintain(10_000).unwrap();
    for words in [
        "\"",
        "\"\"",
        "\"apple",
        "NEAR(",
        "NEAR(apple banana, 2)",
        "*",
        "apple*",
        "a OR b",
        "apple AND",
        "NOT apple",
        "-x",
        "col:x",
        "body:apple",
        "{body}: apple",
        "^apple",
        "(",
        ")",
        "'",
        "\\",
        "+",
        "apple\0banana",
        "🦀",
        "rowid = 1; DROP TABLE messages; --",
    ] {
        let q = SearchQuery { words: words.to_owned(), limit: 10, ..SearchQuery::default() };
        if let Err(e) = store.search(&q) {
            panic!("query {words:?} failed: {e}");
        }
    }
    // Operators are words: "apple OR durian" needs all three.
    assert!(search(&*store, "apple OR durian").is_empty());
    assert_eq!(hit_offsets(&search(&*store, "x or y")), vec![2]);
    assert_eq!(store.read_range(&topic("t"), 0, 10, 10).unwrap().len(), 2);
}

fn an_empty_query_finds_nothing(make: Factory) {
    let (store, _g) = make();
    append(&*store, &[Msg::text("t", 1, "apple")]).unwrap();
    assert!(search(&*store, "").is_empty());
    assert!(search(&*store, "   ").is_empty());
}

fn trimmed_messages_disappear_from_search(make: Factory) {
    let (store, _g) = make();
    let msgs: Vec<Msg> = (1..=5).map(|o| Msg::text("t", o, &format!("needle number{o}"))).collect();
    append(&*store, &msgs).unwrap();
    assert_eq!(hit_offsets(&search(&*store, "needle")), vec![1, 2, 3, 4, 5]);
    assert_eq!(store.trim(&keep(2, 0), 0, 1000).unwrap(), 3);
    assert_eq!(hit_offsets(&search(&*store, "needle")), vec![4, 5]);
    assert!(search(&*store, "number1").is_empty());
    // The index still works for what comes next.
    append(&*store, &[Msg::text("t", 6, "needle number6")]).unwrap();
    assert_eq!(hit_offsets(&search(&*store, "needle")), vec![4, 5, 6]);
}

fn messages_trimmed_before_indexing_never_appear_in_search(make: Factory) {
    let (store, _g) = make();
    append(&*store, &[Msg::text("t", 1, "pin early")]).unwrap();
    assert_eq!(search(&*store, "pin").len(), 1);
    let msgs: Vec<Msg> = (2..=6).map(|o| Msg::text("t", o, "pin late")).collect();
    append(&*store, &msgs).unwrap();
    // Trim before the new messages were indexed.
    assert_eq!(store.trim(&keep(1, 0), 0, 1000).unwrap(), 5);
    assert_eq!(hit_offsets(&search(&*store, "pin")), vec![6]);
    assert!(search(&*store, "early").is_empty());
}

fn reads_run_while_batches_are_appended(make: Factory) {
    let (store, _g) = make();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let got = offsets(&store.read_range(&topic("t"), 0, u64::MAX, 100_000).unwrap());
                    assert!(got.iter().copied().eq(1..=got.len() as u64), "a read saw a partial batch");
                    assert_eq!(got.len() % 50, 0, "a read saw a partial batch");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for batch in 0..40u64 {
        append(&*store, &numbered("t", batch * 50 + 1, batch * 50 + 50)).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    assert_eq!(store.read_range(&topic("t"), 0, u64::MAX, 100_000).unwrap().len(), 2000);
}

fn a_fresh_store_is_ready_and_empty(make: Factory) {
    let (store, _g) = make();
    assert!(store.ready());
    assert!(store.topics().unwrap().is_empty());
    assert!(store.recent_ids(10).unwrap().is_empty());
    assert!(store.cursors().unwrap().is_empty());
    assert!(search(&*store, "anything").is_empty());
}

// ---------------------------------------------------------------------------------------
// SQLite only
// ---------------------------------------------------------------------------------------

mod sqlite_only {
    use super::*;

    fn open(dir: &std::path::Path) -> SqliteStore {
        SqliteStore::open(dir, &StoreConfig::default()).unwrap()
    }

    /// Entries in the search index file of the data folder `dir`.
    fn index_entries(dir: &std::path::Path) -> i64 {
        let index = rusqlite::Connection::open(dir.join("agentbus-search.db")).unwrap();
        index.query_row("SELECT count(*) FROM search", [], |r| r.get(0)).unwrap()
    }

    fn open_error(result: Result<SqliteStore, StoreError>) -> (String, String) {
        match result {
            Err(StoreError::Open { path, reason }) => (path, reason),
            Err(other) => panic!("expected StoreError::Open, got {other:?}"),
            Ok(_) => panic!("expected StoreError::Open, the store opened"),
        }
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            append(&store, &[Msg::text("a", 1, "first words").epoch("ea").client_id("c1"), Msg::text("b", 1, "x")])
                .unwrap();
            append(&store, &[Msg::text("a", 2, "second words").epoch("ea"), Msg::text("b", 2, "y").client_id("c2")])
                .unwrap();
            store.append(&[], &[Cursor { agent: "bob".into(), offset: 7 }]).unwrap();
            store.maintain(1).unwrap(); // half the index now, the rest after reopening
        }
        let store = open(dir.path());
        let mut topics = store.topics().unwrap();
        topics.sort_by(|x, y| x.topic.as_str().cmp(y.topic.as_str()));
        let seen: Vec<(&str, &str, u64, u64)> =
            topics.iter().map(|t| (t.topic.as_str(), t.epoch.as_str(), t.first_offset, t.last_offset)).collect();
        assert_eq!(seen, vec![("a", "ea", 1, 2), ("b", "e1", 1, 2)]);
        let ids: Vec<String> = store.recent_ids(10).unwrap().into_iter().map(|k| k.id).collect();
        assert_eq!(ids, vec!["c2", "c1"]);
        assert_eq!(sorted_cursors(&store), vec![("bob".into(), 7)]);
        assert_eq!(hit_offsets(&search(&store, "words")), vec![1, 2]);
        // Offsets continue where they stopped.
        assert!(matches!(append(&store, &numbered("a", 4, 4)), Err(StoreError::OutOfOrder { last: 2, .. })));
        append(&store, &numbered("a", 3, 3)).unwrap();
        assert_eq!(offsets(&store.read_range(&topic("a"), 0, 10, 10).unwrap()), vec![1, 2, 3]);
    }

    /// The log is copied into the database in the background, then started over from
    /// the beginning of its file instead of growing with everything ever written.
    #[test]
    fn the_write_ahead_log_is_checkpointed_and_started_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let file_len = |name: &str| std::fs::metadata(dir.path().join(name)).map_or(0, |m| m.len());
        let filler = "x".repeat(1000);
        let mut next = 1u64;
        let mut write = |count: u64| {
            let msgs: Vec<Msg> = (next..next + count).map(|o| Msg::text("steady", o, &filler)).collect();
            next += count;
            append(&store, &msgs).unwrap();
        };
        // 20 MB: past the checkpoint threshold (16 MiB of log).
        write(20_000);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        // All of it copied (some 23 MB of rows): the database file stops growing.
        let mut seen = 0;
        while file_len("agentbus.db") < 20 << 20 || file_len("agentbus.db") != seen {
            assert!(std::time::Instant::now() < deadline, "no checkpoint copied the log into the database");
            seen = file_len("agentbus.db");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let copied = file_len("agentbus.db-wal");
        // 8 MB more in small commits: written over the start of the copied log, which
        // would otherwise grow by as much.
        for _ in 0..160 {
            write(50);
        }
        let wal = file_len("agentbus.db-wal");
        assert!(wal < copied + (6 << 20), "the log grew from {copied} to {wal} bytes instead of starting over");
        let last = store.read_before(&topic("steady"), u64::MAX, 1).unwrap();
        assert_eq!(offsets(&last), vec![next - 1]);
    }

    #[test]
    fn a_version_2_database_opens_as_version_3_and_its_offsets_continue() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        {
            // What version 2 left: every append kept `last_offset` exact.
            let store = open(dir.path());
            append(&store, &numbered("t", 1, 3)).unwrap();
        }
        {
            let conn = rusqlite::Connection::open(dir.path().join("agentbus.db")).unwrap();
            conn.execute("UPDATE topics SET last_offset = 3", []).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
        }
        let store = open(dir.path());
        assert_eq!(store.topics().unwrap()[0].last_offset, 3);
        assert!(matches!(append(&store, &numbered("t", 5, 5)), Err(StoreError::OutOfOrder { last: 3, .. })));
        append(&store, &numbered("t", 4, 4)).unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("agentbus.db")).unwrap();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, agentbus_server::store::sqlite::SCHEMA_VERSION);
        assert_eq!(version, 3);
    }

    #[test]
    fn the_last_offset_of_a_trimmed_topic_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            append(&store, &numbered("t", 1, 5)).unwrap();
            store.maintain(10_000).unwrap();
            assert_eq!(store.trim(&keep(0, 1), i64::MAX, 100).unwrap(), 5);
        }
        let store = open(dir.path());
        assert_eq!(store.topics().unwrap()[0].last_offset, 5);
        append(&store, &[Msg::text("t", 6, "after reopening")]).unwrap();
        assert_eq!(hit_offsets(&search(&store, "reopening")), vec![6]);
        assert!(search(&store, "message").is_empty());
    }

    #[test]
    fn the_database_and_its_folders_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("deep").join("er");
        let store = open(&data);
        append(&store, &numbered("t", 1, 1)).unwrap();
        assert!(data.join("agentbus.db").is_file());
    }

    #[test]
    fn a_garbage_database_file_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let garbage: Vec<u8> = (0..16_384u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(dir.path().join("agentbus.db"), garbage).unwrap();
        let (path, reason) = open_error(SqliteStore::open(dir.path(), &StoreConfig::default()));
        assert!(path.ends_with("agentbus.db"), "{path}");
        assert!(!reason.is_empty() && !reason.contains('\n'), "{reason:?}");
    }

    #[test]
    fn a_text_file_in_place_of_the_database_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agentbus.db"), "this is not a database\n".repeat(100)).unwrap();
        open_error(SqliteStore::open(dir.path(), &StoreConfig::default()));
    }

    #[test]
    fn a_data_folder_under_a_regular_file_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let (_, reason) = open_error(SqliteStore::open(&file.join("data"), &StoreConfig::default()));
        assert!(!reason.contains('\n'), "{reason:?}");
    }

    #[test]
    fn a_folder_in_place_of_the_database_file_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("agentbus.db")).unwrap();
        open_error(SqliteStore::open(dir.path(), &StoreConfig::default()));
    }

    #[test]
    fn a_database_from_a_newer_version_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        let conn = rusqlite::Connection::open(dir.path().join("agentbus.db")).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let (_, reason) = open_error(SqliteStore::open(dir.path(), &StoreConfig::default()));
        assert!(reason.contains("99"), "{reason}");
    }

    #[test]
    fn a_foreign_database_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("agentbus.db")).unwrap();
        conn.execute_batch("CREATE TABLE other (x)").unwrap();
        drop(conn);
        open_error(SqliteStore::open(dir.path(), &StoreConfig::default()));
    }

    /// What every read says of a store holding "a" 1..=3 (with client ids "c1", "c3"),
    /// "b" 1..=2 and bob's inbox at 5.
    fn assert_reads(store: &SqliteStore) {
        assert_eq!(offsets(&store.read_range(&topic("a"), 0, 10, 10).unwrap()), [1, 2, 3]);
        assert_eq!(offsets(&store.read_range(&topic("a"), 1, 10, 1).unwrap()), [2]);
        assert_eq!(offsets(&store.read_before(&topic("a"), u64::MAX, 2).unwrap()), [2, 3]);
        assert_eq!(offsets(&store.read_before(&topic("b"), 2, 10).unwrap()), [1]);
        let mut topics: Vec<(String, u64, u64)> = store
            .topics()
            .unwrap()
            .into_iter()
            .map(|t| (t.topic.as_str().to_owned(), t.first_offset, t.last_offset))
            .collect();
        topics.sort();
        assert_eq!(topics, [("a".to_owned(), 1, 3), ("b".to_owned(), 1, 2)]);
        assert_eq!((store.first_offset(&topic("b")).unwrap(), store.last_offset(&topic("b")).unwrap()), (1, 2));
        let ids: Vec<String> = store.recent_ids(10).unwrap().into_iter().map(|k| k.id).collect();
        assert_eq!(ids, ["c3", "c1"]);
        assert_eq!(sorted_cursors(store), [("bob".to_owned(), 5)]);
    }

    fn fill(store: &SqliteStore) {
        append(store, &[Msg::text("a", 1, "one").client_id("c1"), Msg::text("b", 1, "b one")]).unwrap();
        append_only(store, &[Msg::text("a", 2, "two"), Msg::text("b", 2, "b two")]).unwrap();
        append_only(store, &[Msg::text("a", 3, "three").client_id("c3")]).unwrap();
        store.append(&[], &[Cursor { agent: "bob".into(), offset: 5 }]).unwrap();
    }

    /// An appended batch is acknowledged once journaled; reads find it at once, before
    /// and after it moves into the tables, and never twice.
    #[test]
    fn journaled_batches_are_read_before_and_after_they_move_into_the_tables() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        fill(&store);
        assert!(store.has_unflushed());
        assert_reads(&store);
        // Offsets continue the journaled ones.
        assert!(matches!(append_only(&store, &numbered("a", 3, 3)), Err(StoreError::OutOfOrder { last: 3, .. })));
        store.flush().unwrap();
        assert!(!store.has_unflushed());
        assert_reads(&store);
        assert_eq!(hit_offsets(&search(&store, "three")), [3]);
    }

    /// A crash leaves acknowledged batches in the journal only: the next start moves them
    /// into the tables before anything else.
    #[test]
    fn a_crash_before_the_journal_moved_into_the_tables_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let crashed = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        fill(&store);
        // The files as a crash would leave them (the store is still open).
        for name in ["agentbus.db", "agentbus.db-wal", "agentbus.journal"] {
            std::fs::copy(dir.path().join(name), crashed.path().join(name)).unwrap();
        }
        assert!(std::fs::metadata(crashed.path().join("agentbus.journal")).unwrap().len() > 100);
        let recovered = open(crashed.path());
        assert!(!recovered.has_unflushed(), "the journal was moved into the tables at start");
        assert_reads(&recovered);
        assert_eq!(hit_offsets(&search(&recovered, "three")), [3]);
        append(&recovered, &numbered("a", 4, 4)).unwrap();
        assert_eq!(offsets(&recovered.read_range(&topic("a"), 0, 10, 10).unwrap()), [1, 2, 3, 4]);
        // Reopened once more: nothing is applied twice.
        drop(recovered);
        let again = open(crashed.path());
        assert_eq!(offsets(&again.read_range(&topic("a"), 0, 10, 10).unwrap()), [1, 2, 3, 4]);
    }

    /// A move of the journal goes a step at a time, and batches are journaled between the
    /// steps: every message stays readable, once, throughout; a crash in the middle of the
    /// move loses nothing; once the move commits the journal is empty.
    #[test]
    fn a_move_in_steps_keeps_every_message_readable_and_journals_behind_it() {
        use agentbus_server::store::sqlite::INGEST_RECORDS;
        let dir = tempfile::tempdir().unwrap();
        let crashed = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut next = 1u64;
        while !store.flush_due() {
            append_only(&store, &numbered("a", next, next + 9)).unwrap();
            next += 10;
        }
        assert!(next > INGEST_RECORDS as u64, "due at {next}");
        let a = |s: &SqliteStore| offsets(&s.read_range(&topic("a"), 0, u64::MAX, 100_000).unwrap());
        store.flush_step().unwrap();
        assert!(store.flush_due() && store.has_unflushed(), "one step moved everything");
        // Between two steps: journaled batches, a new topic, an inbox position.
        append_only(&store, &numbered("a", next, next + 9)).unwrap();
        next += 10;
        append_only(&store, &[Msg::text("b", 1, "b one")]).unwrap();
        store.append(&[], &[Cursor { agent: "bob".into(), offset: 7 }]).unwrap();
        let want: Vec<u64> = (1..next).collect();
        assert_eq!(a(&store), want);
        assert_eq!(store.last_offset(&topic("a")).unwrap(), next - 1);
        // The files as a crash in the middle of the move would leave them.
        for name in ["agentbus.db", "agentbus.db-wal", "agentbus.journal"] {
            std::fs::copy(dir.path().join(name), crashed.path().join(name)).unwrap();
        }
        let mut steps = 1;
        while store.flush_due() {
            store.flush_step().unwrap();
            steps += 1;
            assert_eq!(a(&store), want, "after step {steps}");
        }
        assert!(steps > 2, "{steps} steps");
        assert!(!store.has_unflushed());
        assert_eq!(a(&store), want);
        assert_eq!(offsets(&store.read_range(&topic("b"), 0, 10, 10).unwrap()), [1]);
        assert_eq!(sorted_cursors(&store), [("bob".to_owned(), 7)]);
        assert!(std::fs::metadata(dir.path().join("agentbus.journal")).unwrap().len() < 100, "the journal is emptied");
        // Offsets go on from the moved messages.
        append(&store, &numbered("a", next, next)).unwrap();
        let recovered = open(crashed.path());
        assert!(!recovered.has_unflushed());
        assert_eq!(a(&recovered), want);
        assert_eq!(offsets(&recovered.read_range(&topic("b"), 0, 10, 10).unwrap()), [1]);
        assert_eq!(sorted_cursors(&recovered), [("bob".to_owned(), 7)]);
    }

    /// A step that fails (here: the database is full) undoes the whole move, including
    /// the steps before it and the topics they created: the batches stay journaled and
    /// readable, appends are refused, and once trimming makes room the move succeeds with
    /// every offset where it was.
    #[test]
    fn a_move_that_fails_half_way_is_undone_and_done_again_later() {
        // Where the database fills depends on the cap; some cap makes it fill in a step
        // after the first one of a move.
        let found = (0..40).find_map(|i| fill_until_a_step_fails((640 + 32 * i) << 10));
        let Some((dir, config, store, topics)) = found else {
            panic!("no cap made a move fail after its first step");
        };
        assert!(store.has_unflushed());
        assert!(matches!(append_only(&store, &numbered("other", 1, 1)), Err(StoreError::Full(_))));
        let check = |store: &SqliteStore, kept: std::ops::RangeInclusive<u64>| {
            let listed = store.topics().unwrap();
            for t in 1..=topics {
                let name = format!("fill.{t}");
                let read = offsets(&store.read_range(&topic(&name), 0, 100, 100).unwrap());
                assert_eq!(read, kept.clone().collect::<Vec<_>>(), "{name}");
                assert_eq!(store.last_offset(&topic(&name)).unwrap(), 10, "{name}");
                assert!(listed.iter().any(|l| l.topic.as_str() == name && l.last_offset == 10), "{name} listed");
            }
        };
        check(&store, 1..=10);
        // Room again: the journal moves, the refusal ends, offsets go on.
        assert!(store.trim(&keep(2, 0), 0, 1_000_000).unwrap() > 0);
        store.flush().unwrap();
        assert!(!store.has_unflushed());
        // The next tick trims what was journaled during the first.
        store.trim(&keep(2, 0), 0, 1_000_000).unwrap();
        check(&store, 9..=10);
        append(&store, &numbered("fill.1", 11, 11)).unwrap();
        append(&store, &numbered("other", 1, 1)).unwrap();
        drop(store);
        let reopened = SqliteStore::open(dir.path(), &config).unwrap();
        assert_eq!(offsets(&reopened.read_range(&topic("fill.1"), 0, 100, 100).unwrap()), [9, 10, 11]);
        assert_eq!(reopened.topics().unwrap().len() as u64, topics + 1);
    }

    /// Journals batches of new topics and moves them in steps, under a size cap of
    /// `cap` bytes, until the database is full. Returns the store if that happened in a
    /// step after the first one of a move (the steps before it are in the transaction).
    #[allow(clippy::type_complexity)]
    fn fill_until_a_step_fails(cap: u64) -> Option<(tempfile::TempDir, StoreConfig, SqliteStore, u64)> {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { max_size_bytes: cap, ..StoreConfig::default() };
        let store = SqliteStore::open(dir.path(), &config).unwrap();
        let mut topics = 0u64;
        for _ in 0..1000 {
            while !store.flush_due() {
                topics += 1;
                if append_only(&store, &numbered(&format!("fill.{topics}"), 1, 10)).is_err() {
                    return None;
                }
            }
            let mut steps = 0;
            while store.flush_due() {
                match store.flush_step() {
                    Ok(()) => steps += 1,
                    Err(StoreError::Full(_)) if steps > 0 => return Some((dir, config, store, topics)),
                    Err(_) => return None,
                }
            }
        }
        None
    }

    /// After a power loss with `sync = "normal"` the tables may have lost their last
    /// commits but not the journal written after them: what follows the gap is dropped,
    /// and offsets continue from what the tables kept.
    #[test]
    fn journaled_messages_after_a_gap_in_the_tables_are_dropped_and_offsets_continue() {
        let dir = tempfile::tempdir().unwrap();
        let crashed = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        append(&store, &numbered("a", 1, 1)).unwrap();
        for name in ["agentbus.db", "agentbus.db-wal"] {
            std::fs::copy(dir.path().join(name), crashed.path().join(name)).unwrap();
        }
        append(&store, &numbered("a", 2, 2)).unwrap();
        append_only(&store, &[Msg::text("a", 3, "three"), Msg::text("b", 1, "b one")]).unwrap();
        std::fs::copy(dir.path().join("agentbus.journal"), crashed.path().join("agentbus.journal")).unwrap();
        let recovered = open(crashed.path());
        assert_eq!(offsets(&recovered.read_range(&topic("a"), 0, 10, 10).unwrap()), [1]);
        assert_eq!(offsets(&recovered.read_range(&topic("b"), 0, 10, 10).unwrap()), [1]);
        append(&recovered, &numbered("a", 2, 2)).unwrap();
        assert_eq!(recovered.last_offset(&topic("a")).unwrap(), 2);
    }

    /// A journal left by another store (a data folder put back together by hand) is set
    /// aside, never applied.
    #[test]
    fn a_journal_of_another_store_is_set_aside() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        let store = open(one.path());
        fill(&store);
        drop(open(two.path()));
        std::fs::copy(one.path().join("agentbus.journal"), two.path().join("agentbus.journal")).unwrap();
        let other = open(two.path());
        assert!(other.topics().unwrap().is_empty());
        let aside = std::fs::read_dir(two.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("agentbus.journal.foreign-"));
        assert!(aside, "the foreign journal is kept aside");
    }

    #[test]
    fn full_sync_mode_stores_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { sync: SyncMode::Full, ..StoreConfig::default() };
        let store = SqliteStore::open(dir.path(), &config).unwrap();
        append(&store, &numbered("t", 1, 3)).unwrap();
        assert_eq!(store.read_range(&topic("t"), 0, 10, 10).unwrap().len(), 3);
    }

    #[test]
    fn a_full_database_refuses_batches_and_keeps_what_it_stored() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { max_size_bytes: 512 * 1024, ..StoreConfig::default() };
        let store = SqliteStore::open(dir.path(), &config).unwrap();
        let filler = "z".repeat(1000);
        let mut stored = 0u64;
        let mut full = None;
        for _ in 0..100 {
            let batch: Vec<Msg> =
                (stored + 1..=stored + 8).map(|o| Msg::text("t", o, &format!("blob{o} {filler}"))).collect();
            match append(&store, &batch) {
                Ok(()) => {
                    stored += 8;
                    // The writer indexes between batches; the index may hit the cap first.
                    let _ = store.maintain(10_000);
                }
                Err(e) => {
                    full = Some(e);
                    break;
                }
            }
        }
        assert!(matches!(full, Some(StoreError::Full(_))), "expected Full, got {full:?} after {stored} messages");
        assert!(stored > 0, "the cap left no room at all");
        assert!(store.ready());
        let read = store.read_range(&topic("t"), 0, u64::MAX, 10_000).unwrap();
        assert_eq!(offsets(&read), (1..=stored).collect::<Vec<_>>());
        assert!(read.iter().all(|s| s.frame.as_str().contains(&filler)));
        assert_eq!(store.topics().unwrap()[0].last_offset, stored);
        // A refused batch left nothing behind: the next offset is still stored + 1, and
        // once retention makes room, appends succeed again.
        assert!(store.trim(&keep(8, 0), 0, 10_000).unwrap() > 0);
        append(&store, &[Msg::text("t", stored + 1, "fits again")]).unwrap();
        assert_eq!(store.read_range(&topic("t"), stored, u64::MAX, 10).unwrap().len(), 1);
        while store.maintain(10_000).unwrap() > 0 {}
        assert_eq!(hit_offsets(&search(&store, "fits")), vec![stored + 1]);
        assert_eq!(search(&store, "blob1").len(), 0);
    }

    #[test]
    fn indexing_proceeds_in_budgeted_steps() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        append(&store, &numbered("t", 1, 5)).unwrap();
        assert_eq!(store.maintain(3).unwrap(), 3);
        assert_eq!(
            store.search(&SearchQuery { words: "message".into(), limit: 10, ..Default::default() }).unwrap().len(),
            3
        );
        assert_eq!(store.maintain(3).unwrap(), 2);
        assert_eq!(store.maintain(3).unwrap(), 0);
        assert_eq!(store.maintain(0).unwrap(), 0);
        assert_eq!(search(&store, "message").len(), 5);
    }

    #[test]
    fn the_search_index_stays_consistent_with_the_messages() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for batch in 0..10u64 {
            let msgs: Vec<Msg> = (batch * 20 + 1..=batch * 20 + 20)
                .map(|o| Msg::text(if o % 2 == 0 { "even" } else { "odd" }, o / 2 + o % 2, &format!("word{o} common")))
                .collect();
            let (even, odd): (Vec<Msg>, Vec<Msg>) = msgs.into_iter().partition(|m| m.topic.as_str() == "even");
            append(&store, &even).unwrap();
            append(&store, &odd).unwrap();
            store.maintain(7).unwrap();
            store.trim(&keep(25, 0), 0, 13).unwrap();
        }
        while store.maintain(1000).unwrap() > 0 {}
        while store.trim(&keep(25, 0), 0, 1000).unwrap() > 0 {}
        assert_eq!(search(&store, "common").len(), 50);
        // Caught up, a step purges the entries of trimmed messages.
        assert_eq!(store.maintain(1000).unwrap(), 0);
        let index = rusqlite::Connection::open(dir.path().join("agentbus-search.db")).unwrap();
        index.execute("INSERT INTO search (search, rank) VALUES ('integrity-check', 1)", []).unwrap();
        assert_eq!(index_entries(dir.path()), 50);
    }

    #[test]
    fn thousands_of_messages_are_indexed_and_purged_across_read_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        append(&store, &numbered("t", 1, 3000)).unwrap();
        // The indexer reads a few hundred rows at a time; a step still takes its budget.
        assert_eq!(store.maintain(2000).unwrap(), 2000);
        assert_eq!(store.maintain(2000).unwrap(), 1000);
        assert_eq!(index_entries(dir.path()), 3000);
        assert_eq!(hit_offsets(&search(&store, "message 2999")), vec![2999]);
        // Nothing left to index: the step purges, reading the stored messages in chunks.
        assert_eq!(store.trim(&keep(2500, 0), 0, 10_000).unwrap(), 500);
        assert_eq!(store.maintain(2000).unwrap(), 0);
        assert_eq!(index_entries(dir.path()), 2500);
        assert_eq!(hit_offsets(&search(&store, "message 501")), vec![501]);
        assert_eq!(hit_offsets(&search(&store, "message 500")), Vec::<u64>::new());
    }

    #[test]
    fn the_index_is_purged_after_trims_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        append(&store, &numbered("t", 1, 10)).unwrap();
        assert_eq!(store.maintain(1000).unwrap(), 10);
        // Nothing left to index: the first step since opening goes round the index.
        assert_eq!(store.maintain(1000).unwrap(), 0);
        // A message that disappears without a trim (never in practice) shows whether an
        // idle step still reads the whole index: it must not.
        let db = rusqlite::Connection::open(dir.path().join("agentbus.db")).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        db.execute("DELETE FROM messages WHERE offset = 5", []).unwrap();
        for _ in 0..3 {
            assert_eq!(store.maintain(1000).unwrap(), 0);
        }
        assert_eq!(index_entries(dir.path()), 10, "no trim, no purge");
        // A trim makes the next step go round again, and that round finds both.
        assert_eq!(store.trim(&keep(8, 0), 0, 100).unwrap(), 2);
        assert_eq!(store.maintain(1000).unwrap(), 0);
        assert_eq!(index_entries(dir.path()), 7, "offsets 1, 2 (trimmed) and 5 are gone");
    }

    #[test]
    fn trimmed_entries_are_purged_even_while_new_messages_keep_arriving() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        append(&store, &numbered("t", 1, 10)).unwrap();
        assert_eq!(store.maintain(1000).unwrap(), 10);
        assert_eq!(store.trim(&keep(2, 0), 0, 100).unwrap(), 8);
        // The index is never idle from here on: every step finds a new message.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        append(&store, &numbered("t", 11, 11)).unwrap();
        assert_eq!(store.maintain(1000).unwrap(), 1);
        assert_eq!(index_entries(dir.path()), 3, "offsets 9, 10 and 11 remain");
    }

    #[test]
    fn a_missing_or_damaged_search_index_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("agentbus-search.db");
        {
            let store = open(dir.path());
            append(&store, &numbered("t", 1, 3)).unwrap();
            assert_eq!(search(&store, "message").len(), 3);
        }
        std::fs::remove_file(&index).unwrap();
        {
            let store = open(dir.path());
            assert_eq!(search(&store, "message").len(), 3);
        }
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.path().join(format!("agentbus-search.db{suffix}")));
        }
        std::fs::write(&index, "not an index\n".repeat(500)).unwrap();
        let store = open(dir.path());
        assert_eq!(search(&store, "message").len(), 3);
    }

    #[test]
    fn the_search_index_of_another_store_is_not_used() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        {
            let store = open(one.path());
            append(&store, &[Msg::text("t", 1, "only in the first store")]).unwrap();
            assert_eq!(search(&store, "first").len(), 1);
            let other = open(two.path());
            append(&other, &[Msg::text("t", 1, "the second store")]).unwrap();
        }
        std::fs::copy(one.path().join("agentbus-search.db"), two.path().join("agentbus-search.db")).unwrap();
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(two.path().join(format!("agentbus-search.db{suffix}")));
        }
        let store = open(two.path());
        assert!(search(&store, "first").is_empty());
        assert_eq!(hit_offsets(&search(&store, "second")), vec![1]);
    }

    #[test]
    fn a_version_1_database_moves_its_index_out_and_keeps_every_message() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = rusqlite::Connection::open(dir.path().join("agentbus.db")).unwrap();
            conn.execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE topics (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, epoch TEXT NOT NULL,
                     last_offset INTEGER NOT NULL DEFAULT 0);
                 CREATE TABLE messages (seq INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL, offset INTEGER NOT NULL,
                     id TEXT NOT NULL, client_id INTEGER NOT NULL, ts INTEGER NOT NULL, from_agent TEXT NOT NULL,
                     frame TEXT NOT NULL);
                 CREATE UNIQUE INDEX messages_topic_offset ON messages (topic_id, offset);
                 CREATE INDEX messages_client_ids ON messages (seq) WHERE client_id = 1;
                 CREATE TABLE cursors (agent TEXT PRIMARY KEY, offset INTEGER NOT NULL) WITHOUT ROWID;
                 CREATE TABLE search_state (only_row INTEGER PRIMARY KEY CHECK (only_row = 1),
                     indexed_upto INTEGER NOT NULL);
                 INSERT INTO search_state VALUES (1, 9);
                 CREATE VIEW message_text (seq, body) AS SELECT seq, frame ->> '$.content' FROM messages;
                 CREATE VIRTUAL TABLE search USING fts5(body, content = 'message_text', content_rowid = 'seq');
                 INSERT INTO topics VALUES (1, 'old', 'e0', 2);
                 INSERT INTO messages VALUES (4, 1, 1, 'm1', 0, 0, 'a', '{\"type\":\"message\",\"content\":\"kept words\",\"offset\":1}');
                 INSERT INTO messages VALUES (5, 1, 2, 'm2', 0, 0, 'a', '{\"type\":\"message\",\"content\":\"more words\",\"offset\":2}');
                 INSERT INTO search (rowid, body) SELECT seq, body FROM message_text;
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let store = open(dir.path());
        assert_eq!(offsets(&store.read_range(&topic("old"), 0, 10, 10).unwrap()), vec![1, 2]);
        assert_eq!(hit_offsets(&search(&store, "words")), vec![1, 2]);
        // New messages take a seq above any the old index used.
        append(&store, &[Msg::text("old", 3, "new words")]).unwrap();
        assert_eq!(hit_offsets(&search(&store, "words")), vec![1, 2, 3]);
        let conn = rusqlite::Connection::open(dir.path().join("agentbus.db")).unwrap();
        let newest: i64 = conn.query_row("SELECT max(seq) FROM messages", [], |r| r.get(0)).unwrap();
        assert_eq!(newest, 10);
    }
}

mod redis_only {
    use super::*;
    use agentbus_server::store::Assigned;

    fn numbered_records(store: &dyn Store, msgs: &[Msg]) -> Vec<Assigned> {
        let records: Vec<Record<'_>> = msgs.iter().map(Msg::record).collect();
        store.append_numbered(&records, &[]).unwrap()
    }

    #[test]
    fn messages_are_numbered_by_the_store_per_topic_and_frames_carry_the_number() {
        if !redis_available() {
            return;
        }
        let (store, _guard) = redis_store();
        assert!(store.numbers_messages());
        // The offsets a broker proposes are only provisional.
        let msgs = vec![Msg::text("a", 7, "one"), Msg::text("b", 7, "two"), Msg::text("a", 7, "three")];
        let got: Vec<u64> = numbered_records(&*store, &msgs).iter().map(|a| a.offset).collect();
        assert_eq!(got, [1, 1, 2]);
        let a = store.read_range(&topic("a"), 0, 10, 10).unwrap();
        assert_eq!(offsets(&a), [1, 2]);
        assert!(a[1].frame.as_str().ends_with(r#""offset":2}"#), "{}", a[1].frame.as_str());
        assert!(a[1].frame.as_str().contains("three"));
        assert_eq!(store.last_offset(&topic("a")).unwrap(), 2);
    }

    #[test]
    fn a_known_client_id_is_not_stored_again_and_names_where_it_was() {
        if !redis_available() {
            return;
        }
        let (store, _guard) = redis_store();
        let first = numbered_records(&*store, &[Msg::text("a", 1, "x").client_id("req-1")]);
        assert_eq!(first, [Assigned { offset: 1, duplicate: None }]);
        let again = numbered_records(&*store, &[Msg::text("b", 1, "x").client_id("req-1"), Msg::text("b", 1, "y")]);
        assert_eq!(
            again,
            [Assigned { offset: 1, duplicate: Some(topic("a")) }, Assigned { offset: 1, duplicate: None }]
        );
        assert_eq!(offsets(&store.read_range(&topic("b"), 0, 10, 10).unwrap()), [1]);
    }

    #[test]
    fn stores_with_one_prefix_share_a_history_and_other_prefixes_do_not() {
        if !redis_available() {
            return;
        }
        let server = start_redis();
        let one = RedisStore::open(&server.url, "bus1").unwrap();
        let two = RedisStore::open(&server.url, "bus1").unwrap();
        let other = RedisStore::open(&server.url, "bus2").unwrap();
        numbered_records(&one, &numbered("t", 1, 3));
        let next = numbered_records(&two, &numbered("t", 1, 1));
        assert_eq!(next[0].offset, 4, "the second store continues the first one's numbering");
        assert_eq!(offsets(&one.read_range(&topic("t"), 0, 10, 10).unwrap()), [1, 2, 3, 4]);
        assert_eq!(one.shared_epoch(), two.shared_epoch());
        assert!(other.topics().unwrap().is_empty());
        assert_ne!(one.shared_epoch(), other.shared_epoch());
    }

    #[test]
    fn trimming_every_message_keeps_the_numbering() {
        if !redis_available() {
            return;
        }
        let (store, _guard) = redis_store();
        let msgs: Vec<Msg> = (1..=3).map(|o| Msg::text("t", o, "x").ts(0)).collect();
        numbered_records(&*store, &msgs);
        assert_eq!(store.trim(&keep(0, 10), 1_000_000, 1000).unwrap(), 3);
        assert_eq!((store.first_offset(&topic("t")).unwrap(), store.last_offset(&topic("t")).unwrap()), (0, 3));
        assert_eq!(numbered_records(&*store, &numbered("t", 1, 1))[0].offset, 4);
        assert_eq!(offsets(&store.read_range(&topic("t"), 0, 100, 100).unwrap()), vec![4]);
    }

    #[test]
    fn many_topics_are_listed_and_trimmed_across_pipeline_chunks() {
        if !redis_available() {
            return;
        }
        let (store, _guard) = redis_store();
        let msgs: Vec<Msg> = (0..1_200).flat_map(|t| numbered(&format!("t{t}"), 1, 3)).collect();
        numbered_records(&*store, &msgs);
        let topics = store.topics().unwrap();
        assert_eq!(topics.len(), 1_200);
        assert!(topics.iter().all(|t| (t.first_offset, t.last_offset) == (1, 3)), "{:?}", topics[0]);
        assert_eq!(store.trim(&keep(1, 0), 0, 10_000).unwrap(), 2_400);
        assert!(store.topics().unwrap().iter().all(|t| (t.first_offset, t.last_offset) == (3, 3)));
    }

    #[test]
    fn numbering_continues_after_entries_a_failed_commit_left_behind() {
        if !redis_available() {
            return;
        }
        let server = start_redis();
        let store = RedisStore::open(&server.url, "bus").unwrap();
        numbered_records(&store, &numbered("t", 1, 2));
        // What a script stopped half-way leaves: an entry past the recorded offset.
        let client = ::redis::Client::open(server.url.as_str()).unwrap();
        let mut conn = client.get_connection().unwrap();
        ::redis::cmd("XADD").arg("bus:t:t").arg("3-0").arg("f").arg("{}").query::<String>(&mut conn).unwrap();
        let next = numbered_records(&store, &numbered("t", 1, 1));
        assert_eq!(next[0].offset, 4, "not 3, which the stream already holds");
    }

    #[test]
    fn invalid_prefixes_are_refused() {
        for prefix in ["", "a*b", "with space", "x:y", &"p".repeat(65)] {
            let Err(e) = RedisStore::open("redis://127.0.0.1:1/", prefix) else { panic!("{prefix:?} accepted") };
            assert!(e.to_string().contains("invalid prefix"), "{e}");
        }
    }

    #[test]
    fn an_unreachable_redis_is_an_open_error_naming_it_without_its_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("redis://:hunter2@127.0.0.1:{port}/");
        let Err(e) = RedisStore::open(&url, "x") else { panic!("opened a closed port") };
        let text = e.to_string();
        assert!(matches!(e, StoreError::Open { .. }), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")) && !text.contains("hunter2"), "{text}");
    }
}
