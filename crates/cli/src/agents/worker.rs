//! `agentbus worker`: the smallest useful agent, a word counter.
//!
//! It answers every direct message in its inbox `@<id>` with a reply to the sender's
//! inbox (`to_agent` = the sender, `in_reply_to` = the message id), for example
//! `3 words, 15 characters`. With the orchestrator this makes routing visible end to
//! end: chat → orchestrator → worker → orchestrator → chat.
//!
//! To write your own worker, copy this file and change [`work`] and [`CAPABILITIES`].

use std::process::ExitCode;

use agentbus::Message;
use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;

use super::{BusArgs, connect, log, runtime};
use crate::chat::content_text;
use crate::signals::shutdown_signal;

/// What this agent tells others it can do.
pub const CAPABILITIES: [&str; 1] = ["count-words"];

/// `agentbus worker`.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub bus: BusArgs,
    /// The agent id to work as (its inbox is `@ID`).
    #[arg(long = "as", value_name = "ID", default_value = "word-counter")]
    pub agent: String,
}

// ----- the logic -----

/// The work: `3 words, 15 characters`.
pub fn work(text: &str) -> String {
    fn plural(n: usize, what: &str) -> String {
        if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
    }
    let words = text.split_whitespace().count();
    let characters = text.chars().count();
    format!("{}, {}", plural(words, "word"), plural(characters, "character"))
}

/// Whether to answer `m`: not our own messages, not answers (so that two workers never
/// answer each other forever).
pub fn should_answer(m: &Message, me: &str) -> bool {
    m.from_agent != me && m.in_reply_to.is_none()
}

// ----- the wiring -----

/// `agentbus worker`: answers its inbox until Ctrl-C or SIGTERM.
pub fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = connect(&args.bus, &args.agent, &CAPABILITIES).await?;
        // The inbox: direct messages, including those that came while we were away.
        let inbox = format!("@{}", args.agent);
        let mut requests = client.subscribe(&inbox).await.with_context(|| format!("cannot follow {inbox}"))?;
        let mut stop = std::pin::pin!(shutdown_signal());
        println!("{} is listening on its inbox '{inbox}' (capabilities: {})", args.agent, CAPABILITIES.join(", "));
        loop {
            tokio::select! {
                m = requests.next() => {
                    let Some(m) = m else { break };
                    if !should_answer(&m, &args.agent) {
                        continue;
                    }
                    let result = work(&content_text(&m.content));
                    // `reply` to an inbox message goes to the sender's inbox, with
                    // `to_agent` and `in_reply_to` set.
                    match client.reply(&m, result.as_str()).await {
                        Ok(_) => log(&format!("{} (message {}): {result}", m.from_agent, m.id)),
                        Err(e) => log(&format!("{} (message {}): cannot answer: {e}", m.from_agent, m.id)),
                    }
                }
                _ = &mut stop => break,
            }
        }
        client.close().await?;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_and_characters() {
        assert_eq!(work("hello big world"), "3 words, 15 characters");
        assert_eq!(work("hi"), "1 word, 2 characters");
        assert_eq!(work(""), "0 words, 0 characters");
        assert_eq!(work("  é  "), "1 word, 5 characters");
    }
}
