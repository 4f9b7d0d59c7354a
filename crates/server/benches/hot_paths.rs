//! Criterion benchmarks of the hot functions, so regressions show:
//! frame decoding, encode-once message drafts, topic routing, a broker publish
//! fanned out to 100 subscribers' outboxes, and a group commit into the SQLite store.
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

criterion_group!(benches, decode, encode, routing, fanout, store_append);
criterion_main!(benches);
