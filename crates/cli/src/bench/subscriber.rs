//! A subscriber: reads `message` frames until told to stop, computing each one's
//! publish → deliver latency from the timestamp in its content and checking that
//! offsets follow each other, without parsing the JSON. Frames are parsed in the read
//! buffer ([`super::wire`]): the WebSocket library's per-frame work made the bench,
//! not the server, the limit of `fanout`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Ctx;
use super::conn::Ws;
use super::frames::{self, Kind};
use super::publisher::Flow;
use super::stats::Latency;
use super::wire::{self, Frame};

/// Frames handled before the shared counters are updated, at most.
const COUNT_BATCH: u64 = 256;

/// Messages of one read that share a clock reading: frames of one read arrived
/// together, and reading the clock for each costs as much as scanning the frame.
const CLOCK_REUSE: u32 = 16;

/// What a subscriber saw.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Messages received.
    pub received: u64,
    /// Messages whose offset was not the previous one plus one.
    pub gaps: u64,
    /// Publish → deliver latency.
    pub latency: Latency,
    /// When the last message arrived.
    pub last_receive: Option<Instant>,
    /// Error frames received, by code (`slow_consumer` among them).
    pub errors: BTreeMap<String, u64>,
    /// Why the connection ended early, if it did.
    pub failure: Option<String>,
}

/// Per-connection reading state.
struct Reader {
    out: Outcome,
    last_offset: Option<u64>,
    unreported: u64,
    clock: Instant,
    clock_uses: u32,
    stamp_hint: usize,
}

impl Reader {
    /// The time now, read afresh after [`CLOCK_REUSE`] uses or a [`Reader::wake`].
    fn now(&mut self) -> Instant {
        if self.clock_uses >= CLOCK_REUSE {
            self.clock = Instant::now();
            self.clock_uses = 0;
        }
        self.clock_uses += 1;
        self.clock
    }

    /// New frames arrived after a wait: the next message reads the clock.
    fn wake(&mut self) {
        self.clock_uses = CLOCK_REUSE;
    }

    fn on_text(&mut self, text: &str, ctx: &Ctx) {
        match frames::kind(text) {
            Kind::Message => {
                let now = self.now();
                if let Some(sent) = frames::stamp_hinted(text, &mut self.stamp_hint) {
                    self.out.latency.record_ns(ctx.ns_at(now).saturating_sub(sent));
                }
                if let Some(offset) = frames::message_offset(text) {
                    if self.last_offset.is_some_and(|last| offset != last + 1) {
                        self.out.gaps += 1;
                    }
                    self.last_offset = Some(offset);
                }
                self.out.received += 1;
                self.out.last_receive = Some(now);
                self.unreported += 1;
            }
            Kind::Error => *self.out.errors.entry(frames::error_code(text).to_owned()).or_default() += 1,
            Kind::Ack | Kind::Other => {}
        }
    }

    fn report(&mut self, flow: &Flow) {
        if self.unreported > 0 {
            flow.received.fetch_add(self.unreported, Ordering::Relaxed);
            self.unreported = 0;
        }
    }
}

/// Bytes read from the socket at once (the buffer grows for a larger frame).
const READ_CHUNK: usize = 64 * 1024;

/// Reads `ws` until `stop` turns true, the connection ends or the hard deadline.
pub async fn run(ws: Ws, ctx: Arc<Ctx>, flow: Arc<Flow>, mut stop: watch::Receiver<bool>) -> Outcome {
    let mut r = Reader {
        out: Outcome::default(),
        last_offset: None,
        unreported: 0,
        clock: Instant::now(),
        clock_uses: CLOCK_REUSE,
        stamp_hint: 0,
    };
    // Nothing is sent to the topic before every subscriber is in, so the library holds
    // no unread frame when the socket is taken back from it.
    let mut tcp = ws.into_inner();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut filled = 0;
    let hard = tokio::time::sleep_until(ctx.hard);
    tokio::pin!(hard);
    loop {
        if buf.len() - filled < READ_CHUNK / 4 {
            buf.resize(buf.len() + READ_CHUNK, 0);
        }
        let read = tokio::select! {
            biased;
            read = tcp.read(&mut buf[filled..]) => read,
            _ = stop.wait_for(|s| *s) => break,
            _ = &mut hard => break,
        };
        match read {
            Ok(0) => r.out.failure = Some("closed by the server".to_owned()),
            Ok(n) => filled += n,
            Err(e) => r.out.failure = Some(format!("connection failed: {e}")),
        }
        r.wake();
        let mut at = 0;
        while r.out.failure.is_none() {
            let Some(rest) = buf.get(at..filled) else { break };
            match wire::next_frame(rest) {
                Ok(Some((frame, used))) => {
                    match frame {
                        Frame::Text(payload) => match std::str::from_utf8(payload) {
                            Ok(text) => r.on_text(text, &ctx),
                            Err(_) => r.out.failure = Some("a text frame is not UTF-8".to_owned()),
                        },
                        Frame::Ping(payload) => {
                            if let Err(e) = tcp.write_all(&wire::pong(payload)).await {
                                r.out.failure = Some(format!("connection failed: {e}"));
                            }
                        }
                        Frame::Close => r.out.failure = Some("closed by the server".to_owned()),
                        Frame::Other => {}
                    }
                    at += used;
                }
                Ok(None) => break,
                Err(e) => r.out.failure = Some(e),
            }
            if r.unreported >= COUNT_BATCH {
                r.report(&flow);
            }
        }
        buf.copy_within(at..filled, 0);
        filled -= at;
        if buf.len() > READ_CHUNK && filled < READ_CHUNK / 2 {
            buf.truncate(READ_CHUNK);
        }
        r.report(&flow);
        if r.out.failure.is_some() {
            return r.out;
        }
    }
    // Polite and short: the server learns the connection is gone either way.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), tcp.write_all(&wire::close())).await;
    r.out
}
