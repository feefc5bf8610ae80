//! The HTTP API of docs/protocol.md section 8, with every query parameter and alias.

mod common;

use common::TestServer;
use serde_json::{json, Value};
use switchyard::config::StoreKind;

async fn seed(server: &TestServer) -> Vec<u64> {
    let (status, body) = server
        .post(
            "/api/events",
            &json!([
                {"topic": "task.created", "priority": "low"},
                {"topic": "task.failed", "priority": "high"},
                {"topic": "agent.started", "priority": "normal"},
                {"topic": "task.created", "priority": "critical"},
                {"topic": "logs.error", "type": "error_line"},
            ]),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["type"], "published_batch");
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cursor"].as_u64().unwrap())
        .collect()
}

fn cursors(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["cursor"].as_u64().unwrap())
        .collect()
}

#[actix_rt::test]
async fn health_and_ready() {
    let server = TestServer::start().await;
    assert_eq!(server.get("/health").await, (200, json!({"status": "ok"})));
    assert_eq!(
        server.get("/ready").await,
        (200, json!({"status": "ready"}))
    );
}

/// `/api/info` lists the routes the server registered: each GET route it lists answers
/// (whatever its status, never the 404 of an unknown path), and an unlisted path is 404.
#[actix_rt::test]
async fn api_info_lists_the_registered_routes() {
    let server = TestServer::start().await;
    let (status, info) = server.get("/api/info").await;
    assert_eq!(status, 200, "{info}");
    let routes: Vec<String> = info["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    for expected in [
        "GET /ws",
        "POST /api/events",
        "DELETE /api/dead-letters/{id}",
    ] {
        assert!(
            routes.iter().any(|r| r == expected),
            "{expected} in {routes:?}"
        );
    }
    for route in &routes {
        let Some(path) = route.strip_prefix("GET ") else {
            continue;
        };
        let path = path.replace("{file}", "app.js");
        let (status, body) = server.get_text(&path).await;
        assert!(
            !(status == 404 && body.contains("no route for")),
            "{route}: {status} {body}"
        );
    }
    let (status, body) = server.get("/api/nothing-here").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");
}

#[actix_rt::test]
async fn post_events_accepts_one_or_many_and_reports_per_event() {
    let server = TestServer::start().await;
    let (status, body) = server
        .post("/api/events", &json!({"type": "task_created"}))
        .await;
    assert_eq!(status, 201);
    assert_eq!(body["results"][0]["duplicate"], false);
    let (status, body) = server
        .post(
            "/api/events",
            &json!([{"type": "a_b"}, {"type": 1}, {"type": "c_d"}]),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(body["results"][1]["error"]["code"], "invalid_event");
    assert!(body["results"][2]["cursor"].as_u64().is_some());
    // A single invalid event, or invalid JSON, is a 400 with the error body.
    let (status, body) = server
        .post("/api/events", &json!({"priority": "low"}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_event");
    let (status, body) = server.post_raw("/api/events", "{nope".into()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_json");
}

#[actix_rt::test]
async fn events_published_over_http_reach_websocket_subscribers() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    sub.subscribe(json!({"type": "pattern", "patterns": ["task.*"]}))
        .await;
    server
        .post(
            "/api/events",
            &json!({"type": "task_created", "payload": {"n": 1}}),
        )
        .await;
    let e = sub.recv_event().await;
    assert_eq!(e["event"]["payload"]["n"], 1);
}

#[actix_rt::test]
async fn events_query_parameters() {
    let server = TestServer::start().await;
    let c = seed(&server).await;
    let (status, all) = server.get("/api/events").await;
    assert_eq!(status, 200);
    assert_eq!(cursors(&all), c);
    assert_eq!(all[0]["topic"], "task.created");
    assert_eq!(all[0]["source"], "anonymous");

    let table: Vec<(&str, Vec<u64>)> = vec![
        ("/api/events?topic=task.*", vec![c[0], c[1], c[3]]),
        ("/api/events?topic=task.created", vec![c[0], c[3]]),
        ("/api/events?topic=%3E&type=error_line", vec![c[4]]),
        ("/api/events?type=agent_started", vec![c[2]]),
        ("/api/events?priority=critical", vec![c[3]]),
        ("/api/events?priority=HIGH", vec![c[1]]),
        (
            "/api/events?after=2",
            c.iter().copied().filter(|x| *x > 2).collect(),
        ),
        ("/api/events?limit=2", vec![c[0], c[1]]),
        ("/api/events?order=desc&limit=2", vec![c[4], c[3]]),
        ("/api/events?order=asc&topic=task.*&limit=1", vec![c[0]]),
        (
            "/api/events?order=desc&topic=task.*&after=1",
            vec![c[3], c[1]],
        ),
        ("/events?limit=1", vec![c[0]]),
    ];
    for (path, want) in table {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(cursors(&body), want, "{path}");
    }
}

#[actix_rt::test]
async fn events_limit_is_capped_at_1000_and_defaults_to_100() {
    let server = TestServer::start().await;
    for _ in 0..2 {
        let batch: Vec<Value> = (0..600)
            .map(|i| json!({"type": "bulk_event", "payload": {"i": i}}))
            .collect();
        let (status, _) = server.post("/api/events", &Value::Array(batch)).await;
        assert_eq!(status, 201);
    }
    let (_, body) = server.get("/api/events").await;
    assert_eq!(body.as_array().unwrap().len(), 100);
    let (_, body) = server.get("/api/events?limit=5000").await;
    assert_eq!(body.as_array().unwrap().len(), 1000);
}

#[actix_rt::test]
async fn bad_query_parameters_get_a_json_error() {
    let server = TestServer::start().await;
    for (path, code) in [
        ("/api/events?limit=abc", "invalid_request"),
        ("/api/events?limit=0", "invalid_request"),
        ("/api/events?after=-1", "invalid_request"),
        ("/api/events?order=sideways", "invalid_request"),
        ("/api/events?priority=urgent", "invalid_request"),
        ("/api/events?topic=a..b", "invalid_pattern"),
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
        assert!(body["error"]["message"].as_str().is_some());
    }
    let (status, body) = server.get("/api/nothing-here").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
}

#[actix_rt::test]
async fn log_is_bounded_by_store_max_events() {
    for kind in [StoreKind::Sqlite, StoreKind::Memory] {
        let server = TestServer::with(|c| {
            c.store.kind = kind;
            c.store.max_events = 3;
        })
        .await;
        bounded_log(&server).await;
    }
}

/// Events older than `store.max_age_secs` leave the log, the newer ones stay, and the
/// high-water mark stays where it was.
#[actix_rt::test]
async fn log_is_bounded_by_store_max_age() {
    for kind in [StoreKind::Sqlite, StoreKind::Memory] {
        let server = TestServer::with(|c| {
            c.store.kind = kind;
            c.store.max_age_secs = 4;
        })
        .await;
        let old = seed(&server).await;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let new = seed(&server).await;
        // Retention runs every second, so the first seed goes between 4 and 5 s after
        // it was stored, when the second is 2 to 3 s old: it must still be there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let kept = loop {
            let (_, body) = server.get("/api/events").await;
            let kept = cursors(&body);
            if !kept.contains(&old[0]) || std::time::Instant::now() > deadline {
                break kept;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(kept, new, "{kind:?}");
        let (_, stats) = server.get("/api/stats").await;
        assert_eq!(
            stats["store"]["last_cursor"],
            new[new.len() - 1],
            "{kind:?}"
        );
    }
}

async fn bounded_log(server: &TestServer) {
    let c = seed(server).await;
    let (_, body) = server.get("/api/events").await;
    assert_eq!(cursors(&body), c[2..].to_vec());
    let (_, stats) = server.get("/api/stats").await;
    assert_eq!(stats["store"]["event_count"], 3);
    assert_eq!(stats["store"]["first_cursor"], c[2]);
    assert_eq!(stats["store"]["last_cursor"], c[4]);
}

#[actix_rt::test]
async fn topics_lists_counts_and_last_cursor() {
    let server = TestServer::start().await;
    let c = seed(&server).await;
    for path in ["/api/topics", "/topics"] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 200);
        let created = body
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["topic"] == "task.created")
            .expect("task.created listed")
            .clone();
        assert_eq!(created["count"], 2);
        assert_eq!(created["last_cursor"], c[3]);
        assert!(chrono::DateTime::parse_from_rfc3339(created["last_at"].as_str().unwrap()).is_ok());
        assert_eq!(body.as_array().unwrap().len(), 4);
    }
}

#[actix_rt::test]
async fn stats_count_published_delivered_and_connections() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    sub.subscribe(json!({"type": "all"})).await;
    seed(&server).await;
    for _ in 0..5 {
        sub.recv_event().await;
    }
    for path in ["/api/stats", "/stats"] {
        let (status, s) = server.get(path).await;
        assert_eq!(status, 200);
        assert_eq!(s["events"]["published"]["total"], 5);
        assert_eq!(s["events"]["published"]["critical"], 1);
        assert_eq!(s["events"]["published"]["normal"], 2);
        assert_eq!(s["events"]["delivered"]["total"], 5);
        assert_eq!(s["events"]["delivered"]["low"], 1);
        assert_eq!(s["events"]["dropped"]["total"], 0);
        assert_eq!(s["events"]["dead_lettered"]["total"], 0);
        assert_eq!(s["queues"]["total"], 0);
        for p in ["critical", "high", "normal", "low"] {
            assert!(s["queues"][p].is_u64(), "queue depth {p}");
        }
        assert_eq!(s["connections"]["open"], 1);
        assert_eq!(s["subscriptions"], 1);
        assert!(s["rates_per_second"]["published"].is_number());
        assert!(s["uptime_seconds"].as_f64().unwrap() >= 0.0);
        assert_eq!(s["store"]["kind"], "sqlite");
    }
}

#[actix_rt::test]
async fn subscriptions_lists_connections_and_their_subscriptions() {
    let server = TestServer::start().await;
    let mut a = server.ws().await;
    a.subscribe(json!({"type": "pattern", "id": "p1", "patterns": ["task.*"]}))
        .await;
    a.subscribe(json!({"type": "filtered", "id": "f1", "filter": {"min_priority": "high"}}))
        .await;
    let _idle = server.ws().await;
    server
        .post("/api/events", &json!({"type": "task_created"}))
        .await;
    a.recv_event().await;
    let (status, body) = server.get("/api/subscriptions").await;
    assert_eq!(status, 200);
    assert_eq!(body["subscription_count"], 2);
    let conns = body["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2);
    let with_subs = conns
        .iter()
        .find(|c| c["subscriptions"].as_array().unwrap().len() == 2)
        .unwrap();
    let subs = with_subs["subscriptions"].as_array().unwrap();
    let p1 = subs.iter().find(|s| s["subscription_id"] == "p1").unwrap();
    assert_eq!(p1["kind"], "pattern");
    assert_eq!(p1["patterns"], json!(["task.*"]));
    assert_eq!(p1["delivered"], 1);
    assert_eq!(p1["dropped"], 0);
    assert_eq!(p1["in_flight"], 0);
    assert_eq!(p1["lag"], 0);
    let f1 = subs.iter().find(|s| s["subscription_id"] == "f1").unwrap();
    assert_eq!(f1["kind"], "filtered");
    assert_eq!(f1["filter"], json!({"min_priority": "high"}));
    assert!(with_subs["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
}

#[actix_rt::test]
async fn metrics_in_prometheus_text_format() {
    let server = TestServer::start().await;
    let mut sub = server.ws().await;
    sub.subscribe(json!({"type": "all"})).await;
    seed(&server).await;
    for _ in 0..5 {
        sub.recv_event().await;
    }
    let mut res = awc::Client::new()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let content_type = res
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    for line in [
        "switchyard_events_published_total{priority=\"critical\"} 1",
        "switchyard_events_published_total{priority=\"normal\"} 2",
        "switchyard_events_delivered_total{priority=\"low\"} 1",
        "switchyard_events_dropped_total{priority=\"low\"} 0",
        "switchyard_events_dead_lettered_total{priority=\"high\"} 0",
        "switchyard_connections 1",
        "switchyard_connections_opened_total 1",
        "# TYPE switchyard_queue_depth gauge",
        "# TYPE switchyard_store_commit_seconds histogram",
        "switchyard_store_commit_batch_size_count 1",
        "switchyard_topic_family_events_total{family=\"task\",event=\"published\",priority=\"low\"} 1",
        "switchyard_topic_family_events_total{family=\"task\",event=\"delivered\",priority=\"critical\"} 1",
        "switchyard_topic_family_events_total{family=\"agent\",event=\"published\",priority=\"normal\"} 1",
        "switchyard_topic_family_events_total{family=\"logs\",event=\"delivered\",priority=\"normal\"} 1",
        "# TYPE switchyard_publish_to_deliver_seconds histogram",
        "switchyard_publish_to_deliver_seconds_count{priority=\"normal\"} 2",
        "switchyard_publish_to_deliver_seconds_count{priority=\"high\"} 1",
        "# TYPE switchyard_router_inbox_wait_seconds histogram",
        "switchyard_router_inbox_wait_seconds_count{priority=\"normal\"} 2",
        "switchyard_router_inbox_wait_seconds_count{priority=\"critical\"} 1",
        "# EOF",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    } // The server's own resident memory, which `switchyard bench --idle-connections`
      // reads (Linux only).
    #[cfg(target_os = "linux")]
    {
        let rss = common::metric(&text, "process_resident_memory_bytes").expect("RSS gauge");
        assert!(rss > f64::from(1 << 20), "{rss}");
        // And its CPU time, which `switchyard bench` reports as the server's cores used.
        let cpu = common::metric(&text, "process_cpu_seconds_total").expect("CPU counter");
        assert!(cpu > 0.0, "{cpu}");
    }
}
