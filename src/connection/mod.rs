//! One client connection on a shard: its state and lifecycle. The request head
//! ([`head`]), and the two halves of the connection's one task, reading ([`reader`], frames
//! decoded by [`decoder`]) and writing ([`writer`]), are in their own
//! files; the pure handshake rules are in [`handshake`], a new client's first frames in
//! [`greet`], and the connections' four-byte clock in [`clock`]. When the port speaks TLS, every
//! read and write goes through the connection's session: [`secure`] drives it, [`tls`] is the
//! session itself (rustls's unbuffered API, no I/O).
//!
//! A connection that is not a WebSocket upgrade is handed, with the bytes read so far, to the
//! hub's [`Requests`] handler (the `http` part implements it).

mod client;
mod clock;
pub(crate) mod decoder;
pub(crate) mod extensions;
mod greet;
pub(crate) mod handshake;
mod head;
pub(crate) mod inflate;
mod reader;
mod secure;
pub(crate) mod tls;
mod writer;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite, FutureExt};
use glommio::net::TcpStream;
use tracing::error;

use crate::hub::fanout::ClientLink;
use crate::hub::shard::{Phase, Shard, Timing};
use crate::protocol::{close_code, close_frame};

use self::clock::Millis;
use self::greet::{greet, pump_replay};
use self::head::Opening;
use self::secure::Secure;

/// A shard whose clients are [`Conn`]s.
pub(crate) type ConnShard = Shard<Conn>;

/// Serves the requests on the hub's port that are not WebSocket upgrades.
pub(crate) trait Requests: Send + Sync + 'static {
    /// Serves `conn`'s requests until it closes; `head` holds the bytes read so far (at least
    /// one complete request head).
    fn serve<'a>(
        &'a self,
        shard: &'a Rc<ConnShard>,
        conn: &'a Rc<Conn>,
        head: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = ()> + 'a>>;
}

/// A connection as its shard sees it.
pub(crate) struct Conn {
    pub(crate) link: ClientLink,
    stream: RefCell<TcpStream>,
    fd: RawFd,
    phase: Cell<Phase>,
    since: Cell<Millis>,
    last_seen: Cell<Millis>,
    pub(crate) last_ping: Cell<Millis>,
    stalled_since: Cell<Option<Millis>>,
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
    /// Negotiated permessage-deflate (counted in the shard's `deflate_clients`).
    deflate: Cell<bool>,
    /// Holds a place under the global connection limit.
    admitted: Cell<bool>,
    /// The TLS session, when the port speaks TLS (boxed: a plain connection pays 8 bytes).
    tls: Option<Box<RefCell<Secure>>>,
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
    fn new(stream: TcpStream, tls: Option<Box<RefCell<Secure>>>) -> Self {
        let now = Millis::now();
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
            deflate: Cell::new(false),
            admitted: Cell::new(false),
            tls,
        }
    }

    /// Counts bytes the socket took (see `written`).
    fn count_written(&self, n: usize) {
        self.written.set(self.written.get().wrapping_add(n as u32));
    }

    /// Whether TLS ciphertext waits for the socket (the writer has work even with an empty
    /// queue).
    fn tls_pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.borrow().has_pending())
    }

    /// The connection's times as the sweep sees them at `now`.
    pub(crate) fn timing(&self, now: Instant) -> Timing {
        let at = Millis::at(now);
        Timing {
            phase: self.phase.get(),
            since: self.since.get().instant(at, now),
            last_seen: self.last_seen.get().instant(at, now),
            last_ping: self.last_ping.get().instant(at, now),
            stalled_since: self.stalled_since.get().map(|s| s.instant(at, now)),
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
            let now = Millis::at(now);
            self.last_seen.set(now);
            if stalled {
                self.stalled_since.set(Some(now));
            }
        }
    }

    fn set_phase(&self, phase: Phase) {
        if self.phase.get() != phase {
            self.phase.set(phase);
            self.since.set(Millis::now());
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
        self.since.set(Millis::now());
    }

    /// Reads what the socket has, straight from it; glommio (a poll on the ring) is asked only
    /// when it has nothing, so a read that succeeds never leaves a poll armed.
    pub(crate) fn poll_read(
        &self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(tls) = &self.tls {
            return self.poll_read_tls(tls, cx, buf);
        }
        if let Some(res) = self.try_read(buf) {
            return Poll::Ready(res);
        }
        Pin::new(&mut *self.stream.borrow_mut()).poll_read(cx, buf)
    }

    /// One `recv` without waiting: `None` when the socket has nothing yet.
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        // SAFETY: `fd` is this connection's open socket; `buf` is valid for its length.
        let n = unsafe {
            libc::recv(
                self.fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Some(Ok(n as usize));
        }
        let e = io::Error::last_os_error();
        (e.kind() != io::ErrorKind::WouldBlock)
            .then_some(e)
            .map(Err)
    }

    /// One `send` without waiting.
    fn send_raw(&self, bytes: &[u8]) -> io::Result<usize> {
        // SAFETY: `fd` is this connection's open socket; `bytes` is valid for its length.
        let n = unsafe {
            libc::send(
                self.fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    pub(crate) fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(tls) = &self.tls {
            return self.poll_write_tls(tls, cx, buf);
        }
        Pin::new(&mut *self.stream.borrow_mut()).poll_write(cx, buf)
    }

    /// Writes what [`Self::poll_write`] left to send (TLS records the socket did not take).
    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.tls {
            Some(tls) => self.poll_flush_tls(tls, cx),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Flushes, then shuts the write side (after close_notify with TLS).
    pub(crate) fn poll_close(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(tls) = &self.tls {
            return self.poll_close_tls(tls, cx);
        }
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

/// Scratch space the connections of one shard share: used within one poll, never held across
/// an await, so no connection carries a buffer of its own.
#[derive(Debug)]
pub(crate) struct Scratch {
    /// simd-json parses client messages here, and unread input is discarded here.
    pub(crate) bytes: RefCell<Vec<u8>>,
    /// Client frames are read into this and decoded in place.
    pub(crate) read: RefCell<Vec<u8>>,
    /// The writers' `sendmsg` iovecs.
    pub(crate) iov: RefCell<Vec<libc::iovec>>,
    /// Inflates the connections' compressed messages (permessage-deflate), one at a time.
    pub(crate) inflater: RefCell<inflate::Inflater>,
}

/// The most bytes one read from a client's socket takes.
const READ_CHUNK: usize = 64 * 1024;

impl Default for Scratch {
    fn default() -> Self {
        Self {
            bytes: RefCell::default(),
            read: RefCell::new(vec![0; READ_CHUNK]),
            iov: RefCell::new(Vec::with_capacity(writer::MAX_IOV)),
            inflater: RefCell::default(),
        }
    }
}

async fn serve_conn(shard: Rc<ConnShard>, conn: Rc<Conn>) {
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
/// half-written (the connection's task is gone after a panic).
fn send_close_now(conn: &Conn, code: u16, reason: &str) {
    let at_boundary = conn
        .link
        .out
        .try_borrow()
        .is_ok_and(|out| out.at_frame_boundary());
    if conn.phase.get() == Phase::Open && at_boundary {
        let frame = close_frame(code, reason);
        if let Some(tls) = &conn.tls {
            return secure::send_close_now(conn, tls, &frame);
        }
        let _ = conn.send_raw(&frame);
    }
}

/// Removes the connection from its shard however its task ends.
struct Registered<'a> {
    shard: &'a ConnShard,
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
        if self.conn.deflate.get() {
            self.shard.stats().deflate_clients.fetch_sub(1, Relaxed);
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

async fn run(shard: &Rc<ConnShard>, conn: &Rc<Conn>, key: usize) {
    let opening = Box::pin(head::read(shard, conn)).await;
    if let Some(tls) = &conn.tls {
        tls.borrow().count_handshake(shard.stats());
    }
    let (tail, resume, deflate) = match opening {
        Opening::WebSocket(tail, resume, deflate) => (tail, resume, deflate),
        Opening::Http(bytes) => {
            // Boxed by the handler: hyper's connection state is allocated only for HTTP
            // connections, so it does not grow the task every WebSocket client carries.
            return shard.context.serve(shard, conn, bytes).await;
        }
        Opening::Refused => return,
    };
    let stats = shard.stats();
    stats.handshakes_total.fetch_add(1, Relaxed);
    stats.connections.fetch_add(1, Relaxed);
    conn.opened.set(true);
    if deflate {
        stats.deflate_clients.fetch_add(1, Relaxed);
        conn.deflate.set(true);
    }
    let now = Millis::now();
    conn.last_seen.set(now);
    conn.last_ping.set(now);
    conn.set_phase(Phase::Open);
    // The 101 is first in the queue, the greeting goes behind it, and both in one `sendmsg`
    // (one segment, one wake of the client).
    if !shard.config.echo {
        greet(shard, conn, key, resume);
    }
    if !writer::write_first(shard, conn) {
        return;
    }
    if shard.draining.get() {
        conn.close(close_code::GOING_AWAY, "server shutting down");
    }
    halves(shard, conn, key, tail, deflate).await;
}

/// One task per connection: the reader and the writer are its two halves, polled together (the
/// writer is idle most of the time; the distributor writes for it).
fn halves<'a>(
    shard: &'a ConnShard,
    conn: &'a Conn,
    key: usize,
    tail: Vec<u8>,
    deflate: bool,
) -> impl Future<Output = ((), ())> + 'a {
    futures_lite::future::zip(
        reader::ReadHalf::new(shard, conn, key, tail, deflate),
        writer::write_loop(shard, conn),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoRequests;

    impl Requests for NoRequests {
        fn serve<'a>(
            &'a self,
            _: &'a Rc<ConnShard>,
            _: &'a Rc<Conn>,
            _: Vec<u8>,
        ) -> Pin<Box<dyn Future<Output = ()> + 'a>> {
            Box::pin(async {})
        }
    }

    /// Every idle connection carries its state (`Conn`) and its one task: keep them small (the
    /// goal is 1 KB per idle connection, all included; BENCHMARKS.md "Memory per idle
    /// connection" has the whole account).
    #[test]
    fn connection_tasks_stay_small() {
        fn size<F>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        glommio::LocalExecutor::default().run(async {
            let l = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let shared = std::sync::Arc::new(crate::hub::HubShared::new(1, 4));
            let context: std::sync::Arc<dyn Requests> = std::sync::Arc::new(NoRequests);
            let shard = Rc::new(Shard::new(0, Default::default(), shared, context));
            let conn = Rc::new(Conn::new(TcpStream::connect(addr).await.unwrap(), None));
            let serve = serve_conn(shard.clone(), conn.clone());
            let reader = reader::ReadHalf::new(&shard, &conn, 0, Vec::new(), false);
            let writer = writer::write_loop(&shard, &conn);
            eprintln!(
                "Conn {} B, task {} B (reading half {} B, writing half {} B)",
                std::mem::size_of::<Conn>(),
                size(&serve),
                size(&reader),
                size(&writer),
            );
            // 400 until the four times became 4-byte `Millis`; 352 until TLS (a boxed session,
            // 8 bytes on a plain connection).
            assert!(std::mem::size_of::<Conn>() <= 360);
            // 520 (plus a 256 B writer task and tungstenite's 256 B read buffer) until the
            // reader and writer became the halves of one task and frames were decoded in the
            // shard's scratch buffer.
            assert!(size(&serve) <= 400, "connection task: {} B", size(&serve));
            assert!(size(&reader) <= 96, "reading half: {} B", size(&reader));
            assert!(size(&writer) <= 128, "writing half: {} B", size(&writer));
        });
    }
}
