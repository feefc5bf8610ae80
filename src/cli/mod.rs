//! Client commands of the `switchyard` binary: `publish`, `tail` and `bench`.
//!
//! Owns: turning command-line options into client calls and printing the answers.
//! Must not: reach into the server; both commands speak the wire protocol through
//! [`crate::client`], like any other client.

pub mod bench;
pub mod publish;
pub mod tail;

use std::time::Duration;

use crate::client::ClientConfig;

/// Where and as whom to connect; shared by the client commands.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// WebSocket URL of the router.
    #[arg(long, default_value = "ws://127.0.0.1:9090/ws", env = "SWITCHYARD_URL")]
    pub url: String,
    /// Bearer token (when the server has auth on).
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Give up after this many failed connection attempts in a row.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
}

impl ConnectArgs {
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            token: self.token.clone(),
            max_attempts: Some(self.max_attempts),
            request_timeout: Duration::from_secs(30),
            ..ClientConfig::new(self.url.clone())
        }
    }
}
