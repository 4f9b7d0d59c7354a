//! Encoding of the frames on the hot path, without an intermediate tree.
//!
//! A published message is encoded once, by the connection that received it, into a
//! [`MessageDraft`]: every field but the offset. The broker appends the offset it assigns
//! ([`MessageDraft::finish`]) and every subscriber shares the resulting bytes.

use std::fmt::Write as _;

use serde::Serialize;

use crate::client::{Ref, SendFrame};
use crate::error::ErrorCode;
use crate::names::{AgentId, TopicName};

/// A `message` frame lacking only its offset, which always comes last.
#[derive(Debug, Clone)]
pub struct MessageDraft {
    prefix: String,
}

/// Appends `s` as a JSON string. Strings that need no escaping (ids, names, most
/// text) are copied as they are; the others go through serde_json.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Serializing a str cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

/// Appends a client's `ref` as JSON.
fn push_ref(out: &mut String, r: &Ref) {
    match &r.0 {
        serde_json::Value::String(s) => push_json_str(out, s),
        serde_json::Value::Number(n) => {
            // Writing into a String cannot fail.
            let _ = write!(out, "{n}");
        }
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
}

impl MessageDraft {
    /// Encodes every field of the message `send` except its offset.
    pub fn new(topic: &TopicName, id: &str, timestamp: &str, from_agent: &str, send: &SendFrame<'_>) -> Self {
        let content = send.content.get();
        // Room for the offset and the closing brace, appended by `finish` in place.
        let mut prefix = String::with_capacity(
            160 + content.len() + topic.as_str().len() + id.len() + from_agent.len() + meta_len(send),
        );
        prefix.push_str(r#"{"type":"message","topic":""#);
        prefix.push_str(topic.as_str()); // validated names need no escaping
        prefix.push_str(r#"","id":"#);
        push_json_str(&mut prefix, id);
        prefix.push_str(r#","timestamp":""#);
        prefix.push_str(timestamp);
        prefix.push_str(r#"","from_agent":"#);
        push_json_str(&mut prefix, from_agent);
        if let Some(to) = &send.to_agent {
            prefix.push_str(r#","to_agent":""#);
            prefix.push_str(to.as_str());
            prefix.push('"');
        }
        prefix.push_str(r#","content":"#);
        prefix.push_str(content);
        if let Some(irt) = &send.in_reply_to {
            prefix.push_str(r#","in_reply_to":"#);
            push_json_str(&mut prefix, irt);
        }
        if let Some(meta) = send.meta {
            prefix.push_str(r#","meta":"#);
            prefix.push_str(meta.get());
        }
        prefix.push_str(r#","offset":"#);
        Self { prefix }
    }

    /// The complete frame with `offset`, written after the other fields in the same
    /// buffer.
    pub fn finish(self, offset: u64) -> String {
        let mut out = self.prefix;
        out.push_str(itoa::Buffer::new().format(offset));
        out.push('}');
        out
    }

    /// Bytes of the encoded draft (for size accounting).
    pub fn len(&self) -> usize {
        self.prefix.len()
    }

    /// Whether the draft is empty (never, for a built draft).
    pub fn is_empty(&self) -> bool {
        self.prefix.is_empty()
    }
}

/// The offset of an encoded `message` frame (always its last field), without parsing it.
pub fn frame_offset(frame: &str) -> Option<u64> {
    let (_, tail) = frame.rsplit_once("\"offset\":")?;
    tail.trim_end_matches('}').parse().ok()
}

/// Whether an encoded `message` frame belongs to `topic`, without parsing it.
pub fn frame_is_on(frame: &str, topic: &TopicName) -> bool {
    frame_topic_is(frame, "", topic.as_str())
}

/// Whether an encoded `message` frame is on `agent`'s inbox (topic `@agent`), without
/// parsing it or building the inbox's name.
pub fn frame_is_on_inbox_of(frame: &str, agent: &AgentId) -> bool {
    frame_topic_is(frame, "@", agent.as_str())
}

/// Whether the topic of an encoded `message` frame (the encoder writes it first) is
/// `prefix` followed by `name`.
fn frame_topic_is(frame: &str, prefix: &str, name: &str) -> bool {
    frame
        .strip_prefix(r#"{"type":"message","topic":""#)
        .and_then(|rest| rest.strip_prefix(prefix))
        .and_then(|rest| rest.strip_prefix(name))
        .is_some_and(|rest| rest.starts_with('"'))
}

/// The replayed form of a stored `message` frame: the same object with `"replay":true`.
pub fn replay_frame(stored: &str) -> String {
    let body = stored.strip_suffix('}').unwrap_or(stored);
    let mut out = String::with_capacity(body.len() + 16);
    out.push_str(body);
    out.push_str(r#","replay":true}"#);
    out
}

/// Bytes of the optional fields of `send` that have no bound of their own.
fn meta_len(send: &SendFrame<'_>) -> usize {
    send.meta.map_or(0, |m| m.get().len()) + send.in_reply_to.as_deref().map_or(0, str::len)
}

#[cfg(test)]
#[derive(Serialize)]
struct AckOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    topic: &'a str,
    offset: u64,
    delivered: usize,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Ref>,
}

/// An `ack` frame. `duplicate` is true when the id was already stored (nothing was
/// delivered again).
pub fn ack_frame(
    id: &str,
    topic: &TopicName,
    offset: u64,
    delivered: usize,
    duplicate: bool,
    reference: Option<&Ref>,
) -> String {
    // The fixed text, two numbers of up to 20 digits, the strings and the `ref`.
    let ref_len = reference.map_or(0, |r| match &r.0 {
        serde_json::Value::String(s) => s.len() + 8,
        _ => 32,
    });
    let mut out = String::with_capacity(112 + id.len() + topic.as_str().len() + ref_len);
    out.push_str(r#"{"type":"ack","id":"#);
    push_json_str(&mut out, id);
    out.push_str(r#","topic":""#);
    out.push_str(topic.as_str()); // validated names need no escaping
    out.push_str(r#"","offset":"#);
    out.push_str(itoa::Buffer::new().format(offset));
    out.push_str(r#","delivered":"#);
    out.push_str(itoa::Buffer::new().format(delivered));
    if duplicate {
        out.push_str(r#","duplicate":true"#);
    }
    if let Some(r) = reference {
        out.push_str(r#","ref":"#);
        push_ref(&mut out, r);
    }
    out.push('}');
    out
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: ErrorCode,
    message: &'a str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Ref>,
}

/// An `error` frame.
pub fn error_frame(code: ErrorCode, message: &str, reference: Option<&Ref>) -> String {
    serde_json::to_string(&ErrorOut { kind: "error", code, message, reference }).unwrap_or_default()
}

/// A `history` frame around already-encoded stored `message` frames (oldest first).
pub fn history_frame<'a>(
    topic: &TopicName,
    frames: impl IntoIterator<Item = &'a str>,
    reference: Option<&Ref>,
) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(r#"{"type":"history","topic":""#);
    out.push_str(topic.as_str());
    out.push_str(r#"","messages":["#);
    for (i, f) in frames.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(f);
    }
    out.push(']');
    if let Some(r) = reference {
        out.push_str(r#","ref":"#);
        push_ref(&mut out, r);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientFrame, Message, ParseLimits, ServerFrame};

    #[test]
    fn drafts_finish_into_valid_message_frames() {
        let text =
            r#"{"type":"send","topic":"t","content":{"k":"v\"q"},"to_agent":"b","in_reply_to":"x\n","meta":{"m":1}}"#;
        let (ClientFrame::Send(send), _) = ClientFrame::parse(text, &ParseLimits::default()).expect("parse") else {
            panic!("not send")
        };
        let topic = send.destination();
        let draft = MessageDraft::new(&topic, "id\"1", "2026-01-01T00:00:00.000Z", "me", &send);
        let frame = draft.clone().finish(18446744073709551615);
        let ServerFrame::Message(m) = serde_json::from_str::<ServerFrame>(&frame).expect("valid json") else {
            panic!("not a message")
        };
        assert_eq!(m.offset, u64::MAX);
        assert_eq!(m.id, "id\"1");
        assert_eq!(m.content, serde_json::json!({"k":"v\"q"}));
        assert_eq!(m.in_reply_to.as_deref(), Some("x\n"));
        assert_eq!(m.to_agent.as_deref(), Some("b"));
        assert_eq!(m.replay, None);
        let replay: Message = serde_json::from_str(&replay_frame(&draft.finish(0))).expect("replay json");
        assert_eq!((replay.offset, replay.replay), (0, Some(true)));
    }

    #[test]
    fn acks_are_what_serde_writes() {
        let topic = TopicName::new("a.b").expect("topic");
        let refs = [
            None,
            Some(Ref(serde_json::json!("r-1"))),
            Some(Ref(serde_json::json!("q\"u\\o\u{1}te é"))),
            Some(Ref(serde_json::json!(42))),
            Some(Ref(serde_json::json!(-1.5e300))),
            Some(Ref(serde_json::json!(u64::MAX))),
        ];
        for id in ["m-1", "with \"quotes\" and \\", "tab\tnew\nline\u{7f}", "naïve ✓", ""] {
            for reference in &refs {
                for (offset, delivered, duplicate) in [(0, 0, false), (u64::MAX, usize::MAX, true)] {
                    let ours = ack_frame(id, &topic, offset, delivered, duplicate, reference.as_ref());
                    let ack = AckOut {
                        kind: "ack",
                        id,
                        topic: "a.b",
                        offset,
                        delivered,
                        duplicate,
                        reference: reference.as_ref(),
                    };
                    assert_eq!(ours, serde_json::to_string(&ack).expect("serde"));
                }
            }
        }
    }

    #[test]
    fn json_strings_are_what_serde_writes() {
        for s in ["", "plain", "\"", "\\", "\u{0}\u{1f} ", "\u{7f}é✓/</", "a\"b\\c\nd"] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).expect("serde"));
        }
    }

    #[test]
    fn offsets_and_topics_are_read_from_encoded_frames() {
        let t = TopicName::new("@a").expect("topic");
        let frame = r#"{"type":"message","topic":"@a","content":{"offset":1},"offset":42}"#;
        assert_eq!(frame_offset(frame), Some(42));
        assert!(frame_is_on(frame, &t));
        assert!(!frame_is_on(r#"{"type":"message","topic":"@ab","offset":1}"#, &t));
        let ab = AgentId::new("ab").expect("agent");
        assert!(frame_is_on_inbox_of(r#"{"type":"message","topic":"@ab","offset":1}"#, &ab));
        assert!(!frame_is_on_inbox_of(r#"{"type":"message","topic":"@abc","offset":1}"#, &ab));
        assert!(!frame_is_on_inbox_of(r#"{"type":"message","topic":"ab","offset":1}"#, &ab));
        assert_eq!(frame_offset(r#"{"type":"ack"}"#), None);
    }

    #[test]
    fn replies_carry_their_ref() {
        let r = Ref(serde_json::json!("abc"));
        let t = TopicName::new("t").expect("topic");
        let ack: serde_json::Value = serde_json::from_str(&ack_frame("i", &t, 3, 2, false, Some(&r))).expect("ack");
        assert_eq!(ack, serde_json::json!({"type":"ack","id":"i","topic":"t","offset":3,"delivered":2,"ref":"abc"}));
        let e: serde_json::Value =
            serde_json::from_str(&error_frame(ErrorCode::InvalidJson, "bad", Some(&r))).expect("error");
        assert_eq!(e, serde_json::json!({"type":"error","code":"invalid_json","message":"bad","ref":"abc"}));
        let h: serde_json::Value =
            serde_json::from_str(&history_frame(&t, [r#"{"a":1}"#, r#"{"b":2}"#], Some(&r))).expect("history");
        assert_eq!(h, serde_json::json!({"type":"history","topic":"t","messages":[{"a":1},{"b":2}],"ref":"abc"}));
    }
}
