//! Authentication and topic grants over real sockets (docs/protocol.md section 1.3):
//! tokens and JWTs on the upgrade and on HTTP, publish and subscribe grants, narrowing,
//! admin endpoints, and a JWT that expires on a live connection.

mod common;

use std::time::Duration;

use awc::ws::CloseCode;
use common::{TestServer, WsClient};
use serde_json::{json, Value};
use switchyard::config::{Config, TokenConfig};

const PLANNER: &str = "planner-token-0123456789";
const MONITOR: &str = "monitor-token-0123456789";
const ADMIN: &str = "admin-token-0123456789ab";
const SECRET: &str = "a-jwt-secret-of-at-least-32-bytes!!";
const QUIET: Duration = Duration::from_millis(200);

fn token(
    name: &str,
    token: &str,
    publish: &[&str],
    subscribe: &[&str],
    admin: bool,
) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        token: token.into(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        admin,
        sources: Vec::new(),
    }
}

fn with_tokens(c: &mut Config) {
    c.auth.tokens = vec![
        token("planner", PLANNER, &["task.>"], &["task.>"], false),
        token("monitor", MONITOR, &[], &["task.>", "agent.*"], false),
        token("ops", ADMIN, &[">"], &[">"], true),
    ];
    c.auth.jwt_secret = SECRET.into();
}

async fn secured() -> TestServer {
    TestServer::with(with_tokens).await
}

async fn ws_as(server: &TestServer, token: &str) -> WsClient {
    WsClient::try_connect_as(&server.ws_url("/ws"), Some(token))
        .await
        .expect("authenticated upgrade")
}

fn jwt(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode JWT")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[actix_rt::test]
async fn upgrades_and_requests_need_a_valid_token() {
    let server = secured().await;
    let url = server.ws_url("/ws");
    assert_eq!(WsClient::try_connect(&url).await.err(), Some(401));
    assert_eq!(
        WsClient::try_connect_as(&url, Some("not-a-token-at-all"))
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        WsClient::try_connect(&server.ws_url("/")).await.err(),
        Some(401),
        "the bare root upgrade too"
    );
    // Header, or `?token=` for browsers.
    ws_as(&server, PLANNER).await.assert_alive().await;
    WsClient::connect(&server.ws_url(&format!("/ws?token={MONITOR}")))
        .await
        .assert_alive()
        .await;

    for path in [
        "/api/stats",
        "/api/topics",
        "/api/events",
        "/metrics",
        "/stats",
    ] {
        let (status, body) = server.call("GET", path, None, None).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{path}");
        let (status, _) = server
            .call("GET", path, Some("wrong-token-0123456789"), None)
            .await;
        assert_eq!(status, 401, "{path}");
        let (status, _) = server.call("GET", path, Some(MONITOR), None).await;
        assert_eq!(status, 200, "{path}");
    }
    // `?token=` is for WebSocket upgrades only.
    let (status, _) = server
        .call("GET", &format!("/api/stats?token={MONITOR}"), None, None)
        .await;
    assert_eq!(status, 401);
    // Probes stay open.
    for path in ["/health", "/ready"] {
        assert_eq!(server.call("GET", path, None, None).await.0, 200, "{path}");
    }
    server.stop().await;
}

#[actix_rt::test]
async fn publishing_outside_the_grant_is_forbidden_and_not_routed() {
    let server = secured().await;
    let mut watcher = ws_as(&server, ADMIN).await;
    watcher.subscribe(json!({"type": "all"})).await;
    let mut planner = ws_as(&server, PLANNER).await;

    let reply = planner.publish(json!({"type": "task_created"})).await;
    assert_eq!(reply["duplicate"], false);
    let event = watcher.recv_event().await["event"].clone();
    assert_eq!(
        event["source"], "planner",
        "the principal is the default source"
    );

    let reply = planner
        .request(
            json!({"type": "publish_event", "request_id": 7, "event": {"type": "agent_started"}}),
        )
        .await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "forbidden");
    assert_eq!(reply["request_id"], 7);

    let reply = planner
        .request(json!({"type": "publish_batch", "events": [
            {"topic": "task.done"}, {"topic": "cost.update"}, {"topic": "task.failed"}]}))
        .await;
    let results = reply["results"].as_array().expect("results").clone();
    assert!(results[0]["cursor"].is_u64(), "{reply}");
    assert_eq!(results[1]["error"]["code"], "forbidden", "{reply}");
    assert!(results[2]["cursor"].is_u64(), "{reply}");
    planner.assert_alive().await;

    // Only the allowed events were routed and stored.
    assert_eq!(watcher.recv_event().await["event"]["topic"], "task.done");
    assert_eq!(watcher.recv_event().await["event"]["topic"], "task.failed");
    watcher.expect_silence(QUIET).await;
    let (_, stored) = server.call("GET", "/api/events", Some(ADMIN), None).await;
    let topics: Vec<&str> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["task.created", "task.done", "task.failed"]);

    // The same rules over HTTP.
    let (status, body) = server
        .call(
            "POST",
            "/api/events",
            Some(PLANNER),
            Some(&json!({"topic": "agent.x"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("forbidden"))
    );
    let (status, body) = server
        .call(
            "POST",
            "/api/events",
            Some(PLANNER),
            Some(&json!([{"topic": "task.http"}, {"topic": "agent.x"}])),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["results"][1]["error"]["code"], "forbidden");
    let (status, _) = server
        .call(
            "POST",
            "/api/events",
            Some(MONITOR),
            Some(&json!({"topic": "task.x"})),
        )
        .await;
    assert_eq!(
        status, 403,
        "a token without publish grants publishes nothing"
    );
    server.stop().await;
}

#[actix_rt::test]
async fn subscriptions_are_narrowed_to_the_grant_or_refused() {
    let server = secured().await;
    let mut ops = ws_as(&server, ADMIN).await;
    let mut monitor = ws_as(&server, MONITOR).await;
    // Broader than the grant: narrowed. Entirely outside it: forbidden.
    monitor
        .subscribe(json!({"type": "pattern", "patterns": [">"]}))
        .await;
    let mut conditional = ws_as(&server, MONITOR).await;
    conditional.subscribe(json!({"condition": "true"})).await;
    let reply = monitor
        .request(json!({"type": "subscribe", "subscription": {"patterns": ["cost.>"]}}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let reply = monitor
        .request(json!({"action": "subscribe", "topics": ["logs.*"]}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    assert_eq!(
        WsClient::try_connect_as(&server.ws_url("/ws?topics=cost.%3E"), Some(MONITOR))
            .await
            .err(),
        Some(403),
        "a connect-time subscription outside the grant refuses the upgrade"
    );

    for topic in [
        "task.created",
        "cost.update",
        "agent.started",
        "agent.a7.started",
        "task.done",
    ] {
        ops.publish(json!({"topic": topic})).await;
    }
    for sub in [&mut monitor, &mut conditional] {
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(
                sub.recv_event().await["event"]["topic"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        assert_eq!(got, ["task.created", "agent.started", "task.done"]);
        sub.expect_silence(QUIET).await;
    }

    // Replay is narrowed the same way.
    let mut replay = ws_as(&server, MONITOR).await;
    replay
        .subscribe(json!({"type": "all", "from_cursor": 0}))
        .await;
    let mut got = Vec::new();
    loop {
        let msg = replay.recv().await;
        if msg["type"] == "replay_complete" {
            break;
        }
        got.push(msg["event"]["topic"].as_str().unwrap().to_owned());
    }
    assert_eq!(got, ["task.created", "agent.started", "task.done"]);

    // So is reading over HTTP.
    let (_, events) = server.call("GET", "/api/events", Some(MONITOR), None).await;
    assert_eq!(events.as_array().map(Vec::len), Some(3), "{events}");
    let (status, _) = server
        .call("GET", "/api/events?topic=cost.%3E", Some(MONITOR), None)
        .await;
    assert_eq!(status, 403);
    let (_, topics) = server.call("GET", "/api/topics", Some(MONITOR), None).await;
    let mut names: Vec<&str> = topics
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["agent.started", "task.created", "task.done"]);
    server.stop().await;
}

#[actix_rt::test]
async fn management_endpoints_are_admin_only() {
    let server = secured().await;
    for (method, path) in [
        ("GET", "/api/subscriptions"),
        ("GET", "/api/dead-letters"),
        ("POST", "/api/dead-letters/1/retry"),
        ("DELETE", "/api/dead-letters/1"),
    ] {
        let (status, body) = server.call(method, path, Some(PLANNER), None).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden");
        let (status, _) = server.call(method, path, None, None).await;
        assert_eq!(status, 401, "{method} {path}");
        let (status, _) = server.call(method, path, Some(ADMIN), None).await;
        assert!(
            status == 200 || status == 404,
            "{method} {path} as admin: {status}"
        );
    }
    server.stop().await;
}

#[actix_rt::test]
async fn jwts_carry_grants_and_close_the_connection_when_they_expire() {
    let server = secured().await;
    let url = server.ws_url("/ws");
    let expired = jwt(json!({"sub": "bot", "exp": now() - 5, "subscribe": [">"]}));
    assert_eq!(
        WsClient::try_connect_as(&url, Some(&expired)).await.err(),
        Some(401)
    );
    let forged = {
        let mut t = jwt(json!({"sub": "bot", "exp": now() + 60, "admin": true}));
        t.replace_range(t.len() - 4.., "AAAA");
        t
    };
    assert_eq!(
        WsClient::try_connect_as(&url, Some(&forged)).await.err(),
        Some(401)
    );
    let (status, _) = server
        .call("GET", "/api/subscriptions", Some(&forged), None)
        .await;
    assert_eq!(status, 401);

    let admin = jwt(json!({"sub": "dash", "exp": now() + 60, "subscribe": [">"], "admin": true}));
    let (status, _) = server
        .call("GET", "/api/subscriptions", Some(&admin), None)
        .await;
    assert_eq!(status, 200);

    let short =
        jwt(json!({"sub": "bot", "exp": now() + 2, "publish": ["bot.>"], "subscribe": ["bot.>"]}));
    let mut bot = WsClient::try_connect_as(&url, Some(&short))
        .await
        .expect("valid JWT");
    bot.subscribe(json!({"type": "all"})).await;
    bot.send(&json!({"type": "publish_event", "event": {"topic": "bot.hello"}}))
        .await;
    // The reply and the delivery of its own event, in either order.
    let (a, b) = (bot.recv().await, bot.recv().await);
    let (reply, event) = if a["type"] == "published" {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(reply["type"], "published", "{reply}");
    assert_eq!(event["event"]["source"], "bot", "{event}");
    let reply = bot
        .request(json!({"type": "publish_event", "event": {"topic": "task.x"}}))
        .await;
    assert_eq!(reply["code"], "forbidden");
    let close = bot.recv_close().await.expect("a close reason");
    assert_eq!(close.code, CloseCode::Policy);
    assert_eq!(close.description.as_deref(), Some("token expired"));
    server.stop().await;
}

#[actix_rt::test]
async fn tokens_can_come_from_a_tokens_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    std::fs::write(
        &path,
        "[[tokens]]\nname = \"filed\"\ntoken = \"filed-token-0123456789\"\npublish = [\"f.>\"]\n",
    )
    .unwrap();
    let server = TestServer::with(|c| c.auth.tokens_file = path.clone()).await;
    let (status, _) = server
        .call("GET", "/api/stats", Some("filed-token-0123456789"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(server.call("GET", "/api/stats", None, None).await.0, 401);
    server.stop().await;
}

#[actix_rt::test]
async fn durable_subscriptions_belong_to_their_principal() {
    let server = secured().await;
    let mut planner = ws_as(&server, PLANNER).await;
    let mut ops = ws_as(&server, ADMIN).await;
    // The same name under two principals: two independent durable subscriptions.
    planner
        .subscribe(json!({"patterns": ["task.>"], "durable": "worker"}))
        .await;
    ops.subscribe(json!({"patterns": ["task.>"], "durable": "worker"}))
        .await;
    let mut again = ws_as(&server, PLANNER).await;
    let reply = again
        .request(json!({"type": "subscribe", "subscription": {"patterns": ["task.>"], "durable": "worker"}}))
        .await;
    assert_eq!(
        reply["code"], "invalid_subscription",
        "already active for planner: {reply}"
    );
    let (_, subs) = server
        .call("GET", "/api/subscriptions", Some(ADMIN), None)
        .await;
    let principals: Vec<String> = subs["connections"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["subscriptions"].as_array().unwrap().iter())
        .map(|s| s["principal"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        principals.contains(&"planner".to_owned()) && principals.contains(&"ops".to_owned()),
        "{subs}"
    );
    server.stop().await;
}
