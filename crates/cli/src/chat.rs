//! `agentbus chat`: the interactive chat of the original system, for people.
//!
//! In a terminal it is a line editor (rustyline) with history: messages of the topic
//! are printed above the prompt as they arrive, without garbling what is being typed
//! (rustyline's external printer, driven from a thread of its own). With standard
//! input piped it sends each line, prints incoming messages one per line and exits at
//! the end of the input once the replies arrived (or after a short grace period).
//!
//! Threads: the async loop ([`Chat::run`]) owns the client and all state; a reader
//! thread runs `readline` and hands each line over, then waits for the next prompt (so
//! a command's output comes before the next prompt); a printer thread owns the
//! external printer (its `print` may block while the editor is busy).

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agentbus::{Client, Event, Message, Subscription, Transport};
use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How many messages `/refresh` and the start-up show.
const RECENT: u64 = 10;
/// With piped input: how long to wait at the end of the input for the replies.
const GRACE: Duration = Duration::from_secs(5);
/// Message ids remembered to print each message once.
const SEEN_CAPACITY: usize = 4096;

const HELP: &str = "\
 Commands:
   /help            this help
   /quit            leave the chat (Ctrl-D and Ctrl-C too)
   /refresh         show the topic's recent messages again
   /who             the agents online and what they can do
   /topic NAME      talk on another topic (/topic alone shows the current one)
   /to AGENT        send to AGENT's inbox from now on (/to alone: back to the topic)
   /history [N]     the newest N messages of the topic (default 10)
   /search WORDS    full-text search over stored messages
 Anything else is sent as a message.";

/// `agentbus chat`.
#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    /// The bus: `ws://HOST:PORT` (an `http://` URL means the same server); several
    /// servers of one bus separated by commas are tried in turn.
    #[arg(long, env = "AGENTBUS_URL", default_value = "ws://localhost:3030")]
    pub url: String,
    /// The agent id to chat as.
    #[arg(long = "as", value_name = "ID", default_value = "dashboard-ui")]
    pub agent: String,
    /// The topic to talk on.
    #[arg(long, value_name = "TOPIC", default_value = "orchestrator")]
    pub topic: String,
    /// The local board used when no server is reachable [default: $AGENTBUS_BOARD, else
    /// $XDG_DATA_HOME/agentbus/board.db].
    #[arg(long, env = "AGENTBUS_BOARD", value_name = "PATH")]
    pub board: Option<PathBuf>,
    /// How long to wait for a response to a message before saying so, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub reply_timeout: u64,
}

// ----- formatting (shared with the example agents) -----

/// The content as text: a JSON string as itself, anything else as compact JSON.
pub(crate) fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `HH:MM:SS` in local time of an RFC 3339 timestamp (its UTC time if it does not parse).
pub(crate) fn local_clock(timestamp: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(timestamp) {
        Ok(t) => t.with_timezone(&chrono::Local).format("%H:%M:%S").to_string(),
        Err(_) => timestamp.get(11..19).unwrap_or(timestamp).to_owned(),
    }
}

/// `HH:MM:SS` now, in local time.
pub(crate) fn now_clock() -> String {
    chrono::Local::now().format("%H:%M:%S").to_string()
}

/// Control characters (escape sequences above all) of other agents' text, made
/// harmless for the terminal. Newlines and tabs stay.
fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() && c != '\n' && c != '\t' { '\u{fffd}' } else { c }).collect()
}

/// `[HH:MM:SS] from_agent: content`; a direct message (to an inbox) says so.
pub(crate) fn message_line(m: &Message) -> String {
    let direct = if m.topic.starts_with('@') { " (direct)" } else { "" };
    format!(
        "[{}] {}{direct}: {}",
        local_clock(&m.timestamp),
        printable(&m.from_agent),
        printable(&content_text(&m.content))
    )
}

/// A fresh message id, chosen here so that the echo of a send is recognised even when
/// it arrives before the acknowledgement.
fn new_id() -> String {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("chat-{millis:x}-{:016x}", fastrand::u64(..))
}

// ----- commands -----

/// A line starting with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    Help,
    Quit,
    Refresh,
    Who,
    Topic(Option<String>),
    To(Option<String>),
    History(Result<u64, String>),
    Search(String),
    Unknown(String),
}

/// The command on `line`, or `None` when it is a message.
fn parse_command(line: &str) -> Option<Command> {
    let line = line.trim();
    let rest = line.strip_prefix('/')?;
    let (name, arg) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let arg = arg.trim();
    let word = (!arg.is_empty()).then(|| arg.to_owned());
    Some(match name {
        "help" | "h" | "?" => Command::Help,
        "quit" | "q" | "exit" => Command::Quit,
        "refresh" | "r" => Command::Refresh,
        "who" | "agents" => Command::Who,
        "topic" => Command::Topic(word),
        "to" => Command::To(word),
        "history" => {
            Command::History(if arg.is_empty() { Ok(RECENT) } else { arg.parse().map_err(|_| arg.to_owned()) })
        }
        "search" => Command::Search(arg.to_owned()),
        _ => Command::Unknown(name.to_owned()),
    })
}

// ----- state -----

/// The ids of the messages already printed (bounded: the oldest are forgotten).
#[derive(Debug, Default)]
struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// Whether `id` is new (and remembers it).
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= SEEN_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

/// The messages sent that still wait for a response, oldest first.
#[derive(Debug, Default)]
struct Waiting {
    pending: VecDeque<(String, Instant)>,
}

impl Waiting {
    fn add(&mut self, id: String, deadline: Instant) {
        self.pending.push_back((id, deadline));
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether `m` answers a message sent: it says so with `in_reply_to`, or (without
    /// `in_reply_to`) another agent spoke, which answers the oldest one.
    fn answered_by(&mut self, m: &Message, me: &str) -> bool {
        match &m.in_reply_to {
            Some(irt) => match self.pending.iter().position(|(id, _)| id == irt) {
                Some(i) => self.pending.remove(i).is_some(),
                None => false,
            },
            None if m.from_agent != me => self.pending.pop_front().is_some(),
            None => false,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|(_, d)| *d).min()
    }

    /// Forgets (and counts) those whose deadline passed.
    fn expire(&mut self, now: Instant) -> usize {
        let before = self.pending.len();
        self.pending.retain(|(_, d)| *d > now);
        before - self.pending.len()
    }
}

// ----- output -----

/// Where lines go.
#[derive(Debug, Clone)]
enum Out {
    /// Through rustyline's external printer, above the prompt (printer thread).
    Prompt(std::sync::mpsc::Sender<Print>),
    /// Plain lines on standard output; notes (status) on standard error when
    /// `notes_to_stderr` (piped input), else on standard output too.
    Plain { notes_to_stderr: bool },
}

impl Out {
    /// A line of the conversation (messages, command output).
    fn say(&self, text: impl Into<String>) {
        let mut text = text.into();
        match self {
            Self::Prompt(tx) => {
                text.push('\n');
                let _ = tx.send(Print::Text(text));
            }
            Self::Plain { .. } => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
        }
    }

    /// Waits until everything said so far is printed (before showing the prompt again,
    /// so that a command's output comes before it).
    async fn flush(&self) {
        if let Self::Prompt(tx) = self {
            let (done, wait) = tokio::sync::oneshot::channel();
            if tx.send(Print::Flush(done)).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(1), wait).await;
            }
        }
    }

    /// A status line (transport, waiting, timeouts).
    fn note(&self, text: impl Into<String>) {
        match self {
            Self::Plain { notes_to_stderr: true } => eprintln!("{}", text.into()),
            _ => self.say(text),
        }
    }
}

/// What the printer thread is asked to do.
#[derive(Debug)]
enum Print {
    Text(String),
    /// Say when everything before is printed.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Starts the printer thread: every text sent is printed above the prompt.
fn spawn_printer(
    mut printer: impl ExternalPrinter + Send + 'static,
) -> (std::sync::mpsc::Sender<Print>, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel::<Print>();
    let handle = std::thread::spawn(move || {
        for job in rx {
            match job {
                Print::Text(text) => {
                    if printer.print(text).is_err() {
                        break;
                    }
                }
                Print::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    });
    (tx, handle)
}

// ----- input -----

/// What the person did.
#[derive(Debug)]
enum Input {
    Line(String),
    /// Ctrl-C.
    Interrupted,
    /// Ctrl-D or the end of piped input.
    Eof,
    Failed(String),
}

/// Starts the reader thread: for each prompt received it reads one line and sends it.
fn spawn_reader(mut editor: DefaultEditor, prompts: std::sync::mpsc::Receiver<String>, inputs: mpsc::Sender<Input>) {
    std::thread::spawn(move || {
        while let Ok(prompt) = prompts.recv() {
            let input = match editor.readline(&prompt) {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                    }
                    Input::Line(line)
                }
                Err(ReadlineError::Interrupted) => Input::Interrupted,
                Err(ReadlineError::Eof) => Input::Eof,
                Err(e) => Input::Failed(e.to_string()),
            };
            if inputs.blocking_send(input).is_err() {
                break;
            }
        }
    });
}

/// Reads piped standard input line by line (on a thread: reading stdin blocks).
fn spawn_stdin(inputs: mpsc::Sender<Input>) {
    std::thread::spawn(move || {
        let mut lines = std::io::stdin().lock().lines();
        loop {
            let input = match lines.next() {
                Some(Ok(line)) => Input::Line(line),
                None => Input::Eof,
                Some(Err(e)) => Input::Failed(e.to_string()),
            };
            let last = !matches!(input, Input::Line(_));
            if inputs.blocking_send(input).is_err() || last {
                break;
            }
        }
    });
}

// ----- the chat -----

enum Flow {
    Continue,
    Quit,
}

struct Chat {
    client: Client,
    me: String,
    topic: String,
    topic_sub: Subscription,
    inbox: Subscription,
    /// `/to AGENT`: messages go to that agent's inbox.
    to: Option<String>,
    seen: Seen,
    waiting: Waiting,
    reply_timeout: Duration,
    /// A person at a terminal (prompt, banner, `Waiting for response`).
    interactive: bool,
    out: Out,
}

impl Chat {
    fn prompt(&self) -> String {
        match &self.to {
            Some(agent) => format!("[{} → {agent}] ", self.me),
            None => format!("[{}] ", self.me),
        }
    }

    fn incoming(&mut self, m: &Message) {
        // Each message once: a message can come on the topic and in history, and our
        // own sends come back from the server (their ids are remembered when sent).
        if !self.seen.insert(&m.id) {
            return;
        }
        self.out.say(message_line(m));
        self.waiting.answered_by(m, &self.me);
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::Disconnected { transport } => {
                self.out.note(format!("⚠️  Disconnected from the '{transport}' transport; reconnecting..."))
            }
            Event::Reconnected { transport } => self.out.note(format!("🔌 Reconnected: using '{transport}' transport")),
            Event::TransportChanged { from, to } => {
                self.out.note(format!("↪️  Moved from the '{from}' to the '{to}' transport"))
            }
            Event::Gap { topic, since, offset, .. } => self
                .out
                .note(format!("⚠️  {topic}: the server could not replay everything after #{since} (now at #{offset})")),
            Event::SlowConsumer { topic } => self.out.note(format!("⚠️  {topic}: messages were dropped (too slow)")),
            Event::Forwarded { count } => {
                self.out.note(format!("📤 Forwarded {count} message(s) written on the local board while away"))
            }
            _ => {}
        }
    }

    async fn show_history(&mut self, n: u64) {
        match self.client.history(&self.topic, n).await {
            Ok(messages) if messages.is_empty() => self.out.say(format!("  (no messages on '{}' yet)", self.topic)),
            Ok(messages) => {
                self.out.say(format!("  Recent messages on '{}':", self.topic));
                for m in &messages {
                    self.seen.insert(&m.id);
                    self.out.say(message_line(m));
                }
            }
            Err(e) => self.out.note(format!("❌ History failed: {e}")),
        }
    }

    async fn handle_line(&mut self, line: &str) -> Flow {
        let line = line.trim();
        if line.is_empty() {
            return Flow::Continue;
        }
        match parse_command(line) {
            Some(cmd) => self.command(cmd).await,
            None => {
                self.send_text(line).await;
                Flow::Continue
            }
        }
    }

    async fn send_text(&mut self, text: &str) {
        let id = new_id();
        self.seen.insert(&id);
        let publish = match &self.to {
            Some(agent) => self.client.publish(&format!("@{agent}")).to_agent(agent),
            None => self.client.publish(&self.topic),
        };
        match publish.id(&id).content(text).send().await {
            Ok(ack) => {
                self.waiting.add(id, Instant::now() + self.reply_timeout);
                self.out.note("✅ Message sent. Waiting for response...");
                if ack.transport == Transport::Board {
                    self.out.note("   (no server reachable: it waits on the local board and is forwarded later)");
                }
            }
            Err(e) => self.out.note(format!("❌ Could not send: {e}")),
        }
    }

    async fn command(&mut self, cmd: Command) -> Flow {
        match cmd {
            Command::Quit => return Flow::Quit,
            Command::Help => self.out.say(HELP),
            Command::Refresh => self.show_history(RECENT).await,
            Command::History(Ok(n)) => self.show_history(n.max(1)).await,
            Command::History(Err(arg)) => self.out.say(format!("Usage: /history N (a number, not '{arg}')")),
            Command::Who => self.who().await,
            Command::Topic(None) => {
                self.out.say(format!("Current topic: '{}'. Usage: /topic NAME", self.topic));
            }
            Command::Topic(Some(topic)) => self.switch_topic(topic).await,
            Command::To(None) => {
                self.to = None;
                self.out.say(format!("💬 Messages go to topic '{}' again.", self.topic));
            }
            Command::To(Some(agent)) => self.direct_to(agent).await,
            Command::Search(words) if words.is_empty() => self.out.say("Usage: /search WORDS"),
            Command::Search(words) => self.search(&words).await,
            Command::Unknown(name) => self.out.say(format!("Unknown command /{name}. Type /help for the commands.")),
        }
        Flow::Continue
    }

    async fn who(&mut self) {
        match self.client.presence().await {
            Ok(agents) if agents.is_empty() => self.out.say("No agent online."),
            Ok(agents) => {
                self.out.say(format!("👥 Agents online ({}):", agents.len()));
                for a in &agents {
                    let caps = if a.capabilities.is_empty() { "-".to_owned() } else { a.capabilities.join(", ") };
                    self.out.say(format!("  {}  [{}]", a.agent_id, printable(&caps)));
                }
            }
            Err(e) => self.out.note(format!("❌ Cannot list the agents: {e}")),
        }
    }

    async fn switch_topic(&mut self, topic: String) {
        if topic == self.topic {
            self.out.say(format!("Already on topic '{topic}'."));
            return;
        }
        // Subscribe first: if the name is refused, the chat stays where it was.
        match self.client.subscribe(&topic).await {
            Ok(sub) => {
                let old = std::mem::replace(&mut self.topic_sub, sub);
                let _ = old.unsubscribe().await;
                self.topic = topic;
                self.out.say(format!("📬 Subscribed to topic '{}' for real-time updates", self.topic));
                self.show_history(RECENT).await;
            }
            Err(e) => self.out.note(format!("❌ Cannot follow '{topic}': {e}")),
        }
    }

    async fn direct_to(&mut self, agent: String) {
        if let Err(e) = agentbus_protocol::AgentId::new(&agent) {
            self.out.say(format!("❌ '{agent}' is not a valid agent id: {e}"));
            return;
        }
        if let Ok(agents) = self.client.presence().await
            && !agents.iter().any(|a| a.agent_id == agent)
        {
            self.out.note(format!("   ({agent} is not online: messages wait in its inbox until it connects)"));
        }
        self.out
            .say(format!("✉️  Messages now go to {agent}'s inbox. Type /to alone to talk on '{}' again.", self.topic));
        self.to = Some(agent);
    }

    async fn search(&mut self, words: &str) {
        match self.client.search(words, None).await {
            Ok(hits) if hits.is_empty() => self.out.say(format!("No message matches '{words}'.")),
            Ok(hits) => {
                self.out.say(format!("🔎 {} match(es):", hits.len()));
                for h in &hits {
                    let m = &h.message;
                    self.out.say(format!(
                        "[{}] {} {}: {}",
                        local_clock(&m.timestamp),
                        m.topic,
                        printable(&m.from_agent),
                        printable(&h.snippet)
                    ));
                }
            }
            Err(e) => self.out.note(format!("❌ Search failed: {e}")),
        }
    }

    /// The loop: messages, connection events, input and response deadlines. With piped
    /// input, the end of input starts a grace period for the responses.
    async fn run(
        &mut self,
        mut inputs: mpsc::Receiver<Input>,
        prompts: Option<std::sync::mpsc::Sender<String>>,
    ) -> anyhow::Result<()> {
        let mut events = self.client.events();
        let mut input_open = true;
        let mut drain_until: Option<Instant> = None;
        if let Some(p) = &prompts {
            self.out.flush().await;
            let _ = p.send(self.prompt());
        }
        loop {
            if let Some(until) = drain_until
                && (self.waiting.is_empty() || Instant::now() >= until)
            {
                if !self.waiting.is_empty() {
                    self.out.note(format!("⌛ Timed out waiting for {} response(s).", self.waiting.len()));
                }
                return Ok(());
            }
            let wake = match (self.waiting.next_deadline(), drain_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                m = self.topic_sub.next() => match m {
                    Some(m) => self.incoming(&m),
                    None => anyhow::bail!("the connection to the bus closed"),
                },
                m = self.inbox.next() => match m {
                    Some(m) => self.incoming(&m),
                    None => anyhow::bail!("the connection to the bus closed"),
                },
                Some(e) = events.next() => self.event(e),
                input = inputs.recv(), if input_open => match input {
                    Some(Input::Line(line)) => {
                        if let Flow::Quit = self.handle_line(&line).await {
                            return Ok(());
                        }
                        if let Some(p) = &prompts {
                            self.out.flush().await;
                            if p.send(self.prompt()).is_err() {
                                return Ok(());
                            }
                        }
                    }
                    Some(Input::Failed(e)) => anyhow::bail!("cannot read input: {e}"),
                    Some(Input::Interrupted | Input::Eof) | None => {
                        if self.interactive {
                            return Ok(());
                        }
                        input_open = false;
                        drain_until = Some(Instant::now() + GRACE);
                    }
                },
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                    let expired = self.waiting.expire(Instant::now());
                    if expired > 0 {
                        self.out.note(format!(
                            "⌛ No response within {}s: timed out waiting.",
                            self.reply_timeout.as_secs()
                        ));
                    }
                }
            }
        }
    }
}

/// `agentbus chat`.
pub fn run(args: ChatArgs) -> anyhow::Result<ExitCode> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(chat(args))
}

async fn chat(args: ChatArgs) -> anyhow::Result<ExitCode> {
    let interactive = std::io::stdin().is_terminal();
    // In a terminal: the line editor, and its printer when the terminal supports it.
    let mut printer_thread = None;
    let mut editor = None;
    let out = if interactive {
        let mut ed = DefaultEditor::new().context("cannot set up the terminal")?;
        let out = match ed.create_external_printer() {
            Ok(printer) => {
                let (tx, handle) = spawn_printer(printer);
                printer_thread = Some(handle);
                Out::Prompt(tx)
            }
            Err(_) => Out::Plain { notes_to_stderr: false },
        };
        editor = Some(ed);
        out
    } else {
        Out::Plain { notes_to_stderr: true }
    };

    let mut builder = crate::bus::builder(&args.url)
        .agent_id(&args.agent)
        .capabilities(["chat"])
        .connect_timeout(Duration::from_secs(3))
        .request_timeout(Duration::from_secs(30));
    if let Some(board) = &args.board {
        builder = builder.board_path(board);
    }
    let client = builder.connect().await.with_context(|| format!("cannot reach {} nor the board", args.url))?;
    let transport = client.transport().map_or("none", Transport::as_str);
    out.note(format!("  Using '{transport}' transport for {} chat", args.topic));
    if client.transport() == Some(Transport::Board) {
        out.note("  (no server reachable: messages wait on the local board and are forwarded later)");
    }
    // Live only: the recent messages come from `history` below, and anything that
    // arrives in between is printed once (dedupe by id).
    let inbox = client.subscribe(&format!("@{}", args.agent)).await.context("cannot follow the inbox")?;
    let topic_sub =
        client.subscribe(&args.topic).await.with_context(|| format!("cannot follow topic '{}'", args.topic))?;
    out.note(format!("  📬 Subscribed to topic '{}' for real-time updates", args.topic));

    let mut chat = Chat {
        client: client.clone(),
        me: args.agent.clone(),
        topic: args.topic.clone(),
        topic_sub,
        inbox,
        to: None,
        seen: Seen::default(),
        waiting: Waiting::default(),
        reply_timeout: Duration::from_secs(args.reply_timeout.max(1)),
        interactive,
        out: out.clone(),
    };

    let (input_tx, input_rx) = mpsc::channel(16);
    let result = if let Some(editor) = editor {
        chat.show_history(RECENT).await;
        out.say("");
        out.say("🤝 Orchestrator Chat");
        out.say(" Type message and press Enter to send.");
        out.say(" Commands: /refresh, /quit, /help, /who, /topic, /to, /history, /search");
        out.say("");
        let (prompt_tx, prompt_rx) = std::sync::mpsc::channel();
        spawn_reader(editor, prompt_rx, input_tx);
        let result = chat.run(input_rx, Some(prompt_tx)).await;
        if result.is_ok() {
            out.say("👋 Bye");
        }
        result
    } else {
        spawn_stdin(input_tx);
        chat.run(input_rx, None).await
    };
    let _ = client.close().await;
    // Let the printer thread print what is left.
    drop(chat);
    drop(out);
    if let Some(handle) = printer_thread {
        let _ = handle.join();
    }
    result.map(|()| ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, from: &str, irt: Option<&str>) -> Message {
        serde_json::from_value(serde_json::json!({
            "topic": "orchestrator", "id": id, "offset": 1, "timestamp": "2026-01-02T03:04:05Z",
            "from_agent": from, "content": "hi", "in_reply_to": irt,
        }))
        .expect("a valid message")
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse_command("hello"), None);
        assert_eq!(parse_command("/quit"), Some(Command::Quit));
        assert_eq!(parse_command(" /topic  ops "), Some(Command::Topic(Some("ops".into()))));
        assert_eq!(parse_command("/topic"), Some(Command::Topic(None)));
        assert_eq!(parse_command("/to coder"), Some(Command::To(Some("coder".into()))));
        assert_eq!(parse_command("/to"), Some(Command::To(None)));
        assert_eq!(parse_command("/history 5"), Some(Command::History(Ok(5))));
        assert_eq!(parse_command("/history"), Some(Command::History(Ok(RECENT))));
        assert_eq!(parse_command("/history x"), Some(Command::History(Err("x".into()))));
        assert_eq!(parse_command("/search big world"), Some(Command::Search("big world".into())));
        assert_eq!(parse_command("/nope"), Some(Command::Unknown("nope".into())));
    }

    #[test]
    fn content_is_text_or_compact_json() {
        assert_eq!(content_text(&serde_json::json!("hi there")), "hi there");
        assert_eq!(content_text(&serde_json::json!({"a": [1, 2]})), r#"{"a":[1,2]}"#);
        assert_eq!(printable("a\u{1b}[2Jb\nc"), "a\u{fffd}[2Jb\nc");
        let line = message_line(&message("m1", "orchestrator-agent", None));
        assert!(line.ends_with("] orchestrator-agent: hi"), "{line}");
        assert_eq!(local_clock("not a time"), "not a time");
    }

    #[test]
    fn seen_remembers_a_bounded_number_of_ids() {
        let mut seen = Seen::default();
        assert!(seen.insert("a"));
        assert!(!seen.insert("a"));
        for i in 0..SEEN_CAPACITY {
            seen.insert(&i.to_string());
        }
        assert!(seen.insert("a"), "the oldest id is forgotten");
    }

    #[test]
    fn responses_are_matched_by_in_reply_to_or_by_another_speaker() {
        let later = Instant::now() + Duration::from_secs(30);
        let mut w = Waiting::default();
        w.add("s1".into(), later);
        w.add("s2".into(), later);
        assert!(!w.answered_by(&message("x", "dashboard-ui", None), "dashboard-ui"), "my own words");
        assert!(!w.answered_by(&message("x", "bot", Some("other")), "dashboard-ui"), "someone else's answer");
        assert!(w.answered_by(&message("x", "bot", Some("s2")), "dashboard-ui"));
        assert!(w.answered_by(&message("x", "bot", None), "dashboard-ui"));
        assert!(w.is_empty());
        w.add("s3".into(), Instant::now());
        assert_eq!(w.expire(Instant::now() + Duration::from_millis(1)), 1);
    }
}
