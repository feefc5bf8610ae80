//! Authentication and topic grants (docs/protocol.md section 1.3).
//!
//! Owns: turning a bearer credential (a configured token, or an HS256 JWT) into a
//! [`Principal`] with its grants, and the rules that read those grants: may it publish
//! to a topic, read a topic, manage the router. Must not: know about sockets or
//! actors; the HTTP layer, the session and the ingress call in here and answer
//! `unauthorized` / `forbidden` themselves. Credentials are never logged; a token is
//! compared in constant time against every configured token.
//!
//! With no token and no JWT secret configured, auth is off: every caller is the
//! principal `anonymous` with every grant, and the server refuses to listen on a
//! non-loopback address unless told `--insecure` ([`check_exposure`]). With auth on,
//! no credential may name that principal: `anonymous` is the scope of every event id
//! published while auth was off (see `routing::dedupe`), so reusing the name would
//! let a token see those.
//!
//! Principals cannot pass for each other: an event's `source` is its publisher's name
//! unless the credential grants other source names ([`Principal::check_source`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, TokenConfig};
use crate::error::{ErrorCode, ProtocolError};
use crate::protocol::event::MAX_FIELD_LEN;
use crate::routing::pattern::Pattern;

/// The principal of every caller when auth is off.
pub const ANONYMOUS: &str = crate::protocol::ANONYMOUS;
/// Shortest accepted static token.
pub const MIN_TOKEN_LEN: usize = 16;
/// Shortest accepted JWT secret, in bytes.
pub const MIN_JWT_SECRET_LEN: usize = 32;

/// Why auth could not be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("auth.tokens_file {path}: {message}")]
    TokensFile { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error(
        "refusing to listen on {0} without authentication: configure [auth] tokens or a \
         jwt_secret, listen on a loopback address, or pass --insecure"
    )]
    Exposed(SocketAddr),
}

/// Who is calling, and what they may do.
#[derive(Debug)]
pub struct Principal {
    pub name: String,
    publish: Grant,
    subscribe: Grant,
    /// `source` names it may publish under besides its own; `None`: any (auth off).
    sources: Option<Vec<String>>,
    pub admin: bool,
    /// When its credential stops being valid (JWTs); a live connection is closed then.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Grants as configured for a token or carried by a JWT's claims.
struct Grants<'a> {
    publish: &'a [String],
    subscribe: &'a [String],
    sources: &'a [String],
    admin: bool,
}

/// Topic patterns a principal may use; `All` when auth is off.
#[derive(Debug)]
enum Grant {
    All,
    Patterns(Vec<Pattern>),
}

impl Grant {
    fn parse(patterns: &[String], what: &str) -> Result<Grant, String> {
        let parsed = patterns
            .iter()
            .map(|p| Pattern::parse(p).map_err(|e| format!("{what}: {}", e.message)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Grant::Patterns(parsed))
    }

    fn allows(&self, topic: &str) -> bool {
        match self {
            Grant::All => true,
            Grant::Patterns(ps) => ps.iter().any(|p| p.matches(topic)),
        }
    }

    fn patterns(&self) -> Option<&[Pattern]> {
        match self {
            Grant::All => None,
            Grant::Patterns(ps) => Some(ps),
        }
    }
}

impl Principal {
    /// The caller when auth is off: every grant.
    pub fn anonymous() -> Arc<Principal> {
        Arc::new(Principal {
            name: ANONYMOUS.to_owned(),
            publish: Grant::All,
            subscribe: Grant::All,
            sources: None,
            admin: true,
            expires_at: None,
        })
    }

    /// An event source the server runs itself (`[[sources]]`): its own principal, so
    /// that its event ids are scoped to it and its events carry its name as `source`.
    /// It may publish to any topic outside `switchyard.>` and name any `source` (a
    /// line of a watched file may), and may read nothing.
    pub fn source(name: &str) -> Arc<Principal> {
        Arc::new(Principal {
            name: name.to_owned(),
            publish: Grant::All,
            subscribe: Grant::Patterns(Vec::new()),
            sources: None,
            admin: false,
            expires_at: None,
        })
    }

    fn from_grants(
        name: String,
        grants: Grants<'_>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Principal, String> {
        if name.is_empty() || name.len() > 128 {
            return Err("the name must be 1 to 128 bytes long".into());
        }
        if name == ANONYMOUS {
            return Err(format!(
                "the name `{ANONYMOUS}` is reserved for callers when auth is off"
            ));
        }
        if let Some(bad) = grants
            .sources
            .iter()
            .find(|s| s.is_empty() || s.len() > MAX_FIELD_LEN)
        {
            return Err(format!(
                "source grant `{bad}` must be 1 to {MAX_FIELD_LEN} bytes long"
            ));
        }
        Ok(Principal {
            publish: Grant::parse(grants.publish, "publish grant")?,
            subscribe: Grant::parse(grants.subscribe, "subscribe grant")?,
            sources: Some(grants.sources.to_vec()),
            name,
            admin: grants.admin,
            expires_at,
        })
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.allows(topic)
    }

    /// May it receive or read events of `topic` (subscriptions, replay, the HTTP API)?
    pub fn may_read(&self, topic: &str) -> bool {
        self.subscribe.allows(topic)
    }

    /// The subscribe grant, `None` when unrestricted.
    pub fn read_grant(&self) -> Option<&[Pattern]> {
        self.subscribe.patterns()
    }

    /// `forbidden` unless it may publish to `topic`.
    pub fn check_publish(&self, topic: &str) -> Result<(), ProtocolError> {
        if self.may_publish(topic) {
            return Ok(());
        }
        Err(ProtocolError::new(
            ErrorCode::Forbidden,
            format!("`{}` may not publish to topic `{topic}`", self.name),
        ))
    }

    /// `forbidden` unless it may publish an event whose `source` is `source`: its own
    /// name, or one its `sources` grant matches. An event that names no source was
    /// given the principal's name, so only an explicit other name is refused.
    pub fn check_source(&self, source: &str) -> Result<(), ProtocolError> {
        let allowed = match &self.sources {
            None => true,
            Some(globs) => source == self.name || globs.iter().any(|g| glob_matches(g, source)),
        };
        if allowed {
            return Ok(());
        }
        Err(ProtocolError::new(
            ErrorCode::Forbidden,
            format!("`{}` may not publish as source `{source}`", self.name),
        ))
    }

    /// `forbidden` unless it is an admin.
    pub fn check_admin(&self) -> Result<(), ProtocolError> {
        if self.admin {
            return Ok(());
        }
        Err(ProtocolError::new(
            ErrorCode::Forbidden,
            format!("`{}` is not an admin", self.name),
        ))
    }

    /// Is the credential past its expiry at `now`?
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

/// Does `name` match `glob`, where `*` stands for any run of characters (none too)
/// and everything else for itself? Linear in practice: on a mismatch only the last
/// `*` is retried one character further, never an earlier one.
pub fn glob_matches(glob: &str, name: &str) -> bool {
    let (g, n) = (glob.as_bytes(), name.as_bytes());
    let (mut gi, mut ni) = (0, 0);
    // The last `*` seen, and the position in `name` it is retried from.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if gi < g.len() && g[gi] == b'*' {
            star = Some((gi, ni));
            gi += 1;
        } else if gi < g.len() && g[gi] == n[ni] {
            gi += 1;
            ni += 1;
        } else if let Some((sg, sn)) = star {
            gi = sg + 1;
            ni = sn + 1;
            star = Some((sg, sn + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|&c| c == b'*')
}

/// Claims of an accepted JWT: the same grants as a static token, and an expiry.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    admin: bool,
}

/// The configured credentials.
pub struct Authenticator {
    tokens: Vec<(Vec<u8>, Arc<Principal>)>,
    jwt: Option<(jsonwebtoken::DecodingKey, jsonwebtoken::Validation)>,
    anonymous: Arc<Principal>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens themselves.
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .field("jwt", &self.jwt.is_some())
            .finish()
    }
}

/// A `[[tokens]]` file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenConfig>,
}

impl Authenticator {
    /// Reads `[auth]` (and its tokens file). Every grant pattern is checked here, so a
    /// typo fails the start, not the first request.
    pub fn from_config(config: &AuthConfig) -> Result<Authenticator, AuthSetupError> {
        let mut all = config.tokens.clone();
        if !config.tokens_file.as_os_str().is_empty() {
            all.extend(read_tokens_file(&config.tokens_file)?);
        }
        let mut tokens = Vec::with_capacity(all.len());
        for (i, t) in all.into_iter().enumerate() {
            let invalid = |message: String| AuthSetupError::Invalid {
                key: format!("auth.tokens[{i}] ({})", t.name),
                message,
            };
            if t.token.len() < MIN_TOKEN_LEN {
                return Err(invalid(format!(
                    "the token must be at least {MIN_TOKEN_LEN} characters long"
                )));
            }
            if t.token.matches('.').count() == 2 {
                return Err(invalid("a static token must not look like a JWT".into()));
            }
            let grants = Grants {
                publish: &t.publish,
                subscribe: &t.subscribe,
                sources: &t.sources,
                admin: t.admin,
            };
            let principal =
                Principal::from_grants(t.name.clone(), grants, None).map_err(invalid)?;
            tokens.push((t.token.into_bytes(), Arc::new(principal)));
        }
        let jwt = if config.jwt_secret.is_empty() {
            None
        } else {
            if config.jwt_secret.len() < MIN_JWT_SECRET_LEN {
                return Err(AuthSetupError::Invalid {
                    key: "auth.jwt_secret".into(),
                    message: format!("must be at least {MIN_JWT_SECRET_LEN} bytes long"),
                });
            }
            Some((
                jsonwebtoken::DecodingKey::from_secret(config.jwt_secret.as_bytes()),
                jwt_validation(config),
            ))
        };
        Ok(Authenticator {
            tokens,
            jwt,
            anonymous: Principal::anonymous(),
        })
    }

    /// Is any credential configured?
    /// The principal of the configured token named `name`: an event source of that
    /// name publishes with its grants (`crate::actors::sources`).
    pub fn principal_named(&self, name: &str) -> Option<Arc<Principal>> {
        self.tokens
            .iter()
            .find(|(_, p)| p.name == name)
            .map(|(_, p)| p.clone())
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty() || self.jwt.is_some()
    }

    /// The principal behind `credential` (the bearer token), or `unauthorized`. With
    /// auth off every caller is `anonymous`, whatever it sends.
    pub fn authenticate(&self, credential: Option<&str>) -> Result<Arc<Principal>, ProtocolError> {
        if !self.enabled() {
            return Ok(self.anonymous.clone());
        }
        let unauthorized = |why: &str| ProtocolError::new(ErrorCode::Unauthorized, why);
        let credential = credential
            .filter(|c| !c.is_empty())
            .ok_or_else(|| unauthorized("a bearer token is required"))?;
        if credential.matches('.').count() == 2 {
            if let Some((key, validation)) = &self.jwt {
                return decode_jwt(credential, key, validation);
            }
        }
        // Compare against every token, without stopping at the first match.
        let mut found = None;
        for (token, principal) in &self.tokens {
            if bool::from(token.as_slice().ct_eq(credential.as_bytes())) {
                found = Some(principal.clone());
            }
        }
        found.ok_or_else(|| unauthorized("invalid token"))
    }
}

/// What a JWT must satisfy. Only HS256 (`alg: none` and every other algorithm are
/// refused), `exp` and `sub` present, `exp` past and `nbf` not yet reached refused
/// with no leeway (jsonwebtoken checks `nbf` only when told), and `aud` and `iss`
/// required to be the configured ones when configured. With no audience configured,
/// a token naming one is refused: it was meant for another service.
fn jwt_validation(config: &AuthConfig) -> jsonwebtoken::Validation {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.leeway = 0;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if !config.jwt_audience.is_empty() {
        validation.set_audience(&[&config.jwt_audience]);
        required.push("aud");
    }
    if !config.jwt_issuer.is_empty() {
        validation.set_issuer(&[&config.jwt_issuer]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    validation
}

fn decode_jwt(
    credential: &str,
    key: &jsonwebtoken::DecodingKey,
    validation: &jsonwebtoken::Validation,
) -> Result<Arc<Principal>, ProtocolError> {
    use jsonwebtoken::errors::ErrorKind;
    let unauthorized = |why: String| ProtocolError::new(ErrorCode::Unauthorized, why);
    let data = jsonwebtoken::decode::<Claims>(credential, key, validation).map_err(|e| {
        unauthorized(match e.kind() {
            ErrorKind::ExpiredSignature => "the token has expired".into(),
            ErrorKind::ImmatureSignature => "the token is not valid yet (`nbf`)".into(),
            ErrorKind::InvalidAudience => "the token is not meant for this server (`aud`)".into(),
            ErrorKind::InvalidIssuer => "the token's issuer is not accepted (`iss`)".into(),
            ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted".into(),
            ErrorKind::InvalidSignature => "invalid token signature".into(),
            ErrorKind::MissingRequiredClaim(c) => format!("the token lacks the `{c}` claim"),
            _ => "invalid token".into(),
        })
    })?;
    let c = data.claims;
    let expires_at = DateTime::from_timestamp(c.exp, 0)
        .ok_or_else(|| unauthorized("the token's `exp` is out of range".into()))?;
    let grants = Grants {
        publish: &c.publish,
        subscribe: &c.subscribe,
        sources: &c.sources,
        admin: c.admin,
    };
    let principal = Principal::from_grants(c.sub, grants, Some(expires_at))
        .map_err(|e| unauthorized(format!("the token's claims are not valid: {e}")))?;
    Ok(Arc::new(principal))
}

fn read_tokens_file(path: &Path) -> Result<Vec<TokenConfig>, AuthSetupError> {
    let err = |message: String| AuthSetupError::TokensFile {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let file: TokensFile = toml::from_str(&text).map_err(|e| err(e.message().to_owned()))?;
    Ok(file.tokens)
}

/// Refuses an unauthenticated server on a non-loopback address unless
/// `server.insecure` (`--insecure`) is set.
pub fn check_exposure(
    addr: SocketAddr,
    insecure: bool,
    auth: &Authenticator,
) -> Result<(), AuthSetupError> {
    if auth.enabled() || addr.ip().is_loopback() || insecure {
        return Ok(());
    }
    Err(AuthSetupError::Exposed(addr))
}

/// The bearer token of a request: `Authorization: Bearer <token>`, or (for WebSocket
/// upgrades from browsers, which cannot set headers) `token` from the query string.
pub fn bearer(req: &actix_web::HttpRequest, allow_query: bool) -> Option<String> {
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_of_header);
    if header.is_some() || !allow_query {
        return header;
    }
    token_of_query(req.query_string())
}

/// The token of an `Authorization` header's value, if its scheme is `Bearer` (any
/// case).
pub fn bearer_of_header(value: &str) -> Option<String> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// `token` of a URL's query string (`a=1&token=...`), percent-decoded.
pub fn token_of_query(query: &str) -> Option<String> {
    actix_web::web::Query::<TokenQuery>::from_query(query)
        .ok()
        .and_then(|q| q.into_inner().token)
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

#[cfg(test)]
mod tests;
