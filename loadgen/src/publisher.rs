//! The publisher: plain blocking threads, each with one keep-alive HTTP connection (or one
//! WebSocket), sending stamped messages on a fixed schedule.
//!
//! At a fixed rate, message `i` is due at `start + i / rate` and carries that due time, not the
//! time it was actually sent: if the server holds the publisher back, the delay shows in the
//! delivery latency instead of silently lowering the rate (no coordinated omission). At rate 0
//! each thread sends as fast as the server answers, and stamps the send time.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::client::{self, opcode};
use crate::opts::PublishTarget;
use crate::payload::{Message, Wrap};
use crate::sys;

/// What a publishing run did.
#[derive(Debug, Default, Clone)]
pub(crate) struct Published {
    /// Messages accepted by the server.
    pub(crate) sent: u64,
    /// Requests that failed, by cause.
    pub(crate) errors: BTreeMap<String, u64>,
    /// Seconds from the first send to the last answer.
    pub(crate) elapsed_s: f64,
}

impl Published {
    /// Failed requests in all.
    pub(crate) fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Sends messages to one target over a set of connections.
#[derive(Debug)]
pub(crate) struct Publisher {
    target: Arc<PublishTarget>,
    size: usize,
    connections: usize,
    /// The next sequence number (continues across ramp steps).
    next_seq: u64,
}

impl Publisher {
    /// A publisher of `size`-byte messages over `connections` connections.
    pub(crate) fn new(target: PublishTarget, size: usize, connections: usize) -> Self {
        Self {
            target: Arc::new(target),
            size,
            connections: connections.max(1),
            next_seq: 0,
        }
    }

    /// Checks that the target accepts one message (sequence number included), so a wrong URL
    /// or token fails the run before anything is measured.
    pub(crate) fn probe(&mut self) -> Result<()> {
        let mut conn = Conn::open(&self.target).context("cannot connect to the publish URL")?;
        let mut msg = Message::new(self.size, self.target.wrap);
        let seq = self.next_seq;
        conn.send(&self.target, msg.stamp(seq, sys::mono_ns()))
            .with_context(|| format!("publishing to {} failed", self.target.url))?;
        self.next_seq += 1;
        Ok(())
    }

    /// Publishes at `rate` messages per second (0: as fast as answered) for `duration`, or
    /// until `stop` is set.
    pub(crate) fn run(&mut self, rate: f64, duration: Duration, stop: &AtomicBool) -> Published {
        let limit = if rate > 0.0 {
            (duration.as_secs_f64() * rate).round() as u64
        } else {
            u64::MAX
        };
        self.schedule(rate, duration, limit, stop)
    }

    /// Publishes `count` messages as fast as the server answers (within an hour), or until
    /// `stop` is set; returns once every request has had its answer.
    pub(crate) fn send(&mut self, count: u64, stop: &AtomicBool) -> Published {
        self.schedule(0.0, Duration::from_secs(3600), count, stop)
    }

    /// Publishes at most `limit` messages at `rate` per second (0: as fast as answered) within
    /// `duration`, or until `stop` is set.
    fn schedule(
        &mut self,
        rate: f64,
        duration: Duration,
        limit: u64,
        stop: &AtomicBool,
    ) -> Published {
        let start = sys::mono_ns() + 1_000_000;
        let end = start + duration.as_nanos() as u64;
        let next = AtomicU64::new(0);
        // One past the highest index actually attempted: an index taken by a thread that then
        // stops (time is up) is not a sequence number subscribers should expect.
        let used = AtomicU64::new(0);
        let errors = Mutex::new(BTreeMap::<String, u64>::new());
        let sent = AtomicU64::new(0);
        let seq0 = self.next_seq;
        let interval = if rate > 0.0 { 1e9 / rate } else { 0.0 };
        thread::scope(|s| {
            for _ in 0..self.connections {
                s.spawn(|| {
                    let mut msg = Message::new(self.size, self.target.wrap);
                    let mut conn: Option<Conn> = None;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= limit || stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let due = start + (i as f64 * interval) as u64;
                        let now = wait_until(due);
                        if now >= end {
                            break;
                        }
                        let stamp = if rate > 0.0 { due } else { now };
                        used.fetch_max(i + 1, Ordering::Relaxed);
                        let result = match &mut conn {
                            Some(c) => c.send(&self.target, msg.stamp(seq0 + i, stamp)),
                            None => Conn::open(&self.target).and_then(|mut c| {
                                let r = c.send(&self.target, msg.stamp(seq0 + i, stamp));
                                conn = Some(c);
                                r
                            }),
                        };
                        match result {
                            Ok(()) => {
                                sent.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                *errors.lock().unwrap().entry(e.to_string()).or_default() += 1;
                                conn = None;
                            }
                        }
                    }
                });
            }
        });
        self.next_seq = seq0 + used.into_inner();
        Published {
            sent: sent.into_inner(),
            errors: errors.into_inner().unwrap(),
            elapsed_s: (sys::mono_ns().min(end).saturating_sub(start)) as f64 / 1e9,
        }
    }
}

/// Sleeps until `due` (mono ns), spinning for the last stretch; returns the time then.
fn wait_until(due: u64) -> u64 {
    loop {
        let now = sys::mono_ns();
        if now >= due {
            return now;
        }
        let left = due - now;
        if left > 200_000 {
            thread::sleep(Duration::from_nanos(left - 100_000));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// One publishing connection.
enum Conn {
    Http {
        stream: TcpStream,
        request: Vec<u8>,
        head_len: usize,
        rbuf: Vec<u8>,
    },
    Ws {
        writer: Arc<Mutex<TcpStream>>,
        frame: Vec<u8>,
    },
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http { .. } => "Conn::Http",
            Self::Ws { .. } => "Conn::Ws",
        })
    }
}

impl Conn {
    fn open(target: &PublishTarget) -> io::Result<Self> {
        let stream = TcpStream::connect(target.addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        if target.websocket {
            return open_ws(stream, target);
        }
        Ok(Self::Http {
            stream,
            request: Vec::new(),
            head_len: 0,
            rbuf: Vec::with_capacity(4096),
        })
    }

    fn send(&mut self, target: &PublishTarget, body: &[u8]) -> io::Result<()> {
        match self {
            Self::Http {
                stream,
                request,
                head_len,
                rbuf,
            } => {
                if request.is_empty() {
                    let mut head = format!(
                        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                        target.path,
                        target.host,
                        body.len()
                    );
                    for (k, v) in &target.headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str("\r\n");
                    *head_len = head.len();
                    request.extend_from_slice(head.as_bytes());
                }
                request.truncate(*head_len);
                request.extend_from_slice(body);
                stream.write_all(request)?;
                read_response(stream, rbuf)
            }
            Self::Ws { writer, frame } => {
                frame.clear();
                client::encode_frame(opcode::TEXT, body, [0x5a, 0x17, 0x3c, 0x99], frame);
                writer.lock().unwrap().write_all(frame)
            }
        }
    }
}

/// Reads one HTTP answer (Content-Length or chunked body); a non-2xx status is an error.
fn read_response(stream: &mut TcpStream, rbuf: &mut Vec<u8>) -> io::Result<()> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(rbuf) {
            Ok(httparse::Status::Complete(head)) => {
                let code = resp.code.unwrap_or(0);
                let header = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
                let length: usize = header("content-length")
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                rbuf.drain(..head);
                if chunked {
                    while memchr::memmem::find(rbuf, b"0\r\n\r\n").is_none() {
                        fill(stream, rbuf)?;
                    }
                    let end = memchr::memmem::find(rbuf, b"0\r\n\r\n").expect("found") + 5;
                    rbuf.drain(..end);
                } else {
                    while rbuf.len() < length {
                        fill(stream, rbuf)?;
                    }
                    rbuf.drain(..length);
                }
                if !(200..300).contains(&code) {
                    return Err(io::Error::other(format!("http {code}")));
                }
                return Ok(());
            }
            Ok(httparse::Status::Partial) => fill(stream, rbuf)?,
            Err(_) => return Err(io::Error::other("malformed answer")),
        }
    }
}

fn fill(stream: &mut TcpStream, rbuf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
    }
    rbuf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Upgrades `stream` and starts a thread that reads (and drops) what the server broadcasts
/// back to the publisher, answering pings.
fn open_ws(mut stream: TcpStream, target: &PublishTarget) -> io::Result<Conn> {
    let key = client::new_key();
    stream.write_all(&client::handshake_request(
        &target.host,
        &target.path,
        &key,
        &target.headers,
    ))?;
    let mut buf = Vec::new();
    let head = loop {
        fill(&mut stream, &mut buf)?;
        match client::parse_handshake_response(&buf, &key) {
            Ok(Some(n)) => break n,
            Ok(None) => {}
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    };
    buf.drain(..head);
    stream.set_read_timeout(None)?;
    let writer = Arc::new(Mutex::new(stream.try_clone()?));
    let pong_writer = writer.clone();
    thread::Builder::new()
        .name("publisher-reader".into())
        .spawn(move || drain_ws(stream, buf, pong_writer))?;
    Ok(Conn::Ws {
        writer,
        frame: Vec::new(),
    })
}

fn drain_ws(mut stream: TcpStream, mut buf: Vec<u8>, writer: Arc<Mutex<TcpStream>>) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let mut pos = 0;
        while let Ok(Some(head)) = client::parse_frame(&buf[pos..], usize::MAX) {
            let frame = &buf[pos..];
            if frame.len() < head.total_len() {
                break;
            }
            match head.opcode {
                opcode::PING => {
                    let mut pong = Vec::new();
                    let payload = &frame[head.header_len..head.total_len()];
                    client::encode_frame(opcode::PONG, payload, [1, 2, 3, 4], &mut pong);
                    let _ = writer.lock().unwrap().write_all(&pong);
                }
                opcode::CLOSE => return,
                _ => {}
            }
            pos += head.total_len();
        }
        buf.drain(..pos);
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Checks the options make sense for this target.
pub(crate) fn check(target: &PublishTarget, size: usize) -> Result<()> {
    if target.websocket && target.wrap == Wrap::Hub {
        bail!("--publish-format hub needs an http:// publish URL");
    }
    if size > 16 << 20 {
        bail!("--size over 16 MiB");
    }
    Ok(())
}
