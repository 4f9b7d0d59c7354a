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
        let timestamp = rfc3339_millis(now);
        let topic = send.destination();
        let draft = MessageDraft::new(&topic, &id, &timestamp, &from_agent, send);
        let received = Instant::now();
        Ok(Publish { topic, id, client_id, from_agent, timestamp_ms, received, draft, origin })
    }
}

/// `now` as RFC 3339 UTC with milliseconds (`2026-11-26T14:52:31.123Z`), as the
/// original server stamped messages. The text up to the second is formatted once per
/// second and thread; each call appends the milliseconds.
fn rfc3339_millis(now: SystemTime) -> String {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    // A clock before 1970 is stamped as 1970 (the formatter would panic on it).
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (secs, millis) = (since_epoch.as_secs(), since_epoch.subsec_millis());
    SECOND.with_borrow_mut(|(second, prefix)| {
        if *second != secs || prefix.is_empty() {
            let whole = UNIX_EPOCH + std::time::Duration::from_secs(secs);
            *prefix = humantime::format_rfc3339_seconds(whole).to_string();
            prefix.pop(); // the `Z`
            *second = secs;
        }
        let mut out = String::with_capacity(prefix.len() + 5);
        out.push_str(prefix);
        out.push('.');
        out.push(char::from(b'0' + (millis / 100) as u8));
        out.push(char::from(b'0' + (millis / 10 % 10) as u8));
        out.push(char::from(b'0' + (millis % 10) as u8));
        out.push('Z');
        out
    })
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::rfc3339_millis;

    #[test]
    fn timestamps_match_the_full_formatter_across_seconds() {
        let base = UNIX_EPOCH + Duration::from_millis(1_795_000_000_000);
        for step in [0u64, 1, 9, 10, 99, 100, 999, 1_000, 1_001, 59_999, 86_400_123, 3_000_000_007] {
            let t = base + Duration::from_millis(step);
            assert_eq!(rfc3339_millis(t), humantime::format_rfc3339_millis(t).to_string(), "at +{step} ms");
        }
        assert_eq!(rfc3339_millis(UNIX_EPOCH - Duration::from_millis(1)), "1970-01-01T00:00:00.000Z");
        let now = SystemTime::now();
        assert_eq!(rfc3339_millis(now), humantime::format_rfc3339_millis(now).to_string());
    }
}
