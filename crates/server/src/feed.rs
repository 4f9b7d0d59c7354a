//! With a store shared through Redis: follows the bus's feed on a thread of its own and
//! hands other servers' messages, inbox cursors and (after every reconnection) each
//! topic's newest offset to the broker, which fans out what its subscribers have not
//! seen; and, on another thread, shares which agents are connected where.

use std::time::Duration;

use agentbus_protocol::AgentPresence;
use tokio::sync::{oneshot, watch};

use crate::broker::task::BrokerGone;
use crate::broker::{BrokerHandle, Command};
use crate::config::RedisConfig;
use crate::metrics::Metrics;
use crate::store::StoreError;
use crate::store::redis::{FeedHandlers, FeedItem, RedisStore, follow_feed};

/// Waits between attempts to reach Redis when the feed cannot start.
const RETRY: Duration = Duration::from_secs(1);

/// How often a server publishes its agents and reads the others'.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(2);

/// A server's published agents expire after this long without a refresh.
const PRESENCE_TTL: Duration = Duration::from_secs(10);

/// Starts following the feed of the bus `config` names, and sharing presence as server
/// `node`, until `shutdown` becomes true.
pub fn start(
    config: &RedisConfig,
    node: String,
    broker: BrokerHandle,
    shutdown: watch::Receiver<bool>,
    metrics: std::sync::Arc<Metrics>,
) -> std::io::Result<()> {
    {
        let (config, broker, shutdown) = (config.clone(), broker.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("agentbus-presence".into())
            .spawn(move || share_presence(&config, &node, &broker, &shutdown))?;
    }
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
        let connected = || {
            metrics.feed_connections.inc();
        };
        follow_feed(
            &store,
            &FeedHandlers { stopped: &stopped, deliver: &deliver, caught_up: &caught_up, connected: &connected },
        );
    })?;
    Ok(())
}

/// Every [`PRESENCE_EVERY`]: publishes this server's agents and hands the other servers'
/// to the broker. Withdraws them at shutdown.
fn share_presence(config: &RedisConfig, node: &str, broker: &BrokerHandle, shutdown: &watch::Receiver<bool>) {
    let mut store = None;
    while !*shutdown.borrow() {
        if store.is_none() {
            store = RedisStore::open(&config.url, &config.prefix).ok();
        }
        if let Some(s) = &store
            && let Err(e) = exchange_presence(s, node, broker)
        {
            tracing::debug!(error = %e, "presence not shared this time");
        }
        let mut waited = Duration::ZERO;
        while waited < PRESENCE_EVERY && !*shutdown.borrow() {
            std::thread::sleep(Duration::from_millis(100));
            waited += Duration::from_millis(100);
        }
    }
    if let Some(s) = &store {
        let _ = s.drop_presence(node);
    }
}

/// Why one exchange of presence did not happen (it is tried again shortly).
#[derive(Debug, thiserror::Error)]
enum PresenceError {
    #[error(transparent)]
    Broker(#[from] BrokerGone),
    #[error("the broker did not answer")]
    NoAnswer(#[from] oneshot::error::RecvError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot encode the agents: {0}")]
    Json(#[from] serde_json::Error),
}

fn exchange_presence(store: &RedisStore, node: &str, broker: &BrokerHandle) -> Result<(), PresenceError> {
    let (tx, rx) = oneshot::channel();
    broker.blocking_send(Command::LocalPresence { reply: tx })?;
    let local = rx.blocking_recv()?;
    store.put_presence(node, &serde_json::to_string(&local)?, PRESENCE_TTL)?;
    let others: Vec<AgentPresence> = store
        .other_presence(node)?
        .iter()
        .filter_map(|j| serde_json::from_str::<Vec<AgentPresence>>(j).ok())
        .flatten()
        .collect();
    Ok(broker.blocking_send(Command::RemotePresence(others))?)
}
