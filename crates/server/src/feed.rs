//! With a store shared through Redis: follows the bus's feed on a thread of its own and
//! hands other servers' messages, inbox cursors and (after every reconnection) each
//! topic's newest offset to the broker, which fans out what its subscribers have not
//! seen.

use std::time::Duration;

use tokio::sync::watch;

use crate::broker::{BrokerHandle, Command};
use crate::config::RedisConfig;
use crate::store::redis::{FeedItem, RedisStore, follow_feed};

/// Waits between attempts to reach Redis when the feed cannot start.
const RETRY: Duration = Duration::from_secs(1);

/// Starts following the feed of the bus `config` names until `shutdown` becomes true.
pub fn start(config: &RedisConfig, broker: BrokerHandle, shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    let config = config.clone();
    std::thread::Builder::new().name("agentbus-feed".into()).spawn(move || {
        let stopped = || *shutdown.borrow();
        let store = loop {
            match RedisStore::open(&config.url, &config.prefix) {
                Ok(store) => break store,
                Err(e) if !stopped() => {
                    tracing::warn!(error = %e, "the redis feed cannot start yet");
                    std::thread::sleep(RETRY);
                }
                Err(_) => return,
            }
        };
        let deliver = |item: FeedItem| {
            let cmd = match item {
                FeedItem::Message { topic, offset, frame } => Command::Remote { topic, offset, frame },
                FeedItem::Cursor(c) => Command::RemoteCursor(c),
            };
            broker.blocking_send(cmd).is_ok()
        };
        let caught_up = |topic, last| broker.blocking_send(Command::CaughtUp { topic, last }).is_ok();
        follow_feed(&store, &stopped, &deliver, &caught_up);
    })?;
    Ok(())
}
