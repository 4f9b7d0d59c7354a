//! One error type for every HTTP handler: a stable code, a status, a JSON body.

use agentbus_protocol::{ErrorCode, FrameError};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An HTTP error: `{"error":{"code":…,"message":…}}` with the status of its code.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    /// An error with a code and a message for people.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// An internal failure: logged here once, never leaked.
    pub fn internal(what: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "{what} failed");
        Self::new(ErrorCode::Internal, format!("{what} failed (see the server log)"))
    }
}

impl From<FrameError> for ApiError {
    fn from(e: FrameError) -> Self {
        Self::new(e.code, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (status, Json(body)).into_response()
    }
}
