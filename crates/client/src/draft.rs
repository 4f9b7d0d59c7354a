//! A message on its way out: what every transport needs to publish it, and the ack it
//! gets back.

use serde_json::{Value, json};

use crate::event::Transport;

/// One message to publish, with its client-chosen id (always set, so a resend is
/// idempotent on the server).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Draft {
    /// Where it goes: the topic, or the inbox `@<agent>` of a direct message.
    pub topic: String,
    /// The addressee, when there is one.
    pub to_agent: Option<String>,
    /// A direct message: sent with `to_agent` and no `topic`.
    pub direct: bool,
    /// The payload.
    pub content: Value,
    /// The client-chosen id.
    pub id: String,
    /// The message this one answers.
    pub in_reply_to: Option<String>,
    /// Free-form metadata (an object).
    pub meta: Option<Value>,
    /// The sender.
    pub from_agent: String,
}

impl Draft {
    /// The fields of a `send` frame or HTTP publish body (without `type`/`ref`).
    pub(crate) fn body(&self) -> Value {
        let mut v = json!({ "content": self.content, "id": self.id, "from_agent": self.from_agent });
        if !self.direct {
            v["topic"] = Value::String(self.topic.clone());
        }
        if let Some(to) = &self.to_agent {
            v["to_agent"] = Value::String(to.clone());
        }
        if let Some(r) = &self.in_reply_to {
            v["in_reply_to"] = Value::String(r.clone());
        }
        if let Some(m) = &self.meta {
            v["meta"] = m.clone();
        }
        v
    }

    /// The WebSocket `send` frame with `ref`.
    pub(crate) fn frame(&self, reference: &str) -> String {
        let mut v = self.body();
        v["type"] = Value::String("send".into());
        v["ref"] = Value::String(reference.into());
        v.to_string()
    }
}

/// The acknowledgement of a send: where the message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The message id (the client-chosen one).
    pub id: String,
    /// The topic it was stored in (`@<agent>` for a direct message).
    pub topic: String,
    /// Its offset in that topic: the server's, or the board's when `transport` is
    /// [`Transport::Board`] (the message gets a server offset when it is forwarded).
    pub offset: u64,
    /// True when this id had been stored before: the message was not stored again.
    pub duplicate: bool,
    /// The transport that carried it.
    pub transport: Transport,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_messages_go_without_topic_and_topics_keep_to_agent() {
        let mut d = Draft {
            topic: "@coder".into(),
            to_agent: Some("coder".into()),
            direct: true,
            content: json!("hi"),
            id: "x-1".into(),
            in_reply_to: None,
            meta: None,
            from_agent: "me".into(),
        };
        let v: Value = serde_json::from_str(&d.frame("s1")).unwrap_or_default();
        assert_eq!(v, json!({"type":"send","ref":"s1","content":"hi","id":"x-1","from_agent":"me","to_agent":"coder"}));
        d.direct = false;
        d.topic = "tasks".into();
        d.meta = Some(json!({"k": 1}));
        d.in_reply_to = Some("q-1".into());
        let v = d.body();
        assert_eq!((v["topic"].as_str(), v["to_agent"].as_str()), (Some("tasks"), Some("coder")));
        assert_eq!((v["meta"]["k"].as_i64(), v["in_reply_to"].as_str()), (Some(1), Some("q-1")));
    }
}
