//! Server configuration: every setting with its default. The `agentbus` binary fills it
//! from flags, `AGENTBUS_*` variables and the TOML file; tests build it directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Everything the server needs to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on for WebSocket and HTTP.
    pub listen: SocketAddr,
    /// Folder of the store (and of the PID and log files of a background server).
    pub data: PathBuf,
    /// Keep everything in memory; nothing survives a restart.
    pub ephemeral: bool,
    /// The durable store.
    pub store: StoreConfig,
    /// How much history each topic keeps.
    pub retention: RetentionConfig,
    /// Per-connection and per-frame limits.
    pub limits: Limits,
    /// Logging (applied by the `agentbus` binary).
    pub log: LogConfig,
    /// Authentication and permissions.
    pub auth: AuthConfig,
    /// TLS: with this section the same port serves `wss://` and `https://` only.
    pub tls: Option<TlsConfig>,
    /// Keep history in Redis, shared with every server that uses the same Redis and
    /// prefix, instead of SQLite.
    pub redis: Option<RedisConfig>,
}

/// A bus shared by several servers through Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]`.
    pub url: String,
    /// Prefix of every key: servers with the same Redis and prefix form one bus.
    #[serde(default = "default_redis_prefix")]
    pub prefix: String,
}

/// The default key prefix.
pub fn default_redis_prefix() -> String {
    "agentbus".to_owned()
}

/// Who may connect, and what each agent may publish and read.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require a key or token for everything but health, metrics and the admin page's
    /// static file. Off by default: anyone may connect, as in the original system.
    pub required: bool,
    /// Accept HS256 JWTs signed with this secret (claims: `sub` = agent id, `exp`,
    /// `pub` = publish patterns, `subs` = subscribe patterns).
    pub jwt_secret: Option<String>,
    /// Agents and their keys.
    pub agents: Vec<AgentAuth>,
}

/// One agent's credentials and permissions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentAuth {
    /// The agent id this key speaks for.
    pub id: String,
    /// The key itself (prefer `key_sha256` so the file holds no secret).
    pub key: Option<String>,
    /// Hex SHA-256 of the key (`agentbus key` prints it).
    pub key_sha256: Option<String>,
    /// Topic patterns it may publish to (`*` matches any run of characters).
    #[serde(default)]
    pub publish: Vec<String>,
    /// Topic patterns it may subscribe to and read (its own inbox is always allowed).
    #[serde(default)]
    pub subscribe: Vec<String>,
}

/// TLS certificate and key, PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
}

/// Logging settings; flags and `AGENTBUS_LOG_*` variables override them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Level or tracing filter (`info` when unset).
    pub level: Option<String>,
    /// `text` (default) or `json`.
    pub format: Option<String>,
    /// Write logs to this file instead of standard error.
    pub file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 3030)),
            data: PathBuf::from("data"),
            ephemeral: false,
            store: StoreConfig::default(),
            retention: RetentionConfig::default(),
            limits: Limits::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            tls: None,
            redis: None,
        }
    }
}

/// How SQLite makes commits durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// WAL with `synchronous=NORMAL`: an acked message survives a crash of the process;
    /// the last commits may be lost if the machine loses power.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is fsynced before the ack; survives power loss.
    Full,
}

/// The durable store.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The fsync policy.
    pub sync: SyncMode,
    /// Largest database, in bytes (0 = no limit). Past it sends fail with `unavailable`.
    pub max_size_bytes: u64,
    /// How many recent client-chosen ids are remembered to make resends idempotent.
    pub dedupe_window: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { sync: SyncMode::Normal, max_size_bytes: 0, dedupe_window: 100_000 }
    }
}

/// Retention: per topic, the oldest messages beyond these bounds are trimmed in the
/// background.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Most messages kept per topic (0 = no limit).
    pub max_messages: u64,
    /// Oldest message kept, in seconds (0 = no limit).
    pub max_age_secs: u64,
    /// Overrides for topics matching a pattern (`*` matches any run of characters);
    /// the first match wins.
    pub overrides: Vec<RetentionOverride>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { max_messages: 100_000, max_age_secs: 30 * 24 * 3600, overrides: Vec::new() }
    }
}

/// Retention for the topics matching `pattern`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionOverride {
    /// Topic pattern, `*` matches any run of characters.
    pub pattern: String,
    /// Most messages kept (0 = no limit).
    #[serde(default)]
    pub max_messages: u64,
    /// Oldest message kept, in seconds (0 = no limit).
    #[serde(default)]
    pub max_age_secs: u64,
}

/// Limits that keep one client from hurting the others.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest frame a client may send, in bytes; larger frames close the connection
    /// with 1009 after a `too_large` error.
    pub max_message_bytes: usize,
    /// Bytes queued for one connection before it is a slow consumer and is closed.
    pub outbox_bytes: usize,
    /// Sends per second allowed per connection (token bucket, burst of one second's
    /// worth); excess sends get `rate_limited`. 0 = no limit.
    pub messages_per_second: u32,
    /// Open connections (HTTP and WebSocket) beyond which new ones are dropped.
    pub max_connections: usize,
    /// Seconds allowed for the TLS handshake and for the HTTP request head.
    pub handshake_timeout_secs: u64,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// Largest page returned by history, search and replay-on-subscribe.
    pub max_page: u64,
    /// Seconds between server pings on a quiet connection.
    pub ping_interval_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            outbox_bytes: 4 * 1024 * 1024,
            messages_per_second: 0,
            max_connections: 100_000,
            handshake_timeout_secs: 10,
            max_subscriptions_per_connection: 1000,
            max_page: 1000,
            ping_interval_secs: 30,
        }
    }
}

impl Limits {
    /// The ping interval as a duration.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs.max(1))
    }
}

/// Whether `topic` matches `pattern`, where `*` matches any run of characters.
pub fn pattern_matches(pattern: &str, topic: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == topic;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !topic.starts_with(first) || topic.len() < first.len() + last.len() || !topic.ends_with(last) {
        return false;
    }
    let mut rest = &topic[first.len()..topic.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::pattern_matches;

    #[test]
    fn patterns_match_runs_of_characters() {
        assert!(pattern_matches("code.*", "code.review"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("@*", "@coder"));
        assert!(pattern_matches("a*b*c", "a-x-b-y-c"));
        assert!(!pattern_matches("a*b*c", "a-x-c"));
        assert!(!pattern_matches("code.*", "codex"));
        assert!(pattern_matches("exact", "exact"));
        assert!(!pattern_matches("ab*ba", "aba"));
    }
}
