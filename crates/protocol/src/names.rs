//! Validated topic names and agent ids.

use std::fmt;
use std::sync::Arc;

/// Longest topic name, in bytes (inbox names included).
pub const MAX_NAME_LEN: usize = 128;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("must not be empty")]
    Empty,
    /// The name is longer than allowed.
    #[error("is {len} characters long; at most {max} are allowed")]
    TooLong {
        /// Length of the refused name.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name holds a character outside `A-Z a-z 0-9 . _ - : /`.
    #[error("contains {0:?}; only A-Z a-z 0-9 . _ - : / are allowed")]
    BadChar(char),
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/')
}

fn check_chars(s: &str, max: usize) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(c) = s.chars().find(|&c| !c.is_ascii() || !is_name_byte(c as u8)) {
        return Err(NameError::BadChar(c));
    }
    if s.len() > max {
        return Err(NameError::TooLong { len: s.len(), max });
    }
    Ok(())
}

/// A topic name: 1–128 characters of `A-Z a-z 0-9 . _ - : /`, or an agent's inbox
/// `@<agent_id>`. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

impl TopicName {
    /// Validates `s` as a topic name.
    pub fn new(s: &str) -> Result<Self, NameError> {
        match s.strip_prefix('@') {
            Some(agent) => {
                check_chars(agent, MAX_NAME_LEN - 1)?;
            }
            None => check_chars(s, MAX_NAME_LEN)?,
        }
        Ok(Self(Arc::from(s)))
    }

    /// The inbox topic `@<agent>` of an agent.
    pub fn inbox(agent: &AgentId) -> Self {
        Self(Arc::from(format!("@{}", agent.as_str())))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The agent whose inbox this is, if it is an inbox.
    pub fn inbox_owner(&self) -> Option<&str> {
        self.0.strip_prefix('@')
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::str::FromStr for TopicName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// An agent id: 1–127 characters of `A-Z a-z 0-9 . _ - : /` (so that its inbox
/// `@<id>` is a valid topic). Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(Arc<str>);

impl AgentId {
    /// Validates `s` as an agent id.
    pub fn new(s: &str) -> Result<Self, NameError> {
        check_chars(s, MAX_NAME_LEN - 1)?;
        Ok(Self(Arc::from(s)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as a shared string (no copy).
    pub fn to_shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::str::FromStr for AgentId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_the_documented_charset() {
        for ok in ["orchestrator", "a", "code.review/x:1_y-z", "@coder-agent", &"t".repeat(128)] {
            assert!(TopicName::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(TopicName::new(""), Err(NameError::Empty));
        assert_eq!(TopicName::new("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(TopicName::new("é"), Err(NameError::BadChar('é')));
        assert_eq!(TopicName::new("a@b"), Err(NameError::BadChar('@')));
        assert_eq!(TopicName::new("@"), Err(NameError::Empty));
        assert_eq!(TopicName::new("@@x"), Err(NameError::BadChar('@')));
        assert!(matches!(TopicName::new(&"t".repeat(129)), Err(NameError::TooLong { len: 129, .. })));
    }

    #[test]
    fn inbox_of_an_agent_is_a_valid_topic() {
        let agent = AgentId::new(&"a".repeat(127)).expect("valid");
        let inbox = TopicName::inbox(&agent);
        assert_eq!(TopicName::new(inbox.as_str()), Ok(inbox.clone()));
        assert_eq!(inbox.inbox_owner(), Some(agent.as_str()));
        assert!(AgentId::new(&"a".repeat(128)).is_err());
        assert!(AgentId::new("@x").is_err());
    }
}
