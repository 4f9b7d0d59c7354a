//! Authentication and permissions.
//!
//! A client proves who it is with a key (from `[[auth.agents]]`, compared as SHA-256
//! digests in constant time) or an HS256 JWT. The result is a [`Grant`]: the agent id it
//! may speak for and the topic patterns it may publish to and read. With
//! `auth.required = false` (the default) nobody is asked for anything.

use std::sync::Arc;

use agentbus_protocol::{AgentId, ErrorCode, FrameError, TopicName};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, pattern_matches};

/// What an authenticated client may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The only agent id it may register as and send from.
    pub agent: AgentId,
    publish: Vec<String>,
    subscribe: Vec<String>,
}

impl Grant {
    /// Whether it may publish to `topic`.
    pub fn may_publish(&self, topic: &TopicName) -> bool {
        self.publish.iter().any(|p| pattern_matches(p, topic.as_str()))
    }

    /// Whether it may subscribe to and read `topic` (always its own inbox).
    pub fn may_read(&self, topic: &TopicName) -> bool {
        topic.inbox_owner() == Some(self.agent.as_str())
            || self.subscribe.iter().any(|p| pattern_matches(p, topic.as_str()))
    }
}

struct KeyEntry {
    digest: [u8; 32],
    grant: Arc<Grant>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, rename = "pub")]
    publish: Vec<String>,
    #[serde(default, rename = "subs")]
    subscribe: Vec<String>,
}

/// The server's authenticator.
pub struct Auth {
    required: bool,
    keys: Vec<KeyEntry>,
    jwt: Option<(DecodingKey, Validation)>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Hex SHA-256 of a key, as `key_sha256` expects it.
pub fn key_sha256(key: &str) -> String {
    sha256(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Auth {
    /// Builds the authenticator; an unusable entry is a configuration error.
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let mut keys = Vec::new();
        for a in &config.agents {
            let agent = AgentId::new(&a.id).map_err(|e| format!("[[auth.agents]] id {:?}: {e}", a.id))?;
            let digest = match (&a.key, &a.key_sha256) {
                (Some(key), None) => sha256(key.as_bytes()),
                (None, Some(hex)) => {
                    unhex(hex).ok_or_else(|| format!("agent {:?}: key_sha256 must be 64 hex digits", a.id))?
                }
                _ => return Err(format!("agent {:?}: give exactly one of `key` and `key_sha256`", a.id)),
            };
            let grant = Arc::new(Grant { agent, publish: a.publish.clone(), subscribe: a.subscribe.clone() });
            keys.push(KeyEntry { digest, grant });
        }
        let jwt = config.jwt_secret.as_ref().map(|secret| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.validate_exp = true;
            validation.required_spec_claims = ["exp", "sub"].iter().map(|s| s.to_string()).collect();
            (DecodingKey::from_secret(secret.as_bytes()), validation)
        });
        if config.required && keys.is_empty() && jwt.is_none() {
            return Err("auth.required is set but no [[auth.agents]] and no jwt_secret are configured".into());
        }
        Ok(Self { required: config.required, keys, jwt })
    }

    /// Whether clients must authenticate.
    pub fn required(&self) -> bool {
        self.required
    }

    /// The grant of a key or token.
    pub fn authenticate(&self, token: &str) -> Result<Arc<Grant>, FrameError> {
        let digest = sha256(token.as_bytes());
        // Every entry is compared, in constant time, so timing tells nothing of the keys.
        let mut found = None;
        for k in &self.keys {
            if bool::from(k.digest.ct_eq(&digest)) {
                found = Some(k.grant.clone());
            }
        }
        if let Some(grant) = found {
            return Ok(grant);
        }
        if let Some((key, validation)) = &self.jwt
            && let Ok(data) = jsonwebtoken::decode::<Claims>(token, key, validation)
            && let Ok(agent) = AgentId::new(&data.claims.sub)
        {
            let c = data.claims;
            return Ok(Arc::new(Grant { agent, publish: c.publish, subscribe: c.subscribe }));
        }
        Err(FrameError::new(ErrorCode::Unauthorized, "invalid key or token"))
    }

    /// The grant for a request that carries `token` (or none): `None` when
    /// authentication is off, an error when it is on and the token is missing or wrong.
    pub fn grant_for(&self, token: Option<&str>) -> Result<Option<Arc<Grant>>, FrameError> {
        if !self.required {
            return Ok(None);
        }
        match token {
            Some(t) => self.authenticate(t).map(Some),
            None => Err(FrameError::new(
                ErrorCode::Unauthorized,
                "a key is required: register with `token`, or send `Authorization: Bearer <key>`",
            )),
        }
    }

    /// Checks a publish to `topic` from `from_agent` (when given).
    pub fn check_publish(
        &self,
        grant: Option<&Grant>,
        topic: &TopicName,
        from_agent: Option<&AgentId>,
    ) -> Result<(), FrameError> {
        if !self.required {
            return Ok(());
        }
        let grant = grant.ok_or_else(|| FrameError::new(ErrorCode::Unauthorized, "authenticate first"))?;
        if let Some(from) = from_agent
            && *from != grant.agent
        {
            let msg = format!("you are {:?}, not {:?}", grant.agent.as_str(), from.as_str());
            return Err(FrameError::new(ErrorCode::Forbidden, msg));
        }
        if !grant.may_publish(topic) {
            return Err(FrameError::new(
                ErrorCode::Forbidden,
                format!("not allowed to publish to {:?}", topic.as_str()),
            ));
        }
        Ok(())
    }

    /// Checks a subscription to, or a read of, `topic`.
    pub fn check_read(&self, grant: Option<&Grant>, topic: &TopicName) -> Result<(), FrameError> {
        if !self.required {
            return Ok(());
        }
        let grant = grant.ok_or_else(|| FrameError::new(ErrorCode::Unauthorized, "authenticate first"))?;
        if !grant.may_read(topic) {
            return Err(FrameError::new(ErrorCode::Forbidden, format!("not allowed to read {:?}", topic.as_str())));
        }
        Ok(())
    }

    /// Whether a search hit or listing entry on `topic` may be shown.
    pub fn may_see(&self, grant: Option<&Grant>, topic: &str) -> bool {
        !self.required || TopicName::new(topic).is_ok_and(|t| grant.is_some_and(|g| g.may_read(&t)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::AgentAuth;

    fn auth() -> Auth {
        let config = AuthConfig {
            required: true,
            jwt_secret: Some("jwt-secret".into()),
            agents: vec![
                AgentAuth {
                    id: "coder".into(),
                    key: Some("s3cret".into()),
                    key_sha256: None,
                    publish: vec!["code.*".into(), "@*".into()],
                    subscribe: vec!["code.*".into()],
                },
                AgentAuth {
                    id: "ops".into(),
                    key: None,
                    key_sha256: Some(key_sha256("ops-key")),
                    publish: vec!["ops".into()],
                    subscribe: vec!["*".into()],
                },
            ],
        };
        Auth::new(&config).unwrap()
    }

    fn t(s: &str) -> TopicName {
        TopicName::new(s).unwrap()
    }

    #[test]
    fn keys_and_hashed_keys_authenticate_their_agent() {
        let a = auth();
        assert_eq!(a.authenticate("s3cret").unwrap().agent.as_str(), "coder");
        assert_eq!(a.authenticate("ops-key").unwrap().agent.as_str(), "ops");
        assert_eq!(a.authenticate("wrong").unwrap_err().code, ErrorCode::Unauthorized);
        assert_eq!(a.grant_for(None).unwrap_err().code, ErrorCode::Unauthorized);
    }

    #[test]
    fn permissions_follow_the_patterns_and_the_own_inbox_is_always_readable() {
        let a = auth();
        let g = a.authenticate("s3cret").unwrap();
        assert!(a.check_publish(Some(&g), &t("code.review"), None).is_ok());
        assert_eq!(a.check_publish(Some(&g), &t("ops"), None).unwrap_err().code, ErrorCode::Forbidden);
        assert!(a.check_publish(Some(&g), &t("@ops"), None).is_ok());
        let spoof = AgentId::new("ops").unwrap();
        assert_eq!(a.check_publish(Some(&g), &t("code.x"), Some(&spoof)).unwrap_err().code, ErrorCode::Forbidden);
        assert!(a.check_read(Some(&g), &t("@coder")).is_ok());
        assert_eq!(a.check_read(Some(&g), &t("@ops")).unwrap_err().code, ErrorCode::Forbidden);
        assert!(a.may_see(Some(&g), "code.a") && !a.may_see(Some(&g), "ops"));
    }

    #[test]
    fn jwts_signed_with_the_secret_carry_their_grant() {
        let a = auth();
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 60;
        let claims = serde_json::json!({"sub": "bot", "exp": exp, "pub": ["bots.*"], "subs": ["bots.*"]});
        let key = jsonwebtoken::EncodingKey::from_secret(b"jwt-secret");
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
        let g = a.authenticate(&token).unwrap();
        assert_eq!(g.agent.as_str(), "bot");
        assert!(g.may_publish(&t("bots.x")) && !g.may_publish(&t("code.x")));
        let other = jsonwebtoken::EncodingKey::from_secret(b"not-the-secret");
        let forged = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &other).unwrap();
        assert!(a.authenticate(&forged).is_err());
        let expired = serde_json::json!({"sub": "bot", "exp": 1});
        let old = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &expired, &key).unwrap();
        assert!(a.authenticate(&old).is_err());
    }

    #[test]
    fn open_servers_ask_for_nothing() {
        let a = Auth::new(&AuthConfig::default()).unwrap();
        assert!(a.grant_for(None).unwrap().is_none());
        assert!(a.check_publish(None, &t("any"), None).is_ok());
        assert!(a.check_read(None, &t("@anyone")).is_ok());
    }
}
