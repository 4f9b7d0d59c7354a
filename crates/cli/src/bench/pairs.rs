//! `pairs`: many publisher/subscriber pairs, each pair on its own topic, every
//! publisher pipelining as fast as its window allows: the server's aggregate rate of
//! independent streams.

use std::sync::Arc;

use super::Ctx;
use super::publisher::Pace;
use super::pubsub::{self, TopicPlan};
use super::report::Report;

/// Runs `pairs` pairs.
pub async fn run(ctx: &Arc<Ctx>, report: &mut Report, pairs: usize) -> anyhow::Result<()> {
    report.param("pairs", pairs);
    report.param("window", ctx.window);
    let plans: Vec<TopicPlan> =
        (0..pairs).map(|i| TopicPlan { topic: format!("bench.pairs.{}.{i}", ctx.run), subscribers: 1 }).collect();
    let outcome = pubsub::run(ctx, &plans, Pace::Max).await?;
    pubsub::report(report, &outcome);
    Ok(())
}
