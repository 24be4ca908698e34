//! The publisher: plain blocking threads, each with one keep-alive HTTP connection (or one
//! WebSocket), sending stamped messages on a fixed schedule.
//!
//! At a fixed rate, message `i` is due at `start + i / rate` and carries that due time, not the
//! time it was actually sent: if the server holds the publisher back, the delay shows in the
//! delivery latency instead of silently lowering the rate (no coordinated omission). At rate 0
//! each thread sends as fast as the server answers, and stamps the send time.
//!
//! With `--batch N` a request carries N messages as one JSON array (our publish API). It is due
//! when its last message is, and each of its messages carries that time with its own sequence
//! number: the latency measures the server, not the wait for a batch to fill. With
//! `--pipeline K` a connection writes up to K requests before it reads their answers, which come
//! back in order, each checked (202, and for an array the count of messages the hub took).

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::client::{self, opcode};
use crate::opts::{Opts, PublishTarget};
use crate::payload::{Batch, Wrap};
use crate::sys;

/// Our hub's default limit on a request body (`HubConfig::max_request_body`).
const HUB_MAX_BODY: usize = 1 << 20;

/// Most requests in flight on one connection: their answers must fit the socket buffers while
/// the publisher writes.
const MAX_PIPELINE: usize = 1024;

/// How the publisher sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Message size in bytes (the JSON object loadgen stamps).
    pub(crate) size: usize,
    /// Publishing connections, one thread each.
    pub(crate) connections: usize,
    /// Messages per request; more than one are sent as one JSON array.
    pub(crate) batch: usize,
    /// Requests written on a connection before their answers are read.
    pub(crate) pipeline: usize,
}

impl Shape {
    /// The shape the options ask for.
    pub(crate) fn of(o: &Opts) -> Self {
        Self {
            size: o.size,
            connections: o.publishers.max(1),
            batch: o.batch,
            pipeline: o.pipeline,
        }
    }

    /// Whether requests are JSON arrays.
    fn array(&self) -> bool {
        self.batch > 1
    }
}

/// What a publishing run did.
#[derive(Debug, Default, Clone)]
pub(crate) struct Published {
    /// Messages accepted by the server.
    pub(crate) sent: u64,
    /// Requests written (each of up to `--batch` messages), whatever their answer.
    pub(crate) requests: u64,
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

    /// Counts `requests` failed requests of one cause.
    fn error(&mut self, cause: impl Into<String>, requests: u64) {
        if requests > 0 {
            *self.errors.entry(cause.into()).or_default() += requests;
        }
    }

    /// Adds another connection's counts (not its time).
    fn add(&mut self, other: &Self) {
        self.sent += other.sent;
        self.requests += other.requests;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }
}

/// Sends messages to one target over a set of connections.
#[derive(Debug)]
pub(crate) struct Publisher {
    target: Arc<PublishTarget>,
    shape: Shape,
    /// The next sequence number (continues across ramp steps).
    next_seq: u64,
}

impl Publisher {
    /// A publisher of `shape` (see [`check`]).
    pub(crate) fn new(target: PublishTarget, shape: Shape) -> Self {
        Self {
            target: Arc::new(target),
            shape: Shape {
                connections: shape.connections.max(1),
                batch: shape.batch.max(1),
                pipeline: shape.pipeline.max(1),
                ..shape
            },
            next_seq: 0,
        }
    }

    /// Checks that the target accepts one message (sequence number included), so a wrong URL
    /// or token fails the run before anything is measured. With `--batch` over 1 the message
    /// goes as an array of one, so a server without array publishes fails here too.
    pub(crate) fn probe(&mut self) -> Result<()> {
        let url = &self.target.url;
        let array = self.shape.array();
        let mut conn =
            Conn::open(&self.target, array).context("cannot connect to the publish URL")?;
        let mut body = Batch::new(self.shape.size, self.target.wrap, 1, array);
        let mut out = Published::default();
        conn.write(&self.target, body.stamp(self.next_seq, sys::mono_ns()), 1)
            .and_then(|()| conn.collect(0, &mut out))
            .with_context(|| format!("publishing to {url} failed"))?;
        if let Some(cause) = out.errors.keys().next() {
            bail!("publishing to {url} failed: {cause}");
        }
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
    /// `duration`, or until `stop` is set; returns once every request written has its answer.
    fn schedule(
        &mut self,
        rate: f64,
        duration: Duration,
        limit: u64,
        stop: &AtomicBool,
    ) -> Published {
        let start = sys::mono_ns() + 1_000_000;
        let plan = Plan {
            target: &self.target,
            shape: self.shape,
            start,
            end: start + duration.as_nanos() as u64,
            interval: if rate > 0.0 { 1e9 / rate } else { 0.0 },
            limit,
            seq0: self.next_seq,
            next: AtomicU64::new(0),
            used: AtomicU64::new(0),
            stop,
        };
        let total = Mutex::new(Published::default());
        thread::scope(|s| {
            for _ in 0..self.shape.connections {
                s.spawn(|| {
                    let mine = plan.publish();
                    total.lock().unwrap_or_else(|e| e.into_inner()).add(&mine);
                });
            }
        });
        self.next_seq = plan.seq0 + plan.used.into_inner();
        let mut out = total.into_inner().unwrap_or_else(|e| e.into_inner());
        out.elapsed_s = (sys::mono_ns().min(plan.end).saturating_sub(start)) as f64 / 1e9;
        out
    }
}

/// One publishing run, shared by its connections' threads.
struct Plan<'a> {
    target: &'a PublishTarget,
    shape: Shape,
    /// When message 0 is due, mono ns.
    start: u64,
    /// No request is written from this time on, mono ns.
    end: u64,
    /// Nanoseconds between two messages' due times (0: as fast as answered).
    interval: f64,
    /// Messages to publish at most.
    limit: u64,
    /// The sequence number of message 0.
    seq0: u64,
    /// The next request to take, counted in requests.
    next: AtomicU64,
    /// One past the highest message index actually written: a request taken by a thread that
    /// then stops (time is up) holds no sequence numbers subscribers should expect.
    used: AtomicU64,
    /// Set on a signal: no further request is taken.
    stop: &'a AtomicBool,
}

impl Plan<'_> {
    /// One connection's share: takes the next request until time or messages run out, writes
    /// it when due with up to `--pipeline` requests in flight, and finally reads every answer
    /// still owed.
    fn publish(&self) -> Published {
        let mut out = Published::default();
        let (batch, array) = (self.shape.batch as u64, self.shape.array());
        let mut body = Batch::new(self.shape.size, self.target.wrap, self.shape.batch, array);
        let mut conn: Option<Conn> = None;
        loop {
            let first = self
                .next
                .fetch_add(1, Ordering::Relaxed)
                .saturating_mul(batch);
            if first >= self.limit || self.stop.load(Ordering::Relaxed) {
                break;
            }
            let count = batch.min(self.limit - first);
            let last = first + count - 1;
            // A request is due when its last message is.
            let due = self.start + (last as f64 * self.interval) as u64;
            let now = wait_until(due);
            if now >= self.end {
                break;
            }
            let stamp = if self.interval > 0.0 { due } else { now };
            self.used.fetch_max(last + 1, Ordering::Relaxed);
            if (count as usize) < body.len() {
                // The last request of a run may be short.
                body = Batch::new(self.shape.size, self.target.wrap, count as usize, array);
            }
            let c = match &mut conn {
                Some(c) => c,
                None => match Conn::open(self.target, array) {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        out.error(format!("connect: {e}"), 1);
                        continue;
                    }
                },
            };
            out.requests += 1;
            let written = c.write(self.target, body.stamp(self.seq0 + first, stamp), count);
            // Room for the next request: at most `pipeline - 1` left waiting for answers.
            let answered = written.and_then(|()| c.collect(self.shape.pipeline - 1, &mut out));
            if let Err(e) = answered {
                out.error(e.to_string(), c.in_flight.len() as u64);
                conn = None;
            }
        }
        if let Some(c) = &mut conn {
            if let Err(e) = c.collect(0, &mut out) {
                out.error(e.to_string(), c.in_flight.len() as u64);
            }
        }
        out
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

/// One publishing connection and the requests written on it that await their answer.
#[derive(Debug)]
struct Conn {
    link: Link,
    /// Messages in each request written and not yet answered, oldest first.
    in_flight: VecDeque<u64>,
}

/// How a connection carries requests.
enum Link {
    Http {
        stream: TcpStream,
        /// The request as last written: the head, then the body.
        request: Vec<u8>,
        head_len: usize,
        /// The body length the head's `Content-Length` gives.
        body_len: usize,
        rbuf: Vec<u8>,
        /// The body of the answer last read.
        answer: Vec<u8>,
        /// Our publish API: every answer must be 202.
        hub: bool,
        /// Requests are arrays: every answer must count their messages.
        array: bool,
    },
    /// A frame has no answer: written is sent.
    Ws {
        writer: Arc<Mutex<TcpStream>>,
        frame: Vec<u8>,
    },
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http { .. } => "Link::Http",
            Self::Ws { .. } => "Link::Ws",
        })
    }
}

impl Conn {
    /// Connects to `target`; `array`: the requests will be JSON arrays.
    fn open(target: &PublishTarget, array: bool) -> io::Result<Self> {
        let stream = TcpStream::connect(target.addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let link = if target.websocket {
            open_ws(stream, target)?
        } else {
            Link::Http {
                stream,
                request: Vec::new(),
                head_len: 0,
                body_len: 0,
                rbuf: Vec::with_capacity(16 * 1024),
                answer: Vec::new(),
                hub: target.wrap == Wrap::Hub,
                array,
            }
        };
        Ok(Self {
            link,
            in_flight: VecDeque::new(),
        })
    }

    /// Writes one request of `messages` messages without waiting for its answer.
    fn write(&mut self, target: &PublishTarget, body: &[u8], messages: u64) -> io::Result<()> {
        // Counted before the write: a request that fails half-written failed all the same.
        self.in_flight.push_back(messages);
        match &mut self.link {
            Link::Http {
                stream,
                request,
                head_len,
                body_len,
                ..
            } => {
                if request.is_empty() || *body_len != body.len() {
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
                    request.clear();
                    request.extend_from_slice(head.as_bytes());
                    *head_len = head.len();
                    *body_len = body.len();
                }
                request.truncate(*head_len);
                request.extend_from_slice(body);
                stream.write_all(request)
            }
            Link::Ws { writer, frame } => {
                frame.clear();
                client::encode_frame(opcode::TEXT, body, [0x5a, 0x17, 0x3c, 0x99], frame);
                writer
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write_all(frame)
            }
        }
    }

    /// Reads answers, in order, until at most `keep` requests are left waiting for theirs,
    /// then takes the answers already received in full (no further read). Each answer counts
    /// its request's messages as sent, or the request as failed with its cause. An error
    /// leaves the requests still in flight unanswered: the connection is done.
    fn collect(&mut self, keep: usize, out: &mut Published) -> io::Result<()> {
        let Link::Http {
            stream,
            rbuf,
            answer,
            hub,
            array,
            ..
        } = &mut self.link
        else {
            out.sent += self.in_flight.drain(..).sum::<u64>();
            return Ok(());
        };
        while let Some(&messages) = self.in_flight.front() {
            let code = if self.in_flight.len() > keep {
                read_answer(stream, rbuf, answer)?
            } else {
                match parse_answer(rbuf, answer)? {
                    Some(code) => code,
                    None => break,
                }
            };
            self.in_flight.pop_front();
            match check_answer(code, answer, messages, *hub, *array) {
                Ok(()) => out.sent += messages,
                Err(cause) => out.error(cause, 1),
            }
        }
        Ok(())
    }
}

/// What our publish API answers an array with.
#[derive(serde::Deserialize)]
struct BatchAnswer {
    count: u64,
}

/// Checks one answer to a request of `messages` messages: a 2xx status (202 from our publish
/// API), and for an array, the hub's count of the messages it took. The error is the cause.
fn check_answer(
    code: u16,
    body: &[u8],
    messages: u64,
    hub: bool,
    array: bool,
) -> Result<(), String> {
    let ok = if hub {
        code == 202
    } else {
        (200..300).contains(&code)
    };
    if !ok {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        return Err(if text.is_empty() || text.len() > 200 {
            format!("http {code}")
        } else {
            format!("http {code} {text}")
        });
    }
    if array {
        let count = serde_json::from_slice::<BatchAnswer>(body).map(|a| a.count);
        if count.as_ref().ok() != Some(&messages) {
            return Err(format!(
                "the answer to an array of {messages} messages counts {}",
                count.map_or("none".into(), |n| n.to_string())
            ));
        }
    }
    Ok(())
}

/// Reads one HTTP answer (Content-Length or chunked body) into `body`; returns its status.
fn read_answer(stream: &mut TcpStream, rbuf: &mut Vec<u8>, body: &mut Vec<u8>) -> io::Result<u16> {
    loop {
        if let Some(code) = parse_answer(rbuf, body)? {
            return Ok(code);
        }
        fill(stream, rbuf)?;
    }
}

/// Takes one answer off the front of `rbuf` if it is there in full: its body into `body`, and
/// its status. Answers to pipelined requests follow each other in `rbuf`.
fn parse_answer(rbuf: &mut Vec<u8>, body: &mut Vec<u8>) -> io::Result<Option<u16>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(rbuf) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(io::Error::other("malformed answer")),
    };
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
    let end = if chunked {
        match memchr::memmem::find(&rbuf[head..], b"0\r\n\r\n") {
            Some(at) => head + at + 5,
            None => return Ok(None),
        }
    } else if rbuf.len() - head >= length {
        head + length
    } else {
        return Ok(None);
    };
    body.clear();
    body.extend_from_slice(&rbuf[head..end]);
    rbuf.drain(..end);
    Ok(Some(code))
}

fn fill(stream: &mut TcpStream, rbuf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk)?;
    if n == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
    }
    rbuf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Upgrades `stream` and starts a thread that reads (and drops) what the server broadcasts
/// back to the publisher, answering pings.
fn open_ws(mut stream: TcpStream, target: &PublishTarget) -> io::Result<Link> {
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
        match client::parse_handshake_response(&buf, &key, false) {
            Ok(Some(up)) => break up.head_len,
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
    Ok(Link::Ws {
        writer,
        frame: Vec::new(),
    })
}

fn drain_ws(mut stream: TcpStream, mut buf: Vec<u8>, writer: Arc<Mutex<TcpStream>>) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let mut pos = 0;
        while let Ok(Some(head)) = client::parse_frame(&buf[pos..], usize::MAX, false) {
            let frame = &buf[pos..];
            if frame.len() < head.total_len() {
                break;
            }
            match head.opcode {
                opcode::PING => {
                    let mut pong = Vec::new();
                    let payload = &frame[head.header_len..head.total_len()];
                    client::encode_frame(opcode::PONG, payload, [1, 2, 3, 4], &mut pong);
                    let _ = writer
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .write_all(&pong);
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
pub(crate) fn check(target: &PublishTarget, shape: &Shape) -> Result<()> {
    if target.websocket && target.wrap == Wrap::Hub {
        bail!("--publish-format hub needs an http:// publish URL");
    }
    if shape.size > 16 << 20 {
        bail!("--size over 16 MiB");
    }
    if shape.batch == 0 {
        bail!("--batch must be at least 1 (messages per request)");
    }
    if shape.batch > 1 {
        if target.websocket {
            bail!(
                "--batch {} needs an http:// publish URL: a ws:// publisher sends one message per frame",
                shape.batch
            );
        }
        if target.wrap != Wrap::Hub {
            bail!(
                "--batch {} needs our publish API's format (--publish-format hub): a raw body is one message",
                shape.batch
            );
        }
        // `[m,m,…]`, without building it (the batch may be absurd).
        let one = crate::payload::Message::new(shape.size, target.wrap)
            .bytes()
            .len();
        let body = shape.batch.saturating_mul(one + 1).saturating_add(1);
        if body > HUB_MAX_BODY {
            bail!(
                "--batch {} of --size {} makes a {body}-byte request, over the hub's 1 MiB body limit",
                shape.batch,
                shape.size
            );
        }
    }
    if shape.pipeline == 0 || shape.pipeline > MAX_PIPELINE {
        bail!("--pipeline must be 1 to {MAX_PIPELINE} (requests in flight per connection)");
    }
    if shape.pipeline > 1 && target.websocket {
        bail!(
            "--pipeline {} needs an http:// publish URL: a ws:// publisher awaits no answers",
            shape.pipeline
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A stand-in for the hub's publish endpoint on one connection: reads `group` requests
    /// before it answers any (so a publisher that waits for each answer would stall), answers
    /// each with `answer(index, body)`, and returns the bodies it read.
    fn fake_hub(
        group: usize,
        answer: impl Fn(usize, &serde_json::Value) -> String + Send + 'static,
    ) -> (PublishTarget, thread::JoinHandle<Vec<serde_json::Value>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let (mut buf, mut bodies, mut owed) = (Vec::new(), Vec::new(), Vec::new());
            let mut chunk = [0u8; 65536];
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 16];
                let mut req = httparse::Request::new(&mut headers);
                if let Ok(httparse::Status::Complete(head)) = req.parse(&buf) {
                    let len: usize = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                        .unwrap();
                    if buf.len() >= head + len {
                        let body: serde_json::Value =
                            serde_json::from_slice(&buf[head..head + len]).unwrap();
                        buf.drain(..head + len);
                        owed.push(answer(bodies.len(), &body));
                        bodies.push(body);
                        if owed.len() == group {
                            for text in owed.drain(..) {
                                write!(s, "HTTP/1.1 {text}").unwrap();
                            }
                        }
                        continue;
                    }
                }
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return bodies,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
        let target = PublishTarget {
            url: format!("http://{addr}/api/monitoring/publish"),
            addr,
            host: addr.to_string(),
            path: "/api/monitoring/publish".into(),
            websocket: false,
            wrap: Wrap::Hub,
            headers: Vec::new(),
        };
        (target, server)
    }

    /// `202` with our publish API's answer to an array of `count` messages.
    fn accepted(count: usize) -> String {
        let body = format!(r#"{{"seq":1,"lastSeq":{count},"count":{count}}}"#);
        format!(
            "202 Accepted\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn shape(batch: usize, pipeline: usize) -> Shape {
        Shape {
            size: 64,
            connections: 1,
            batch,
            pipeline,
        }
    }

    #[test]
    fn pipelined_arrays_are_written_ahead_of_their_answers() {
        // Answers come only once 4 requests are in: the publisher must have written them.
        let (target, server) = fake_hub(4, |_, body| accepted(body.as_array().unwrap().len()));
        let mut publisher = Publisher::new(target, shape(10, 4));
        let out = publisher.send(75, &AtomicBool::new(false));
        // 8 requests: 7 arrays of 10 and a last one of 5.
        assert_eq!(
            (out.sent, out.requests, out.error_count()),
            (75, 8, 0),
            "{out:?}"
        );
        let bodies = server.join().unwrap();
        let seqs: Vec<u64> = bodies
            .iter()
            .flat_map(|b| b.as_array().unwrap().iter())
            .map(|m| m["data"]["lg"].as_u64().unwrap())
            .collect();
        assert_eq!(
            seqs,
            (0..75).collect::<Vec<_>>(),
            "every message stamped in order"
        );
        assert_eq!(bodies[7].as_array().unwrap().len(), 5);
    }

    #[test]
    fn every_answer_is_checked_in_order() {
        // The second answer is a refusal, the third miscounts its array.
        let (target, server) = fake_hub(2, |i, body| match i {
            1 => {
                let body = r#"{"error":"bad"}"#;
                format!(
                    "400 Bad Request\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
            2 => accepted(1),
            _ => accepted(body.as_array().unwrap().len()),
        });
        let mut publisher = Publisher::new(target, shape(3, 2));
        let out = publisher.send(12, &AtomicBool::new(false));
        assert_eq!((out.sent, out.requests), (6, 4), "{out:?}");
        assert_eq!(out.errors[r#"http 400 {"error":"bad"}"#], 1);
        assert_eq!(
            out.errors["the answer to an array of 3 messages counts 1"],
            1
        );
        assert_eq!(server.join().unwrap().len(), 4);
    }
}
