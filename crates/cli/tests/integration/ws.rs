//! The WebSocket protocol: every client frame and its documented replies.

use agentbus_testkit::TestServer;
use serde_json::json;

use crate::QUIET;

#[tokio::test]
async fn register_subscribe_send_gets_ack_and_own_broadcast() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut c = server.connect().await;
    let reg = c.register("test-agent").await;
    assert_eq!(reg["agent_id"], "test-agent");
    assert!(reg["session"].is_string() && reg["server"].as_str().unwrap().starts_with("agentbus/"));
    let sub = c.subscribe("orchestrator").await;
    assert_eq!((sub["topic"].as_str(), sub["offset"].as_u64()), (Some("orchestrator"), Some(0)));
    c.send(json!({"type":"send","topic":"orchestrator","content":"Hi","from_agent":"test-agent","to_agent":"board","ref":1}))
        .await;
    let (mut ack, mut msg) = (None, None);
    while ack.is_none() || msg.is_none() {
        let f = c.recv().await;
        match f["type"].as_str() {
            Some("ack") => ack = Some(f),
            Some("message") => msg = Some(f),
            other => panic!("unexpected {other:?}"),
        }
    }
    let (ack, msg) = (ack.unwrap(), msg.unwrap());
    assert_eq!(ack["ref"], 1);
    assert_eq!((ack["offset"].as_u64(), ack["delivered"].as_u64()), (Some(1), Some(1)));
    assert_eq!(ack["id"], msg["id"]);
    assert_eq!(msg["content"], "Hi");
    assert_eq!(msg["from_agent"], "test-agent");
    assert_eq!(msg["to_agent"], "board");
    assert_eq!(msg["offset"], 1);
    assert!(msg["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn offsets_start_at_one_and_grow_by_one_per_topic() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut c = server.connect().await;
    c.register("p").await;
    for i in 1..=5 {
        assert_eq!(c.publish("a", json!(i)).await["offset"], i);
    }
    assert_eq!(c.publish("b", json!("x")).await["offset"], 1);
    assert_eq!(c.publish("a", json!(6)).await["offset"], 6);
}

#[tokio::test]
async fn new_subscribers_get_the_last_ten_messages_oldest_first_then_live() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut p = server.connect().await;
    p.register("p").await;
    for i in 1..=15 {
        p.publish("t", json!(i)).await;
    }
    let mut s = server.connect().await;
    s.send(json!({"type":"subscribe","topic":"t"})).await;
    let sub = s.recv().await;
    assert_eq!((sub["type"].as_str(), sub["offset"].as_u64()), (Some("subscribed"), Some(15)));
    for i in 6..=15 {
        let m = s.recv().await;
        assert_eq!((m["offset"].as_u64(), m["replay"].as_bool()), (Some(i), Some(true)));
        assert_eq!(m["content"], i);
    }
    p.publish("t", json!(16)).await;
    let live = s.recv().await;
    assert_eq!((live["offset"].as_u64(), live.get("replay")), (Some(16), None));

    let mut h = server.connect().await;
    h.send(json!({"type":"subscribe","topic":"t","history":3})).await;
    h.recv_type("subscribed").await;
    let offsets: Vec<u64> =
        [h.recv().await, h.recv().await, h.recv().await].iter().map(|m| m["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [14, 15, 16]);
    let mut none = server.connect().await;
    none.send(json!({"type":"subscribe","topic":"t","history":0})).await;
    none.recv_type("subscribed").await;
    assert!(none.try_recv(QUIET).await.is_none());
}

#[tokio::test]
async fn subscribe_since_replays_everything_after_the_offset_without_gap_or_duplicate() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut p = server.connect().await;
    p.register("p").await;
    for i in 1..=30 {
        p.publish("t", json!(i)).await;
    }
    let mut s = server.connect().await;
    s.send(json!({"type":"subscribe","topic":"t","since":12,"ref":"r"})).await;
    let sub = s.recv().await;
    assert_eq!(sub["type"], "subscribed");
    assert_eq!(sub["recovered"], true);
    assert_eq!(sub["ref"], "r");
    for i in 13..=30 {
        assert_eq!(s.recv().await["offset"], i);
    }
    p.publish("t", json!(31)).await;
    assert_eq!(s.recv().await["offset"], 31);
    assert!(s.try_recv(QUIET).await.is_none());
}

#[tokio::test]
async fn subscribe_since_from_another_history_is_reported_as_not_recovered() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut p = server.connect().await;
    p.register("p").await;
    p.publish("t", json!(1)).await;
    let mut s = server.connect().await;
    s.send(json!({"type":"subscribe","topic":"t","since":40})).await;
    let sub = s.recv_type("subscribed").await;
    assert_eq!(sub["recovered"], false);
    assert_eq!(s.recv().await["offset"], 1, "the whole current history is replayed");
    let mut e = server.connect().await;
    e.send(json!({"type":"subscribe","topic":"t","since":1,"epoch":"some-other-epoch"})).await;
    assert_eq!(e.recv_type("subscribed").await["recovered"], false);
    assert_eq!(e.recv().await["offset"], 1, "the whole current history is replayed");
    let mut zero = server.connect().await;
    zero.send(json!({"type":"subscribe","topic":"t","since":0,"epoch":"some-other-epoch"})).await;
    assert_eq!(zero.recv_type("subscribed").await["recovered"], true, "a full replay from 0 loses nothing");
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut c = server.connect().await;
    c.register("a").await;
    c.subscribe("t").await;
    c.send(json!({"type":"unsubscribe","topic":"t","ref":9})).await;
    let u = c.recv().await;
    assert_eq!(
        (u["type"].as_str(), u["topic"].as_str(), u["ref"].as_i64()),
        (Some("unsubscribed"), Some("t"), Some(9))
    );
    let ack = c.publish("t", json!("after")).await;
    assert_eq!(ack["delivered"], 0);
    assert!(c.try_recv(QUIET).await.is_none());
}

#[tokio::test]
async fn direct_messages_reach_the_inbox_and_wait_for_an_offline_agent() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut coder = server.connect().await;
    coder.register("coder").await;
    let mut boss = server.connect().await;
    boss.register("boss").await;
    boss.send(json!({"type":"send","to_agent":"coder","content":{"task":"one"},"ref":"d1"})).await;
    let ack = boss.recv_type("ack").await;
    assert_eq!((ack["topic"].as_str(), ack["delivered"].as_u64()), (Some("@coder"), Some(1)));
    let m = coder.recv_type("message").await;
    assert_eq!(
        (m["topic"].as_str(), m["to_agent"].as_str(), m["from_agent"].as_str()),
        (Some("@coder"), Some("coder"), Some("boss"))
    );
    drop(coder);
    // While coder is away, two more arrive; they are delivered, once, when it registers.
    for task in ["two", "three"] {
        boss.send(json!({"type":"send","to_agent":"coder","content":{"task":task}})).await;
        boss.recv_type("ack").await;
    }
    let mut back = server.connect().await;
    back.register("coder").await;
    let a = back.recv_type("message").await;
    let b = back.recv_type("message").await;
    assert_eq!((a["content"]["task"].as_str(), a["replay"].as_bool()), (Some("two"), Some(true)));
    assert_eq!(b["content"]["task"], "three");
    assert!(back.try_recv(QUIET).await.is_none());
    drop(back);
    let mut again = server.connect().await;
    again.register("coder").await;
    assert!(again.try_recv(QUIET).await.is_none(), "offline messages are handed over once");
}

#[tokio::test]
async fn a_resend_with_the_same_id_is_acked_again_and_never_delivered_twice() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut s = server.connect().await;
    s.subscribe("t").await;
    let mut p = server.connect().await;
    p.register("p").await;
    let send = json!({"type":"send","topic":"t","content":"once","id":"client-id-1"});
    p.send(send.clone()).await;
    p.send(send.clone()).await;
    let a1 = p.recv_type("ack").await;
    let a2 = p.recv_type("ack").await;
    assert_eq!((a1["id"].as_str(), a1["offset"].as_u64()), (Some("client-id-1"), Some(1)));
    assert_eq!(
        (a2["id"].as_str(), a2["offset"].as_u64(), a2["duplicate"].as_bool()),
        (Some("client-id-1"), Some(1), Some(true))
    );
    p.send(send).await;
    assert_eq!(p.recv_type("ack").await["offset"], 1);
    assert_eq!(s.recv().await["id"], "client-id-1");
    assert!(s.try_recv(QUIET).await.is_none());
}

#[tokio::test]
async fn history_reads_stored_messages_by_offset() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut c = server.connect().await;
    c.register("h").await;
    for i in 1..=20 {
        c.publish("t", json!(i)).await;
    }
    let offsets = |v: &serde_json::Value| -> Vec<u64> {
        v["messages"].as_array().unwrap().iter().map(|m| m["offset"].as_u64().unwrap()).collect()
    };
    c.send(json!({"type":"history","topic":"t","ref":"h1"})).await;
    let h = c.recv_type("history").await;
    assert_eq!((h["ref"].as_str(), offsets(&h)), (Some("h1"), (11..=20).collect()));
    c.send(json!({"type":"history","topic":"t","limit":3,"after":5})).await;
    assert_eq!(offsets(&c.recv_type("history").await), [6, 7, 8]);
    c.send(json!({"type":"history","topic":"t","limit":2,"before":5})).await;
    assert_eq!(offsets(&c.recv_type("history").await), [3, 4]);
    c.send(json!({"type":"history","topic":"empty"})).await;
    assert_eq!(offsets(&c.recv_type("history").await), Vec::<u64>::new());
}

#[tokio::test]
async fn presence_lists_agents_with_capabilities_and_topics() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut a = server.connect().await;
    a.send(json!({"type":"register","agent_id":"coder","capabilities":["code","review"]})).await;
    a.recv_type("registered").await;
    a.subscribe("work").await;
    let mut b = server.connect().await;
    b.register("watcher").await;
    b.send(json!({"type":"presence","ref":"p"})).await;
    let p = b.recv_type("presence").await;
    assert_eq!(p["ref"], "p");
    let agents = p["agents"].as_array().unwrap();
    let coder = agents.iter().find(|x| x["agent_id"] == "coder").unwrap();
    assert_eq!(coder["capabilities"], json!(["code", "review"]));
    assert_eq!(coder["topics"], json!(["work"]));
    assert_eq!(coder["connections"], 1);
    assert!(agents.iter().any(|x| x["agent_id"] == "watcher"));
    b.send(json!({"type":"presence","topic":"work"})).await;
    let only = b.recv_type("presence").await;
    assert_eq!(only["agents"].as_array().unwrap().len(), 1);
    drop(a);
    // Presence follows disconnects (the broker learns of them asynchronously).
    let mut gone = false;
    for _ in 0..50 {
        b.send(json!({"type":"presence"})).await;
        let p = b.recv_type("presence").await;
        if !p["agents"].as_array().unwrap().iter().any(|x| x["agent_id"] == "coder") {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone, "coder left presence after disconnecting");
}

#[tokio::test]
async fn ping_gets_pong_with_ref_and_content_may_be_any_json_value() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut c = server.connect().await;
    c.send(json!({"type":"ping","ref":42})).await;
    assert_eq!(c.recv().await, json!({"type":"pong","ref":42}));
    c.register("j").await;
    c.subscribe("t").await;
    for content in
        [json!(null), json!(1.5), json!([1, {"a": "é\u{1F600}\"\\"}]), json!({"deep": {"x": [true, false]}}), json!("")]
    {
        c.send(json!({"type":"send","topic":"t","content":content.clone()})).await;
        let m = c.recv_type("message").await;
        assert_eq!(m["content"], content);
        c.recv_type("ack").await;
    }
}

#[tokio::test]
async fn one_connections_bad_input_never_affects_another() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut good = server.connect().await;
    good.register("good").await;
    good.subscribe("t").await;
    let mut bad = server.connect().await;
    for junk in ["{", "null", "[]", "{\"type\":\"send\"}", "\u{0}\u{1}"] {
        bad.send_text(junk).await;
        assert_eq!(bad.recv().await["type"], "error");
    }
    let ack = good.publish("t", json!("still fine")).await;
    assert_eq!(ack["delivered"], 1);
}
