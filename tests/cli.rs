//! The `switchyard` binary: configuration layering, bad configuration exit codes, and
//! graceful shutdown on SIGTERM with close frames to connected clients.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use awc::ws::CloseCode;
use common::process::{assert_config_refused, signal, switchyard, SpawnedServer};
use common::{TestServer, WsClient};
use serde_json::json;

#[test]
fn print_config_shows_embedded_defaults() {
    let out = switchyard().arg("print-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let config: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(config["server"]["listen"].as_str(), Some("127.0.0.1:9090"));
    assert_eq!(
        config["limits"]["max_event_bytes"].as_integer(),
        Some(1 << 20)
    );
}

#[test]
fn file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[limits]\nmax_connections = 7\nmax_batch_events = 9\n",
    )
    .unwrap();
    let out = switchyard()
        .args(["print-config", "--listen", "127.0.0.1:4000", "--config"])
        .arg(&file)
        .env("SWITCHYARD_LIMITS__MAX_BATCH_EVENTS", "11")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(config["limits"]["max_connections"].as_integer(), Some(7));
    assert_eq!(config["limits"]["max_batch_events"].as_integer(), Some(11));
    assert_eq!(config["server"]["listen"].as_str(), Some("127.0.0.1:4000"));
}

#[test]
fn bad_config_is_a_one_line_error_naming_the_key_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    for (content, key) in [
        ("[limits]\nmax_connections = \"many\"\n", "max_connections"),
        ("[server]\nlisten = \"nowhere\"\n", "listen"),
        ("[limits]\nmax_frame_bytes = 1\n", "limits.max_frame_bytes"),
        ("[routr]\nx = 1\n", "routr"),
    ] {
        std::fs::write(&file, content).unwrap();
        for sub in ["serve", "print-config"] {
            let mut cmd = switchyard();
            cmd.arg(sub).arg("--config").arg(&file);
            assert_config_refused(&mut cmd, content, key);
        }
    }
    let out = switchyard()
        .args(["serve", "--config", "/nonexistent/switchyard.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = switchyard()
        .arg("print-config")
        .env("SWITCHYARD_LIMITS__MAX_CONNECTIONS", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("limits.max_connections"), "{err}");
}

#[test]
fn no_auth_on_a_public_address_is_refused_unless_insecure() {
    // Refused before binding anything.
    let out = switchyard()
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("--insecure") && err.contains("0.0.0.0"),
        "{err}"
    );
    let out = switchyard()
        .args(["print-config", "--insecure"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let config: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(config["server"]["insecure"].as_bool(), Some(true));
}

#[test]
fn secrets_are_redacted_and_bad_auth_settings_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        "[[tokens]]\nname = \"a\"\ntoken = \"a-secret-token-1234567\"\nsubscribe = [\">\"]\n",
    )
    .unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[[auth.tokens]]\nname = \"b\"\ntoken = \"b-secret-token-1234567\"\n",
    )
    .unwrap();
    let out = switchyard()
        .args(["print-config", "--config"])
        .arg(&file)
        .env(
            "SWITCHYARD_AUTH__JWT_SECRET",
            "jwt-secret-jwt-secret-jwt-secret-42",
        )
        .env("SWITCHYARD_AUTH__TOKENS_FILE", &tokens)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains("b-secret-token") && !text.contains("jwt-secret-jwt"),
        "{text}"
    );
    assert!(text.contains("<redacted>"), "{text}");

    for (content, names) in [
        (
            "[[tokens]]\nname = \"a\"\ntoken = \"short\"\n",
            "auth.tokens[0]",
        ),
        (
            "[[tokens]]\nname = \"a\"\ntoken = \"long-enough-token-123\"\npublish = [\"a..b\"]\n",
            "auth.tokens[0]",
        ),
        ("not toml [", "tokens.toml"),
    ] {
        std::fs::write(&tokens, content).unwrap();
        let out = switchyard()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("SWITCHYARD_AUTH__TOKENS_FILE", &tokens)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{content}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(names), "{content}: {err}");
        assert!(!err.contains("long-enough-token"), "never the token: {err}");
    }
}

/// `serve` on port 0, SIGTERM while a client is connected: the client gets a close
/// frame (1001) and the process exits 0.
#[actix_rt::test]
async fn sigterm_closes_sessions_and_exits_cleanly() {
    let server = SpawnedServer::start(&[]);
    let mut c = WsClient::connect(&server.ws_url()).await;
    c.assert_alive().await;
    signal(server.pid(), "TERM");
    let reason = c.recv_close().await.expect("close frame with a reason");
    assert_eq!(reason.code, CloseCode::Away);
    let status = actix_rt::task::spawn_blocking(move || server.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// The server opts out of transparent huge pages (`server.transparent_huge_pages =
/// false`, the default) and leaves them alone when configured to: the kernel's own view
/// of the process, `THP_enabled` in /proc/PID/status.
#[cfg(target_os = "linux")]
#[test]
fn serve_opts_out_of_transparent_huge_pages_unless_configured() {
    let thp_enabled = |env: &[(&str, &str)]| {
        let server = SpawnedServer::start(env);
        let status = server.proc_status();
        drop(server);
        let line = status.lines().find(|l| l.starts_with("THP_enabled:"));
        line.map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_owned())
    };
    let Some(default) = thp_enabled(&[]) else {
        eprintln!("this kernel does not report THP_enabled; nothing to check");
        return;
    };
    assert_eq!(default, "0");
    let allowed = thp_enabled(&[("SWITCHYARD_SERVER__TRANSPARENT_HUGE_PAGES", "true")]);
    assert_eq!(allowed.as_deref(), Some("1"));
}

#[actix_rt::test]
async fn library_shutdown_closes_sessions_with_a_close_frame() {
    let server = TestServer::start().await;
    let mut c = server.ws().await;
    c.subscribe(json!({"type": "all"})).await;
    let addr = server.addr;
    let stopping = actix_rt::spawn(server.stop());
    let reason = c.recv_close().await.expect("close reason");
    assert_eq!(reason.code, CloseCode::Away);
    assert_eq!(reason.description.as_deref(), Some("server shutting down"));
    stopping.await.unwrap();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listener is closed"
    );
}

/// Runs the binary to completion without blocking the server sharing this thread.
async fn run_to_end(mut cmd: Command, stdin: Option<&str>) -> std::process::Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).unwrap();
    }
    for _ in 0..400 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
    child.kill().unwrap();
    panic!("command did not finish within 10 s");
}

async fn wait_for_subscriptions(server: &TestServer, n: usize) {
    for _ in 0..200 {
        let (_, subs) = server.get("/api/stats").await;
        if subs["subscriptions"].as_u64() == Some(n as u64) {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{n} subscriptions never appeared");
}

/// The overload, idle-memory and idle-CPU scenarios against a running server: a critical
/// lane and a ping lane beside a load of single publishes without a window
/// (`--window 0`), idle connections held open and a quiet spell, the server's memory
/// and CPU read from /metrics.
#[actix_rt::test]
async fn bench_critical_lane_and_idle_connections() {
    let server = TestServer::start().await;
    let url = server.ws_url("/ws");
    let mut cmd = switchyard();
    cmd.args(["bench", "--url", &url, "--json", "--events", "3000"])
        .args([
            "--subscribers",
            "3",
            "--client-threads",
            "2",
            "--rate",
            "3000",
        ])
        .args(["--batch", "1", "--window", "0"])
        .args(["--priorities", "low=1", "--critical-rate", "200"])
        .args(["--ping-rate", "200", "--idle-connections", "40"])
        .args(["--quiet-secs", "1"]);
    let out = run_to_end(cmd, None).await;
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    let critical = report["critical_published"].as_u64().unwrap();
    assert!(critical > 0, "{report}");
    assert_eq!(report["published"], 3000 + critical, "{report}");
    assert_eq!(report["delivered"], (3000 + critical) * 3, "{report}");
    let by_priority = &report["end_to_end_latency_us_by_priority"];
    assert_eq!(by_priority["critical"]["samples"], critical * 3, "{report}");
    assert_eq!(
        report["critical_publish_latency_us"]["samples"], critical,
        "{report}"
    );
    assert_eq!(by_priority["low"]["samples"], 9000, "{report}");
    let pings = report["ping_latency_us"]["samples"].as_u64().unwrap();
    assert!(pings > 0, "{report}");
    assert!(by_priority.get("normal").is_none(), "{report}");
    let idle = &report["idle"];
    assert_eq!(idle["connections"], 40, "{report}");
    assert_eq!(idle["closed_by_server"], 0, "{report}");
    #[cfg(target_os = "linux")]
    {
        assert!(
            idle["server_rss_with_idle"].as_u64().unwrap() > 0,
            "{report}"
        );
        // The server's CPU over the quiet second and over the load, from /metrics.
        assert_eq!(report["quiet_seconds"], 1, "{report}");
        assert!(report["quiet_server_cpu"]["cores"].is_f64(), "{report}");
        assert!(
            report["server_cpu"]["seconds"].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
    server.stop().await;
}

/// `bench --replay` reads the whole stored log back and counts it.
#[actix_rt::test]
async fn bench_replay_reads_the_stored_log() {
    let server = TestServer::start().await;
    let mut c = server.ws().await;
    let events: Vec<_> = (0..250)
        .map(|i| json!({"topic": "replay.me", "payload": {"i": i}}))
        .collect();
    let reply = c
        .request(json!({"type": "publish_batch", "events": events}))
        .await;
    assert_eq!(reply["results"].as_array().unwrap().len(), 250, "{reply}");
    let mut cmd = switchyard();
    cmd.args([
        "bench",
        "--url",
        &server.ws_url("/ws"),
        "--replay",
        "--json",
    ]);
    let out = run_to_end(cmd, None).await;
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(report["mode"], "replay", "{report}");
    assert_eq!(report["replayed"], 250, "{report}");
    assert_eq!(report["last_cursor"], 250, "{report}");
    assert_eq!(report["dropped"], 0, "{report}");
    server.stop().await;
}

#[actix_rt::test]
async fn publish_and_tail_commands() {
    let server = TestServer::start().await;
    let url = server.ws_url("/ws");
    let mut tail = switchyard();
    tail.args(["tail", "task.>", "--json", "--count", "2", "--url", &url]);
    tail.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut tail = tail.spawn().unwrap();
    wait_for_subscriptions(&server, 1).await;

    let mut one = switchyard();
    one.args([
        "publish",
        "--url",
        &url,
        "--topic",
        "task.created",
        "--priority",
        "high",
    ])
    .args(["--payload", r#"{"task_id": "t-1"}"#]);
    let out = run_to_end(one, None).await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("published ") && text.contains("cursor=1"),
        "{text}"
    );

    let mut lines = switchyard();
    lines.args(["publish", "--url", &url, "--json"]);
    let out = run_to_end(
        lines,
        Some("{\"topic\": \"agent.up\"}\n\n{\"type\": \"task_done\"}\n"),
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let replies: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[1]["cursor"], 3);

    // tail stops after its two task events.
    let mut done = None;
    for _ in 0..400 {
        if let Some(status) = tail.try_wait().unwrap() {
            done = Some(status);
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        done.is_some_and(|s| s.success()),
        "tail did not finish: {done:?}"
    );
    let out = tail.wait_with_output().unwrap();
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let topics: Vec<&str> = events
        .iter()
        .map(|e| e["event"]["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["task.created", "task.done"]);
    assert_eq!(events[0]["event"]["payload"]["task_id"], "t-1");

    // Readable lines, no colour codes when piped; replay and a condition.
    let mut plain = switchyard();
    plain
        .args([
            "tail",
            ">",
            "--from-cursor",
            "0",
            "--count",
            "2",
            "--url",
            &url,
        ])
        .args([
            "--condition",
            "priority == \"high\" || topic == \"agent.up\"",
        ]);
    let out = run_to_end(plain, None).await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains('\u{1b}'), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains(" high ") && lines[0].contains("task.created #1"),
        "{text}"
    );
    assert!(lines[1].contains("agent.up #2"), "{text}");

    // A refused event exits 1; bad usage exits 2; a bad condition exits 1 with the error.
    let mut refused = switchyard();
    refused.args([
        "publish",
        "--url",
        &url,
        "--topic",
        "x",
        "--priority",
        "urgent",
    ]);
    let out = run_to_end(refused, None).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_event"));
    let mut bad = switchyard();
    bad.args([
        "publish",
        "--url",
        &url,
        "--topic",
        "x",
        "--payload",
        "{nope",
    ]);
    assert_eq!(run_to_end(bad, None).await.status.code(), Some(2));
    let mut cond = switchyard();
    cond.args(["tail", "--url", &url, "--condition", "priority =="]);
    let out = run_to_end(cond, None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid_condition"),
        "{out:?}"
    );
    server.stop().await;
}

#[actix_rt::test]
async fn bench_runs_in_process_and_reports_json() {
    let mut plain = switchyard();
    plain
        .args([
            "bench",
            "--in-process",
            "--events",
            "2000",
            "--subscribers",
            "2",
            "--json",
        ])
        .args([
            "--priorities",
            "critical=1,high=1,normal=6,low=2",
            "--payload-bytes",
            "32",
        ]);
    let out = run_to_end(plain, None).await;
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(report["published"], 2000);
    assert_eq!(report["delivered"], 4000);
    assert_eq!(report["dropped"], 0);
    assert_eq!(report["end_to_end_latency_us"]["samples"], 4000);
    let report_by_priority = report["end_to_end_latency_us_by_priority"].clone();
    assert_eq!(
        report_by_priority["critical"]["samples"], 400,
        "1 in 10 events is critical, 2 subscribers: {report}"
    );
    assert!(report["publish_rate"].as_f64().unwrap() > 0.0);

    // Conditional subscriptions match half the events; every delivery acknowledged.
    let mut cond = switchyard();
    cond.args([
        "bench",
        "--in-process",
        "--events",
        "1000",
        "--subscribers",
        "2",
        "--json",
    ])
    .args(["--conditional", "--ack", "--batch", "10", "--rate", "20000"]);
    let out = run_to_end(cond, None).await;
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(report["delivered"], 1000, "{report}");

    // Per-priority latency: every priority of the mix has its own samples.
    let mixed = &report_by_priority;
    for p in ["critical", "high", "normal", "low"] {
        assert!(mixed[p]["samples"].as_u64().unwrap() > 0, "{p}: {mixed}");
    }

    let mut remote = switchyard();
    remote.args(["bench", "--url", "ws://example.com/ws"]);
    let out = run_to_end(remote, None).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
