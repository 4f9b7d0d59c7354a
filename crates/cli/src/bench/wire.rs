//! Server frames read straight from the socket. A subscriber that takes millions of
//! deliveries a second must not cost more than the server that sends them: after the
//! handshakes it leaves the WebSocket library and parses the frames in its read buffer
//! in place, with no allocation or copy per frame.

/// One frame from the server (servers never mask their frames).
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete text message.
    Text(&'a [u8]),
    /// A ping with its payload, to be answered.
    Ping(&'a [u8]),
    /// The server closes the connection.
    Close,
    /// Anything else (pongs, binary messages): ignored.
    Other,
}

/// The first frame of `buf` and the bytes it takes, or `None` when `buf` holds only
/// part of it. A masked or fragmented frame is an error: agentbus servers send neither.
pub fn next_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, String> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else { return Ok(None) };
    if b1 & 0x80 != 0 {
        return Err("the server sent a masked frame".to_owned());
    }
    let (len, head): (usize, usize) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (usize::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => {
                let len = usize::try_from(u64::from_be_bytes(b)).map_err(|_| "frame too large".to_owned())?;
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (usize::from(n), 2),
    };
    let end = head.checked_add(len).ok_or_else(|| "frame too large".to_owned())?;
    let Some(payload) = buf.get(head..end) else { return Ok(None) };
    if b0 & 0x80 == 0 {
        return Err("the server sent a fragmented message".to_owned());
    }
    let frame = match b0 & 0x0f {
        0x1 => Frame::Text(payload),
        0x8 => Frame::Close,
        0x9 => Frame::Ping(payload),
        _ => Frame::Other,
    };
    Ok(Some((frame, end)))
}

/// A client frame (masked, as clients must) with `opcode` and `payload` of at most 125
/// bytes (control frames). The mask key is zero, which leaves the payload as it is.
fn control(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let payload = payload.get(..125).unwrap_or(payload);
    let mut out = Vec::with_capacity(6 + payload.len());
    out.push(0x80 | opcode);
    out.push(0x80 | payload.len() as u8);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
    out
}

/// The pong answering a ping with `payload`.
pub fn pong(payload: &[u8]) -> Vec<u8> {
    control(0xA, payload)
}

/// A close frame with status 1000 (normal closure).
pub fn close() -> Vec<u8> {
    control(0x8, &1000u16.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as TFrame;

    /// The bytes tungstenite writes for an unmasked text frame of `len` bytes.
    fn server_text(len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        TFrame::message(
            "x".repeat(len),
            tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
                tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
            ),
            true,
        )
        .format(&mut out)
        .expect("format");
        out
    }

    #[test]
    fn every_length_class_parses_and_partial_frames_wait() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 100_000] {
            let bytes = server_text(len);
            let (frame, used) = next_frame(&bytes).expect("valid").expect("complete");
            assert_eq!(used, bytes.len());
            assert_eq!(frame, Frame::Text("x".repeat(len).as_bytes()));
            for cut in [0, 1, 2, 3, 9, bytes.len() - 1] {
                if cut < bytes.len() {
                    assert_eq!(next_frame(&bytes[..cut]), Ok(None), "len {len} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn frames_follow_each_other_in_one_buffer() {
        let mut bytes = server_text(3);
        bytes.extend_from_slice(&[0x89, 0x02, b'h', b'i']);
        bytes.extend_from_slice(&[0x88, 0x02, 0x03, 0xe8]);
        let (first, a) = next_frame(&bytes).expect("ok").expect("text");
        assert_eq!(first, Frame::Text(b"xxx"));
        let (second, b) = next_frame(&bytes[a..]).expect("ok").expect("ping");
        assert_eq!(second, Frame::Ping(b"hi"));
        let (third, c) = next_frame(&bytes[a + b..]).expect("ok").expect("close");
        assert_eq!((third, a + b + c), (Frame::Close, bytes.len()));
    }

    #[test]
    fn masked_or_fragmented_frames_are_errors() {
        assert!(next_frame(&[0x81, 0x81, 0, 0, 0, 0, b'x']).is_err());
        assert!(next_frame(&[0x01, 0x01, b'x']).is_err());
    }

    #[test]
    fn pongs_and_closes_are_masked_client_frames() {
        assert_eq!(pong(b"hi"), vec![0x8A, 0x82, 0, 0, 0, 0, b'h', b'i']);
        assert_eq!(close(), vec![0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]);
        assert_eq!(pong(&[7; 200]).len(), 6 + 125);
    }
}
