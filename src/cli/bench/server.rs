//! The router under load, seen from outside: starting one in this process
//! (`--in-process`) and reading its resident memory and CPU time from `/metrics`.
//!
//! Owns: those two. Must not: reach into a running router's internals; the in-process
//! one is started through the library's public `run`, like any embedding program.

use switchyard::config::{Config, StoreKind};

use super::BenchError;

/// Starts a router with the memory store on 127.0.0.1:0; answers its WebSocket URL and
/// the sender that stops it.
pub fn start_in_process() -> Result<(String, tokio::sync::oneshot::Sender<()>), BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::Server(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| BenchError::Server(e.to_string()))?;
    let mut config = Config::defaults();
    config.store.kind = StoreKind::Memory;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    actix_web::rt::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = switchyard::server::run(listener, config, shutdown).await {
            eprintln!("in-process router stopped: {e}");
        }
    });
    Ok((format!("ws://{addr}/ws"), stop))
}

/// The server's resident memory from its `/metrics` (`None` when it does not say).
pub async fn server_rss(url: &str, token: Option<&str>) -> Option<u64> {
    let bytes = server_metric(url, token, "switchyard_process_resident_memory_bytes").await?;
    Some(bytes as u64)
}

/// The CPU time the server has used so far, in seconds, from its `/metrics`.
pub async fn server_cpu(url: &str, token: Option<&str>) -> Option<f64> {
    server_metric(url, token, "switchyard_process_cpu_seconds_total").await
}

/// One unlabelled sample of the server's `/metrics`.
async fn server_metric(url: &str, token: Option<&str>, name: &str) -> Option<f64> {
    let uri: awc::http::Uri = url.parse().ok()?;
    let scheme = if uri.scheme_str() == Some("wss") {
        "https"
    } else {
        "http"
    };
    let metrics = format!("{scheme}://{}/metrics", uri.authority()?);
    let mut req = awc::Client::new().get(metrics);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let body = req.send().await.ok()?.body().await.ok()?;
    std::str::from_utf8(&body)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?
        .trim()
        .parse()
        .ok()
}

/// The server's CPU use between two readings of [`server_cpu`]: seconds, and cores
/// (seconds per second of `wall`). Null when either reading is missing.
pub fn cpu_used(before: Option<f64>, after: Option<f64>, wall: f64) -> serde_json::Value {
    match (before, after) {
        (Some(b), Some(a)) if wall > 0.0 => serde_json::json!({
            "seconds": ((a - b).max(0.0) * 1e3).round() / 1e3,
            "cores": ((a - b).max(0.0) / wall * 1e4).round() / 1e4,
        }),
        _ => serde_json::Value::Null,
    }
}
