//! Who is calling an HTTP endpoint: the key or token from `Authorization: Bearer` or
//! `?token=`, checked when authentication is on.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri, header};

use super::ApiError;
use crate::auth::Grant;
use crate::shared::Shared;

/// The caller's grant (`None` when authentication is off).
pub struct Caller(pub Option<Arc<Grant>>);

impl Caller {
    /// The grant, for permission checks.
    pub fn grant(&self) -> Option<&Grant> {
        self.0.as_deref()
    }
}

/// The key or token a request carries, from `Authorization: Bearer …` or `?token=`.
pub fn request_token(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_owned());
    bearer.or_else(|| {
        let Query(params) = Query::<HashMap<String, String>>::try_from_uri(uri).ok()?;
        params.get("token").cloned()
    })
}

impl FromRequestParts<Arc<Shared>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, Self::Rejection> {
        let token = request_token(&parts.headers, &parts.uri);
        Ok(Caller(shared.auth.grant_for(token.as_deref())?))
    }
}
