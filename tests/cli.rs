//! The `switchyard` binary: configuration layering, bad configuration exit codes, and
//! graceful shutdown on SIGTERM with close frames to connected clients.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use awc::ws::CloseCode;
use common::{TestServer, WsClient};
use serde_json::json;

fn switchyard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.env_remove("SWITCHYARD_CONFIG");
    cmd
}

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
            let out = switchyard()
                .arg(sub)
                .arg("--config")
                .arg(&file)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "{content}");
            let err = String::from_utf8(out.stderr).unwrap();
            assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
            assert!(err.contains(key), "{err} names {key}");
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
    let mut child = switchyard()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("server announces its address");
    let mut c = WsClient::connect(&format!("ws://{addr}/ws")).await;
    c.assert_alive().await;
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let reason = c.recv_close().await.expect("close frame with a reason");
    assert_eq!(reason.code, CloseCode::Away);
    let status = actix_rt::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
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
