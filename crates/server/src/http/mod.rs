//! HTTP on the bus's port: the WebSocket upgrade at `/`, the REST API under `/v1`,
//! Server-Sent Events, health, and the admin page.

mod api;
mod caller;
mod error;
mod sse;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

pub use caller::{Caller, request_token};
pub use error::ApiError;

use crate::shared::Shared;

/// The whole HTTP application.
pub fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/ui", get(ui))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/v1/topics", get(api::topics))
        .route("/v1/topics/{topic}/messages", get(api::history).post(api::publish))
        .route("/v1/topics/{topic}/events", get(sse::events))
        .route("/v1/agents", get(api::agents))
        .route("/v1/search", get(api::search))
        .fallback(|| async { ApiError::new(agentbus_protocol::ErrorCode::NotFound, "no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(shared.config.limits.max_message_bytes))
        .with_state(shared)
}

fn is_websocket_upgrade(req: &Request) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token))))
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// `/`: the bus for a WebSocket upgrade, a redirect to the admin page for a browser.
async fn root(State(shared): State<Arc<Shared>>, mut req: Request) -> Response {
    if !is_websocket_upgrade(&req) {
        return Redirect::temporary("/ui").into_response();
    }
    let version_ok = req.headers().get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return (StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n").into_response();
    };
    if !version_ok {
        return (StatusCode::UPGRADE_REQUIRED, [(header::SEC_WEBSOCKET_VERSION, "13")], "WebSocket version 13 only\n")
            .into_response();
    }
    if *shared.shutdown.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    // A key on the upgrade request authenticates the whole connection; without one,
    // `register` must carry it (when authentication is on).
    let grant = match request_token(req.headers(), req.uri()) {
        Some(token) if shared.auth.required() => match shared.auth.authenticate(&token) {
            Ok(grant) => Some(grant),
            Err(e) => return ApiError::from(e).into_response(),
        },
        _ => None,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => crate::conn::run(TokioIo::new(upgraded), shared, grant).await,
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let accept = derive_accept_key(key.as_bytes());
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

/// The admin page, served from the binary.
async fn ui() -> Html<&'static str> {
    Html(include_str!("ui.html"))
}

/// Longest long-poll a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
