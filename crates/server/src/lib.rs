//! The agentbus server: WebSocket and HTTP on one port, a broker that owns all routing
//! state, and a store that makes every acknowledged message durable.
//!
//! [`run`] wires the data path described in `ARCHITECTURE.md`:
//! connection tasks → broker → store writer → broker (fan-out, acks) → outboxes →
//! connection tasks.

pub mod auth;
pub mod broker;
pub mod config;
pub mod conn;
pub mod feed;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod outbox;
pub mod replay;
pub mod shared;
pub mod store;
pub mod tls;
pub mod ws;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub use config::Config;

use crate::broker::{Broker, BrokerOptions, Command};
use crate::config::pattern_matches;
use crate::shared::Shared;
use crate::store::indexer;
use crate::store::writer::{self, RetentionFn, ToWriter};
use crate::store::{Retention, Store, StoreError};

/// Name and version reported to clients.
pub const SERVER_NAME: &str = concat!("agentbus/", env!("CARGO_PKG_VERSION"));

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The configuration cannot be used (auth entries, TLS files).
    #[error("{0}")]
    Config(String),
    /// Listening or serving failed.
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the store the configuration asks for.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(redis) = &config.redis {
        return Ok(Arc::new(store::redis::RedisStore::open(&redis.url, &redis.prefix)?));
    }
    if config.ephemeral {
        return Ok(Arc::new(store::memory::MemoryStore::new(config.store.dedupe_window)));
    }
    Ok(Arc::new(store::sqlite::SqliteStore::open(&config.data, &config.store)?))
}

fn retention_fn(config: &Config) -> RetentionFn {
    let r = config.retention.clone();
    Arc::new(move |topic| {
        let (max_messages, max_age_secs) = r
            .overrides
            .iter()
            .find(|o| pattern_matches(&o.pattern, topic.as_str()))
            .map_or((r.max_messages, r.max_age_secs), |o| (o.max_messages, o.max_age_secs));
        Retention { max_messages, max_age_ms: max_age_secs.saturating_mul(1000) }
    })
}

/// Serves on `listener` until `shutdown` completes, then shuts down gracefully: stops
/// accepting, closes connections with 1001 after flushing them, lets the store commit
/// what it was given, and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let store = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || open_store(&config))
            .await
            .map_err(|e| StoreError::Database(e.to_string()))??
    };
    serve_with_store(config, listener, store, shutdown).await
}

/// [`run`] with a store opened by the caller.
pub async fn serve_with_store(
    config: Config,
    listener: TcpListener,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let auth = auth::Auth::new(&config.auth).map_err(ServerError::Config)?;
    let tls = config.tls.as_ref().map(tls::acceptor).transpose().map_err(ServerError::Config)?;
    let boot_epoch = store::new_epoch();
    let loaded = {
        let store = store.clone();
        let window = config.store.dedupe_window;
        tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            Ok((store.topics()?, store.recent_ids(window)?, store.cursors()?))
        })
        .await
        .map_err(|e| StoreError::Database(e.to_string()))??
    };
    let (topics, ids, cursors) = loaded;
    tracing::info!(topics = topics.len(), "store opened");
    let options = BrokerOptions {
        server_name: SERVER_NAME.to_owned(),
        boot_epoch: boot_epoch.clone(),
        topic_epoch: store.shared_epoch().unwrap_or_else(|| boot_epoch.clone()),
        shared_store: store.numbers_messages(),
        dedupe_window: config.store.dedupe_window,
        max_subscriptions: config.limits.max_subscriptions_per_connection,
        max_waiters: 10_000,
    };
    let metrics = Arc::new(metrics::Metrics::new());
    let broker = Broker::new(options, topics, ids, cursors, metrics.clone());

    let (writer_tx, writer_rx) = mpsc::channel(writer::WRITER_QUEUE);
    let (done_tx, done_rx) = mpsc::channel(writer::WRITER_QUEUE);
    let writer_thread = {
        let (store, retention) = (store.clone(), retention_fn(&config));
        let indexer = indexer::start(store.clone())?;
        std::thread::Builder::new()
            .name("agentbus-writer".into())
            .spawn(move || writer::run(store, writer_rx, done_tx, retention, indexer))?
    };
    let ticker = writer_tx.downgrade();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            match ticker.upgrade() {
                Some(tx) => {
                    let _ = tx.try_send(ToWriter::Tick);
                }
                None => return,
            }
        }
    });
    let (handle, commands) = broker::task::channel();
    let broker_task = tokio::spawn(broker::task::run(broker, commands, writer_tx, done_rx));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    if let Some(redis) = &config.redis {
        let node = format!("{boot_epoch}-{}", std::process::id());
        feed::start(redis, node, handle.clone(), shutdown_rx.clone(), metrics.clone())?;
    }
    let (tasks_tx, mut tasks_rx) = mpsc::channel::<()>(1);
    let shared = Arc::new(Shared::new(handle, store, config, boot_epoch, shutdown_rx.clone(), tasks_tx, metrics, auth));
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    // Ping ticks and the shutdown reach each WebSocket through its outbox, from the
    // broker: a connection holds no timer or watch of its own while it is idle.
    {
        let (broker, mut stop) = (shared.broker.clone(), shutdown_rx.clone());
        let interval = shared.config.limits.ping_interval();
        tokio::spawn(async move {
            let mut every = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        let _ = broker.try_send(Command::PingAll);
                    }
                    _ = async { let _ = stop.wait_for(|stopping| *stopping).await; } => {
                        let _ = broker.send(Command::Shutdown).await;
                        return;
                    }
                }
            }
        });
    }

    let app = http::app(shared.clone());
    listener::serve(listener, tls, app, shared.clone()).await;
    tracing::info!("shutting down: closing connections");
    // Connection tasks saw the same signal; wait until every one has flushed and closed.
    drop(shared);
    let _ = tasks_rx.recv().await;
    if let Err(e) = broker_task.await {
        tracing::error!(error = %e, "broker task failed");
    }
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    tracing::info!("shut down");
    Ok(())
}
