//! Bad input: each gets an `error` frame with its stable code and the connection stays
//! usable; protocol violations close with the proper code.

use agentbus_testkit::TestServer;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

async fn still_usable(c: &mut agentbus_testkit::WsClient) {
    c.send(json!({"type":"ping","ref":"alive"})).await;
    assert_eq!(c.recv().await, json!({"type":"pong","ref":"alive"}));
}

#[tokio::test]
async fn every_bad_frame_gets_its_stable_code_and_the_connection_stays_open() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut c = server.connect().await;
    let cases: Vec<(&str, &str)> = vec![
        ("not json at all", "invalid_json"),
        ("{\"type\":\"send\",", "invalid_json"),
        ("[1,2,3]", "invalid_json"),
        ("\"a string\"", "invalid_json"),
        ("{}", "missing_field"),
        (r#"{"type":"teleport","ref":"u"}"#, "unknown_type"),
        (r#"{"type":"subscribe"}"#, "missing_field"),
        (r#"{"type":"register"}"#, "missing_field"),
        (r#"{"type":"send","topic":"t"}"#, "missing_field"),
        (r#"{"type":"send","content":"no destination","from_agent":"x"}"#, "missing_field"),
        (r#"{"type":42}"#, "invalid_field"),
        (r#"{"type":"subscribe","topic":"t","since":"yesterday"}"#, "invalid_field"),
        (r#"{"type":"subscribe","topic":"t","history":-3}"#, "invalid_field"),
        (r#"{"type":"register","agent_id":"has space"}"#, "invalid_field"),
        (r#"{"type":"register","agent_id":"a","capabilities":[1,2]}"#, "invalid_field"),
        (r#"{"type":"send","topic":"t","content":1,"meta":"not an object","from_agent":"x"}"#, "invalid_field"),
        (r#"{"type":"subscribe","topic":"bad topic!"}"#, "invalid_topic"),
        (r#"{"type":"subscribe","topic":""}"#, "invalid_topic"),
        (r#"{"type":"send","topic":"ok","to_agent":"x y","content":1}"#, "invalid_field"),
        (r#"{"type":"send","topic":"t","content":"who am I?"}"#, "not_registered"),
        (r#"{"type":"search","query":""}"#, "invalid_field"),
    ];
    for (frame, code) in cases {
        c.send_text(frame).await;
        let e = c.recv().await;
        assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some(code)), "frame {frame}: {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let long_topic = "t".repeat(129);
    c.send(json!({"type":"subscribe","topic":long_topic})).await;
    assert_eq!(c.recv().await["code"], "invalid_topic");
    c.send(json!({"type":"send","topic":"t","content":1,"from_agent":"x","id":"i".repeat(500)})).await;
    assert_eq!(c.recv().await["code"], "too_large");
    let caps: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
    c.send(json!({"type":"register","agent_id":"a","capabilities":caps})).await;
    assert_eq!(c.recv().await["code"], "too_large");
    still_usable(&mut c).await;
}

#[tokio::test]
async fn errors_echo_the_ref_of_the_refused_frame() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut c = server.connect().await;
    c.send_text(r#"{"type":"subscribe","topic":"no way","ref":"abc"}"#).await;
    let e = c.recv().await;
    assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("invalid_topic"), Some("abc")));
    c.send_text(r#"{"type":"nope","ref":12}"#).await;
    assert_eq!(c.recv().await["ref"], 12);
}

#[tokio::test]
async fn binary_frames_get_an_error() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut c = server.connect().await;
    c.send_raw(Message::Binary(vec![1u8, 2, 3].into())).await;
    let e = c.recv().await;
    assert_eq!(e["code"], "invalid_json");
    still_usable(&mut c).await;
}

#[tokio::test]
async fn a_second_identity_on_one_connection_is_refused() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut c = server.connect().await;
    c.register("first").await;
    c.send(json!({"type":"register","agent_id":"second"})).await;
    assert_eq!(c.recv().await["code"], "invalid_field");
    assert_eq!(c.register("first").await["agent_id"], "first");
}

#[tokio::test]
async fn an_oversized_frame_gets_too_large_and_close_1009() {
    let server = TestServer::builder().ephemeral().config("[limits]\nmax_message_bytes = 4096\n").start().await;
    let mut c = server.connect().await;
    c.register("big").await;
    let fits = c.publish("t", Value::String("x".repeat(3000))).await;
    assert_eq!(fits["type"], "ack");
    c.send(json!({"type":"send","topic":"t","content":"x".repeat(10_000)})).await;
    let e = c.recv().await;
    assert_eq!(e["code"], "too_large");
    assert_eq!(c.closed().await, Some(1009));
    let mut other = server.connect().await;
    still_usable(&mut other).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut c = server.connect().await;
    let payload = vec![b'{', 0xff, 0xfe, b'}'];
    let header = FrameHeader { opcode: OpCode::Data(Data::Text), is_final: true, ..FrameHeader::default() };
    c.send_raw(Message::Frame(Frame::from_payload(header, payload.into()))).await;
    assert_eq!(c.closed().await, Some(1007));
}

#[tokio::test]
async fn a_stalled_reader_is_closed_as_a_slow_consumer_while_others_get_everything() {
    // SQLite keeps the history on disk, so the server's memory shows only what it buffers
    // for its readers; the default 4 MiB outbox, and the healthy reader stays within
    // ~1 MiB of the publisher.
    let server = TestServer::start().await;
    let mut stalled = server.connect().await;
    stalled.register("stalled").await;
    stalled.subscribe("flood").await;
    let mut healthy = server.connect().await;
    healthy.register("healthy").await;
    healthy.subscribe("flood").await;
    let mut p = server.connect().await;
    p.register("publisher").await;
    let body = "y".repeat(1000);
    let (total, burst) = (100_000u64, 500u64);
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let reader = tokio::spawn(async move {
        for next in 1..=total {
            let m = healthy.recv_type("message").await;
            assert_eq!(m["offset"], next, "the healthy subscriber gets every message in order");
            let _ = progress_tx.send(next);
        }
    });
    // 100 MB go out; the publisher is never blocked by the stalled reader (every send is
    // acked) and only paces itself to the healthy subscriber, which keeps up.
    for sent in (burst..=total).step_by(burst as usize) {
        for i in 0..burst {
            p.send(json!({"type":"send","topic":"flood","content":body,"ref":sent - burst + i})).await;
        }
        for _ in 0..burst {
            assert_eq!(p.recv_type("ack").await["type"], "ack");
        }
        progress.wait_for(|&done| done + burst >= sent).await.unwrap();
    }
    reader.await.unwrap();
    // The stalled reader finds, after what fit in the socket buffers, the error and close.
    let (mut saw_error, mut last_offset) = (false, 0);
    let code = loop {
        match stalled.next_raw().await {
            Some(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "error" {
                    assert_eq!(v["code"], "slow_consumer");
                    saw_error = true;
                } else {
                    last_offset = v["offset"].as_u64().unwrap_or(last_offset);
                }
            }
            Some(Message::Close(c)) => break c.map(|c| u16::from(c.code)),
            Some(_) => {}
            None => break None,
        }
    };
    // If the reader resumes in time it reads the error and the 4008 close; a reader still
    // stalled 30 s into a full socket is dropped without one.
    assert!(code == Some(4008) || code.is_none(), "close code {code:?}");
    assert!(code.is_none() || saw_error);
    assert!(last_offset < total, "the stalled reader was cut off (after offset {last_offset})");
    let log = server.log();
    assert!(log.contains("slow consumer") && log.contains("agent=stalled"), "the log names the agent");
    // Nothing like the 100 MB that flowed was ever held for the stalled reader.
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid().unwrap())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    assert!(peak_kib < 96 * 1024, "server peak memory {peak_kib} KiB");
}
