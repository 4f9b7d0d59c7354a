//! Durability with the SQLite store: nothing acknowledged is lost across a graceful
//! restart or a SIGKILL; offsets, ids, inbox positions and epochs survive; retention,
//! search and bad storage conditions behave as documented.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use agentbus_testkit::{TIMEOUT, TestServer, WsClient};
use serde_json::{Value, json};

/// Every stored message of `topic`, read back over HTTP page by page.
async fn all_messages(server: &TestServer, topic: &str) -> Vec<Value> {
    let http = reqwest::Client::new();
    let mut out: Vec<Value> = Vec::new();
    let mut after = 0;
    loop {
        let url = format!("{}/v1/topics/{topic}/messages?after={after}&limit=1000", server.http_url());
        let page: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        let msgs = page["messages"].as_array().unwrap().clone();
        if msgs.is_empty() {
            return out;
        }
        after = msgs.last().unwrap()["offset"].as_u64().unwrap();
        out.extend(msgs);
    }
}

/// Polls `check` until it holds (background work such as trimming or indexing).
async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !check().await {
        assert!(start.elapsed() < TIMEOUT, "condition not reached in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn kill_9_while_publishing_loses_no_acknowledged_message() {
    kill_9_while_publishing(256).await;
}

/// One send at a time: every ack comes from the journal (a group of one message), so the
/// kill finds acknowledged messages that are only there.
#[tokio::test]
async fn kill_9_while_publishing_one_at_a_time_loses_no_journaled_message() {
    kill_9_while_publishing(1).await;
}

/// Publishes with up to `window` sends in flight, kills the server from outside, restarts
/// it and checks every acknowledged message (and resends the rest).
async fn kill_9_while_publishing(window: u64) {
    let mut server = TestServer::start().await;
    let mut c = server.connect().await;
    c.register("crash-publisher").await;
    let pid = server.pid().unwrap();
    // Pipeline sends with client ids; kill the server from outside mid-stream.
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let _ = std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    });
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut sent = 0u64;
    let mut in_flight = 0u64;
    'outer: loop {
        while in_flight < window {
            let frame =
                json!({"type":"send","topic":"crash","content":format!("payload {sent}"),"id":format!("c-{sent}")});
            if futures_util::SinkExt::send(
                c.inner(),
                tokio_tungstenite::tungstenite::Message::Text(frame.to_string().into()),
            )
            .await
            .is_err()
            {
                break 'outer;
            }
            sent += 1;
            in_flight += 1;
        }
        match tokio::time::timeout(TIMEOUT, futures_util::StreamExt::next(c.inner())).await.unwrap() {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "ack" {
                    acked.insert(v["id"].as_str().unwrap().to_owned(), v["offset"].as_u64().unwrap());
                    in_flight -= 1;
                }
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    killer.await.unwrap();
    assert!(acked.len() > 100, "the publisher got going before the kill ({} acks)", acked.len());
    server.kill().await;
    server.restart().await;

    let stored = all_messages(&server, "crash").await;
    let by_id: HashMap<&str, u64> =
        stored.iter().map(|m| (m["id"].as_str().unwrap(), m["offset"].as_u64().unwrap())).collect();
    assert_eq!(by_id.len(), stored.len(), "no id is stored twice");
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m["offset"].as_u64(), Some(i as u64 + 1), "offsets are contiguous from 1");
    }
    for (id, offset) in &acked {
        assert_eq!(by_id.get(id.as_str()), Some(offset), "acked {id} is stored at its acked offset");
    }
    // Resending everything that was in flight stores each exactly once.
    let mut c = server.connect().await;
    c.register("crash-publisher").await;
    for n in 0..sent {
        let id = format!("c-{n}");
        if acked.contains_key(&id) {
            continue;
        }
        c.send(json!({"type":"send","topic":"crash","content":format!("payload {n}"),"id":id})).await;
        let ack = c.recv_type("ack").await;
        if let Some(&o) = by_id.get(id.as_str()) {
            assert_eq!((ack["offset"].as_u64(), ack["duplicate"].as_bool()), (Some(o), Some(true)));
        }
    }
    let after = all_messages(&server, "crash").await;
    assert_eq!(after.len() as u64, sent, "every send is stored exactly once");
    for (i, m) in after.iter().enumerate() {
        assert_eq!(m["offset"].as_u64(), Some(i as u64 + 1));
    }
}

#[tokio::test]
async fn offsets_ids_epochs_and_offline_inboxes_survive_a_restart() {
    let mut server = TestServer::start().await;
    let mut c = server.connect().await;
    c.register("sender").await;
    for i in 1..=3 {
        c.send(json!({"type":"send","topic":"keep","content":i,"id":format!("keep-{i}")})).await;
        c.recv_type("ack").await;
    }
    c.send(json!({"type":"send","to_agent":"sleeper","content":"wake up"})).await;
    c.recv_type("ack").await;
    let sub = c.subscribe("keep").await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    drop(c);
    assert_eq!(server.stop().await, Some(0));
    server.restart().await;

    let mut c = server.connect().await;
    c.register("sender").await;
    c.send(json!({"type":"send","topic":"keep","content":2,"id":"keep-2"})).await;
    let dup = c.recv_type("ack").await;
    assert_eq!((dup["offset"].as_u64(), dup["duplicate"].as_bool()), (Some(2), Some(true)));
    assert_eq!(c.publish("keep", json!(4)).await["offset"], 4);
    c.send(json!({"type":"subscribe","topic":"keep","since":2,"epoch":epoch})).await;
    let sub = c.recv_type("subscribed").await;
    assert_eq!((sub["epoch"].as_str(), sub["recovered"].as_bool()), (Some(epoch.as_str()), Some(true)));
    assert_eq!(c.recv().await["offset"], 3);
    assert_eq!(c.recv().await["offset"], 4);
    let mut sleeper = server.connect().await;
    sleeper.register("sleeper").await;
    let m = sleeper.recv_type("message").await;
    assert_eq!((m["content"].as_str(), m["topic"].as_str()), (Some("wake up"), Some("@sleeper")));
}

#[tokio::test]
async fn retention_trims_in_the_background_and_recovery_reports_the_gap() {
    let server = TestServer::builder()
        .config("[retention]\nmax_messages = 5\n\n[[retention.overrides]]\npattern = \"keep.*\"\nmax_messages = 0\n")
        .start()
        .await;
    let mut c = server.connect().await;
    c.register("r").await;
    for i in 1..=20 {
        c.publish("short", json!(i)).await;
        c.publish("keep.all", json!(i)).await;
    }
    eventually(|| async { all_messages(&server, "short").await.len() == 5 }).await;
    let left: Vec<u64> = all_messages(&server, "short").await.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
    assert_eq!(left, [16, 17, 18, 19, 20]);
    assert_eq!(all_messages(&server, "keep.all").await.len(), 20, "the override keeps everything");
    c.send(json!({"type":"subscribe","topic":"short","since":3})).await;
    let sub = c.recv_type("subscribed").await;
    assert_eq!(sub["recovered"], false);
    assert_eq!(c.recv().await["offset"], 16);
    let page: Value = reqwest::get(format!("{}/v1/topics/short/messages?after=3", server.http_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["recovered"], false);
    let ahead: Value = reqwest::get(format!("{}/v1/topics/short/messages?after=99", server.http_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ahead["recovered"], false, "an offset from another history is not a recovery");
    let tip: Value = reqwest::get(format!("{}/v1/topics/short/messages?after=20", server.http_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tip["recovered"], true, "nothing is missing after the last offset");
    assert_eq!(c.publish("short", json!(21)).await["offset"], 21, "offsets continue after trimming");
}

#[tokio::test]
async fn full_text_search_finds_words_over_websocket_and_http() {
    let server = TestServer::start().await;
    let mut c: WsClient = server.connect().await;
    c.register("writer").await;
    c.publish("notes", json!("The quick brown fox jumps over the lazy dog")).await;
    c.publish("notes", json!({"text": "a fox in a JSON object"})).await;
    c.publish("other", json!("fox elsewhere")).await;
    c.publish("notes", json!("nothing to see")).await;
    let search = |q: &str| format!("{}/v1/search?q={q}", server.http_url());
    eventually(|| async {
        let r: Value = reqwest::get(search("fox")).await.unwrap().json().await.unwrap();
        r["hits"].as_array().is_some_and(|h| h.len() == 3)
    })
    .await;
    let r: Value = reqwest::get(search("fox&topic=notes")).await.unwrap().json().await.unwrap();
    let hits = r["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().any(|h| h["snippet"].as_str().unwrap().contains("[fox]")));
    assert!(hits.iter().all(|h| h["message"]["topic"] == "notes" && h["score"].as_f64().unwrap() > 0.0));
    c.send(json!({"type":"search","query":"quick fox","ref":"s"})).await;
    let res = c.recv_type("search_results").await;
    assert_eq!(res["ref"], "s");
    assert_eq!(res["hits"].as_array().unwrap().len(), 1);
    // Hostile queries are words, never query syntax.
    for q in ["\"", "NEAR(", "*", "fox OR dog", "-fox", "topic:notes", "a\"b"] {
        c.send(json!({"type":"search","query":q})).await;
        assert_eq!(c.recv().await["type"], "search_results", "query {q}");
    }
    let empty = reqwest::get(search("")).await.unwrap();
    assert_eq!(empty.status(), 400);
    let huge = reqwest::get(search(&"x".repeat(5000))).await.unwrap();
    assert_eq!(huge.status(), 413);
}

#[tokio::test]
async fn a_full_store_refuses_sends_and_acks_nothing_it_did_not_store() {
    let server = TestServer::builder().config("[store]\nmax_size_bytes = 262144\n").start().await;
    let mut c = server.connect().await;
    c.register("filler").await;
    let body = "z".repeat(4000);
    let mut acked = Vec::new();
    let mut refused = 0;
    for i in 0..200 {
        c.send(json!({"type":"send","topic":"fill","content":body,"id":format!("f-{i}")})).await;
        let r = c.recv_until(|v| v["type"] == "ack" || v["type"] == "error").await;
        if r["type"] == "ack" {
            acked.push(r["offset"].as_u64().unwrap());
        } else {
            assert_eq!(r["code"], "unavailable", "{r}");
            refused += 1;
        }
    }
    assert!(refused > 0, "the store filled up");
    let stored: Vec<u64> = all_messages(&server, "fill").await.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
    assert_eq!(stored, acked, "exactly the acked messages are stored, with no gap");
    c.send(json!({"type":"ping"})).await;
    assert_eq!(c.recv_type("pong").await["type"], "pong");
}

fn start_fails(args: &[&str], data: &std::path::Path) -> String {
    let out = std::process::Command::new(agentbus_testkit::agentbus_bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[tokio::test]
async fn an_unusable_data_folder_or_corrupt_database_stops_start_up_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let err = start_fails(&[], &file.join("data"));
    assert!(err.contains("cannot open the store"), "{err}");
    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    std::fs::write(corrupt.join("agentbus.db"), vec![0x5a; 8192]).unwrap();
    let err = start_fails(&[], &corrupt);
    assert!(err.contains("cannot open the store"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
