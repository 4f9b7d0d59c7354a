//! Server-side WebSocket framing (RFC 6455) that holds no buffer while a connection is
//! idle.
//!
//! A read waits for the socket without any buffer, then reads into a buffer on the
//! stack and keeps only the bytes of an incomplete frame (usually none) in
//! `WsConn::pending`. Outgoing frames are framed by the caller into a buffer of its own
//! ([`push_frame`]) and written in one call. Frames from the client must be masked;
//! fragmented messages are joined; control frames are answered by the caller. Anything
//! else the RFC forbids is a [`WsError::Protocol`].

use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes read from the socket at most per read (a buffer on the stack, not kept).
const READ_CHUNK: usize = 8 * 1024;

/// A frame's opcode (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// A continuation of a fragmented message.
    Continuation = 0x0,
    /// A text message (UTF-8).
    Text = 0x1,
    /// A binary message.
    Binary = 0x2,
    /// The closing handshake.
    Close = 0x8,
    /// A ping, to be answered with a pong.
    Ping = 0x9,
    /// A pong.
    Pong = 0xA,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A text message, validated as UTF-8.
    Text(String),
    /// A binary message (its size only: the bus does not use binary messages).
    Binary(usize),
    /// A ping with its payload.
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// The client's closing frame, with its status code if it gave one.
    Close(Option<u16>),
}

/// Why a connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// A message larger than the limit (close with 1009).
    #[error("a message of {size} bytes is over the limit of {max}")]
    TooLarge {
        /// The size the message would reach.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A text message that is not UTF-8 (close with 1007).
    #[error("a text message is not valid UTF-8")]
    Utf8,
    /// A frame the RFC forbids (close with 1002).
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
}

/// A fragmented message being joined.
#[derive(Debug)]
struct Partial {
    opcode: OpCode,
    payload: Vec<u8>,
}

/// One server-side WebSocket over `S`.
pub struct WsConn<S> {
    io: S,
    /// Received bytes: those before `parsed` are consumed, the rest is the start of an
    /// incomplete frame, if any.
    pending: Vec<u8>,
    /// How much of `pending` is consumed.
    parsed: usize,
    /// A fragmented message, until its final frame (boxed: rare, and kept small while
    /// absent).
    partial: Option<Box<Partial>>,
    /// The largest message accepted, in bytes.
    max_message: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsConn<S> {
    /// A WebSocket over `io`, whose handshake is done, accepting messages of up to
    /// `max_message` bytes.
    pub fn new(io: S, max_message: usize) -> WsConn<S> {
        WsConn { io, pending: Vec::new(), parsed: 0, partial: None, max_message }
    }

    /// Waits for bytes from the client and keeps them; `Ok(0)` when the client closed
    /// the connection. Cancel-safe: nothing is held while waiting.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        self.compact();
        poll_fn(|cx| {
            // Not zeroed: this runs on every wake of the connection's task, and the
            // reader only ever sees the bytes the socket filled.
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut chunk);
            match std::pin::Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let filled = buf.filled();
                    self.pending.extend_from_slice(filled);
                    Poll::Ready(Ok(filled.len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// The next complete message or control frame among the bytes received, if any.
    pub fn next_message(&mut self) -> Result<Option<Incoming>, WsError> {
        loop {
            let Some(frame) = self.take_frame()? else {
                self.compact();
                return Ok(None);
            };
            if let Some(message) = self.on_frame(frame)? {
                return Ok(Some(message));
            }
        }
    }

    /// Writes `bytes` (whole frames) to the socket.
    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await
    }

    /// Drops the consumed bytes; frees the buffer when nothing is left, so an idle
    /// connection holds none.
    fn compact(&mut self) {
        if self.parsed == self.pending.len() {
            self.pending = Vec::new();
        } else {
            self.pending.drain(..self.parsed);
        }
        self.parsed = 0;
    }

    /// Parses one complete frame at the front of what is not consumed, unmasked.
    fn take_frame(&mut self) -> Result<Option<Frame>, WsError> {
        let buf = &self.pending[self.parsed..];
        let Some(header) = parse_header(buf)? else { return Ok(None) };
        if header.opcode.is_control() {
            if !header.fin {
                return Err(WsError::Protocol("fragmented control frame"));
            }
            if header.len > 125 {
                return Err(WsError::Protocol("control frame over 125 bytes"));
            }
        } else {
            let joined = self.partial.as_ref().map_or(0, |p| p.payload.len() as u64);
            let size = joined.saturating_add(header.len);
            if size > self.max_message as u64 {
                return Err(WsError::TooLarge { size, max: self.max_message });
            }
        }
        // Within the limit checked above (or 125 for control frames), so it fits.
        let len = usize::try_from(header.len).map_err(|_| WsError::Protocol("frame length"))?;
        let end = header.size + len;
        if buf.len() < end {
            return Ok(None);
        }
        let mut payload: Vec<u8> = buf[header.size..end].to_vec();
        unmask(&mut payload, header.mask);
        self.parsed += end;
        Ok(Some(Frame { fin: header.fin, opcode: header.opcode, payload }))
    }

    /// Joins fragments; returns a message when one is complete.
    fn on_frame(&mut self, frame: Frame) -> Result<Option<Incoming>, WsError> {
        let (opcode, payload) = match frame.opcode {
            OpCode::Ping => return Ok(Some(Incoming::Ping(frame.payload))),
            OpCode::Pong => return Ok(Some(Incoming::Pong)),
            OpCode::Close => return close_frame(&frame.payload).map(Some),
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Err(WsError::Protocol("a new message inside a fragmented one"));
                }
                if !frame.fin {
                    self.partial = Some(Box::new(Partial { opcode: frame.opcode, payload: frame.payload }));
                    return Ok(None);
                }
                (frame.opcode, frame.payload)
            }
            OpCode::Continuation => {
                let Some(partial) = self.partial.as_mut() else {
                    return Err(WsError::Protocol("a continuation frame outside a fragmented message"));
                };
                partial.payload.extend_from_slice(&frame.payload);
                if !frame.fin {
                    return Ok(None);
                }
                let Some(done) = self.partial.take() else { return Ok(None) };
                (done.opcode, done.payload)
            }
        };
        Ok(Some(match opcode {
            OpCode::Text => Incoming::Text(String::from_utf8(payload).map_err(|_| WsError::Utf8)?),
            _ => Incoming::Binary(payload.len()),
        }))
    }
}

/// A frame, unmasked.
struct Frame {
    fin: bool,
    opcode: OpCode,
    payload: Vec<u8>,
}

/// A frame header.
struct Header {
    fin: bool,
    opcode: OpCode,
    mask: [u8; 4],
    /// The payload length.
    len: u64,
    /// The header's own length.
    size: usize,
}

/// Parses a client frame's header, if all of it has arrived.
fn parse_header(buf: &[u8]) -> Result<Option<Header>, WsError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set without an extension"));
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(WsError::Protocol("unknown opcode"))?;
    if b1 & 0x80 == 0 {
        return Err(WsError::Protocol("unmasked frame from a client"));
    }
    let (len, at) = match b1 & 0x7F {
        126 => {
            let Some(bytes) = buf.get(2..4) else { return Ok(None) };
            (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4)
        }
        127 => {
            let Some(bytes) = buf.get(2..10) else { return Ok(None) };
            let mut be = [0u8; 8];
            be.copy_from_slice(bytes);
            let len = u64::from_be_bytes(be);
            if len >> 63 != 0 {
                return Err(WsError::Protocol("frame length with its top bit set"));
            }
            (len, 10)
        }
        short => (u64::from(short), 2),
    };
    let Some(mask) = buf.get(at..at + 4) else { return Ok(None) };
    Ok(Some(Header { fin: b0 & 0x80 != 0, opcode, mask: [mask[0], mask[1], mask[2], mask[3]], len, size: at + 4 }))
}

/// Applies (or removes) a frame's mask.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Reads a closing frame's payload: nothing, or a status code and a UTF-8 reason.
fn close_frame(payload: &[u8]) -> Result<Incoming, WsError> {
    match payload {
        [] => Ok(Incoming::Close(None)),
        [_] => Err(WsError::Protocol("closing frame with a one-byte payload")),
        [hi, lo, reason @ ..] => {
            std::str::from_utf8(reason).map_err(|_| WsError::Utf8)?;
            Ok(Incoming::Close(Some(u16::from_be_bytes([*hi, *lo]))))
        }
    }
}

/// Appends an unmasked, unfragmented server frame holding `payload` to `out`.
pub fn push_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let len = payload.len();
    out.reserve(len + 10);
    out.push(0x80 | opcode as u8);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// A closing frame with `code` and `reason` (at most 123 bytes of it).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        unmask(&mut body, mask);
        out.extend_from_slice(&body);
        out
    }

    fn conn(bytes: &[u8], max: usize) -> WsConn<tokio::io::DuplexStream> {
        let (io, _other) = tokio::io::duplex(64);
        let mut c = WsConn::new(io, max);
        c.pending.extend_from_slice(bytes);
        c
    }

    fn all(c: &mut WsConn<tokio::io::DuplexStream>) -> Result<Vec<Incoming>, WsError> {
        let mut v = Vec::new();
        while let Some(m) = c.next_message()? {
            v.push(m);
        }
        Ok(v)
    }

    #[test]
    fn frames_of_every_length_class_arrive_whole_even_byte_by_byte() {
        for len in [0, 5, 125, 126, 1000, 65_535, 65_536, 70_000] {
            let text = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let bytes = client_frame(true, 1, text.as_bytes());
            let mut c = conn(&[], 1 << 20);
            let step = if len > 1000 { 997 } else { 1 };
            for piece in bytes.chunks(step) {
                assert_eq!(c.next_message().unwrap(), None);
                c.pending.extend_from_slice(piece);
            }
            assert_eq!(all(&mut c).unwrap(), vec![Incoming::Text(text)], "length {len}");
            assert_eq!(c.pending.capacity(), 0, "nothing held once parsed");
        }
    }

    #[test]
    fn fragments_are_joined_around_control_frames() {
        let mut bytes = client_frame(false, 1, b"hel");
        bytes.extend(client_frame(true, 9, b"p"));
        bytes.extend(client_frame(false, 0, b"lo "));
        bytes.extend(client_frame(true, 0, b"world"));
        bytes.extend(client_frame(true, 2, &[1, 2, 3]));
        bytes.extend(client_frame(true, 10, b""));
        bytes.extend(client_frame(true, 8, &close_payload(1000, "bye")));
        let got = all(&mut conn(&bytes, 100)).unwrap();
        assert_eq!(
            got,
            vec![
                Incoming::Ping(b"p".to_vec()),
                Incoming::Text("hello world".into()),
                Incoming::Binary(3),
                Incoming::Pong,
                Incoming::Close(Some(1000)),
            ]
        );
    }

    #[test]
    fn oversized_messages_are_refused_from_their_header() {
        let header_only = &client_frame(true, 1, &vec![b'a'; 5000])[..8];
        assert!(matches!(all(&mut conn(header_only, 4096)), Err(WsError::TooLarge { size: 5000, max: 4096 })));
        let mut fragments = client_frame(false, 1, &[b'a'; 3000]);
        fragments.extend(client_frame(true, 0, &[b'a'; 3000]));
        assert!(matches!(all(&mut conn(&fragments, 4096)), Err(WsError::TooLarge { size: 6000, .. })));
    }

    #[test]
    fn protocol_violations_are_refused() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                { client_frame(true, 1, b"x") }
                    .iter()
                    .enumerate()
                    .map(|(i, b)| if i == 1 { b & 0x7F } else { *b })
                    .collect(),
                "unmasked",
            ),
            (vec![0x81 | 0x40, 0x80, 0, 0, 0, 0], "reserved"),
            (client_frame(true, 3, b""), "opcode"),
            (client_frame(false, 9, b""), "fragmented control"),
            (client_frame(true, 9, &[0; 126]), "over 125"),
            (client_frame(true, 0, b"x"), "continuation"),
            ([client_frame(false, 1, b"a"), client_frame(true, 1, b"b")].concat(), "inside"),
            (client_frame(true, 8, &[3]), "one-byte"),
        ];
        for (bytes, what) in cases {
            match all(&mut conn(&bytes, 1000)) {
                Err(WsError::Protocol(msg)) => assert!(msg.contains(what), "{what}: {msg}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert!(matches!(all(&mut conn(&client_frame(true, 1, &[0xff, 0xfe]), 100)), Err(WsError::Utf8)));
        let close = [&1000u16.to_be_bytes()[..], &[0xff]].concat();
        assert!(matches!(all(&mut conn(&client_frame(true, 8, &close), 100)), Err(WsError::Utf8)));
    }

    #[test]
    fn server_frames_match_tungstenite() {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame as TFrame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode as TOp};
        for len in [0, 1, 125, 126, 65_535, 65_536, 100_000] {
            let payload = "x".repeat(len);
            let mut ours = Vec::new();
            push_frame(&mut ours, OpCode::Text, payload.as_bytes());
            let mut theirs = Vec::new();
            TFrame::message(payload.clone(), TOp::Data(Data::Text), true).format(&mut theirs).expect("format");
            assert_eq!(ours, theirs, "payload of {len} bytes");
        }
        assert_eq!(close_payload(1001, &"é".repeat(100)).len(), 2 + 122);
    }

    #[tokio::test]
    async fn reads_keep_nothing_between_messages() {
        let (io, mut client) = tokio::io::duplex(1 << 16);
        let mut c = WsConn::new(io, 1000);
        client.write_all(&client_frame(true, 1, b"{\"type\":\"ping\"}")).await.unwrap();
        assert!(c.fill().await.unwrap() > 0);
        assert_eq!(c.next_message().unwrap(), Some(Incoming::Text("{\"type\":\"ping\"}".into())));
        assert_eq!(c.next_message().unwrap(), None);
        assert_eq!(c.pending.capacity(), 0);
        drop(client);
        assert_eq!(c.fill().await.unwrap(), 0);
    }
}
