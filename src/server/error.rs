//! [`ApiError`]: the one error type of the HTTP surface.
//!
//! Every handler returns `Result<_, ApiError>`, and every layer that answers
//! on its own (the body limit, the request timeout, the panic catcher) turns
//! its answer into one. So every error a client can get has the same body,
//! `{"error": "..."}`, with client-chosen text clipped to [`MAX_ERROR_CHARS`],
//! and is counted and logged in one place (`observe` in the parent module),
//! which finds the error in the response's extensions.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::clip::clip;
pub use crate::clip::MAX_ERROR_CHARS;

/// An HTTP error answer: a status and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status: 4xx for what the client can fix, 5xx for ours.
    pub status: StatusCode,
    /// What went wrong and, where we can tell, how to fix it; already clipped.
    pub message: String,
}

impl ApiError {
    /// An error with `status`; `message` is clipped to [`MAX_ERROR_CHARS`].
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: clip(message.into()),
        }
    }

    /// 400: the body is not something this endpoint understands.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 500: our fault; the message never carries internals.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 413: the body is larger than `limit` bytes.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {limit} bytes"),
        )
    }

    /// 408: the request did not complete within `timeout`.
    pub fn timeout(timeout: std::time::Duration) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request not completed within {}",
                humantime::format_duration(timeout)
            ),
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // At capacity, for a moment: say when to come back.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        // For the layer that counts and logs errors.
        response.extensions_mut().insert(self);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_clipped_on_a_char_boundary() {
        let e = ApiError::bad_request("é".repeat(600));
        assert!(e.message.starts_with(&"é".repeat(MAX_ERROR_CHARS)));
        assert!(e.message.ends_with("... (176 more bytes)"), "{}", e.message);
        assert_eq!(ApiError::bad_request("short").message, "short");
    }
}
