//! The frames the bench sends, built by hand, and the few fields it reads from the
//! frames it receives, found by scanning the text instead of parsing JSON: the server
//! writes its frames in a fixed field order (see `agentbus_protocol::encode`), so a
//! prefix tells the type and the offset is the last number of a `message` frame.
//!
//! Every content the bench publishes is a JSON string `t=<nanos since bench start>;`
//! padded with `x` to the requested size: the receiver computes the latency from it.

use std::fmt::Write;

/// Start of a `message` frame.
pub const MESSAGE_PREFIX: &str = r#"{"type":"message""#;
/// Start of an `ack` frame.
pub const ACK_PREFIX: &str = r#"{"type":"ack""#;
/// Start of an `error` frame.
pub const ERROR_PREFIX: &str = r#"{"type":"error""#;
/// Start of a `registered` frame.
pub const REGISTERED_PREFIX: &str = r#"{"type":"registered""#;
/// Start of a `subscribed` frame.
pub const SUBSCRIBED_PREFIX: &str = r#"{"type":"subscribed""#;
/// The offset field (last in a `message`, after the topic in `ack` and `subscribed`).
pub const OFFSET_KEY: &str = r#""offset":"#;
/// The `ref` field the bench uses to carry an ack's send time.
pub const REF_KEY: &str = r#""ref":"#;
/// The marker of a timestamped content.
const STAMP_KEY: &str = r#""content":"t="#;
/// The `id` field of a `message`.
const ID_KEY: &str = r#""id":""#;
/// The `from_agent` field of a `message`.
const FROM_KEY: &str = r#""from_agent":""#;
/// The `code` field of an `error`.
const CODE_KEY: &str = r#""code":""#;

/// What a received frame is, judged by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A delivered (or replayed) message.
    Message,
    /// An ack of a send.
    Ack,
    /// An error.
    Error,
    /// Anything else (registered, subscribed, pong, …).
    Other,
}

/// The kind of a server frame.
pub fn kind(text: &str) -> Kind {
    if text.starts_with(MESSAGE_PREFIX) {
        Kind::Message
    } else if text.starts_with(ACK_PREFIX) {
        Kind::Ack
    } else if text.starts_with(ERROR_PREFIX) {
        Kind::Error
    } else {
        Kind::Other
    }
}

/// The decimal number made of all of `digits` (None when empty, not digits, or too big).
fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// The decimal number at the start of `s`.
fn leading_u64(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    parse_digits(&s.as_bytes()[..digits])
}

/// The number right after the first `key`.
pub fn u64_after_first(text: &str, key: &str) -> Option<u64> {
    text.find(key).and_then(|i| leading_u64(&text[i + key.len()..]))
}

/// The number right after the last `key`.
fn u64_after_last(text: &str, key: &str) -> Option<u64> {
    text.rfind(key).and_then(|i| leading_u64(&text[i + key.len()..]))
}

/// The number that ends the object `text` when `key` is its last field: found from
/// the end in constant time.
fn trailing_u64(text: &str, key: &str) -> Option<u64> {
    let body = text.strip_suffix('}')?;
    let digits = body.bytes().rev().take_while(u8::is_ascii_digit).count();
    let (head, number) = body.split_at(body.len() - digits);
    if !head.ends_with(key) {
        return None;
    }
    parse_digits(number.as_bytes())
}

/// The offset of a `message` (its last field, unless the frame is a replay).
pub fn message_offset(text: &str) -> Option<u64> {
    trailing_u64(text, OFFSET_KEY).or_else(|| u64_after_last(text, OFFSET_KEY))
}

/// The `ref` of an ack (its last field when present).
pub fn ack_ref(text: &str) -> Option<u64> {
    trailing_u64(text, REF_KEY).or_else(|| u64_after_last(text, REF_KEY))
}

/// The string value right after the first `key` (ending at the next quote: the
/// bench's own ids and names contain no escapes).
fn str_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// The send time carried by a bench content, in nanoseconds since the bench started.
pub fn stamp(text: &str) -> Option<u64> {
    stamp_hinted(text, &mut 0)
}

/// [`stamp`], looking first where the stamp was in the previous frame of the same
/// stream (`hint`, updated): frames of one topic differ by little more than their id.
pub fn stamp_hinted(text: &str, hint: &mut usize) -> Option<u64> {
    if let Some(head) = text.get(..*hint)
        && head.ends_with(STAMP_KEY)
        && let Some(stamp) = leading_u64(&text[*hint..])
    {
        return Some(stamp);
    }
    // No field the server writes before the content (topic, id, timestamp, agents) can
    // hold `=`, so the first one is the stamp's: a byte search instead of a substring one.
    let eq = text.find('=')?;
    let start = if text[..eq].ends_with(&STAMP_KEY[..STAMP_KEY.len() - 1]) {
        eq + 1
    } else {
        text.find(STAMP_KEY)? + STAMP_KEY.len()
    };
    *hint = start;
    leading_u64(&text[start..])
}

/// The `id` of a `message`.
pub fn message_id(text: &str) -> Option<&str> {
    str_after(text, ID_KEY)
}

/// The `from_agent` of a `message`.
pub fn from_agent(text: &str) -> Option<&str> {
    str_after(text, FROM_KEY)
}

/// The content string of a bench `message` (without quotes).
pub fn content(text: &str) -> Option<&str> {
    str_after(text, r#""content":""#)
}

/// The `code` of an `error`.
pub fn error_code(text: &str) -> &str {
    str_after(text, CODE_KEY).unwrap_or("unknown")
}

/// Builds timestamped contents of one size.
#[derive(Debug, Clone)]
pub struct ContentMaker {
    pad: String,
}

impl ContentMaker {
    /// Contents of `size` bytes (more when `size` is shorter than the timestamp).
    pub fn new(size: usize) -> Self {
        Self { pad: "x".repeat(size) }
    }

    /// Appends the JSON string `"t=<stamp>;xxx…"` to `out`.
    pub fn push(&self, out: &mut String, stamp: u64) {
        let start = out.len();
        // Writing into a String cannot fail.
        let _ = write!(out, "\"t={stamp};");
        let written = out.len() - start - 1;
        out.push_str(self.pad.get(written..).unwrap_or_default());
        out.push('"');
    }

    /// The size of a frame's fixed parts plus this content, to size buffers.
    pub fn capacity(&self) -> usize {
        self.pad.len() + 160
    }
}

/// `register` as `agent`.
pub fn register(agent: &str) -> String {
    format!(r#"{{"type":"register","agent_id":"{agent}"}}"#)
}

/// `subscribe` to `topic`: without history, or replaying every stored message after
/// `since`.
pub fn subscribe(topic: &str, since: Option<u64>) -> String {
    match since {
        Some(since) => format!(r#"{{"type":"subscribe","topic":"{topic}","since":{since}}}"#),
        None => format!(r#"{{"type":"subscribe","topic":"{topic}","history":0}}"#),
    }
}

/// A publish to `topic` whose `ref` and content both carry the send time.
pub fn publish(topic: &str, stamp: u64, content: &ContentMaker) -> String {
    let mut out = String::with_capacity(content.capacity() + topic.len());
    let _ = write!(out, r#"{{"type":"send","topic":"{topic}","ref":{stamp},"content":"#);
    content.push(&mut out, stamp);
    out.push('}');
    out
}

/// A direct request to `to_agent` with the idempotency id `id`.
pub fn request(to_agent: &str, id: &str, stamp: u64, content: &ContentMaker) -> String {
    let mut out = String::with_capacity(content.capacity() + to_agent.len() + id.len());
    let _ = write!(out, r#"{{"type":"send","to_agent":"{to_agent}","id":"{id}","content":"#);
    content.push(&mut out, stamp);
    out.push('}');
    out
}

/// A direct reply to `to_agent` answering `in_reply_to`, echoing the request's content
/// (a bench content: no escapes).
pub fn reply(to_agent: &str, in_reply_to: &str, content: &str) -> String {
    format!(r#"{{"type":"send","to_agent":"{to_agent}","in_reply_to":"{in_reply_to}","content":"{content}"}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentbus_protocol::{ClientFrame, ParseLimits};

    const MSG: &str = r#"{"type":"message","topic":"bench.t","id":"e1-2","timestamp":"2026-01-01T00:00:00.000Z","from_agent":"bench-req-a-1","content":"t=123456;xxxx","offset":42}"#;

    #[test]
    fn fields_are_found_without_parsing() {
        assert_eq!(kind(MSG), Kind::Message);
        assert_eq!(stamp(MSG), Some(123_456));
        assert_eq!(message_offset(MSG), Some(42));
        assert_eq!(message_id(MSG), Some("e1-2"));
        assert_eq!(from_agent(MSG), Some("bench-req-a-1"));
        assert_eq!(content(MSG), Some("t=123456;xxxx"));
        let replayed = MSG.replace('}', r#","replay":true}"#);
        assert_eq!(message_offset(&replayed), Some(42));
        assert_eq!(stamp(r#"{"type":"message","topic":"a","content":"x=1","offset":1}"#), None);
        assert_eq!(stamp(r#"{"id":"a=b","content":"t=5;"}"#), Some(5), "an earlier `=` falls back to a search");
        assert_eq!(parse_digits(b"18446744073709551616"), None, "overflow");
        let mut hint = 0;
        assert_eq!(stamp_hinted(MSG, &mut hint), Some(123_456));
        assert!(hint > 0);
        assert_eq!(stamp_hinted(MSG, &mut hint), Some(123_456), "found at the hint");
        let longer = MSG.replace("e1-2", "e1-2345");
        assert_eq!(stamp_hinted(&longer, &mut hint), Some(123_456), "found again when the id grows");
        let ack = r#"{"type":"ack","id":"i","topic":"t","offset":7,"delivered":100,"ref":99}"#;
        assert_eq!(kind(ack), Kind::Ack);
        assert_eq!(u64_after_first(ack, OFFSET_KEY), Some(7));
        assert_eq!(ack_ref(ack), Some(99));
        let err = r#"{"type":"error","code":"slow_consumer","message":"m"}"#;
        assert_eq!((kind(err), error_code(err)), (Kind::Error, "slow_consumer"));
        assert_eq!(kind(r#"{"type":"pong"}"#), Kind::Other);
        assert_eq!(stamp(r#"{"type":"message","content":"hello"}"#), None);
    }

    #[test]
    fn contents_have_the_requested_size() {
        let maker = ContentMaker::new(100);
        let mut out = String::new();
        maker.push(&mut out, 1_234_567_890);
        assert_eq!(out.len(), 102, "100 bytes plus quotes");
        assert!(out.starts_with("\"t=1234567890;x"));
        let mut short = String::new();
        ContentMaker::new(3).push(&mut short, 55);
        assert_eq!(short, "\"t=55;\"");
    }

    #[test]
    fn built_frames_are_valid_protocol_frames() {
        let maker = ContentMaker::new(50);
        let limits = ParseLimits::default();
        for frame in [
            register("bench-a"),
            subscribe("bench.t", None),
            subscribe("bench.t", Some(10)),
            publish("bench.t", 77, &maker),
            request("bench-replier", "r-1-2", 5, &maker),
            reply("bench-req-1", "r-1-2", "t=5;xx"),
        ] {
            assert!(ClientFrame::parse(&frame, &limits).is_ok(), "{frame}");
        }
        let p = publish("bench.t", 77, &maker);
        let (ClientFrame::Send(send), reference) = ClientFrame::parse(&p, &limits).expect("send") else {
            panic!("not a send")
        };
        assert_eq!(send.content.get().len(), 52);
        assert_eq!(reference.map(|r| r.0), Some(serde_json::json!(77)));
    }
}
