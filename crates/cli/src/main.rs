//! `agentbus`: the server and the tools around it in one command.

mod serve;

use std::process::ExitCode;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentbus: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
