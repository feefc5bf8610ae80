//! Principals cannot interfere with each other (auth on), over real sockets: the
//! duplicate window is per principal (one principal's id never suppresses another's
//! event nor reveals its cursor, across a restart too), an event's `source` is its
//! publisher unless the token grants other names, and JWTs that are not valid yet,
//! signed otherwise or meant for someone else are refused on HTTP and WebSocket.
//! Each test ends with the server healthy and a bystander that received everything.

mod common;

use std::time::Duration;

use common::{TestServer, WsClient};
use serde_json::{json, Value};
use switchyard::config::{AuthConfig, Config, TokenConfig};

const PLANNER: &str = "planner-token-0123456789";
const WORKER: &str = "worker-token-01234567890";
const BILLING: &str = "billing-token-0123456789";
const ADMIN: &str = "admin-token-0123456789ab";
const SECRET: &str = "a-jwt-secret-of-at-least-32-bytes!!";
const QUIET: Duration = Duration::from_millis(200);

/// Built from JSON, as a tokens file would be read: fields this version does not know
/// are refused at start, not at compile time.
fn token(fields: Value) -> TokenConfig {
    serde_json::from_value(fields).expect("a token config")
}

fn with_tokens(c: &mut Config) {
    c.auth.tokens = vec![
        token(json!({"name": "planner", "token": PLANNER, "publish": ["task.>"]})),
        token(json!({"name": "worker", "token": WORKER, "publish": ["task.>"]})),
        token(
            json!({"name": "ops", "token": ADMIN, "publish": [">"], "subscribe": [">"],
                     "admin": true}),
        ),
    ];
    c.auth.jwt_secret = SECRET.into();
}

async fn ws_as(server: &TestServer, token: &str) -> WsClient {
    WsClient::try_connect_as(&server.ws_url("/ws"), Some(token))
        .await
        .expect("authenticated upgrade")
}

/// `(cursor, duplicate)` of a `published` reply.
fn outcome(reply: &Value) -> (u64, bool) {
    let cursor = reply["cursor"]
        .as_u64()
        .unwrap_or_else(|| panic!("{reply}"));
    (cursor, reply["duplicate"].as_bool().expect("duplicate"))
}

async fn http_publish(server: &TestServer, token: &str, event: Value) -> (u16, Value) {
    server
        .call("POST", "/api/events", Some(token), Some(&event))
        .await
}

/// The next `n` events a subscriber receives, as `(topic, source)`.
async fn received(sub: &mut WsClient, n: usize) -> Vec<(String, String)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let e = sub.recv_event().await["event"].clone();
        let field = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
        got.push((field("topic"), field("source")));
    }
    got
}

#[actix_rt::test]
async fn one_principals_ids_never_suppress_or_reveal_anothers_events() {
    let server = TestServer::with(with_tokens).await;
    let mut bystander = ws_as(&server, ADMIN).await;
    bystander.subscribe(json!({"type": "all"})).await;
    let mut planner = ws_as(&server, PLANNER).await;
    let mut worker = ws_as(&server, WORKER).await;

    let (first, dup) = outcome(&planner.publish(json!({"id": "x", "topic": "task.a"})).await);
    assert!(!dup);
    // The worker's event with the planner's id is its own event: stored, routed, and
    // answered with its own cursor, not the planner's.
    let reply = worker.publish(json!({"id": "x", "topic": "task.b"})).await;
    let (second, dup) = outcome(&reply);
    assert!(
        !dup,
        "another principal's id suppressed this event: {reply}"
    );
    assert_ne!(second, first, "another principal's cursor was revealed");
    // Within one principal, a repeat is still a duplicate, of its own event.
    let again = planner.publish(json!({"id": "x", "topic": "task.a"})).await;
    assert_eq!(outcome(&again), (first, true));
    assert_eq!(
        outcome(&worker.publish(json!({"id": "x", "topic": "task.b"})).await),
        (second, true)
    );
    // Over HTTP, the same rule.
    let (status, body) =
        http_publish(&server, PLANNER, json!({"id": "y", "topic": "task.c"})).await;
    assert_eq!(status, 201, "{body}");
    let third = body["results"][0]["cursor"].as_u64().expect("cursor");
    let (status, body) =
        http_publish(&server, WORKER, json!([{"id": "y", "topic": "task.d"}])).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["results"][0]["duplicate"], false, "{body}");
    assert_ne!(body["results"][0]["cursor"].as_u64(), Some(third), "{body}");
    assert_eq!(
        received(&mut bystander, 4).await,
        [
            ("task.a".into(), "planner".into()),
            ("task.b".into(), "worker".into()),
            ("task.c".into(), "planner".into()),
            ("task.d".into(), "worker".into()),
        ]
    );
    bystander.expect_silence(QUIET).await;
    drop((planner, worker, bystander));

    // After a restart the window is read back from the store, each id with its
    // publisher: the planner's retry is a duplicate, the admin's `x` is new.
    let (addr, data_dir) = (server.addr, server.data_dir.clone());
    server.stop().await;
    let server = TestServer::restart_on(addr, data_dir, with_tokens).await;
    let mut bystander = ws_as(&server, ADMIN).await;
    bystander.subscribe(json!({"type": "all"})).await;
    let mut planner = ws_as(&server, PLANNER).await;
    let retry = planner.publish(json!({"id": "x", "topic": "task.a"})).await;
    assert_eq!(outcome(&retry), (first, true), "{retry}");
    let mut ops = ws_as(&server, ADMIN).await;
    let reply = ops.publish(json!({"id": "x", "topic": "ops.x"})).await;
    let (cursor, dup) = outcome(&reply);
    assert!(!dup && cursor > third, "{reply}");
    assert_eq!(
        received(&mut bystander, 1).await,
        [("ops.x".into(), "ops".into())]
    );
    bystander.expect_silence(QUIET).await;
    planner.assert_alive().await;
    let (status, _) = server.call("GET", "/api/stats", Some(ADMIN), None).await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[actix_rt::test]
async fn the_source_is_the_publisher_unless_its_token_grants_other_names() {
    let server = TestServer::with(|c| {
        with_tokens(c);
        c.auth
            .tokens
            .push(token(json!({"name": "billing", "token": BILLING,
            "publish": ["cost.>"], "sources": ["billing-*"]})));
    })
    .await;
    let mut bystander = ws_as(&server, ADMIN).await;
    bystander.subscribe(json!({"type": "all"})).await;
    let mut planner = ws_as(&server, PLANNER).await;

    planner.publish(json!({"topic": "task.a"})).await;
    planner
        .publish(json!({"topic": "task.b", "source": "planner"}))
        .await;
    // Passing for another principal is refused and nothing is stored or routed.
    let reply = planner
        .request(json!({"type": "publish_event", "request_id": 1,
                        "event": {"topic": "task.c", "source": "ops"}}))
        .await;
    assert_eq!(reply["type"], "error", "posed as `ops`: {reply}");
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let reply = planner
        .request(json!({"type": "publish_batch", "events": [
            {"topic": "task.d"}, {"topic": "task.e", "source": "worker"}]}))
        .await;
    assert!(reply["results"][0]["cursor"].is_u64(), "{reply}");
    assert_eq!(reply["results"][1]["error"]["code"], "forbidden", "{reply}");
    let (status, body) = http_publish(
        &server,
        PLANNER,
        json!({"topic": "task.f", "source": "billing"}),
    )
    .await;
    assert_eq!((status, &body["error"]["code"]), (403, &json!("forbidden")));
    // A token that grants other names may use them, and only them.
    let mut billing = ws_as(&server, BILLING).await;
    billing
        .publish(json!({"topic": "cost.a", "source": "billing-eu"}))
        .await;
    let reply = billing
        .request(
            json!({"type": "publish_event", "event": {"topic": "cost.b", "source": "planner"}}),
        )
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");

    assert_eq!(
        received(&mut bystander, 4).await,
        [
            ("task.a".into(), "planner".into()),
            ("task.b".into(), "planner".into()),
            ("task.d".into(), "planner".into()),
            ("cost.a".into(), "billing-eu".into()),
        ]
    );
    bystander.expect_silence(QUIET).await;
    planner.assert_alive().await;
    billing.assert_alive().await;
    server.stop().await;
}

fn jwt(alg: jsonwebtoken::Algorithm, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode JWT")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `{"alg":"none","typ":"JWT"}`, base64url.
const ALG_NONE: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";

/// Each token is refused on an upgrade and on an HTTP request; then `good` works on
/// both, and a bystander connected with it receives an event published meanwhile.
async fn refused_everywhere(server: &TestServer, refused: &[(&str, String)], good: &str) {
    let url = server.ws_url("/ws");
    for (what, token) in refused {
        let upgrade = WsClient::try_connect_as(&url, Some(token)).await.err();
        assert_eq!(upgrade, Some(401), "upgrade with {what}");
        let (status, body) = server.call("GET", "/api/stats", Some(token), None).await;
        assert_eq!(status, 401, "HTTP with {what}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}");
    }
    let mut bystander = WsClient::try_connect_as(&url, Some(good))
        .await
        .expect("a valid JWT is accepted");
    bystander.subscribe(json!({"type": "all"})).await;
    let (status, _) = server.call("GET", "/api/stats", Some(good), None).await;
    assert_eq!(status, 200);
    let mut ops = ws_as(server, ADMIN).await;
    ops.publish(json!({"topic": "ops.after"})).await;
    assert_eq!(bystander.recv_event().await["event"]["topic"], "ops.after");
    bystander.assert_alive().await;
}

#[actix_rt::test]
async fn jwts_with_another_algorithm_or_not_valid_yet_are_refused() {
    use jsonwebtoken::Algorithm::{HS256, HS384, HS512};
    let server = TestServer::with(with_tokens).await;
    let claims = json!({"sub": "bot", "exp": now() + 60, "subscribe": [">"]});
    let good = jwt(HS256, claims.clone());
    let body = good.split('.').nth(1).expect("claims part").to_owned();
    let refused = [
        ("alg none", format!("{ALG_NONE}.{body}.")),
        ("HS384", jwt(HS384, claims.clone())),
        ("HS512", jwt(HS512, claims.clone())),
        (
            "nbf in the future",
            jwt(
                HS256,
                json!({"sub": "bot", "exp": now() + 600, "nbf": now() + 300}),
            ),
        ),
        (
            "an audience while none is configured",
            jwt(
                HS256,
                json!({"sub": "bot", "exp": now() + 60, "aud": "other"}),
            ),
        ),
    ];
    refused_everywhere(&server, &refused, &good).await;
    server.stop().await;
}

#[actix_rt::test]
async fn jwts_for_another_audience_or_issuer_are_refused_when_configured() {
    use jsonwebtoken::Algorithm::HS256;
    let server = TestServer::with(|c| {
        with_tokens(c);
        let tokens = std::mem::take(&mut c.auth.tokens);
        c.auth = serde_json::from_value::<AuthConfig>(json!({
            "jwt_secret": SECRET,
            "jwt_audience": "switchyard",
            "jwt_issuer": "https://id.example",
        }))
        .expect("auth config with an audience and an issuer");
        c.auth.tokens = tokens;
    })
    .await;
    let exp = now() + 60;
    let claims = |aud: Option<&str>, iss: Option<&str>| {
        let mut c = json!({"sub": "bot", "exp": exp, "subscribe": [">"]});
        if let Some(aud) = aud {
            c["aud"] = json!(aud);
        }
        if let Some(iss) = iss {
            c["iss"] = json!(iss);
        }
        jwt(HS256, c)
    };
    let (aud, iss) = (Some("switchyard"), Some("https://id.example"));
    let refused = [
        ("another audience", claims(Some("other"), iss)),
        ("no audience", claims(None, iss)),
        ("another issuer", claims(aud, Some("https://evil.example"))),
        ("no issuer", claims(aud, None)),
        (
            "the reserved name",
            jwt(
                HS256,
                json!({"sub": "anonymous", "exp": exp, "aud": "switchyard",
                              "iss": "https://id.example"}),
            ),
        ),
    ];
    refused_everywhere(&server, &refused, &claims(aud, iss)).await;
    server.stop().await;
}
