//! Commands of the `switchyard` binary besides `serve`: the clients `publish`, `tail`
//! and `bench`, and the offline `cluster import`. A module of the binary, not of the
//! library: a program embedding the router has no use for them, and the library stays
//! smaller to read.
//!
//! Owns: turning command-line options into client calls, printing the answers, and the
//! exit code each command ends with (0 clean, 1 a failure or refusal, 2 bad usage).
//! Must not: reach into the server; the client commands speak the wire protocol
//! through [`switchyard::client`], like any other client (`bench --in-process` merely
//! starts a router through the library's public `run`). `cluster import` runs with
//! no server at all: it reads and writes the stores through [`switchyard::store`].

pub mod bench;
pub mod cluster;
pub mod publish;
pub mod tail;

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use switchyard::client::ClientConfig;

/// Where and as whom to connect; shared by the client commands.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// WebSocket URL of the router; for a cluster, several nodes, comma-separated or
    /// with the flag repeated: the client moves on to the next when one fails.
    #[arg(
        long = "url",
        default_value = "ws://127.0.0.1:9090/ws",
        env = "SWITCHYARD_URL",
        value_delimiter = ','
    )]
    pub urls: Vec<String>,
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
            ..ClientConfig::cluster(self.urls.iter().cloned())
        }
    }
}

/// `switchyard publish`: 1 when an event was refused or the router could not be
/// reached, 2 when the input itself is wrong.
pub fn run_publish(args: publish::PublishArgs) -> ExitCode {
    match block_on(publish::run(args)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_refused) => ExitCode::from(1),
        Err(e @ publish::PublishError::Client(_)) => failed(e, 1),
        Err(e) => failed(e, 2),
    }
}

/// `switchyard tail`: runs until `--count` events or the connection is given up.
pub fn run_tail(args: tail::TailArgs) -> ExitCode {
    match block_on(tail::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(e, 1),
    }
}

/// `switchyard bench`: 1 when the run was not clean (an event refused or lost, a
/// timeout), 2 on options it cannot run with.
pub fn run_bench(args: bench::BenchArgs) -> ExitCode {
    match block_on(bench::run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e @ bench::BenchError::Usage(_)) => failed(e, 2),
        Err(e) => failed(e, 1),
    }
}

/// `switchyard cluster ...`: 1 when refused or failed, 2 on bad configuration or usage.
pub fn run_cluster(args: cluster::ClusterArgs) -> ExitCode {
    match args.command {
        cluster::ClusterCommand::Import(args) => match cluster::run(&args) {
            Ok(done) => {
                print!("{}", cluster::summary(&done));
                ExitCode::SUCCESS
            }
            Err(e) => {
                let code = e.exit_code();
                failed(e, code)
            }
        },
    }
}

/// Runs a command to its end on an actix system of its own (the client needs one).
fn block_on<F: Future>(command: F) -> F::Output {
    actix_web::rt::System::new().block_on(command)
}

/// Says why a command failed; answers the exit code.
fn failed(error: impl Display, code: u8) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        connect: ConnectArgs,
    }

    #[test]
    fn url_takes_a_list_or_repeats() {
        let urls = |args: &[&str]| Cli::parse_from(args).connect.client_config().urls;
        let (a, b) = ("ws://127.0.0.1:1/ws", "ws://127.0.0.1:2/ws");
        assert_eq!(urls(&["t", "--url", a]), [a]);
        assert_eq!(urls(&["t", "--url", &format!("{a},{b}")]), [a, b]);
        assert_eq!(urls(&["t", "--url", a, "--url", b]), [a, b]);
    }
}
