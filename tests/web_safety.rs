//! The web edge against hostile pages and clients (issue 21, points 1 and 5): foreign
//! `Origin`s on WebSocket upgrades, cross-site bodies that are not JSON, foreign `Host`
//! names with auth off (DNS rebinding), bodies sent before authentication, compressed
//! and slow bodies.
//!
//! Requests whose exact headers matter go over a raw `TcpStream`. Every scenario ends
//! with the server healthy and a bystander subscriber, connected throughout, that
//! received every event published to it. Only 127.0.0.1 is used; deadlines are
//! generous upper bounds, there so that a failure fails instead of hanging.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{TestServer, WsClient};
use serde_json::{json, Value};
use switchyard::config::{Config, TokenConfig};

const TOKEN: &str = "web-safety-token-0123456789";

// ---- helpers ----

/// A subscriber on `bystander.>`, reading on its own task until the `bystander_done`
/// event; its result is the ids it received, in order.
struct Bystander {
    task: actix_rt::task::JoinHandle<Vec<String>>,
    published: Vec<String>,
    token: Option<&'static str>,
}

impl Bystander {
    async fn connect(server: &TestServer, token: Option<&'static str>) -> Bystander {
        Bystander {
            task: common::bystander::start(&server.ws_url("/ws"), token).await,
            published: Vec::new(),
            token,
        }
    }

    /// Publishes one event for the bystander over HTTP, as a well-behaved client.
    async fn tick(&mut self, server: &TestServer) {
        let event = json!({"type": "bystander_tick", "topic": "bystander.tick"});
        let (status, body) = server
            .call("POST", "/api/events", self.token, Some(&event))
            .await;
        assert_eq!(status, 201, "bystander publish: {body}");
        let id = body["results"][0]["event_id"].as_str().expect("event id");
        self.published.push(id.to_owned());
    }

    /// Checks the server is healthy, then that the bystander got every event, in order.
    async fn finish(self, server: &TestServer) {
        assert_eq!(server.get("/health").await.0, 200, "/health");
        let (status, _) = server.call("GET", "/ready", self.token, None).await;
        assert_eq!(status, 200, "/ready");
        let mut fresh = WsClient::try_connect_as(&server.ws_url("/ws"), self.token)
            .await
            .expect("a fresh client connects");
        fresh.assert_alive().await;
        let done = json!({"type": "bystander_done", "topic": "bystander.done"});
        let (status, body) = server
            .call("POST", "/api/events", self.token, Some(&done))
            .await;
        assert_eq!(status, 201, "{body}");
        let got = self.task.await.expect("bystander task");
        assert_eq!(got, self.published, "bystander got every event, in order");
    }
}

/// An HTTP answer read off a raw socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

/// Connects to `addr` with a read timeout of `timeout`.
fn connect(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(timeout)).expect("read timeout");
    tcp
}

/// Reads one response (head, then a `Content-Length` body); `None` when the
/// connection ends or the read timeout passes before the head is complete.
fn read_answer(tcp: &mut TcpStream) -> Option<Answer> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte) {
            Ok(1) => raw.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let status = head.get(9..12)?.parse().ok()?;
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    tcp.read_exact(&mut body).ok()?;
    Some(Answer {
        status,
        head,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

/// Sends `request` (head and body as written) on a fresh connection and reads the
/// answer, in a blocking task.
async fn raw(addr: SocketAddr, request: Vec<u8>) -> Answer {
    actix_rt::task::spawn_blocking(move || {
        let mut tcp = connect(addr, Duration::from_secs(5));
        // The server may answer (and stop reading) before the whole request is sent.
        let _ = tcp.write_all(&request);
        read_answer(&mut tcp).expect("an answer within 5 s")
    })
    .await
    .expect("raw request task")
}

/// A WebSocket upgrade of `path` with these extra header lines.
fn upgrade(path: &str, host: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// A `POST /api/events` of `body` with these extra header lines.
fn post(host: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST /api/events HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// Events stored on `topic`, read as a well-behaved client.
async fn stored_on(server: &TestServer, topic: &str, token: Option<&str>) -> usize {
    let (status, events) = server
        .call("GET", &format!("/api/events?topic={topic}"), token, None)
        .await;
    assert_eq!(status, 200, "{events}");
    events.as_array().expect("an array").len()
}

fn with_token(c: &mut Config) {
    c.auth.tokens = vec![TokenConfig {
        name: "web".into(),
        token: TOKEN.into(),
        publish: vec![">".into()],
        subscribe: vec![">".into()],
        admin: true,
        sources: vec![],
    }];
}

/// A gzip member holding `data` in one stored (uncompressed) deflate block: what
/// `Content-Encoding: gzip` announces, with no compression library.
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let crc = data.iter().fold(!0u32, |mut crc, &b| {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
        crc
    }) ^ !0;
    let len = u16::try_from(data.len()).expect("one stored block");
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.push(1); // final block, stored
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

// ---- point 1: browser origins, content type, Host ----

/// A page on another site cannot open a WebSocket to the router (on `/ws` nor on `/`);
/// the server's own origin (the dashboard), a listed origin and programs that send no
/// `Origin` can.
#[actix_rt::test]
async fn websocket_upgrades_from_foreign_origins_are_refused() {
    let server = TestServer::with(|c| {
        c.server.allowed_origins = vec!["https://dash.example".into()];
    })
    .await;
    let mut bystander = Bystander::connect(&server, None).await;
    let host = server.addr.to_string();
    let own = format!("http://{host}");
    for path in ["/ws", "/"] {
        for origin in [
            "http://evil.example",
            "null",
            "http://localhost:1",
            &format!("https://{host}"),
        ] {
            let answer = raw(
                server.addr,
                upgrade(path, &host, &format!("Origin: {origin}\r\n")),
            )
            .await;
            assert_eq!(answer.status, 403, "{path} from {origin}: {}", answer.head);
            assert_eq!(answer.code(), "forbidden", "{}", answer.body);
        }
        bystander.tick(&server).await;
        for origin in [own.as_str(), "https://dash.example"] {
            let answer = raw(
                server.addr,
                upgrade(path, &host, &format!("Origin: {origin}\r\n")),
            )
            .await;
            assert_eq!(answer.status, 101, "{path} from {origin}: {}", answer.head);
        }
    }
    // A browser-like client of the server's own origin is served in full.
    let (_, conn) = awc::Client::new()
        .ws(server.ws_url("/ws"))
        .origin(own.as_str())
        .connect()
        .await
        .expect("same-origin WebSocket");
    drop(conn);
    // Programs send no Origin.
    WsClient::connect(&server.ws_url("/ws"))
        .await
        .assert_alive()
        .await;
    assert_eq!(server.get("/api/stats").await.0, 200);
    bystander.tick(&server).await;
    bystander.finish(&server).await;
}

/// What a page may send across sites without a preflight (`text/plain`, a form) is
/// refused with 415 and not stored; JSON (with a charset or not) is stored.
#[actix_rt::test]
async fn request_bodies_must_be_json() {
    let server = TestServer::start().await;
    let mut bystander = Bystander::connect(&server, None).await;
    let host = server.addr.to_string();
    let event = br#"{"type":"x","topic":"csrf.attempt"}"#;
    for content_type in [
        "Content-Type: text/plain\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        "Content-Type: multipart/form-data; boundary=x\r\n",
        "",
    ] {
        let answer = raw(server.addr, post(&host, content_type, event)).await;
        assert_eq!(answer.status, 415, "{content_type:?}: {}", answer.head);
        assert_eq!(answer.code(), "unsupported_media_type", "{}", answer.body);
        bystander.tick(&server).await;
    }
    // A cross-site form sends its Origin: refused on that alone, even with no body.
    let answer = raw(
        server.addr,
        format!(
            "POST /api/dead-letters/1/retry HTTP/1.1\r\nHost: {host}\r\n\
             Origin: http://evil.example\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes(),
    )
    .await;
    assert_eq!(answer.status, 403, "{}", answer.head);
    assert_eq!(stored_on(&server, "csrf.attempt", None).await, 0);
    let answer = raw(
        server.addr,
        post(
            &host,
            "Content-Type: application/json; charset=utf-8\r\n",
            event,
        ),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.head);
    assert_eq!(stored_on(&server, "csrf.attempt", None).await, 1);
    bystander.finish(&server).await;
}

/// With auth off, a page that rebinds its own DNS name to 127.0.0.1 reaches the
/// router under that name: every request naming a foreign `Host` is refused with 421,
/// WebSocket upgrades included. Loopback names, HTTP/1.0 without a `Host` and listed
/// hosts are served; with auth on, every `Host` is.
#[actix_rt::test]
async fn foreign_host_names_are_misdirected_with_auth_off() {
    let server = TestServer::with(|c| c.server.allowed_hosts = vec!["sy.internal".into()]).await;
    let mut bystander = Bystander::connect(&server, None).await;
    let port = server.addr.port();
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_owned(),
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.2:{port}"),
    ] {
        let get = format!("GET /api/events HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let answer = raw(server.addr, get.into_bytes()).await;
        assert_eq!(answer.status, 421, "{host}: {}", answer.head);
        assert_eq!(answer.code(), "misdirected_request", "{}", answer.body);
        let answer = raw(server.addr, upgrade("/ws", &host, "")).await;
        assert_eq!(answer.status, 421, "upgrade as {host}: {}", answer.head);
        bystander.tick(&server).await;
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "LOCALHOST".to_owned(),
        format!("sy.internal:{port}"),
    ] {
        let get = format!("GET /api/events HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let answer = raw(server.addr, get.into_bytes()).await;
        assert_eq!(answer.status, 200, "{host}: {}", answer.head);
    }
    let answer = raw(server.addr, b"GET /api/events HTTP/1.0\r\n\r\n".to_vec()).await;
    assert_eq!(answer.status, 200, "HTTP/1.0 without Host: {}", answer.head);
    bystander.finish(&server).await;

    let secured = TestServer::with(with_token).await;
    let bystander = Bystander::connect(&secured, Some(TOKEN)).await;
    let get = format!(
        "GET /api/events HTTP/1.1\r\nHost: sy.example.com\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    let answer = raw(secured.addr, get.into_bytes()).await;
    assert_eq!(answer.status, 200, "auth on: {}", answer.head);
    bystander.finish(&secured).await;
}

// ---- point 5: bodies ----

/// With auth on, a request without a credential is answered 401 from its head alone,
/// whatever body it announces: the server neither waits for nor reads it. An
/// authenticated body over the limit (`limits.max_event_bytes`) is refused from its
/// `Content-Length` just as early, and a chunked one as soon as it passes the limit.
#[actix_rt::test]
async fn bodies_are_read_only_after_authentication_and_within_the_limit() {
    let server = TestServer::with(with_token).await;
    let mut bystander = Bystander::connect(&server, Some(TOKEN)).await;
    let host = server.addr.to_string();
    let max = Config::defaults().limits.max_event_bytes;
    let json = "Content-Type: application/json\r\n";
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    // Heads only: each announces a body that is never sent.
    let cases = [
        (2 << 20, String::new(), 401),
        (20 << 20, String::new(), 401),
        (
            2 << 20,
            "Authorization: Bearer wrong-token-0123456789\r\n".to_owned(),
            401,
        ),
        (max + 1, auth.clone(), 413),
        (2 << 20, auth.clone(), 413),
    ];
    for (length, credential, want) in cases {
        let head = format!(
            "POST /api/events HTTP/1.1\r\nHost: {host}\r\n{json}{credential}\
             Content-Length: {length}\r\n\r\n"
        );
        let answer = raw(server.addr, head.into_bytes()).await;
        assert_eq!(answer.status, want, "{length} bytes: {}", answer.head);
        assert!(
            answer
                .head
                .to_ascii_lowercase()
                .contains("connection: close"),
            "the unread body ends the connection: {}",
            answer.head
        );
        bystander.tick(&server).await;
    }
    // Chunked, one byte over the limit: a JSON string that long.
    let body = format!(
        "{{\"topic\":\"big.one\",\"payload\":\"{}\"}}",
        "x".repeat(max)
    );
    let body = &body.as_bytes()[..max + 1];
    let mut request = format!(
        "POST /api/events HTTP/1.1\r\nHost: {host}\r\n{json}{auth}Transfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(64 << 10) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(server.addr, request).await;
    assert_eq!(answer.status, 413, "{}", answer.head);
    assert_eq!(answer.code(), "payload_too_large", "{}", answer.body);
    bystander.tick(&server).await;
    bystander.finish(&server).await;
}

/// Request bodies are not decompressed: a gzip body is refused with 415, not stored.
#[actix_rt::test]
async fn compressed_bodies_are_refused() {
    let server = TestServer::start().await;
    let mut bystander = Bystander::connect(&server, None).await;
    let host = server.addr.to_string();
    let gz = gzip_stored(br#"{"type":"x","topic":"zip.bomb"}"#);
    for encoding in ["gzip", "deflate", "br"] {
        let answer = raw(
            server.addr,
            post(
                &host,
                &format!("Content-Type: application/json\r\nContent-Encoding: {encoding}\r\n"),
                &gz,
            ),
        )
        .await;
        assert_eq!(answer.status, 415, "{encoding}: {}", answer.head);
        assert_eq!(answer.code(), "unsupported_media_type", "{}", answer.body);
        bystander.tick(&server).await;
    }
    assert_eq!(stored_on(&server, "zip.bomb", None).await, 0);
    bystander.finish(&server).await;
}

/// A client that sends its head and then trickles the body, a byte at a time, is
/// answered 408 once `server.body_timeout_ms` has passed and its connection is closed;
/// others go on publishing meanwhile.
#[actix_rt::test]
async fn slow_bodies_time_out() {
    let server = TestServer::with(|c| c.server.body_timeout_ms = 1000).await;
    let mut bystander = Bystander::connect(&server, None).await;
    let addr = server.addr;
    let slow = actix_rt::task::spawn_blocking(move || {
        let mut tcp = connect(addr, Duration::from_millis(100));
        let body = br#"{"type":"x","topic":"slow.body","payload":{"pad":"................................................................................"}}"#;
        let head = format!(
            "POST /api/events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        tcp.write_all(head.as_bytes()).expect("head");
        let started = Instant::now();
        for byte in body.iter().take(body.len() - 1) {
            if tcp.write_all(&[*byte]).is_err() {
                break;
            }
            let mut probe = [0u8; 1];
            match tcp.peek(&mut probe) {
                Ok(_) => break,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
            assert!(started.elapsed() < Duration::from_secs(10), "never cut off");
        }
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let answer = read_answer(&mut tcp);
        let elapsed = started.elapsed();
        let mut rest = [0u8; 1];
        let closed = matches!(tcp.read(&mut rest), Ok(0) | Err(_));
        (answer, elapsed, closed)
    });
    for _ in 0..5 {
        bystander.tick(&server).await;
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let (answer, elapsed, closed) = slow.await.expect("slow client");
    eprintln!("slow body answered after {elapsed:?} (server.body_timeout_ms = 1000)");
    let answer = answer.expect("an answer before the body was complete");
    assert_eq!(answer.status, 408, "{}", answer.head);
    assert_eq!(answer.code(), "request_timeout", "{}", answer.body);
    assert!(closed, "the connection is closed after the 408");
    assert!(
        elapsed < Duration::from_secs(8),
        "cut off after {elapsed:?}"
    );
    assert_eq!(stored_on(&server, "slow.body", None).await, 0);
    bystander.finish(&server).await;
}
