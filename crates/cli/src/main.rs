//! `agentbus`: the server and the tools around it in one command.

mod agents;
mod bench;
mod bus;
mod chat;
mod daemon;
mod key;
mod oneshot;
mod pidfile;
mod serve;
mod signals;

use std::process::ExitCode;

/// mimalloc rather than the system allocator: every message allocates on the connection
/// threads and is freed on the writer's (or the other way round), a pattern on which
/// glibc's allocator spent about a fifth of the server's time (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// A real-time message bus for AI agents.
#[derive(Parser)]
#[command(name = "agentbus", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server in the foreground.
    Serve(serve::ServeArgs),
    /// Start the server in the background (PID and log files in the data folder).
    Start(serve::ServeArgs),
    /// Print a new random key and its SHA-256 for the `[auth]` configuration.
    Key,
    /// Stop the background server gracefully.
    Stop(daemon::DataArgs),
    /// Say whether the server runs (exit 0) or not (exit 3), with PID, URL and uptime.
    Status(daemon::DataArgs),
    /// Load-test a server: throughput, latency percentiles, loss, CPU and memory.
    Bench(bench::BenchArgs),
    /// Publish one message (prints the transport that carried it and the offset).
    Send(oneshot::SendArgs),
    /// Follow topics and print their messages as they arrive.
    Listen(oneshot::ListenArgs),
    /// Print the newest messages of a topic (from the local board without a server).
    History(oneshot::HistoryArgs),
    /// Full-text search over stored messages (the local board's without a server).
    Search(oneshot::SearchArgs),
    /// List the agents online.
    Agents(oneshot::AgentsArgs),
    /// Chat with the agents on a topic (the orchestrator's by default), as a person.
    Chat(chat::ChatArgs),
    /// Run the example orchestrator agent: introduces the agents online and routes `@agent` requests.
    Orchestrator(agents::orchestrator::OrchestratorArgs),
    /// Run the example worker agent: counts the words of each direct message.
    Worker(agents::worker::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Start(args) => daemon::start(args),
        Command::Stop(args) => daemon::stop(args),
        Command::Key => key::run(),
        Command::Status(args) => daemon::status(args),
        Command::Bench(args) => bench::run(args),
        Command::Send(args) => oneshot::send(args),
        Command::Listen(args) => oneshot::listen(args),
        Command::History(args) => oneshot::history(args),
        Command::Search(args) => oneshot::search(args),
        Command::Agents(args) => oneshot::agents(args),
        Command::Chat(args) => chat::run(args),
        Command::Orchestrator(args) => agents::orchestrator::run(args),
        Command::Worker(args) => agents::worker::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentbus: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
