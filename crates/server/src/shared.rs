//! What every connection task and HTTP handler shares: the broker handle, the store,
//! the configuration, id generators and the shutdown signal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use agentbus_protocol::{AgentId, ErrorCode, FrameError, MessageDraft, ParseLimits, SendFrame};
use tokio::sync::{mpsc, watch};

use crate::auth::Auth;
use crate::broker::{BrokerHandle, Origin, Publish};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;

/// Shared server state, behind an `Arc`.
pub struct Shared {
    /// The broker.
    pub broker: BrokerHandle,
    /// The store, for reads (replay, history, search).
    pub store: Arc<dyn Store>,
    /// The configuration.
    pub config: Config,
    /// Bounds applied while parsing frames.
    pub parse_limits: ParseLimits,
    /// Unique to this run of the server: prefixes generated ids and sessions.
    pub boot_epoch: String,
    /// Becomes `true` when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Held by every connection task; the server waits until all are dropped.
    pub tasks: mpsc::Sender<()>,
    /// The server's metrics.
    pub metrics: Arc<Metrics>,
    /// Authentication and permissions.
    pub auth: Auth,
    /// Open connections, for `limits.max_connections`.
    pub open_sockets: AtomicUsize,
    next_conn: AtomicU64,
    next_message: AtomicU64,
}

impl Shared {
    /// Builds the shared state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        broker: BrokerHandle,
        store: Arc<dyn Store>,
        config: Config,
        boot_epoch: String,
        shutdown: watch::Receiver<bool>,
        tasks: mpsc::Sender<()>,
        metrics: Arc<Metrics>,
        auth: Auth,
    ) -> Self {
        let parse_limits = ParseLimits { max_page: config.limits.max_page, ..ParseLimits::default() };
        Self {
            broker,
            store,
            config,
            parse_limits,
            boot_epoch,
            shutdown,
            tasks,
            metrics,
            auth,
            open_sockets: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            next_message: AtomicU64::new(1),
        }
    }

    /// A new connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// A new message id, unique across restarts.
    pub fn new_message_id(&self) -> String {
        let n = self.next_message.fetch_add(1, Ordering::Relaxed);
        let digits = (u64::BITS - n.leading_zeros()).div_ceil(4).max(1);
        let mut id = String::with_capacity(self.boot_epoch.len() + 1 + digits as usize);
        id.push_str(&self.boot_epoch);
        id.push('-');
        for shift in (0..digits).rev() {
            id.push(char::from(b"0123456789abcdef"[((n >> (shift * 4)) & 0xf) as usize]));
        }
        id
    }

    /// Turns a validated `send` into a publish for the broker: resolves the sender,
    /// assigns the id and the timestamp, and encodes the message once.
    pub fn prepare_publish(
        &self,
        send: &SendFrame<'_>,
        registered: Option<&AgentId>,
        anonymous: Option<&str>,
        origin: Origin,
    ) -> Result<Publish, FrameError> {
        let from_agent: Arc<str> = match (&send.from_agent, registered, anonymous) {
            (Some(a), _, _) => a.to_shared(),
            (None, Some(a), _) => a.to_shared(),
            (None, None, Some(a)) => Arc::from(a),
            (None, None, None) => {
                return Err(FrameError::new(
                    ErrorCode::NotRegistered,
                    "register first, or say who sends with `from_agent`",
                ));
            }
        };
        let (id, client_id) = match &send.id {
            Some(id) => (id.to_string(), true),
            None => (self.new_message_id(), false),
        };
        let now = SystemTime::now();
        let timestamp_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let timestamp = humantime::format_rfc3339_millis(now).to_string();
        let topic = send.destination();
        let draft = MessageDraft::new(&topic, &id, &timestamp, &from_agent, send);
        let received = Instant::now();
        Ok(Publish { topic, id, client_id, from_agent, timestamp_ms, received, draft, origin })
    }
}

/// Search hits as protocol values (frames that fail to parse are skipped).
pub fn search_hits(hits: Vec<crate::store::StoredHit>) -> Vec<agentbus_protocol::SearchHit> {
    hits.into_iter()
        .filter_map(|h| {
            let message = serde_json::from_str(&h.frame).ok()?;
            Some(agentbus_protocol::SearchHit { message, snippet: h.snippet, score: h.score })
        })
        .collect()
}
