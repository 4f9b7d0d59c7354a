//! The people's tools against the real server and the real binary: `agentbus chat` in
//! a pseudo-terminal (as a person types) and with piped input, and the example
//! `orchestrator` and `worker` agents routing a request end to end.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use agentbus::Client;
use agentbus_testkit::{TIMEOUT, TestServer, agentbus_bin};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// The lines a child process prints on one stream, as they come.
struct Lines {
    what: String,
    rx: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn follow(what: String, stream: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { what, rx, seen: Vec::new() }
    }

    /// Waits for the first line containing `needle` and returns it.
    async fn until(&mut self, needle: &str) -> String {
        let found = tokio::time::timeout(TIMEOUT, async {
            while let Some(line) = self.rx.recv().await {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!("{} ended without {needle:?}; it printed:\n{}", self.what, self.seen.join("\n")),
            Err(_) => panic!("{} did not print {needle:?} in time; it printed:\n{}", self.what, self.seen.join("\n")),
        }
    }
}

impl Lines {
    /// Waits for the end of the stream (the process exited), keeping every line.
    async fn rest(&mut self) {
        tokio::time::timeout(TIMEOUT, async {
            while let Some(line) = self.rx.recv().await {
                self.seen.push(line);
            }
        })
        .await
        .expect("the output did not end in time");
    }
}

/// An `agentbus` child process (killed when dropped).
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines,
    stderr: Lines,
}

/// Starts `agentbus ARGS` with the board in `dir` and standard input piped.
fn spawn(args: &[&str], dir: &Path) -> Proc {
    let mut child = Command::new(agentbus_bin())
        .args(args)
        .env_remove("AGENTBUS_URL")
        .env_remove("AGENTBUS_AGENT")
        .env("AGENTBUS_BOARD", board(dir))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn agentbus (is it built?)");
    let name = format!("agentbus {}", args.first().copied().unwrap_or_default());
    Proc {
        stdin: child.stdin.take(),
        stdout: Lines::follow(format!("{name} (stdout)"), child.stdout.take().unwrap()),
        stderr: Lines::follow(format!("{name} (stderr)"), child.stderr.take().unwrap()),
        child,
    }
}

fn board(dir: &Path) -> PathBuf {
    dir.join("board.db")
}

/// `agentbus orchestrator`, once it follows its topic.
async fn orchestrator(server: &TestServer, dir: &Path) -> Proc {
    let mut p = spawn(&["orchestrator", "--url", &server.ws_url()], dir);
    p.stdout.until("orchestrator-agent is listening on topic 'orchestrator'").await;
    p
}

/// `agentbus worker`, once it follows its inbox.
async fn worker(server: &TestServer, dir: &Path) -> Proc {
    let mut p = spawn(&["worker", "--url", &server.ws_url()], dir);
    p.stdout.until("word-counter is listening on its inbox '@word-counter'").await;
    p
}

/// Whether `line` is `[HH:MM:SS] FROM: ...`.
fn is_message_from(line: &str, from: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 11
        && b[0] == b'['
        && b[3] == b':'
        && b[6] == b':'
        && b[9] == b']'
        && [1, 2, 4, 5, 7, 8].iter().all(|&i| b[i].is_ascii_digit())
        && line[10..].starts_with(&format!(" {from}: "))
}

async fn exit_code(p: &mut Proc) -> Option<i32> {
    tokio::time::timeout(TIMEOUT, p.child.wait()).await.expect("process did not exit in time").unwrap().code()
}

/// A person at a terminal: the chat shows its transport and subscription, sends what
/// is typed, shows the orchestrator's answer above the prompt, lists the agents,
/// talks to one agent's inbox with `/to`, and quits with `/quit`.
#[tokio::test]
async fn chat_in_a_terminal_talks_with_the_orchestrator() {
    let server = TestServer::builder().ephemeral().start().await;
    let dir = tempfile::tempdir().unwrap();
    let _orchestrator = orchestrator(&server, dir.path()).await;
    let _worker = worker(&server, dir.path()).await;
    let url = server.ws_url();
    let board = board(dir.path());
    let status = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(agentbus_bin());
        cmd.args(["chat", "--url", &url, "--board"])
            .arg(&board)
            .env("TERM", "xterm")
            .env_remove("AGENTBUS_URL")
            .env_remove("AGENTBUS_BOARD");
        let timeout = u64::try_from(TIMEOUT.as_millis()).unwrap();
        let options = rexpect::reader::Options::new().timeout_ms(Some(timeout)).strip_ansi_escape_codes(true);
        let mut p = rexpect::session::spawn_with_options(cmd, options).unwrap();
        // rexpect reads bytes as Latin-1: only ASCII is matched (no emoji).
        p.exp_string("  Using 'websocket' transport for orchestrator chat").unwrap();
        p.exp_string("Subscribed to topic 'orchestrator' for real-time updates").unwrap();
        p.exp_string("Orchestrator Chat").unwrap();
        p.exp_string("Commands: /refresh, /quit, /help, /who, /topic, /to, /history, /search").unwrap();
        p.exp_string("[dashboard-ui] ").unwrap();

        p.send_line("Hello, orchestrator!").unwrap();
        p.exp_string("Message sent. Waiting for response...").unwrap();
        p.exp_regex(r"\[\d\d:\d\d:\d\d\] orchestrator-agent: I am the Orchestrator Agent").unwrap();

        p.send_line("/who").unwrap();
        p.exp_string("orchestrator-agent  [orchestrate, route, introduce]").unwrap();
        p.exp_string("word-counter  [count-words]").unwrap();

        p.send_line("/to word-counter").unwrap();
        p.exp_string("Messages now go to word-counter's inbox").unwrap();
        p.send_line("one two three four").unwrap();
        p.exp_string("Message sent. Waiting for response...").unwrap();
        p.exp_regex(r"\[\d\d:\d\d:\d\d\] word-counter \(direct\): 4 words, 18 characters").unwrap();

        p.send_line("/quit").unwrap();
        p.exp_eof().unwrap();
        p.process().wait().unwrap()
    })
    .await
    .unwrap();
    assert!(matches!(status, rexpect::process::WaitStatus::Exited(_, 0)), "{status:?}");
}

/// `@word-counter hello big world` on the topic goes chat → orchestrator → worker →
/// orchestrator → the topic, as an answer to the message sent.
#[tokio::test]
async fn a_request_is_routed_through_the_orchestrator_to_a_worker_and_back() {
    let server = TestServer::builder().ephemeral().start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut orchestrator = orchestrator(&server, dir.path()).await;
    let mut worker = worker(&server, dir.path()).await;
    let client = tokio::time::timeout(
        TIMEOUT,
        Client::builder(server.ws_url()).agent_id("tester").board_path(board(dir.path())).connect(),
    )
    .await
    .unwrap()
    .unwrap();
    let answer = client.request("orchestrator", "@word-counter hello big world", TIMEOUT).await.unwrap();
    assert_eq!(answer.from_agent, "orchestrator-agent");
    assert_eq!(answer.topic, "orchestrator");
    let text = answer.content.as_str().unwrap();
    assert!(text.contains("3 words"), "{text}");
    assert!(text.contains("word-counter"), "{text}");
    // Each agent logged what it did.
    worker.stdout.until("orchestrator-agent (message").await;
    orchestrator.stdout.until("tester on 'orchestrator'").await;

    // An agent that is not online: said at once, nothing waits.
    let answer = client.request("orchestrator", "@nobody are you there?", TIMEOUT).await.unwrap();
    let text = answer.content.as_str().unwrap();
    assert!(text.contains("nobody is not online") && text.contains("word-counter (count-words)"), "{text}");

    // `agents` lists who is online with what they can do.
    let answer = client.request("orchestrator", "agents", TIMEOUT).await.unwrap();
    let text = answer.content.as_str().unwrap();
    assert!(text.contains("orchestrator-agent (orchestrate, route, introduce)"), "{text}");
    client.close().await.unwrap();
    orchestrator.child.kill().await.unwrap();
    worker.child.kill().await.unwrap();
}

/// Piped input: each line is sent, the replies are printed plainly (no prompt, no
/// escape codes, one per line, own lines not echoed), and the chat exits 0 once the
/// replies to every line arrived.
#[tokio::test]
async fn chat_with_piped_input_prints_the_replies_plainly_and_exits_at_the_end() {
    let server = TestServer::builder().ephemeral().start().await;
    let dir = tempfile::tempdir().unwrap();
    let _orchestrator = orchestrator(&server, dir.path()).await;
    let _worker = worker(&server, dir.path()).await;
    let mut chat = spawn(&["chat", "--url", &server.ws_url()], dir.path());
    let mut stdin = chat.stdin.take().unwrap();
    stdin.write_all(b"first question\n@word-counter one two\n").await.unwrap();
    drop(stdin);
    let mut replies = Vec::new();
    while replies.len() < 2 {
        replies.push(chat.stdout.until("orchestrator-agent: ").await);
    }
    assert_eq!(exit_code(&mut chat).await, Some(0));
    chat.stdout.rest().await;
    let out = chat.stdout.seen.join("\n");
    for line in &chat.stdout.seen {
        assert!(is_message_from(line, "orchestrator-agent"), "not a plain message line: {line:?}\n{out}");
    }
    assert_eq!(chat.stdout.seen.len(), 2, "{out}");
    assert!(replies.iter().any(|l| l.contains("I am the Orchestrator Agent")), "{out}");
    assert!(replies.iter().any(|l| l.contains("word-counter answered: 2 words, 7 characters")), "{out}");
    assert!(!out.contains('\u{1b}') && !out.contains("[dashboard-ui]"), "{out}");
    chat.stderr.until("Using 'websocket' transport for orchestrator chat").await;
}

/// The chat says when it loses the server and when it is back, and keeps working.
#[tokio::test]
async fn chat_reconnects_visibly_and_keeps_going() {
    let mut server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut orchestrator = orchestrator(&server, dir.path()).await;
    let mut chat = spawn(&["chat", "--url", &server.ws_url(), "--as", "survivor"], dir.path());
    chat.stderr.until("Subscribed to topic 'orchestrator'").await;

    server.stop().await;
    chat.stderr.until("Disconnected from the 'websocket' transport").await;
    server.restart().await;
    let back = chat.stderr.until("websocket' transport").await;
    assert!(back.contains("Reconnected") || back.contains("Moved from"), "{back}");
    // The orchestrator came back too: the next line is answered.
    let mut stdin = chat.stdin.take().unwrap();
    stdin.write_all(b"still there?\n").await.unwrap();
    chat.stdout.until("orchestrator-agent: I am the Orchestrator Agent").await;
    orchestrator.stdout.until("survivor on 'orchestrator'").await;
    drop(stdin);
    assert_eq!(exit_code(&mut chat).await, Some(0));
}
