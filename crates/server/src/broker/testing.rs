//! Helpers shared by the broker's unit tests.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use agentbus_protocol::{ClientFrame, MessageDraft, ParseLimits};

use super::command::{BrokerOptions, Command, Publish, Reply};
use super::state::Broker;
use crate::metrics::Metrics;
use crate::outbox::Outbox;

/// A broker with small limits and no stored history.
pub fn broker() -> Broker {
    let options = BrokerOptions {
        server_name: "test".into(),
        boot_epoch: "e1".into(),
        topic_epoch: "e1".into(),
        shared_store: false,
        dedupe_window: 100,
        max_subscriptions: 10,
        max_waiters: 10,
    };
    Broker::new(options, Vec::new(), Vec::new(), Vec::new(), Arc::new(Metrics::new()))
}

/// A publish of `"x"` to `topic` (with a client-chosen `id`, if given), answered to
/// `origin`.
pub fn publish_command(topic: &str, id: Option<&str>, origin: Arc<Outbox>) -> Command {
    let text = match id {
        Some(id) => format!(r#"{{"type":"send","topic":"{topic}","content":"x","id":"{id}"}}"#),
        None => format!(r#"{{"type":"send","topic":"{topic}","content":"x"}}"#),
    };
    let (ClientFrame::Send(send), _) = ClientFrame::parse(&text, &ParseLimits::default()).unwrap() else {
        panic!("send")
    };
    let topic = send.destination();
    let id = id.map_or_else(|| "gen".to_owned(), str::to_owned);
    let draft = MessageDraft::new(&topic, &id, "2026-01-01T00:00:00Z", "me", &send);
    Command::Publish(Box::new(Publish {
        topic,
        id,
        client_id: send.id.is_some(),
        from_agent: "me".into(),
        timestamp_ms: 0,
        received: Instant::now(),
        draft,
        origin: Reply::Outbox(origin, None),
    }))
}
