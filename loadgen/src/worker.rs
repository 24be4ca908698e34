//! One event loop per thread, owning its share of the connections: it opens them at a bounded
//! rate, upgrades them, reads frames in place from one receive buffer per thread, and counts
//! what arrives into a [`Window`] it hands over every 200 ms.
//!
//! Per delivery the loop does a substring search for the stamp, two integer parses, a histogram
//! record and a sequence check; it reads the clock once per `read`, not once per frame.
//!
//! With permessage-deflate, compressed messages are inflated by one [`Inflater`] per thread
//! (reset per message, its buffer reused) on every `--deflate-sample`th connection only, then
//! read like any other; on the other connections a compressed message is a delivery, unread.
//!
//! In a resume run the loop also follows the controller's [`Phase`]: it drops every connection
//! at once (remembering each one's last `seq` and `epoch`), then opens as many again, each with
//! `?since=&epoch=`, and counts what each one gets up to its `recovered` notice and after it.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flate2::Decompress;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::ClientConnection;
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};

use crate::client::{self, opcode, FrameHead};
use crate::deflate::{Agreed, Inflater};
use crate::opts::WsTarget;
use crate::payload::Scanner;
use crate::stats::Window;
use crate::{sys, tls};

/// Receive buffer per thread; grows only for a frame larger than it.
const READ_BUF: usize = 256 * 1024;
/// Reads of one socket per readiness event before other sockets get their turn.
const READS_PER_TURN: usize = 8;
/// Connections in the middle of connecting or upgrading, per thread.
const MAX_IN_FLIGHT: usize = 256;
/// How often the window is handed over.
const FLUSH_EVERY_NS: u64 = 200_000_000;
/// How often slow subscribers read.
const SLOW_TICK_NS: u64 = 100_000_000;

/// `next_seq` before a connection's first message: the first one sets where it starts.
const NO_SEQ: u64 = u64::MAX;

/// `last_metrics` once the retained snapshot has arrived but no tick yet.
const SNAPSHOT_SEEN: u64 = 1;

/// What the connections do once upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Stay connected and count what arrives (fanout, metrics, idle).
    Hold,
    /// Close at once and open the next one (churn).
    Churn,
    /// Stay connected, then drop and resume when the controller says so (resume).
    Resume,
}

/// Where a resume run stands; the controller orders each step and the threads acknowledge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Connected, each connection remembering the last `seq` and the `epoch` it saw.
    Holding = 0,
    /// Every connection dropped at once.
    Away = 1,
    /// As many connections opened again, each resuming where its predecessor stopped.
    Back = 2,
    /// Every reconnection has ended: its `recovered` notice came, or it failed (not ordered:
    /// a thread gets there by itself).
    Resumed = 3,
}

impl Phase {
    /// The phase stored as `n` (an unknown value is `Holding`).
    pub(crate) fn from_u8(n: u8) -> Self {
        match n {
            1 => Self::Away,
            2 => Self::Back,
            3 => Self::Resumed,
            _ => Self::Holding,
        }
    }
}

/// What one thread is asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Where to connect.
    pub(crate) target: Arc<WsTarget>,
    /// Connections to hold (Hold), or to open in all (Churn: unbounded when `usize::MAX`).
    pub(crate) connections: usize,
    /// The first `slow` of them read slowly.
    pub(crate) slow: usize,
    /// Bytes per second a slow connection reads.
    pub(crate) slow_read_rate: usize,
    /// Hold or churn.
    pub(crate) mode: Mode,
    /// New connections per second from this thread.
    pub(crate) connect_rate: f64,
    /// Resume: reconnections per second from this thread (0: as fast as it can).
    pub(crate) reconnect_rate: f64,
    /// Source addresses to bind, round robin (empty: the kernel's choice).
    pub(crate) source_addrs: Vec<IpAddr>,
    /// Where in `source_addrs` this thread starts.
    pub(crate) source_offset: usize,
    /// A text message sent once upgraded.
    pub(crate) subscribe_message: Option<Arc<[u8]>>,
    /// Give up on an upgrade (or a close handshake) after this long.
    pub(crate) handshake_timeout: Duration,
    /// Largest message accepted (inflated, if compressed).
    pub(crate) max_message: usize,
    /// With permessage-deflate (offered when `target.deflate`): every Nth connection inflates.
    pub(crate) deflate_sample: u32,
    /// Metrics mode: the tick interval in µs, the reference for jitter.
    pub(crate) metrics_interval_us: Option<u64>,
}

/// What a thread shares with the controller.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Upgraded connections currently open.
    pub(crate) open: AtomicUsize,
    /// Connections that failed before being upgraded.
    pub(crate) failed: AtomicUsize,
    /// Counts not yet taken by the controller.
    pub(crate) window: Mutex<Window>,
    /// The thread has finished.
    pub(crate) done: AtomicBool,
    /// Slow subscribers should read at full speed from now on (the run is draining).
    pub(crate) catch_up: AtomicBool,
    /// Resume: the [`Phase`] the controller asks for.
    pub(crate) order: AtomicU8,
    /// Resume: the [`Phase`] this thread has reached (its window flushed first).
    pub(crate) phase: AtomicU8,
}

/// Runs a thread's loop until `stop` is set (or, churning, until all connections were made).
pub(crate) fn run(plan: Plan, shared: Arc<Shared>, stop: Arc<AtomicBool>) -> io::Result<()> {
    let mut worker = Worker::new(plan, shared)?;
    let result = worker.run(&stop);
    worker.close_all();
    worker.flush();
    worker.shared.done.store(true, Ordering::Release);
    result
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Upgrading,
    Open,
    /// We sent a close and wait for the server's.
    Closing,
}

/// What a connection does with compressed messages.
#[derive(Debug)]
enum Inflation {
    /// permessage-deflate was not negotiated: RSV1 is a protocol error.
    Off,
    /// Not sampled: a compressed message is a delivery, unread.
    Opaque,
    /// Sampled, and the server compresses each message from a fresh window: the thread's
    /// inflater, reset per message.
    Fresh,
    /// Sampled, and the server keeps its context across messages: this connection's own
    /// decompressor (about 40 KiB once used).
    Own(Box<Decompress>),
}

impl Inflation {
    /// Compressed messages are inflated and read.
    fn inflates(&self) -> bool {
        matches!(self, Self::Fresh | Self::Own(_))
    }
}

/// A fragmented message being put together.
#[derive(Debug)]
struct Partial {
    /// The payloads so far (compressed, if so); empty when the message is not to be read.
    data: Vec<u8>,
    /// Payload bytes on the wire so far.
    wire: usize,
    /// Its first frame had RSV1.
    compressed: bool,
}

#[derive(Debug)]
struct Conn {
    sock: TcpStream,
    /// `wss://`: the connection's TLS state (`None`: plain, read and written directly).
    tls: Option<Box<ClientConnection>>,
    id: u64,
    state: State,
    slow: bool,
    /// Inflates compressed messages if permessage-deflate is negotiated (`--deflate-sample`).
    sampled: bool,
    /// What permessage-deflate the upgrade agreed to, and how this connection reads it.
    deflate: Inflation,
    /// The peer's FIN (or an error) was reported. Events are edge-triggered: a read that
    /// returns less than asked stops reading, so without this flag an end that arrived with the
    /// last data (or while a slow reader was not reading) would never be read.
    read_closed: bool,
    /// Connect time (mono ns), for the handshake latency.
    started: u64,
    key: Box<str>,
    /// Bytes of an incomplete head or frame, kept between reads.
    leftover: Vec<u8>,
    /// Bytes not yet written.
    out: Vec<u8>,
    /// A fragmented message being put together.
    fragments: Option<Box<Partial>>,
    /// The sequence number expected next (gaps are counted against it).
    next_seq: u64,
    /// Arrival (Unix µs) of the last metrics tick; 0 before the snapshot, then
    /// [`SNAPSHOT_SEEN`] until the first tick.
    last_metrics: u64,
    /// Resume runs only: where this connection stands in the stream.
    resume: Option<Box<ResumeConn>>,
}

/// What a connection of a resume run knows of the stream.
#[derive(Debug, Default)]
struct ResumeConn {
    /// A reconnection that has not had its `recovered` notice yet.
    replaying: bool,
    /// Received `recovered` (the frames since are live).
    live: bool,
    /// The highest envelope `seq` received (before the drop: the next `since`; while
    /// replaying: `since`, then the highest replayed one, `metrics` snapshots aside).
    seq: Option<u64>,
    /// The stream's `epoch`, from the frames.
    epoch: Option<u64>,
    /// Loadgen messages received before `recovered`.
    messages: u64,
    /// Replayed frames whose `seq` was not above the one before (duplicates if the resume
    /// recovered; a `recovered: false` legitimately sends older state first).
    suspect: u64,
}

/// What a dropped connection hands its successor: the `since` and `epoch` to resume with.
#[derive(Debug, Clone, Copy)]
struct Returning {
    since: Option<u64>,
    epoch: Option<u64>,
}

struct Worker {
    plan: Plan,
    shared: Arc<Shared>,
    poll: Poll,
    conns: Slab<Conn>,
    rbuf: Vec<u8>,
    scanner: Scanner,
    /// With --deflate (taken out while a message is inflated and read).
    inflater: Option<Inflater>,
    /// Record each data message's size on the wire (metrics runs, --deflate).
    sizes: bool,
    window: Window,
    /// Connections started so far (in this phase).
    started: usize,
    /// Connections to start in this phase.
    quota: usize,
    /// New connections per second in this phase.
    rate: f64,
    /// Resume: the phase reached.
    phase: Phase,
    /// Resume: one entry per connection dropped, for its reconnection.
    returning: Vec<Returning>,
    /// Resume: reconnections that ended (answered `recovered`, or failed).
    ended: usize,
    in_flight: usize,
    next_id: u64,
    /// (deadline, token, id) of connections upgrading or closing, in deadline order.
    deadlines: VecDeque<(u64, usize, u64)>,
    /// Sockets that still had data after their turn.
    again: Vec<usize>,
    slow_tokens: Vec<usize>,
    /// Reused for control frames.
    scratch: Vec<u8>,
    start: u64,
    last_flush: u64,
    last_slow: u64,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("conns", &self.conns.len())
            .finish()
    }
}

impl Worker {
    fn new(plan: Plan, shared: Arc<Shared>) -> io::Result<Self> {
        let now = sys::mono_ns();
        let (quota, rate) = (plan.connections, plan.connect_rate);
        let deflate = plan.target.deflate;
        Ok(Self {
            inflater: deflate.then(|| Inflater::new(plan.max_message)),
            sizes: deflate || plan.metrics_interval_us.is_some(),
            plan,
            shared,
            poll: Poll::new()?,
            conns: Slab::new(),
            rbuf: vec![0; READ_BUF],
            scanner: Scanner::default(),
            window: Window::default(),
            started: 0,
            quota,
            rate,
            phase: Phase::Holding,
            returning: Vec::new(),
            ended: 0,
            in_flight: 0,
            next_id: 0,
            deadlines: VecDeque::new(),
            again: Vec::new(),
            slow_tokens: Vec::new(),
            scratch: Vec::new(),
            start: now,
            last_flush: now,
            last_slow: now,
        })
    }

    fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let now = sys::mono_ns();
            if self.plan.mode == Mode::Resume {
                self.follow_order(now);
                self.check_resumed(now);
            }
            self.open_more(now);
            if self.plan.mode == Mode::Churn && self.started >= self.quota && self.conns.is_empty()
            {
                return Ok(());
            }
            let timeout = if !self.again.is_empty() {
                Duration::ZERO
            } else if self.started < self.quota || !self.slow_tokens.is_empty() {
                Duration::from_millis(5)
            } else {
                Duration::from_millis(50)
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = sys::mono_ns();
            for again in std::mem::take(&mut self.again) {
                self.on_readable(again, now);
            }
            for ev in events.iter() {
                let token = ev.token().0;
                if ev.is_writable() || ev.is_error() {
                    self.on_writable(token, now);
                }
                if ev.is_read_closed() || ev.is_error() {
                    if let Some(conn) = self.conns.get_mut(token) {
                        conn.read_closed = true;
                    }
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(token, now);
                }
            }
            self.expire(now);
            if !self.slow_tokens.is_empty() && self.shared.catch_up.load(Ordering::Relaxed) {
                self.stop_being_slow();
            }
            if now - self.last_slow >= SLOW_TICK_NS {
                self.read_slow(now);
            }
            if now - self.last_flush >= FLUSH_EVERY_NS {
                self.flush();
                self.last_flush = now;
            }
        }
    }

    /// Starts connections up to the paced count and the in-flight cap.
    fn open_more(&mut self, now: u64) {
        let elapsed = (now - self.start) as f64 / 1e9;
        let paced = if self.rate > 0.0 {
            (elapsed * self.rate) as usize + 1
        } else {
            usize::MAX
        };
        let target = paced.min(self.quota);
        while self.started < target && self.in_flight < MAX_IN_FLIGHT {
            let slow = self.plan.mode == Mode::Hold && self.started < self.plan.slow;
            let resume = self.resume_state(self.started);
            let sampled = self.started % self.plan.deflate_sample.max(1) as usize == 0;
            self.started += 1;
            if let Err(e) = self.connect(slow, sampled, resume, now) {
                if self.phase == Phase::Back {
                    self.window.resume_mut().unanswered += 1;
                    self.ended += 1;
                }
                self.window.error(cause(&e));
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// What the `i`th connection of this phase starts with in a resume run: nothing known yet
    /// before the drop, its predecessor's `since` and `epoch` after it.
    fn resume_state(&self, i: usize) -> Option<Box<ResumeConn>> {
        if self.plan.mode != Mode::Resume {
            return None;
        }
        let mut state = ResumeConn::default();
        if self.phase == Phase::Back {
            let from = self.returning.get(i).copied()?;
            state.replaying = true;
            state.seq = Some(from.since.unwrap_or(0));
            state.epoch = from.epoch;
        }
        Some(Box::new(state))
    }

    fn connect(
        &mut self,
        slow: bool,
        sampled: bool,
        resume: Option<Box<ResumeConn>>,
        now: u64,
    ) -> io::Result<()> {
        let addr = self.plan.target.addr;
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        socket.set_nodelay(true)?;
        if slow {
            socket.set_recv_buffer_size(4096)?;
        }
        if !self.plan.source_addrs.is_empty() {
            let n = self.plan.source_addrs.len();
            let src = self.plan.source_addrs[(self.plan.source_offset + self.started) % n];
            bind_no_port(&socket, src)?;
        }
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let tls = match &self.plan.target.tls {
            Some(client) => Some(Box::new(client.connection()?)),
            None => None,
        };
        let mut sock = TcpStream::from_std(socket.into());
        let entry = self.conns.vacant_entry();
        let token = entry.key();
        self.poll.registry().register(
            &mut sock,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.next_id += 1;
        entry.insert(Conn {
            sock,
            tls,
            id: self.next_id,
            state: State::Connecting,
            slow,
            sampled,
            deflate: Inflation::Off,
            read_closed: false,
            started: now,
            key: client::new_key().into_boxed_str(),
            leftover: Vec::new(),
            out: Vec::new(),
            fragments: None,
            next_seq: NO_SEQ,
            last_metrics: 0,
            resume,
        });
        if slow {
            self.slow_tokens.push(token);
        }
        self.in_flight += 1;
        let deadline = now + self.plan.handshake_timeout.as_nanos() as u64;
        self.deadlines.push_back((deadline, token, self.next_id));
        Ok(())
    }

    fn on_writable(&mut self, token: usize, now: u64) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        if conn.state == State::Connecting {
            match conn.sock.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.fail(token, cause(&e)),
            }
            match conn.sock.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.fail(token, cause(&e)),
            }
            conn.state = State::Upgrading;
            let target = &self.plan.target;
            let path = match conn.resume.as_deref() {
                Some(r) if r.replaying => Cow::Owned(client::resume_path(
                    &target.path,
                    r.seq.unwrap_or(0),
                    r.epoch,
                )),
                _ => Cow::Borrowed(target.path.as_str()),
            };
            let req = client::handshake_request(&target.host, &path, &conn.key, &target.headers);
            conn.out.extend_from_slice(&req);
            let _ = now;
        }
        if let Err(e) = flush_out(conn) {
            self.lose(token, cause(&e));
        }
    }

    fn on_readable(&mut self, token: usize, now: u64) {
        let slow = match self.conns.get(token) {
            Some(c) => c.slow && c.state == State::Open,
            None => return,
        };
        if slow {
            return; // read on the slow tick
        }
        for _ in 0..READS_PER_TURN {
            match self.read_once(token, usize::MAX, now) {
                Ok(true) => {}
                Ok(false) => return,
                Err(cause) => return self.lose(token, cause),
            }
        }
        self.again.push(token);
    }

    /// One `read` of at most `limit` bytes, and the frames it completes. `Ok(false)` when the
    /// socket had nothing more.
    fn read_once(&mut self, token: usize, limit: usize, now: u64) -> Result<bool, String> {
        let Some(conn) = self.conns.get_mut(token) else {
            return Ok(false);
        };
        let left = conn.leftover.len();
        if left + 4096 > self.rbuf.len() {
            self.rbuf.resize(left * 2 + 4096, 0);
        }
        self.rbuf[..left].copy_from_slice(&conn.leftover);
        let end = self.rbuf.len().min(left.saturating_add(limit));
        // Once the end was reported, every read is "full": reading goes on until it returns 0.
        let read_closed = conn.read_closed;
        // TLS: rustls reads ciphertext in slices of at most 4 KiB, and one record's plaintext
        // may be short of the buffer while the socket holds more: read again until it blocks.
        let (read, more) = match conn.tls.as_deref_mut() {
            None => (conn.sock.read(&mut self.rbuf[left..end]), read_closed),
            Some(tls) => (
                tls::read(tls, &mut conn.sock, &mut self.rbuf[left..end]),
                true,
            ),
        };
        let n = match read {
            Ok(0) => {
                return Err(if conn.state == State::Closing {
                    String::new()
                } else {
                    "eof".into()
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
            Err(e) => return Err(cause(&e)),
        };
        let mut data = std::mem::take(&mut self.rbuf);
        let result = self.process(token, &data[..left + n], now);
        let outcome = match result {
            Ok(used) => {
                if let Some(conn) = self.conns.get_mut(token) {
                    conn.leftover.clear();
                    conn.leftover.extend_from_slice(&data[used..left + n]);
                    if conn.leftover.capacity() > 64 * 1024 && conn.leftover.len() < 1024 {
                        conn.leftover.shrink_to(1024);
                    }
                }
                Ok(n == end - left || more)
            }
            Err(e) => Err(e),
        };
        std::mem::swap(&mut self.rbuf, &mut data);
        outcome
    }

    /// Handles the complete heads and frames at the start of `data`; returns the bytes used.
    fn process(&mut self, token: usize, data: &[u8], now: u64) -> Result<usize, String> {
        let mut pos = 0;
        let conn = &mut self.conns[token];
        if conn.state == State::Upgrading {
            let offered = self.plan.target.deflate;
            let agreed = match client::parse_handshake_response(data, &conn.key, offered) {
                Ok(None) => return Ok(0),
                Ok(Some(up)) => {
                    pos = up.head_len;
                    up.deflate
                }
                Err(e) => {
                    self.fail(token, e.to_string());
                    return Ok(data.len());
                }
            };
            self.upgraded(token, agreed, now);
        }
        let rsv1 = match self.conns.get(token) {
            Some(c) => !matches!(c.deflate, Inflation::Off),
            None => return Ok(data.len()),
        };
        let unix = if self.plan.metrics_interval_us.is_some() {
            sys::unix_us()
        } else {
            0
        };
        while pos < data.len() {
            let head = match client::parse_frame(&data[pos..], self.plan.max_message, rsv1) {
                Ok(Some(h)) if pos + h.total_len() <= data.len() => h,
                Ok(_) => break,
                Err(e) => return Err(e.to_string()),
            };
            let payload = &data[pos + head.header_len..pos + head.total_len()];
            pos += head.total_len();
            self.window.bytes += payload.len() as u64;
            if !self.frame(token, head, payload, now, unix)? {
                return Ok(data.len());
            }
        }
        Ok(pos)
    }

    fn upgraded(&mut self, token: usize, agreed: Option<Agreed>, now: u64) {
        let conn = &mut self.conns[token];
        conn.state = State::Open;
        conn.key = Box::from("");
        if let Some(agreed) = agreed {
            conn.deflate = match (conn.sampled, agreed.server_no_context_takeover) {
                (false, _) => Inflation::Opaque,
                (true, true) => Inflation::Fresh,
                (true, false) => Inflation::Own(Box::new(Inflater::context())),
            };
            let d = &mut self.window.deflate;
            d.upgrades += 1;
            d.sampled += u64::from(conn.deflate.inflates());
        }
        if let Some(tls) = conn.tls.as_deref() {
            let (resumed, params) = tls::describe(tls);
            self.window.tls_mut().count(resumed, params);
        }
        self.in_flight -= 1;
        self.window.handshakes += 1;
        let _ = self
            .window
            .handshake
            .record(((now - conn.started) / 1000).max(1));
        self.shared.open.fetch_add(1, Ordering::Relaxed);
        if let Some(msg) = &self.plan.subscribe_message {
            client::encode_frame(opcode::TEXT, msg, mask(conn.id), &mut conn.out);
        }
        if self.plan.mode == Mode::Churn {
            client::encode_frame(
                opcode::CLOSE,
                &1000u16.to_be_bytes(),
                mask(conn.id),
                &mut conn.out,
            );
            conn.state = State::Closing;
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
            let deadline = now + self.plan.handshake_timeout.as_nanos() as u64;
            self.deadlines.push_back((deadline, token, conn.id));
        }
        if let Err(e) = flush_out(conn) {
            self.lose(token, cause(&e));
        }
    }

    /// One frame; `Ok(false)` when the connection is gone.
    fn frame(
        &mut self,
        token: usize,
        head: FrameHead,
        payload: &[u8],
        now: u64,
        unix: u64,
    ) -> Result<bool, String> {
        match head.opcode {
            opcode::TEXT | opcode::BINARY if head.fin => {
                self.complete(token, payload, payload.len(), head.compressed, now, unix)?
            }
            opcode::TEXT | opcode::BINARY => {
                let conn = &mut self.conns[token];
                // A compressed message this connection does not read is only counted.
                let keep = !head.compressed || conn.deflate.inflates();
                conn.fragments = Some(Box::new(Partial {
                    data: if keep { payload.to_vec() } else { Vec::new() },
                    wire: payload.len(),
                    compressed: head.compressed,
                }));
            }
            opcode::CONTINUATION => {
                let conn = &mut self.conns[token];
                let Some(mut part) = conn.fragments.take() else {
                    return Err("continuation without a start".into());
                };
                part.wire += payload.len();
                if part.wire > self.plan.max_message {
                    return Err("message over the size limit".into());
                }
                if !part.compressed || conn.deflate.inflates() {
                    part.data.extend_from_slice(payload);
                }
                if head.fin {
                    self.complete(token, &part.data, part.wire, part.compressed, now, unix)?;
                } else {
                    self.conns[token].fragments = Some(part);
                }
            }
            opcode::PING => {
                let conn = &mut self.conns[token];
                client::encode_frame(opcode::PONG, payload, mask(conn.id), &mut conn.out);
                if let Err(e) = flush_out(conn) {
                    return Err(cause(&e));
                }
            }
            opcode::PONG => {}
            opcode::CLOSE => {
                let conn = &mut self.conns[token];
                if conn.state == State::Closing {
                    self.remove(token);
                } else {
                    let code = client::close_code(payload);
                    self.scratch.clear();
                    client::encode_frame(
                        opcode::CLOSE,
                        &payload[..payload.len().min(2)],
                        mask(conn.id),
                        &mut self.scratch,
                    );
                    write_last(conn, &self.scratch);
                    self.lose(token, format!("closed {code}"));
                }
                return Ok(false);
            }
            other => return Err(format!("unknown opcode {other}")),
        }
        Ok(true)
    }

    /// A whole data message, `wire` bytes on the wire; `msg` is what came (compressed, if
    /// `compressed`; empty if compressed and not to be read).
    fn complete(
        &mut self,
        token: usize,
        msg: &[u8],
        wire: usize,
        compressed: bool,
        now: u64,
        unix: u64,
    ) -> Result<(), String> {
        if self.sizes {
            let _ = self.window.wire_size.record(wire.max(1) as u64);
        }
        if !compressed {
            self.message(token, msg, now, unix);
            return Ok(());
        }
        self.window.deflate.compressed += 1;
        if !self.conns[token].deflate.inflates() {
            self.opaque(token);
            return Ok(());
        }
        let Some(mut inflater) = self.inflater.take() else {
            return Err("compressed message without an inflater".into());
        };
        let inflated = match &mut self.conns[token].deflate {
            Inflation::Own(d) => inflater.inflate_with(d, msg),
            _ => inflater.inflate(msg),
        };
        let outcome = match inflated {
            Ok(payload) => {
                let d = &mut self.window.deflate;
                d.inflated += 1;
                d.inflated_wire_bytes += msg.len() as u64;
                d.inflated_bytes += payload.len() as u64;
                self.message(token, payload, now, unix);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        self.inflater = Some(inflater);
        outcome
    }

    /// A compressed message on a connection that does not inflate: a delivery, unread. In a
    /// metrics run a connection's first message is the retained snapshot, not a tick, as on
    /// the connections that read it.
    fn opaque(&mut self, token: usize) {
        let w = &mut self.window;
        let conn = &mut self.conns[token];
        if self.plan.metrics_interval_us.is_some() && conn.last_metrics == 0 {
            conn.last_metrics = SNAPSHOT_SEEN;
            w.other_frames += 1;
            return;
        }
        w.deflate.opaque += 1;
        w.deliveries += 1;
        // What was not read leaves no reference: the next message read (a plain one, under
        // the server's threshold) starts its interval and its sequence afresh rather than
        // counting the skipped ones as jitter or gaps.
        if conn.last_metrics != 0 {
            conn.last_metrics = SNAPSHOT_SEEN;
        }
        conn.next_seq = NO_SEQ;
    }

    fn message(&mut self, token: usize, payload: &[u8], now: u64, unix: u64) {
        if self.plan.mode == Mode::Resume {
            return self.resume_message(token, payload, now);
        }
        let w = &mut self.window;
        if let Some((seq, t)) = self.scanner.stamp(payload) {
            w.deliveries += 1;
            let _ = w.latency.record((now.saturating_sub(t) / 1000).max(1));
            let conn = &mut self.conns[token];
            if conn.next_seq == NO_SEQ {
                conn.next_seq = seq + 1;
            } else if seq >= conn.next_seq {
                w.gaps += (seq - conn.next_seq) as i64;
                conn.next_seq = seq + 1;
            } else {
                // Late, behind a later one: it fills a gap counted before.
                w.reordered += 1;
                w.gaps -= 1;
            }
        } else if let Some(dropped) = self.scanner.lagged(payload) {
            w.lagged += 1;
            w.lagged_dropped += dropped;
        } else if let (Some(nominal), Some((seq, ts))) =
            (self.plan.metrics_interval_us, self.scanner.metrics(payload))
        {
            let _ = w.frame_size.record(payload.len().max(1) as u64);
            let conn = &mut self.conns[token];
            // The first metrics frame of a connection is the retained snapshot, not a tick; the
            // first tick after it has no interval to compare yet.
            match conn.last_metrics {
                0 => w.other_frames += 1,
                last => {
                    let _ = w.latency.record(unix.saturating_sub(ts).max(1));
                    if last != SNAPSHOT_SEEN {
                        let interval = unix.saturating_sub(last);
                        let _ = w.jitter.record(interval.abs_diff(nominal).max(1));
                    }
                    let e = w.ticks.entry(seq).or_insert((ts, unix));
                    e.1 = e.1.max(unix);
                    w.deliveries += 1;
                }
            }
            conn.last_metrics = if conn.last_metrics == 0 {
                SNAPSHOT_SEEN
            } else {
                unix
            };
        } else {
            w.other_frames += 1;
        }
    }

    /// A message on a connection of a resume run: before the drop it only moves the `seq` to
    /// resume from; after the reconnection it is replayed (up to `recovered`) or live.
    fn resume_message(&mut self, token: usize, payload: &[u8], now: u64) {
        let w = &mut self.window;
        let sc = &self.scanner;
        let conn = &mut self.conns[token];
        let Some(r) = conn.resume.as_deref_mut() else {
            return;
        };
        if let Some(epoch) = sc.epoch(payload) {
            r.epoch = Some(epoch);
        }
        if r.replaying {
            if let Some((recovered, replayed)) = sc.recovered(payload) {
                r.replaying = false;
                r.live = true;
                self.ended += 1;
                let waited_us = now.saturating_sub(conn.started) / 1000;
                let rw = w.resume_mut();
                rw.notice(recovered, replayed, r.messages, waited_us);
                rw.last_ns = rw.last_ns.max(now);
                if recovered {
                    rw.duplicates += r.suspect;
                } else {
                    // The client's view is stale (a new epoch may even restart the seqs):
                    // the first live frame sets where it stands.
                    r.seq = None;
                }
                w.other_frames += 1;
                return;
            }
        }
        if let Some(dropped) = sc.lagged(payload) {
            w.lagged += 1;
            w.lagged_dropped += dropped;
            return;
        }
        let seq = sc.envelope_seq(payload);
        if r.replaying {
            // The snapshot sent on every connect is state, not history: its seq proves nothing.
            if crate::payload::kind(payload) != Some(b"metrics") {
                if let Some(seq) = seq {
                    if r.seq.is_some_and(|s| seq <= s) {
                        r.suspect += 1;
                    } else {
                        r.seq = Some(seq);
                    }
                }
            }
            match sc.stamp(payload) {
                Some(_) => r.messages += 1,
                None => w.other_frames += 1,
            }
            return;
        }
        if let Some(seq) = seq {
            match r.seq {
                Some(s) if r.live && seq <= s => w.resume_mut().duplicates += 1,
                _ => r.seq = Some(r.seq.map_or(seq, |s| s.max(seq))),
            }
        }
        match sc.stamp(payload) {
            Some((_, t)) => {
                w.deliveries += 1;
                let _ = w.latency.record((now.saturating_sub(t) / 1000).max(1));
            }
            None => w.other_frames += 1,
        }
    }

    /// Resume: takes the step the controller ordered, then says so, its window flushed first
    /// so that the controller's next harvest holds what the step counted.
    fn follow_order(&mut self, now: u64) {
        let order = Phase::from_u8(self.shared.order.load(Ordering::Acquire));
        if order <= self.phase {
            return;
        }
        if self.phase == Phase::Holding {
            self.go_away();
        }
        if order == Phase::Back {
            self.come_back(now);
        }
        self.phase = order;
        self.flush();
        self.last_flush = now;
        self.shared.phase.store(order as u8, Ordering::Release);
    }

    /// Resume: says so (window flushed first) once every reconnection of this thread ended.
    fn check_resumed(&mut self, now: u64) {
        if self.phase == Phase::Back && self.started >= self.quota && self.ended >= self.quota {
            self.phase = Phase::Resumed;
            self.flush();
            self.last_flush = now;
            self.shared
                .phase
                .store(Phase::Resumed as u8, Ordering::Release);
        }
    }

    /// Drops every connection at once; each open one leaves its `since` and `epoch` behind.
    fn go_away(&mut self) {
        for (_, conn) in &self.conns {
            if let (State::Open, Some(r)) = (conn.state, conn.resume.as_deref()) {
                self.returning.push(Returning {
                    since: r.seq,
                    epoch: r.epoch,
                });
            }
        }
        self.window.resume_mut().away += self.returning.len() as u64;
        self.close_all();
        self.quota = 0;
        self.started = 0;
    }

    /// Reconnects one connection per dropped one, at the reconnect rate.
    fn come_back(&mut self, now: u64) {
        self.quota = self.returning.len();
        self.started = 0;
        self.rate = self.plan.reconnect_rate;
        self.start = now;
    }

    fn read_slow(&mut self, now: u64) {
        let budget = (self.plan.slow_read_rate as u64 * (now - self.last_slow) / 1_000_000_000)
            .max(1) as usize;
        self.last_slow = now;
        for i in 0..self.slow_tokens.len() {
            let token = self.slow_tokens[i];
            match self.conns.get(token) {
                Some(c) if c.state == State::Open && c.slow => {}
                _ => continue,
            }
            if let Err(cause) = self.read_once(token, budget, now) {
                self.lose(token, cause);
            }
        }
        self.slow_tokens
            .retain(|t| self.conns.get(*t).is_some_and(|c| c.slow));
    }

    /// Lets slow subscribers read everything still queued for them, `lagged` notices included.
    fn stop_being_slow(&mut self) {
        for token in std::mem::take(&mut self.slow_tokens) {
            if let Some(conn) = self.conns.get_mut(token) {
                conn.slow = false;
                self.again.push(token);
            }
        }
    }

    /// Drops connections whose upgrade or close took longer than the timeout.
    fn expire(&mut self, now: u64) {
        while let Some(&(deadline, token, id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            match self.conns.get(token) {
                Some(c)
                    if c.id == id && matches!(c.state, State::Connecting | State::Upgrading) =>
                {
                    self.fail(token, "handshake timeout".into())
                }
                Some(c) if c.id == id && c.state == State::Closing => {
                    self.window.error("close timeout");
                    self.remove(token);
                }
                _ => {}
            }
        }
    }

    /// A connection that failed before its upgrade.
    fn fail(&mut self, token: usize, cause: String) {
        if self.conns.contains(token) {
            self.window.error(cause);
            self.shared.failed.fetch_add(1, Ordering::Relaxed);
            self.remove(token);
        }
    }

    /// A connection lost or refused at any stage; an empty cause is a clean end.
    fn lose(&mut self, token: usize, cause: String) {
        let Some(conn) = self.conns.get(token) else {
            return;
        };
        if matches!(conn.state, State::Connecting | State::Upgrading) {
            let cause = if cause.is_empty() {
                "eof".into()
            } else {
                cause
            };
            return self.fail(token, cause);
        }
        if !cause.is_empty() && conn.state != State::Closing {
            self.window.error(cause);
        }
        self.remove(token);
    }

    fn remove(&mut self, token: usize) {
        if !self.conns.contains(token) {
            return;
        }
        let mut conn = self.conns.remove(token);
        let _ = self.poll.registry().deregister(&mut conn.sock);
        if conn.resume.as_deref().is_some_and(|r| r.replaying) {
            self.window.resume_mut().unanswered += 1;
            self.ended += 1;
        }
        match conn.state {
            State::Open => {
                self.shared.open.fetch_sub(1, Ordering::Relaxed);
            }
            State::Connecting | State::Upgrading => self.in_flight -= 1,
            State::Closing => {}
        }
    }

    /// At the end: a close frame to every open connection, then the sockets are dropped.
    fn close_all(&mut self) {
        let tokens: Vec<usize> = self.conns.iter().map(|(t, _)| t).collect();
        for token in tokens {
            let conn = &mut self.conns[token];
            if conn.state == State::Open {
                self.scratch.clear();
                client::encode_frame(
                    opcode::CLOSE,
                    &1000u16.to_be_bytes(),
                    mask(conn.id),
                    &mut self.scratch,
                );
                write_last(conn, &self.scratch);
            }
            self.remove(token);
        }
    }

    fn flush(&mut self) {
        let mut shared = self.shared.window.lock().expect("window lock");
        shared.add(&self.window);
        drop(shared);
        self.window.reset();
    }
}

/// Writes what is pending; the rest waits for the next writable event.
fn flush_out(conn: &mut Conn) -> io::Result<()> {
    if let Some(tls) = conn.tls.as_deref_mut() {
        tls::flush(tls, &mut conn.sock, &mut conn.out)?;
        if conn.out.capacity() > 4096 && conn.out.is_empty() {
            conn.out = Vec::new();
        }
        return Ok(());
    }
    while !conn.out.is_empty() {
        match conn.sock.write(&conn.out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                conn.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if conn.out.capacity() > 4096 {
        conn.out = Vec::new();
    }
    Ok(())
}

/// Writes a last frame (a close) if the socket takes it now, then, over TLS, `close_notify`.
fn write_last(conn: &mut Conn, frame: &[u8]) {
    match conn.tls.as_deref_mut() {
        None => {
            let _ = conn.sock.write(frame);
        }
        Some(tls) => tls::write_last(tls, &mut conn.sock, frame),
    }
}

/// Binds a source address and lets the kernel pick the port at connect time, so one source
/// address serves up to ~28,000 connections per destination rather than in all.
fn bind_no_port(socket: &Socket, src: IpAddr) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a pointer to a live c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.bind(&SocketAddr::new(src, 0).into())
}

/// A mask for a connection's frames (any value is valid; it need not be secret here).
fn mask(id: u64) -> [u8; 4] {
    ((id as u32).wrapping_mul(0x9E37_79B9) | 1).to_ne_bytes()
}

/// The name a failure is counted under.
pub(crate) fn cause(e: &io::Error) -> String {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "refused".into(),
        ConnectionReset => "reset".into(),
        ConnectionAborted => "aborted".into(),
        TimedOut => "timeout".into(),
        BrokenPipe => "broken pipe".into(),
        AddrNotAvailable => "no source port".into(),
        _ => match e.raw_os_error() {
            Some(libc::EMFILE) | Some(libc::ENFILE) => "too many open files".into(),
            _ => e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::deflate::tests::{compress, compressor};
    use crate::payload::{Message, Wrap};

    /// The sample key of RFC 6455 §1.3 and its accept value.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    /// A worker whose connections (see [`conn`]) offered permessage-deflate when `deflate`,
    /// every `sample`th inflating, reading messages of at most `max` bytes.
    fn worker(deflate: bool, sample: u32, max: usize) -> (Worker, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let target = WsTarget {
            url: format!("ws://{addr}/ws"),
            addr,
            host: addr.to_string(),
            path: "/ws".into(),
            headers: Vec::new(),
            deflate,
            tls: None,
        };
        let plan = Plan {
            target: Arc::new(target),
            connections: 0,
            slow: 0,
            slow_read_rate: 0,
            mode: Mode::Hold,
            connect_rate: 0.0,
            reconnect_rate: 0.0,
            source_addrs: Vec::new(),
            source_offset: 0,
            subscribe_message: None,
            handshake_timeout: Duration::from_secs(1),
            max_message: max,
            metrics_interval_us: None,
            deflate_sample: sample,
        };
        let w = Worker::new(plan, Arc::new(Shared::default())).unwrap();
        (w, listener)
    }

    /// A connection of `w` waiting for the answer to its upgrade (sent with [`KEY`]).
    fn conn(w: &mut Worker, sampled: bool) -> usize {
        let addr = w.plan.target.addr;
        let sock = TcpStream::from_std(std::net::TcpStream::connect(addr).unwrap());
        w.in_flight += 1;
        w.conns.insert(Conn {
            sock,
            tls: None,
            id: 1,
            state: State::Upgrading,
            slow: false,
            sampled,
            deflate: Inflation::Off,
            read_closed: false,
            started: 0,
            key: KEY.into(),
            leftover: Vec::new(),
            out: Vec::new(),
            fragments: None,
            next_seq: NO_SEQ,
            last_metrics: 0,
            resume: None,
        })
    }

    /// The server's 101, accepting permessage-deflate with `params` (none: not accepting it).
    fn answer(params: Option<&str>) -> Vec<u8> {
        let ext = params.map_or(String::new(), |p| {
            format!("Sec-WebSocket-Extensions: permessage-deflate{p}\r\n")
        });
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\n{ext}\r\n"
        )
        .into_bytes()
    }

    const HUB: Option<&str> = Some("; server_no_context_takeover; client_no_context_takeover");

    /// An unmasked server frame: `b0` is FIN, RSV and opcode.
    fn frame(b0: u8, payload: &[u8], out: &mut Vec<u8>) {
        out.push(b0);
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
    }

    /// A stamped loadgen message of `size` bytes, sent at 1 s.
    fn stamped(seq: u64, size: usize) -> Vec<u8> {
        Message::new(size, Wrap::Raw)
            .stamp(seq, 1_000_000_000)
            .to_vec()
    }

    /// Feeds `data` to connection `token` at 1.002 s; returns what `process` answered.
    fn feed(w: &mut Worker, token: usize, data: &[u8]) -> Result<usize, String> {
        w.process(token, data, 1_002_000_000)
    }

    #[test]
    fn a_compressed_message_is_inflated_and_read_like_any_other() {
        let (mut w, _l) = worker(true, 1, 1 << 20);
        let token = conn(&mut w, true);
        let msg = stamped(7, 4096);
        let wire = compress(&mut compressor(), &msg, false);
        let mut data = answer(HUB);
        frame(0xC1, &wire, &mut data);
        // The answer and the first frame in one read.
        assert_eq!(feed(&mut w, token, &data), Ok(data.len()));
        assert!(matches!(w.conns[token].deflate, Inflation::Fresh));
        let win = &w.window;
        assert_eq!((win.deliveries, win.latency.len(), win.gaps), (1, 1, 0));
        assert_eq!(win.latency.max(), 2000, "inflated, the stamp reads");
        let d = win.deflate;
        assert_eq!(
            (d.upgrades, d.sampled, d.compressed, d.inflated, d.opaque),
            (1, 1, 1, 1, 0)
        );
        assert_eq!(d.inflated_bytes, msg.len() as u64);
        assert_eq!(d.inflated_wire_bytes, wire.len() as u64);
        assert!(wire.len() * 4 < msg.len());
        assert_eq!(win.wire_size.max(), wire.len() as u64);
        assert_eq!(win.bytes, wire.len() as u64);
        // A small message comes uncompressed on the same connection.
        let mut data = Vec::new();
        frame(0x81, &stamped(8, 100), &mut data);
        assert_eq!(feed(&mut w, token, &data), Ok(data.len()));
        assert_eq!((w.window.deliveries, w.window.deflate.compressed), (2, 1));
    }

    #[test]
    fn a_fragmented_compressed_message_is_put_together_then_inflated() {
        let (mut w, _l) = worker(true, 1, 1 << 20);
        let token = conn(&mut w, true);
        feed(&mut w, token, &answer(HUB)).unwrap();
        let mut c = compressor();
        for seq in 0..3 {
            let msg = stamped(seq, 50_000);
            let wire = compress(&mut c, &msg, false);
            let (a, rest) = wire.split_at(wire.len() / 3);
            let (b, z) = rest.split_at(rest.len() / 2);
            let mut data = Vec::new();
            // RSV1 on the first frame only; a ping between the fragments.
            frame(0x41, a, &mut data);
            frame(0x00, b, &mut data);
            frame(0x89, b"hi", &mut data);
            frame(0x80, z, &mut data);
            assert_eq!(feed(&mut w, token, &data), Ok(data.len()));
        }
        let win = &w.window;
        assert_eq!((win.deliveries, win.gaps, win.deflate.inflated), (3, 0, 3));
        assert_eq!(win.deflate.inflated_bytes, 150_000);
        // RSV1 on a continuation is a protocol error.
        let mut data = Vec::new();
        frame(0x41, b"\x00", &mut data);
        frame(0xC0, b"\x00", &mut data);
        assert_eq!(feed(&mut w, token, &data), Err("reserved bits set".into()));
    }

    #[test]
    fn connections_outside_the_sample_count_compressed_messages_unread() {
        let (mut w, _l) = worker(true, 10, 1 << 20);
        let token = conn(&mut w, false);
        feed(&mut w, token, &answer(HUB)).unwrap();
        assert!(matches!(w.conns[token].deflate, Inflation::Opaque));
        let wire = compress(&mut compressor(), &stamped(1, 4096), false);
        let mut data = Vec::new();
        frame(0xC1, &wire, &mut data);
        // Fragmented: nothing is kept.
        frame(0x41, &wire[..10], &mut data);
        frame(0x80, &wire[10..], &mut data);
        assert_eq!(feed(&mut w, token, &data), Ok(data.len()));
        let win = &w.window;
        assert_eq!((win.deliveries, win.latency.len()), (2, 0));
        let d = win.deflate;
        assert_eq!(
            (d.upgrades, d.sampled, d.compressed, d.inflated, d.opaque),
            (1, 0, 2, 0, 2)
        );
        assert_eq!(win.wire_size.len(), 2);
    }

    #[test]
    fn in_a_metrics_run_the_first_unread_message_is_the_snapshot() {
        let (mut w, _l) = worker(true, 2, 1 << 20);
        w.plan.metrics_interval_us = Some(2_000_000);
        let token = conn(&mut w, false);
        feed(&mut w, token, &answer(HUB)).unwrap();
        let wire = compress(&mut compressor(), &[b'{'; 5000], false);
        let mut data = Vec::new();
        frame(0xC1, &wire, &mut data);
        frame(0xC1, &wire, &mut data);
        assert_eq!(feed(&mut w, token, &data), Ok(data.len()));
        // As on the connections that read it: the snapshot is not a tick.
        let win = &w.window;
        assert_eq!(
            (win.other_frames, win.deliveries, win.deflate.opaque),
            (1, 1, 1)
        );
        assert_eq!(win.deflate.compressed, 2);
    }

    #[test]
    fn a_server_that_keeps_its_context_gets_an_inflater_per_connection() {
        let (mut w, _l) = worker(true, 1, 1 << 20);
        let token = conn(&mut w, true);
        feed(&mut w, token, &answer(Some(""))).unwrap();
        assert!(matches!(w.conns[token].deflate, Inflation::Own(_)));
        let mut c = compressor();
        for seq in 0..3 {
            let mut data = Vec::new();
            frame(
                0xC1,
                &compress(&mut c, &stamped(seq, 8192), true),
                &mut data,
            );
            assert_eq!(feed(&mut w, token, &data), Ok(data.len()));
        }
        assert_eq!((w.window.deliveries, w.window.gaps), (3, 0));
    }

    #[test]
    fn rsv1_without_negotiation_is_a_protocol_error() {
        let wire = compress(&mut compressor(), &stamped(1, 4096), false);
        let mut rsv1 = Vec::new();
        frame(0xC1, &wire, &mut rsv1);
        // Offered, but the server did not accept it.
        let (mut w, _l) = worker(true, 1, 1 << 20);
        let token = conn(&mut w, true);
        feed(&mut w, token, &answer(None)).unwrap();
        assert_eq!(feed(&mut w, token, &rsv1), Err("reserved bits set".into()));
        assert_eq!(w.window.deflate.upgrades, 0);
        // Not offered: the server's acceptance fails the upgrade.
        let (mut w, _l) = worker(false, 1, 1 << 20);
        let token = conn(&mut w, true);
        let data = answer(HUB);
        assert_eq!(feed(&mut w, token, &data), Ok(data.len()));
        assert!(!w.conns.contains(token));
        assert_eq!(w.window.errors["extension not offered"], 1);
    }

    #[test]
    fn an_inflated_message_over_the_limit_loses_the_connection() {
        let (mut w, _l) = worker(true, 1, 10_000);
        let token = conn(&mut w, true);
        feed(&mut w, token, &answer(HUB)).unwrap();
        let mut data = Vec::new();
        // 20,000 bytes inflated, far fewer on the wire.
        frame(
            0xC1,
            &compress(&mut compressor(), &stamped(1, 20_000), false),
            &mut data,
        );
        assert!(data.len() < 10_000);
        assert_eq!(
            feed(&mut w, token, &data),
            Err("inflated message over the size limit".into())
        );
        // The inflater is back for the next message.
        assert!(w.inflater.is_some());
    }
}
