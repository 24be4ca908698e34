//! Shared helpers of the integration tests: a hub on 127.0.0.1:0, real WebSocket clients, and
//! the watchdog (`watchdog.rs`, shared with loadgen's tests) so a hung test fails instead of
//! hanging CI.

#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use takhin_monitor::{Cores, Hub, HubConfig, HubHandle};
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

pub mod browser;
pub mod proxy;
pub mod tansu;
pub mod tls;
mod watchdog;

/// How long a client read may wait before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Aborts the whole test binary if it runs longer than `watchdog::DEFAULT_LIMIT` (120 s).
pub fn watchdog() {
    watchdog::arm(watchdog::DEFAULT_LIMIT);
}

/// The test configuration: loopback port 0, both cores when there are two.
pub fn config() -> HubConfig {
    let cores = core_affinity::get_core_ids().map_or(1, |c| c.len()).min(2);
    HubConfig::default()
        .listen("127.0.0.1:0".parse().unwrap())
        .cores(Cores::Count(cores))
}

pub fn start(config: HubConfig) -> HubHandle {
    watchdog();
    Hub::start(config).expect("hub starts")
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

pub fn ws_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/api/monitoring/ws")
}

/// Connects a WebSocket client and waits until the server has registered it (a ping answered).
pub fn connect(addr: SocketAddr) -> Client {
    let stream = TcpStream::connect(addr).expect("tcp connect");
    connect_stream(addr, stream)
}

pub fn connect_stream(addr: SocketAddr, stream: TcpStream) -> Client {
    let mut c = connect_quiet(addr, stream);
    c.send_json(&serde_json::json!({"type": "ping"}));
    c.recv_type("pong");
    c
}

/// Connects without the registration ping, so the first message read is the server's.
pub fn connect_quiet(addr: SocketAddr, stream: TcpStream) -> Client {
    connect_with_query(addr, stream, "")
}

/// [`connect_quiet`] with a query string on the endpoint (`?since=...&epoch=...`).
pub fn connect_with_query(addr: SocketAddr, stream: TcpStream, query: &str) -> Client {
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let url = format!("{}{query}", ws_url(addr));
    let (ws, _) = tungstenite::client(url, stream).expect("handshake");
    Client { ws }
}

impl Client {
    pub fn send_json(&mut self, v: &Value) {
        self.ws.send(Message::text(v.to_string())).expect("send");
    }

    pub fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s)).expect("send");
    }

    /// The next text message as JSON (control frames are handled by tungstenite).
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().expect("read") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
                Message::Close(c) => panic!("closed by server: {c:?}"),
                _ => {}
            }
        }
    }

    /// The next text message if one comes within `wait` (for polling a stream that is
    /// expected to resume; tungstenite keeps a partly read frame across the timeout).
    pub fn recv_within(&mut self, wait: Duration) -> Option<Value> {
        self.ws.get_ref().set_read_timeout(Some(wait)).unwrap();
        let got = loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => break serde_json::from_str(t.as_str()).ok(),
                Ok(Message::Close(c)) => panic!("closed by server: {c:?}"),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break None
                }
                Err(e) => panic!("read: {e}"),
            }
        };
        self.ws
            .get_ref()
            .set_read_timeout(Some(READ_TIMEOUT))
            .unwrap();
        got
    }

    /// Skips messages until one of type `kind`.
    pub fn recv_type(&mut self, kind: &str) -> Value {
        let deadline = Instant::now() + READ_TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "no {kind} in time");
            let v = self.recv();
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Reads until the server's close frame and returns it.
    pub fn recv_close(&mut self) -> Option<CloseFrame> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(c)) => {
                    // Send tungstenite's close reply, completing the handshake.
                    let _ = self.ws.flush();
                    return c;
                }
                Ok(_) => {}
                Err(e) => panic!("no close frame: {e}"),
            }
        }
    }
}

/// A raw TCP client that has done the WebSocket handshake by hand.
pub fn raw_upgrade(addr: SocketAddr) -> TcpStream {
    upgrade_on(TcpStream::connect(addr).unwrap())
}

/// The WebSocket handshake by hand on a connected socket.
pub fn upgrade_on(mut s: TcpStream) -> TcpStream {
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.write_all(
        b"GET /api/monitoring/ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// Reads an HTTP response head byte by byte.
pub fn read_head(s: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A masked client frame.
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads raw server frames until a close frame and returns its code; `None` when the socket
/// ended without one.
pub fn raw_close_code(s: &mut TcpStream) -> Option<u16> {
    raw_frames_until_close(s).1
}

/// Reads raw server frames until a close frame: the frames before it (opcode, payload) and the
/// close code, `None` when the socket ended without a close frame.
pub fn raw_frames_until_close(s: &mut impl Read) -> (Vec<(u8, Vec<u8>)>, Option<u16>) {
    let mut frames = Vec::new();
    loop {
        let mut h = [0u8; 2];
        if s.read_exact(&mut h).is_err() {
            return (frames, None);
        }
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            if s.read_exact(&mut b).is_err() {
                return (frames, None);
            }
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            if s.read_exact(&mut b).is_err() {
                return (frames, None);
            }
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        if s.read_exact(&mut payload).is_err() {
            return (frames, None);
        }
        if h[0] & 0x0f == 0x8 {
            return (frames, Some(u16::from_be_bytes([payload[0], payload[1]])));
        }
        frames.push((h[0] & 0x0f, payload));
    }
}

/// Waits for a condition the test cannot await directly (a server counter), with a deadline.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + READ_TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An HTTP answer: status, headers (lower-case names) and body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// `GET /metrics`, read as a function from a (label-less) metric's name to its value.
pub fn prometheus(addr: SocketAddr) -> impl Fn(&str) -> f64 {
    prometheus_of(http(addr, "GET", "/metrics", &[], None))
}

/// [`prometheus`] of an answer already read (`GET /metrics` over TLS, say).
pub fn prometheus_of(a: HttpAnswer) -> impl Fn(&str) -> f64 {
    assert_eq!(a.status, 200, "{a:?}");
    move |name: &str| -> f64 {
        a.body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{}", a.body))
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> HttpAnswer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    http_on(&mut s, method, path, headers, body, true)
}

/// One HTTP/1.1 request on an existing connection.
pub fn http_on(
    s: &mut (impl Read + Write),
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    close: bool,
) -> HttpAnswer {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    let has_connection = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("connection"));
    if close && !has_connection {
        req.push_str("Connection: close\r\n");
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).unwrap();
    read_answer(s)
}

/// Reads one HTTP answer (head and `Content-Length` body) from `s`.
pub fn read_answer(s: &mut impl Read) -> HttpAnswer {
    let head = read_head(s);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap_or_default()
        .split(' ')
        .nth(1)
        .map_or(0, |c| c.parse().unwrap());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    HttpAnswer {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

/// The `takhin-monitor` binary as a real process, killed when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// Whether it speaks TLS on its port (`listening on wss://`): see [`Self::ws_url`] and
    /// [`Self::page_url`].
    pub tls: bool,
    /// Every line it has logged so far (stderr).
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Notified on each line logged, and when the log ends.
    logged: std::sync::Arc<std::sync::Condvar>,
    /// Set when the process's stderr has ended (it exited).
    log_ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ServerProcess {
    /// The logged lines that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// How many lines it has logged so far: a mark for [`Self::await_log`].
    pub fn log_mark(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// Waits for a line logged after `mark` that contains `needle` and returns it; fails after
    /// [`READ_TIMEOUT`], or when the process's log ends without one.
    pub fn await_log(&self, mark: usize, needle: &str) -> String {
        use std::sync::atomic::Ordering;
        let deadline = Instant::now() + READ_TIMEOUT;
        let mut log = self.log.lock().unwrap();
        loop {
            if let Some(line) = log.iter().skip(mark).find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !self.log_ended.load(Ordering::SeqCst),
                "no log line with {needle:?}: the server's log ended\n{}",
                log.join("\n")
            );
            assert!(
                !left.is_zero(),
                "no log line with {needle:?} in time\n{}",
                log.join("\n")
            );
            log = self.logged.wait_timeout(log, left).unwrap().0;
        }
    }

    /// The WebSocket endpoint: `ws://127.0.0.1:PORT/...`, or `wss://localhost:PORT/...` with TLS
    /// (the name the tests' certificates are for).
    pub fn ws_url(&self) -> String {
        match self.tls {
            false => ws_url(self.addr),
            true => format!("wss://localhost:{}/api/monitoring/ws", self.addr.port()),
        }
    }

    /// The dashboard: `http://127.0.0.1:PORT/`, or `https://localhost:PORT/` with TLS.
    pub fn page_url(&self) -> String {
        match self.tls {
            false => format!("http://{}/", self.addr),
            true => format!("https://localhost:{}/", self.addr.port()),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary with `args` and `env`, and waits for the line that says where it listens.
pub fn spawn_server(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_takhin-monitor"));
    cmd.args(args).envs(env.iter().copied());
    spawn_command(cmd)
}

/// [`spawn_server`] with the open-files limit (soft and hard) set to `files`.
pub fn spawn_server_with_files(args: &[&str], files: u64) -> ServerProcess {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_takhin-monitor"));
    cmd.args(args);
    with_file_limit(&mut cmd, files);
    spawn_command(cmd)
}

/// Makes `cmd` run with the open-files limit (soft and hard) set to `files`.
pub fn with_file_limit(cmd: &mut std::process::Command, files: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches only the struct passed.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: files,
                rlim_max: files,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts `cmd` (the binary) and waits for the line that says where it listens
/// (`listening on ws://ADDR/...`, or `wss://` with TLS).
pub fn spawn_command(mut cmd: std::process::Command) -> ServerProcess {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    watchdog();
    let child = cmd
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    // Guarded from here on: a failure below still kills it.
    let mut server = ServerProcess {
        child,
        addr: ([0, 0, 0, 0], 0).into(),
        tls: false,
        log: Default::default(),
        logged: Default::default(),
        log_ended: Default::default(),
    };
    let mut lines = BufReader::new(server.child.stderr.take().unwrap()).lines();
    (server.addr, server.tls) = loop {
        let line = lines
            .next()
            .expect("the server logs where it listens")
            .unwrap();
        let Some(rest) = line.split("listening on ").nth(1) else {
            continue;
        };
        let (tls, rest) = match (rest.strip_prefix("wss://"), rest.strip_prefix("ws://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => continue,
        };
        let addr = rest.split('/').next().unwrap().parse().unwrap();
        server.log.lock().unwrap().push(line);
        break (addr, tls);
    };
    // Keep draining the log so the server never blocks on a full pipe.
    let (log, logged, ended) = (
        server.log.clone(),
        server.logged.clone(),
        server.log_ended.clone(),
    );
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            log.lock().unwrap().push(line);
            logged.notify_all();
        }
        let _log = log.lock().unwrap();
        ended.store(true, std::sync::atomic::Ordering::SeqCst);
        logged.notify_all();
    });
    server
}
