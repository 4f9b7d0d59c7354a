//! `agentbus orchestrator`: the example agent people talk to from `agentbus chat`.
//!
//! Copy this file to start a real agent. It is in two parts:
//!
//! 1. **The logic** ([`intent`], [`introduction`], [`agent_list`], [`should_answer`]):
//!    small pure functions that decide what to answer. Replace them with yours (call
//!    a model, a tool, a database...).
//! 2. **The wiring** ([`run`], [`answer`]): connect with capabilities, follow the
//!    topic, answer each message with `in_reply_to` set to its id, route `@agent`
//!    requests to other agents' inboxes with [`Client::request`]. Keep it as it is.
//!
//! What it answers, on its topic:
//! - `@AGENT some text`: asks AGENT (a request to its inbox `@AGENT`) and relays the
//!   answer, or says that none came in time.
//! - `agents`: who is online, with their capabilities.
//! - anything else: an introduction of itself and of the agents online.
//!
//! Deterministic: no model is needed.

use std::collections::{HashSet, VecDeque};
use std::process::ExitCode;
use std::time::Duration;

use agentbus::{AgentPresence, Client, ErrorKind, Message};
use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;

use super::{BusArgs, connect, log, runtime};
use crate::chat::content_text;
use crate::signals::shutdown_signal;

/// What this agent tells others it can do (shown by `agentbus agents` and `/who`).
pub const CAPABILITIES: [&str; 3] = ["orchestrate", "route", "introduce"];

/// `agentbus orchestrator`.
#[derive(Args, Debug, Clone)]
pub struct OrchestratorArgs {
    #[command(flatten)]
    pub bus: BusArgs,
    /// The agent id to answer as.
    #[arg(long = "as", value_name = "ID", default_value = "orchestrator-agent")]
    pub agent: String,
    /// The topic to answer on.
    #[arg(long, value_name = "TOPIC", default_value = "orchestrator")]
    pub topic: String,
    /// How long to wait for an agent's answer to a routed request, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 20)]
    pub timeout: u64,
}

// ----- the logic: what to answer -----

/// What a message asks of the orchestrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// `@AGENT text`: ask AGENT and relay its answer.
    Route {
        /// The agent to ask.
        agent: String,
        /// What to ask it.
        text: String,
    },
    /// `agents`: list who is online.
    ListAgents,
    /// Anything else: introduce ourselves and the others.
    Introduce,
}

/// Reads what `text` asks. `me` is this agent's id (`@me text` is read as `text`).
pub fn intent(text: &str, me: &str) -> Intent {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('@') {
        let (agent, body) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if agent == me {
            return intent(body, me);
        }
        if !agent.is_empty() {
            return Intent::Route { agent: agent.to_owned(), text: body.trim().to_owned() };
        }
    }
    match text.to_ascii_lowercase().as_str() {
        "agents" | "/agents" | "who" | "/who" => Intent::ListAgents,
        _ => Intent::Introduce,
    }
}

/// `word-counter (count-words)`.
fn describe(agent: &AgentPresence) -> String {
    if agent.capabilities.is_empty() {
        agent.agent_id.clone()
    } else {
        format!("{} ({})", agent.agent_id, agent.capabilities.join(", "))
    }
}

/// The answer to `agents`.
pub fn agent_list(agents: &[AgentPresence]) -> String {
    if agents.is_empty() {
        return "No agent is online.".to_owned();
    }
    let list: Vec<String> = agents.iter().map(describe).collect();
    format!("Agents online: {}.", list.join("; "))
}

/// The default answer: who we are and who else is online.
pub fn introduction(me: &str, agents: &[AgentPresence]) -> String {
    let others: Vec<String> = agents.iter().filter(|a| a.agent_id != me).map(describe).collect();
    let who = if others.is_empty() {
        "No other agent is online yet.".to_owned()
    } else {
        format!("Agents online: {}.", others.join("; "))
    };
    format!(
        "I am the Orchestrator Agent ({me}). I route requests to the agents on the bus. {who} \
         Write `@AGENT your request` to ask one of them, or `agents` to list who is online."
    )
}

/// Whether to answer `m`: not our own messages (they come back on the topic), and not
/// answers (messages with `in_reply_to`), so that two agents never answer each other
/// forever.
pub fn should_answer(m: &Message, me: &str) -> bool {
    m.from_agent != me && m.in_reply_to.is_none()
}

// ----- the wiring -----

/// `agentbus orchestrator`: answers on its topic until Ctrl-C or SIGTERM.
pub fn run(args: OrchestratorArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = connect(&args.bus, &args.agent, &CAPABILITIES).await?;
        // Live messages only: history from before the start is not answered again.
        // (Across reconnects the client recovers what was missed, each message once.)
        let mut messages =
            client.subscribe(&args.topic).await.with_context(|| format!("cannot follow topic '{}'", args.topic))?;
        let mut stop = std::pin::pin!(shutdown_signal());
        println!("{} is listening on topic '{}' (capabilities: {})", args.agent, args.topic, CAPABILITIES.join(", "));
        let timeout = Duration::from_secs(args.timeout.max(1));
        let mut answered = Answered::default();
        loop {
            tokio::select! {
                m = messages.next() => {
                    let Some(m) = m else { break };
                    if should_answer(&m, &args.agent) && answered.first_time(&m.id) {
                        // One task per message: a slow routed request never holds up the others.
                        tokio::spawn(answer(client.clone(), m, timeout));
                    }
                }
                _ = &mut stop => break,
            }
        }
        client.close().await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Answers one message on its topic, with `in_reply_to` set to its id.
async fn answer(client: Client, m: Message, timeout: Duration) {
    let me = client.agent_id().to_owned();
    let text = content_text(&m.content);
    let intent = intent(&text, &me);
    let reply = match &intent {
        Intent::Route { agent, text } => route(&client, agent, text, timeout).await,
        Intent::ListAgents => agent_list(&online(&client).await),
        Intent::Introduce => introduction(&me, &online(&client).await),
    };
    let what = match &intent {
        Intent::Route { agent, .. } => format!("routed to {agent}"),
        Intent::ListAgents => "listed the agents".to_owned(),
        Intent::Introduce => "introduced".to_owned(),
    };
    match client.reply(&m, reply).await {
        Ok(_) => log(&format!("{} on '{}' (message {}): {what}", m.from_agent, m.topic, m.id)),
        Err(e) => log(&format!("{} on '{}' (message {}): cannot answer: {e}", m.from_agent, m.topic, m.id)),
    }
}

/// The agents online (none when presence is unavailable, on the local board).
async fn online(client: &Client) -> Vec<AgentPresence> {
    client.presence().await.unwrap_or_default()
}

/// Asks `agent` in its inbox and returns what to relay: its answer, or why there is none.
async fn route(client: &Client, agent: &str, text: &str, timeout: Duration) -> String {
    if text.is_empty() {
        return format!("What should I ask {agent}? Write `@{agent} your request`.");
    }
    // Presence is a courtesy: without it (on the board) the request is sent anyway.
    if let Ok(agents) = client.presence().await
        && !agents.iter().any(|a| a.agent_id == agent)
    {
        return format!("{agent} is not online. {}", agent_list(&agents));
    }
    match client.request(&format!("@{agent}"), text, timeout).await {
        Ok(answer) => format!("{agent} answered: {}", content_text(&answer.content)),
        Err(e) if *e.kind() == ErrorKind::Timeout => {
            format!("{agent} did not answer within {}s.", timeout.as_secs())
        }
        Err(e) => format!("Could not ask {agent}: {e}"),
    }
}

/// The ids of the messages answered lately, so none is answered twice.
#[derive(Debug, Default)]
struct Answered {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Answered {
    fn first_time(&mut self, id: &str) -> bool {
        if !self.ids.insert(id.to_owned()) {
            return false;
        }
        self.order.push_back(id.to_owned());
        if self.order.len() > 4096
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, caps: &[&str]) -> AgentPresence {
        AgentPresence {
            agent_id: id.to_owned(),
            connections: 1,
            topics: vec![],
            capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
            since: "2026-01-01T00:00:00Z".to_owned(),
        }
    }

    #[test]
    fn intents() {
        let me = "orchestrator-agent";
        assert_eq!(
            intent("@word-counter hello big world", me),
            Intent::Route { agent: "word-counter".into(), text: "hello big world".into() }
        );
        assert_eq!(intent("  @coder  ", me), Intent::Route { agent: "coder".into(), text: String::new() });
        assert_eq!(intent("agents", me), Intent::ListAgents);
        assert_eq!(intent("@orchestrator-agent agents", me), Intent::ListAgents);
        assert_eq!(intent("Hello, orchestrator!", me), Intent::Introduce);
        assert_eq!(intent("@", me), Intent::Introduce);
    }

    #[test]
    fn answers_name_the_agents_and_their_capabilities() {
        let agents = [agent("orchestrator-agent", &CAPABILITIES), agent("word-counter", &["count-words"])];
        let intro = introduction("orchestrator-agent", &agents);
        assert!(intro.starts_with("I am the Orchestrator Agent"), "{intro}");
        assert!(intro.contains("word-counter (count-words)"), "{intro}");
        assert!(!intro.contains("orchestrator-agent (orchestrate"), "{intro}");
        assert_eq!(
            agent_list(&agents),
            "Agents online: orchestrator-agent (orchestrate, route, introduce); word-counter (count-words)."
        );
        assert_eq!(agent_list(&[]), "No agent is online.");
    }

    #[test]
    fn answers_neither_itself_nor_answers() {
        let m = |from: &str, irt: Option<&str>| -> Message {
            serde_json::from_value(serde_json::json!({
                "topic": "orchestrator", "id": "m", "offset": 1, "timestamp": "2026-01-01T00:00:00Z",
                "from_agent": from, "content": "hi", "in_reply_to": irt,
            }))
            .expect("a valid message")
        };
        assert!(should_answer(&m("dashboard-ui", None), "orchestrator-agent"));
        assert!(!should_answer(&m("orchestrator-agent", None), "orchestrator-agent"));
        assert!(!should_answer(&m("other-bot", Some("x")), "orchestrator-agent"));
        let mut answered = Answered::default();
        assert!(answered.first_time("a"));
        assert!(!answered.first_time("a"));
    }
}
