//! `request`: round trips through the server. One connection registers as
//! `bench-replier`; each requester registers under its own id and sends direct
//! messages `{"type":"send","to_agent":"bench-replier","id":…}`; the replier answers
//! each with a direct message back to the sender, `in_reply_to` the request id and the
//! request's content (its send time) echoed. A requester keeps `--inflight` requests
//! outstanding, so what is in flight is bounded by requesters × inflight.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::Ctx;
use super::conn::{self, Ws};
use super::frames::{self, ContentMaker, Kind};
use super::pubsub::CONNECT_PARALLEL;
use super::report::{Report, round3, short_rate};
use super::stats::{CpuWindow, Latency, rate};

/// The replying agent's id.
pub const REPLIER: &str = "bench-replier";

/// How long requesters wait for their last replies after the duration.
const REPLY_DRAIN: Duration = Duration::from_secs(10);

/// What a requester saw.
#[derive(Debug, Default)]
struct Requested {
    sent: u64,
    completed: u64,
    latency: Latency,
    first_send: Option<Instant>,
    last_reply: Option<Instant>,
    errors: BTreeMap<String, u64>,
    failure: Option<String>,
}

/// Runs `requesters` requesters against one replier.
pub async fn run(ctx: &Arc<Ctx>, report: &mut Report, requesters: usize, inflight: usize) -> anyhow::Result<()> {
    report.param("requesters", requesters);
    report.param("inflight", inflight);
    let setup_start = Instant::now();
    ctx.progress.phase("connect", requesters as u64 + 1);
    let replier_ws = conn::open(ctx.target(0), REPLIER, None).await.context("the replier")?;
    let conns = futures_util::stream::iter(0..requesters)
        .map(|i| async move { conn::open(ctx.target(i + 1), &requester_id(ctx, i), None).await })
        .buffered(CONNECT_PARALLEL)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<Ws>>>()?;
    let setup = setup_start.elapsed();

    let (stop_tx, stop_rx) = watch::channel(false);
    let answered = Arc::new(AtomicU64::new(0));
    let replier = tokio::spawn(reply_loop(replier_ws, ctx.clone(), answered.clone(), stop_rx));
    let cpu = CpuWindow::start(ctx.server_pid);
    let stop_at = Instant::now() + ctx.duration;
    let completed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<JoinHandle<Requested>> = conns
        .into_iter()
        .enumerate()
        .map(|(i, ws)| tokio::spawn(request_loop(ws, ctx.clone(), i, inflight, stop_at, completed.clone())))
        .collect();
    progress(ctx, &completed, &tasks).await;
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.context("a requester task failed")?);
    }
    let cpu = cpu.finish();
    let _ = stop_tx.send(true);
    let replier_failure = replier.await.context("the replier task failed")?;
    ctx.progress.finish();

    let sum = |f: fn(&Requested) -> u64| results.iter().map(f).sum::<u64>();
    let (sent, done) = (sum(|r| r.sent), sum(|r| r.completed));
    let first = results.iter().filter_map(|r| r.first_send).min();
    let last = results.iter().filter_map(|r| r.last_reply).max();
    let span = match (first, last) {
        (Some(a), Some(b)) => b.saturating_duration_since(a),
        _ => Duration::ZERO,
    };
    let mut latency = Latency::new();
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for r in &results {
        latency.merge(&r.latency);
        for (code, n) in &r.errors {
            *errors.entry(code).or_default() += n;
        }
    }
    report.figure("setup_secs", "connect + register time", round3(setup.as_secs_f64()), "s");
    report.figure("requests", "requests sent", sent, "");
    report.figure("replies", "replies received", done, "");
    report.figure("unanswered", "requests unanswered", sent - done.min(sent), "");
    report.figure("answered_by_replier", "requests the replier answered", answered.load(Ordering::Relaxed), "");
    report.figure("round_trips_per_sec", "round trips/s", rate(done, span).round(), "/s");
    report.latency("latency", "round trip", &latency);
    for (code, n) in errors {
        report.figure(&format!("errors_{code}"), &format!("error frames: {code}"), n, "");
    }
    let failures: Vec<&String> =
        results.iter().filter_map(|r| r.failure.as_ref()).chain(replier_failure.as_ref()).collect();
    report.figure("failed_connections", "connections that ended early", failures.len(), "");
    if let Some(f) = failures.first() {
        report.note(format!("first early end: {f}"));
    }
    report.cpu("", &cpu, Some((done, "round_trip")));
    Ok(())
}

/// The agent id of requester `i`.
fn requester_id(ctx: &Ctx, i: usize) -> String {
    format!("bench-{}-q{i}", ctx.run)
}

/// The prefix of this run's request ids (the replier answers only those: its inbox may
/// replay requests left over by an earlier run).
fn request_prefix(ctx: &Ctx) -> String {
    format!("req-{}-", ctx.run)
}

/// Shows round trips per second until every requester is done.
async fn progress(ctx: &Ctx, completed: &AtomicU64, tasks: &[JoinHandle<Requested>]) {
    ctx.progress.timed("request", ctx.duration);
    let start = Instant::now();
    let (mut last_done, mut last) = (0, start);
    while !tasks.iter().all(JoinHandle::is_finished) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        let done = completed.load(Ordering::Relaxed);
        let msg = format!("round trips {}", short_rate(rate(done - last_done, now.duration_since(last))));
        ctx.progress.set(now.duration_since(start).as_millis() as u64, msg);
        (last_done, last) = (done, now);
    }
}

/// One requester: keeps `inflight` requests outstanding until `stop_at`, then waits
/// (bounded) for the replies still due.
async fn request_loop(
    mut ws: Ws,
    ctx: Arc<Ctx>,
    index: usize,
    inflight: usize,
    stop_at: Instant,
    completed: Arc<AtomicU64>,
) -> Requested {
    let content = ContentMaker::new(ctx.size);
    let id_prefix = format!("{}{index}-", request_prefix(&ctx));
    let mut r = Requested::default();
    let mut outstanding = 0usize;
    let drain_until = (stop_at + REPLY_DRAIN).min(ctx.hard);
    loop {
        let now = Instant::now();
        if now < stop_at && outstanding < inflight {
            while outstanding < inflight {
                let id = format!("{id_prefix}{}", r.sent);
                let frame = frames::request(REPLIER, &id, ctx.now_ns(), &content);
                if let Err(e) = ws.feed(Message::Text(frame.into())).await {
                    r.failure = Some(format!("request failed: {e}"));
                    return r;
                }
                r.first_send.get_or_insert(now);
                r.sent += 1;
                outstanding += 1;
            }
            if let Err(e) = ws.flush().await {
                r.failure = Some(format!("request failed: {e}"));
                return r;
            }
        }
        if outstanding == 0 {
            break;
        }
        let until = if now < stop_at { ctx.hard } else { drain_until };
        let Ok(first) = tokio::time::timeout_at(until, ws.next()).await else { break };
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Some(Ok(Message::Text(text))) => match frames::kind(&text) {
                    Kind::Message => {
                        let now = Instant::now();
                        if let Some(sent) = frames::stamp(&text) {
                            r.latency.record_ns(ctx.ns_at(now).saturating_sub(sent));
                        }
                        r.completed += 1;
                        r.last_reply = Some(now);
                        completed.fetch_add(1, Ordering::Relaxed);
                        outstanding = outstanding.saturating_sub(1);
                    }
                    Kind::Error => {
                        *r.errors.entry(frames::error_code(&text).to_owned()).or_default() += 1;
                        outstanding = outstanding.saturating_sub(1);
                    }
                    Kind::Ack | Kind::Other => {}
                },
                Some(Ok(Message::Close(close))) => r.failure = Some(format!("closed by the server: {close:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => r.failure = Some(format!("connection failed: {e}")),
                None => r.failure = Some("closed by the server".to_owned()),
            }
            if r.failure.is_some() {
                return r;
            }
            next = ws.next().now_or_never();
        }
    }
    conn::close(ws).await;
    r
}

/// The replier: answers every request of this run with a direct message back, in
/// batches (read what is ready, write every reply, flush once). Returns why it ended
/// early, if it did.
async fn reply_loop(
    mut ws: Ws,
    ctx: Arc<Ctx>,
    answered: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Option<String> {
    let prefix = request_prefix(&ctx);
    let hard = tokio::time::sleep_until(ctx.hard);
    tokio::pin!(hard);
    let mut replies: Vec<String> = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            msg = ws.next() => msg,
            _ = stop.wait_for(|s| *s) => break,
            _ = &mut hard => break,
        };
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Some(Ok(Message::Text(text))) => {
                    if let Some(reply) = answer(&text, &prefix) {
                        replies.push(reply);
                    }
                }
                Some(Ok(Message::Close(close))) => return Some(format!("replier closed by the server: {close:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Some(format!("replier connection failed: {e}")),
                None => return Some("replier closed by the server".to_owned()),
            }
            next = ws.next().now_or_never();
        }
        answered.fetch_add(replies.len() as u64, Ordering::Relaxed);
        for reply in replies.drain(..) {
            if let Err(e) = ws.feed(Message::Text(reply.into())).await {
                return Some(format!("reply failed: {e}"));
            }
        }
        if let Err(e) = ws.flush().await {
            return Some(format!("reply failed: {e}"));
        }
    }
    conn::close(ws).await;
    None
}

/// The reply to a request of this run, or `None` for any other frame.
fn answer(text: &str, prefix: &str) -> Option<String> {
    if frames::kind(text) != Kind::Message {
        return None;
    }
    let id = frames::message_id(text)?;
    if !id.starts_with(prefix) {
        return None;
    }
    let from = frames::from_agent(text)?;
    let content = frames::content(text)?;
    Some(frames::reply(from, id, content))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replier_answers_only_this_runs_requests() {
        let req = r#"{"type":"message","topic":"@bench-replier","id":"req-ab-3-7","timestamp":"2026-01-01T00:00:00.000Z","from_agent":"bench-ab-q3","to_agent":"bench-replier","content":"t=99;xx","offset":5}"#;
        let reply = answer(req, "req-ab-").expect("a reply");
        assert_eq!(reply, r#"{"type":"send","to_agent":"bench-ab-q3","in_reply_to":"req-ab-3-7","content":"t=99;xx"}"#);
        assert_eq!(answer(req, "req-cd-"), None);
        assert_eq!(answer(r#"{"type":"ack","id":"req-ab-1"}"#, "req-ab-"), None);
    }
}
