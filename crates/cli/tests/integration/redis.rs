//! The Redis engine (`--redis`): several servers on one Redis share topics with one offset
//! sequence, history, recovery, idempotent ids and inboxes; key prefixes keep buses apart;
//! an unreachable Redis stops start-up. Each test starts its own `redis-server` on a free
//! loopback port; without `redis-server` the tests are skipped, except with `CI=true`,
//! where they fail.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agentbus_testkit::{TIMEOUT, TestServer, WsClient};
use serde_json::{Value, json};

use crate::QUIET;

/// A `redis-server` child process on a free loopback port, with nothing persisted; killed
/// on drop.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts a fresh `redis-server` and waits until it answers. `None` (after a note) when
    /// `redis-server` is not installed and `CI` is not `true`; with `CI=true` that panics.
    fn start() -> Option<Self> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "redis-server is not installed but CI=true: the Redis tests must run in CI \
                 (install Debian's redis-server package; scripts/test.sh does)"
            );
            eprintln!("note: redis-server is not installed; skipping this Redis test");
            return None;
        }
        // A port found free may be taken by someone else before redis-server binds it:
        // then that redis-server exits, or the one answering is not ours, and we try again.
        for _ in 0..10 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("temp dir");
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let start = Instant::now();
            loop {
                if child.try_wait().expect("redis-server status").is_some() {
                    break;
                }
                if let Ok(info) = redis_command::<String>(port, redis::cmd("INFO").arg("server")) {
                    if info.lines().any(|l| l.trim() == format!("process_id:{}", child.id())) {
                        return Some(Self { child, port, _dir: dir });
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                if start.elapsed() > TIMEOUT {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("redis-server did not answer on port {port}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start redis-server on a free port");
    }

    /// Stops this Redis gracefully (it writes its data to its folder) and returns a
    /// stopped handle, to be started again with [`Redis::start_again`].
    fn shut_down(&mut self) {
        let _ = redis_command::<()>(self.port, redis::cmd("SHUTDOWN").arg("SAVE"));
        let _ = self.child.wait();
    }

    /// Starts Redis again on the same port, with the data it saved.
    fn start_again(&mut self) {
        self.child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--appendonly", "no"])
            .arg("--dir")
            .arg(self._dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let start = Instant::now();
        while redis_command::<String>(self.port, &redis::cmd("PING")).is_err() {
            assert!(start.elapsed() < TIMEOUT, "redis-server did not come back");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT/`.
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Every key in the Redis.
    fn keys(&self) -> Vec<String> {
        redis_command(self.port, redis::cmd("KEYS").arg("*")).expect("KEYS")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("local addr").port()
}

/// Runs one command on the Redis on `port`.
fn redis_command<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let mut conn = client.get_connection_with_timeout(TIMEOUT)?;
    cmd.query(&mut conn)
}

/// A client of `server` registered as `agent`.
async fn registered(server: &TestServer, agent: &str) -> WsClient {
    let mut c = server.connect().await;
    c.register(agent).await;
    c
}

/// A client of `server` subscribed to `topic`.
async fn subscribed(server: &TestServer, topic: &str) -> WsClient {
    let mut c = server.connect().await;
    c.subscribe(topic).await;
    c
}

/// Waits (bounded) until `server` has seen `topic` up to `offset` through the feed.
async fn wait_until_seen(server: &TestServer, topic: &str, offset: u64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let topics: Value =
            reqwest::get(format!("{}/v1/topics", server.http_url())).await.unwrap().json().await.unwrap();
        let last =
            topics["topics"].as_array().unwrap().iter().find(|t| t["topic"] == topic).map(|t| t["last_offset"].clone());
        if last.and_then(|l| l.as_u64()).is_some_and(|l| l >= offset) {
            return;
        }
        assert!(Instant::now() < deadline, "{topic} never reached {offset} on {}", server.http_url());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An agentbus server on `redis` (default prefix).
async fn bus_server(redis: &Redis) -> TestServer {
    TestServer::builder().arg("--redis").arg(&redis.url()).start().await
}

/// An agentbus server on `redis` with the key prefix `prefix`.
async fn bus_server_with_prefix(redis: &Redis, prefix: &str) -> TestServer {
    TestServer::builder().arg("--redis").arg(&redis.url()).arg("--redis-prefix").arg(prefix).start().await
}

/// Sends every id of `ids` to `topic` without waiting, then collects one ack per send,
/// keyed by id (acks may come in any order).
async fn publish_pipelined(c: &mut WsClient, topic: &str, ids: &[String]) -> HashMap<String, Value> {
    for (i, id) in ids.iter().enumerate() {
        c.send(json!({"type":"send","topic":topic,"content":{"n":i,"id":id},"id":id})).await;
    }
    let mut acks = HashMap::new();
    while acks.len() < ids.len() {
        let f = c.recv_until(|f| f["type"] == "ack" || f["type"] == "error").await;
        assert_eq!(f["type"], "ack", "{f}");
        acks.insert(f["id"].as_str().unwrap().to_owned(), f);
    }
    acks
}

/// Reads `n` `message` frames in a task, as (offset, id) pairs in arrival order.
fn collect_messages(mut c: WsClient, n: usize) -> tokio::task::JoinHandle<(WsClient, Vec<(u64, String)>)> {
    tokio::spawn(async move {
        let mut seen = Vec::with_capacity(n);
        for _ in 0..n {
            let m = c.recv_type("message").await;
            seen.push((m["offset"].as_u64().unwrap(), m["id"].as_str().unwrap().to_owned()));
        }
        (c, seen)
    })
}

fn offsets(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(|m| m["offset"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn a_subscriber_on_one_server_gets_what_another_server_publishes_in_order() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (bus_server(&redis).await, bus_server(&redis).await);
    let mut sub = registered(&a, "watcher").await;
    assert_eq!(sub.subscribe("relay").await["offset"], 0);
    let mut p = registered(&b, "publisher").await;
    const N: u64 = 50;
    for i in 1..=N {
        let ack = p.publish("relay", json!(i)).await;
        assert_eq!((ack["type"].as_str(), ack["offset"].as_u64()), (Some("ack"), Some(i)), "{ack}");
    }
    for i in 1..=N {
        let m = sub.recv_type("message").await;
        assert_eq!((m["offset"].as_u64(), m["content"].as_u64()), (Some(i), Some(i)), "{m}");
        assert_eq!((m["topic"].as_str(), m["from_agent"].as_str()), (Some("relay"), Some("publisher")));
        assert!(m.get("replay").is_none(), "live messages are not replays: {m}");
    }
    assert!(sub.try_recv(QUIET).await.is_none(), "each message arrives once");
}

#[tokio::test]
async fn concurrent_publishers_on_two_servers_share_one_gapless_order() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (bus_server(&redis).await, bus_server(&redis).await);
    let sub_a = subscribed(&a, "busy").await;
    let sub_b = subscribed(&b, "busy").await;
    let (reader_a, reader_b) = (collect_messages(sub_a, 400), collect_messages(sub_b, 400));
    let mut pa = registered(&a, "pub-a").await;
    let mut pb = registered(&b, "pub-b").await;
    let ids_a: Vec<String> = (0..200).map(|i| format!("a-{i}")).collect();
    let ids_b: Vec<String> = (0..200).map(|i| format!("b-{i}")).collect();
    let (acks_a, acks_b) =
        tokio::join!(publish_pipelined(&mut pa, "busy", &ids_a), publish_pipelined(&mut pb, "busy", &ids_b));

    let mut acked: Vec<(u64, String)> = acks_a
        .values()
        .chain(acks_b.values())
        .map(|a| (a["offset"].as_u64().unwrap(), a["id"].as_str().unwrap().to_owned()))
        .collect();
    acked.sort();
    assert_eq!(acked.iter().map(|(o, _)| *o).collect::<Vec<_>>(), (1..=400).collect::<Vec<_>>(), "acked offsets");
    let (mut sub_a, seen_a) = reader_a.await.unwrap();
    let (mut sub_b, seen_b) = reader_b.await.unwrap();
    assert_eq!(seen_a.iter().map(|(o, _)| *o).collect::<Vec<_>>(), (1..=400).collect::<Vec<_>>(), "order on A");
    assert_eq!(seen_a, seen_b, "both servers deliver the same id at the same offset");
    assert_eq!(seen_a, acked, "each message is delivered at its acked offset");
    assert!(sub_a.try_recv(QUIET).await.is_none() && sub_b.try_recv(QUIET).await.is_none(), "nothing twice");
}

#[tokio::test]
async fn history_and_recovery_live_in_redis_for_every_server_and_survive_restarts() {
    let Some(redis) = Redis::start() else { return };
    let (mut a, mut b) = (bus_server(&redis).await, bus_server(&redis).await);
    let mut p = registered(&a, "historian").await;
    for i in 1..=15 {
        p.send(json!({"type":"send","topic":"hist","content":i,"id":format!("h-{i}")})).await;
        assert_eq!(p.recv_type("ack").await["offset"], i);
    }
    // Default history on the other server, once its feed has brought offset 15 (until
    // then a subscriber there gets the history it has, then the rest live): the last
    // ten, as replays.
    wait_until_seen(&b, "hist", 15).await;
    let mut s = b.connect().await;
    s.send(json!({"type":"subscribe","topic":"hist"})).await;
    let sub = s.recv_type("subscribed").await;
    assert_eq!(sub["offset"], 15, "{sub}");
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    for i in 6..=15 {
        let m = s.recv().await;
        assert_eq!(
            (m["offset"].as_u64(), m["replay"].as_bool(), m["content"].as_u64()),
            (Some(i), Some(true), Some(i))
        );
    }
    let on_a = a.connect().await.subscribe("hist").await;
    assert_eq!(on_a["epoch"].as_str(), Some(epoch.as_str()), "one topic, one epoch on every server");
    // Recovery on B with the epoch seen on A.
    let mut r = b.connect().await;
    r.send(json!({"type":"subscribe","topic":"hist","since":12,"epoch":epoch})).await;
    let sub = r.recv_type("subscribed").await;
    assert_eq!((sub["offset"].as_u64(), sub["recovered"].as_bool()), (Some(15), Some(true)), "{sub}");
    for i in 13..=15 {
        let m = r.recv().await;
        assert_eq!((m["offset"].as_u64(), m["replay"].as_bool()), (Some(i), Some(true)));
    }
    // The `history` frame and the HTTP API on B read the same stream.
    r.send(json!({"type":"history","topic":"hist","limit":3,"after":5,"ref":"h"})).await;
    assert_eq!(offsets(r.recv_type("history").await["messages"].as_array().unwrap()), [6, 7, 8]);
    let url = format!("{}/v1/topics/hist/messages?after=0&limit=100", b.http_url());
    let page: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(offsets(page["messages"].as_array().unwrap()), (1..=15).collect::<Vec<_>>());
    // Live after the replay, across servers.
    assert_eq!(p.publish("hist", json!(16)).await["offset"], 16);
    let live = r.recv().await;
    assert_eq!((live["offset"].as_u64(), live.get("replay")), (Some(16), None), "{live}");

    // A crashed and restarted server, and a brand-new one (its own empty data folder),
    // both see the whole history, continue the offsets and remember the ids.
    drop((p, s, r));
    b.kill().await;
    b.restart().await;
    assert_eq!(a.stop().await, Some(0));
    let c = bus_server(&redis).await;
    for server in [&b, &c] {
        let mut r = server.connect().await;
        r.send(json!({"type":"subscribe","topic":"hist","since":0,"epoch":epoch})).await;
        let sub = r.recv_type("subscribed").await;
        assert_eq!((sub["offset"].as_u64(), sub["recovered"].as_bool()), (Some(16), Some(true)), "{sub}");
        assert_eq!(sub["epoch"].as_str(), Some(epoch.as_str()));
        for i in 1..=16 {
            assert_eq!(r.recv().await["offset"], i);
        }
    }
    let mut p = registered(&b, "historian").await;
    assert_eq!(p.publish("hist", json!(17)).await["offset"], 17, "offsets continue after restarts");
    p.send(json!({"type":"send","topic":"hist","content":3,"id":"h-3"})).await;
    let dup = p.recv_type("ack").await;
    assert_eq!((dup["offset"].as_u64(), dup["duplicate"].as_bool()), (Some(3), Some(true)), "{dup}");
}

#[tokio::test]
async fn a_client_id_is_idempotent_across_servers() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (bus_server(&redis).await, bus_server(&redis).await);
    let mut sub_a = subscribed(&a, "idem").await;
    let mut sub_b = subscribed(&b, "idem").await;
    let mut pa = registered(&a, "pa").await;
    let mut pb = registered(&b, "pb").await;
    pa.send(json!({"type":"send","topic":"idem","content":"once","id":"x1"})).await;
    let first = pa.recv_type("ack").await;
    assert_eq!((first["id"].as_str(), first["offset"].as_u64(), first.get("duplicate")), (Some("x1"), Some(1), None));
    for _ in 0..2 {
        pb.send(json!({"type":"send","topic":"idem","content":"again","id":"x1"})).await;
        let dup = pb.recv_type("ack").await;
        assert_eq!(
            (dup["id"].as_str(), dup["topic"].as_str(), dup["offset"].as_u64(), dup["duplicate"].as_bool()),
            (Some("x1"), Some("idem"), Some(1), Some(true)),
            "{dup}"
        );
        assert_eq!(dup["delivered"], 0);
    }
    assert_eq!(pb.publish("idem", json!("after")).await["offset"], 2);
    for sub in [&mut sub_a, &mut sub_b] {
        let m = sub.recv_type("message").await;
        assert_eq!(
            (m["id"].as_str(), m["content"].as_str(), m["offset"].as_u64()),
            (Some("x1"), Some("once"), Some(1))
        );
        let m = sub.recv_type("message").await;
        assert_eq!((m["content"].as_str(), m["offset"].as_u64()), (Some("after"), Some(2)), "no second x1: {m}");
    }

    // The same ids sent to both servers at once: each is stored once, and both acks agree.
    let reader = collect_messages(sub_a, 30);
    let ids: Vec<String> = (0..30).map(|i| format!("race-{i}")).collect();
    let (acks_a, acks_b) =
        tokio::join!(publish_pipelined(&mut pa, "idem", &ids), publish_pipelined(&mut pb, "idem", &ids));
    let mut stored = Vec::new();
    for id in &ids {
        let (x, y) = (&acks_a[id], &acks_b[id]);
        assert_eq!(x["offset"], y["offset"], "{x} {y}");
        let dups = [x, y].iter().filter(|a| a["duplicate"] == true).count();
        assert_eq!(dups, 1, "exactly one of the two sends of {id} is the duplicate: {x} {y}");
        stored.push((x["offset"].as_u64().unwrap(), id.clone()));
    }
    stored.sort();
    assert_eq!(stored.iter().map(|(o, _)| *o).collect::<Vec<_>>(), (3..=32).collect::<Vec<_>>());
    let (mut sub_a, seen) = reader.await.unwrap();
    assert_eq!(seen, stored, "every raced id is delivered once, at its acked offset");
    assert!(sub_a.try_recv(QUIET).await.is_none());
}

#[tokio::test]
async fn direct_messages_reach_an_agent_on_another_server_and_wait_while_it_is_offline() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (bus_server(&redis).await, bus_server(&redis).await);
    let mut bob = registered(&a, "bob").await;
    let mut bob_on_b = registered(&b, "bob").await;
    let mut alice = registered(&b, "alice").await;
    alice.send(json!({"type":"send","to_agent":"bob","content":"hi","ref":"d1"})).await;
    let ack = alice.recv_type("ack").await;
    assert_eq!(
        (ack["ref"].as_str(), ack["topic"].as_str(), ack["offset"].as_u64()),
        (Some("d1"), Some("@bob"), Some(1))
    );
    for conn in [&mut bob, &mut bob_on_b] {
        let m = conn.recv_type("message").await;
        assert_eq!(
            (m["topic"].as_str(), m["from_agent"].as_str(), m["to_agent"].as_str(), m["content"].as_str()),
            (Some("@bob"), Some("alice"), Some("bob"), Some("hi")),
            "{m}"
        );
        assert_eq!(m["id"], ack["id"]);
    }

    // carol is offline; one message comes through each server.
    let mut dave = registered(&a, "dave").await;
    alice.send(json!({"type":"send","to_agent":"carol","content":"first"})).await;
    assert_eq!(alice.recv_type("ack").await["offset"], 1);
    dave.send(json!({"type":"send","to_agent":"carol","content":"second"})).await;
    assert_eq!(dave.recv_type("ack").await["offset"], 2);
    wait_until_seen(&b, "@carol", 2).await;
    let mut carol = registered(&b, "carol").await;
    for (offset, content, from) in [(1, "first", "alice"), (2, "second", "dave")] {
        let m = carol.recv_type("message").await;
        assert_eq!(
            (m["topic"].as_str(), m["offset"].as_u64(), m["content"].as_str()),
            (Some("@carol"), Some(offset), Some(content)),
            "{m}"
        );
        assert_eq!((m["from_agent"].as_str(), m["replay"].as_bool()), (Some(from), Some(true)));
    }
    assert!(carol.try_recv(QUIET).await.is_none());
    drop(carol);
    // Handed over once: once the inbox position is stored and has reached the other
    // server (the feed is ordered: a later message there proves it), registering again
    // there replays nothing; live messages then arrive there.
    let deadline = Instant::now() + TIMEOUT;
    while redis_command::<Option<u64>>(redis.port, redis::cmd("HGET").arg("agentbus:cursors").arg("carol"))
        .unwrap()
        .is_none_or(|c| c < 2)
    {
        assert!(Instant::now() < deadline, "carol's inbox position was never stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(registered(&b, "marker").await.publish("marker", json!(1)).await["offset"], 1);
    wait_until_seen(&a, "marker", 1).await;
    let mut carol = registered(&a, "carol").await;
    assert!(carol.try_recv(QUIET).await.is_none(), "offline messages are handed over once, bus-wide");
    alice.send(json!({"type":"send","to_agent":"carol","content":"third"})).await;
    let m = carol.recv_type("message").await;
    assert_eq!((m["content"].as_str(), m["offset"].as_u64(), m.get("replay")), (Some("third"), Some(3), None), "{m}");
}

#[tokio::test]
async fn buses_with_different_prefixes_on_one_redis_are_independent() {
    let Some(redis) = Redis::start() else { return };
    let one = bus_server_with_prefix(&redis, "busone").await;
    let one_again = bus_server_with_prefix(&redis, "busone").await;
    // The second bus is configured through the environment.
    let two = TestServer::builder()
        .env("AGENTBUS_REDIS_URL", &redis.url())
        .env("AGENTBUS_REDIS_PREFIX", "bustwo")
        .start()
        .await;
    let mut watch_two = two.connect().await;
    assert_eq!(watch_two.subscribe("shared").await["offset"], 0);
    let mut p1 = registered(&one, "p1").await;
    p1.send(json!({"type":"send","topic":"shared","content":"one-1","id":"same-id"})).await;
    assert_eq!(p1.recv_type("ack").await["offset"], 1);
    for i in 2..=3 {
        assert_eq!(p1.publish("shared", json!(format!("one-{i}"))).await["offset"], i);
    }
    let mut p2 = registered(&two, "p2").await;
    p2.send(json!({"type":"send","topic":"shared","content":"two-1","id":"same-id"})).await;
    let ack = p2.recv_type("ack").await;
    assert_eq!((ack["offset"].as_u64(), ack.get("duplicate")), (Some(1), None), "ids are per bus: {ack}");
    let m = watch_two.recv_type("message").await;
    assert_eq!((m["content"].as_str(), m["offset"].as_u64()), (Some("two-1"), Some(1)), "only bus two's: {m}");
    assert!(watch_two.try_recv(QUIET).await.is_none());

    // History is per bus; the two servers of bus one share theirs.
    let mut h = two.connect().await;
    h.send(json!({"type":"history","topic":"shared","limit":100})).await;
    let contents: Vec<Value> =
        h.recv_type("history").await["messages"].as_array().unwrap().iter().map(|m| m["content"].clone()).collect();
    assert_eq!(contents, [json!("two-1")]);
    let mut h = one_again.connect().await;
    h.send(json!({"type":"history","topic":"shared","limit":100})).await;
    let contents: Vec<Value> =
        h.recv_type("history").await["messages"].as_array().unwrap().iter().map(|m| m["content"].clone()).collect();
    assert_eq!(contents, [json!("one-1"), json!("one-2"), json!("one-3")]);

    // The default prefix is `agentbus`, and every key is under its bus's prefix.
    let default = bus_server(&redis).await;
    let mut p = registered(&default, "p0").await;
    assert_eq!(p.publish("shared", json!("default")).await["offset"], 1);
    let keys = redis.keys();
    let mut by_prefix: BTreeMap<&str, usize> = BTreeMap::new();
    for key in &keys {
        let prefix = ["busone", "bustwo", "agentbus"].into_iter().find(|p| key.starts_with(p));
        let prefix = prefix.unwrap_or_else(|| panic!("key {key:?} is under no bus prefix; keys: {keys:?}"));
        *by_prefix.entry(prefix).or_default() += 1;
    }
    assert_eq!(by_prefix.len(), 3, "each bus wrote keys under its prefix: {keys:?}");
}

#[tokio::test]
async fn an_unreachable_redis_stops_start_up_with_a_message_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = tokio::process::Command::new(agentbus_testkit::agentbus_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--redis", "redis://127.0.0.1:1/", "--data"])
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out =
        tokio::time::timeout(Duration::from_secs(15), out).await.expect("agentbus exits when Redis is unreachable");
    let out = out.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "it gave up within seconds ({:?})", started.elapsed());
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "exit status {:?}; stdout: {stdout}; stderr: {stderr}", out.status);
    assert!(!stdout.contains("agentbus listening on"), "{stdout}");
    assert!(stderr.contains("redis://127.0.0.1:1"), "the error names the Redis URL: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn presence_lists_the_agents_of_every_server() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (bus_server(&redis).await, bus_server(&redis).await);
    let mut alice = registered(&a, "alice").await;
    alice.subscribe("room").await;
    let mut bob = registered(&b, "bob").await;
    // Servers exchange their agents every two seconds: wait (bounded) until B lists alice.
    let deadline = Instant::now() + Duration::from_secs(15);
    let listed = loop {
        bob.send(json!({"type":"presence","topic":"room"})).await;
        let p = bob.recv_type("presence").await;
        let agents: Vec<String> =
            p["agents"].as_array().unwrap().iter().map(|a| a["agent_id"].as_str().unwrap().to_owned()).collect();
        if !agents.is_empty() || Instant::now() > deadline {
            break agents;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(listed, ["alice"], "B lists the agent connected to A, filtered by topic");
    let all: Value = reqwest::get(format!("{}/v1/agents", b.http_url())).await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = all["agents"].as_array().unwrap().iter().map(|a| a["agent_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["alice", "bob"]);
}

#[tokio::test]
async fn messages_published_while_a_server_lost_its_feed_still_reach_its_subscribers() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (bus_server(&redis).await, bus_server(&redis).await);
    let mut sub = subscribed(&a, "steady").await;
    let mut p = registered(&b, "writer").await;
    for i in 1..=5 {
        assert_eq!(p.publish("steady", json!(i)).await["offset"], i);
    }
    // Cut every server's feed (Redis pub/sub drops what it cannot deliver), publish
    // meanwhile, and expect every message, in order, once.
    let killed: u64 = redis_command(redis.port, redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub")).unwrap();
    assert!(killed >= 2, "both servers follow the feed ({killed} killed)");
    for i in 6..=20 {
        assert_eq!(p.publish("steady", json!(i)).await["offset"], i);
    }
    for i in 1..=20 {
        let m = sub.recv_type("message").await;
        assert_eq!((m["offset"].as_u64(), m["content"].as_u64()), (Some(i), Some(i)), "{m}");
    }
    assert!(sub.try_recv(QUIET).await.is_none(), "nothing twice");
    let metrics = reqwest::get(format!("{}/metrics", a.http_url())).await.unwrap().text().await.unwrap();
    let counter = |name: &str| -> u64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(counter("agentbus_feed_connections_total") >= 2, "the feed reconnected:\n{metrics}");
    assert!(counter("agentbus_remote_messages_total") >= 1, "{metrics}");
}

#[tokio::test]
async fn while_redis_is_down_sends_are_refused_as_unavailable_and_then_work_again() {
    let Some(mut redis) = Redis::start() else { return };
    let server = bus_server(&redis).await;
    let mut sub = subscribed(&server, "ops").await;
    let mut p = registered(&server, "operator").await;
    assert_eq!(p.publish("ops", json!("before")).await["offset"], 1);
    assert_eq!(sub.recv_type("message").await["content"], "before");

    redis.shut_down();
    p.send(json!({"type":"send","topic":"ops","content":"lost?","ref":7})).await;
    let refused = p.recv_until(|f| f["type"] == "error" || f["type"] == "ack").await;
    assert_eq!((refused["type"].as_str(), refused["code"].as_str()), (Some("error"), Some("unavailable")), "{refused}");
    assert_eq!(refused["ref"], 7);
    let health = reqwest::get(format!("{}/readyz", server.http_url())).await.unwrap();
    assert!(!health.status().is_success(), "not ready without Redis");

    redis.start_again();
    // The writer retries with a fresh connection: the next send is stored after the first.
    let deadline = Instant::now() + Duration::from_secs(15);
    let ack = loop {
        p.send(json!({"type":"send","topic":"ops","content":"after"})).await;
        let f = p.recv_until(|f| f["type"] == "error" || f["type"] == "ack").await;
        if f["type"] == "ack" || Instant::now() > deadline {
            break f;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((ack["type"].as_str(), ack["offset"].as_u64()), (Some("ack"), Some(2)), "{ack}");
    let m = sub.recv_type("message").await;
    assert_eq!((m["offset"].as_u64(), m["content"].as_str()), (Some(2), Some("after")), "{m}");
}

#[tokio::test]
async fn a_rust_client_fails_over_to_another_server_of_the_bus_and_misses_nothing() {
    let Some(redis) = Redis::start() else { return };
    let (mut a, b) = (bus_server(&redis).await, bus_server(&redis).await);
    let dir = tempfile::tempdir().unwrap();
    let client = agentbus::Client::builder(a.ws_url())
        .failover(b.ws_url())
        .agent_id("roamer")
        .board_path(dir.path().join("board.db"))
        .transports([agentbus::Transport::Websocket])
        .connect()
        .await
        .unwrap();
    let mut sub = client.subscribe("handoff").await.unwrap();
    let mut p = registered(&b, "source").await;
    for i in 1..=3 {
        assert_eq!(p.publish("handoff", json!(i)).await["offset"], i);
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = tokio::time::timeout(TIMEOUT, futures_util::StreamExt::next(&mut sub)).await.unwrap().unwrap();
        seen.push(m.offset);
    }
    // The client's server goes away; the bus goes on without it.
    a.kill().await;
    for i in 4..=8 {
        assert_eq!(p.publish("handoff", json!(i)).await["offset"], i);
    }
    while seen.len() < 8 {
        let m = tokio::time::timeout(TIMEOUT, futures_util::StreamExt::next(&mut sub)).await.unwrap().unwrap();
        seen.push(m.offset);
    }
    assert_eq!(seen, (1..=8).collect::<Vec<u64>>(), "every message once, in order, across the move");
    // It now sends through the other server too.
    let ack = client.send("handoff", json!("from the roamer")).await.unwrap();
    assert_eq!(ack.offset, 9);
}

#[tokio::test]
async fn cli_commands_take_several_servers_of_a_bus_and_use_one_that_answers() {
    let Some(redis) = Redis::start() else { return };
    let b = bus_server(&redis).await;
    let dir = tempfile::tempdir().unwrap();
    let closed = free_port();
    let urls = format!("ws://127.0.0.1:{closed}, {}", b.ws_url());
    let board = dir.path().join("board.db");
    let out = tokio::process::Command::new(agentbus_testkit::agentbus_bin())
        .args(["send", "--url", &urls, "--board"])
        .arg(&board)
        .args(["notes", "via the second server"])
        .env_remove("AGENTBUS_URL")
        .env_remove("AGENTBUS_BOARD")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Using 'websocket' transport"), "{stderr}");
    let page: Value =
        reqwest::get(format!("{}/v1/topics/notes/messages?after=0", b.http_url())).await.unwrap().json().await.unwrap();
    assert_eq!(page["messages"][0]["content"], "via the second server", "{page}");
}

/// Runs `agentbus bench ARGS --duration 1 --json` against every server of `urls`.
async fn bench_bus(urls: &str, args: &[&str]) -> Value {
    let out = tokio::process::Command::new(agentbus_testkit::agentbus_bin())
        .arg("bench")
        .args(args)
        .args(["--duration", "1", "--json", "--url", urls])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench {args:?} failed: {stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["url"].as_str(), Some(urls), "{report}");
    report["results"].clone()
}

#[tokio::test]
async fn the_bench_spreads_its_connections_over_the_servers_of_a_bus_and_loses_nothing() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (bus_server(&redis).await, bus_server(&redis).await);
    let urls = format!("{},{}", a.ws_url(), b.ws_url());
    for args in [&["pairs", "--pairs", "4"][..], &["fanout", "--subscribers", "6"]] {
        let r = bench_bus(&urls, args).await;
        assert!(r["acked"].as_u64().unwrap() > 0, "{args:?}: {r}");
        assert_eq!((r["loss"].as_u64(), r["offset_gaps"].as_u64()), (Some(0), Some(0)), "{args:?}: {r}");
    }
    let r = bench_bus(&urls, &["durable", "--replay", "500"]).await;
    assert_eq!((r["replayed"].as_u64(), r["replay_missing"].as_u64()), (Some(500), Some(0)), "{r}");
    let r = bench_bus(&urls, &["request", "--requesters", "3"]).await;
    assert_eq!(r["unanswered"].as_u64(), Some(0), "{r}");
    let metrics = reqwest::get(format!("{}/metrics", a.http_url())).await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("agentbus_remote_messages_total 0\n"), "messages crossed between servers");
}

#[tokio::test]
async fn the_redis_section_of_the_configuration_file_and_the_flags_name_the_same_bus() {
    let Some(redis) = Redis::start() else { return };
    let from_file = TestServer::builder()
        .config(&format!("[redis]\nurl = \"{}\"\nprefix = \"filebus\"\n", redis.url()))
        .start()
        .await;
    // The other server names the same bus with flags.
    let from_flags = bus_server_with_prefix(&redis, "filebus").await;
    let mut p = registered(&from_file, "configured").await;
    assert_eq!(p.publish("cfg", json!("one bus")).await["offset"], 1);
    let page: Value = reqwest::get(format!("{}/v1/topics/cfg/messages?after=0", from_flags.http_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["messages"][0]["content"], "one bus", "{page}");
    assert!(redis.keys().iter().any(|k| k.starts_with("filebus:")), "{:?}", redis.keys());
}
