//! In a real browser: headless Chromium, driven from Rust over the DevTools protocol, renders the
//! server's own dashboard with live metrics from the demo source, and runs the seeds' JavaScript
//! client and React hook unchanged against the server, receiving `metrics` and a
//! `topic_created` the test triggers through REST.
//!
//! Needs `chromium` and `npm ci` in `tests/browser` (looked for by build.rs); without them the
//! test is ignored, saying so, unless `CI` is set, where it runs and fails. `.ci/run` installs
//! them.

mod common;

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
const WAIT: Duration = Duration::from_secs(10);
/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(100);
/// The topic the test creates through REST.
const TOPIC: &str = "browser-test";

/// The static files of the test: the seeds' code, the page glue and the npm packages.
fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// The npm files the seeds page loads, relative to `tests/browser`.
const NPM_FILES: [&str; 3] = [
    "node_modules/react/umd/react.production.min.js",
    "node_modules/react-dom/umd/react-dom.production.min.js",
    "node_modules/@babel/standalone/babel.min.js",
];

/// Chromium's path, or why the test cannot run.
fn prerequisites() -> Result<PathBuf, String> {
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

fn start_server() -> common::ServerProcess {
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--source",
        "demo",
    ];
    common::spawn_server(&[&args[..], &["--metrics-interval", "0.5"]].concat(), &[])
}

/// A Chromium process in its own process group, with its temporary directory (profile and
/// pages): the group is killed and the directory removed when dropped.
struct Chromium {
    child: Child,
    dir: PathBuf,
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
struct Browser {
    cdp: Cdp,
    process: Chromium,
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

fn start_browser(chromium: &Path) -> Browser {
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
        s.set_read_timeout(Some(common::READ_TIMEOUT)).unwrap();
    }
    Browser {
        cdp: Cdp { ws, next_id: 0 },
        process,
    }
}

/// A DevTools protocol connection to the browser target; page sessions are flattened into it.
struct Cdp {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Cdp {
    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let mut msg = json!({"id": self.next_id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let _ = self.ws.send(Message::text(msg.to_string()));
        self.next_id
    }

    /// A command's result, or the protocol's error; events in between are skipped.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value, Value> {
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
    fn open(&mut self, url: &str) -> String {
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
    fn eval(&mut self, session: &str, expr: &str) -> Result<Value, Value> {
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

    /// Polls `expr` until it is `true`; on timeout fails with what the page looks like.
    fn wait_until(&mut self, session: &str, what: &str, expr: &str) {
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

/// What a page shows, for failure messages.
const PAGE_STATE: &str = r#"JSON.stringify({
    url: location.href,
    text: document.body ? document.body.innerText.slice(0, 600) : null,
    monitor: window.__monitor && {
        state: window.__monitor.state,
        metricsCount: window.__monitor.metricsCount,
        totalTopics: window.__monitor.lastMetrics
            && window.__monitor.lastMetrics.clusterHealth
            && window.__monitor.lastMetrics.clusterHealth.totalTopics,
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
const DASHBOARD_LIVE: &str = r#"window.__monitor
    ? window.__monitor.state === 'live'
        && window.__monitor.metricsCount >= 2
        && window.__monitor.lastMetrics.clusterHealth.totalTopics > 0
    : document.querySelector('#conn-state').textContent.trim() === 'live'
        && Number(document.querySelector('#metrics-count').textContent) >= 2
        && Number(document.querySelector('#total-topics').textContent) > 0"#;

/// The dashboard's topic table has rows.
const DASHBOARD_TOPIC_ROWS: &str =
    r#"document.querySelectorAll('#topic-table [data-topic]').length >= 1"#;

/// The dashboard's topic table has a row for the test's topic.
fn dashboard_topic_row(topic: &str) -> String {
    format!(r#"document.querySelector('#topic-table [data-topic="{topic}"]') !== null"#)
}

/// The dashboard received `topic_created` for `topic`: in `window.__monitor.events`, or the
/// event log when the page has no `__monitor`.
fn dashboard_topic_event(topic: &str) -> String {
    format!(
        r#"window.__monitor
    ? (window.__monitor.events || []).some(e => e.type === 'topic_created'
        && JSON.stringify(e).includes('"{topic}"'))
    : Array.from(document.querySelectorAll('#event-log [data-type="topic_created"]'))
        .some(e => e.textContent.includes('{topic}'))"#
    )
}

/// The seeds' client got `metrics`, and the seeds' React Dashboard renders `Topics: N`, N > 0.
const SEEDS_LIVE: &str = r#"window.seen.metrics >= 1
    && window.seen.lastMetrics.clusterHealth.totalTopics > 0
    && /^Topics: [1-9][0-9]*$/.test(document.getElementById('root').textContent.trim())"#;

/// The seeds' client got `onTopicCreated({name, partitions})` for the test's topic.
fn seeds_topic_created(topic: &str, partitions: u32) -> String {
    format!(
        r#"window.seen.topicCreated.some(d => d.name === '{topic}' && d.partitions === {partitions})"#
    )
}

/// A `file://` URL of an absolute path, percent-encoding what a URL path cannot hold.
fn file_url(path: &Path) -> String {
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

/// Writes the seeds page into `dir`: React, ReactDOM and Babel from `node_modules`, the seeds'
/// client loaded unchanged from its file, the seeds' hook source unchanged in a
/// `text/x-tsx` script element, then the glue that runs them.
fn write_seeds_page(dir: &Path) -> PathBuf {
    let src = browser_dir();
    let hook = std::fs::read_to_string(src.join("seeds-hook.tsx")).unwrap();
    assert!(
        !hook.contains("</script") && !hook.contains("<!--"),
        "the hook's source must fit in a script element as it is"
    );
    let script = |f: &str| format!("<script src=\"{}\"></script>\n", file_url(&src.join(f)));
    let mut page = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>seeds</title></head>\n\
         <body>\n<div id=\"root\"></div>\n",
    );
    for f in NPM_FILES.iter().chain(&["seeds-client.js"]) {
        page.push_str(&script(f));
    }
    page.push_str("<script type=\"text/x-tsx\" id=\"seeds-hook\">");
    page.push_str(&hook);
    page.push_str("</script>\n");
    page.push_str(&script("seeds-glue.js"));
    page.push_str("</body></html>\n");
    let path = dir.join("seeds.html");
    std::fs::write(&path, page).unwrap();
    path
}

#[test]
#[cfg_attr(
    not(any(has_browser, ci)),
    ignore = "needs chromium and tests/browser/node_modules (.ci/run installs them)"
)]
fn the_dashboard_and_the_seeds_client_and_hook_run_in_headless_chromium() {
    common::watchdog();
    let chromium = prerequisites().unwrap_or_else(|why| panic!("{why}"));
    let started = Instant::now();
    let server = start_server();
    let mut browser = start_browser(&chromium);
    let cdp = &mut browser.cdp;

    // (a) The server's own dashboard renders live metrics from the demo source.
    let dashboard = cdp.open(&format!("http://{}/", server.addr));
    cdp.wait_until(&dashboard, "the dashboard to go live", DASHBOARD_LIVE);
    cdp.wait_until(&dashboard, "topic table rows", DASHBOARD_TOPIC_ROWS);

    // (b) The seeds' client and hook, unchanged, in a page of their own.
    let page = write_seeds_page(&browser.process.dir);
    let ws = common::ws_url(server.addr);
    let seeds = cdp.open(&format!("{}?ws={ws}", file_url(&page)));
    cdp.wait_until(
        &seeds,
        "the seeds' client and hook to get metrics",
        SEEDS_LIVE,
    );

    let created = common::http(
        server.addr,
        "POST",
        "/api/topics",
        &[],
        Some(&json!({"name": TOPIC, "partitions": 2}).to_string()),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.json()["name"], TOPIC, "{}", created.body);

    cdp.wait_until(
        &seeds,
        "the seeds' client's onTopicCreated",
        &seeds_topic_created(TOPIC, 2),
    );
    cdp.wait_until(
        &dashboard,
        "the dashboard's topic_created event",
        &dashboard_topic_event(TOPIC),
    );
    cdp.wait_until(
        &dashboard,
        "the dashboard's row of the new topic",
        &dashboard_topic_row(TOPIC),
    );

    let errors = cdp.eval(&seeds, "window.seen.errors").unwrap();
    assert_eq!(errors, json!([]), "errors in the seeds page");
    eprintln!("browser test took {:?}", started.elapsed());
}
