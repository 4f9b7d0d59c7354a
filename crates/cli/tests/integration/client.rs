//! The Rust client (`agentbus` crate) and the CLI one-shots against the real server:
//! recovery across restarts and crashes, the send queue, the transport chain (HTTP when
//! WebSocket upgrades are refused, the local board with no server, forwarding when a
//! server returns), requests and slow consumers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentbus::{Client, ErrorKind, Event, Message, SubscribeOptions, Subscription, Transport};
use agentbus_testkit::{TIMEOUT, TestServer};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::QUIET;

fn board(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("board.db")
}

async fn connect(url: &str, agent: &str, board: &Path) -> Client {
    tokio::time::timeout(TIMEOUT, Client::builder(url).agent_id(agent).board_path(board).connect())
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn next(sub: &mut Subscription) -> Message {
    tokio::time::timeout(TIMEOUT, sub.next()).await.expect("timed out waiting for a message").expect("stream ended")
}

async fn quiet(sub: &mut Subscription) {
    if let Ok(Some(m)) = tokio::time::timeout(QUIET, sub.next()).await {
        panic!("unexpected message {m:?}");
    }
}

/// Waits for the first event that `pred` accepts.
async fn wait_event(events: &mut (impl Stream<Item = Event> + Unpin), mut pred: impl FnMut(&Event) -> bool) -> Event {
    tokio::time::timeout(TIMEOUT, async {
        loop {
            let e = events.next().await.expect("event stream ended");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
    .expect("timed out waiting for an event")
}

/// Every stored message of `topic`, read over HTTP.
async fn stored(server: &TestServer, topic: &str) -> Vec<Value> {
    let url = format!("{}/v1/topics/{topic}/messages?after=0&limit=1000", server.http_url());
    let page: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    page["messages"].as_array().unwrap().clone()
}

fn ids(messages: &[Value]) -> Vec<String> {
    messages.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect()
}

/// Runs the `agentbus` binary to completion; returns (success, stdout, stderr).
async fn agentbus(args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        TIMEOUT,
        tokio::process::Command::new(agentbus_testkit::agentbus_bin()).args(args).env_remove("AGENTBUS_URL").output(),
    )
    .await
    .expect("agentbus timed out")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn survives(crash: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start().await;
    let url = server.ws_url();
    let reader = connect(&url, "reader", &board(&dir)).await;
    let mut events = reader.events();
    let mut sub = reader.subscribe("orders").await.unwrap();
    let writer = connect(&url, "writer", &board(&dir)).await;
    for i in 0..10 {
        writer.publish("orders").id(&format!("before-{i}")).content(i).send().await.unwrap();
    }
    // Half read before the server goes, half left in flight.
    for i in 0..5 {
        assert_eq!(next(&mut sub).await.id, format!("before-{i}"));
    }
    if crash {
        server.kill().await;
    } else {
        server.stop().await;
    }
    wait_event(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
    server.restart().await;
    let other = connect(&url, "writer-2", &board(&dir)).await;
    for i in 0..10 {
        other.publish("orders").id(&format!("after-{i}")).content(100 + i).send().await.unwrap();
    }
    let e = wait_event(&mut events, |e| matches!(e, Event::Reconnected { .. })).await;
    assert_eq!(e, Event::Reconnected { transport: Transport::Websocket });
    let mut got: Vec<Message> = Vec::new();
    for _ in 0..15 {
        got.push(next(&mut sub).await);
    }
    quiet(&mut sub).await;
    let want: Vec<String> =
        (5..10).map(|i| format!("before-{i}")).chain((0..10).map(|i| format!("after-{i}"))).collect();
    assert_eq!(got.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), want);
    let offsets: Vec<u64> = got.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, (6..=20).collect::<Vec<u64>>(), "every offset once, in order");
    assert_eq!(stored(&server, "orders").await.len(), 20);
}

#[tokio::test]
async fn a_subscription_sees_every_message_once_in_order_across_a_graceful_restart() {
    survives(false).await;
}

#[tokio::test]
async fn a_subscription_sees_every_message_once_in_order_across_kill_9() {
    survives(true).await;
}

#[tokio::test]
async fn sends_made_while_the_server_is_down_wait_and_go_out_once_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start().await;
    // No board in the chain: sends wait in memory.
    let c = tokio::time::timeout(
        TIMEOUT,
        Client::builder(server.ws_url())
            .agent_id("queued")
            .board_path(board(&dir))
            .transports([Transport::Websocket])
            .request_timeout(TIMEOUT)
            .connect(),
    )
    .await
    .unwrap()
    .unwrap();
    let mut events = c.events();
    c.send("queue", "first").await.unwrap();
    server.stop().await;
    wait_event(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
    assert_eq!(c.transport(), None);
    let sends = futures_util::future::join_all(
        (0..5).map(|i| c.publish("queue").id(&format!("q-{i}")).content(format!("queued {i}")).send()),
    );
    let mut sends = std::pin::pin!(sends);
    assert!(tokio::time::timeout(QUIET, &mut sends).await.is_err(), "nothing is acked while the server is down");
    server.restart().await;
    let acks = tokio::time::timeout(TIMEOUT, sends).await.unwrap();
    let acks: Vec<_> = acks.into_iter().map(Result::unwrap).collect();
    assert!(acks.iter().all(|a| a.transport == Transport::Websocket && !a.duplicate));
    assert_eq!(acks.iter().map(|a| a.offset).collect::<Vec<_>>(), [2, 3, 4, 5, 6]);
    let all = stored(&server, "queue").await;
    assert_eq!(ids(&all)[1..], ["q-0", "q-1", "q-2", "q-3", "q-4"]);
}

/// A proxy that forwards plain HTTP to `upstream` but refuses WebSocket upgrades.
async fn no_websocket_proxy(upstream: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match inbound.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if String::from_utf8_lossy(&head).to_ascii_lowercase().contains("upgrade: websocket") {
                    let _ = inbound
                        .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                }
                let Ok(mut outbound) = TcpStream::connect(&upstream).await else { return };
                if outbound.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_http_tier_is_used_when_websocket_upgrades_are_refused_and_messages_flow_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    let proxy = no_websocket_proxy(server.addr().to_owned()).await;
    let h = connect(&format!("ws://{proxy}"), "behind-proxy", &board(&dir)).await;
    assert_eq!(h.transport(), Some(Transport::Http));
    let w = connect(&server.ws_url(), "direct", &board(&dir)).await;
    assert_eq!(w.transport(), Some(Transport::Websocket));

    let mut h_sub = h.subscribe("chat").await.unwrap();
    let mut w_sub = w.subscribe("chat").await.unwrap();
    w.send("chat", "from websocket").await.unwrap();
    assert_eq!(next(&mut h_sub).await.content, json!("from websocket"));
    assert_eq!(next(&mut w_sub).await.content, json!("from websocket"));
    let ack = h.send("chat", json!({"from": "http"})).await.unwrap();
    assert_eq!((ack.transport, ack.offset), (Transport::Http, 2));
    assert_eq!(next(&mut w_sub).await.content, json!({"from": "http"}));
    assert_eq!(next(&mut h_sub).await.offset, 2, "its own message comes back too");
    // Direct messages reach the HTTP client's inbox; requests work across tiers.
    let mut inbox = h.subscribe("@behind-proxy").await.unwrap();
    w.send_direct("behind-proxy", "psst").await.unwrap();
    let dm = next(&mut inbox).await;
    assert_eq!((dm.from_agent.as_str(), dm.content.clone()), ("direct", json!("psst")));
    let mut w_inbox = w.subscribe("@direct").await.unwrap();
    let responder = w.clone();
    tokio::spawn(async move {
        while let Some(m) = w_inbox.next().await {
            responder.reply(&m, json!({"answer": m.content})).await.unwrap();
        }
    });
    let answer = h.request("@direct", "ping", TIMEOUT).await.unwrap();
    assert_eq!(answer.content, json!({"answer": "ping"}));
    assert_eq!(h.history("chat", 10).await.unwrap().len(), 2);
    quiet(&mut h_sub).await;
}

#[tokio::test]
async fn the_http_tier_resumes_its_event_streams_by_offset_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start().await;
    let proxy = no_websocket_proxy(server.addr().to_owned()).await;
    let h = connect(&format!("ws://{proxy}"), "sse-reader", &board(&dir)).await;
    assert_eq!(h.transport(), Some(Transport::Http));
    let mut events = h.events();
    let mut sub = h.subscribe("feed").await.unwrap();
    let w = connect(&server.ws_url(), "feeder", &board(&dir)).await;
    w.publish("feed").id("f-1").content(1).send().await.unwrap();
    assert_eq!(next(&mut sub).await.id, "f-1");
    server.stop().await;
    wait_event(&mut events, |e| matches!(e, Event::Disconnected { transport: Transport::Http })).await;
    server.restart().await;
    for i in 2..=4 {
        w.publish("feed").id(&format!("f-{i}")).content(i).send().await.unwrap();
    }
    let e = wait_event(&mut events, |e| matches!(e, Event::Reconnected { .. })).await;
    assert_eq!(e, Event::Reconnected { transport: Transport::Http });
    for i in 2..=4 {
        let m = next(&mut sub).await;
        assert_eq!((m.id, m.offset), (format!("f-{i}"), i));
    }
    quiet(&mut sub).await;
}

#[tokio::test]
async fn with_no_server_the_board_is_used_and_what_was_sent_there_is_forwarded_once_when_a_server_appears() {
    let dir = tempfile::tempdir().unwrap();
    let offline = format!("ws://127.0.0.1:{}", closed_port());
    let c = connect(&offline, "offline", &board(&dir)).await;
    assert_eq!(c.transport(), Some(Transport::Board));
    for i in 0..5 {
        let ack =
            c.publish("notes").id(&format!("board-{i}")).content(format!("note number {i}")).send().await.unwrap();
        assert_eq!((ack.transport, ack.offset), (Transport::Board, i + 1));
    }
    let history = c.history("notes", 10).await.unwrap();
    assert_eq!(
        history.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["board-0", "board-1", "board-2", "board-3", "board-4"]
    );
    let hits = c.search("number 3", Some("notes")).await.unwrap();
    assert_eq!(hits[0].message.id, "board-3");
    assert_eq!(c.presence().await.unwrap_err().kind(), &ErrorKind::Unsupported);
    c.close().await.unwrap();

    // A server appears; the next one-shot that reaches it forwards the board first.
    let server = TestServer::start().await;
    let board_arg = board(&dir).to_string_lossy().into_owned();
    let url = server.ws_url();
    let (ok, out, err) =
        agentbus(&["send", "notes", "after the board", "--url", &url, "--board", &board_arg, "--id", "after-1"]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("via websocket") && out.contains("offset 6"), "{out}");
    let want = ["board-0", "board-1", "board-2", "board-3", "board-4", "after-1"];
    assert_eq!(ids(&stored(&server, "notes").await), want);
    // Later clients find nothing left to forward: still each message once.
    let (ok, out, _) = agentbus(&["send", "notes", "{\"n\":7}", "--url", &url, "--board", &board_arg]).await;
    assert!(ok && out.contains("offset 7"), "{out}");
    let all = stored(&server, "notes").await;
    assert_eq!(all.len(), 7);
    assert_eq!(all[6]["content"], json!({"n": 7}), "text that parses as JSON is sent as JSON");
    assert_eq!(all[0]["from_agent"], "offline", "forwarded with its sender");
}

#[tokio::test]
async fn a_client_on_the_board_moves_back_up_by_itself_and_forwards_when_the_server_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start().await;
    let url = server.ws_url();
    server.kill().await;
    let c = connect(&url, "patient", &board(&dir)).await;
    assert_eq!(c.transport(), Some(Transport::Board));
    let mut events = c.events();
    let mut sub = c.subscribe("notes").await.unwrap();
    c.publish("notes").id("while-away").content("written with no server").send().await.unwrap();
    assert_eq!(next(&mut sub).await.id, "while-away", "the board delivers to its own subscribers");
    server.restart().await;
    let e = wait_event(&mut events, |e| matches!(e, Event::TransportChanged { .. })).await;
    assert_eq!(e, Event::TransportChanged { from: Transport::Board, to: Transport::Websocket });
    wait_event(&mut events, |e| matches!(e, Event::Forwarded { count: 1 })).await;
    assert_eq!(ids(&stored(&server, "notes").await), ["while-away"]);
    let other = connect(&url, "other", &board(&dir)).await;
    other.publish("notes").id("live").content("live again").send().await.unwrap();
    assert_eq!(next(&mut sub).await.id, "live", "the forwarded message is not delivered a second time");
    quiet(&mut sub).await;
}

#[tokio::test]
async fn a_long_outage_moves_queued_sends_to_the_board_and_every_message_reaches_the_server_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start().await;
    let c = tokio::time::timeout(
        TIMEOUT,
        Client::builder(server.ws_url())
            .agent_id("enduring")
            .board_path(board(&dir))
            .board_fallback_after(Duration::from_millis(200))
            .connect(),
    )
    .await
    .unwrap()
    .unwrap();
    let mut events = c.events();
    let mut sub = c.subscribe("log").await.unwrap();
    c.publish("log").id("l-0").content("before").send().await.unwrap();
    assert_eq!(next(&mut sub).await.id, "l-0");
    server.kill().await;
    wait_event(&mut events, |e| matches!(e, Event::Disconnected { .. })).await;
    // Queued in memory first, then moved to the board when the outage lasts.
    let queued =
        futures_util::future::join_all((1..=2).map(|i| c.publish("log").id(&format!("l-{i}")).content(i).send()));
    let acks: Vec<_> = tokio::time::timeout(TIMEOUT, queued).await.unwrap().into_iter().map(Result::unwrap).collect();
    assert!(acks.iter().all(|a| a.transport == Transport::Board), "{acks:?}");
    assert_eq!(c.transport(), Some(Transport::Board));
    c.publish("log").id("l-3").content(3).send().await.unwrap();
    for i in 1..=3 {
        assert_eq!(next(&mut sub).await.id, format!("l-{i}"));
    }
    server.restart().await;
    let e = wait_event(&mut events, |e| matches!(e, Event::TransportChanged { to: Transport::Websocket, .. })).await;
    assert_eq!(e, Event::TransportChanged { from: Transport::Board, to: Transport::Websocket });
    wait_event(&mut events, |e| matches!(e, Event::Forwarded { count: 3 })).await;
    assert_eq!(ids(&stored(&server, "log").await), ["l-0", "l-1", "l-2", "l-3"]);
    c.publish("log").id("l-4").content(4).send().await.unwrap();
    assert_eq!(next(&mut sub).await.id, "l-4", "nothing forwarded is delivered twice");
    quiet(&mut sub).await;
}

#[tokio::test]
async fn two_processes_sharing_one_board_see_each_others_messages() {
    let dir = tempfile::tempdir().unwrap();
    let offline = format!("ws://127.0.0.1:{}", closed_port());
    let board_arg = board(&dir).to_string_lossy().into_owned();
    let reader = connect(&offline, "reader", &board(&dir)).await;
    assert_eq!(reader.transport(), Some(Transport::Board));
    let mut sub = reader.subscribe("shared").await.unwrap();
    let args_a = ["send", "shared", "from a", "--url", &offline, "--board", &board_arg, "--as", "proc-a"];
    let args_b = ["send", "shared", "from b", "--url", &offline, "--board", &board_arg, "--as", "proc-b"];
    let (a, b) = tokio::join!(agentbus(&args_a), agentbus(&args_b));
    for (ok, out, err) in [&a, &b] {
        assert!(*ok && out.contains("via board"), "{out}{err}");
        assert!(err.contains("Using 'board' transport"), "{err}");
    }
    let mut got = [next(&mut sub).await, next(&mut sub).await];
    got.sort_by_key(|m| m.offset);
    assert_eq!(got.iter().map(|m| m.offset).collect::<Vec<_>>(), [1, 2], "offsets are never shared");
    let mut senders: Vec<&str> = got.iter().map(|m| m.from_agent.as_str()).collect();
    senders.sort_unstable();
    assert_eq!(senders, ["proc-a", "proc-b"]);
    let (ok, out, _) = agentbus(&["history", "shared", "--url", &offline, "--board", &board_arg]).await;
    assert!(ok && out.contains("proc-a: from a") && out.contains("proc-b: from b"), "{out}");
    let (ok, out, _) = agentbus(&["search", "from", "--url", &offline, "--board", &board_arg]).await;
    assert!(ok && out.lines().count() == 2, "{out}");
}

#[tokio::test]
async fn request_gets_the_first_reply_and_times_out_when_nobody_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    let responder = connect(&server.ws_url(), "echo", &board(&dir)).await;
    let mut inbox = responder.subscribe("@echo").await.unwrap();
    let mut rpc = responder.subscribe("rpc").await.unwrap();
    let r = responder.clone();
    tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                Some(m) = inbox.next() => m,
                Some(m) = rpc.next() => m,
                else => return,
            };
            if m.in_reply_to.is_none() {
                r.reply(&m, json!({"echo": m.content})).await.unwrap();
            }
        }
    });
    let requester = connect(&server.ws_url(), "asker", &board(&dir)).await;
    let direct = requester.request("@echo", "ping", TIMEOUT).await.unwrap();
    assert_eq!((direct.topic.as_str(), direct.content.clone()), ("@asker", json!({"echo": "ping"})));
    let on_topic = requester.request("rpc", json!({"q": 1}), TIMEOUT).await.unwrap();
    assert_eq!((on_topic.topic.as_str(), on_topic.content.clone()), ("rpc", json!({"echo": {"q": 1}})));
    let start = std::time::Instant::now();
    let err = requester.request("@nobody", "anyone?", Duration::from_millis(300)).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Timeout);
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_subscription_that_is_not_read_raises_slow_consumer_and_keeps_what_fitted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    let c = connect(&server.ws_url(), "sluggish", &board(&dir)).await;
    let mut events = c.events();
    let mut sub = c.subscribe_with("firehose", SubscribeOptions::new().capacity(2)).await.unwrap();
    let p = connect(&server.ws_url(), "hose", &board(&dir)).await;
    for i in 0..20 {
        p.send("firehose", i).await.unwrap();
    }
    let e = wait_event(&mut events, |e| matches!(e, Event::SlowConsumer { .. })).await;
    assert_eq!(e, Event::SlowConsumer { topic: "firehose".into() });
    assert_eq!(next(&mut sub).await.content, json!(0));
    assert_eq!(next(&mut sub).await.content, json!(1));
    // The connection itself is fine: other calls still work.
    assert_eq!(c.history("firehose", 5).await.unwrap().len(), 5);
}

#[tokio::test]
async fn a_server_that_lost_its_history_is_reported_as_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::builder().ephemeral().start().await;
    let c = connect(&server.ws_url(), "gappy", &board(&dir)).await;
    let mut events = c.events();
    let mut sub = c.subscribe("t").await.unwrap();
    for i in 0..3 {
        c.send("t", i).await.unwrap();
        next(&mut sub).await;
    }
    server.restart().await;
    let gap = wait_event(&mut events, |e| matches!(e, Event::Gap { .. })).await;
    assert_eq!(gap, Event::Gap { topic: "t".into(), since: 3, offset: 0, reset: true });
    c.send("t", "new history").await.unwrap();
    let m = next(&mut sub).await;
    assert_eq!((m.offset, m.content), (1, json!("new history")), "the new history is delivered from its start");
}

#[tokio::test]
async fn listen_prints_one_json_message_per_line_and_send_prints_the_transport() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start().await;
    let board_arg = board(&dir).to_string_lossy().into_owned();
    let url = server.ws_url();
    let mut listen = tokio::process::Command::new(agentbus_testkit::agentbus_bin())
        .args(["listen", "news", "--json", "--url", &url, "--board", &board_arg, "--as", "listener"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut err_lines = tokio::io::BufReader::new(listen.stderr.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(TIMEOUT, tokio::io::AsyncBufReadExt::read_line(&mut err_lines, &mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line.trim(), "Using 'websocket' transport");
    // It says so once its subscription is in place.
    line.clear();
    tokio::time::timeout(TIMEOUT, tokio::io::AsyncBufReadExt::read_line(&mut err_lines, &mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line.trim(), "Listening to news");
    let (ok, out, _) =
        agentbus(&["send", "news", "extra!", "--url", &url, "--board", &board_arg, "--to", "listener"]).await;
    assert!(ok && out.starts_with("sent via websocket to news at offset 1"), "{out}");
    let mut out_lines = tokio::io::BufReader::new(listen.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(TIMEOUT, tokio::io::AsyncBufReadExt::read_line(&mut out_lines, &mut line))
        .await
        .unwrap()
        .unwrap();
    let m: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (m["content"].as_str(), m["to_agent"].as_str(), m["offset"].as_u64()),
        (Some("extra!"), Some("listener"), Some(1))
    );
    listen.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transport_is_known_as_soon_as_connect_returns() {
    let server = TestServer::builder().ephemeral().start().await;
    for i in 0..50 {
        let c = Client::builder(server.ws_url()).agent_id(format!("t{i}")).connect().await.unwrap();
        assert!(c.transport().is_some(), "connect {i} returned before the transport was set");
        c.close().await.unwrap();
    }
}
