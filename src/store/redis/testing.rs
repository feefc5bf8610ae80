//! A real `redis-server` for tests: started on a free port in a temp dir, killed on
//! drop. Never a server assumed to run on a fixed port.
//!
//! `SWITCHYARD_SKIP_REDIS=1` skips Redis tests (each prints a note); otherwise a
//! machine without `redis-server` fails them with how to install it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{RedisOptions, RedisStore};

/// Key prefixes unique within this test process, so tests sharing a server don't meet.
static PREFIXES: AtomicU64 = AtomicU64::new(0);

pub(crate) struct TestRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl TestRedis {
    /// A running server with AOF on, or `None` when `SWITCHYARD_SKIP_REDIS=1`.
    pub(crate) fn start() -> Option<TestRedis> {
        if std::env::var("SWITCHYARD_SKIP_REDIS").as_deref() == Ok("1") {
            eprintln!("note: SWITCHYARD_SKIP_REDIS=1: skipping the Redis part of this test");
            return None;
        }
        let mut redis = TestRedis {
            child: None,
            port: 0,
            dir: tempfile::tempdir().expect("a temp dir for redis-server"),
        };
        // Another process may take the free port before redis-server binds it.
        for _ in 0..5 {
            redis.port = free_port();
            if redis.spawn() {
                return Some(redis);
            }
        }
        panic!("redis-server did not start on a free port after 5 tries");
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Options for this server with a key prefix no other test uses.
    pub(crate) fn options(&self) -> RedisOptions {
        RedisOptions {
            prefix: format!("t{}", PREFIXES.fetch_add(1, Ordering::Relaxed)),
            ..RedisOptions::new(&self.url())
        }
    }

    /// A store on this server under a fresh prefix.
    pub(crate) fn store(&self) -> RedisStore {
        RedisStore::open(&self.options()).expect("open a store on the test redis")
    }

    /// Two stores on this server sharing one fresh prefix: two nodes of one cluster.
    pub(crate) fn two_nodes(&self) -> (RedisStore, RedisStore) {
        let options = self.options();
        let open = || RedisStore::open(&options).expect("open a store on the test redis");
        (open(), open())
    }

    /// A plain connection, to reach behind the store's back.
    pub(crate) fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to the test redis")
    }

    /// Kills the server (SIGKILL: no shutdown save).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (it reloads its AOF).
    pub(crate) fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server did not restart on its port");
    }

    /// Starts redis-server and waits until it answers PING; `false` if it exited
    /// (its port was taken).
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", "", "--appendonly", "yes", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH: install it (apt-get install -y redis-server), \
                 or set SWITCHYARD_SKIP_REDIS=1 to skip the Redis tests"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return false;
            }
            let pong = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
