//! Frames the server sends, as owned types (what a client parses).

use serde::{Deserialize, Serialize};

use crate::client::Ref;
use crate::error::ErrorCode;

/// A delivered message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The topic (an inbox `@<agent>` for direct messages).
    pub topic: String,
    /// The message id (client-chosen or assigned by the server).
    pub id: String,
    /// The topic's sequence number: 1, 2, 3, … with no gaps.
    pub offset: u64,
    /// When the server received it, RFC 3339 UTC.
    pub timestamp: String,
    /// The sender.
    pub from_agent: String,
    /// The addressee, when the sender named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_agent: Option<String>,
    /// Any JSON value.
    pub content: serde_json::Value,
    /// The id of the message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<String>,
    /// Free-form metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
    /// True when the message is replayed from history rather than live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<bool>,
}

/// One agent in a `presence` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentPresence {
    /// The agent id.
    pub agent_id: String,
    /// Open connections registered as this agent.
    pub connections: u32,
    /// Topics its connections follow (inbox excluded).
    pub topics: Vec<String>,
    /// Declared capabilities.
    pub capabilities: Vec<String>,
    /// When its first current connection registered, RFC 3339 UTC.
    pub since: String,
}

/// One topic in `GET /v1/topics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// The topic name.
    pub topic: String,
    /// The last stored offset (0 when empty).
    pub last_offset: u64,
    /// The oldest offset still stored (0 when empty).
    pub first_offset: u64,
    /// Live subscriptions.
    pub subscribers: usize,
    /// The topic's epoch: it changes only when its history is reset.
    pub epoch: String,
}

/// One hit of a full-text search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    /// The matching message.
    pub message: Message,
    /// A short excerpt around the match, words marked with `[` `]`.
    pub snippet: String,
    /// Relevance (BM25; higher is better).
    pub score: f64,
}

/// Every frame the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Reply to `register`.
    Registered {
        /// The registered id.
        agent_id: String,
        /// This connection's session id.
        session: String,
        /// Server name and version.
        server: String,
        /// Echo of the client's `ref`.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// Reply to `subscribe`, before any replayed message.
    Subscribed {
        /// The topic.
        topic: String,
        /// The last stored offset at the moment of subscribing; live messages follow it.
        offset: u64,
        /// The topic's epoch.
        epoch: String,
        /// With `since`: false when retention already dropped part of what was asked.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// Echo of the client's `ref`.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// Reply to `unsubscribe`.
    Unsubscribed {
        /// The topic.
        topic: String,
        /// Echo of the client's `ref`.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// Reply to `send`, once the message is stored.
    Ack {
        /// The message id.
        id: String,
        /// Where it was stored.
        topic: String,
        /// Its offset.
        offset: u64,
        /// How many subscriptions it was delivered to.
        delivered: usize,
        /// True when this id was already stored: nothing was delivered again.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
        /// Echo of the client's `ref`.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// A message on a followed topic.
    Message(Message),
    /// Reply to `history`.
    History {
        /// The topic.
        topic: String,
        /// Oldest first.
        messages: Vec<Message>,
        /// Echo of the client's `ref`.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// Reply to `search`.
    SearchResults {
        /// Best first.
        hits: Vec<SearchHit>,
        /// Echo of the client's `ref`.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// Reply to `presence`.
    Presence {
        /// Agents online.
        agents: Vec<AgentPresence>,
        /// Echo of the client's `ref`.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// Reply to `ping`.
    Pong {
        /// Echo of the client's `ref`.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// A refused frame or a condition the client must know of.
    Error {
        /// The stable code.
        code: ErrorCode,
        /// What happened, for people.
        message: String,
        /// Echo of the client's `ref`.
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
}

impl ServerFrame {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}
