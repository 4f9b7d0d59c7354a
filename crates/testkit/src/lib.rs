//! Test helpers: the real `agentbus` server as a child process on `127.0.0.1:0` with a
//! temporary data folder, which tests can stop, restart on the same port and data, or
//! kill with SIGKILL; and a small JSON WebSocket client.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for anything (a reply, a start-up) before failing.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The `agentbus` binary: `$AGENTBUS_BIN`, else next to the running test's folder
/// (`target/<profile>/agentbus`).
pub fn agentbus_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AGENTBUS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join(format!("agentbus{}", std::env::consts::EXE_SUFFIX))
}

/// How to start a [`TestServer`].
#[derive(Debug, Clone, Default)]
pub struct Builder {
    ephemeral: bool,
    config: Option<String>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    data: Option<PathBuf>,
}

impl Builder {
    /// Memory store instead of SQLite.
    pub fn ephemeral(mut self) -> Self {
        self.ephemeral = true;
        self
    }

    /// A TOML configuration file with this content.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_owned());
        self
    }

    /// An extra command-line argument for `agentbus serve`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// An environment variable for the server process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Use this data folder instead of a fresh temporary one.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data = Some(dir.to_owned());
        self
    }

    /// Starts the server and waits until it listens.
    pub async fn start(self) -> TestServer {
        let temp = tempfile::tempdir().expect("temp dir");
        let data = self.data.clone().unwrap_or_else(|| temp.path().join("data"));
        let mut server = TestServer { builder: self, temp, data, child: None, addr: String::new() };
        server.spawn("127.0.0.1:0").await;
        server
    }
}

/// A running `agentbus serve` child process.
pub struct TestServer {
    builder: Builder,
    temp: tempfile::TempDir,
    data: PathBuf,
    child: Option<Child>,
    addr: String,
}

impl TestServer {
    /// Starts a server with the SQLite store in a temporary folder.
    pub async fn start() -> Self {
        Builder::default().start().await
    }

    /// A builder for other settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    async fn spawn(&mut self, listen: &str) {
        let mut cmd = Command::new(agentbus_bin());
        cmd.arg("serve").arg("--listen").arg(listen).arg("--log-level").arg("debug");
        cmd.arg("--data").arg(&self.data);
        if self.builder.ephemeral {
            cmd.arg("--ephemeral");
        }
        if let Some(toml) = &self.builder.config {
            let path = self.temp.path().join("agentbus.toml");
            std::fs::write(&path, toml).expect("write config");
            cmd.arg("--config").arg(path);
        }
        cmd.args(&self.builder.args);
        for (k, v) in &self.builder.envs {
            cmd.env(k, v);
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("open server log");
        cmd.stdout(Stdio::piped()).stderr(Stdio::from(log)).stdin(Stdio::null()).kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn agentbus (is it built?)");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix("agentbus listening on ") {
                    return Some(addr.trim().to_owned());
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(addr) = addr else {
            let status = child.try_wait().ok().flatten();
            panic!("server did not start ({status:?}); log:\n{}", self.log());
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.addr = addr;
        self.child = Some(child);
    }

    /// `host:port` the server listens on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `ws://host:port`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `http://host:port`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The data folder.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Path of the server's log (its stderr).
    pub fn log_path(&self) -> PathBuf {
        self.temp.path().join("server.log")
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code.
    pub async fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        let status = tokio::time::timeout(TIMEOUT, child.wait()).await.expect("server exits after SIGTERM").ok()?;
        status.code()
    }

    /// Kills the server with SIGKILL (a crash) and reaps it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Starts the server again on the same port and data folder (after stop or kill).
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop().await;
        }
        let listen = self.addr.clone();
        for _ in 0..50 {
            // The port may linger for a moment after the old process is gone.
            if std::net::TcpListener::bind(&listen).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.spawn(&listen).await;
    }

    /// A WebSocket client connected to the bus.
    pub async fn connect(&self) -> WsClient {
        WsClient::connect(&self.ws_url()).await
    }
}

/// A WebSocket client that speaks JSON frames, with timeouts on every wait.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect");
        Self { ws }
    }

    /// Sends a JSON value as a text frame.
    pub async fn send(&mut self, frame: Value) {
        self.ws.send(Message::Text(frame.to_string().into())).await.expect("send");
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.to_owned().into())).await.expect("send");
    }

    /// Sends any WebSocket message.
    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send");
    }

    /// The next message of any kind, or `None` when the connection ended.
    pub async fn next_raw(&mut self) -> Option<Message> {
        tokio::time::timeout(TIMEOUT, self.ws.next()).await.expect("timed out waiting for a frame")?.ok()
    }

    /// The next JSON text frame (control frames are skipped).
    pub async fn recv(&mut self) -> Value {
        loop {
            match self.next_raw().await {
                Some(Message::Text(t)) => return serde_json::from_str(&t).expect("server sent invalid JSON"),
                Some(Message::Close(c)) => panic!("connection closed: {c:?}"),
                Some(_) => continue,
                None => panic!("connection ended"),
            }
        }
    }

    /// Frames until one satisfies `pred`, which is returned (earlier ones are dropped).
    pub async fn recv_until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Value {
        loop {
            let v = self.recv().await;
            if pred(&v) {
                return v;
            }
        }
    }

    /// The next frame of type `kind`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        self.recv_until(|v| v["type"] == kind).await
    }

    /// Whether a text frame arrives within `wait` (for checking that nothing comes).
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        match tokio::time::timeout(wait, self.ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(&t).ok(),
            _ => None,
        }
    }

    /// Waits for the server to close; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.next_raw().await {
                Some(Message::Close(c)) => return c.map(|c| u16::from(c.code)),
                Some(_) => continue,
                None => return None,
            }
        }
    }

    /// Registers as `agent` and returns the `registered` frame.
    pub async fn register(&mut self, agent: &str) -> Value {
        self.send(serde_json::json!({"type": "register", "agent_id": agent})).await;
        self.recv_type("registered").await
    }

    /// Subscribes to `topic` and returns the `subscribed` frame.
    pub async fn subscribe(&mut self, topic: &str) -> Value {
        self.send(serde_json::json!({"type": "subscribe", "topic": topic, "history": 0})).await;
        self.recv_type("subscribed").await
    }

    /// Publishes `content` to `topic` and returns the ack.
    pub async fn publish(&mut self, topic: &str, content: Value) -> Value {
        let r = format!("p{}", rand_ref());
        self.send(serde_json::json!({"type": "send", "topic": topic, "content": content, "ref": r})).await;
        self.recv_until(|v| v["ref"] == r.as_str()).await
    }

    /// The underlying stream.
    pub fn inner(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.ws
    }
}

fn rand_ref() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}
