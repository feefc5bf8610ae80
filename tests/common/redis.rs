//! A real `redis-server` for the cluster tests: its own free port on 127.0.0.1, its own
//! temporary directory, AOF on (`appendfsync always`), killed on `Drop`. It can be
//! killed with SIGKILL and started again on the same port and directory, to test what
//! survives.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{signal, ChildGuard};

const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RedisServer {
    process: Option<ChildGuard>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Extra `redis-server` arguments (e.g. `--appendonly no`).
    args: Vec<String>,
}

impl RedisServer {
    /// A server with AOF on.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// A server with extra arguments after the defaults.
    pub fn start_with(args: &[&str]) -> RedisServer {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            panic!(
                "redis-server is not installed: `apt-get install -y redis-server` \
                 (scripts/test.sh does it)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut server = RedisServer {
            process: None,
            port,
            dir: tempfile::tempdir().expect("temp dir"),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Starts it (again) on the same port and directory, and waits until it answers.
    pub fn restart(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.process = Some(ChildGuard::spawn(&mut command, false).expect("spawn redis-server"));
        let deadline = Instant::now() + START_TIMEOUT;
        while self.try_connection().is_none() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown, no final write; what AOF already holds survives.
    pub fn kill9(&mut self) {
        if let Some(mut process) = self.process.take() {
            signal(process.pid(), "KILL");
            let _ = process.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT: Redis stops answering but keeps its connections,
    /// the case only timeouts end.
    pub fn freeze(&self, frozen: bool) {
        if let Some(process) = &self.process {
            signal(process.pid(), if frozen { "STOP" } else { "CONT" });
        }
    }

    fn try_connection(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(200))
            .ok()?;
        redis::cmd("PING").query::<String>(&mut conn).ok()?;
        Some(conn)
    }

    /// A connection for the test itself (to inspect keys, flush, reconfigure).
    pub fn connection(&self) -> redis::Connection {
        self.try_connection()
            .unwrap_or_else(|| panic!("redis-server on port {} answers", self.port))
    }
}
