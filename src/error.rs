//! Typed errors with the stable codes of docs/protocol.md section 7.
//!
//! Owns: [`ErrorCode`] (the wire codes), [`ProtocolError`] (what a command can fail
//! with) and [`HttpError`] (the JSON error body of the HTTP API).
//! Must not: know about actors or sockets; callers decide how to deliver an error.

use actix_web::{http::StatusCode, HttpResponse, ResponseError};
use serde::Serialize;

/// A stable error code. The string form is part of the wire contract: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    UnknownCommand,
    InvalidEvent,
    InvalidSubscription,
    InvalidPattern,
    InvalidCondition,
    UnknownSubscription,
    UnknownEvent,
    UnsupportedFrame,
    PayloadTooLarge,
    RateLimited,
    TooManySubscriptions,
    Unauthorized,
    Forbidden,
    Internal,
    /// The shared event log (cluster mode) cannot be reached: nothing was stored, retry
    /// (on this node or another).
    Unavailable,
    /// HTTP only: a query parameter or request body that is not valid.
    InvalidRequest,
    /// HTTP only: the WebSocket upgrade was refused because `max_connections` is reached.
    TooManyConnections,
    /// HTTP only: no such route or resource.
    NotFound,
    // Web edge (crate::http::guard, crate::http::body).
    /// HTTP only: a request body that is not `application/json`, or is compressed.
    UnsupportedMediaType,
    /// HTTP only: auth is off and the `Host` is not a loopback or allowed name.
    MisdirectedRequest,
    /// HTTP only: the request body did not arrive within `server.body_timeout_ms`.
    RequestTimeout,
}

impl ErrorCode {
    /// The wire spelling of this code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::InvalidEvent => "invalid_event",
            ErrorCode::InvalidSubscription => "invalid_subscription",
            ErrorCode::InvalidPattern => "invalid_pattern",
            ErrorCode::InvalidCondition => "invalid_condition",
            ErrorCode::UnknownSubscription => "unknown_subscription",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::UnsupportedFrame => "unsupported_frame",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::NotFound => "not_found",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::MisdirectedRequest => "misdirected_request",
            ErrorCode::RequestTimeout => "request_timeout",
        }
    }

    /// The HTTP status that fits this code.
    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::TooManyConnections | ErrorCode::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::NotFound | ErrorCode::UnknownSubscription | ErrorCode::UnknownEvent => {
                StatusCode::NOT_FOUND
            }
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a command (or one event of a batch) was refused. Sent to the client as an
/// `error` reply; never closes the connection by itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `{"code": ..., "message": ...}`, the inner object of every error body.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code, "message": self.message })
    }
}

/// `Retry-After` of an `unavailable` answer: the log is retried this soon.
pub const RETRY_AFTER_SECS: &str = "1";

/// An error answered by the HTTP API as `{"error": {"code", "message"}}`.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct HttpError(#[from] pub ProtocolError);

impl HttpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(ProtocolError::new(code, message))
    }

    /// The router actor could not be reached (mailbox closed during shutdown).
    pub fn router_unavailable(err: actix::MailboxError) -> Self {
        Self::new(ErrorCode::Internal, format!("router unavailable: {err}"))
    }

    /// The store actor could not be reached.
    pub fn store_unavailable(err: actix::MailboxError) -> Self {
        Self::new(ErrorCode::Internal, format!("store unavailable: {err}"))
    }
}

impl ResponseError for HttpError {
    fn status_code(&self) -> StatusCode {
        self.0.code.http_status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        match self.0.code {
            ErrorCode::Unauthorized => {
                res.insert_header((actix_web::http::header::WWW_AUTHENTICATE, "Bearer"));
            }
            ErrorCode::Unavailable => {
                res.insert_header((actix_web::http::header::RETRY_AFTER, RETRY_AFTER_SECS));
            }
            _ => {}
        }
        res.json(serde_json::json!({ "error": self.0.to_json() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_spelling() {
        for code in [
            ErrorCode::InvalidJson,
            ErrorCode::UnknownCommand,
            ErrorCode::InvalidEvent,
            ErrorCode::InvalidSubscription,
            ErrorCode::InvalidPattern,
            ErrorCode::InvalidCondition,
            ErrorCode::UnknownSubscription,
            ErrorCode::UnknownEvent,
            ErrorCode::UnsupportedFrame,
            ErrorCode::PayloadTooLarge,
            ErrorCode::RateLimited,
            ErrorCode::TooManySubscriptions,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::Internal,
            ErrorCode::InvalidRequest,
            ErrorCode::TooManyConnections,
            ErrorCode::NotFound,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::MisdirectedRequest,
            ErrorCode::RequestTimeout,
        ] {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::Value::String(code.as_str().to_owned()));
        }
    }
}
