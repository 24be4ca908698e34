//! The writer: everything queued for a client goes out in one `sendmsg` of the shared frames.
//! The distributor writes a batch itself when the writing half is idle ([`write_now`]); the
//! task keeps full sockets, errors and the close.

use std::future::poll_fn;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;

use futures_lite::AsyncWrite;

use super::{Conn, ConnShard};
use crate::hub::queue::{OutQueue, Progress};
use crate::hub::shard::Phase;
use crate::protocol::lagged_frame;

/// Most frames one `sendmsg` carries.
pub(super) const MAX_IOV: usize = 128;

/// The connection task's writing half: runs until the close frame is sent, the socket fails,
/// or the reader is done and nothing is left to write. A panic here is the connection task's
/// (caught by its shard, like the reader's).
pub(super) async fn write_loop(shard: &ConnShard, conn: &Conn) {
    loop {
        let go = poll_fn(|cx| {
            if conn.dead.get() {
                return Poll::Ready(false);
            }
            if conn.link.replaying() {
                // A resume: the next frames from the history, as the queue has room.
                super::pump_replay(shard, conn);
            }
            if conn.link.out.borrow().has_work() || conn.tls_pending() {
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
async fn flush(shard: &ConnShard, conn: &Conn) -> bool {
    loop {
        let Some(sent) = send_once(shard, conn, &mut conn.link.out.borrow_mut()) else {
            return true;
        };
        let n = match sent {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if conn.stalled_since.get().is_none() {
                    conn.stalled_since.set(Some(super::Millis::now()));
                }
                if let Some(tls) = &conn.tls {
                    // The session's ciphertext goes first; then the next batch.
                    if poll_fn(|cx| conn.poll_flush_tls(tls, cx)).await.is_err() {
                        conn.kill();
                        return false;
                    }
                    continue;
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
            if let Some(tls) = &conn.tls {
                // The close frame is encrypted, maybe not written yet: close_notify behind it,
                // and all of it out before the write side shuts.
                conn.queue_close_notify(tls);
                if poll_fn(|cx| conn.poll_flush_tls(tls, cx)).await.is_err() {
                    conn.kill();
                    return false;
                }
            }
            // SAFETY: `fd` is this connection's open socket.
            unsafe { libc::shutdown(conn.fd, libc::SHUT_WR) };
            return false;
        }
    }
}

/// Writes `conn`'s queue now, from the distributor, if its writer is idle (parked waiting for
/// work); otherwise, or when anything but a complete write happens, wakes the writer, which
/// handles full sockets, errors and the close.
pub(super) fn write_now(shard: &ConnShard, conn: &Conn) {
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
            if out.has_work() || conn.tls_pending() {
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

/// The first write of an upgraded connection, from its own task: the 101 and the greeting in
/// one `sendmsg`. Returns false when the socket failed (the connection is over); whatever did
/// not fit is left to the writing half.
pub(super) fn write_first(shard: &ConnShard, conn: &Conn) -> bool {
    let mut out = conn.link.out.borrow_mut();
    match send_once(shard, conn, &mut out) {
        None => true,
        Some(Ok(n)) => {
            advance(shard, conn, &mut out, n);
            true
        }
        Some(Err(e)) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// Puts a pending `lagged` notice in front, then one `sendmsg` of the queue; `None` when there
/// is nothing to send.
fn send_once(shard: &ConnShard, conn: &Conn, out: &mut OutQueue) -> Option<io::Result<usize>> {
    if out
        .prepare(|dropped| lagged_frame(dropped, &shard.shared.stamp()))
        .is_some()
    {
        shard.stats().lagged_total.fetch_add(1, Relaxed);
    }
    if !out.has_work() && !conn.tls_pending() {
        return None;
    }
    Some(match &conn.tls {
        Some(tls) => super::secure::send_batch(conn, tls, out),
        None => send_queued(conn.fd, out, &mut shard.local.iov.borrow_mut()),
    })
}

/// Marks `n` bytes of the queue written to `conn` (over TLS: encrypted, see
/// [`send_batch`](super::secure::send_batch)) and counts them.
fn advance(shard: &ConnShard, conn: &Conn, out: &mut OutQueue, n: usize) -> Progress {
    if conn.tls.is_none() {
        // Over TLS the socket's bytes are the ciphertext, counted where it is written.
        conn.count_written(n);
    }
    let stats = shard.stats();
    let progress = out.advance(n);
    stats.bytes_sent_total.fetch_add(n as u64, Relaxed);
    stats.writes_total.fetch_add(1, Relaxed);
    if progress.frames > 0 {
        stats.frames_sent_total.fetch_add(progress.frames, Relaxed);
    }
    if progress.saved > 0 {
        stats
            .deflate_saved_bytes_total
            .fetch_add(progress.saved, Relaxed);
    }
    progress
}

/// One `sendmsg` of the queued frames, without blocking.
fn send_queued(fd: RawFd, out: &OutQueue, iov: &mut Vec<libc::iovec>) -> io::Result<usize> {
    // A write that ends with our close frame is followed at once by shutdown(SHUT_WR):
    // MSG_MORE holds it for the FIN, so both go in one segment.
    let more = if out.ends_with_close(MAX_IOV) {
        libc::MSG_MORE
    } else {
        0
    };
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
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | more)
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
