//! Headless Chromium for the browser tests (tests/browser.rs, tests/browser_kafka.rs), driven
//! from Rust over the DevTools protocol: a browser in its own process group, tabs opened and
//! attached to, JavaScript evaluated in them, and bounded polling of a page's DOM for the
//! state a test waits for. Also the checks of the server's own dashboard that both tests use.
//!
//! Needs `chromium` and `npm ci` in `tests/browser` (looked for by build.rs, which sets
//! `has_browser`); [`prerequisites`] says which is missing.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// How long one condition in a page may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);
/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(100);

/// The static files of the browser tests: the seeds' code, the page glue and the npm packages.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// The npm files the seeds page loads, relative to `tests/browser` (build.rs looks for the
/// same list).
pub const NPM_FILES: [&str; 3] = [
    "node_modules/react/umd/react.production.min.js",
    "node_modules/react-dom/umd/react-dom.production.min.js",
    "node_modules/@babel/standalone/babel.min.js",
];

/// Chromium's path, or why the browser tests cannot run.
pub fn prerequisites() -> Result<PathBuf, String> {
    let chromium = std::iter::once(PathBuf::from("/usr/bin/chromium"))
        .chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|dir| dir.join("chromium")),
        )
        .find(|p| p.is_file())
        .ok_or("no chromium (/usr/bin/chromium or on PATH): apt-get install chromium")?;
    let dir = browser_dir();
    if let Some(missing) = NPM_FILES.iter().map(|f| dir.join(f)).find(|p| !p.is_file()) {
        return Err(format!(
            "{} is missing: run `npm ci` in {}",
            missing.display(),
            dir.display()
        ));
    }
    Ok(chromium)
}

/// A Chromium process in its own process group, with its temporary directory (profile and
/// pages): the group is killed and the directory removed when dropped.
pub struct Chromium {
    pub child: Child,
    pub dir: PathBuf,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Whatever is left of the group (renderers, zygotes) dies with it.
        // SAFETY: signalling the process group we created, whose id is our child's PID.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A headless Chromium and the DevTools connection that drives it; asked to close, then
/// killed, when dropped.
pub struct Browser {
    pub cdp: Cdp,
    pub process: Chromium,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.cdp.send(None, "Browser.close", json!({}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.process.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts headless Chromium (the path from [`prerequisites`]) on a fresh profile and connects
/// to its DevTools endpoint.
pub fn start_browser(chromium: &Path) -> Browser {
    start_browser_with(chromium, &[])
}

/// [`start_browser`] with `flags` added to Chromium's command line.
pub fn start_browser_with(chromium: &Path, flags: &[String]) -> Browser {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!("takhin-browser-{}-{nanos}", std::process::id()));
    let profile = dir.join("profile");
    std::fs::create_dir_all(&profile).unwrap();
    let child = Command::new(chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Two tabs stay live at once: neither may be throttled as a background tab.
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
        ])
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--remote-debugging-port=0", "about:blank"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("chromium starts");
    // Guarded from here on: a failure below still kills it.
    let mut process = Chromium { child, dir };
    let mut lines = BufReader::new(process.child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let url = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!(
                "chromium exited before its DevTools address:\n{}",
                log.join("\n")
            );
        };
        if let Some(rest) = line.split("DevTools listening on ").nth(1) {
            break rest.trim().to_owned();
        }
        log.push(line);
    };
    std::thread::spawn(move || lines.for_each(drop));
    let (ws, _) = tungstenite::connect(url.as_str()).expect("DevTools WebSocket");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(super::READ_TIMEOUT)).unwrap();
    }
    Browser {
        cdp: Cdp { ws, next_id: 0 },
        process,
    }
}

/// A DevTools protocol connection to the browser target; page sessions are flattened into it.
pub struct Cdp {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Cdp {
    pub fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let mut msg = json!({"id": self.next_id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let _ = self.ws.send(Message::text(msg.to_string()));
        self.next_id
    }

    /// A command's result, or the protocol's error; events in between are skipped.
    pub fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, Value> {
        let id = self.send(session, method, params);
        loop {
            let msg = match self.ws.read().unwrap_or_else(|e| panic!("{method}: {e}")) {
                Message::Text(t) => serde_json::from_str::<Value>(t.as_str()).unwrap(),
                _ => continue,
            };
            if msg["id"] != id {
                continue;
            }
            return match msg.get("error") {
                Some(e) => Err(e.clone()),
                None => Ok(msg["result"].clone()),
            };
        }
    }

    /// Opens `url` in a new tab and attaches to it; returns the session id.
    pub fn open(&mut self, url: &str) -> String {
        let target = self
            .call(None, "Target.createTarget", json!({"url": url}))
            .expect("Target.createTarget");
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .expect("Target.attachToTarget");
        attached["sessionId"].as_str().unwrap().to_owned()
    }

    /// The value of a JavaScript expression in the page (an exception is returned as the string
    /// `"exception: ..."`), or the protocol's error (the page is still loading).
    pub fn eval(&mut self, session: &str, expr: &str) -> Result<Value, Value> {
        let wrapped = format!(
            "(() => {{ try {{ return ({expr}); }} catch (e) {{ return 'exception: ' + e; }} }})()"
        );
        let r = self.call(
            Some(session),
            "Runtime.evaluate",
            json!({"expression": wrapped, "returnByValue": true}),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(ex.clone());
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expr` every [`POLL`] until it is `true`; after [`WAIT`] fails with what the page
    /// looks like.
    pub fn wait_until(&mut self, session: &str, what: &str, expr: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.eval(session, expr) == Ok(Value::Bool(true)) {
                return;
            }
            if Instant::now() > deadline {
                let state = self.eval(session, PAGE_STATE);
                panic!("timed out waiting for {what}\n  condition: {expr}\n  page: {state:?}");
            }
            std::thread::sleep(POLL);
        }
    }
}

/// What a page shows, for failure messages: its text, and the dashboard's or the seeds page's
/// state when it is one of them.
pub const PAGE_STATE: &str = r#"JSON.stringify({
    url: location.href,
    text: document.body ? document.body.innerText.slice(0, 1200) : null,
    monitor: window.__monitor && {
        state: window.__monitor.state,
        metricsCount: window.__monitor.metricsCount,
        totalTopics: window.__monitor.lastMetrics
            && window.__monitor.lastMetrics.clusterHealth
            && window.__monitor.lastMetrics.clusterHealth.totalTopics,
        source: window.__monitor.lastMetrics && window.__monitor.lastMetrics.source,
        consumerLags: window.__monitor.lastMetrics
            && (window.__monitor.lastMetrics.consumerLags || []).slice(0, 3),
        events: (window.__monitor.events || []).slice(-5),
    },
    seen: window.seen && {
        metrics: window.seen.metrics,
        topicCreated: window.seen.topicCreated,
        hookRendered: window.seen.hookRendered,
        errors: window.seen.errors,
    },
})"#;

/// The dashboard is live, has had two `metrics` frames and shows topics: through
/// `window.__monitor`, or the DOM hooks when the page has no `__monitor`.
pub const DASHBOARD_LIVE: &str = r#"window.__monitor
    ? window.__monitor.state === 'live'
        && window.__monitor.metricsCount >= 2
        && window.__monitor.lastMetrics.clusterHealth.totalTopics > 0
    : document.querySelector('#conn-state').textContent.trim() === 'live'
        && Number(document.querySelector('#metrics-count').textContent) >= 2
        && Number(document.querySelector('#total-topics').textContent) > 0"#;

/// The dashboard's topic table has rows.
pub const DASHBOARD_TOPIC_ROWS: &str =
    r#"document.querySelectorAll('#topic-table [data-topic]').length >= 1"#;

/// The dashboard's topic table has a row for `topic` (a name that needs no quoting in a CSS
/// selector nor in a JavaScript string).
pub fn dashboard_topic_row(topic: &str) -> String {
    format!(r#"document.querySelector('#topic-table [data-topic="{topic}"]') !== null"#)
}

/// A `file://` URL of an absolute path, percent-encoding what a URL path cannot hold.
pub fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for b in path.to_str().expect("a UTF-8 path").bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}
