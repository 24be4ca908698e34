//! Scale-out through Redis pub/sub: several hubs behind a load balancer see one stream.
//!
//! An instance with a source (the demo, REST mutations, the publish endpoint, an embedding
//! broker) is an *origin*: every frame it broadcasts is also handed, already encoded, to this
//! module's publisher thread, which `PUBLISH`es it once to `<prefix>:frames` (and keeps retained
//! frames in the hash `<prefix>:last`). Every instance runs a subscriber thread on
//! `<prefix>:frames` that fans what it receives out locally through the cores' rings, exactly
//! like a local broadcast; an origin skips its own frames (it delivered them already). A frame
//! keeps the `seq` and `epoch` of its origin, so a client that reconnects to another instance
//! can tell whether it missed anything.
//!
//! A *relay-only* instance (`--source relay`) has no source: it fans out, answers
//! `GET /api/topics` and `GET /api/groups` from the state the origin publishes on
//! `<prefix>:state`, and forwards REST mutations and publishes to the origin on
//! `<prefix>:commands` (answered 202).
//!
//! Redis work runs on these two threads only, never on a core: broadcasters push into a bounded
//! queue (dropping its oldest when Redis is away, counted), and an outage is logged, counted in
//! `/metrics` and retried with backoff (100 ms doubling to 5 s). On reconnecting, the subscriber
//! reloads the last values from `<prefix>:last` first, so new clients get the latest metrics at
//! once.

use std::fmt;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::str::FromStr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use tracing::{info, warn};

use crate::broadcast::{Frame, HubShared};
use crate::protocol::Channel;

/// Frames (and forwarded commands) waiting for the publisher thread.
const OUT_QUEUE: usize = 16 * 1024;
/// The origin republishes its REST state this often (and after every event).
const STATE_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Silence on the subscription after which Redis is pinged (and twice that: reconnect).
const KEEPALIVE: Duration = Duration::from_secs(3);
/// How long a blocked read waits before the thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(200);

/// Where the relay is: `redis://HOST:PORT[/prefix]` (the prefix defaults to `takhin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// `HOST:PORT` of the Redis server.
    pub addr: String,
    /// Prefix of every Redis key and channel the hubs use; instances that share it share a
    /// stream.
    pub prefix: String,
}

impl FromStr for RelayConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("redis://")
            .ok_or_else(|| format!("{s}: expected redis://HOST:PORT[/prefix]"))?;
        let (addr, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = if prefix.is_empty() { "takhin" } else { prefix };
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !port_ok {
            return Err(format!("{s}: expected redis://HOST:PORT[/prefix]"));
        }
        if prefix
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(format!("{s}: the prefix must not contain spaces"));
        }
        Ok(Self {
            addr: addr.to_owned(),
            prefix: prefix.to_owned(),
        })
    }
}

impl fmt::Display for RelayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "redis://{}/{}", self.addr, self.prefix)
    }
}

/// What this instance is in the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRole {
    /// Has a source: publishes its broadcasts and owns the topic and group state.
    Origin,
    /// No source of its own: fans out what origins publish; forwards mutations.
    RelayOnly,
}

/// Counters of the relay, exported in `/metrics`.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Frames published to Redis.
    pub published_total: AtomicU64,
    /// Frames received from Redis and fanned out here.
    pub received_total: AtomicU64,
    /// Frames not published: the queue overflowed or Redis refused them.
    pub dropped_total: AtomicU64,
    /// Connection failures and lost connections.
    pub errors_total: AtomicU64,
    /// Forwarded commands sent (relay-only) or run (origin).
    pub commands_total: AtomicU64,
    /// 1 while both threads are connected.
    pub connected: AtomicU64,
}

/// What a relay-only instance knows of the origin's REST state.
#[derive(Debug, Default)]
pub(crate) struct RelayedState {
    pub(crate) topics: Option<String>,
    pub(crate) groups: Option<String>,
}

/// Items for the publisher thread.
pub(crate) enum Outgoing {
    Frame(Frame),
    /// A REST mutation forwarded to the origin (JSON).
    Command(String),
}

/// The relay's side of [`HubShared`]: set once when the relay starts.
pub(crate) struct RelayLink {
    pub(crate) config: RelayConfig,
    pub(crate) role: RelayRole,
    out: ArrayQueue<Outgoing>,
    /// The publisher thread, to unpark: set once at start, read without a lock.
    publisher: OnceLock<std::thread::Thread>,
    pub(crate) stats: RelayStats,
    pub(crate) state: Mutex<RelayedState>,
    stop: AtomicBool,
    /// Whether the publisher (0) and the subscriber (1) are connected.
    up: [AtomicBool; 2],
}

impl fmt::Debug for RelayLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayLink")
            .field("config", &self.config)
            .field("role", &self.role)
            .finish()
    }
}

impl RelayLink {
    /// Called under the broadcast order lock: the frame goes to Redis in `seq` order. Never
    /// blocks: a full queue drops its oldest.
    pub(crate) fn publish(&self, frame: &Frame) {
        if self.role == RelayRole::Origin {
            self.push(Outgoing::Frame(frame.clone()));
        }
    }

    /// Queues a mutation for the origin (relay-only instances).
    pub(crate) fn forward(&self, command: String) {
        self.push(Outgoing::Command(command));
    }

    /// Records whether a thread (0 publisher, 1 subscriber) is connected; the gauge is 1
    /// while both are.
    fn set_up(&self, thread: usize, up: bool) {
        self.up[thread].store(up, Relaxed);
        let both = self.up.iter().all(|u| u.load(Relaxed));
        self.stats.connected.store(u64::from(both), Relaxed);
    }

    fn push(&self, item: Outgoing) {
        if self.out.force_push(item).is_some() {
            self.stats.dropped_total.fetch_add(1, Relaxed);
        }
        if let Some(t) = self.publisher.get() {
            t.unpark();
        }
    }
}

/// The running relay: two threads, stopped when this is dropped.
#[derive(Debug)]
pub struct Relay {
    link: Arc<RelayLink>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    pub(crate) fn start(
        shared: Arc<HubShared>,
        config: RelayConfig,
        role: RelayRole,
    ) -> std::io::Result<Self> {
        let link = Arc::new(RelayLink {
            config,
            role,
            out: ArrayQueue::new(OUT_QUEUE),
            publisher: OnceLock::new(),
            stats: RelayStats::default(),
            state: Mutex::new(RelayedState::default()),
            stop: AtomicBool::new(false),
            up: [AtomicBool::new(false), AtomicBool::new(false)],
        });
        if shared.relay.set(link.clone()).is_err() {
            return Err(std::io::Error::other("a relay is already running"));
        }
        let publisher = {
            let (shared, link) = (shared.clone(), link.clone());
            std::thread::Builder::new()
                .name("relay-pub".into())
                .spawn(move || publisher_loop(&shared, &link))?
        };
        let _ = link.publisher.set(publisher.thread().clone());
        let subscriber = {
            let link = link.clone();
            std::thread::Builder::new()
                .name("relay-sub".into())
                .spawn(move || subscriber_loop(&shared, &link))?
        };
        info!(relay = %link.config, ?role, "relay started");
        Ok(Self {
            link,
            threads: vec![publisher, subscriber],
        })
    }

    /// The relay's counters.
    pub fn stats(&self) -> &RelayStats {
        &self.link.stats
    }

    /// Stops both threads (within about 200 ms).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.link.stop.store(true, Relaxed);
        if let Some(t) = self.link.publisher.get() {
            t.unpark();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.halt();
    }
}

// ---- The wire format -------------------------------------------------------------------------

/// One relayed frame: `TKR1 <epoch> <seq> <flags> <channel> <also|->\n<payload>`, the payload
/// being the frame's JSON exactly as the origin encoded it.
pub(crate) fn encode(frame: &Frame, epoch: u64) -> Vec<u8> {
    let payload = frame.payload();
    let mut out = Vec::with_capacity(payload.len() + 64);
    let flags = frame.route_flags();
    let also = frame.also().map_or("-".to_owned(), Channel::to_string);
    let head = format!(
        "TKR1 {epoch} {} {} {} {also}\n",
        frame.seq(),
        if flags.is_empty() { "-" } else { &flags },
        frame.channel()
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// A relayed frame, read back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Relayed<'a> {
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
    pub(crate) flags: &'a str,
    pub(crate) channel: Channel,
    pub(crate) also: Option<Channel>,
    pub(crate) payload: &'a [u8],
}

pub(crate) fn decode(msg: &[u8]) -> Option<Relayed<'_>> {
    let nl = memchr::memchr(b'\n', msg)?;
    let head = std::str::from_utf8(&msg[..nl]).ok()?;
    let mut parts = head.split(' ');
    if parts.next()? != "TKR1" {
        return None;
    }
    let epoch = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let flags = parts.next()?;
    let channel = Channel::parse(parts.next()?).ok()?;
    let also = match parts.next()? {
        "-" => None,
        c => Some(Channel::parse(c).ok()?),
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Relayed {
        epoch,
        seq,
        flags: if flags == "-" { "" } else { flags },
        channel,
        also,
        payload: &msg[nl + 1..],
    })
}

// ---- A minimal RESP client (blocking, one per thread) ----------------------------------------

/// A Redis connection: commands out, RESP replies in. Only what the relay needs.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
}

/// A RESP reply.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Self>>),
}

impl Conn {
    fn open(addr: &str) -> std::io::Result<Self> {
        let addrs: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(addr)?.collect();
        let mut last = std::io::Error::other("no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(POLL))?;
                    return Ok(Self {
                        stream,
                        buf: Vec::with_capacity(16 * 1024),
                        pos: 0,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Appends one command to `out` in RESP.
    fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next reply; `Ok(None)` when the read timed out with nothing complete.
    fn reply(&mut self) -> std::io::Result<Option<Reply>> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf[self.pos..])? {
                self.pos += used;
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.pos = 0;
                }
                return Ok(Some(reply));
            }
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The reply to a command just sent, waiting through read timeouts up to `limit`.
    fn wait_reply(&mut self, limit: Duration) -> std::io::Result<Reply> {
        let end = Instant::now() + limit;
        loop {
            if let Some(r) = self.reply()? {
                return Ok(r);
            }
            if Instant::now() >= end {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
        }
    }
}

/// One complete RESP reply at the start of `b` and its length; `None` if incomplete.
fn parse_reply(b: &[u8]) -> std::io::Result<Option<(Reply, usize)>> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad RESP reply");
    let Some(&kind) = b.first() else {
        return Ok(None);
    };
    let Some(nl) = memchr::memmem::find(b, b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&b[1..nl]).map_err(|_| bad())?;
    let after = nl + 2;
    match kind {
        b'+' => Ok(Some((Reply::Status(line.to_owned()), after))),
        b'-' => Ok(Some((Reply::Error(line.to_owned()), after))),
        b':' => Ok(Some((Reply::Int(line.parse().map_err(|_| bad())?), after))),
        b'$' => {
            let n: i64 = line.parse().map_err(|_| bad())?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let n = usize::try_from(n).map_err(|_| bad())?;
            if b.len() < after + n + 2 {
                return Ok(None);
            }
            Ok(Some((
                Reply::Bulk(Some(b[after..after + n].to_vec())),
                after + n + 2,
            )))
        }
        b'*' => {
            let n: i64 = line.parse().map_err(|_| bad())?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), after)));
            }
            let mut items = Vec::new();
            let mut at = after;
            for _ in 0..n {
                match parse_reply(&b[at..])? {
                    Some((item, used)) => {
                        items.push(item);
                        at += used;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        _ => Err(bad()),
    }
}

// ---- The threads -----------------------------------------------------------------------------

/// Sleeps `d` in short steps; false when asked to stop meanwhile.
fn pause(link: &RelayLink, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if link.stop.load(Relaxed) {
            return false;
        }
        std::thread::sleep(POLL.min(end.saturating_duration_since(Instant::now())));
    }
    !link.stop.load(Relaxed)
}

/// Logs a failure at most once per 5 s per thread, counting the rest.
struct Complaints {
    /// 0: the publisher thread, 1: the subscriber thread.
    thread: usize,
    last: Option<Instant>,
    held: u64,
}

impl Complaints {
    fn new(thread: usize) -> Self {
        Self {
            thread,
            last: None,
            held: 0,
        }
    }

    fn complain(&mut self, link: &RelayLink, what: &str, e: &dyn fmt::Display) {
        link.stats.errors_total.fetch_add(1, Relaxed);
        link.set_up(self.thread, false);
        let now = Instant::now();
        if self
            .last
            .map_or(true, |t| now.duration_since(t) >= Duration::from_secs(5))
        {
            warn!(relay = %link.config, error = %e, held_back = self.held, "{what}");
            self.last = Some(now);
            self.held = 0;
        } else {
            self.held += 1;
        }
    }
}

fn publisher_loop(shared: &HubShared, link: &RelayLink) {
    let frames = format!("{}:frames", link.config.prefix);
    let last = format!("{}:last", link.config.prefix);
    let state = format!("{}:state", link.config.prefix);
    let commands = format!("{}:commands", link.config.prefix);
    let mut complaints = Complaints::new(0);
    let mut backoff = BACKOFF_FIRST;
    while !link.stop.load(Relaxed) {
        let mut conn = match Conn::open(&link.config.addr) {
            Ok(c) => c,
            Err(e) => {
                complaints.complain(link, "relay: cannot reach Redis (publishing)", &e);
                if !pause(link, backoff) {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        link.set_up(0, true);
        backoff = BACKOFF_FIRST;
        let mut last_state: Option<Instant> = None;
        let mut pipe = Pipeline::default();
        loop {
            if link.stop.load(Relaxed) {
                return;
            }
            pipe.clear();
            let mut frames_sent = 0u64;
            let mut events = false;
            while let Some(item) = link.out.pop() {
                match item {
                    Outgoing::Frame(frame) => {
                        let msg = encode(&frame, shared.epoch);
                        pipe.command(&[b"PUBLISH", frames.as_bytes(), &msg]);
                        let key = frame.channel().to_string();
                        if frame.forget() {
                            pipe.command(&[b"HDEL", last.as_bytes(), key.as_bytes()]);
                        } else if frame.retain() {
                            pipe.command(&[b"HSET", last.as_bytes(), key.as_bytes(), &msg]);
                        }
                        if let (true, Some(also)) = (frame.clears(), frame.also()) {
                            let also = also.to_string();
                            pipe.command(&[b"HDEL", last.as_bytes(), also.as_bytes()]);
                        }
                        events |= *frame.channel() == Channel::Events;
                        frames_sent += 1;
                    }
                    Outgoing::Command(cmd) => {
                        pipe.command(&[b"PUBLISH", commands.as_bytes(), cmd.as_bytes()]);
                        link.stats.commands_total.fetch_add(1, Relaxed);
                    }
                }
                if pipe.commands >= 512 {
                    break;
                }
            }
            // The origin's REST state, for relay-only instances' reads: after every event
            // (a topic or group changed) and once a second.
            let due = last_state.map_or(true, |t| t.elapsed() >= STATE_EVERY);
            if link.role == RelayRole::Origin && (events || due) {
                if let Some(doc) = state_document(shared) {
                    pipe.command(&[b"PUBLISH", state.as_bytes(), doc.as_bytes()]);
                    pipe.command(&[b"SET", state.as_bytes(), doc.as_bytes()]);
                }
                last_state = Some(Instant::now());
            }
            if pipe.commands == 0 {
                std::thread::park_timeout(POLL);
                continue;
            }
            match pipe.run(&mut conn) {
                Ok(()) => {
                    link.stats.published_total.fetch_add(frames_sent, Relaxed);
                }
                Err(e) => {
                    link.stats.dropped_total.fetch_add(frames_sent, Relaxed);
                    complaints.complain(link, "relay: lost Redis (publishing)", &e);
                    break;
                }
            }
        }
    }
}

/// Commands sent in one write; their replies are read back in order.
#[derive(Default)]
struct Pipeline {
    out: Vec<u8>,
    commands: usize,
}

impl Pipeline {
    fn clear(&mut self) {
        self.out.clear();
        self.commands = 0;
    }

    fn command(&mut self, args: &[&[u8]]) {
        Conn::command(&mut self.out, args);
        self.commands += 1;
    }

    fn run(&self, conn: &mut Conn) -> std::io::Result<()> {
        conn.send(&self.out)?;
        for _ in 0..self.commands {
            if let Reply::Error(e) = conn.wait_reply(Duration::from_secs(5))? {
                return Err(std::io::Error::other(e));
            }
        }
        Ok(())
    }
}

/// `{"topics":[..],"groups":[..]}`, the origin's REST state.
fn state_document(shared: &HubShared) -> Option<String> {
    let api = shared.api.get()?;
    let doc = serde_json::json!({
        "topics": api.topics.list(),
        "groups": api.groups.list(),
    });
    Some(doc.to_string())
}

fn subscriber_loop(shared: &Arc<HubShared>, link: &RelayLink) {
    let prefix = &link.config.prefix;
    let frames = format!("{prefix}:frames");
    let state = format!("{prefix}:state");
    let commands = format!("{prefix}:commands");
    let last = format!("{prefix}:last");
    let mut complaints = Complaints::new(1);
    let mut backoff = BACKOFF_FIRST;
    while !link.stop.load(Relaxed) {
        let result = (|| -> std::io::Result<()> {
            // Subscribe first, then read the stored values: nothing falls in between.
            let mut sub = Conn::open(&link.config.addr)?;
            let mut out = Vec::new();
            let mut channels: Vec<&[u8]> = vec![b"SUBSCRIBE", frames.as_bytes()];
            match link.role {
                RelayRole::Origin => channels.push(commands.as_bytes()),
                RelayRole::RelayOnly => channels.push(state.as_bytes()),
            }
            Conn::command(&mut out, &channels);
            sub.send(&out)?;
            for _ in 1..channels.len() {
                sub.wait_reply(Duration::from_secs(5))?;
            }
            let mut kv = Conn::open(&link.config.addr)?;
            let mut out = Vec::new();
            Conn::command(&mut out, &[b"HGETALL", last.as_bytes()]);
            Conn::command(&mut out, &[b"GET", state.as_bytes()]);
            kv.send(&out)?;
            let values = kv.wait_reply(Duration::from_secs(5))?;
            let doc = kv.wait_reply(Duration::from_secs(5))?;
            drop(kv);
            if let Reply::Array(Some(items)) = values {
                // Field, value, field, value: the values are relayed frames.
                for v in items.iter().skip(1).step_by(2) {
                    if let Reply::Bulk(Some(msg)) = v {
                        if let Some(r) = decode(msg) {
                            if r.epoch != shared.epoch {
                                crate::broadcast::inject(shared, &r, true);
                            }
                        }
                    }
                }
            }
            if let (RelayRole::RelayOnly, Reply::Bulk(Some(doc))) = (link.role, doc) {
                set_state(link, &doc);
            }
            link.set_up(1, true);
            info!(relay = %link.config, "relay: subscribed");
            backoff = BACKOFF_FIRST;
            // A quiet channel and a Redis that stopped answering look alike: after KEEPALIVE
            // of silence, PING; no answer within another KEEPALIVE means reconnect.
            let mut heard = Instant::now();
            let mut pinged = false;
            loop {
                if link.stop.load(Relaxed) {
                    return Ok(());
                }
                let Some(reply) = sub.reply()? else {
                    if heard.elapsed() >= 2 * KEEPALIVE && pinged {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "Redis stopped answering",
                        ));
                    }
                    if heard.elapsed() >= KEEPALIVE && !pinged {
                        let mut ping = Vec::new();
                        Conn::command(&mut ping, &[b"PING"]);
                        sub.send(&ping)?;
                        pinged = true;
                    }
                    continue;
                };
                heard = Instant::now();
                pinged = false;
                let Reply::Array(Some(parts)) = reply else {
                    continue;
                };
                let [Reply::Bulk(Some(kind)), Reply::Bulk(Some(chan)), Reply::Bulk(Some(msg))] =
                    &parts[..]
                else {
                    continue;
                };
                if kind != b"message" {
                    continue;
                }
                if chan == frames.as_bytes() {
                    if let Some(r) = decode(msg) {
                        if r.epoch != shared.epoch {
                            crate::broadcast::inject(shared, &r, false);
                            link.stats.received_total.fetch_add(1, Relaxed);
                        }
                    }
                } else if chan == state.as_bytes() {
                    set_state(link, msg);
                } else if chan == commands.as_bytes() {
                    link.stats.commands_total.fetch_add(1, Relaxed);
                    crate::http::run_forwarded(shared, msg);
                }
            }
        })();
        if let Err(e) = result {
            complaints.complain(link, "relay: lost Redis (subscribing)", &e);
            if !pause(link, backoff) {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

fn set_state(link: &RelayLink, doc: &[u8]) {
    #[derive(serde::Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        topics: &'a serde_json::value::RawValue,
        #[serde(borrow)]
        groups: &'a serde_json::value::RawValue,
    }
    if let Ok(d) = serde_json::from_slice::<Doc<'_>>(doc) {
        let mut s = link.state.lock().unwrap_or_else(|e| e.into_inner());
        s.topics = Some(d.topics.get().to_owned());
        s.groups = Some(d.groups.get().to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_the_server_and_the_prefix() {
        let c: RelayConfig = "redis://127.0.0.1:6379".parse().unwrap();
        assert_eq!(
            (c.addr.as_str(), c.prefix.as_str()),
            ("127.0.0.1:6379", "takhin")
        );
        let c: RelayConfig = "redis://redis.internal:7000/prod-a".parse().unwrap();
        assert_eq!(
            (c.addr.as_str(), c.prefix.as_str()),
            ("redis.internal:7000", "prod-a")
        );
        for bad in [
            "127.0.0.1:6379",
            "redis://host",
            "redis://:1",
            "redis://h:1/a b",
        ] {
            assert!(bad.parse::<RelayConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn resp_replies_parse_whole_or_not_at_all() {
        let b = b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$3\r\nxyz\r\n+OK\r\n";
        let (r, used) = parse_reply(b).unwrap().unwrap();
        assert_eq!(
            r,
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"message".to_vec())),
                Reply::Bulk(Some(b"a".to_vec())),
                Reply::Bulk(Some(b"xyz".to_vec())),
            ]))
        );
        assert_eq!(
            parse_reply(&b[used..]).unwrap().unwrap().0,
            Reply::Status("OK".into())
        );
        for cut in 0..used {
            assert!(parse_reply(&b[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        assert_eq!(parse_reply(b":-3\r\n").unwrap().unwrap().0, Reply::Int(-3));
        assert_eq!(
            parse_reply(b"$-1\r\n").unwrap().unwrap().0,
            Reply::Bulk(None)
        );
        assert!(parse_reply(b"?\r\n").is_err());
    }

    #[test]
    fn commands_are_written_in_resp() {
        let mut p = Pipeline::default();
        p.command(&[b"PUBLISH", b"c", b"x\r\ny"]);
        p.command(&[b"HSET", b"k", b"f", b""]);
        assert_eq!(p.commands, 2);
        assert_eq!(
            p.out,
            b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$4\r\nx\r\ny\r\n\
              *4\r\n$4\r\nHSET\r\n$1\r\nk\r\n$1\r\nf\r\n$0\r\n\r\n"
        );
    }
}
