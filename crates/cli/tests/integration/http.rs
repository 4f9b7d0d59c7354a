//! HTTP on the same port: publish, history with long-poll, SSE with resume, listings.

use std::time::Duration;

use agentbus_testkit::TestServer;
use futures_util::StreamExt;
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

#[tokio::test]
async fn http_publish_reaches_a_websocket_subscriber_and_returns_the_ack() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut s = server.connect().await;
    s.register("listener").await;
    s.subscribe("orchestrator").await;
    let url = format!("{}/v1/topics/orchestrator/messages", server.http_url());
    let res = client().post(&url).json(&json!({"content":{"hello":"http"},"from_agent":"curl"})).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let ack: Value = res.json().await.unwrap();
    assert_eq!(
        (ack["type"].as_str(), ack["offset"].as_u64(), ack["delivered"].as_u64()),
        (Some("ack"), Some(1), Some(1))
    );
    let m = s.recv_type("message").await;
    assert_eq!((m["from_agent"].as_str(), m["content"]["hello"].as_str()), (Some("curl"), Some("http")));
    let bad = client().post(&url).body("{not json").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_json");
    let bad_topic = client()
        .post(format!("{}/v1/topics/no%20way/messages", server.http_url()))
        .json(&json!({"content":1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_topic.status(), 400);
    assert_eq!(bad_topic.json::<Value>().await.unwrap()["error"]["code"], "invalid_topic");
}

#[tokio::test]
async fn http_history_pages_by_offset_and_long_polls() {
    let server = TestServer::builder().ephemeral().start().await;
    let base = format!("{}/v1/topics/t/messages", server.http_url());
    for i in 1..=5 {
        client().post(&base).json(&json!({"content":i})).send().await.unwrap();
    }
    let page: Value = client().get(format!("{base}?after=1&limit=2")).send().await.unwrap().json().await.unwrap();
    let offsets: Vec<u64> =
        page["messages"].as_array().unwrap().iter().map(|m| m["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [2, 3]);
    assert_eq!((page["next_after"].as_u64(), page["recovered"].as_bool()), (Some(3), Some(true)));
    let latest: Value = client().get(format!("{base}?limit=2")).send().await.unwrap().json().await.unwrap();
    assert_eq!(latest["messages"][1]["offset"], 5);
    // A long-poll after the last offset returns as soon as a message is published.
    let poll = tokio::spawn({
        let url = format!("{base}?after=5&wait=20");
        async move { client().get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    });
    let mut ws = server.connect().await;
    ws.register("late").await;
    // Publish repeatedly until the poll has answered (it may register after the first).
    let mut answered = None;
    for i in 0..100 {
        ws.publish("t", json!(format!("new {i}"))).await;
        if poll.is_finished() {
            answered = Some(poll.await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answered = answered.expect("long-poll answered");
    assert_eq!(answered["messages"][0]["offset"], 6);
    let bad = client().get(format!("{base}?after=soon")).send().await.unwrap();
    assert_eq!(bad.status(), 400);
}

async fn read_sse(res: reqwest::Response, want_messages: usize) -> Vec<(String, Option<String>, Value)> {
    let mut stream = res.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    let mut messages = 0;
    while messages < want_messages {
        let chunk = tokio::time::timeout(agentbus_testkit::TIMEOUT, stream.next()).await.unwrap().unwrap().unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut event, mut id, mut data) = (String::from("message"), None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue;
            }
            if event == "message" {
                messages += 1;
            }
            events.push((event, id, serde_json::from_str(&data).unwrap()));
        }
    }
    events
}

#[tokio::test]
async fn sse_streams_messages_and_resumes_with_last_event_id() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut p = server.connect().await;
    p.register("p").await;
    for i in 1..=3 {
        p.publish("news", json!(i)).await;
    }
    let url = format!("{}/v1/topics/news/events", server.http_url());
    let res = client().get(&url).header("Last-Event-ID", "1").send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let reader = tokio::spawn(read_sse(res, 3));
    // Offsets 2 and 3 are replayed; 4 arrives live.
    let mut ws = server.connect().await;
    ws.register("p2").await;
    let mut published = false;
    for _ in 0..100 {
        if reader.is_finished() {
            break;
        }
        if !published {
            ws.publish("news", json!(4)).await;
            published = true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = reader.await.unwrap();
    assert_eq!(events[0].0, "subscribed");
    assert_eq!(events[0].2["recovered"], true);
    let got: Vec<(Option<String>, u64)> =
        events[1..].iter().map(|(_, id, v)| (id.clone(), v["offset"].as_u64().unwrap())).collect();
    assert_eq!(got, [(Some("2".into()), 2), (Some("3".into()), 3), (Some("4".into()), 4)]);
}

#[tokio::test]
async fn listings_health_and_the_root_redirect() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut c = server.connect().await;
    c.send(json!({"type":"register","agent_id":"lister","capabilities":["list"]})).await;
    c.recv_type("registered").await;
    c.subscribe("alpha").await;
    c.publish("alpha", json!("a")).await;
    let base = server.http_url();
    let topics: Value = client().get(format!("{base}/v1/topics")).send().await.unwrap().json().await.unwrap();
    let alpha = topics["topics"].as_array().unwrap().iter().find(|t| t["topic"] == "alpha").unwrap().clone();
    assert_eq!(
        (alpha["last_offset"].as_u64(), alpha["first_offset"].as_u64(), alpha["subscribers"].as_u64()),
        (Some(1), Some(1), Some(1))
    );
    let agents: Value = client().get(format!("{base}/v1/agents")).send().await.unwrap().json().await.unwrap();
    assert_eq!(agents["agents"][0]["agent_id"], "lister");
    assert_eq!(agents["agents"][0]["capabilities"], json!(["list"]));
    let health = client().get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client().get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let root = client().get(format!("{base}/")).send().await.unwrap();
    assert!(root.status().is_redirection());
    assert_eq!(root.headers()["location"], "/ui");
    let ui = client().get(format!("{base}/ui")).send().await.unwrap();
    assert_eq!(ui.status(), 200);
    let missing = client().get(format!("{base}/v1/nothing")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["error"]["code"], "not_found");
}
