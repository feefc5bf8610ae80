//! Headless Chromium for the dashboard tests: a chromedriver guard that starts the driver
//! on a free loopback port and kills it (and the browsers it started) on `Drop`, and a
//! WebDriver session (fantoccini) with helpers that poll the page with a deadline.
//!
//! chromedriver is found through `SWITCHYARD_CHROMEDRIVER` (default
//! `/usr/bin/chromedriver`) and Chromium through `SWITCHYARD_CHROMIUM` (default
//! `/usr/bin/chromium`); `scripts/test.sh` installs both. A missing driver fails the test
//! with a message saying so: it never passes silently.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

pub const CHROMEDRIVER_ENV: &str = "SWITCHYARD_CHROMEDRIVER";
pub const CHROMIUM_ENV: &str = "SWITCHYARD_CHROMIUM";
const DEFAULT_CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// How long a condition on the page may take before the test fails. Generous: the
/// tests check that things happen, not how fast (the machine may be busy).
pub const DEADLINE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(40);

/// A running chromedriver, shared by the tests of one binary that run at the same
/// time; the last one to finish stops it.
pub struct Chromedriver {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

static SHARED: Mutex<Weak<Chromedriver>> = Mutex::new(Weak::new());

fn path_from_env(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

impl Chromedriver {
    /// The running driver, started when no test holds one.
    pub fn shared() -> Arc<Chromedriver> {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(driver) = shared.upgrade() {
            return driver;
        }
        let driver = Arc::new(Chromedriver::start());
        *shared = Arc::downgrade(&driver);
        driver
    }

    fn start() -> Chromedriver {
        let binary = path_from_env(CHROMEDRIVER_ENV, DEFAULT_CHROMEDRIVER);
        assert!(
            binary.is_file(),
            "chromedriver not found at {} — the dashboard's browser tests need Chromium and \
             chromedriver: run scripts/test.sh, which installs the Debian packages chromium \
             and chromium-driver, or set {CHROMEDRIVER_ENV} (and {CHROMIUM_ENV}) to where \
             they are",
            binary.display()
        );
        let dir = tempfile::tempdir().expect("temp dir for chromedriver");
        let log = dir.path().join("chromedriver.log");
        // A free port: bind :0, read it, let it go. Another process could take it in
        // between; then chromedriver fails to start and the test says so.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut command = Command::new(&binary);
        command
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!("--log-path={}", log.display()))
            // Chromium's own temporary directories (`org.chromium.Chromium.scoped_dir.*`)
            // go under the driver's directory, which goes with it.
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group, so that Drop can stop the browsers it started too.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut driver = Chromedriver {
            child,
            addr,
            log,
            _dir: dir,
        };
        let started = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!(
                    "chromedriver exited at start ({status}): {}",
                    driver.log_tail()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "chromedriver did not listen on {addr} within 10 s: {}",
                driver.log_tail()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        driver
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or_default().to_owned()
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The whole group: chromedriver and any browser a failed test left open.
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", self.child.id())])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One headless Chromium window driven over WebDriver. Dropped without [`Browser::close`]
/// (a failed test), it still ends its session, so that no browser outlives the test.
pub struct Browser {
    pub client: Client,
    session: Option<String>,
    closed: bool,
    driver: Arc<Chromedriver>,
}

impl Browser {
    /// A new browser with a window of `width` × `height` CSS pixels.
    pub async fn open(width: u32, height: u32) -> Browser {
        let driver = Chromedriver::shared();
        let chromium = path_from_env(CHROMIUM_ENV, DEFAULT_CHROMIUM);
        let mut options = json!({
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                // This machine has no network but loopback: no background requests.
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-extensions",
                "--hide-scrollbars", "--force-device-scale-factor=1",
                format!("--window-size={width},{height}"),
            ],
        });
        if chromium.is_file() {
            options["binary"] = json!(chromium);
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), options);
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://{}", driver.addr))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start a Chromium session (is {} installed? run scripts/test.sh): \
                     {e}\nchromedriver log: {}",
                    chromium.display(),
                    driver.log_tail()
                )
            });
        let session = client.session_id().await.ok().flatten();
        let browser = Browser {
            client,
            session,
            closed: false,
            driver,
        };
        browser.resize(width, height).await;
        browser
    }

    /// Makes the page's viewport `width` × `height` (the window's frame is added).
    pub async fn resize(&self, width: u32, height: u32) {
        let inner = self
            .js("return [window.innerWidth, window.innerHeight];", vec![])
            .await;
        let outer = self
            .js("return [window.outerWidth, window.outerHeight];", vec![])
            .await;
        let frame = |i: usize| {
            outer[i]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(inner[i].as_u64().unwrap_or(0)) as u32
        };
        self.client
            .set_window_size(width + frame(0), height + frame(1))
            .await
            .expect("set the window size");
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns something other than `null`, `false`, `0` or
    /// `""`, and returns that; fails the test with `what` and the last value after
    /// `deadline`.
    pub async fn wait_for_within(
        &self,
        deadline: Duration,
        what: &str,
        script: &str,
        args: Vec<Value>,
    ) -> Value {
        let started = Instant::now();
        loop {
            let value = self.js(script, args.clone()).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if started.elapsed() > deadline {
                let body = self
                    .js("return document.body.innerText.slice(0, 3000);", vec![])
                    .await;
                panic!(
                    "timed out after {deadline:?} waiting for {what}; last value {value}\n\
                     page text:\n{}",
                    body.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// [`Browser::wait_for_within`] the default [`DEADLINE`].
    pub async fn wait_for(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        self.wait_for_within(DEADLINE, what, script, args).await
    }

    /// Waits until the dashboard's WebSocket is connected and subscribed with `patterns`
    /// (comma-separated, `""` for all topics) and `condition`.
    pub async fn wait_subscribed(&self, patterns: &str, condition: &str) {
        self.wait_for(
            &format!("a subscription to `{patterns}` where `{condition}`"),
            "const t = document.querySelector('#timeline');
             return document.querySelector('#status').dataset.state === 'connected'
                 && !!t.dataset.subscription
                 && t.dataset.patterns === arguments[0]
                 && t.dataset.condition === arguments[1];",
            vec![json!(patterns), json!(condition)],
        )
        .await;
    }

    /// The topics of the timeline's rows, newest first.
    pub async fn timeline_topics(&self) -> Vec<String> {
        let v = self
            .js(
                "return Array.from(document.querySelectorAll('#timeline > li'), li => li.dataset.topic);",
                vec![],
            )
            .await;
        serde_json::from_value(v).unwrap_or_default()
    }

    /// Waits until a timeline row with `topic` is on the page; returns the row's
    /// `data-key` (its cursor).
    pub async fn wait_for_row(&self, topic: &str) -> Value {
        self.wait_for(
            &format!("a timeline row for `{topic}`"),
            "const li = Array.from(document.querySelectorAll('#timeline > li'))
                 .find(li => li.dataset.topic === arguments[0]);
             return li ? li.dataset.key : null;",
            vec![json!(topic)],
        )
        .await
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Replaces the value of the input at `css` by typing `text` into it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let input = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"));
        input
            .clear()
            .await
            .unwrap_or_else(|e| panic!("clear {css}: {e}"));
        input
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// The text of the element at `css` ("" when there is none).
    pub async fn text(&self, css: &str) -> String {
        let v = self
            .js(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
                vec![json!(css)],
            )
            .await;
        v.as_str().unwrap_or_default().to_owned()
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("screenshot")
    }

    /// Presses and releases `key` wherever the focus is, as a person would.
    pub async fn press(&self, key: Key) {
        let actions = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value: key.into() })
            .then(KeyAction::Up { value: key.into() });
        self.client
            .perform_actions(actions)
            .await
            .unwrap_or_else(|e| panic!("press {key:?}: {e}"));
    }

    /// Ends the session (and its browser).
    pub async fn close(mut self) {
        self.closed = true;
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let Some(session) = self.session.as_deref().filter(|_| !self.closed) else {
            return;
        };
        // The async client may no longer run (the test's runtime is unwinding): a plain
        // blocking `DELETE /session/{id}`, after which chromedriver quits the browser.
        let request = format!(
            "DELETE /session/{session} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.driver.addr
        );
        if let Ok(mut stream) =
            TcpStream::connect_timeout(&self.driver.addr, Duration::from_secs(1))
        {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.write_all(request.as_bytes());
            let _ = stream.read_to_end(&mut Vec::new());
        }
    }
}

/// Width and height from a PNG's header.
pub fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG"
    );
    let be = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    (be(16), be(20))
}
