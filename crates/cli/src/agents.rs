//! The example agents: `agentbus orchestrator` (answers on a topic and routes requests
//! to other agents) and `agentbus worker` (answers direct messages). Both are written
//! as templates to copy: the agent's logic is in small pure functions, apart from the
//! wiring (connect, subscribe, loop, reply).

pub mod orchestrator;
pub mod worker;

use std::path::PathBuf;
use std::time::Duration;

use agentbus::{Client, Transport};
use anyhow::Context;
use clap::Args;

/// How an example agent reaches the bus.
#[derive(Args, Debug, Clone)]
pub struct BusArgs {
    /// The bus: `ws://HOST:PORT` (an `http://` URL means the same server); several
    /// servers of one bus separated by commas are tried in turn.
    #[arg(long, env = "AGENTBUS_URL", default_value = "ws://localhost:3030")]
    pub url: String,
    /// The local board used when no server is reachable [default: $AGENTBUS_BOARD, else
    /// $XDG_DATA_HOME/agentbus/board.db].
    #[arg(long, env = "AGENTBUS_BOARD", value_name = "PATH")]
    pub board: Option<PathBuf>,
}

/// The runtime of an agent's loop: one thread is plenty (tasks still run concurrently).
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

/// Connects as `agent` with `capabilities` (shown to others by presence) and says
/// which transport carries it.
pub(crate) async fn connect(bus: &BusArgs, agent: &str, capabilities: &[&str]) -> anyhow::Result<Client> {
    let mut builder = crate::bus::builder(&bus.url)
        .agent_id(agent)
        .capabilities(capabilities.iter().copied())
        .connect_timeout(Duration::from_secs(3));
    if let Some(board) = &bus.board {
        builder = builder.board_path(board);
    }
    let client = builder.connect().await.with_context(|| format!("cannot reach {} nor the board", bus.url))?;
    println!("  Using '{}' transport", client.transport().map_or("none", Transport::as_str));
    Ok(client)
}

/// One log line, `[HH:MM:SS] text`, local time.
pub(crate) fn log(text: &str) {
    println!("[{}] {text}", crate::chat::now_clock());
}
