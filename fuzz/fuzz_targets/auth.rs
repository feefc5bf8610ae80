//! Credentials as a client may send them. The first byte picks what the rest is:
//! - `0`: an `Authorization` header value, then (after a newline) a query string:
//!   `bearer_of_header`, `token_of_query`, and whatever they find authenticated;
//! - `1`: a credential as sent (static token or JWT text), authenticated;
//! - else: JWT claims as JSON, signed with the server's secret (so that claim parsing
//!   is reached past the signature check) under the header the byte picks, then
//!   authenticated and, when accepted, its grants exercised.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use switchyard::auth::{bearer_of_header, token_of_query, Authenticator};
use switchyard::config::{AuthConfig, TokenConfig};

const SECRET: &str = "fuzz-secret-of-at-least-32-bytes!!!!";

static AUTH: LazyLock<Authenticator> = LazyLock::new(|| {
    let config = AuthConfig {
        tokens: vec![TokenConfig {
            name: "planner".into(),
            token: "planner-token-0123456789".into(),
            publish: vec!["task.>".into()],
            subscribe: vec![">".into()],
            admin: false,
            sources: vec!["planner-*".into(), "*-bot".into()],
        }],
        tokens_file: Default::default(),
        jwt_secret: SECRET.into(),
        jwt_audience: "switchyard".into(),
        jwt_issuer: String::new(),
    };
    Authenticator::from_config(&config).expect("a valid fuzz config")
});

fn authenticate(credential: &str) {
    let Ok(principal) = AUTH.authenticate(Some(credential)) else {
        return;
    };
    for name in ["task.a", "agent.b", "x"] {
        let _ = principal.may_publish(name);
        let _ = principal.may_read(name);
        let _ = principal.check_source(name);
    }
    let _ = principal.check_source(&principal.name);
    let _ = principal.is_expired(chrono::Utc::now());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match mode {
        0 => {
            let (header, query) = text.split_once('\n').unwrap_or((text, ""));
            if let Some(token) = bearer_of_header(header) {
                authenticate(&token);
            }
            if let Some(token) = token_of_query(query) {
                authenticate(&token);
            }
        }
        1 => authenticate(text),
        alg => {
            let Ok(claims) = serde_json::from_str::<serde_json::Value>(text) else {
                return;
            };
            use jsonwebtoken::Algorithm::{HS256, HS384, HS512};
            let alg = [HS256, HS384, HS512][usize::from(alg) % 3];
            let Ok(token) = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(alg),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            ) else {
                return;
            };
            authenticate(&token);
        }
    }
});
