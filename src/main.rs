//! The `switchyard` command: parses the command line and configuration, then calls the
//! library (`serve`) or the client commands in [`cli`]. Exit codes: 0 on a clean stop, 1
//! on a runtime failure, 2 on bad configuration or usage.
//!
//! Owns: the process (allocator, logger, signals, huge pages). Must not: hold logic a
//! test would want to call; that belongs in the library or in `cli`.

mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard::config::{Config, Overrides};

/// mimalloc instead of the system allocator: see the note beside it in Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Actor-based priority event router"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// Configuration file (TOML); only the keys it sets override the defaults.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:9090). Port 0 picks a free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory for durable data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Allow listening on a non-loopback address without authentication.
    #[arg(long)]
    insecure: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the router.
    Serve(ConfigArgs),
    /// Print the effective configuration as TOML.
    PrintConfig(ConfigArgs),
    /// Publish an event from flags, or JSON lines from standard input.
    Publish(cli::publish::PublishArgs),
    /// Follow events live: `switchyard tail 'task.>' --condition 'priority == "high"'`.
    Tail(cli::tail::TailArgs),
    /// Load generator: publishers → subscribers on this machine, with a report.
    Bench(cli::bench::BenchArgs),
    /// Cluster administration: `switchyard cluster import --from-sqlite DIR`.
    Cluster(cli::cluster::ClusterArgs),
}

fn load(args: &ConfigArgs) -> Result<Config, ExitCode> {
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        insecure: args.insecure,
    };
    Config::load(args.config.as_deref(), &overrides).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server logs at info; client commands only say what went wrong.
    let level = match cli.command {
        Command::Serve(_) | Command::PrintConfig(_) => "info",
        _ => "warn",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    match cli.command {
        Command::Publish(args) => cli::run_publish(args),
        Command::Tail(args) => cli::run_tail(args),
        Command::Cluster(args) => cli::run_cluster(args),
        Command::Bench(args) => {
            // The in-process router runs with `serve`'s default.
            huge_pages(!args.in_process);
            cli::run_bench(args)
        }
        Command::PrintConfig(args) => match load(&args) {
            Ok(config) => {
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Serve(args) => {
            let config = match load(&args) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // Bad credentials or an unprotected public address: refuse before binding.
            let checked =
                switchyard::auth::Authenticator::from_config(&config.auth).and_then(|auth| {
                    switchyard::auth::check_exposure(
                        config.server.listen,
                        config.server.insecure,
                        &auth,
                    )
                });
            if let Err(e) = checked {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            huge_pages(config.server.transparent_huge_pages);
            let listener = match std::net::TcpListener::bind(config.server.listen) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: cannot listen on {}: {e}", config.server.listen);
                    return ExitCode::from(1);
                }
            };
            let (http, ws) = match config.server.tls() {
                Some(_) => ("https", "wss"),
                None => ("http", "ws"),
            };
            match listener.local_addr() {
                Ok(addr) => log::info!(
                    "switchyard listening on {http}://{addr} (WebSocket at {ws}://{addr}/ws)"
                ),
                Err(e) => log::warn!("listening, but the local address is unknown: {e}"),
            }
            let system = actix_web::rt::System::new();
            match system.block_on(switchyard::run(listener, config, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Opts the server process out of transparent huge pages unless `allowed`
/// (`server.transparent_huge_pages`). mimalloc hands out memory from regions the
/// kernel backs with huge pages, and the first touch of each one zeroes it on the
/// thread that touched it: under a full load a single connection poll stalled on it and
/// a critical event waited behind (docs/benchmarks.md has the figures). Process-wide
/// and inherited, so it is done here for `serve` (and `bench --in-process`) only, never
/// by the library for an embedding program.
fn huge_pages(allowed: bool) {
    if allowed {
        return;
    }
    #[cfg(target_os = "linux")]
    match rustix::thread::disable_transparent_huge_pages(true) {
        Ok(()) => log::debug!("transparent huge pages off for this process"),
        Err(e) => log::warn!("cannot turn transparent huge pages off: {e}"),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use actix_web::rt::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio_select(actix_web::rt::signal::ctrl_c(), term.recv()).await;
            }
            Err(e) => {
                log::warn!("cannot listen for SIGTERM ({e}); only Ctrl-C stops the server");
                let _ = actix_web::rt::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = actix_web::rt::signal::ctrl_c().await;
    }
}

/// Waits for whichever of two futures finishes first.
async fn tokio_select<A: std::future::Future, B: std::future::Future>(a: A, b: B) {
    futures_util::future::select(std::pin::pin!(a), std::pin::pin!(b)).await;
}
