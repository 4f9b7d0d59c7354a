//! Authentication, permissions, TLS, limits and hostile input against the real server.

use std::sync::Arc;
use std::time::Duration;

use agentbus_testkit::{TIMEOUT, TestServer, WsClient};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const AUTH: &str = r#"
[auth]
required = true

[[auth.agents]]
id = "coder"
key = "coder-key"
publish = ["code.*", "@*"]
subscribe = ["code.*"]

[[auth.agents]]
id = "ops"
key_sha256 = "KEY_SHA"
publish = ["ops"]
subscribe = ["*"]
"#;

async fn secured() -> TestServer {
    let hash = agentbus_server::auth::key_sha256("ops-key");
    TestServer::builder().ephemeral().config(&AUTH.replace("KEY_SHA", &hash)).start().await
}

#[tokio::test]
async fn a_missing_or_wrong_key_gets_unauthorized_and_no_access() {
    let server = secured().await;
    let mut c = server.connect().await;
    c.send(json!({"type":"subscribe","topic":"code.x","ref":1})).await;
    assert_eq!(c.recv().await["code"], "unauthorized");
    c.send(json!({"type":"send","topic":"code.x","content":"sneaky","from_agent":"coder"})).await;
    assert_eq!(c.recv().await["code"], "unauthorized");
    c.send(json!({"type":"register","agent_id":"coder"})).await;
    assert_eq!(c.recv().await["code"], "unauthorized");
    c.send(json!({"type":"register","agent_id":"coder","token":"guess"})).await;
    assert_eq!(c.recv().await["code"], "unauthorized");
    c.send(json!({"type":"register","agent_id":"ops","token":"coder-key"})).await;
    assert_eq!(c.recv().await["code"], "forbidden", "a key speaks for its own agent only");
    c.send(json!({"type":"ping","ref":"p"})).await;
    assert_eq!(c.recv().await["type"], "pong");
    let history: Value =
        reqwest::get(format!("{}/v1/topics/code.x/messages", server.http_url())).await.unwrap().json().await.unwrap();
    assert_eq!(history["error"]["code"], "unauthorized");
}

#[tokio::test]
async fn permissions_are_checked_on_every_frame() {
    let server = secured().await;
    let mut coder = server.connect().await;
    coder.send(json!({"type":"register","agent_id":"coder","token":"coder-key"})).await;
    coder.recv_type("registered").await;
    let mut ops = server.connect().await;
    ops.send(json!({"type":"register","agent_id":"ops","token":"ops-key"})).await;
    ops.recv_type("registered").await;
    ops.subscribe("code.review").await;

    assert_eq!(coder.publish("code.review", json!("ok")).await["type"], "ack");
    assert_eq!(ops.recv_type("message").await["from_agent"], "coder");
    let denied = coder.publish("ops", json!("not mine")).await;
    assert_eq!(denied["code"], "forbidden");
    coder.send(json!({"type":"send","topic":"code.review","content":"spoof","from_agent":"ops","ref":"s"})).await;
    assert_eq!(coder.recv_until(|v| v["ref"] == "s").await["code"], "forbidden");
    coder.send(json!({"type":"subscribe","topic":"ops","ref":"o"})).await;
    assert_eq!(coder.recv_until(|v| v["ref"] == "o").await["code"], "forbidden");
    coder.send(json!({"type":"history","topic":"ops","ref":"h"})).await;
    assert_eq!(coder.recv_until(|v| v["ref"] == "h").await["code"], "forbidden");
    // Direct messages: coder may write to any inbox; everyone reads their own.
    coder.send(json!({"type":"send","to_agent":"ops","content":"psst","ref":"d"})).await;
    assert_eq!(coder.recv_until(|v| v["ref"] == "d").await["type"], "ack");
    assert_eq!(ops.recv_type("message").await["content"], "psst");
    ops.send(json!({"type":"send","to_agent":"coder","content":"no","ref":"x"})).await;
    assert_eq!(ops.recv_until(|v| v["ref"] == "x").await["code"], "forbidden");
    // Search only returns what the caller may read.
    ops.publish("ops", json!("secret deploy plan")).await;
    ops.send(json!({"type":"search","query":"deploy","ref":"q"})).await;
    assert_eq!(ops.recv_type("search_results").await["type"], "search_results");
    coder.send(json!({"type":"search","query":"deploy plan","ref":"cq"})).await;
    let hits = coder.recv_type("search_results").await;
    assert!(hits["hits"].as_array().unwrap().iter().all(|h| h["message"]["topic"] != "ops"), "{hits}");
}

#[tokio::test]
async fn http_calls_need_the_key_and_respect_permissions() {
    let server = secured().await;
    let http = reqwest::Client::new();
    let base = server.http_url();
    let url = format!("{base}/v1/topics/code.a/messages");
    let res = http.post(&url).json(&json!({"content":"x"})).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.json::<Value>().await.unwrap()["error"]["code"], "unauthorized");
    let res = http.post(&url).bearer_auth("wrong").json(&json!({"content":"x"})).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let ack: Value = http
        .post(&url)
        .bearer_auth("coder-key")
        .json(&json!({"content":"x"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ack["offset"], 1);
    let res = http
        .post(format!("{base}/v1/topics/ops/messages"))
        .bearer_auth("coder-key")
        .json(&json!({"content":1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res =
        http.post(&url).bearer_auth("coder-key").json(&json!({"content":1,"from_agent":"ops"})).send().await.unwrap();
    assert_eq!(res.status(), 403);
    let page: Value = http.get(format!("{url}?token=coder-key")).send().await.unwrap().json().await.unwrap();
    assert_eq!(page["messages"][0]["from_agent"], "coder", "from_agent defaults to the key's agent");
    let res = http.get(format!("{base}/v1/topics/ops/messages?token=coder-key")).send().await.unwrap();
    assert_eq!(res.status(), 403);
    let topics: Value =
        http.get(format!("{base}/v1/topics")).bearer_auth("coder-key").send().await.unwrap().json().await.unwrap();
    assert!(topics["topics"].as_array().unwrap().iter().all(|t| t["topic"].as_str().unwrap().starts_with("code.")));
    assert_eq!(http.get(format!("{base}/v1/agents")).send().await.unwrap().status(), 401);
    assert_eq!(http.get(format!("{base}/v1/topics/code.a/events")).send().await.unwrap().status(), 401);
    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{base}/ui")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_key_on_the_upgrade_request_authenticates_the_connection() {
    let server = secured().await;
    let mut req = server.ws_url().into_client_request().unwrap();
    req.headers_mut().insert("Authorization", "Bearer coder-key".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::Text(json!({"type":"register","agent_id":"coder"}).to_string().into())).await.unwrap();
    let reply = rx.next().await.unwrap().unwrap();
    assert!(reply.to_text().unwrap().contains("registered"), "{reply}");
    let mut bad = server.ws_url().into_client_request().unwrap();
    bad.headers_mut().insert("Authorization", "Bearer nope".parse().unwrap());
    match tokio_tungstenite::connect_async(bad).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let ok = WsClient::connect(&format!("{}/?token=ops-key", server.ws_url())).await;
    drop(ok);
}

#[tokio::test]
async fn agentbus_key_prints_a_key_the_server_accepts_by_its_hash() {
    let out = std::process::Command::new(agentbus_testkit::agentbus_bin()).arg("key").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim().to_owned();
    let (key, hash) = (field("key:"), field("key_sha256:"));
    assert_eq!(key.len(), 64);
    assert_eq!(hash, agentbus_server::auth::key_sha256(&key));
    let config = format!("[auth]\nrequired = true\n[[auth.agents]]\nid = \"k\"\nkey_sha256 = \"{hash}\"\n");
    let server = TestServer::builder().ephemeral().config(&config).start().await;
    let mut c = server.connect().await;
    c.send(json!({"type":"register","agent_id":"k","token":key})).await;
    assert_eq!(c.recv().await["type"], "registered");
}

#[tokio::test]
async fn rate_limited_sends_are_refused_and_nothing_else_happens() {
    let server = TestServer::builder().ephemeral().config("[limits]\nmessages_per_second = 5\n").start().await;
    let mut c = server.connect().await;
    c.register("chatty").await;
    for i in 0..30 {
        c.send(json!({"type":"send","topic":"t","content":i,"ref":i})).await;
    }
    let (mut acked, mut limited) = (0, 0);
    for _ in 0..30 {
        let r = c.recv_until(|v| v["type"] == "ack" || v["type"] == "error").await;
        if r["type"] == "ack" {
            acked += 1;
        } else {
            assert_eq!(r["code"], "rate_limited");
            limited += 1;
        }
    }
    assert!(acked >= 5 && limited >= 10, "acked {acked}, limited {limited}");
    c.send(json!({"type":"ping","ref":"still"})).await;
    assert_eq!(c.recv_type("pong").await["ref"], "still");
}

#[tokio::test]
async fn connections_past_max_connections_are_refused() {
    let server = TestServer::builder().ephemeral().config("[limits]\nmax_connections = 3\n").start().await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = server.connect().await;
        c.send(json!({"type":"ping"})).await;
        c.recv_type("pong").await;
        held.push(c);
    }
    let fourth = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(server.ws_url())).await.unwrap();
    assert!(fourth.is_err(), "the fourth connection is dropped");
    drop(held.pop());
    // Room again once one closes (the server notices the close asynchronously).
    let mut ok = false;
    for _ in 0..50 {
        if tokio_tungstenite::connect_async(server.ws_url()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok);
}

fn certificate(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, rustls::pki_types::CertificateDer<'static>) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (cert, key, generated.cert.der().clone())
}

async fn tls_connect(
    addr: &str,
    root: rustls::pki_types::CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap()
}

#[tokio::test]
async fn tls_serves_wss_and_https_and_refuses_plain_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path());
    let config = format!("[tls]\ncert = {:?}\nkey = {:?}\n", cert.display().to_string(), key.display().to_string());
    let server = TestServer::builder().ephemeral().config(&config).start().await;

    let tls = tls_connect(server.addr(), der.clone()).await;
    let url = format!("wss://localhost:{}/", server.addr().rsplit(':').next().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    ws.send(Message::Text(json!({"type":"ping","ref":"tls"}).to_string().into())).await.unwrap();
    let pong = ws.next().await.unwrap().unwrap();
    assert_eq!(serde_json::from_str::<Value>(pong.to_text().unwrap()).unwrap(), json!({"type":"pong","ref":"tls"}));

    let mut https = tls_connect(server.addr(), der).await;
    https.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut response = String::new();
    https.read_to_string(&mut response).await.unwrap_or_default();
    assert!(response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"), "{response}");

    assert!(tokio_tungstenite::connect_async(server.ws_url()).await.is_err(), "no ws:// on a TLS port");
    assert!(reqwest::get(format!("{}/healthz", server.http_url())).await.is_err(), "no http:// on a TLS port");
}

#[tokio::test]
async fn hostile_input_never_crashes_or_wedges_the_server() {
    let server = TestServer::builder().ephemeral().config("[limits]\nmax_message_bytes = 65536\n").start().await;
    let mut rng = fastrand::Rng::with_seed(7);
    // Random bytes instead of HTTP, and half a request, then gone.
    for i in 0..50 {
        let mut tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        let junk: Vec<u8> = (0..rng.usize(1..2048)).map(|_| rng.u8(..)).collect();
        let _ = tcp.write_all(if i % 2 == 0 { &junk } else { b"GET / HTTP/1.1\r\nUpgrade: websock" }).await;
    }
    // Over WebSocket: random text, deep nesting, huge numbers and strings, odd types.
    let mut c = server.connect().await;
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let nested_obj =
        format!("{{\"type\":\"send\",\"topic\":\"t\",\"content\":{}1{}}}", "{\"a\":".repeat(3000), "}".repeat(3000));
    let mut frames = vec![
        deep,
        nested_obj,
        r#"{"type":"subscribe","topic":"t","since":1e400}"#.to_owned(),
        r#"{"type":"subscribe","topic":"t","since":18446744073709551616}"#.to_owned(),
        format!(r#"{{"type":"send","topic":"t","from_agent":"x","content":"{}"}}"#, "x".repeat(60_000)),
        r#"{"type":"register","agent_id":"a","capabilities":[[],{}]}"#.to_owned(),
        "\u{feff}{}".to_owned(),
        "{\"type\":\"ping\",\"type\":\"ping\"}".to_owned(),
    ];
    for _ in 0..200 {
        let len = rng.usize(0..300);
        frames.push((0..len).map(|_| char::from_u32(rng.u32(1..0x2FFF)).unwrap_or('x')).collect());
    }
    for f in &frames {
        c.send_text(f).await;
    }
    let mut replies = 0;
    while replies < frames.len() {
        let v = c.recv().await;
        assert!(matches!(v["type"].as_str(), Some("error" | "ack" | "pong" | "message")), "{v}");
        if v["type"] != "message" {
            replies += 1;
        }
    }
    // A flood of connections that open and vanish.
    let mut floods = Vec::new();
    for _ in 0..300 {
        floods.push(tokio::net::TcpStream::connect(server.addr()));
    }
    for f in floods {
        drop(f.await);
    }
    // A WebSocket frame header promising more than ever comes, then a disconnect.
    let mut partial = server.connect().await;
    if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = partial.inner().get_mut() {
        // FIN + text, masked, 16-bit length 60000, mask key, then only 10 bytes.
        tcp.write_all(&[0x81, 0xFE, 0xEA, 0x60, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).await.unwrap();
    }
    drop(partial);
    // Still healthy: a fresh client is served at once.
    let mut fresh = server.connect().await;
    fresh.send(json!({"type":"ping","ref":"after"})).await;
    assert_eq!(fresh.recv().await, json!({"type":"pong","ref":"after"}));
    assert_eq!(reqwest::get(format!("{}/healthz", server.http_url())).await.unwrap().status(), 200);
    assert!(!server.log().contains("panicked"));
}

#[tokio::test]
async fn the_client_speaks_wss_to_a_tls_server_it_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = certificate(dir.path());
    let config = format!("[tls]\ncert = {:?}\nkey = {:?}\n", cert.display().to_string(), key.display().to_string());
    let server = TestServer::builder().ephemeral().config(&config).start().await;
    let url = format!("wss://localhost:{}", server.addr().rsplit(':').next().unwrap());
    let board = dir.path().join("board.db");
    let run = |args: Vec<String>| {
        let (cert, board) = (cert.clone(), board.clone());
        async move {
            let out = tokio::process::Command::new(agentbus_testkit::agentbus_bin())
                .args(&args)
                .arg("--board")
                .arg(&board)
                .env("SSL_CERT_FILE", &cert)
                .output()
                .await
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (ok, out, err) =
        run(vec!["send".into(), "tls-topic".into(), "over tls".into(), "--url".into(), url.clone()]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("websocket"), "{out}");
    let (ok, out, err) = run(vec!["history".into(), "tls-topic".into(), "--url".into(), url]).await;
    assert!(ok && out.contains("over tls"), "{out}{err}");
}

#[tokio::test]
async fn a_ping_flood_gets_one_pong_per_read_and_the_connection_keeps_working() {
    let server = TestServer::builder().ephemeral().start().await;
    let mut c = server.connect().await;
    const PINGS: usize = 5000;
    // Masked pings with a 1-byte payload (mask 0: the payload is sent as is), in one write.
    let mut flood = Vec::with_capacity(PINGS * 7);
    for i in 0..PINGS {
        flood.extend_from_slice(&[0x89, 0x81, 0, 0, 0, 0, (i % 256) as u8]);
    }
    if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = c.inner().get_mut() {
        tcp.write_all(&flood).await.unwrap();
    }
    c.send(json!({"type":"ping","ref":"after-flood"})).await;
    let (mut pongs, mut last) = (0, None);
    loop {
        let msg = tokio::time::timeout(TIMEOUT, c.inner().next()).await.expect("a reply").expect("open").unwrap();
        match msg {
            Message::Pong(payload) => {
                assert_eq!(payload.len(), 1);
                last = Some(payload[0]);
                pongs += 1;
            }
            Message::Text(t) => {
                assert_eq!(serde_json::from_str::<Value>(&t).unwrap(), json!({"type":"pong","ref":"after-flood"}));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((1..PINGS / 10).contains(&pongs), "{pongs} pongs for {PINGS} pings");
    // The last ping of the flood is answered, with its own payload.
    assert_eq!(last, Some(((PINGS - 1) % 256) as u8));
}

#[tokio::test]
async fn a_slow_handshake_and_a_silent_connection_are_closed() {
    let server = TestServer::builder()
        .ephemeral()
        .config("[limits]\nhandshake_timeout_secs = 1\nping_interval_secs = 1\n")
        .start()
        .await;
    // Half a request head, then nothing: the server hangs up after the handshake timeout.
    let mut slow = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server closed the half-open request");
    // A WebSocket client that answers nothing (not even pings) is closed as idle: at the
    // first server-wide ping tick after three quiet intervals, so within four.
    let mut quiet = server.connect().await;
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(quiet.closed().await, Some(1001));
}
