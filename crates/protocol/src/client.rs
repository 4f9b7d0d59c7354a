//! Frames a client sends, parsed and validated in one pass.
//!
//! Parsing borrows from the received text: `content` and `meta` stay raw JSON slices
//! that the server copies verbatim into the message it stores and fans out, so a
//! published value is never re-serialized.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{ErrorCode, FrameError};
use crate::names::{AgentId, NameError, TopicName};

/// A client's `ref`: a string or number copied verbatim into the direct reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ref(pub serde_json::Value);

/// Bounds applied while parsing; values past them are refused or clamped as documented.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Longest message id, `in_reply_to` or `ref`, in bytes (longer: `too_large`).
    pub max_id_len: usize,
    /// Most capabilities one agent may declare (more: `too_large`).
    pub max_capabilities: usize,
    /// Longest search query, in bytes (longer: `too_large`).
    pub max_query_len: usize,
    /// Largest page a `history`, `search` or `subscribe.history` returns (larger is clamped).
    pub max_page: u64,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self { max_id_len: 128, max_capabilities: 64, max_query_len: 1024, max_page: 1000 }
    }
}

/// `register`: who this connection speaks for.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisterFrame {
    /// The agent's id; its inbox is `@<agent_id>`.
    pub agent_id: AgentId,
    /// A key or JWT, when authentication is on.
    pub token: Option<String>,
    /// What the agent can do, shown in presence.
    pub capabilities: Vec<String>,
    /// Free-form metadata (a JSON object, kept raw).
    pub meta: Option<String>,
}

/// `subscribe`: follow a topic, optionally replaying what is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeFrame {
    /// The topic to follow.
    pub topic: TopicName,
    /// How many stored messages to replay first (default 10, 0 = none). Ignored with `since`.
    pub history: Option<u64>,
    /// Replay every stored message after this offset (recovery).
    pub since: Option<u64>,
    /// The topic epoch the client last saw; a different one means its history was reset.
    pub epoch: Option<String>,
}

/// `send`: publish to a topic or to an agent's inbox.
#[derive(Debug, Clone)]
pub struct SendFrame<'a> {
    /// The topic; absent for a direct message (then `to_agent` names the inbox).
    pub topic: Option<TopicName>,
    /// The content, any JSON value, as received.
    pub content: &'a RawValue,
    /// Who sends it; defaults to the registered agent.
    pub from_agent: Option<AgentId>,
    /// The addressee; without `topic` the message goes to `@<to_agent>`.
    pub to_agent: Option<AgentId>,
    /// A client-chosen id that makes the send idempotent.
    pub id: Option<Cow<'a, str>>,
    /// The id of the message this one answers.
    pub in_reply_to: Option<Cow<'a, str>>,
    /// Free-form metadata (a JSON object), as received.
    pub meta: Option<&'a RawValue>,
}

impl SendFrame<'_> {
    /// The topic the message goes to: `topic`, else the inbox of `to_agent`.
    pub fn destination(&self) -> TopicName {
        match (&self.topic, &self.to_agent) {
            (Some(topic), _) => topic.clone(),
            (None, Some(agent)) => TopicName::inbox(agent),
            (None, None) => unreachable!("parse guarantees a topic or a to_agent"),
        }
    }
}

/// `history`: read stored messages of a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryFrame {
    /// The topic.
    pub topic: TopicName,
    /// Most messages to return (default 10, clamped to the page limit).
    pub limit: u64,
    /// Only messages with a smaller offset (the newest `limit` of them).
    pub before: Option<u64>,
    /// Only messages with a larger offset (the oldest `limit` of them).
    pub after: Option<u64>,
}

/// `search`: full-text search over stored content.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchFrame {
    /// The words to look for (never interpreted as query syntax).
    pub query: String,
    /// Only this topic.
    pub topic: Option<TopicName>,
    /// Only messages from this agent.
    pub from_agent: Option<AgentId>,
    /// Most hits to return (default 20, clamped to the page limit).
    pub limit: u64,
}

/// A parsed, validated client frame.
#[derive(Debug, Clone)]
pub enum ClientFrame<'a> {
    /// `register`.
    Register(RegisterFrame),
    /// `subscribe`.
    Subscribe(SubscribeFrame),
    /// `unsubscribe {topic}`.
    Unsubscribe {
        /// The topic to stop following.
        topic: TopicName,
    },
    /// `send`.
    Send(SendFrame<'a>),
    /// `history`.
    History(HistoryFrame),
    /// `search`.
    Search(SearchFrame),
    /// `presence {topic?}`.
    Presence {
        /// Only agents subscribed to this topic.
        topic: Option<TopicName>,
    },
    /// `ping`.
    Ping,
}

/// Every field any frame may carry, as raw JSON, so each can be type-checked with a
/// precise error. Unknown fields are ignored for forward compatibility.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
    #[serde(borrow)]
    agent_id: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<&'a RawValue>,
    #[serde(borrow)]
    capabilities: Option<&'a RawValue>,
    #[serde(borrow)]
    meta: Option<&'a RawValue>,
    #[serde(borrow)]
    topic: Option<&'a RawValue>,
    #[serde(borrow)]
    history: Option<&'a RawValue>,
    #[serde(borrow)]
    since: Option<&'a RawValue>,
    #[serde(borrow)]
    epoch: Option<&'a RawValue>,
    #[serde(borrow, deserialize_with = "present")]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    from_agent: Option<&'a RawValue>,
    #[serde(borrow)]
    to_agent: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    in_reply_to: Option<&'a RawValue>,
    #[serde(borrow)]
    limit: Option<&'a RawValue>,
    #[serde(borrow)]
    before: Option<&'a RawValue>,
    #[serde(borrow)]
    after: Option<&'a RawValue>,
    #[serde(borrow)]
    query: Option<&'a RawValue>,
}

/// A field that is present, even as `null` (which `Option` alone would read as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

fn err(code: ErrorCode, message: impl Into<String>) -> FrameError {
    FrameError::new(code, message)
}

fn missing(field: &str) -> FrameError {
    err(ErrorCode::MissingField, format!("missing field `{field}`"))
}

fn string<'a>(field: &str, raw: &'a RawValue) -> Result<Cow<'a, str>, FrameError> {
    let text = raw.get();
    // The raw value is valid JSON: between its quotes, a string without escapes is
    // its own text, borrowed from the frame.
    if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"'))
        && !inner.contains('\\')
    {
        return Ok(Cow::Borrowed(inner));
    }
    serde_json::from_str::<Cow<'a, str>>(text)
        .map_err(|_| err(ErrorCode::InvalidField, format!("field `{field}` must be a string")))
}

fn opt_string<'a>(field: &str, raw: Option<&'a RawValue>) -> Result<Option<Cow<'a, str>>, FrameError> {
    raw.map(|r| string(field, r)).transpose()
}

fn bounded_id<'a>(
    field: &str,
    raw: Option<&'a RawValue>,
    limits: &ParseLimits,
) -> Result<Option<Cow<'a, str>>, FrameError> {
    let Some(s) = opt_string(field, raw)? else { return Ok(None) };
    if s.is_empty() {
        return Err(err(ErrorCode::InvalidField, format!("field `{field}` must not be empty")));
    }
    if s.len() > limits.max_id_len {
        return Err(err(
            ErrorCode::TooLarge,
            format!("field `{field}` is {} bytes; at most {} are allowed", s.len(), limits.max_id_len),
        ));
    }
    Ok(Some(s))
}

fn number(field: &str, raw: Option<&RawValue>) -> Result<Option<u64>, FrameError> {
    raw.map(|r| {
        serde_json::from_str::<u64>(r.get())
            .map_err(|_| err(ErrorCode::InvalidField, format!("field `{field}` must be a non-negative integer")))
    })
    .transpose()
}

fn topic(field: &str, raw: &RawValue) -> Result<TopicName, FrameError> {
    let s = string(field, raw).map_err(|e| FrameError { code: ErrorCode::InvalidTopic, ..e })?;
    TopicName::new(&s).map_err(|e| err(ErrorCode::InvalidTopic, format!("invalid topic {s:?}: {e}")))
}

fn opt_topic(field: &str, raw: Option<&RawValue>) -> Result<Option<TopicName>, FrameError> {
    raw.map(|r| topic(field, r)).transpose()
}

fn agent(field: &str, raw: Option<&RawValue>) -> Result<Option<AgentId>, FrameError> {
    let Some(s) = opt_string(field, raw)? else { return Ok(None) };
    AgentId::new(&s)
        .map(Some)
        .map_err(|e: NameError| err(ErrorCode::InvalidField, format!("invalid `{field}` {s:?}: {e}")))
}

fn object<'a>(field: &str, raw: Option<&'a RawValue>) -> Result<Option<&'a RawValue>, FrameError> {
    match raw {
        Some(r) if !r.get().starts_with('{') => {
            Err(err(ErrorCode::InvalidField, format!("field `{field}` must be a JSON object")))
        }
        other => Ok(other),
    }
}

fn parse_ref(raw: Option<&RawValue>, limits: &ParseLimits) -> Option<Ref> {
    let raw = raw?;
    let text = raw.get();
    let first = text.as_bytes().first().copied()?;
    let is_scalar = first == b'"' || first == b'-' || first.is_ascii_digit();
    if !is_scalar || text.len() > limits.max_id_len + 2 {
        return None;
    }
    serde_json::from_str(text).ok().map(Ref)
}

impl<'a> ClientFrame<'a> {
    /// Parses one text frame. On error the returned [`FrameError`] carries the frame's
    /// `ref` when the frame was an object with a usable one.
    pub fn parse(text: &'a str, limits: &ParseLimits) -> Result<(ClientFrame<'a>, Option<Ref>), FrameError> {
        let raw = parse_object(text)?;
        let reference = parse_ref(raw.reference, limits);
        if raw.reference.is_some() && reference.is_none() {
            return Err(err(
                ErrorCode::InvalidField,
                format!("field `ref` must be a string or number of at most {} bytes", limits.max_id_len),
            ));
        }
        match Self::from_raw(raw, limits) {
            Ok(frame) => Ok((frame, reference)),
            Err(e) => Err(e.with_ref(reference)),
        }
    }

    fn from_raw(raw: RawFrame<'a>, limits: &ParseLimits) -> Result<Self, FrameError> {
        let kind_raw = raw.kind.ok_or_else(|| missing("type"))?;
        let kind = string("type", kind_raw)?;
        let frame = match &*kind {
            "register" => ClientFrame::Register(parse_register(&raw, limits)?),
            "subscribe" => ClientFrame::Subscribe(SubscribeFrame {
                topic: topic("topic", raw.topic.ok_or_else(|| missing("topic"))?)?,
                history: number("history", raw.history)?.map(|n| n.min(limits.max_page)),
                since: number("since", raw.since)?,
                epoch: opt_string("epoch", raw.epoch)?.map(Cow::into_owned),
            }),
            "unsubscribe" => {
                ClientFrame::Unsubscribe { topic: topic("topic", raw.topic.ok_or_else(|| missing("topic"))?)? }
            }
            "send" => ClientFrame::Send(parse_send(&raw, None, limits)?),
            "history" => ClientFrame::History(HistoryFrame {
                topic: topic("topic", raw.topic.ok_or_else(|| missing("topic"))?)?,
                limit: number("limit", raw.limit)?.unwrap_or(crate::DEFAULT_HISTORY).min(limits.max_page),
                before: number("before", raw.before)?,
                after: number("after", raw.after)?,
            }),
            "search" => ClientFrame::Search(parse_search(&raw, limits)?),
            "presence" => ClientFrame::Presence { topic: opt_topic("topic", raw.topic)? },
            "ping" => ClientFrame::Ping,
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(err(ErrorCode::UnknownType, format!("unknown frame type {shown:?}")));
            }
        };
        Ok(frame)
    }
}

fn parse_object(text: &str) -> Result<RawFrame<'_>, FrameError> {
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        let what = if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            "a frame must be a JSON object"
        } else {
            "a frame must be a JSON object; this is not valid JSON"
        };
        return Err(err(ErrorCode::InvalidJson, what));
    }
    serde_json::from_str::<RawFrame<'_>>(text).map_err(|e| err(ErrorCode::InvalidJson, format!("invalid JSON: {e}")))
}

fn parse_register(raw: &RawFrame<'_>, limits: &ParseLimits) -> Result<RegisterFrame, FrameError> {
    let agent_id = agent("agent_id", raw.agent_id)?.ok_or_else(|| missing("agent_id"))?;
    let capabilities = match raw.capabilities {
        None => Vec::new(),
        Some(r) => {
            let caps: Vec<String> = serde_json::from_str(r.get())
                .map_err(|_| err(ErrorCode::InvalidField, "field `capabilities` must be an array of strings"))?;
            if caps.len() > limits.max_capabilities {
                return Err(err(
                    ErrorCode::TooLarge,
                    format!("{} capabilities; at most {} are allowed", caps.len(), limits.max_capabilities),
                ));
            }
            if let Some(long) = caps.iter().find(|c| c.len() > limits.max_id_len) {
                return Err(err(ErrorCode::TooLarge, format!("capability of {} bytes is too long", long.len())));
            }
            caps
        }
    };
    Ok(RegisterFrame {
        agent_id,
        token: opt_string("token", raw.token)?.map(Cow::into_owned),
        capabilities,
        meta: object("meta", raw.meta)?.map(|m| m.get().to_owned()),
    })
}

fn parse_send<'a>(
    raw: &RawFrame<'a>,
    path_topic: Option<TopicName>,
    limits: &ParseLimits,
) -> Result<SendFrame<'a>, FrameError> {
    let topic = match path_topic {
        Some(t) => Some(t),
        None => opt_topic("topic", raw.topic)?,
    };
    let to_agent = agent("to_agent", raw.to_agent)?;
    if topic.is_none() && to_agent.is_none() {
        return Err(err(ErrorCode::MissingField, "missing field `topic` (or `to_agent` for a direct message)"));
    }
    Ok(SendFrame {
        topic,
        content: raw.content.ok_or_else(|| missing("content"))?,
        from_agent: agent("from_agent", raw.from_agent)?,
        to_agent,
        id: bounded_id("id", raw.id, limits)?,
        in_reply_to: bounded_id("in_reply_to", raw.in_reply_to, limits)?,
        meta: object("meta", raw.meta)?,
    })
}

fn parse_search(raw: &RawFrame<'_>, limits: &ParseLimits) -> Result<SearchFrame, FrameError> {
    let query = string("query", raw.query.ok_or_else(|| missing("query"))?)?;
    if query.trim().is_empty() {
        return Err(err(ErrorCode::InvalidField, "field `query` must contain at least one word"));
    }
    if query.len() > limits.max_query_len {
        return Err(err(
            ErrorCode::TooLarge,
            format!("query is {} bytes; at most {} are allowed", query.len(), limits.max_query_len),
        ));
    }
    Ok(SearchFrame {
        query: query.into_owned(),
        topic: opt_topic("topic", raw.topic)?,
        from_agent: agent("from_agent", raw.from_agent)?,
        limit: number("limit", raw.limit)?.unwrap_or(20).min(limits.max_page),
    })
}

impl<'a> SendFrame<'a> {
    /// Parses the body of an HTTP publish (`POST /v1/topics/{topic}/messages`): the
    /// fields of a `send` frame without `type`, the topic coming from the path.
    pub fn parse_body(text: &'a str, topic: TopicName, limits: &ParseLimits) -> Result<Self, FrameError> {
        let raw = parse_object(text)?;
        parse_send(&raw, Some(topic), limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClientFrame<'_>, FrameError> {
        ClientFrame::parse(text, &ParseLimits::default()).map(|(f, _)| f)
    }

    fn code(text: &str) -> ErrorCode {
        parse(text).expect_err(text).code
    }

    #[test]
    fn seed_frames_parse() {
        let ClientFrame::Register(r) = parse(r#"{"type":"register","agent_id":"test-agent"}"#).expect("register")
        else {
            panic!("not register")
        };
        assert_eq!(r.agent_id.as_str(), "test-agent");
        let ClientFrame::Subscribe(s) = parse(r#"{"type":"subscribe","topic":"orchestrator"}"#).expect("sub") else {
            panic!("not subscribe")
        };
        assert_eq!((s.topic.as_str(), s.history, s.since), ("orchestrator", None, None));
        let text = r#"{"type":"send","topic":"orchestrator","content":"Hello from remote!","from_agent":"test-agent","to_agent":"board"}"#;
        let ClientFrame::Send(m) = parse(text).expect("send") else { panic!("not send") };
        assert_eq!(m.content.get(), r#""Hello from remote!""#);
        assert_eq!(m.destination().as_str(), "orchestrator");
        assert_eq!(m.to_agent.expect("to").as_str(), "board");
    }

    #[test]
    fn escaped_strings_are_decoded_and_plain_ones_borrowed() {
        let text = r#"{"type":"send","topic":"a\u002eb","content":1,"id":"x\"y\\z","from_agent":"me"}"#;
        let ClientFrame::Send(m) = parse(text).expect("send") else { panic!("not send") };
        assert_eq!(m.destination().as_str(), "a.b");
        assert_eq!(m.id.as_deref(), Some("x\"y\\z"));
        assert_eq!(m.from_agent.expect("from").as_str(), "me");
        let raw: &RawValue = serde_json::from_str(r#""plain""#).expect("raw");
        assert!(matches!(string("f", raw), Ok(Cow::Borrowed("plain"))));
        let raw: &RawValue = serde_json::from_str(r#""tab\t""#).expect("raw");
        assert_eq!(string("f", raw).expect("string"), "tab\t");
        let raw: &RawValue = serde_json::from_str("12").expect("raw");
        assert_eq!(string("f", raw).expect_err("number").code, ErrorCode::InvalidField);
    }

    #[test]
    fn direct_message_goes_to_the_inbox() {
        let ClientFrame::Send(m) = parse(r#"{"type":"send","to_agent":"coder","content":{"a":[1,2]}}"#).expect("dm")
        else {
            panic!("not send")
        };
        assert_eq!(m.destination().as_str(), "@coder");
        assert_eq!(m.content.get(), r#"{"a":[1,2]}"#);
    }

    #[test]
    fn ref_is_echoed_on_errors() {
        let e = ClientFrame::parse(r#"{"type":"nope","ref":7}"#, &ParseLimits::default()).expect_err("unknown");
        assert_eq!(e.code, ErrorCode::UnknownType);
        assert_eq!(e.reference, Some(Ref(serde_json::json!(7))));
        let e = ClientFrame::parse(r#"{"type":"send","ref":"a"}"#, &ParseLimits::default()).expect_err("no topic");
        assert_eq!(e.reference, Some(Ref(serde_json::json!("a"))));
    }

    #[test]
    fn bad_frames_get_their_stable_codes() {
        assert_eq!(code("not json"), ErrorCode::InvalidJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidJson);
        assert_eq!(code("42"), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"type":"send""#), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"type":"fly"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"register"}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"type":"register","agent_id":"a b"}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"type":"register","agent_id":"a","capabilities":"x"}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"type":"subscribe"}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"type":"subscribe","topic":"a b"}"#), ErrorCode::InvalidTopic);
        assert_eq!(code(r#"{"type":"subscribe","topic":7}"#), ErrorCode::InvalidTopic);
        assert_eq!(code(r#"{"type":"subscribe","topic":"t","since":-1}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"type":"subscribe","topic":"t","history":"5"}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"type":"send","content":"x"}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"type":"send","topic":"t"}"#), ErrorCode::MissingField);
        assert!(parse(r#"{"type":"send","topic":"t","content":null}"#).is_ok(), "null is a JSON value");
        assert_eq!(code(r#"{"type":"send","topic":"t","content":1,"meta":3}"#), ErrorCode::InvalidField);
        let long_id = format!(r#"{{"type":"send","topic":"t","content":1,"id":"{}"}}"#, "x".repeat(200));
        assert_eq!(code(&long_id), ErrorCode::TooLarge);
        assert_eq!(code(r#"{"type":"search","query":"   "}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"type":"ping","ref":{"x":1}}"#), ErrorCode::InvalidField);
    }

    #[test]
    fn page_sizes_are_clamped() {
        let ClientFrame::History(h) = parse(r#"{"type":"history","topic":"t","limit":999999}"#).expect("h") else {
            panic!("not history")
        };
        assert_eq!(h.limit, ParseLimits::default().max_page);
    }

    /// A bounded, seeded mutation fuzz of real frames: parsing never panics, and every
    /// accepted send encodes to valid JSON (the `cargo fuzz` target explores further).
    #[test]
    fn mutated_frames_never_panic_and_accepted_sends_encode_to_valid_json() {
        let seeds = [
            r#"{"type":"send","topic":"t","content":{"a":[1,"x\"y"]},"id":"i","meta":{"k":null},"ref":3}"#,
            r#"{"type":"register","agent_id":"a","capabilities":["c"],"token":"k","meta":{}}"#,
            r#"{"type":"subscribe","topic":"@a","since":5,"epoch":"e","history":3}"#,
            r#"{"type":"search","query":"w o r d s","topic":"t","limit":2}"#,
            r#"{"type":"history","topic":"t","before":9,"after":1,"limit":4}"#,
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"{}[]\",:0123456789-.eE\\ntufalsr@/ \x7f";
        for i in 0..20_000 {
            let mut bytes = seeds[i % seeds.len()].as_bytes().to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % bytes.len();
                match next() % 3 {
                    0 => bytes[at] = alphabet[(next() as usize) % alphabet.len()],
                    1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                }
            }
            let Ok(text) = std::str::from_utf8(&bytes) else { continue };
            if let Ok((ClientFrame::Send(send), _)) = ClientFrame::parse(text, &ParseLimits::default()) {
                let topic = send.destination();
                let frame = crate::MessageDraft::new(&topic, "id", "2026-01-01T00:00:00Z", "f", &send).finish(1);
                assert!(serde_json::from_str::<serde_json::Value>(&frame).is_ok(), "{text} -> {frame}");
            }
        }
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let ClientFrame::Send(m) = parse(r#"{"type":"send","topic":"t","content":"x","id":"a\"b"}"#).expect("send")
        else {
            panic!("not send")
        };
        assert_eq!(m.id.as_deref(), Some("a\"b"));
    }
}
