//! The web dashboard, end to end: a real server on 127.0.0.1:0 and headless Chromium
//! driven over WebDriver (`tests/browser`). Every wait polls the page with a generous
//! deadline; nothing asserts on speed.
//!
//! Set `SWITCHYARD_SCREENSHOT=docs/dashboard.png` to refresh the README's screenshot.

mod browser;
mod common;

use std::time::Duration;

use browser::{png_size, Browser};
use common::{TestServer, WsClient};
use fantoccini::key::Key;
use fantoccini::Locator;
use serde_json::{json, Value};
use switchyard::config::{Config, TokenConfig};

const WIDE: (u32, u32) = (1280, 800);
const ADMIN: &str = "ops-token-0123456789abcdef";
const VIEWER: &str = "viewer-token-0123456789ab";

async fn open_dashboard(server: &TestServer) -> Browser {
    let browser = Browser::open(WIDE.0, WIDE.1).await;
    browser.goto(&server.url("/")).await;
    browser
}

async fn publish_http(server: &TestServer, token: Option<&str>, events: Value) -> Value {
    let (status, body) = server
        .call("POST", "/api/events", token, Some(&events))
        .await;
    assert_eq!(status, 201, "publish: {body}");
    body
}

/// A raw HTTP GET: status, content type, CSP and the body's start.
async fn fetch(server: &TestServer, path: &str) -> (u16, String, String, String) {
    let mut res = awc::Client::new()
        .get(server.url(path))
        .send()
        .await
        .expect("GET");
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (content_type, csp) = (header("content-type"), header("content-security-policy"));
    let body = res.body().limit(1 << 20).await.expect("body");
    (
        res.status().as_u16(),
        content_type,
        csp,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn with_tokens(c: &mut Config) {
    let token = |name: &str, token: &str, admin: bool| TokenConfig {
        name: name.into(),
        token: token.into(),
        publish: vec![">".into()],
        subscribe: vec![">".into()],
        admin,
        sources: Vec::new(),
    };
    c.auth.tokens = vec![token("ops", ADMIN, true), token("viewer", VIEWER, false)];
}

#[actix_rt::test]
async fn files_are_served_with_content_types_and_a_strict_csp() {
    let server = TestServer::with(with_tokens).await;
    let (status, content_type, csp, body) = fetch(&server, "/").await;
    assert_eq!(status, 200, "the page needs no token: {body}");
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(body.starts_with("<!doctype html>"));
    let host = server.addr.to_string();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        &format!("connect-src 'self' ws://{host} wss://{host}"),
    ] {
        assert!(csp.contains(part), "CSP lacks `{part}`: {csp}");
    }
    for (file, expected) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let (status, content_type, csp, _) = fetch(&server, &format!("/dashboard/{file}")).await;
        assert_eq!((status, content_type.as_str()), (200, expected), "{file}");
        assert!(!csp.is_empty(), "{file} has a CSP");
    }
    let (status, _, _, body) = fetch(&server, "/dashboard/../Cargo.toml").await;
    assert_eq!(status, 404, "{body}");
    let (status, _, _, body) = fetch(&server, "/dashboard/secrets.js").await;
    assert_eq!(status, 404, "{body}");
    // The data stays behind the token.
    assert_eq!(server.call("GET", "/api/info", None, None).await.0, 401);
    assert_eq!(server.call("GET", "/api/stats", None, None).await.0, 401);
    let (status, info) = server.call("GET", "/api/info", Some(VIEWER), None).await;
    assert_eq!((status, &info["dashboard"]), (200, &json!("/")));
}

#[actix_rt::test]
async fn a_published_event_appears_and_its_payload_expands() {
    let server = TestServer::start().await;
    let b = open_dashboard(&server).await;
    b.wait_subscribed("", "").await;

    let mut publisher = server.ws().await;
    publisher
        .publish(
            json!({"type": "task_created", "priority": "high", "source": "planner",
                        "payload": {"task_id": "t-42", "title": "Index <b>repo</b>"}}),
        )
        .await;
    b.wait_for_row("task.created").await;
    let row = b
        .js(
            "const li = document.querySelector('#timeline > li');
             return {cls: li.className, icon: li.querySelector('svg.icon').getAttribute('class'),
                     prio: li.querySelector('.prio').textContent,
                     source: li.querySelector('.source').textContent,
                     when: li.querySelector('time').textContent,
                     bold: li.querySelectorAll('b').length};",
            vec![],
        )
        .await;
    assert_eq!(row["cls"], "event prio-high", "{row}");
    assert_eq!(row["icon"], "icon fam-task", "{row}");
    assert_eq!(row["prio"], "high");
    assert_eq!(row["source"], "planner");
    assert_eq!(row["when"], "just now");

    // The row is a button: Enter expands the pretty-printed payload (text, not HTML).
    let head = b
        .client
        .find(Locator::Css("#timeline > li .event-head"))
        .await
        .expect("row button");
    head.send_keys(&Key::Enter.to_string())
        .await
        .expect("press Enter on the row");
    let payload = b
        .wait_for(
            "the expanded payload",
            "const p = document.querySelector('#timeline > li .payload');
             return p && !p.closest('.event-detail').hidden ? p.textContent : null;",
            vec![],
        )
        .await;
    let payload = payload.as_str().unwrap_or_default();
    assert!(payload.contains("\n  \"task_id\": \"t-42\""), "{payload}");
    assert!(payload.contains("Index <b>repo</b>"), "{payload}");
    assert_eq!(
        b.js(
            "return document.querySelectorAll('#timeline b').length;",
            vec![]
        )
        .await,
        0
    );

    // Newest first.
    publisher
        .publish(json!({"topic": "agent.started", "source": "runner"}))
        .await;
    b.wait_for_row("agent.started").await;
    assert_eq!(b.timeline_topics().await, ["agent.started", "task.created"]);
    b.close().await;
}

#[actix_rt::test]
async fn quick_filters_patterns_and_priorities_narrow_the_timeline() {
    let server = TestServer::start().await;
    let b = open_dashboard(&server).await;
    b.wait_subscribed("", "").await;
    let mut publisher = server.ws().await;

    // Quick filter "Task": agent events no longer arrive. Each check publishes the
    // excluded event first: once the later, matching one is shown, the other had its turn.
    b.click("#quick-filters button:nth-child(2)").await;
    b.wait_subscribed("task.>", "").await;
    assert_eq!(
        b.text("#quick-filters [aria-pressed=true]").await,
        "Task",
        "the quick filter shows as pressed"
    );
    publisher.publish(json!({"topic": "agent.started"})).await;
    publisher.publish(json!({"topic": "task.created"})).await;
    b.wait_for_row("task.created").await;
    assert_eq!(b.timeline_topics().await, ["task.created"]);

    // A typed pattern (Enter submits it) replaces it.
    b.type_into("#pattern", &format!("agent.*{}", Key::Enter))
        .await;
    b.wait_subscribed("agent.*", "").await;
    // The matching history replaces the rows: the agent event published earlier.
    b.wait_for_row("agent.started").await;
    assert_eq!(b.timeline_topics().await, ["agent.started"]);
    publisher.publish(json!({"topic": "task.updated"})).await;
    publisher.publish(json!({"topic": "agent.stopped"})).await;
    b.wait_for_row("agent.stopped").await;
    assert_eq!(
        b.timeline_topics().await,
        ["agent.stopped", "agent.started"]
    );

    // Back to all topics, without low priority.
    b.click("#quick-filters button:nth-child(1)").await;
    b.wait_subscribed("", "").await;
    b.click("[data-priority-toggle=low]").await;
    b.wait_for(
        "a subscription without low priority",
        "return document.querySelector('#sub-status').textContent.includes('critical+high+normal');",
        vec![],
    )
    .await;
    publisher
        .publish(json!({"topic": "logs.debug", "priority": "low"}))
        .await;
    publisher
        .publish(json!({"topic": "logs.error", "priority": "normal"}))
        .await;
    b.wait_for_row("logs.error").await;
    assert_eq!(
        b.timeline_topics().await,
        [
            "logs.error",
            "agent.stopped",
            "task.updated",
            "task.created",
            "agent.started"
        ]
    );
    b.close().await;
}

/// The rows of the timeline as (topic, cursor), newest first.
async fn rows(b: &Browser) -> Vec<(String, u64)> {
    let v = b
        .js(
            "return Array.from(document.querySelectorAll('#timeline > li'),
                 li => [li.dataset.topic, Number(li.dataset.cursor)]);",
            vec![],
        )
        .await;
    serde_json::from_value(v).unwrap_or_default()
}

#[actix_rt::test]
async fn opens_on_recent_history_then_live_and_reloads_it_on_filter_change() {
    let server = TestServer::start().await;
    // Stored before the page opens, of mixed priorities (live order is by priority).
    let before: Vec<Value> = ["task.a", "agent.b", "task.c", "logs.d"]
        .iter()
        .zip(["low", "critical", "normal", "high"])
        .map(|(t, p)| json!({"topic": t, "priority": p}))
        .collect();
    publish_http(&server, None, Value::Array(before)).await;
    let b = open_dashboard(&server).await;
    b.wait_subscribed("", "").await;
    b.wait_for(
        "the four stored events",
        "return document.querySelectorAll('#timeline > li').length === 4;",
        vec![],
    )
    .await;
    let topics = |rows: &[(String, u64)]| rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        topics(&rows(&b).await),
        ["logs.d", "task.c", "agent.b", "task.a"]
    );

    // Published after: shown once, on top, with nothing repeated from the history.
    let mut publisher = server.ws().await;
    publisher
        .publish(json!({"topic": "task.e", "priority": "low"}))
        .await;
    publisher.publish(json!({"topic": "agent.f"})).await;
    b.wait_for_row("agent.f").await;
    b.wait_for_row("task.e").await;
    let now = rows(&b).await;
    assert_eq!(
        topics(&now),
        ["agent.f", "task.e", "logs.d", "task.c", "agent.b", "task.a"]
    );
    let cursors: Vec<u64> = now.iter().map(|r| r.1).collect();
    assert_eq!(
        cursors,
        [6, 5, 4, 3, 2, 1],
        "each cursor once, newest first"
    );

    // A filter change reloads the matching history, then goes on live.
    b.click("#quick-filters button:nth-child(2)").await;
    b.wait_subscribed("task.>", "").await;
    b.wait_for(
        "the task history",
        "return document.querySelectorAll('#timeline > li').length === 3;",
        vec![],
    )
    .await;
    assert_eq!(topics(&rows(&b).await), ["task.e", "task.c", "task.a"]);
    publisher.publish(json!({"topic": "agent.g"})).await;
    publisher.publish(json!({"topic": "task.h"})).await;
    b.wait_for_row("task.h").await;
    assert_eq!(
        topics(&rows(&b).await),
        ["task.h", "task.e", "task.c", "task.a"]
    );
    b.close().await;
}

#[actix_rt::test]
async fn a_bad_condition_shows_the_server_error_and_keeps_the_old_subscription() {
    let server = TestServer::start().await;
    let b = open_dashboard(&server).await;
    b.wait_subscribed("", "").await;

    b.type_into("#condition", &format!("payload.n >{}", Key::Enter))
        .await;
    let error = b
        .wait_for(
            "the condition error",
            "const e = document.querySelector('#condition-error');
             return e.hidden ? null : e.textContent;",
            vec![],
        )
        .await;
    let error = error.as_str().unwrap_or_default();
    assert!(error.starts_with("invalid_condition: "), "{error}");
    assert_eq!(
        b.js(
            "return document.querySelector('#condition').getAttribute('aria-invalid');",
            vec![]
        )
        .await,
        "true"
    );
    // The refused change left the previous subscription (all topics) running.
    let mut publisher = server.ws().await;
    publisher.publish(json!({"topic": "cost.update"})).await;
    b.wait_for_row("cost.update").await;

    // A good condition clears the error and filters on the server.
    b.type_into("#condition", &format!("payload.n > 5{}", Key::Enter))
        .await;
    b.wait_subscribed("", "payload.n > 5").await;
    assert_eq!(
        b.js(
            "return document.querySelector('#condition-error').hidden;",
            vec![]
        )
        .await,
        true
    );
    publisher
        .publish(json!({"topic": "cost.small", "payload": {"n": 1}}))
        .await;
    publisher
        .publish(json!({"topic": "cost.big", "payload": {"n": 9}}))
        .await;
    b.wait_for_row("cost.big").await;
    assert_eq!(b.timeline_topics().await, ["cost.big"]);
    b.close().await;
}

#[actix_rt::test]
async fn the_stats_panel_follows_the_router() {
    let server = TestServer::start().await;
    let b = open_dashboard(&server).await;
    b.wait_subscribed("", "").await;
    let events: Vec<Value> = (0..7)
        .map(|i| json!({"topic": "task.tick", "priority": if i < 3 {"critical"} else {"low"}}))
        .collect();
    publish_http(&server, None, Value::Array(events)).await;
    b.wait_for(
        "7 published in the stats panel",
        "return document.querySelector('[data-stat=published]').textContent === '7';",
        vec![],
    )
    .await;
    b.wait_for(
        "7 delivered (to the dashboard itself)",
        "return document.querySelector('[data-stat=delivered]').textContent === '7';",
        vec![],
    )
    .await;
    assert_eq!(b.text("[data-stat=connections]").await, "1");
    assert_eq!(b.text("[data-stat=subscriptions]").await, "1");
    assert_eq!(b.text("[data-stat=queue-total]").await, "0");
    // The answering node: by default its host name and port.
    let node = b.text("#node-name").await;
    let port = format!(":{}", server.addr.port());
    assert!(node.starts_with("node ") && node.ends_with(&port), "{node}");
    // The chart has samples and drew something.
    b.wait_for(
        "two chart samples",
        "return Number(document.querySelector('#rate-chart').dataset.samples) >= 2;",
        vec![],
    )
    .await;
    let drawn = b
        .js(
            "const c = document.querySelector('#rate-chart');
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
             return n;",
            vec![],
        )
        .await;
    assert!(drawn.as_u64().unwrap_or(0) > 100, "chart pixels: {drawn}");
    b.close().await;
}

#[actix_rt::test]
async fn a_dead_letter_can_be_retried_and_deleted_from_the_page() {
    let server = TestServer::start().await;
    let b = open_dashboard(&server).await;
    b.wait_subscribed("", "").await;
    b.wait_for(
        "an empty dead-letter list",
        "return document.querySelector('#dl-list').textContent.includes('No dead letters');",
        vec![],
    )
    .await;

    // A worker that never acknowledges: its delivery is dead-lettered after one attempt.
    let mut worker = server.ws().await;
    worker
        .subscribe(
            json!({"type": "pattern", "patterns": ["job.>"], "ack": true,
                          "max_attempts": 1, "ack_timeout_ms": 100}),
        )
        .await;
    let mut publisher = server.ws().await;
    let published = publisher.publish(json!({"topic": "job.run"})).await;
    let first = worker.recv_event().await;
    assert_eq!(first["event"]["id"], published["event_id"]);

    let id = b
        .wait_for(
            "the dead letter on the page",
            "const li = document.querySelector('#dl-list .dead-letter');
             return li && li.textContent.includes('job.run') && li.textContent.includes('max_attempts')
                 ? li.dataset.id : null;",
            vec![],
        )
        .await;
    assert!(b.text("#dl-list").await.contains("1 attempt"));
    b.click(&format!(
        "#dl-list [data-id='{}'] [data-action=retry]",
        id.as_str().unwrap_or("?")
    ))
    .await;
    // Back to the worker's subscription, which is still open.
    let again = worker.recv_event().await;
    assert_eq!(again["event"]["id"], published["event_id"]);
    b.wait_for(
        "the retry reported",
        "return document.querySelector('#dl-message').textContent.includes('redelivered');",
        vec![],
    )
    .await;

    // Not acknowledged again: a new dead letter, which is deleted from the page.
    let id2 = b
        .wait_for(
            "the second dead letter",
            "const li = document.querySelector('#dl-list .dead-letter');
             return li && li.dataset.id !== arguments[0] ? li.dataset.id : null;",
            vec![id.clone()],
        )
        .await;
    b.click(&format!(
        "#dl-list [data-id='{}'] [data-action=delete]",
        id2.as_str().unwrap_or("?")
    ))
    .await;
    b.wait_for(
        "the list empty again",
        "return document.querySelector('#dl-list').textContent.includes('No dead letters');",
        vec![],
    )
    .await;
    let (status, list) = server.get("/api/dead-letters").await;
    assert_eq!((status, list), (200, json!([])));
    b.close().await;
}

#[actix_rt::test]
async fn with_auth_on_the_token_prompt_works() {
    let server = TestServer::with(with_tokens).await;
    let b = open_dashboard(&server).await;
    b.wait_for(
        "the token prompt",
        "return document.querySelector('#token-dialog').open;",
        vec![],
    )
    .await;
    assert_eq!(b.text("#status-text").await, "Token needed");

    b.type_into(
        "#token-input",
        &format!("not-a-valid-token-at-all{}", Key::Enter),
    )
    .await;
    b.wait_for(
        "the refusal",
        "return document.querySelector('#token-error').textContent.includes('refused');",
        vec![],
    )
    .await;

    // A token without admin: connected, events shown, dead letters refused with the 403.
    b.type_into("#token-input", &format!("{VIEWER}{}", Key::Enter))
        .await;
    b.wait_subscribed("", "").await;
    assert_eq!(
        b.js(
            "return document.querySelector('#token-dialog').open;",
            vec![]
        )
        .await,
        false
    );
    publish_http(&server, Some(ADMIN), json!({"topic": "agent.ready"})).await;
    b.wait_for_row("agent.ready").await;
    let message = b
        .wait_for(
            "the 403 from the dead letters",
            "const m = document.querySelector('#dl-message');
             return m.hidden ? null : m.textContent;",
            vec![],
        )
        .await;
    assert!(
        message
            .as_str()
            .unwrap_or_default()
            .contains("`viewer` is not an admin"),
        "{message}"
    );
    assert_eq!(
        b.js("return sessionStorage.getItem('switchyard.token');", vec![])
            .await,
        VIEWER
    );

    // The token survives a reload of the tab: no prompt.
    b.client.refresh().await.expect("reload");
    b.wait_subscribed("", "").await;
    assert_eq!(
        b.js(
            "return document.querySelector('#token-dialog').open;",
            vec![]
        )
        .await,
        false
    );
    b.close().await;
}

#[actix_rt::test]
async fn reconnects_after_a_restart_and_resumes_from_the_last_cursor() {
    let server = TestServer::start().await;
    let (addr, data_dir) = (server.addr, server.data_dir.clone());
    let b = open_dashboard(&server).await;
    b.wait_subscribed("", "").await;
    let mut publisher = server.ws().await;
    publisher.publish(json!({"topic": "task.before"})).await;
    b.wait_for_row("task.before").await;
    drop(publisher);

    server.stop().await;
    b.wait_for(
        "the reconnecting status",
        "return document.querySelector('#status-text').textContent.startsWith('Reconnecting in');",
        vec![],
    )
    .await;
    // Published while the page is away: replayed when it resumes.
    let server = TestServer::restart_on(addr, data_dir, |_| {}).await;
    let mut publisher = WsClient::connect(&server.ws_url("/ws")).await;
    publisher.publish(json!({"topic": "task.during"})).await;
    b.wait_for_within(
        Duration::from_secs(10),
        "the missed event, after the reconnect",
        "return !!Array.from(document.querySelectorAll('#timeline > li'))
             .find(li => li.dataset.topic === 'task.during');",
        vec![],
    )
    .await;
    assert_eq!(b.timeline_topics().await, ["task.during", "task.before"]);

    // The manual button reconnects at once, and the timeline goes on.
    b.click("#reconnect").await;
    b.wait_subscribed("", "").await;
    publisher.publish(json!({"topic": "task.after"})).await;
    b.wait_for_row("task.after").await;
    assert_eq!(
        b.timeline_topics().await,
        ["task.after", "task.during", "task.before"]
    );
    b.close().await;
}

#[actix_rt::test]
async fn pure_page_logic_backoff_filters_and_topic_families() {
    let server = TestServer::start().await;
    let b = open_dashboard(&server).await;
    let results = b
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             Promise.all(['backoff', 'filters', 'timeline', 'stats']
                 .map(m => import(`/dashboard/${m}.js`)))
             .then(([backoff, filters, timeline, stats]) => done({
                 low: [1, 2, 3, 4, 5, 6, 7, 20].map(a => backoff.backoffDelay(a, 0)),
                 high: [1, 2, 3, 4, 5, 6, 7, 20].map(a => backoff.backoffDelay(a, 0.999999)),
                 all: filters.buildSubscription({}),
                 task: filters.buildSubscription({patterns: 'task.>, agent.*'}),
                 mixed: filters.buildSubscription({condition: ' x > 1 ', priorities: ['low', 'critical']}),
                 families: ['task.created', 'switchyard.dead_letter', 'logs.error', 'agent', 'custom.event']
                     .map(timeline.topicFamily),
                 ago: [500, 12000, 300000, 7200000].map(ms => timeline.relativeTime(0, ms)),
                 rates: stats.ratesBetween({at: 0, published: {critical: 1, low: 9}},
                                           {at: 2000, published: {critical: 5, low: 3}}),
                 ceilings: [0, 0.4, 3, 7, 11, 999].map(stats.niceCeiling),
             }))
             .catch(e => done({error: String(e)}));",
            vec![],
        )
        .await
        .expect("the page's modules load");
    assert_eq!(results["error"], Value::Null, "{results}");
    assert_eq!(
        results["low"],
        json!([800, 1600, 3200, 6400, 12800, 24000, 24000, 24000])
    );
    assert_eq!(
        results["high"],
        json!([1200, 2400, 4800, 9600, 19200, 36000, 36000, 36000])
    );
    assert_eq!(results["all"], json!({"type": "all"}));
    assert_eq!(
        results["task"],
        json!({"type": "pattern", "patterns": ["task.>", "agent.*"]})
    );
    assert_eq!(
        results["mixed"],
        json!({"type": "conditional", "condition": "x > 1",
               "filter": {"priorities": ["critical", "low"]}})
    );
    assert_eq!(
        results["families"],
        json!(["task", "system", "logs", "agent", "other"])
    );
    assert_eq!(
        results["ago"],
        json!(["just now", "12 s ago", "5 min ago", "2 h ago"])
    );
    assert_eq!(
        results["rates"],
        json!({"critical": 2, "high": 0, "normal": 0, "low": 0})
    );
    assert_eq!(results["ceilings"], json!([1, 1, 5, 10, 20, 1000]));
    b.close().await;
}

#[actix_rt::test]
async fn fits_1280x800_and_a_phone_and_is_keyboard_reachable() {
    let server = TestServer::start().await;
    let b = open_dashboard(&server).await;
    b.wait_subscribed("", "").await;
    assert_eq!(
        b.js("return [innerWidth, innerHeight];", vec![]).await,
        json!([WIDE.0, WIDE.1])
    );

    // Keyboard: Tab reaches every control in order, and the focused one shows a ring.
    let mut reached = Vec::new();
    for _ in 0..40 {
        b.press(Key::Tab).await;
        let focus = b
            .js(
                "const e = document.activeElement;
                 return {id: e.id, text: e.textContent.trim(), tag: e.tagName,
                         outline: getComputedStyle(e).outlineStyle};",
                vec![],
            )
            .await;
        if focus["tag"] == "BODY" {
            break; // past the last control: the focus left the page
        }
        assert_ne!(focus["outline"], "none", "focused without a ring: {focus}");
        reached.push(format!(
            "{}#{}:{}",
            focus["tag"].as_str().unwrap_or("?"),
            focus["id"].as_str().unwrap_or(""),
            focus["text"].as_str().unwrap_or("")
        ));
    }
    let reached = reached.join(" ");
    for control in [
        "#reconnect",
        "#token-button",
        ":Task",
        "#pattern",
        "#condition",
        "#pause",
        "#replay",
    ] {
        assert!(
            reached.contains(control),
            "Tab never reached {control}: {reached}"
        );
    }

    // A dead letter for the panel: a worker that never acknowledges.
    let mut worker = server.ws().await;
    worker
        .subscribe(
            json!({"type": "pattern", "patterns": ["job.>"], "ack": true,
                          "max_attempts": 1, "ack_timeout_ms": 100}),
        )
        .await;
    publish_http(
        &server,
        None,
        json!({"topic": "job.reindex", "priority": "high",
                                       "source": "scheduler", "payload": {"repo": "switchyard"}}),
    )
    .await;
    // A few seconds of a mixed stream, so that the chart has a shape.
    let samples = [
        (
            "task.created",
            "high",
            "planner",
            json!({"task_id": "t-108", "title": "Summarise incident #4411"}),
        ),
        (
            "agent.started",
            "normal",
            "runner-3",
            json!({"agent_id": "agent-7", "model": "small"}),
        ),
        (
            "tool.invoked",
            "low",
            "agent-7",
            json!({"tool": "grep", "args": ["-r", "timeout"]}),
        ),
        (
            "cost.budget_warning",
            "critical",
            "billing",
            json!({"total_cost": 7.42, "budget": 8.0}),
        ),
        (
            "workflow.step_completed",
            "normal",
            "orchestrator",
            json!({"workflow": "triage", "step": 3}),
        ),
        (
            "logs.error",
            "high",
            "agent-7",
            json!({"message": "upstream timed out after 30 s"}),
        ),
        (
            "task.completed",
            "normal",
            "runner-3",
            json!({"task_id": "t-107", "duration_ms": 5120}),
        ),
        (
            "system.node_joined",
            "low",
            "ops",
            json!({"node": "router-2", "zone": "b"}),
        ),
    ];
    for round in 0..6 {
        let events: Vec<Value> = samples
            .iter()
            .cycle()
            .skip(round * 3)
            .take(4 + (round * 5) % 11)
            .map(|(topic, priority, source, payload)| {
                json!({"topic": topic, "priority": priority, "source": source, "payload": payload})
            })
            .collect();
        publish_http(&server, None, Value::Array(events)).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    b.wait_for(
        "a full timeline and chart",
        "return document.querySelectorAll('#timeline > li').length >= 40
            && Number(document.querySelector('#rate-chart').dataset.samples) >= 6
            && !!document.querySelector('#dl-list .dead-letter');",
        vec![],
    )
    .await;
    // Nothing spills sideways at 1280×800.
    assert_eq!(
        b.js(
            "return document.documentElement.scrollWidth <= innerWidth;",
            vec![]
        )
        .await,
        true
    );
    b.click("#timeline > li:nth-child(2) .event-head").await;
    let png = b.screenshot().await;
    assert_eq!(png_size(&png), WIDE);
    if let Some(path) = std::env::var_os("SWITCHYARD_SCREENSHOT") {
        std::fs::write(&path, &png).expect("write the screenshot");
    }

    // A phone-width window: one column, nothing wider than the screen.
    b.resize(390, 844).await;
    let layout = b
        .js(
            "const r = s => document.querySelector(s).getBoundingClientRect();
             return {fits: document.documentElement.scrollWidth <= innerWidth,
                     stacked: r('#stats').top > r('.timeline-panel').top,
                     pause: r('#pause').right <= innerWidth,
                     width: innerWidth};",
            vec![],
        )
        .await;
    assert_eq!(
        layout,
        json!({"fits": true, "stacked": true, "pause": true, "width": 390})
    );
    b.close().await;
}
