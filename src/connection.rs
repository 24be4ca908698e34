//! One client connection: the bounded handshake, a reader task (tungstenite parses frames) and
//! a writer task that sends everything queued in one `sendmsg` of the shared frames.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite, FutureExt};
use glommio::net::TcpStream;
use tracing::{debug, error, trace};
use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tungstenite::protocol::{Message, Role, WebSocketContext};

use crate::fanout::{ClientLink, OutQueue, Progress, Subscribed};
use crate::handshake::{self, Head};
use crate::protocol::{
    close_code, close_frame, error_frame, lagged_frame, parse_client_message, reply_frame, Channel,
    ChannelError, ClientMessage, FrameBuf, Number, OP_BINARY, OP_TEXT,
};
use crate::shard::{Shard, Timing};

/// Most frames one `sendmsg` carries.
pub(crate) const MAX_IOV: usize = 128;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading the request head.
    Handshake,
    /// A WebSocket client.
    Open,
    /// Our close frame is out (or the peer's came in): waiting for the socket to finish.
    Closing,
    /// Served by the HTTP server (keep-alive between requests).
    Http,
}

/// A connection as its shard sees it.
pub(crate) struct Conn {
    pub(crate) link: ClientLink,
    stream: RefCell<TcpStream>,
    fd: RawFd,
    phase: Cell<Phase>,
    since: Cell<Instant>,
    last_seen: Cell<Instant>,
    pub(crate) last_ping: Cell<Instant>,
    stalled_since: Cell<Option<Instant>>,
    /// Bytes written to the socket so far, wrapping (only differences between two looks of
    /// the sweep, a second apart, are used).
    written: Cell<u32>,
    /// What the sweep last saw: bytes the kernel held unacknowledged, and `written` then.
    /// `u32::MAX`: not looked yet.
    ack_probe: Cell<(u32, u32)>,
    reader_done: Cell<bool>,
    dead: Cell<bool>,
    /// Counted in the shard's open WebSocket clients.
    opened: Cell<bool>,
    /// Holds a place under the global connection limit.
    admitted: Cell<bool>,
}

impl AsRef<ClientLink> for Conn {
    fn as_ref(&self) -> &ClientLink {
        &self.link
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("fd", &self.fd)
            .field("phase", &self.phase.get())
            .finish()
    }
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        let now = Instant::now();
        Self {
            link: ClientLink::default(),
            fd: stream.as_raw_fd(),
            stream: RefCell::new(stream),
            phase: Cell::new(Phase::Handshake),
            since: Cell::new(now),
            last_seen: Cell::new(now),
            last_ping: Cell::new(now),
            stalled_since: Cell::new(None),
            written: Cell::new(0),
            ack_probe: Cell::new((u32::MAX, 0)),
            reader_done: Cell::new(false),
            dead: Cell::new(false),
            opened: Cell::new(false),
            admitted: Cell::new(false),
        }
    }

    pub(crate) fn timing(&self) -> Timing {
        Timing {
            phase: self.phase.get(),
            since: self.since.get(),
            last_seen: self.last_seen.get(),
            last_ping: self.last_ping.get(),
            stalled_since: self.stalled_since.get(),
        }
    }

    /// For the sweep: whether the client's TCP stack acknowledged data since the last look,
    /// which proves it alive and reading. Asked only of a stalled writer and of a client about
    /// to reach the pong wait (`quiet`), so a healthy client costs no system call.
    ///
    /// The kernel wakes a writer only once a third of the send buffer is free, so a client
    /// draining a few KB/s leaves the writer parked longer than the write wait, and the
    /// server's ping waits behind that backlog, so its pong comes late; neither makes it dead.
    /// A vanished client acknowledges nothing.
    pub(crate) fn note_acknowledged(&self, now: Instant, quiet: bool) {
        let stalled = self.stalled_since.get().is_some();
        if !stalled && !quiet {
            // Acknowledgements from before this look-out prove nothing about now.
            self.ack_probe.set((u32::MAX, 0));
            return;
        }
        let mut unacked: libc::c_int = 0;
        // SAFETY: `fd` is this connection's open socket; TIOCOUTQ (SIOCOUTQ) writes one c_int:
        // the bytes written to it that the peer has not acknowledged.
        if unsafe { libc::ioctl(self.fd, libc::TIOCOUTQ, &mut unacked) } != 0 {
            return;
        }
        let unacked = u32::try_from(unacked).unwrap_or(0);
        let written = self.written.get();
        let (before, written_before) = self.ack_probe.replace((unacked, written));
        if before == u32::MAX {
            return;
        }
        let sent = u64::from(written.wrapping_sub(written_before));
        let acked = (u64::from(before) + sent).saturating_sub(unacked.into());
        if acked > 0 {
            self.last_seen.set(now);
            if stalled {
                self.stalled_since.set(Some(now));
            }
        }
    }

    fn set_phase(&self, phase: Phase) {
        if self.phase.get() != phase {
            self.phase.set(phase);
            self.since.set(Instant::now());
        }
    }

    /// Whether this is an upgraded WebSocket client.
    pub(crate) fn is_websocket(&self) -> bool {
        self.opened.get()
    }

    /// Marks the connection as served by the HTTP server (idle-timed by the sweep).
    pub(crate) fn begin_http(&self) {
        self.set_phase(Phase::Http);
    }

    /// A request arrived: the HTTP idle clock starts again.
    pub(crate) fn touch(&self) {
        self.since.set(Instant::now());
    }

    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.stream.borrow_mut()).poll_read(cx, buf)
    }

    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.stream.borrow_mut()).poll_write(cx, buf)
    }

    pub(crate) fn poll_close(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream.borrow_mut()).poll_close(cx)
    }

    /// Ends the connection now: both directions are shut, so the reader sees EOF and the
    /// writer an error; the tasks then release everything.
    pub(crate) fn kill(&self) {
        if !self.dead.replace(true) {
            // SAFETY: `fd` is this connection's socket, open for as long as `self.stream` lives.
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        }
        self.link.wake_writer();
    }

    /// Starts a close handshake with `code`: queued frames are discarded, the close frame goes
    /// out at the next frame boundary, and the connection lingers until the peer answers or the
    /// close timeout.
    pub(crate) fn close(&self, code: u16, reason: &str) {
        self.start_close(code, reason, false);
    }

    /// Fails the connection for bad input: like [`Self::close`], but the replies already
    /// queued go out ahead of the close frame (broadcasts are still discarded).
    pub(crate) fn fail(&self, code: u16, reason: &str) {
        self.start_close(code, reason, true);
    }

    fn start_close(&self, code: u16, reason: &str, after_replies: bool) {
        match self.phase.get() {
            Phase::Handshake => self.kill(),
            Phase::Open => {
                let frame = close_frame(code, reason);
                let mut out = self.link.out.borrow_mut();
                if after_replies {
                    out.close_after_replies(frame);
                } else {
                    out.close_with(frame);
                }
                drop(out);
                self.set_phase(Phase::Closing);
                self.link.wake_writer();
            }
            Phase::Closing | Phase::Http => {}
        }
    }
}

/// Serves one accepted socket to its end. A panic inside closes this connection only.
///
/// The socket is wrapped before the task starts, so the task's future holds a pointer to it,
/// not the stream itself.
pub(crate) fn serve(shard: Rc<Shard>, stream: TcpStream) -> impl std::future::Future<Output = ()> {
    let _ = stream.set_nodelay(true);
    if let Some(bytes) = shard.config.send_buffer {
        set_send_buffer(stream.as_raw_fd(), bytes);
    }
    serve_conn(shard, Rc::new(Conn::new(stream)))
}

/// Sets `SO_SNDBUF`; a failure leaves the kernel's default, which is only a larger buffer.
fn set_send_buffer(fd: RawFd, bytes: usize) {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is an open socket owned by the caller; the option value is a c_int that
    // lives across the call, and its size is passed with it.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

async fn serve_conn(shard: Rc<Shard>, conn: Rc<Conn>) {
    let key = shard.fanout.borrow_mut().insert(conn.clone());
    let guard = Registered {
        shard: &shard,
        conn: &conn,
        key,
    };
    if let Err(panic) = AssertUnwindSafe(run(&shard, &conn, key))
        .catch_unwind()
        .await
    {
        shard.stats().panics_total.fetch_add(1, Relaxed);
        error!(
            shard = shard.id,
            cause = panic_text(&*panic),
            "connection task panicked"
        );
        send_close_now(&conn, close_code::INTERNAL, "internal error");
    }
    drop(guard);
}

/// Best effort, without waiting: a close frame straight to the socket, when no frame is
/// half-written (the writer task is gone after a panic).
fn send_close_now(conn: &Conn, code: u16, reason: &str) {
    let at_boundary = conn
        .link
        .out
        .try_borrow()
        .is_ok_and(|out| out.at_frame_boundary());
    if conn.phase.get() == Phase::Open && at_boundary {
        let frame = close_frame(code, reason);
        // SAFETY: `fd` is this connection's open socket; `frame` outlives the call.
        unsafe {
            libc::send(
                conn.fd,
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
    }
}

/// Removes the connection from its shard however its task ends.
struct Registered<'a> {
    shard: &'a Shard,
    conn: &'a Rc<Conn>,
    key: usize,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.conn.kill();
        if let Ok(mut fanout) = self.shard.fanout.try_borrow_mut() {
            fanout.remove(self.key);
        }
        self.shard.publish_interest();
        if self.conn.opened.get() {
            self.shard.stats().connections.fetch_sub(1, Relaxed);
        }
        if self.conn.admitted.get() {
            self.shard.shared.release();
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown")
}

async fn run(shard: &Rc<Shard>, conn: &Rc<Conn>, key: usize) {
    let tail = match handshake(shard, conn).await {
        Opening::WebSocket(tail) => tail,
        Opening::Http(bytes) => {
            // Boxed: hyper's connection state is allocated only for HTTP connections, so it
            // does not grow the task every WebSocket client carries.
            return Box::pin(crate::http::serve(shard, conn, bytes)).await;
        }
        Opening::Refused => return,
    };
    let stats = shard.stats();
    stats.handshakes_total.fetch_add(1, Relaxed);
    stats.connections.fetch_add(1, Relaxed);
    conn.opened.set(true);
    let now = Instant::now();
    conn.last_seen.set(now);
    conn.last_ping.set(now);
    conn.set_phase(Phase::Open);
    if !shard.config.echo {
        let mut fanout = shard.fanout.borrow_mut();
        for channel in [Channel::Metrics, Channel::Events] {
            fanout.subscribe(key, channel.clone());
            fanout.greet(key, &channel);
        }
    }
    if shard.draining.get() {
        conn.close(close_code::GOING_AWAY, "server shutting down");
    }
    let writer = glommio::spawn_local(writer_task(shard.clone(), conn.clone()));
    let end = read_messages(shard, conn, key, tail).await;
    trace!(shard = shard.id, ?end, "reader ended");
    match end {
        End::PeerClosed => {}
        End::Failed => discard_until_eof(shard, conn).await,
        End::Gone => conn.kill(),
    }
    conn.reader_done.set(true);
    conn.link.wake_writer();
    writer.await;
}

/// How a connection's first request went.
enum Opening {
    /// Upgraded; the bytes after the head (frames the client sent early).
    WebSocket(Vec<u8>),
    /// Not for the WebSocket endpoint: everything read so far, for the HTTP server.
    Http(Vec<u8>),
    /// Answered with an error, or gone.
    Refused,
}

/// Reads the request head and answers it when it is for the WebSocket endpoint.
async fn handshake(shard: &Shard, conn: &Conn) -> Opening {
    let cfg = &shard.config;
    let mut buf = Vec::with_capacity(1024);
    let mut scanned = 0;
    let head_len = loop {
        if let Some(end) = handshake::head_end(&buf, scanned) {
            break end;
        }
        scanned = buf.len();
        if buf.len() >= cfg.max_request_head {
            shard.stats().handshake_failures_total.fetch_add(1, Relaxed);
            respond(shard, conn, &handshake::too_large()).await;
            return Opening::Refused;
        }
        let want = (buf.len() + 1024).min(cfg.max_request_head);
        match read_some(conn, &mut buf, want).await {
            Ok(0) | Err(_) => {
                // A peer that left mid-head; a head timeout was already counted by the sweep.
                if !conn.dead.get() {
                    shard.stats().handshake_failures_total.fetch_add(1, Relaxed);
                }
                return Opening::Refused;
            }
            Ok(_) => {}
        }
    };
    let admit = || {
        let ok = !shard.draining.get() && shard.shared.try_admit(cfg.max_connections);
        conn.admitted.set(ok);
        ok
    };
    match handshake::answer(&buf[..head_len], cfg, admit) {
        Head::Upgrade(response) => {
            if write_all(conn, response.as_bytes()).await.is_err() {
                return Opening::Refused;
            }
            Opening::WebSocket(buf.split_off(head_len))
        }
        Head::Refuse(response) => {
            debug!(shard = shard.id, "handshake refused");
            shard.stats().handshake_failures_total.fetch_add(1, Relaxed);
            respond(shard, conn, &response).await;
            Opening::Refused
        }
        Head::Http => Opening::Http(buf),
    }
}

/// Sends an HTTP error answer and closes politely.
async fn respond(shard: &Shard, conn: &Conn, response: &str) {
    conn.set_phase(Phase::Closing);
    if write_all(conn, response.as_bytes()).await.is_ok() {
        // SAFETY: `fd` is this connection's open socket.
        unsafe { libc::shutdown(conn.fd, libc::SHUT_WR) };
        discard_until_eof(shard, conn).await;
    }
}

/// Reads up to `want` total bytes into `buf`, waiting for at least one.
async fn read_some(conn: &Conn, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    let len = buf.len();
    buf.resize(want, 0);
    let res = poll_fn(|cx| {
        let mut stream = conn.stream.borrow_mut();
        Pin::new(&mut *stream).poll_read(cx, &mut buf[len..])
    })
    .await;
    buf.truncate(len + *res.as_ref().unwrap_or(&0));
    res
}

async fn write_all(conn: &Conn, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = poll_fn(|cx| {
            let mut stream = conn.stream.borrow_mut();
            Pin::new(&mut *stream).poll_write(cx, bytes)
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Reads and throws away until the peer closes (bounded by the close timeout of the sweep), so
/// that unread input never turns our close into a reset that loses the close frame.
///
/// The bytes land in the shard's scratch buffer, borrowed only inside each poll: no buffer
/// lives in the connection's task.
async fn discard_until_eof(shard: &Shard, conn: &Conn) {
    loop {
        let res = poll_fn(|cx| {
            let mut sink = shard.scratch.borrow_mut();
            let len = sink.len().max(4096);
            sink.resize(len, 0);
            let mut stream = conn.stream.borrow_mut();
            Pin::new(&mut *stream).poll_read(cx, &mut sink[..])
        })
        .await;
        if !matches!(res, Ok(n) if n > 0) {
            return;
        }
    }
}

#[derive(Debug)]
enum End {
    /// The close handshake completed (or was started by the peer).
    PeerClosed,
    /// We are failing the connection with a close code already queued.
    Failed,
    /// The socket ended without a close handshake.
    Gone,
}

/// The adapter tungstenite reads from and writes to: reads go to the socket (WouldBlock when
/// it has nothing), writes (its automatic pong and close replies) go to the client's queue.
struct Io<'a, 'b> {
    conn: &'a Conn,
    cx: &'a mut Context<'b>,
}

impl Read for Io<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut stream = self.conn.stream.borrow_mut();
        match Pin::new(&mut *stream).poll_read(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Io<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.conn.link.out.borrow_mut().push_control(buf);
        self.conn.link.wake_writer();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads client messages until the connection ends. The tungstenite context is built here, not
/// passed in, so the connection's task holds one copy of it.
async fn read_messages(shard: &Shard, conn: &Conn, key: usize, tail: Vec<u8>) -> End {
    let config = Some(shard.config.websocket);
    let mut ctx = WebSocketContext::from_partially_read(tail, Role::Server, config);
    loop {
        let msg = poll_fn(|cx| match ctx.read(&mut Io { conn, cx }) {
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            other => Poll::Ready(other),
        })
        .await;
        if msg.is_ok() {
            conn.last_seen.set(Instant::now());
        }
        let failure = match msg {
            Ok(Message::Text(text)) if shard.config.echo => {
                echo(shard, conn, OP_TEXT, text.as_bytes())
            }
            Ok(Message::Binary(data)) if shard.config.echo => echo(shard, conn, OP_BINARY, &data),
            Ok(Message::Text(text)) => on_text(shard, conn, key, text.as_bytes()),
            Ok(Message::Binary(_)) => {
                let stamp = shard.shared.stamp();
                let reply = error_frame(
                    "unsupported_message",
                    "binary messages are not part of the protocol",
                    &stamp,
                );
                queue_reply(shard, conn, reply)
            }
            Ok(Message::Close(_)) => {
                // tungstenite queued its close reply as control bytes: make it our close frame.
                conn.link.out.borrow_mut().close_with_control();
                conn.set_phase(Phase::Closing);
                conn.link.wake_writer();
                None
            }
            Ok(Message::Ping(_)) => {
                // tungstenite queued the pong as control bytes; a client that sends pings and
                // reads nothing must not grow them without bound.
                let waiting = conn.link.out.borrow().reply_backlog();
                (waiting > shard.config.max_reply_backlog)
                    .then_some((close_code::POLICY, "replies not read"))
            }
            Ok(Message::Pong(_) | Message::Frame(_)) => None,
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => return End::PeerClosed,
            Err(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
                Some((close_code::TOO_BIG, "message too big"))
            }
            Err(WsError::Capacity(CapacityError::TooManyHeaders)) => {
                Some((close_code::PROTOCOL_ERROR, "protocol error"))
            }
            Err(WsError::Utf8(_)) => Some((close_code::INVALID_PAYLOAD, "invalid UTF-8")),
            Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                return End::Gone
            }
            Err(WsError::Protocol(p)) => {
                debug!(shard = shard.id, error = %p, "protocol error");
                Some((close_code::PROTOCOL_ERROR, "protocol error"))
            }
            Err(WsError::Io(_)) => return End::Gone,
            Err(other) => {
                debug!(shard = shard.id, error = %other, "websocket error");
                Some((close_code::PROTOCOL_ERROR, "protocol error"))
            }
        };
        if let Some((code, reason)) = failure {
            shard.stats().protocol_errors_total.fetch_add(1, Relaxed);
            if code == close_code::POLICY {
                // Its replies are what it does not read: they go.
                conn.close(code, reason);
            } else {
                // Answers to the valid messages before the bad one still go out first.
                conn.fail(code, reason);
            }
            return End::Failed;
        }
    }
}

/// Conformance mode ([`crate::HubConfig::echo`]): sends the message back as it came.
fn echo(shard: &Shard, conn: &Conn, opcode: u8, payload: &[u8]) -> Option<(u16, &'static str)> {
    let mut frame = FrameBuf::with_capacity(payload.len());
    frame.payload().extend_from_slice(payload);
    queue_reply(shard, conn, frame.finish_compact(opcode))
}

/// Acts on one text message. Returns a close code when the client must be failed.
fn on_text(shard: &Shard, conn: &Conn, key: usize, text: &[u8]) -> Option<(u16, &'static str)> {
    if shard.config.fault_injection && text == b"__panic__" {
        panic!("injected fault");
    }
    let parsed = parse_client_message(text, &mut shard.scratch.borrow_mut());
    let stamp = shard.shared.stamp();
    let msg = match parsed {
        Ok(msg) => msg,
        Err(()) => {
            shard.stats().invalid_messages_total.fetch_add(1, Relaxed);
            shard.warn_limited("invalid JSON from a client (ignored)");
            return None;
        }
    };
    match msg {
        ClientMessage::Ping(ts) => {
            let reply = reply_frame::<()>(
                "pong",
                None,
                ts.or(Some(Number::Int(stamp.unix_s as i64))),
                &stamp,
            );
            queue_reply(shard, conn, reply)
        }
        ClientMessage::Subscribe(names) => {
            let failure = change(shard, conn, key, names, true);
            shard.publish_interest();
            failure
        }
        ClientMessage::Unsubscribe(names) => {
            let failure = change(shard, conn, key, names, false);
            shard.publish_interest();
            failure
        }
        ClientMessage::Invalid(code, message) => {
            queue_reply(shard, conn, error_frame(code, &message, &stamp))
        }
        ClientMessage::Unknown => None,
    }
}

/// Subscribes or unsubscribes, answers `subscribed`/`unsubscribed` with the names now in
/// effect, an `error` per refused name, then the last values of newly subscribed channels.
fn change(
    shard: &Shard,
    conn: &Conn,
    key: usize,
    names: Vec<String>,
    subscribe: bool,
) -> Option<(u16, &'static str)> {
    let stamp = shard.shared.stamp();
    let limit = shard.config.max_subscriptions;
    if names.len() > limit {
        let msg = format!("at most {limit} channels per connection");
        return queue_reply(
            shard,
            conn,
            error_frame("too_many_subscriptions", &msg, &stamp),
        );
    }
    let mut in_effect = Vec::with_capacity(names.len());
    let mut added = Vec::new();
    let mut errors = Vec::new();
    {
        let mut fanout = shard.fanout.borrow_mut();
        for name in names {
            let channel = match Channel::parse(&name) {
                Ok(c) => c,
                Err(e) => {
                    let code = match e {
                        ChannelError::Unknown => "unknown_channel",
                        ChannelError::Invalid => "invalid_channel",
                    };
                    let shown: String = name.chars().take(64).collect();
                    errors.push(error_frame(
                        code,
                        &format!("no such channel: {shown}"),
                        &stamp,
                    ));
                    continue;
                }
            };
            if !subscribe {
                fanout.unsubscribe(key, &channel);
                in_effect.push(name);
                continue;
            }
            match fanout.subscribe(key, channel.clone()) {
                Subscribed::Added => {
                    added.push(channel);
                    in_effect.push(name);
                }
                Subscribed::Already => in_effect.push(name),
                Subscribed::Limit => {
                    let msg = format!("at most {limit} channels per connection");
                    errors.push(error_frame("too_many_subscriptions", &msg, &stamp));
                }
            }
        }
    }
    let kind = if subscribe {
        "subscribed"
    } else {
        "unsubscribed"
    };
    // Always answered, with `[]` when every name was refused.
    let reply = reply_frame(kind, Some(&in_effect), None, &stamp);
    let mut failure = queue_reply(shard, conn, reply);
    for e in errors {
        failure = failure.or(queue_reply(shard, conn, e));
    }
    let fanout = shard.fanout.borrow();
    for channel in &added {
        fanout.greet(key, channel);
    }
    failure
}

fn queue_reply(shard: &Shard, conn: &Conn, reply: Box<[u8]>) -> Option<(u16, &'static str)> {
    let waiting = conn.link.out.borrow_mut().push_reply(reply);
    conn.link.wake_writer();
    (waiting > shard.config.max_reply_backlog).then_some((close_code::POLICY, "replies not read"))
}

async fn writer_task(shard: Rc<Shard>, conn: Rc<Conn>) {
    if let Err(panic) = AssertUnwindSafe(write_loop(&shard, &conn))
        .catch_unwind()
        .await
    {
        shard.stats().panics_total.fetch_add(1, Relaxed);
        error!(
            shard = shard.id,
            cause = panic_text(&*panic),
            "writer task panicked"
        );
        conn.kill();
    }
}

async fn write_loop(shard: &Shard, conn: &Conn) {
    loop {
        let go = poll_fn(|cx| {
            if conn.dead.get() {
                return Poll::Ready(false);
            }
            if conn.link.out.borrow().has_work() {
                Poll::Ready(true)
            } else if conn.reader_done.get() {
                Poll::Ready(false)
            } else {
                conn.link.set_writer(cx.waker());
                Poll::Pending
            }
        })
        .await;
        if !go || !flush(shard, conn).await {
            return;
        }
    }
}

/// Writes until the queue is empty. Returns false when the connection is done (error or our
/// close frame sent).
async fn flush(shard: &Shard, conn: &Conn) -> bool {
    loop {
        let Some(sent) = send_once(shard, conn, &mut conn.link.out.borrow_mut()) else {
            return true;
        };
        let n = match sent {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if conn.stalled_since.get().is_none() {
                    conn.stalled_since.set(Some(Instant::now()));
                }
                match wait_writable(conn).await {
                    Ok(n) => n,
                    Err(_) => {
                        conn.kill();
                        return false;
                    }
                }
            }
            Err(_) => {
                conn.kill();
                return false;
            }
        };
        if conn.dead.get() {
            return false;
        }
        let progress = advance(shard, conn, &mut conn.link.out.borrow_mut(), n);
        if progress.frames > 0 {
            conn.stalled_since.set(None);
        }
        if progress.close_sent {
            conn.set_phase(Phase::Closing);
            // SAFETY: `fd` is this connection's open socket.
            unsafe { libc::shutdown(conn.fd, libc::SHUT_WR) };
            return false;
        }
    }
}

/// Writes `conn`'s queue now, from the distributor, if its writer is idle (parked waiting for
/// work); otherwise, or when anything but a complete write happens, wakes the writer, which
/// handles full sockets, errors and the close.
pub(crate) fn write_now(shard: &Shard, conn: &Conn) {
    if conn.dead.get() || !conn.link.writer_idle() {
        return conn.link.wake_writer();
    }
    let mut out = conn.link.out.borrow_mut();
    if out.closing() {
        drop(out);
        return conn.link.wake_writer();
    }
    match send_once(shard, conn, &mut out) {
        None => {}
        Some(Ok(n)) => {
            advance(shard, conn, &mut out, n);
            if out.has_work() {
                drop(out);
                conn.link.wake_writer();
            }
        }
        Some(Err(_)) => {
            drop(out);
            conn.link.wake_writer();
        }
    }
}

/// Puts a pending `lagged` notice in front, then one `sendmsg` of the queue; `None` when there
/// is nothing to send.
fn send_once(shard: &Shard, conn: &Conn, out: &mut OutQueue) -> Option<io::Result<usize>> {
    if out
        .prepare(|dropped| lagged_frame(dropped, &shard.shared.stamp()))
        .is_some()
    {
        shard.stats().lagged_total.fetch_add(1, Relaxed);
    }
    out.has_work()
        .then(|| send_queued(conn.fd, out, &mut shard.iov.borrow_mut()))
}

/// Marks `n` bytes written to `conn` and counts them.
fn advance(shard: &Shard, conn: &Conn, out: &mut OutQueue, n: usize) -> Progress {
    conn.written.set(conn.written.get().wrapping_add(n as u32));
    let stats = shard.stats();
    let progress = out.advance(n);
    stats.bytes_sent_total.fetch_add(n as u64, Relaxed);
    stats.writes_total.fetch_add(1, Relaxed);
    if progress.frames > 0 {
        stats.frames_sent_total.fetch_add(progress.frames, Relaxed);
    }
    progress
}

/// One `sendmsg` of the queued frames, without blocking.
fn send_queued(fd: RawFd, out: &OutQueue, iov: &mut Vec<libc::iovec>) -> io::Result<usize> {
    iov.clear();
    iov.extend(out.slices(MAX_IOV).map(|s| libc::iovec {
        iov_base: s.as_ptr() as *mut libc::c_void,
        iov_len: s.len(),
    }));
    // SAFETY: a zeroed msghdr is valid; we point it at `iov`, whose entries borrow `out`,
    // which outlives this call.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Waits until the socket takes more bytes, through glommio's own write path (a poll on the
/// ring): the unwritten part of the first queued frame goes out as soon as it can.
async fn wait_writable(conn: &Conn) -> io::Result<usize> {
    poll_fn(|cx| {
        if conn.dead.get() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let out = conn.link.out.borrow();
        let Some(first) = out.slices(1).next() else {
            return Poll::Ready(Ok(0));
        };
        let mut stream = conn.stream.borrow_mut();
        Pin::new(&mut *stream).poll_write(cx, first)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle connection carries these two task futures: keep them small (DESIGN.md aims
    /// at under 3 KB per idle connection, all included).
    #[test]
    fn connection_tasks_stay_small() {
        fn size<F>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        glommio::LocalExecutor::default().run(async {
            let l = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let shared = std::sync::Arc::new(crate::broadcast::HubShared::new(1, 4));
            let shard = Rc::new(Shard::new(0, Default::default(), shared));
            let conn = Rc::new(Conn::new(TcpStream::connect(addr).await.unwrap()));
            let serve = serve_conn(shard.clone(), conn.clone());
            let writer = writer_task(shard.clone(), conn.clone());
            eprintln!(
                "Conn {} B, serve {} B, writer {} B",
                std::mem::size_of::<Conn>(),
                size(&serve),
                size(&writer)
            );
            assert!(std::mem::size_of::<Conn>() <= 400);
            assert!(size(&serve) <= 512, "serve future: {} B", size(&serve));
            assert!(size(&writer) <= 256, "writer future: {} B", size(&writer));
        });
    }
}
