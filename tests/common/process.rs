//! Child processes for the tests that need a real process: the `switchyard` binary
//! (signals, exit codes, `kill -9`, its resident memory as the kernel sees it) and
//! chromedriver for the browser tests.
//!
//! [`SpawnedServer`] runs `switchyard serve` on `127.0.0.1:0` (the kernel picks a free
//! port, so parallel tests never collide) in a temporary data directory, and is ready
//! once the server has announced the address it listens on. [`ChildGuard`] is what both
//! stand on: a child that is killed and reaped when the guard is dropped, so a failing
//! test never leaves a server running.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the server may take to announce its address (a busy machine builds and
/// starts several at once).
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(20);

/// The `switchyard` binary, with no configuration file from the environment.
pub fn switchyard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.env_remove("SWITCHYARD_CONFIG");
    cmd
}

/// Runs `cmd` and asserts that it refused its configuration the way every bad config
/// is refused: exit code 2 and one line on stderr that names `key`.
pub fn assert_config_refused(cmd: &mut Command, content: &str, key: &str) {
    let out = cmd.output().expect("run switchyard");
    assert_eq!(out.status.code(), Some(2), "{content}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(key), "{err} names {key}");
}

/// Sends signal `name` (`KILL`, `TERM`, `STOP`, `CONT` ...) to process `pid`; panics
/// if `kill` fails (the process is gone).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {name} {pid}");
}

/// A child process, killed and reaped on `Drop`.
pub struct ChildGuard {
    child: Child,
    /// The child leads a process group of its own, killed whole on `Drop` (chromedriver
    /// starts browsers that must not outlive it).
    group: bool,
}

impl ChildGuard {
    /// Starts `command` with standard input closed; in a process group of its own when
    /// `group`.
    pub fn spawn(command: &mut Command, group: bool) -> std::io::Result<ChildGuard> {
        command.stdin(Stdio::null());
        #[cfg(unix)]
        if group {
            std::os::unix::process::CommandExt::process_group(command, 0);
        }
        Ok(ChildGuard {
            child: command.spawn()?,
            group,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the child to exit (after a signal the test sent).
    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait()
    }

    /// The exit status if it has exited already.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        #[cfg(unix)]
        if self.group {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `switchyard serve` as a child process on `127.0.0.1:0`.
pub struct SpawnedServer {
    process: ChildGuard,
    /// Where it listens, as it announced.
    pub addr: SocketAddr,
    /// Its log so far (standard error), for failure messages.
    log: Arc<Mutex<String>>,
    /// The data directory when the guard made it; removed after the server is gone.
    _data_dir: Option<tempfile::TempDir>,
}

impl SpawnedServer {
    /// A server on a fresh temporary data directory, with `env` set (e.g.
    /// `SWITCHYARD_SERVER__HEARTBEAT_INTERVAL_MS`).
    pub fn start(env: &[(&str, &str)]) -> SpawnedServer {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut server = SpawnedServer::start_in(data_dir.path(), env);
        server._data_dir = Some(data_dir);
        server
    }

    /// A server on `data_dir`, which outlives it (to test restarts).
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> SpawnedServer {
        let mut command = switchyard();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            // The address is announced at info; the rest of actix's logging is noise.
            .env("RUST_LOG", "warn,switchyard=info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut process = ChildGuard::spawn(&mut command, false).expect("spawn switchyard");
        let stderr = process.child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the log to its end, so that the server never blocks on a full pipe.
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(addr.parse::<SocketAddr>());
                }
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        let addr = match rx.recv_timeout(ANNOUNCE_TIMEOUT) {
            Ok(Ok(addr)) => addr,
            other => panic!(
                "server announces its address: {other:?}; its log:\n{}",
                log.lock().unwrap_or_else(|e| e.into_inner())
            ),
        };
        SpawnedServer {
            process,
            addr,
            log,
            _data_dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its log (standard error) so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Waits for it to exit (after a signal the test sent); answers how it ended.
    pub fn wait(mut self) -> std::io::Result<ExitStatus> {
        self.process.wait()
    }

    /// The kernel's view of the process (`/proc/<pid>/status`).
    pub fn proc_status(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc/<pid>/status")
    }

    /// Resident memory in MiB (`VmRSS`).
    pub fn rss_mib(&self) -> f64 {
        let kib: f64 = self
            .proc_status()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kib / 1024.0
    }
}
