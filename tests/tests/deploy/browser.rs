//! A real headless Chromium (Debian's `chromium`), driven over WebDriver by
//! Debian's `chromedriver` on loopback. The browser reaches nothing but the
//! addresses a test opens: background networking, updates and sync are off.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cutover_tests::Client;
use http::Method;
use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One browser session; chromedriver and the browser are stopped on drop.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    client: Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: run scripts/install-deps.sh (Debian packages chromium and chromium-driver)"
            );
        }
        let mut driver = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group, so the browser it starts is stopped with it.
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let stdout = driver.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // "ChromeDriver was started successfully on port 44185."
                if let Some(rest) = line.split("successfully on port ").nth(1) {
                    let port: u16 = rest.trim_end_matches('.').trim().parse().unwrap_or(0);
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromedriver did not report its port");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let profile = tempfile::tempdir().expect("profile dir");
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--no-proxy-server".into(),
            "--window-size=1280,1000".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }}});
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            // Launching the browser can take long on a busy 2-core machine.
            client: Client::new().with_timeout(Duration::from_secs(60)),
            _profile: profile,
        };
        let v = browser.call(Method::POST, "/session", &caps).await;
        browser.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        browser
    }

    async fn call(&self, method: Method, path: &str, body: &Value) -> Value {
        let host = self.addr.to_string();
        let body = if method == Method::GET || method == Method::DELETE {
            String::new()
        } else {
            body.to_string()
        };
        let r = self
            .client
            .send(
                self.addr,
                method,
                &host,
                path,
                &[("content-type", "application/json")],
                &body,
            )
            .await
            .unwrap_or_else(|e| panic!("webdriver {path}: {e}"));
        let v: Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("webdriver {path}: {e}: {}", r.body));
        assert!(r.status.is_success(), "webdriver {path}: {}: {v}", r.status);
        v["value"].clone()
    }

    /// Navigates and waits for the document to load.
    pub async fn open(&self, url: &str) {
        let path = format!("/session/{}/url", self.session);
        self.call(Method::POST, &path, &json!({ "url": url })).await;
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub async fn eval(&self, script: &str) -> Value {
        let path = format!("/session/{}/execute/sync", self.session);
        self.call(
            Method::POST,
            &path,
            &json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Polls `script` every 50 ms until `ok` accepts its value; returns the value
    /// and how long it took, or panics with the last value after `within`.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        script: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> (Value, Duration) {
        let start = Instant::now();
        loop {
            let v = self.eval(script).await;
            if ok(&v) {
                return (v, start.elapsed());
            }
            if start.elapsed() > within {
                panic!("the page did not show {what} within {within:?}; last seen: {v}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let path = format!("/session/{}/screenshot", self.session);
        let v = self.call(Method::GET, &path, &Value::Null).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("screenshot is base64")
    }

    /// Ends the session (closing the browser) before the driver is stopped.
    pub async fn close(mut self) {
        let path = format!("/session/{}", self.session);
        self.call(Method::DELETE, &path, &Value::Null).await;
        self.session.clear();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
