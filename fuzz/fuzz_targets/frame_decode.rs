//! Frame decoding never panics, and every accepted `send` encodes to valid JSON that
//! carries its content unchanged.
//!
//! Run: `cargo fuzz run frame_decode` from the repository root (needs cargo-fuzz).

#![no_main]

use agentbus_protocol::{ClientFrame, MessageDraft, ParseLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok((frame, _)) = ClientFrame::parse(text, &ParseLimits::default()) else { return };
    if let ClientFrame::Send(send) = frame {
        let topic = send.destination();
        let frame = MessageDraft::new(&topic, "id", "2026-01-01T00:00:00.000Z", "fuzz", &send).finish(7);
        let value: serde_json::Value = serde_json::from_str(&frame).expect("encoded frames are valid JSON");
        let content: serde_json::Value = serde_json::from_str(send.content.get()).expect("content was valid JSON");
        assert_eq!(value["content"], content);
        assert_eq!(value["offset"], 7);
    }
});
