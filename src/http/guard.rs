//! The web edge: what a request must look like before any handler runs, so that a web
//! page in a browser cannot drive a router on the developer's machine
//! (docs/security.md, "Browsers").
//!
//! Owns: [`WebPolicy`], the pure decision on a request's head ([`WebPolicy::check`]),
//! and the middleware that applies it to every route ([`middleware`]). It reads only
//! headers, never the body, and runs before authentication.
//!
//! - `Host`: with auth off, only loopback names (or `server.allowed_hosts`) are
//!   served. A DNS rebinding page reaches `127.0.0.1` under its own name, and this is
//!   the only place that name shows: 421 `misdirected_request`.
//! - `Origin`: browsers send it on every WebSocket upgrade and on every request a
//!   page makes across sites; it must be this server's own origin or one of
//!   `server.allowed_origins` (403 `forbidden`). Programs send none and pass.
//! - A body must be `application/json`, uncompressed (415 `unsupported_media_type`):
//!   `text/plain` and form bodies are what a page may send across sites without a
//!   preflight, and a compressed body would be inflated past every size limit.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};

use crate::config::{parse_origin, split_host, ServerConfig};
use crate::error::{ErrorCode, HttpError};

/// Host names served with auth off, whatever the port.
const LOOPBACK_HOSTS: &[&str] = &["localhost", "127.0.0.1", "[::1]"];

/// What the web edge accepts, fixed when the server starts.
#[derive(Debug, Clone)]
pub struct WebPolicy {
    /// The scheme of this server's own origin: `https` when it serves TLS.
    scheme: &'static str,
    /// `server.allowed_origins`, parsed.
    allowed_origins: Vec<(String, String, u16)>,
    /// Host names served, lowercased; `None` serves every name (auth on, or `*`).
    allowed_hosts: Option<Vec<String>>,
}

/// The parts of a request head the policy reads.
#[derive(Debug, Default, Clone, Copy)]
pub struct Head<'a> {
    /// `Host` (or the HTTP/2 authority); `None` for an HTTP/1.0 request without one.
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    /// Whether a body follows the head (`Content-Length` over 0, or chunked).
    pub has_body: bool,
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
}

impl WebPolicy {
    /// The policy of `server`, for a server with auth on or off, serving TLS or not.
    /// `server` has been validated, so every listed origin parses.
    pub fn new(server: &ServerConfig, auth_enabled: bool, tls: bool) -> WebPolicy {
        let allowed_hosts =
            (!auth_enabled && !server.allowed_hosts.iter().any(|h| h == "*")).then(|| {
                LOOPBACK_HOSTS
                    .iter()
                    .map(|h| (*h).to_owned())
                    .chain(server.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()))
                    .collect()
            });
        WebPolicy {
            scheme: if tls { "https" } else { "http" },
            allowed_origins: server
                .allowed_origins
                .iter()
                .filter_map(|o| parse_origin(o))
                .collect(),
            allowed_hosts,
        }
    }

    /// `Ok` when a request with this head may go on to its handler.
    pub fn check(&self, head: &Head) -> Result<(), HttpError> {
        self.check_host(head.host)?;
        if let Some(origin) = head.origin {
            self.check_origin(origin, head.host)?;
        }
        if head.has_body {
            check_body_type(head.content_type, head.content_encoding)?;
        }
        Ok(())
    }

    fn check_host(&self, host: Option<&str>) -> Result<(), HttpError> {
        let (Some(allowed), Some(host)) = (&self.allowed_hosts, host) else {
            // Auth on, or HTTP/1.0 without a Host: no name to have been misled by.
            return Ok(());
        };
        let name = split_host(host).map(|(name, _)| name.to_ascii_lowercase());
        if name.is_some_and(|n| allowed.contains(&n)) {
            return Ok(());
        }
        Err(HttpError::new(
            ErrorCode::MisdirectedRequest,
            format!(
                "host `{}` is not served: with auth off only localhost, 127.0.0.1 and [::1] \
                 are (server.allowed_hosts names more)",
                host.escape_default()
            ),
        ))
    }

    fn check_origin(&self, origin: &str, host: Option<&str>) -> Result<(), HttpError> {
        if let Some(origin) = parse_origin(origin) {
            if self.allowed_origins.contains(&origin) || self.is_own(&origin, host) {
                return Ok(());
            }
        }
        Err(HttpError::new(
            ErrorCode::Forbidden,
            format!(
                "origin `{}` may not use this server: only its own origin and \
                 server.allowed_origins may",
                origin.escape_default()
            ),
        ))
    }

    /// Whether `origin` is the origin of this server as the request names it.
    fn is_own(&self, (scheme, name, port): &(String, String, u16), host: Option<&str>) -> bool {
        let Some((host_name, host_port)) = host.and_then(split_host) else {
            return false;
        };
        let default_port = if self.scheme == "https" { 443 } else { 80 };
        scheme == self.scheme
            && host_name.eq_ignore_ascii_case(name)
            && host_port.unwrap_or(default_port) == *port
    }
}

fn check_body_type(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
) -> Result<(), HttpError> {
    if let Some(encoding) = content_encoding {
        if !encoding.trim().eq_ignore_ascii_case("identity") {
            return Err(HttpError::new(
                ErrorCode::UnsupportedMediaType,
                format!(
                    "request bodies are not decompressed: send the JSON without \
                     Content-Encoding (got `{}`)",
                    encoding.escape_default()
                ),
            ));
        }
    }
    let essence = content_type.map(|t| t.split(';').next().unwrap_or_default().trim());
    if essence.is_some_and(|e| e.eq_ignore_ascii_case("application/json")) {
        return Ok(());
    }
    Err(HttpError::new(
        ErrorCode::UnsupportedMediaType,
        format!(
            "a request body must be sent with Content-Type: application/json (got {})",
            content_type.map_or_else(
                || "none".to_owned(),
                |t| format!("`{}`", t.escape_default())
            )
        ),
    ))
}

/// The head of `headers` as [`WebPolicy::check`] reads it; `authority` is the
/// request URI's (HTTP/2 sends the host there).
fn head_of<'a>(headers: &'a HeaderMap, authority: Option<&'a str>) -> Head<'a> {
    let text = |name| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes().iter().any(|b| *b != b'0'));
    Head {
        host: text(header::HOST).or(authority),
        origin: text(header::ORIGIN),
        has_body,
        content_type: text(header::CONTENT_TYPE),
        content_encoding: text(header::CONTENT_ENCODING),
    }
}

/// Applies the [`WebPolicy`] registered as app data to every request; a refused one
/// gets the API's JSON error body and never reaches a handler.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let verdict = match req.app_data::<web::Data<WebPolicy>>() {
        Some(policy) => {
            let authority = req.uri().authority().map(|a| a.as_str());
            policy.check(&head_of(req.headers(), authority))
        }
        None => Err(HttpError::new(ErrorCode::Internal, "web policy missing")),
    };
    match verdict {
        Ok(()) => Ok(next.call(req).await?.map_into_left_body()),
        Err(e) => {
            log::debug!("{} {} refused: {e}", req.method(), req.path());
            Ok(req.into_response(e.error_response()).map_into_right_body())
        }
    }
}

#[cfg(test)]
mod tests;
