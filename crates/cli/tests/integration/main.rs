//! Integration tests: the real `agentbus` binary on a free port, driven by real clients.

#![allow(clippy::unwrap_used)]

mod bench;
mod client;
mod compat;
mod durability;
mod errors;
mod http;
mod lifecycle;
mod observability;
mod redis;
mod security;
mod tools;
mod ui;
mod ws;

use std::time::Duration;

/// How long to watch for something that must not arrive.
pub const QUIET: Duration = Duration::from_millis(300);
