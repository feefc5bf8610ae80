//! The Rust client library (`switchyard::client`) against a live server: publish,
//! subscribe, ack, server errors, reconnect with resubscription and resume, giving up,
//! and tokens.

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use serde_json::json;
use switchyard::client::{Backoff, Client, ClientConfig, ClientError, ConnectionState, Delivery};

const WAIT: Duration = Duration::from_secs(10);

fn fast(url: String) -> ClientConfig {
    ClientConfig {
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
            ..Backoff::default()
        },
        request_timeout: WAIT,
        ..ClientConfig::new(url)
    }
}

async fn next_event(sub: &mut switchyard::client::Subscription) -> serde_json::Value {
    match actix_rt::time::timeout(WAIT, sub.next_event()).await {
        Ok(Some((event, _))) => event,
        other => panic!("no event: {other:?}"),
    }
}

#[actix_rt::test]
async fn publish_subscribe_ack_and_server_errors() {
    let server = TestServer::start().await;
    let client = Client::connect(fast(server.ws_url("/ws")));
    client.wait_connected(WAIT).await.unwrap();
    assert_eq!(client.state(), ConnectionState::Connected);
    assert!(!client.ping().await.unwrap().is_empty());

    let mut sub = client
        .subscribe(json!({"type": "pattern", "patterns": ["task.>"], "ack": true}))
        .await
        .unwrap();
    let p = client
        .publish(json!({"type": "task_created", "payload": {"n": 1}}))
        .await
        .unwrap();
    assert!(!p.duplicate && p.cursor > 0);
    let results = client
        .publish_batch(vec![
            json!({"type": "task_done"}),
            json!({"priority": "urgent"}),
        ])
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert!(
        matches!(&results[1], Err(ClientError::Server { code, .. }) if code == "invalid_event")
    );

    for want in ["task.created", "task.done"] {
        let event = next_event(&mut sub).await;
        assert_eq!(event["topic"], want);
        sub.ack(event["id"].as_str().unwrap()).await;
    }
    // Acknowledged: nothing stays in flight.
    let mut in_flight = None;
    for _ in 0..50 {
        let (_, subs) = server.get("/api/subscriptions").await;
        in_flight = subs["connections"][0]["subscriptions"][0]["in_flight"].as_u64();
        if in_flight == Some(0) {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(in_flight, Some(0));

    let err = client
        .subscribe(json!({"condition": "priority =="}))
        .await
        .err()
        .expect("a bad condition is refused");
    assert!(
        matches!(err, ClientError::Server { ref code, .. } if code == "invalid_condition"),
        "{err}"
    );
    client.close();
    server.stop().await;
}

#[actix_rt::test]
async fn reconnects_resubscribes_and_resumes_without_loss_or_duplicates() {
    let data = Arc::new(tempfile::tempdir().unwrap());
    let server = TestServer::with_data_dir(data.clone(), |_| {}).await;
    let addr = server.addr;
    let client = Client::connect(fast(server.ws_url("/ws")));
    let mut states = client.watch_state();
    let mut sub = client
        .subscribe(json!({"type": "pattern", "patterns": ["job.>"]}))
        .await
        .unwrap();
    for n in 0..3 {
        client
            .publish(json!({"topic": "job.step", "payload": {"n": n}}))
            .await
            .unwrap();
    }
    for n in 0..3 {
        assert_eq!(next_event(&mut sub).await["payload"]["n"], n);
    }

    server.stop().await;
    states
        .wait_for(|s| matches!(s, ConnectionState::Reconnecting { .. }))
        .await
        .unwrap();
    // A publish made while the server is away waits and goes out after the reconnect.
    let pending = {
        let client = client.clone();
        actix_rt::spawn(async move {
            client
                .publish(json!({"topic": "job.step", "payload": {"n": 3}}))
                .await
        })
    };
    // The server comes back on the same port and data; events arrive before the client
    // is back, from another publisher.
    let server = TestServer::restart_on(addr, data, |_| {}).await;
    let mut other = server.ws().await;
    other
        .publish(json!({"topic": "job.step", "payload": {"n": 4}}))
        .await;
    states
        .wait_for(|s| *s == ConnectionState::Connected)
        .await
        .unwrap();
    assert!(pending.await.unwrap().is_ok());

    let mut got = Vec::new();
    while let Ok(Some(delivery)) =
        actix_rt::time::timeout(Duration::from_millis(800), sub.next()).await
    {
        if let Delivery::Event { event, .. } = delivery {
            got.push(event["payload"]["n"].as_i64().unwrap());
        }
    }
    got.sort();
    assert_eq!(
        got,
        [3, 4],
        "resumed after the last cursor seen: nothing lost, nothing twice"
    );
    client.close();
    server.stop().await;
}

#[actix_rt::test]
async fn gives_up_after_max_attempts_and_reports_failed() {
    // A port nobody listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = ClientConfig {
        max_attempts: Some(2),
        ..fast(format!("ws://{addr}/ws"))
    };
    let client = Client::connect(config);
    assert_eq!(client.wait_connected(WAIT).await, Err(ClientError::Failed));
    assert_eq!(client.state(), ConnectionState::Failed);
    assert_eq!(client.ping().await, Err(ClientError::Failed));
}

#[actix_rt::test]
async fn sends_its_token() {
    let server = TestServer::with(|c| {
        c.auth.tokens = vec![switchyard::config::TokenConfig {
            name: "agent-7".into(),
            token: "agent-7-token-0123456789".into(),
            publish: vec!["agent.>".into()],
            subscribe: vec!["agent.>".into()],
            admin: false,
            sources: Vec::new(),
        }];
    })
    .await;
    let with = Client::connect(ClientConfig {
        token: Some("agent-7-token-0123456789".into()),
        ..fast(server.ws_url("/ws"))
    });
    let mut sub = with.subscribe(json!({"type": "all"})).await.unwrap();
    with.publish(json!({"topic": "agent.up"})).await.unwrap();
    assert_eq!(next_event(&mut sub).await["source"], "agent-7");
    let err = with.publish(json!({"topic": "task.x"})).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Server { ref code, .. } if code == "forbidden"),
        "{err}"
    );
    let without = Client::connect(ClientConfig {
        max_attempts: Some(1),
        ..fast(server.ws_url("/ws"))
    });
    assert_eq!(without.wait_connected(WAIT).await, Err(ClientError::Failed));
    with.close();
    server.stop().await;
}
