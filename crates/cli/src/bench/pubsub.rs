//! The publish/subscribe engine behind `fanout`, `rate` and `pairs`: for each topic one
//! publisher and some subscribers; subscribers are connected and subscribed before the
//! first send, publishers run for the duration, then the bench waits (bounded) for the
//! deliveries still on their way and counts what is missing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::conn::{self, Ws};
use super::publisher::{self, Flow, Pace};
use super::report::{Report, round3, short_rate};
use super::stats::{CpuUse, CpuWindow, Latency, rate};
use super::{Ctx, subscriber};

/// Connections opened at the same time while setting up.
pub const CONNECT_PARALLEL: usize = 64;

/// After the publishers stop, how long deliveries may stall before the missing ones are
/// counted as lost.
const DRAIN_STALL: Duration = Duration::from_secs(2);

/// One topic of the run.
#[derive(Debug, Clone)]
pub struct TopicPlan {
    /// The topic.
    pub topic: String,
    /// Its subscribers.
    pub subscribers: usize,
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    /// One per topic.
    pub publishers: Vec<publisher::Outcome>,
    /// Every subscriber.
    pub subscribers: Vec<subscriber::Outcome>,
    /// Deliveries that should have arrived: each acked message times its topic's subscribers.
    pub expected: u64,
    /// Time to connect and subscribe everyone.
    pub setup: Duration,
    /// CPU over the publishing and draining.
    pub cpu: CpuUse,
}

/// Opens `n` connections as `<prefix><i>`, subscribed to `topic` when given, the `i`-th
/// to the server `ctx.target(i + shift)`.
async fn open_many(
    ctx: &Ctx,
    prefix: &str,
    topics: &[Option<String>],
    shift: usize,
    done: &mut u64,
) -> anyhow::Result<Vec<Ws>> {
    let opening = futures_util::stream::iter(topics.iter().enumerate())
        .map(|(i, topic)| async move {
            let agent = format!("{prefix}{i}");
            conn::open(ctx.target(i + shift), &agent, topic.as_deref())
                .await
                .with_context(|| format!("connection {agent}"))
        })
        .buffered(CONNECT_PARALLEL);
    futures_util::pin_mut!(opening);
    let mut out = Vec::with_capacity(topics.len());
    while let Some(ws) = opening.try_next().await? {
        out.push(ws);
        *done += 1;
        if (*done).is_multiple_of(16) {
            ctx.progress.set(*done, String::new());
        }
    }
    Ok(out)
}

/// Runs the plan with publishers paced by `pace`.
pub async fn run(ctx: &Arc<Ctx>, plans: &[TopicPlan], pace: Pace) -> anyhow::Result<Outcome> {
    let setup_start = Instant::now();
    let sub_topics: Vec<Option<String>> =
        plans.iter().flat_map(|p| std::iter::repeat_n(Some(p.topic.clone()), p.subscribers)).collect();
    ctx.progress.phase("connect", (sub_topics.len() + plans.len()) as u64);
    let mut done = 0;
    let subs = open_many(ctx, &format!("bench-{}-s", ctx.run), &sub_topics, 0, &mut done).await?;
    let pubs = open_many(ctx, &format!("bench-{}-p", ctx.run), &vec![None; plans.len()], 1, &mut done).await?;
    let setup = setup_start.elapsed();

    let flows: Vec<Arc<Flow>> = plans.iter().map(|p| Arc::new(Flow::new(p.subscribers as u64, ctx.size))).collect();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sub_flows = flows.iter().zip(plans).flat_map(|(f, p)| std::iter::repeat_n(f.clone(), p.subscribers));
    let sub_tasks: Vec<JoinHandle<subscriber::Outcome>> = subs
        .into_iter()
        .zip(sub_flows.by_ref())
        .map(|(ws, flow)| tokio::spawn(subscriber::run(ws, ctx.clone(), flow, stop_rx.clone())))
        .collect();

    let cpu = CpuWindow::start(ctx.server_pid);
    let stop_at = Instant::now() + ctx.duration;
    let pub_tasks: Vec<JoinHandle<publisher::Outcome>> = pubs
        .into_iter()
        .zip(plans.iter().zip(&flows))
        .map(|(ws, (plan, flow))| {
            let spec = publisher::Spec {
                topic: plan.topic.clone(),
                size: ctx.size,
                window: ctx.window,
                pace,
                stop_at,
                min_count: 0,
            };
            tokio::spawn(publisher::run(ws, spec, ctx.clone(), flow.clone()))
        })
        .collect();

    show_progress(ctx, &flows, &pub_tasks).await;
    let mut publishers = Vec::with_capacity(pub_tasks.len());
    for t in pub_tasks {
        publishers.push(t.await.context("a publisher task failed")?);
    }
    let expected: u64 = publishers.iter().zip(plans).map(|(p, plan)| p.acked * plan.subscribers as u64).sum();
    drain(ctx, &flows, expected).await;
    let cpu = cpu.finish();
    let _ = stop_tx.send(true);
    let mut subscribers = Vec::with_capacity(sub_tasks.len());
    for t in sub_tasks {
        subscribers.push(t.await.context("a subscriber task failed")?);
    }
    ctx.progress.finish();
    Ok(Outcome { publishers, subscribers, expected, setup, cpu })
}

/// Updates the progress bar until every publisher has finished.
pub async fn show_progress(ctx: &Ctx, flows: &[Arc<Flow>], tasks: &[JoinHandle<publisher::Outcome>]) {
    ctx.progress.timed("publish", ctx.duration);
    let start = Instant::now();
    let total = |f: fn(&Flow) -> u64| flows.iter().map(|x| f(x)).sum::<u64>();
    let (mut last_acked, mut last_received, mut last) = (0, 0, start);
    while !tasks.iter().all(JoinHandle::is_finished) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Instant::now();
        let acked = total(|f| f.acked.load(Ordering::Relaxed));
        let received = total(|f| f.received.load(Ordering::Relaxed));
        let dt = now.duration_since(last);
        let msg = format!(
            "acked {}  deliveries {}",
            short_rate(rate(acked - last_acked, dt)),
            short_rate(rate(received.saturating_sub(last_received), dt))
        );
        ctx.progress.set(now.duration_since(start).as_millis() as u64, msg);
        (last_acked, last_received, last) = (acked, received, now);
    }
}

/// Waits until every expected delivery arrived, deliveries stall for [`DRAIN_STALL`],
/// or the hard deadline.
async fn drain(ctx: &Ctx, flows: &[Arc<Flow>], expected: u64) {
    let received = || flows.iter().map(|f| f.received.load(Ordering::Relaxed)).sum::<u64>();
    let (mut seen, mut since) = (received(), Instant::now());
    loop {
        let now = Instant::now();
        let got = received();
        if got >= expected || now >= ctx.hard || now.duration_since(since) >= DRAIN_STALL {
            return;
        }
        if got != seen {
            (seen, since) = (got, now);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Adds the figures of a publish/subscribe run to `report`.
pub fn report(report: &mut Report, o: &Outcome) {
    let first_send = o.publishers.iter().filter_map(|p| p.first_send).min();
    let last_ack = o.publishers.iter().filter_map(|p| p.last_ack).max();
    let last_receive = o.subscribers.iter().filter_map(|s| s.last_receive).max();
    let span = |end: Option<Instant>| match (first_send, end) {
        (Some(a), Some(b)) => b.saturating_duration_since(a),
        _ => Duration::ZERO,
    };
    let sent: u64 = o.publishers.iter().map(|p| p.sent).sum();
    let acked: u64 = o.publishers.iter().map(|p| p.acked).sum();
    let received: u64 = o.subscribers.iter().map(|s| s.received).sum();
    let gaps: u64 = o.subscribers.iter().map(|s| s.gaps).sum();
    report.figure("setup_secs", "connect + subscribe time", round3(o.setup.as_secs_f64()), "s");
    report.figure("sent", "publishes sent", sent, "");
    report.figure("acked", "publishes acked", acked, "");
    report.figure("acked_per_sec", "acked publishes/s", rate(acked, span(last_ack)).round(), "/s");
    report.figure("deliveries", "deliveries received", received, "");
    report.figure("expected_deliveries", "deliveries expected", o.expected, "");
    report.figure("loss", "loss (expected − received)", o.expected as i64 - received as i64, "");
    report.figure("deliveries_per_sec", "deliveries/s", rate(received, span(last_receive)).round(), "/s");
    report.figure("offset_gaps", "offset gaps seen", gaps, "");
    let waits = |f: fn(&publisher::Outcome) -> u64| o.publishers.iter().map(f).sum::<u64>();
    report.figure("window_full_waits", "publisher waits: window full", waits(|p| p.window_waits), "");
    report.figure("lag_waits", "publisher waits: subscribers behind", waits(|p| p.lag_waits), "");
    let mut latency = Latency::new();
    for s in &o.subscribers {
        latency.merge(&s.latency);
    }
    report.latency("latency", "publish→deliver", &latency);
    let mut ack_latency = Latency::new();
    for p in &o.publishers {
        ack_latency.merge(&p.ack_latency);
    }
    report.latency("ack_latency", "publish→ack", &ack_latency);
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for (code, n) in o.publishers.iter().flat_map(|p| &p.errors).chain(o.subscribers.iter().flat_map(|s| &s.errors)) {
        *errors.entry(code).or_default() += n;
    }
    for (code, n) in errors {
        report.figure(&format!("errors_{code}"), &format!("error frames: {code}"), n, "");
    }
    let failed: Vec<&String> = o
        .publishers
        .iter()
        .filter_map(|p| p.failure.as_ref())
        .chain(o.subscribers.iter().filter_map(|s| s.failure.as_ref()))
        .collect();
    report.figure("failed_connections", "connections that ended early", failed.len(), "");
    if let Some(first) = failed.first() {
        report.note(format!("first early end: {first}"));
    }
    report.cpu("", &o.cpu, Some((received, "delivery")));
}
