//! `durable`: one publisher pipelining acked sends into a new topic (each ack means the
//! message is committed to the store), then a new connection subscribes with `since`
//! and receives what was stored: the store's write rate and its replay rate.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::Ctx;
use super::conn;
use super::frames::{self, Kind};
use super::publisher::{self, Flow, Pace};
use super::pubsub::show_progress;
use super::report::{Report, round1, round3};
use super::stats::{CpuWindow, rate};

/// How long the replay may pause before the bench stops waiting for the rest.
const REPLAY_STALL: Duration = Duration::from_secs(5);

/// What the replay phase measured.
#[derive(Debug, Default)]
struct Replayed {
    /// The `since` asked for.
    since: u64,
    /// The topic's offset when subscribing: the replay ends there.
    upto: u64,
    /// Messages replayed.
    messages: u64,
    /// Bytes of their frames.
    bytes: u64,
    /// Offsets that did not follow the previous one.
    gaps: u64,
    /// From sending `subscribe` to the last replayed message.
    elapsed: Duration,
    /// The `recovered` flag of the `subscribed` reply, when present.
    recovered: Option<bool>,
}

/// Runs the publish phase, then the replay of (at most) `replay` messages.
pub async fn run(ctx: &Arc<Ctx>, report: &mut Report, replay: u64) -> anyhow::Result<()> {
    report.param("window", ctx.window);
    report.param("replay", replay);
    let topic = format!("bench.durable.{}", ctx.run);
    ctx.progress.phase("connect", 1);
    let ws = conn::open(ctx.target(0), &format!("bench-{}-p0", ctx.run), None).await?;
    let flow = Arc::new(Flow::new(0, ctx.size));
    let spec = publisher::Spec {
        topic: topic.clone(),
        size: ctx.size,
        window: ctx.window,
        pace: Pace::Max,
        stop_at: Instant::now() + ctx.duration,
        min_count: replay,
    };
    let cpu = CpuWindow::start(ctx.server_pid);
    let task = tokio::spawn(publisher::run(ws, spec, ctx.clone(), flow.clone()));
    show_progress(ctx, std::slice::from_ref(&flow), std::slice::from_ref(&task)).await;
    let published = task.await.context("the publisher task failed")?;
    let publish_cpu = cpu.finish();
    let span = match (published.first_send, published.last_ack) {
        (Some(a), Some(b)) => b.saturating_duration_since(a),
        _ => Duration::ZERO,
    };
    report.figure("sent", "publishes sent", published.sent, "");
    report.figure("acked", "publishes acked (stored)", published.acked, "");
    report.figure("acked_per_sec", "acked publishes/s", rate(published.acked, span).round(), "/s");
    report.latency("ack_latency", "publish→ack", &published.ack_latency);
    for (code, n) in &published.errors {
        report.figure(&format!("errors_{code}"), &format!("error frames: {code}"), *n, "");
    }
    if let Some(f) = &published.failure {
        report.note(format!("publisher ended early: {f}"));
    }
    report.cpu("publish", &publish_cpu, Some((published.acked, "publish")));

    let since = published.last_offset.saturating_sub(replay);
    let cpu = CpuWindow::start(ctx.server_pid);
    let replayed = replay_phase(ctx, &topic, since, replay).await?;
    let replay_cpu = cpu.finish();
    report.figure("replay_since", "replay since offset", replayed.since, "");
    report.figure("replay_upto", "replay up to offset", replayed.upto, "");
    report.figure("replayed", "messages replayed", replayed.messages, "");
    report.figure(
        "replay_missing",
        "replay missing",
        replayed.upto.saturating_sub(replayed.since) as i64 - replayed.messages as i64,
        "",
    );
    report.figure("replay_gaps", "replay offset gaps", replayed.gaps, "");
    report.maybe("replay_recovered", "replay recovered (nothing trimmed)", replayed.recovered, "");
    report.figure("replay_secs", "replay time", round3(replayed.elapsed.as_secs_f64()), "s");
    report.figure("replay_per_sec", "replayed messages/s", rate(replayed.messages, replayed.elapsed).round(), "/s");
    let mib = replayed.bytes as f64 / (1024.0 * 1024.0);
    report.figure(
        "replay_mib_per_sec",
        "replay MiB/s",
        round1(mib / replayed.elapsed.as_secs_f64().max(1e-9)),
        "MiB/s",
    );
    report.cpu("replay", &replay_cpu, Some((replayed.messages, "message")));
    Ok(())
}

/// Subscribes a new connection with `since` and reads the replay to its end.
async fn replay_phase(ctx: &Ctx, topic: &str, since: u64, expected: u64) -> anyhow::Result<Replayed> {
    let mut ws = conn::open(ctx.target(0), &format!("bench-{}-r0", ctx.run), None).await?;
    ctx.progress.phase("replay", expected);
    let start = Instant::now();
    ws.send(Message::Text(frames::subscribe(topic, Some(since)).into())).await.context("cannot subscribe")?;
    let mut r = Replayed { since, upto: u64::MAX, ..Replayed::default() };
    let mut last_offset = since;
    let mut last_at = start;
    while last_offset < r.upto {
        let deadline = (Instant::now() + REPLAY_STALL).min(ctx.hard);
        let Ok(first) = tokio::time::timeout_at(deadline, ws.next()).await else { break };
        let mut next = Some(first);
        while let Some(msg) = next {
            let text = match msg {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    ctx.progress.finish();
                    anyhow::bail!("the server closed the replaying connection after {} messages", r.messages);
                }
                Some(Ok(_)) => {
                    next = ws.next().now_or_never();
                    continue;
                }
            };
            on_replay_frame(&text, &mut r, &mut last_offset);
            next = ws.next().now_or_never();
        }
        last_at = Instant::now();
        ctx.progress.set(r.messages, String::new());
    }
    r.elapsed = last_at.duration_since(start);
    if r.upto == u64::MAX {
        r.upto = since;
    }
    conn::close(ws).await;
    ctx.progress.finish();
    Ok(r)
}

/// Counts one frame of the replay.
fn on_replay_frame(text: &str, r: &mut Replayed, last_offset: &mut u64) {
    match frames::kind(text) {
        Kind::Message => {
            r.messages += 1;
            r.bytes += text.len() as u64;
            if let Some(offset) = frames::message_offset(text) {
                if offset != *last_offset + 1 && r.messages > 1 {
                    r.gaps += 1;
                }
                *last_offset = offset;
            }
        }
        Kind::Other if text.starts_with(frames::SUBSCRIBED_PREFIX) => {
            r.upto = frames::u64_after_first(text, frames::OFFSET_KEY).unwrap_or(r.since);
            r.recovered = if text.contains(r#""recovered":true"#) {
                Some(true)
            } else if text.contains(r#""recovered":false"#) {
                Some(false)
            } else {
                None
            };
        }
        _ => {}
    }
}
