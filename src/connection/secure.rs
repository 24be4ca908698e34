//! A connection's reads and writes through its TLS session ([`tls`](super::tls)), when the
//! port speaks TLS: [`Conn`]'s `poll_read`, `poll_write`, `poll_flush` and `poll_close` come
//! here, and the writer's batches go through [`send_batch`].
//!
//! Ciphertext is read, and records are encrypted, in this thread's two buffers (one thread
//! per shard, so they are the shard's): a connection holds only its session, plus, while
//! they exist, ciphertext the socket did not take (`pending`) and plaintext a small read did
//! not take.
//!
//! Who writes the session's pending ciphertext: before the upgrade (the TLS handshake's
//! flights, during the request head) and on HTTP connections, the connection's one task, from
//! its reads and writes; once upgraded, the writing half (a read that leaves ciphertext to
//! send only wakes it), so the reader never waits on a full socket.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{ready, Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

use super::tls::{TlsError, TlsSession, MAX_KEPT};
use super::{Conn, READ_CHUNK};
use crate::hub::counters::ShardStats;
use crate::hub::queue::OutQueue;

/// The most plaintext one write encrypts: four records, about as much as one `sendmsg` of the
/// plain path carries in a burst.
const MAX_PLAIN: usize = 64 * 1024;

/// After a write the socket did not take whole: one record. The rest waits in the queue (as
/// shared frames) rather than as this connection's ciphertext, so a slow reader holds at most
/// one record of its own.
const MAX_PLAIN_SLOW: usize = 16 * 1024;

/// Reads that yield no plaintext (handshake messages, empty records) one poll goes through
/// before it lets the shard's other tasks run.
const MAX_QUIET_READS: usize = 8;

/// A connection's TLS state.
#[derive(Debug)]
pub(crate) struct Secure {
    session: TlsSession,
    /// Decrypted bytes a read's buffer had no room for (the request head is read in small
    /// steps): `plain[plain_at..]`, empty and unallocated otherwise.
    plain: Vec<u8>,
    plain_at: usize,
    /// The peer's close_notify came, or its socket ended.
    eof: bool,
    /// Our close_notify is encrypted.
    closed: bool,
    /// The last write left ciphertext behind: the next encrypts one record only.
    slow: bool,
}

impl Secure {
    pub(crate) fn new(session: TlsSession) -> Self {
        Self {
            session,
            plain: Vec::new(),
            plain_at: 0,
            eof: false,
            closed: false,
            slow: false,
        }
    }

    /// Counts how the session's handshake went, once the request head was read (or not).
    pub(crate) fn count_handshake(&self, stats: &ShardStats) {
        let s = &self.session;
        if s.is_handshaking() {
            stats.tls_handshake_failures_total.fetch_add(1, Relaxed);
            return;
        }
        stats.tls_handshakes_total.fetch_add(1, Relaxed);
        if s.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            stats.tls_resumed_total.fetch_add(1, Relaxed);
        }
        if s.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_2) {
            stats.tls12_handshakes_total.fetch_add(1, Relaxed);
        }
    }

    /// Whether ciphertext waits for the socket.
    pub(crate) fn has_pending(&self) -> bool {
        !self.session.pending().is_empty()
    }
}

/// This thread's (this shard's) TLS buffers.
struct Buffers {
    /// Ciphertext is read into this (behind the session's kept bytes) and decrypted in place.
    read: Vec<u8>,
    /// Records are encrypted into this and written from it at once.
    write: Vec<u8>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers {
        read: vec![0; READ_CHUNK + MAX_KEPT],
        write: Vec::with_capacity(MAX_PLAIN + MAX_PLAIN / 64),
    });
}

fn io_error(e: TlsError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Conn {
    /// Plaintext into `buf`: what is left from the last read, or the socket's next records
    /// decrypted. `Ok(0)` at the peer's close_notify or the socket's end.
    pub(super) fn poll_read_tls(
        &self,
        tls: &RefCell<Secure>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        for _ in 0..MAX_QUIET_READS {
            {
                let mut s = tls.borrow_mut();
                if s.plain_at < s.plain.len() {
                    let n = buf.len().min(s.plain.len() - s.plain_at);
                    buf[..n].copy_from_slice(&s.plain[s.plain_at..s.plain_at + n]);
                    s.plain_at += n;
                    if s.plain_at == s.plain.len() {
                        s.plain = Vec::new();
                        s.plain_at = 0;
                    }
                    return Poll::Ready(Ok(n));
                }
                if s.eof {
                    return Poll::Ready(Ok(0));
                }
            }
            if self.opened.get() {
                if tls.borrow().has_pending() {
                    self.link.wake_writer();
                }
            } else {
                // Our handshake flight goes out before we wait for the peer's answer to it.
                ready!(self.poll_flush_tls(tls, cx))?;
            }
            let read = BUFFERS.with_borrow_mut(|b| self.read_records(tls, cx, &mut b.read, buf));
            match read {
                Poll::Ready(Ok(None)) => {}
                Poll::Ready(Ok(Some(n))) => return Poll::Ready(Ok(n)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One read of ciphertext into `scratch`, processed: `Some(n)` bytes of plaintext copied to
    /// `buf` (the rest kept), `Some(0)` at the end, `None` when it carried no application data.
    fn read_records(
        &self,
        tls: &RefCell<Secure>,
        cx: &mut Context<'_>,
        scratch: &mut [u8],
        buf: &mut [u8],
    ) -> Poll<io::Result<Option<usize>>> {
        let mut s = tls.borrow_mut();
        let k = s.session.load_kept(scratch).map_err(io_error)?;
        let n = ready!(self.poll_read_raw(cx, &mut scratch[k..]))?;
        if n == 0 {
            s.eof = true;
            return Poll::Ready(Ok(Some(0)));
        }
        let input = match s.session.on_read(scratch, k + n) {
            Ok(input) => input,
            Err(e) => {
                // rustls's alert, if it made one, then the end: best effort, no waiting.
                let alert = s.session.pending();
                if !alert.is_empty() {
                    let _ = self.send_raw(alert);
                }
                return Poll::Ready(Err(io_error(e)));
            }
        };
        s.eof |= input.peer_closed;
        if input.plain == 0 {
            return Poll::Ready(Ok(s.eof.then_some(0)));
        }
        let taken = buf.len().min(input.plain);
        buf[..taken].copy_from_slice(&scratch[..taken]);
        if taken < input.plain {
            s.plain = scratch[taken..input.plain].to_vec();
            s.plain_at = 0;
        }
        Poll::Ready(Ok(Some(taken)))
    }

    /// Writes the session's pending ciphertext, waiting for the socket as needed.
    pub(super) fn poll_flush_tls(
        &self,
        tls: &RefCell<Secure>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut s = tls.borrow_mut();
            let pending = s.session.pending();
            if pending.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut *self.stream.borrow_mut()).poll_write(cx, pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            s.session.consumed(n);
            self.count_written(n);
        }
    }

    /// Encrypts `buf` (up to [`MAX_PLAIN`] of it) behind any pending ciphertext and writes
    /// what the socket takes; the rest becomes pending. Returns the plaintext taken.
    pub(super) fn poll_write_tls(
        &self,
        tls: &RefCell<Secure>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_flush_tls(tls, cx))?;
        let mut s = tls.borrow_mut();
        let result = BUFFERS.with_borrow_mut(|b| {
            b.write.clear();
            let taken = s
                .session
                .encrypt([buf], MAX_PLAIN, &mut b.write)
                .map_err(io_error)?;
            self.write_or_keep(&mut s, &b.write)?;
            Ok(taken)
        });
        Poll::Ready(result)
    }

    /// Pending ciphertext, then our close_notify, then the write side shut.
    pub(super) fn poll_close_tls(
        &self,
        tls: &RefCell<Secure>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_flush_tls(tls, cx))?;
        let mut s = tls.borrow_mut();
        if !std::mem::replace(&mut s.closed, true) {
            BUFFERS.with_borrow_mut(|b| {
                b.write.clear();
                let _ = s.session.close_notify(&mut b.write);
                self.write_or_keep(&mut s, &b.write)
            })?;
            drop(s);
            ready!(self.poll_flush_tls(tls, cx))?;
        }
        Pin::new(&mut *self.stream.borrow_mut()).poll_close(cx)
    }

    /// Writes what the socket takes of `records` at once; the rest is kept as pending.
    fn write_or_keep(&self, s: &mut Secure, records: &[u8]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let n = match self.send_raw(records) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        self.count_written(n);
        s.session.keep_unwritten(&records[n..]);
        s.slow = n < records.len();
        Ok(())
    }

    /// The socket's bytes, straight from it first (as the plain path reads).
    fn poll_read_raw(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if let Some(res) = self.try_read(buf) {
            return Poll::Ready(res);
        }
        Pin::new(&mut *self.stream.borrow_mut()).poll_read(cx, buf)
    }

    /// After our close frame: close_notify, behind what is pending (the writing half then
    /// flushes it all before it shuts the socket's write side).
    pub(super) fn queue_close_notify(&self, tls: &RefCell<Secure>) {
        let mut s = tls.borrow_mut();
        if !std::mem::replace(&mut s.closed, true) {
            BUFFERS.with_borrow_mut(|b| {
                b.write.clear();
                let _ = s.session.close_notify(&mut b.write);
                s.session.keep_unwritten(&b.write);
            });
        }
    }
}

/// The writer's batch over TLS: pending ciphertext first (`WouldBlock` while the socket does
/// not take all of it), then the queued frames encrypted in as few records as they fit, written
/// in one `send`; the part the socket does not take is kept as pending. Returns the plaintext
/// bytes of the queue taken (the queue advances by them: they are the session's now).
pub(super) fn send_batch(conn: &Conn, tls: &RefCell<Secure>, out: &OutQueue) -> io::Result<usize> {
    let mut s = tls.borrow_mut();
    let pending = s.session.pending();
    if !pending.is_empty() {
        let n = conn.send_raw(pending)?;
        conn.count_written(n);
        s.session.consumed(n);
        if s.has_pending() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
    }
    let max = if s.slow { MAX_PLAIN_SLOW } else { MAX_PLAIN };
    BUFFERS.with_borrow_mut(|b| {
        b.write.clear();
        let taken = s
            .session
            .encrypt(out.slices(super::writer::MAX_IOV), max, &mut b.write)
            .map_err(io_error)?;
        conn.write_or_keep(&mut s, &b.write)?;
        Ok(taken)
    })
}

/// Best effort after a panic, without waiting: `frame` (a close frame) and close_notify, when
/// nothing is pending and the session is not borrowed.
pub(super) fn send_close_now(conn: &Conn, tls: &RefCell<Secure>, frame: &[u8]) {
    let Ok(mut s) = tls.try_borrow_mut() else {
        return;
    };
    if s.has_pending() || s.closed {
        return;
    }
    let _ = BUFFERS.try_with(|b| {
        let Ok(mut b) = b.try_borrow_mut() else {
            return;
        };
        b.write.clear();
        if s.session
            .encrypt([frame], frame.len(), &mut b.write)
            .is_ok()
        {
            let _ = s.session.close_notify(&mut b.write);
            s.closed = true;
            let _ = conn.send_raw(&b.write);
        }
    });
}
