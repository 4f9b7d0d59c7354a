//! `fanout` and `rate`: one publisher and many subscribers of one topic. `fanout`
//! publishes as fast as its window of acks (and its subscribers) allow: the figures are
//! the sustained delivery rate, and its latencies are those of a saturated pipeline.
//! `rate` publishes at a fixed rate: its latencies are those of a server with headroom.

use std::sync::Arc;

use super::Ctx;
use super::publisher::Pace;
use super::pubsub::{self, TopicPlan};
use super::report::Report;

/// Runs the scenario with `subscribers` subscribers and the publisher paced by `pace`.
pub async fn run(ctx: &Arc<Ctx>, report: &mut Report, subscribers: usize, pace: Pace) -> anyhow::Result<()> {
    report.param("subscribers", subscribers);
    report.param("publishers", 1);
    report.param("window", ctx.window);
    if let Pace::Rate(rate) = pace {
        report.param("rate", rate);
    }
    let plan = [TopicPlan { topic: format!("bench.fanout.{}", ctx.run), subscribers }];
    let outcome = pubsub::run(ctx, &plan, pace).await?;
    pubsub::report(report, &outcome);
    Ok(())
}
