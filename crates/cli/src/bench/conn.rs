//! Connections of the load generator: the target URL (loopback only unless allowed),
//! opening a WebSocket from an optional source address, and the register/subscribe
//! handshakes every scenario starts with.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::frames;

/// A bench connection.
pub type Ws = WebSocketStream<TcpStream>;

/// Read buffer of a busy bench connection: small enough to stay in cache, big enough
/// to take a batch of frames per read.
pub const READ_BUFFER: usize = 16 * 1024;

/// Read buffer of an idle connection (the idle scenario holds thousands of them).
pub const IDLE_READ_BUFFER: usize = 4 * 1024;

/// How long one connect, register or subscribe may take before the bench gives up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the bench sends its traffic.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given, used for the WebSocket handshake.
    pub url: String,
    /// The resolved address of the server.
    pub addr: SocketAddr,
}

/// The parts of a `ws://host:port/path` URL.
#[derive(Debug, PartialEq, Eq)]
struct UrlParts {
    host: String,
    port: u16,
}

fn split_url(url: &str) -> anyhow::Result<UrlParts> {
    let Some(rest) = url.strip_prefix("ws://") else {
        if url.starts_with("wss://") {
            bail!("the bench speaks plain ws:// only (measure TLS behind a proxy separately)");
        }
        bail!("the URL must start with ws:// (got {url:?})");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        bail!("credentials in the URL are not supported");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').context("unterminated [ in the URL's host")?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        bail!("the URL has no host");
    }
    let port = match port {
        Some(p) => p.parse::<u16>().with_context(|| format!("invalid port {p:?} in the URL"))?,
        None => 80,
    };
    Ok(UrlParts { host: host.to_owned(), port })
}

impl Target {
    /// Parses and resolves `url`. Hosts other than `localhost` and loopback addresses
    /// are refused unless `allow_remote`: a load generator must not hit a machine by
    /// accident.
    pub async fn resolve(url: &str, allow_remote: bool) -> anyhow::Result<Self> {
        let parts = split_url(url)?;
        let addrs: Vec<SocketAddr> = match parts.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, parts.port)],
            Err(_) => {
                if !allow_remote && !parts.host.eq_ignore_ascii_case("localhost") {
                    bail!("refusing to load {}: not a loopback address (pass --allow-remote to do it)", parts.host);
                }
                tokio::net::lookup_host((parts.host.as_str(), parts.port))
                    .await
                    .with_context(|| format!("cannot resolve {}", parts.host))?
                    .collect()
            }
        };
        if !allow_remote && let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            bail!("refusing to load {remote}: not a loopback address (pass --allow-remote to do it)");
        }
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or_else(|| addrs.first())
            .copied()
            .with_context(|| format!("{} resolves to no address", parts.host))?;
        Ok(Self { url: url.to_owned(), addr })
    }
}

/// The WebSocket settings of a bench connection.
fn ws_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(16 * 1024 * 1024)
}

/// Opens a WebSocket to `target`, from `source` when given (to use more source
/// addresses than one, each with its own ~28k ephemeral ports).
pub async fn connect(target: &Target, source: Option<IpAddr>, read_buffer: usize) -> anyhow::Result<Ws> {
    let open = async {
        let socket = if target.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .context("cannot create a socket")?;
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("cannot bind to source address {ip}"))?;
        }
        let stream = socket.connect(target.addr).await.with_context(|| format!("cannot connect to {}", target.addr))?;
        stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(target.url.as_str(), stream, Some(ws_config(read_buffer)))
                .await
                .context("WebSocket handshake failed")?;
        anyhow::Ok(ws)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, open).await.context("connecting timed out")?
}

/// Sends `frame` and waits for the first reply whose text starts with `prefix`,
/// skipping anything else (inbox replays, pings). An `error` frame is an error.
async fn exchange(ws: &mut Ws, frame: String, prefix: &str) -> anyhow::Result<String> {
    ws.send(Message::Text(frame.into())).await.context("cannot send")?;
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .with_context(|| format!("no {prefix}… reply within {HANDSHAKE_TIMEOUT:?}"))?;
        match msg {
            Some(Ok(Message::Text(text))) if text.starts_with(prefix) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Text(text))) if text.starts_with(frames::ERROR_PREFIX) => {
                bail!("the server refused: {}", text.as_str())
            }
            Some(Ok(Message::Close(close))) => bail!("the server closed the connection: {close:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("connection failed"),
            None => bail!("the server closed the connection"),
        }
    }
}

/// Registers the connection as `agent`.
pub async fn register(ws: &mut Ws, agent: &str) -> anyhow::Result<()> {
    exchange(ws, frames::register(agent), frames::REGISTERED_PREFIX).await.map(drop)
}

/// Subscribes to `topic` without history; returns the topic's offset at that moment.
pub async fn subscribe(ws: &mut Ws, topic: &str) -> anyhow::Result<u64> {
    let reply = exchange(ws, frames::subscribe(topic, None), frames::SUBSCRIBED_PREFIX).await?;
    frames::u64_after_first(&reply, frames::OFFSET_KEY).context("`subscribed` reply without an offset")
}

/// Connects, registers as `agent` and, with `topic`, subscribes to it.
pub async fn open(target: &Target, agent: &str, topic: Option<&str>) -> anyhow::Result<Ws> {
    let mut ws = connect(target, None, READ_BUFFER).await?;
    register(&mut ws, agent).await?;
    if let Some(topic) = topic {
        subscribe(&mut ws, topic).await?;
    }
    Ok(ws)
}

/// Closes politely, without waiting long: the server learns the connection is gone
/// either way.
pub async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_port() {
        let p = split_url("ws://127.0.0.1:3900").expect("plain");
        assert_eq!(p, UrlParts { host: "127.0.0.1".into(), port: 3900 });
        let p = split_url("ws://localhost:3030/x?y").expect("path");
        assert_eq!(p, UrlParts { host: "localhost".into(), port: 3030 });
        let p = split_url("ws://[::1]:4000/").expect("v6");
        assert_eq!(p, UrlParts { host: "::1".into(), port: 4000 });
        assert_eq!(split_url("ws://h").expect("no port").port, 80);
        assert!(split_url("http://127.0.0.1:1").is_err());
        assert!(split_url("wss://127.0.0.1:1").is_err());
        assert!(split_url("ws://:1").is_err());
        assert!(split_url("ws://h:x").is_err());
    }

    #[tokio::test]
    async fn only_loopback_is_loaded_unless_allowed() {
        assert!(Target::resolve("ws://127.0.0.1:3030", false).await.is_ok());
        assert!(Target::resolve("ws://127.0.0.9:3030", false).await.is_ok());
        assert!(Target::resolve("ws://[::1]:3030", false).await.is_ok());
        assert!(Target::resolve("ws://10.0.0.1:3030", false).await.is_err());
        assert!(Target::resolve("ws://example.invalid:3030", false).await.is_err());
        assert!(Target::resolve("ws://10.0.0.1:3030", true).await.is_ok());
    }
}
