//! Criterion benchmarks of the hot functions, so regressions show:
//! frame decoding, encode-once message drafts, topic routing, a broker publish
//! fanned out to 100 subscribers' outboxes, and a group commit into the SQLite store;
//! and, as a floor to compare the store with, SQLite itself inserting rows of that size.
//!
//! Run: `cargo bench -p agentbus-server --bench hot_paths`.

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use agentbus_protocol::{ClientFrame, MessageDraft, ParseLimits, SubscribeFrame, TopicName};
use agentbus_server::broker::{Broker, BrokerOptions, Command, Publish, Reply};
use agentbus_server::config::StoreConfig;
use agentbus_server::config::pattern_matches;
use agentbus_server::metrics::Metrics;
use agentbus_server::outbox::Outbox;
use agentbus_server::store::sqlite::SqliteStore;
use agentbus_server::store::writer::{FromWriter, ToWriter};
use agentbus_server::store::{Record, Store};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const SEND: &str = r#"{"type":"send","topic":"orchestrator","content":"Hello from remote! A message of about a hundred bytes in all.","from_agent":"test-agent","to_agent":"board","ref":17}"#;

fn decode(c: &mut Criterion) {
    let limits = ParseLimits::default();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(SEND.len() as u64));
    g.bench_function("decode_send", |b| b.iter(|| ClientFrame::parse(black_box(SEND), &limits).unwrap()));
    g.bench_function("decode_invalid", |b| b.iter(|| ClientFrame::parse(black_box("{\"type\":1}"), &limits).is_err()));
    g.finish();
}

fn encode(c: &mut Criterion) {
    let (ClientFrame::Send(send), _) = ClientFrame::parse(SEND, &ParseLimits::default()).unwrap() else { panic!() };
    let topic = send.destination();
    c.bench_function("encode_draft_and_finish", |b| {
        b.iter(|| {
            let draft = MessageDraft::new(&topic, "mx5hm31-1f", "2026-11-26T06:07:29.803Z", "test-agent", &send);
            black_box(draft.clone().finish(black_box(123_456)))
        })
    });
}

fn routing(c: &mut Criterion) {
    c.bench_function("topic_validate", |b| b.iter(|| TopicName::new(black_box("code.review/team-a:42")).unwrap()));
    c.bench_function("pattern_match", |b| {
        b.iter(|| pattern_matches(black_box("code.*/team-*"), black_box("code.review/team-a")))
    });
}

/// A publish through the broker: offset, encode-once finish, commit report, and the
/// fan-out of one shared frame to 100 outboxes (drained each round, as connections do).
fn fanout(c: &mut Criterion) {
    let options = BrokerOptions {
        server_name: "bench".into(),
        boot_epoch: "e".into(),
        topic_epoch: "e".into(),
        shared_store: false,
        dedupe_window: 1000,
        max_subscriptions: 10,
        max_waiters: 10,
    };
    let mut broker = Broker::new(options, Vec::new(), Vec::new(), Vec::new(), Arc::new(Metrics::new()));
    let topic = TopicName::new("orchestrator").unwrap();
    let outboxes: Vec<Arc<Outbox>> = (0..100).map(|_| Arc::new(Outbox::new(1 << 24))).collect();
    for (conn, outbox) in outboxes.iter().enumerate() {
        broker.handle(Command::Open { conn: conn as u64, outbox: outbox.clone() });
        let frame = SubscribeFrame { topic: topic.clone(), history: Some(0), since: None, epoch: None };
        broker.handle(Command::Subscribe { conn: conn as u64, frame, reference: None });
    }
    let publisher = Arc::new(Outbox::new(1 << 24));
    let (ClientFrame::Send(send), _) = ClientFrame::parse(SEND, &ParseLimits::default()).unwrap() else { panic!() };
    let draft = MessageDraft::new(&topic, "id", "2026-11-26T06:07:29.803Z", "test-agent", &send);
    let mut sink = VecDeque::new();
    let mut g = c.benchmark_group("broker");
    g.throughput(Throughput::Elements(100));
    g.bench_function("publish_fanout_100", |b| {
        b.iter(|| {
            broker.handle(Command::Publish(Box::new(Publish {
                topic: topic.clone(),
                id: "id".into(),
                client_id: false,
                from_agent: "test-agent".into(),
                timestamp_ms: 0,
                received: Instant::now(),
                draft: draft.clone(),
                origin: Reply::Outbox(publisher.clone(), None),
            })));
            let Some(ToWriter::Batch(batch)) = broker.take_write() else { panic!("a batch") };
            broker.on_writer(FromWriter::Done { batches: vec![batch], result: Ok(()), records: 1, assigned: None });
            for outbox in &outboxes {
                outbox.try_drain(&mut sink);
                sink.clear();
            }
            publisher.try_drain(&mut sink);
            sink.clear();
        })
    });
    g.finish();
}

/// One group commit of 500 messages (about 470 bytes each, as `durable` sends) into a
/// SQLite store on disk: what the writer thread spends per batch. Once on one topic (as
/// `durable` publishes) and once spread over 50 topics in turn (as `pairs` does). Then
/// groups of one message (as under `rate`, or one request at a time), which go to the
/// journal and into the tables 4,096 at a time: the cost per message includes those moves.
fn store_append(c: &mut Criterion) {
    let content = format!("\"t=123456789;{}\"", "x".repeat(186));
    let mut g = c.benchmark_group("store");
    for (name, topic_count, batch) in
        [("sqlite_append_500", 1, 500u64), ("sqlite_append_500_over_50_topics", 50, 500), ("sqlite_append_1", 1, 1)]
    {
        g.throughput(Throughput::Elements(batch));
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), &StoreConfig::default()).unwrap();
        let topics: Vec<TopicName> =
            (0..topic_count).map(|t| TopicName::new(&format!("bench.durable.{t}")).unwrap()).collect();
        let mut next = vec![1u64; topic_count];
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let msgs: Vec<(usize, u64, String, String)> = (0..batch as usize)
                        .map(|i| {
                            let t = i % topic_count;
                            let o = next[t];
                            next[t] += 1;
                            let id = format!("mx5hm31-{t}-{o:x}");
                            let frame = format!(
                                r#"{{"type":"message","topic":"{}","id":"{id}","timestamp":"2026-11-26T06:07:29.803Z","from_agent":"bench-publisher-0","content":{content},"offset":{o}}}"#,
                                topics[t]
                            );
                            (t, o, id, frame)
                        })
                        .collect();
                    let records: Vec<Record<'_>> = msgs
                        .iter()
                        .map(|(t, offset, id, frame)| Record {
                            topic: &topics[*t],
                            epoch: "e",
                            offset: *offset,
                            id,
                            client_id: false,
                            timestamp_ms: 1_764_137_249_803,
                            from_agent: "bench-publisher-0",
                            frame,
                        })
                        .collect();
                    let start = Instant::now();
                    store.append(&records, &[]).unwrap();
                    // As the writer does between batches: the moves of the journal count.
                    while store.flush_due() {
                        store.flush_step().unwrap();
                    }
                    spent += start.elapsed();
                }
                spent
            })
        });
    }
    g.finish();
}

/// SQLite alone, without the store's code: 4,096 rows of a message's size (~300 bytes of
/// frame) inserted in one transaction with one prepared statement, into a database on
/// disk in WAL mode with 16 KiB pages. Only the transaction is timed: the log is copied
/// back and emptied between iterations, untimed, and nothing waits for the disk
/// (`synchronous = OFF`). Once into a bare table, and once with an index on (topic,
/// offset) and the rows spread over 50 topics in runs of 32, as `pairs` stores them. The cost per row
/// is the least any store of one row per message pays on this machine, before copying
/// its log back.
fn sqlite_floor(c: &mut Criterion) {
    const ROWS: u64 = 4096;
    // Rows come in runs of one topic, as a connection's reads bring them.
    const RUN: i64 = 32;
    let frame =
        format!(r#"{{"type":"message","topic":"bench.pairs.0","content":"t=1;{}","offset":1}}"#, "x".repeat(220));
    let mut g = c.benchmark_group("sqlite_floor");
    g.throughput(Throughput::Elements(ROWS));
    for (name, schema, topics) in [
        ("insert_4096", "CREATE TABLE m (seq INTEGER PRIMARY KEY, topic INTEGER, off INTEGER, frame TEXT)", 1i64),
        (
            "insert_4096_indexed_over_50_topics",
            "CREATE TABLE m (seq INTEGER PRIMARY KEY, topic INTEGER, off INTEGER, frame TEXT);
             CREATE UNIQUE INDEX m_topic_off ON m (topic, off)",
            50,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("floor.db")).unwrap();
        conn.pragma_update(None, "page_size", 16384).unwrap();
        let _: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).unwrap();
        conn.pragma_update(None, "synchronous", "OFF").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch(schema).unwrap();
        let mut seq = 0i64;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let tx = conn.unchecked_transaction().unwrap();
                    {
                        let mut insert = tx.prepare_cached("INSERT INTO m VALUES (?1, ?2, ?3, ?4)").unwrap();
                        for _ in 0..ROWS {
                            seq += 1;
                            insert.execute(rusqlite::params![seq, seq / RUN % topics, seq, frame]).unwrap();
                        }
                    }
                    tx.commit().unwrap();
                    spent += start.elapsed();
                    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
                }
                spent
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode, encode, routing, fanout, store_append, sqlite_floor);
criterion_main!(benches);
