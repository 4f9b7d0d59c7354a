//! Prometheus metrics, all named `agentbus_*`, served at `GET /metrics` in the
//! OpenMetrics text format. Label sets are bounded (error codes, recovery outcomes):
//! there is no per-topic or per-agent label.
//!
//! Counters and histograms are atomics updated where things happen (the broker for
//! publishes and deliveries, connection tasks for bytes and rejected frames); gauges of
//! the broker's state are read from it when scraped.

use std::time::Duration;

use agentbus_protocol::ErrorCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

type Labels = [(&'static str, &'static str); 1];

/// Every metric of the server.
pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections and SSE streams.
    pub connections: Gauge,
    /// Agents with at least one registered connection.
    pub agents_online: Gauge,
    /// Topics known to the broker.
    pub topics: Gauge,
    /// Live subscriptions (inboxes included).
    pub subscriptions: Gauge,
    /// Messages stored and fanned out.
    pub published: Counter,
    /// Message deliveries queued to subscribers.
    pub delivered: Counter,
    /// Bytes of text frames received from clients.
    pub bytes_in: Counter,
    /// Bytes of frames written to WebSocket clients.
    pub bytes_out: Counter,
    /// Sends acknowledged (duplicates included).
    pub acks: Counter,
    /// Sends acknowledged as duplicates of an already stored id.
    pub duplicates: Counter,
    /// From receiving a send to its commit in the store.
    pub ack_latency: Histogram,
    /// From receiving a send to its frames being queued for every subscriber.
    pub delivery_latency: Histogram,
    /// Connections closed for not reading fast enough.
    pub slow_consumers: Counter,
    /// Frames refused, by error code.
    pub rejected: Family<Labels, Counter>,
    /// Records per store transaction (group commit).
    pub commit_batch: Histogram,
    /// Recoveries with `since`, by outcome (`full` or `partial`).
    pub recoveries: Family<Labels, Counter>,
    /// With a shared store: messages of other servers fanned out here.
    pub remote_messages: Counter,
    /// With a shared store: gaps in a topic's offsets filled from the store.
    pub gaps_filled: Counter,
    /// With a shared store: connections of the feed (the first and every reconnection).
    pub feed_connections: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All metrics, registered.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("agentbus");
        let m = |name: &str, help: &str, r: &mut Registry, metric: &Gauge| r.register(name, help, metric.clone());
        let connections = Gauge::default();
        m("connections", "Open WebSocket connections and SSE streams", r, &connections);
        let agents_online = Gauge::default();
        m("agents_online", "Agents with at least one registered connection", r, &agents_online);
        let topics = Gauge::default();
        m("topics", "Topics known to the broker", r, &topics);
        let subscriptions = Gauge::default();
        m("subscriptions", "Live subscriptions, inboxes included", r, &subscriptions);
        let counter = |name: &str, help: &str, r: &mut Registry| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let published = counter("messages_published", "Messages stored and fanned out", r);
        let delivered = counter("messages_delivered", "Message deliveries queued to subscribers", r);
        let bytes_in = Counter::default();
        r.register_with_unit("received", "Bytes of text frames received from clients", Unit::Bytes, bytes_in.clone());
        let bytes_out = Counter::default();
        r.register_with_unit("sent", "Bytes of frames written to WebSocket clients", Unit::Bytes, bytes_out.clone());
        let acks = counter("acks", "Sends acknowledged, duplicates included", r);
        let duplicates = counter("duplicate_sends", "Sends acknowledged as duplicates of a stored id", r);
        let latency = || Histogram::new(exponential_buckets(0.000_025, 2.0, 18));
        let ack_latency = latency();
        r.register_with_unit("ack_latency", "From receiving a send to its commit", Unit::Seconds, ack_latency.clone());
        let delivery_latency = latency();
        r.register_with_unit(
            "delivery_latency",
            "From receiving a send to its frames being queued for every subscriber",
            Unit::Seconds,
            delivery_latency.clone(),
        );
        let slow_consumers = counter("slow_consumer_disconnects", "Connections closed for not reading fast enough", r);
        let rejected = Family::<Labels, Counter>::default();
        r.register("frames_rejected", "Frames refused, by error code", rejected.clone());
        let commit_batch = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        r.register("store_commit_batch_size", "Records per store transaction", commit_batch.clone());
        let recoveries = Family::<Labels, Counter>::default();
        r.register("recoveries", "Recoveries with since, by outcome", recoveries.clone());
        let remote_messages = counter("remote_messages", "Messages of other servers of the bus fanned out here", r);
        let gaps_filled = counter("gaps_filled", "Gaps in a topic's offsets filled from the shared store", r);
        let feed_connections = counter("feed_connections", "Connections of the shared store's feed", r);
        Self {
            registry: root,
            connections,
            agents_online,
            topics,
            subscriptions,
            published,
            delivered,
            bytes_in,
            bytes_out,
            acks,
            duplicates,
            ack_latency,
            delivery_latency,
            slow_consumers,
            rejected,
            commit_batch,
            recoveries,
            remote_messages,
            gaps_filled,
            feed_connections,
        }
    }

    /// Counts a refused frame.
    pub fn reject(&self, code: ErrorCode) {
        self.rejected.get_or_create(&[("code", code.as_str())]).inc();
    }

    /// Counts a recovery with `since`.
    pub fn recovery(&self, complete: bool) {
        let outcome = if complete { "full" } else { "partial" };
        self.recoveries.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// Records a latency.
    pub fn observe(histogram: &Histogram, elapsed: Duration) {
        histogram.observe(elapsed.as_secs_f64());
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
