//! A pipelining publisher: a writer task keeps up to `window` sends in flight (a
//! semaphore of permits) and a reader task returns a permit per ack. Each send carries
//! its send time in `ref` (echoed by the ack: the ack latency) and in the content (read
//! by subscribers: the delivery latency).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::Ctx;
use super::conn::Ws;
use super::frames::{self, ContentMaker, Kind};
use super::stats::Latency;

/// Sends written before one flush.
const WRITE_BATCH: usize = 256;

/// How long a publisher waits for its last acks once it stops sending.
const ACK_DRAIN: Duration = Duration::from_secs(10);

/// How a publisher paces its sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as the window of acks allows.
    Max,
    /// This many messages per second (the window still bounds what is in flight).
    Rate(u64),
}

/// Counts shared between the publisher of a topic, its subscribers and the progress
/// display. Subscribers add what they received; the publisher holds back when they
/// fall too far behind (see [`Flow::lagging`]).
#[derive(Debug, Default)]
pub struct Flow {
    /// Messages sent to the topic.
    pub sent: AtomicU64,
    /// Acks received.
    pub acked: AtomicU64,
    /// Deliveries received by all the topic's subscribers together.
    pub received: AtomicU64,
    /// Subscribers of the topic.
    pub subscribers: u64,
    /// Messages a subscriber may be behind on average before the publisher waits.
    pub max_lag: u64,
}

impl Flow {
    /// A flow for `subscribers` subscribers of messages with `size`-byte contents. The
    /// allowed lag is about 1 MiB of frames per subscriber, a quarter of the server's
    /// default outbox: the publisher measures the pipeline's sustained rate instead of
    /// getting its subscribers closed as slow consumers.
    pub fn new(subscribers: u64, size: usize) -> Self {
        let max_lag = ((1024 * 1024) / (size as u64 + 250)).max(64);
        Self { subscribers, max_lag, ..Self::default() }
    }

    /// Whether the subscribers are more than `max_lag` messages behind on average.
    pub fn lagging(&self) -> bool {
        if self.subscribers == 0 {
            return false;
        }
        let expected = self.sent.load(Ordering::Relaxed) * self.subscribers;
        let received = self.received.load(Ordering::Relaxed);
        expected.saturating_sub(received) > self.max_lag * self.subscribers
    }
}

/// What one publisher should do.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The topic to publish to.
    pub topic: String,
    /// Content size in bytes.
    pub size: usize,
    /// Most sends in flight (sent, not yet acked).
    pub window: usize,
    /// Pacing.
    pub pace: Pace,
    /// Stop sending at this time …
    pub stop_at: Instant,
    /// … but not before this many sends (then the hard deadline still applies).
    pub min_count: u64,
}

/// What a publisher saw.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Sends written.
    pub sent: u64,
    /// Acks received.
    pub acked: u64,
    /// Error frames received, by code.
    pub errors: BTreeMap<String, u64>,
    /// Send → ack latency.
    pub ack_latency: Latency,
    /// The highest offset acked.
    pub last_offset: u64,
    /// When the first send was written.
    pub first_send: Option<Instant>,
    /// When the last ack arrived.
    pub last_ack: Option<Instant>,
    /// Why the connection ended early, if it did.
    pub failure: Option<String>,
    /// Times the writer paused because subscribers were too far behind.
    pub lag_waits: u64,
    /// Times the writer found the window full and waited for an ack.
    pub window_waits: u64,
}

/// Publishes on `ws` as `spec` says, counting into `flow`.
pub async fn run(ws: Ws, spec: Spec, ctx: Arc<Ctx>, flow: Arc<Flow>) -> Outcome {
    let (sink, stream) = ws.split();
    let window = Arc::new(Semaphore::new(spec.window));
    let (stop_tx, stop_rx) = oneshot::channel();
    let reader = tokio::spawn(read_acks(stream, window.clone(), ctx.clone(), flow.clone(), stop_rx));
    let mut writer = Writer {
        sink,
        spec,
        ctx,
        flow,
        window,
        sent: 0,
        first_send: None,
        failure: None,
        lag_waits: 0,
        window_waits: 0,
    };
    writer.send_all().await;
    writer.wait_for_acks().await;
    let _ = stop_tx.send(());
    let mut outcome = match reader.await {
        Ok(o) => o,
        Err(e) => Outcome { failure: Some(format!("ack reader failed: {e}")), ..Outcome::default() },
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.sink.close()).await;
    outcome.sent = writer.sent;
    outcome.first_send = writer.first_send;
    outcome.lag_waits = writer.lag_waits;
    outcome.window_waits = writer.window_waits;
    if outcome.failure.is_none() {
        outcome.failure = writer.failure;
    }
    outcome
}

/// The sending half.
struct Writer {
    sink: SplitSink<Ws, Message>,
    spec: Spec,
    ctx: Arc<Ctx>,
    flow: Arc<Flow>,
    window: Arc<Semaphore>,
    sent: u64,
    first_send: Option<Instant>,
    failure: Option<String>,
    lag_waits: u64,
    window_waits: u64,
}

impl Writer {
    /// Whether to stop sending: the time is up and enough was sent, or the hard
    /// deadline has come.
    fn done(&self, now: Instant) -> bool {
        (now >= self.spec.stop_at && self.sent >= self.spec.min_count) || now >= self.ctx.hard
    }

    /// Sends until [`Writer::done`], a closed connection or a failed write.
    async fn send_all(&mut self) {
        let content = ContentMaker::new(self.spec.size);
        let start = Instant::now();
        loop {
            let now = Instant::now();
            if self.done(now) || self.failure.is_some() {
                break;
            }
            let batch = match self.spec.pace {
                Pace::Max => {
                    if self.flow.lagging() {
                        self.lag_waits += 1;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    WRITE_BATCH
                }
                Pace::Rate(rate) => {
                    let due = (now.duration_since(start).as_secs_f64() * rate as f64) as u64;
                    if due <= self.sent {
                        let next = start + Duration::from_secs_f64((self.sent + 1) as f64 / rate as f64);
                        tokio::time::sleep_until(next.min(self.spec.stop_at)).await;
                        continue;
                    }
                    (due - self.sent).min(WRITE_BATCH as u64) as usize
                }
            };
            if !self.send_batch(batch, &content).await {
                break;
            }
        }
        if self.failure.is_none()
            && let Err(e) = self.sink.flush().await
        {
            self.failure = Some(format!("flush failed: {e}"));
        }
    }

    /// Writes up to `batch` sends (the first waits for a permit, the rest only take
    /// free ones) and flushes. False when the connection is gone.
    async fn send_batch(&mut self, batch: usize, content: &ContentMaker) -> bool {
        let acquired = match self.window.try_acquire() {
            Ok(permit) => Ok(Ok(permit)),
            Err(_) => {
                self.window_waits += 1;
                tokio::time::timeout_at(self.ctx.hard, self.window.acquire()).await
            }
        };
        match acquired {
            Ok(Ok(permit)) => permit.forget(),
            // Closed: the reader ended (connection lost); or the hard deadline came.
            _ => return false,
        }
        let mut n = 0;
        loop {
            let frame = frames::publish(&self.spec.topic, self.ctx.now_ns(), content);
            if let Err(e) = self.sink.feed(Message::Text(frame.into())).await {
                self.failure = Some(format!("send failed: {e}"));
                return false;
            }
            if self.first_send.is_none() {
                self.first_send = Some(Instant::now());
            }
            n += 1;
            if n >= batch {
                break;
            }
            match self.window.try_acquire() {
                Ok(permit) => permit.forget(),
                Err(_) => break,
            }
        }
        self.sent += n as u64;
        self.flow.sent.fetch_add(n as u64, Ordering::Relaxed);
        if let Err(e) = self.sink.flush().await {
            self.failure = Some(format!("flush failed: {e}"));
            return false;
        }
        true
    }

    /// Waits until every send is acked (all permits are back), for a bounded time.
    async fn wait_for_acks(&self) {
        let until = (Instant::now() + ACK_DRAIN).min(self.ctx.hard);
        let all = u32::try_from(self.spec.window).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout_at(until, self.window.acquire_many(all)).await;
    }
}

/// Reads acks until told to stop or the connection ends, returning a permit per ack or
/// error.
async fn read_acks(
    mut stream: SplitStream<Ws>,
    window: Arc<Semaphore>,
    ctx: Arc<Ctx>,
    flow: Arc<Flow>,
    mut stop: oneshot::Receiver<()>,
) -> Outcome {
    let mut out = Outcome::default();
    loop {
        let first = tokio::select! {
            biased;
            msg = stream.next() => msg,
            _ = &mut stop => break,
        };
        let mut returned = 0usize;
        let acked_before = out.acked;
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Some(Ok(Message::Text(text))) => returned += on_text(&text, &ctx, &mut out),
                Some(Ok(Message::Close(close))) => {
                    out.failure = Some(format!("the server closed the publisher: {close:?}"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => out.failure = Some(format!("publisher connection failed: {e}")),
                None => out.failure = Some("the server closed the publisher".to_owned()),
            }
            if out.failure.is_some() {
                break;
            }
            next = stream.next().now_or_never();
        }
        flow.acked.fetch_add(out.acked - acked_before, Ordering::Relaxed);
        window.add_permits(returned);
        if out.failure.is_some() {
            // Wakes a writer waiting for a permit that will never come.
            window.close();
            break;
        }
    }
    out
}

/// Handles one frame; returns the permits it gives back.
fn on_text(text: &str, ctx: &Ctx, out: &mut Outcome) -> usize {
    match frames::kind(text) {
        Kind::Ack => {
            out.acked += 1;
            let now = Instant::now();
            out.last_ack = Some(now);
            if let Some(sent) = frames::ack_ref(text) {
                out.ack_latency.record_ns(ctx.ns_at(now).saturating_sub(sent));
            }
            if let Some(offset) = frames::u64_after_first(text, frames::OFFSET_KEY) {
                out.last_offset = out.last_offset.max(offset);
            }
            1
        }
        Kind::Error => {
            *out.errors.entry(frames::error_code(text).to_owned()).or_default() += 1;
            1
        }
        Kind::Message | Kind::Other => 0,
    }
}
