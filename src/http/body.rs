//! Reading a request body, which a handler does only once it has authenticated the
//! caller: actix's `Bytes` and `Json` extractors would buffer the body first, so that
//! anyone could make the server read (and wait for) megabytes before a 401.
//!
//! Owns: the body's size bound and its read deadline (`server.body_timeout_ms`).
//! A body is never decompressed (`crate::http::guard` refuses a `Content-Encoding`).

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use bytes::BytesMut;
use futures_util::StreamExt;

use crate::error::{ErrorCode, HttpError};

/// The body of `req`, at most `limit` bytes, all of it within `timeout`: 413
/// `payload_too_large` past the limit (before reading anything when
/// `Content-Length` says so), 408 `request_timeout` when it comes too slowly.
pub async fn read(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    timeout: Duration,
) -> Result<web::Bytes, HttpError> {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(length) = announced {
        if length > limit {
            return Err(HttpError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body of {length} bytes is over the limit of {limit}"),
            ));
        }
    }
    // Grown as data comes: an announced length costs nothing until it is sent.
    let mut body = BytesMut::with_capacity(announced.unwrap_or(0).min(64 << 10));
    let deadline = actix_web::rt::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(actix_web::rt::time::Instant::now());
        let chunk = actix_web::rt::time::timeout(left, payload.next())
            .await
            .map_err(|_| {
                HttpError::new(
                    ErrorCode::RequestTimeout,
                    format!(
                        "the request body did not arrive within {} ms ({} bytes came)",
                        timeout.as_millis(),
                        body.len()
                    ),
                )
            })?;
        match chunk {
            None => return Ok(body.freeze()),
            Some(Ok(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(HttpError::new(
                        ErrorCode::PayloadTooLarge,
                        format!("request body is over the limit of {limit} bytes"),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Some(Err(e)) => {
                return Err(HttpError::new(
                    ErrorCode::InvalidRequest,
                    format!("cannot read the request body: {e}"),
                ))
            }
        }
    }
}
