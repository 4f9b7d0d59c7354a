//! The agentbus client: a cheap `Clone` handle over one background connection task,
//! modelled on async-nats.
//!
//! - [`Client::subscribe`] returns a [`Subscription`], a `Stream` of [`Message`]s that
//!   sees every message of its topic once and in order, across reconnects and server
//!   restarts (it resumes from its last offset).
//! - [`Client::send`] waits for the acknowledgement; [`Client::publish`] builds a
//!   message with `to_agent`, `id`, `in_reply_to`, `meta`; [`Client::request`] sends and
//!   waits for the first message answering it.
//! - The connection task reconnects on its own (capped exponential backoff with full
//!   jitter) and walks a transport chain: WebSocket, then HTTP to the same server when
//!   upgrades are refused, then the local board (a SQLite file shared by the agents of
//!   one machine) when no server is reachable. What is sent on the board is forwarded,
//!   with its ids, as soon as any client reaches the server again. [`Client::events`]
//!   reports every change.
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use agentbus::{Client, Event};
//! use futures_util::StreamExt;
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), agentbus::Error> {
//! let client = Client::builder("ws://localhost:3030").agent_id("planner").connect().await?;
//! println!("Using '{}' transport", client.transport().expect("connected"));
//!
//! // Follow a topic.
//! let mut tasks = client.subscribe("tasks").await?;
//! tokio::spawn(async move {
//!     while let Some(m) = tasks.next().await {
//!         println!("[{}] {}: {}", m.offset, m.from_agent, m.content);
//!     }
//! });
//!
//! // Publish and wait for the ack.
//! let ack = client.send("tasks", json!({"step": "write tests"})).await?;
//! println!("stored at offset {} via {}", ack.offset, ack.transport);
//!
//! // Ask another agent and wait for its answer.
//! let answer = client.request("@coder", "please review PR 7", Duration::from_secs(30)).await?;
//! println!("coder says {}", answer.content);
//!
//! // Watch the connection.
//! let mut events = client.events();
//! tokio::spawn(async move {
//!     while let Some(e) = events.next().await {
//!         if let Event::TransportChanged { from, to } = e {
//!             println!("moved from {from} to {to}");
//!         }
//!     }
//! });
//! client.close().await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod backoff;
mod board;
mod builder;
mod client;
mod draft;
mod engine;
mod error;
mod event;
mod http;
mod ids;
mod subscription;
mod topics;

pub use agentbus_protocol::{AgentPresence, ErrorCode, Message, SearchHit};
pub use backoff::Backoff;
pub use board::default_board_path;
pub use builder::{ClientBuilder, DEFAULT_SEND_QUEUE, DEFAULT_SUBSCRIPTION_CAPACITY};
pub use client::{Client, Publish};
pub use draft::Ack;
pub use error::{Error, ErrorKind, Result};
pub use event::{Event, Transport};
pub use subscription::{SubscribeOptions, Subscription};
