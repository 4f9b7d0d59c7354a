//! `agentbus send | listen | history | search | agents`: the client library driven from
//! the command line. Each command connects through the transport chain (WebSocket,
//! HTTP, then the local board), says which transport it uses on standard error, and
//! forwards whatever waits on the board as soon as it reaches the server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agentbus::{Client, Event, Message, SubscribeOptions, Transport};
use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use serde_json::Value;

/// How to reach the bus (shared by every client command).
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// The bus: `ws://HOST:PORT` (an `http://` URL means the same server); several
    /// servers of one bus separated by commas are tried in turn.
    #[arg(long, env = "AGENTBUS_URL", default_value = "ws://localhost:3030")]
    pub url: String,
    /// The agent id to speak as [default: cli-<user>].
    #[arg(long = "as", env = "AGENTBUS_AGENT", value_name = "ID")]
    pub agent: Option<String>,
    /// The local board used when no server is reachable [default: $AGENTBUS_BOARD, else
    /// $XDG_DATA_HOME/agentbus/board.db].
    #[arg(long, env = "AGENTBUS_BOARD", value_name = "PATH")]
    pub board: Option<PathBuf>,
}

/// `agentbus send TOPIC TEXT`.
#[derive(Args, Debug, Clone)]
pub struct SendArgs {
    /// The topic (`@AGENT` for a direct message).
    pub topic: String,
    /// The content: sent as JSON when it parses as JSON, else as a string.
    pub text: String,
    /// The addressee, recorded with the message.
    #[arg(long, value_name = "AGENT")]
    pub to: Option<String>,
    /// A message id of your choosing (a resend with the same id is stored once).
    #[arg(long)]
    pub id: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// `agentbus listen TOPIC...`.
#[derive(Args, Debug, Clone)]
pub struct ListenArgs {
    /// The topics to follow.
    #[arg(required = true)]
    pub topics: Vec<String>,
    /// Print one JSON message per line.
    #[arg(long)]
    pub json: bool,
    /// Start with the newest N stored messages of each topic.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub history: u64,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// `agentbus history TOPIC`.
#[derive(Args, Debug, Clone)]
pub struct HistoryArgs {
    /// The topic.
    pub topic: String,
    /// How many of the newest messages.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: u64,
    /// Print one JSON message per line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// `agentbus search QUERY`.
#[derive(Args, Debug, Clone)]
pub struct SearchArgs {
    /// Words to look for (all must occur).
    pub query: String,
    /// Only this topic.
    #[arg(long, value_name = "TOPIC")]
    pub topic: Option<String>,
    /// Print one JSON hit per line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// `agentbus agents`.
#[derive(Args, Debug, Clone)]
pub struct AgentsArgs {
    /// Print the agents as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// `cli-<user>`, keeping only the characters an agent id allows.
fn default_agent() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("USERNAME")).unwrap_or_default();
    let clean: String = user
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/'))
        .take(100)
        .collect();
    if clean.is_empty() { "cli".to_owned() } else { format!("cli-{clean}") }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

async fn connect(conn: &ConnArgs) -> anyhow::Result<Client> {
    let mut builder = crate::bus::builder(&conn.url)
        .agent_id(conn.agent.clone().unwrap_or_else(default_agent))
        .connect_timeout(Duration::from_secs(3))
        .request_timeout(Duration::from_secs(30));
    if let Some(board) = &conn.board {
        builder = builder.board_path(board);
    }
    let client = builder.connect().await.with_context(|| format!("cannot reach {} nor the board", conn.url))?;
    if let Some(t) = client.transport() {
        eprintln!("Using '{t}' transport");
    }
    Ok(client)
}

/// The content as typed: JSON when it parses, else the text itself.
fn content_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `HH:MM:SS` of an RFC 3339 timestamp.
fn clock(timestamp: &str) -> &str {
    timestamp.get(11..19).unwrap_or(timestamp)
}

fn print_message(m: &Message, json: bool, with_topic: bool) {
    if json {
        println!("{}", serde_json::to_string(m).unwrap_or_default());
    } else if with_topic {
        println!("[{}] {} {}: {}", clock(&m.timestamp), m.topic, m.from_agent, content_text(&m.content));
    } else {
        println!("[{}] {}: {}", clock(&m.timestamp), m.from_agent, content_text(&m.content));
    }
}

/// `agentbus send`: publishes once and prints the transport and the offset.
pub fn send(args: SendArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = connect(&args.conn).await?;
        let mut p = client.publish(&args.topic).content(content_of(&args.text));
        if let Some(to) = &args.to {
            p = p.to_agent(to);
        }
        if let Some(id) = &args.id {
            p = p.id(id);
        }
        let ack = p.send().await.context("send failed")?;
        let dup = if ack.duplicate { " (already stored: not stored again)" } else { "" };
        println!("sent via {} to {} at offset {}, id {}{dup}", ack.transport, ack.topic, ack.offset, ack.id);
        if ack.transport == Transport::Board {
            eprintln!("no server reachable: the message waits on the board and is forwarded when one is");
        }
        client.close().await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `agentbus listen`: follows topics until interrupted.
pub fn listen(args: ListenArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = connect(&args.conn).await?;
        let mut subs = Vec::new();
        for topic in &args.topics {
            let options = SubscribeOptions::new().history(args.history);
            subs.push(client.subscribe_with(topic, options).await.with_context(|| format!("cannot follow {topic}"))?);
        }
        eprintln!("Listening to {}", args.topics.join(", "));
        let with_topic = args.topics.len() > 1;
        let mut messages = futures_util::stream::select_all(subs);
        let mut events = client.events();
        let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
        loop {
            tokio::select! {
                m = messages.next() => match m {
                    Some(m) => print_message(&m, args.json, with_topic),
                    None => break,
                },
                Some(e) = events.next() => match e {
                    Event::Disconnected { transport } => eprintln!("lost the '{transport}' transport; reconnecting"),
                    Event::Reconnected { transport } => eprintln!("Using '{transport}' transport"),
                    Event::TransportChanged { from, to } => eprintln!("moved from '{from}' to '{to}'"),
                    Event::Gap { topic, since, offset, .. } => {
                        eprintln!("{topic}: the server could not replay everything after offset {since} (now at {offset})")
                    }
                    Event::SlowConsumer { topic } => eprintln!("{topic}: too slow, messages were dropped"),
                    _ => {}
                },
                _ = &mut interrupted => break,
            }
        }
        client.close().await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `agentbus history`: the newest messages of a topic (from the board without a server).
pub fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = connect(&args.conn).await?;
        let messages = client.history(&args.topic, args.limit).await.context("history failed")?;
        for m in &messages {
            print_message(m, args.json, false);
        }
        client.close().await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `agentbus search`: full-text search (the board's without a server).
pub fn search(args: SearchArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = connect(&args.conn).await?;
        let hits = client.search(&args.query, args.topic.as_deref()).await.context("search failed")?;
        for h in &hits {
            if args.json {
                println!("{}", serde_json::to_string(h).unwrap_or_default());
            } else {
                let m = &h.message;
                println!("[{}] {} #{} {}: {}", clock(&m.timestamp), m.topic, m.offset, m.from_agent, h.snippet);
            }
        }
        if hits.is_empty() && !args.json {
            eprintln!("no match");
        }
        client.close().await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `agentbus agents`: who is online (needs the server).
pub fn agents(args: AgentsArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let client = connect(&args.conn).await?;
        let agents = client.presence().await.context("presence failed")?;
        if args.json {
            println!("{}", serde_json::to_string(&agents).unwrap_or_default());
        } else if agents.is_empty() {
            println!("no agent online");
        } else {
            for a in &agents {
                let caps = if a.capabilities.is_empty() { String::new() } else { a.capabilities.join(",") };
                println!(
                    "{}  connections={}  topics={}  capabilities={}  since={}",
                    a.agent_id,
                    a.connections,
                    a.topics.join(","),
                    caps,
                    a.since
                );
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
    fn text_that_parses_as_json_is_sent_as_json() {
        assert_eq!(content_of("42"), serde_json::json!(42));
        assert_eq!(content_of("{\"a\":1}"), serde_json::json!({"a": 1}));
        assert_eq!(content_of("hello world"), serde_json::json!("hello world"));
        assert_eq!(clock("2026-11-26T06:13:12.541Z"), "06:13:12");
        assert!(default_agent().starts_with("cli"));
    }
}
