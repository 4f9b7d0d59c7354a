//! The HTTP tier: the same server over plain HTTP, for when WebSocket upgrades are
//! refused or blocked on the way.
//!
//! - Publishing: one poster task sends `POST /v1/topics/{topic}/messages` one at a time,
//!   in queue order (so a topic keeps the order of the sends), and reports each answer
//!   to the connection task over the internal channel.
//! - Receiving: one Server-Sent Events stream per topic, `GET /v1/topics/{topic}/events`
//!   with `since` (the smallest offset the topic's subscriptions have seen) for
//!   recovery; its frames go to the connection task over the internal channel.
//! - Queries (`history`, `search`, `presence`) are plain GETs answered straight to the
//!   caller.

use std::time::Duration;

use agentbus_protocol::{AgentPresence, ErrorCode, Message, SearchHit, ServerFrame};
use futures_util::StreamExt;
use reqwest::Url;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::{Error, ErrorKind, Result};
use crate::topics::Plan;

/// The server's HTTP base for a bus URL: `ws://h:p/x` → `http://h:p/`.
pub(crate) fn http_base(url: &Url) -> Result<Url> {
    let mut base = url.clone();
    let scheme = match url.scheme() {
        "ws" | "http" => "http",
        "wss" | "https" => "https",
        other => return Err(Error::new(ErrorKind::InvalidUrl, format!("unsupported scheme {other:?} in {url}"))),
    };
    base.set_scheme(scheme).map_err(|()| Error::new(ErrorKind::InvalidUrl, format!("cannot use {url}")))?;
    base.set_path("/");
    base.set_query(None);
    base.set_fragment(None);
    Ok(base)
}

/// The WebSocket URL for a bus URL: `http://h:p` → `ws://h:p/`.
pub(crate) fn ws_url(url: &Url) -> Result<Url> {
    let mut ws = url.clone();
    let scheme = match url.scheme() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => return Err(Error::new(ErrorKind::InvalidUrl, format!("unsupported scheme {other:?} in {url}"))),
    };
    ws.set_scheme(scheme).map_err(|()| Error::new(ErrorKind::InvalidUrl, format!("cannot use {url}")))?;
    Ok(ws)
}

/// `base` + the path segments, each percent-encoded (a `/` in a topic becomes `%2F`).
pub(crate) fn endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.clear();
        path.extend(segments);
    }
    url
}

fn io(what: &str, e: reqwest::Error) -> Error {
    let kind = if e.is_timeout() { ErrorKind::Timeout } else { ErrorKind::Io };
    Error::with_source(kind, format!("HTTP {what} failed: {e}"), e)
}

/// Turns an HTTP answer into its JSON body, or the server's error.
async fn json_body(what: &str, res: reqwest::Response) -> Result<Value> {
    let status = res.status();
    let body: Value = res.json().await.map_err(|e| io(what, e))?;
    if status.is_success() {
        return Ok(body);
    }
    let code = serde_json::from_value::<ErrorCode>(body["error"]["code"].clone()).unwrap_or(ErrorCode::Internal);
    let message = body["error"]["message"].as_str().unwrap_or("no message").to_owned();
    Err(Error::server(code, message))
}

fn field<T: serde::de::DeserializeOwned>(body: &mut Value, name: &str) -> Result<T> {
    serde_json::from_value(body[name].take())
        .map_err(|e| Error::with_source(ErrorKind::Protocol, format!("unexpected `{name}` in HTTP answer"), e))
}

/// Whether the server answers HTTP at all (`GET /healthz`).
pub(crate) async fn probe(http: &reqwest::Client, base: &Url, timeout: Duration) -> Result<()> {
    let res = http.get(endpoint(base, &["healthz"])).timeout(timeout).send().await.map_err(|e| io("probe", e))?;
    if res.status().is_success() {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Io, format!("HTTP probe answered {}", res.status())))
    }
}

/// `GET /v1/topics/{topic}/messages?limit=`: the newest messages, oldest first.
pub(crate) async fn history(http: &reqwest::Client, base: &Url, topic: &str, limit: u64) -> Result<Vec<Message>> {
    let url = endpoint(base, &["v1", "topics", topic, "messages"]);
    let res = http.get(url).query(&[("limit", limit.max(1))]).send().await.map_err(|e| io("history", e))?;
    field(&mut json_body("history", res).await?, "messages")
}

/// `GET /v1/search?q=&topic=&limit=`.
pub(crate) async fn search(
    http: &reqwest::Client,
    base: &Url,
    query: &str,
    topic: Option<&str>,
    limit: u64,
) -> Result<Vec<SearchHit>> {
    let mut req = http.get(endpoint(base, &["v1", "search"])).query(&[("q", query)]).query(&[("limit", limit.max(1))]);
    if let Some(t) = topic {
        req = req.query(&[("topic", t)]);
    }
    let res = req.send().await.map_err(|e| io("search", e))?;
    field(&mut json_body("search", res).await?, "hits")
}

/// `GET /v1/agents?topic=`.
pub(crate) async fn presence(http: &reqwest::Client, base: &Url, topic: Option<&str>) -> Result<Vec<AgentPresence>> {
    let mut req = http.get(endpoint(base, &["v1", "agents"]));
    if let Some(t) = topic {
        req = req.query(&[("topic", t)]);
    }
    let res = req.send().await.map_err(|e| io("presence", e))?;
    field(&mut json_body("presence", res).await?, "agents")
}

/// One publish for the poster task.
#[derive(Debug)]
pub(crate) struct Post {
    pub reference: String,
    pub topic: String,
    pub body: Value,
}

/// What the HTTP tier reports to the connection task. `link` is the link generation,
/// so reports of a link already replaced are ignored.
#[derive(Debug)]
pub(crate) enum HttpReport {
    /// The answer to a publish: the `ack` frame, or the server's refusal.
    Answer { link: u64, reference: String, result: std::result::Result<ServerFrame, (ErrorCode, String)> },
    /// A frame from a topic's event stream (`subscribed` or `message`), tagged with the
    /// stream's `ref`.
    Frame { link: u64, stream: String, frame: ServerFrame },
    /// A stream ended: `slow` when the server dropped it as a slow consumer (reopen it),
    /// otherwise the server is gone.
    StreamEnded { link: u64, stream: String, topic: String, slow: bool },
    /// The server could not be reached: the link is down.
    Down { link: u64, error: String },
}

/// Sends the publishes in order until the queue closes or the server is unreachable.
pub(crate) async fn poster(
    http: reqwest::Client,
    base: Url,
    link: u64,
    mut posts: mpsc::Receiver<Post>,
    report: mpsc::Sender<HttpReport>,
) {
    while let Some(post) = posts.recv().await {
        let url = endpoint(&base, &["v1", "topics", &post.topic, "messages"]);
        let res = match http.post(url).json(&post.body).send().await {
            Ok(res) => res,
            Err(e) => {
                let _ = report.send(HttpReport::Down { link, error: e.to_string() }).await;
                return;
            }
        };
        let result = match json_body("publish", res).await {
            Ok(v) => serde_json::from_value::<ServerFrame>(v).map_err(|e| (ErrorCode::Internal, e.to_string())),
            Err(e) => match e.kind() {
                ErrorKind::Server { code: ErrorCode::Unavailable, .. } | ErrorKind::Io | ErrorKind::Timeout => {
                    // Not stored: the server is going away. Resent on the next link.
                    let _ = report.send(HttpReport::Down { link, error: e.to_string() }).await;
                    return;
                }
                ErrorKind::Server { code, message } => Err((*code, message.clone())),
                _ => Err((ErrorCode::Internal, e.to_string())),
            },
        };
        if report.send(HttpReport::Answer { link, reference: post.reference, result }).await.is_err() {
            return;
        }
    }
}

/// Incremental parser of a `text/event-stream` body.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buf: String,
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    pub event: String,
    pub data: String,
}

impl SseParser {
    /// Feeds bytes; returns the events completed by them.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.push_str(&String::from_utf8_lossy(chunk));
        if self.buf.contains('\r') {
            self.buf = self.buf.replace("\r\n", "\n");
        }
        let mut out = Vec::new();
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let mut event = String::from("message");
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if line.starts_with(':') {
                    continue;
                }
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match name {
                    "event" => event = value.to_owned(),
                    "data" => data.push(value),
                    _ => {}
                }
            }
            if !data.is_empty() {
                out.push(SseEvent { event, data: data.join("\n") });
            }
        }
        out
    }
}

/// Which stream to open: the link generation, the topic, the stream's `ref`, where to
/// start and the epoch last seen.
#[derive(Debug, Clone)]
pub(crate) struct StreamSpec {
    pub link: u64,
    pub topic: String,
    pub stream: String,
    pub plan: Plan,
    pub epoch: Option<String>,
}

/// Follows one topic's event stream and reports its frames until it ends.
pub(crate) async fn stream(http: reqwest::Client, base: Url, spec: StreamSpec, report: mpsc::Sender<HttpReport>) {
    let StreamSpec { link, topic, stream, plan, epoch } = spec;
    let url = endpoint(&base, &["v1", "topics", &topic, "events"]);
    let mut req = http.get(url);
    req = match plan.since {
        Some(since) => req.query(&[("since", since)]),
        None => req.query(&[("history", plan.history)]),
    };
    if let (Some(e), Some(_)) = (&epoch, plan.since) {
        req = req.query(&[("epoch", e)]);
    }
    let ended = |slow: bool| HttpReport::StreamEnded { link, stream: stream.clone(), topic: topic.clone(), slow };
    let res = match req.send().await {
        Ok(res) if res.status().is_success() => res,
        Ok(res) => {
            tracing::warn!(topic, status = %res.status(), "event stream refused");
            let _ = report.send(ended(false)).await;
            return;
        }
        Err(e) => {
            let _ = report.send(HttpReport::Down { link, error: e.to_string() }).await;
            return;
        }
    };
    let mut body = res.bytes_stream();
    let mut parser = SseParser::default();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { break };
        for ev in parser.feed(&chunk) {
            let frame = match serde_json::from_str::<ServerFrame>(&ev.data) {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(error = %e, event = ev.event, "unreadable SSE event skipped");
                    continue;
                }
            };
            if let ServerFrame::Error { code, message, .. } = &frame {
                tracing::warn!(topic, %code, message, "event stream ended by the server");
                let _ = report.send(ended(*code == ErrorCode::SlowConsumer)).await;
                return;
            }
            if report.send(HttpReport::Frame { link, stream: stream.clone(), frame }).await.is_err() {
                return;
            }
        }
    }
    let _ = report.send(ended(false)).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn sse_events_are_split_across_chunks_and_comments_are_skipped() {
        let mut p = SseParser::default();
        assert!(p.feed(b"event: subscribed\ndata: {\"a\"").is_empty());
        let evs = p.feed(b":1}\n\n: keep-alive\n\nevent: message\r\ndata: x\r\nid: 3\r\n\r\n");
        assert_eq!(
            evs,
            [
                SseEvent { event: "subscribed".into(), data: "{\"a\":1}".into() },
                SseEvent { event: "message".into(), data: "x".into() }
            ]
        );
    }

    #[test]
    fn urls_map_between_websocket_and_http() {
        let u = Url::parse("ws://127.0.0.1:3030").unwrap();
        assert_eq!(http_base(&u).unwrap().as_str(), "http://127.0.0.1:3030/");
        let h = Url::parse("http://localhost:9/x?y").unwrap();
        assert_eq!(ws_url(&h).unwrap().as_str(), "ws://localhost:9/x?y");
        assert!(http_base(&Url::parse("ftp://x").unwrap()).is_err());
        let e = endpoint(&http_base(&u).unwrap(), &["v1", "topics", "a/b", "messages"]);
        assert_eq!(e.as_str(), "http://127.0.0.1:3030/v1/topics/a%2Fb/messages");
        let inbox = endpoint(&http_base(&u).unwrap(), &["v1", "topics", "@me", "events"]);
        assert_eq!(inbox.path(), "/v1/topics/@me/events");
    }
}
