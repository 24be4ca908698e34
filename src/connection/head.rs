//! The request head: read within its limits, then an upgrade answered here, a refusal sent,
//! or the bytes handed to the HTTP side.

use std::future::poll_fn;
use std::io;
use std::sync::atomic::Ordering::Relaxed;

use tracing::debug;

use super::handshake::{self, Head, Resume};
use super::{Conn, ConnShard};
use crate::hub::shard::Phase;

/// How a connection's first request went.
pub(super) enum Opening {
    /// Upgraded: the bytes after the head (frames the client sent early), and the resume the
    /// client asked for. The `101` answer is queued, not written yet: it goes out with the
    /// greeting, in one `sendmsg`. Whether permessage-deflate was negotiated (the queue
    /// already knows whether it takes compressed broadcasts).
    WebSocket(Vec<u8>, Option<Box<Resume>>, bool),
    /// Not for the WebSocket endpoint: everything read so far, for the HTTP server.
    Http(Vec<u8>),
    /// Answered with an error, or gone.
    Refused,
}

/// Reads the request head and answers it when it is for the WebSocket endpoint.
pub(super) async fn read(shard: &ConnShard, conn: &Conn) -> Opening {
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
        Head::Upgrade(response, resume, deflate) => {
            let tail = if head_len == buf.len() {
                Vec::new()
            } else {
                buf.split_off(head_len)
            };
            let mut out = conn.link.out.borrow_mut();
            out.push_upgrade(response.into_bytes().into_boxed_slice());
            if deflate.is_some_and(|d| d.full_window) {
                out.set_deflate();
            }
            drop(out);
            Opening::WebSocket(tail, resume.map(Box::new), deflate.is_some())
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
async fn respond(shard: &ConnShard, conn: &Conn, response: &str) {
    conn.set_phase(Phase::Closing);
    if write_all(conn, response.as_bytes()).await.is_ok()
        && poll_fn(|cx| conn.poll_close(cx)).await.is_ok()
    {
        discard_until_eof(shard, conn).await;
    }
}

/// Reads up to `want` total bytes into `buf`, waiting for at least one.
async fn read_some(conn: &Conn, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    let len = buf.len();
    buf.resize(want, 0);
    // Straight to the socket first (`Conn::poll_read` tries that before glommio): the head is
    // usually there already, and a read through glommio that returns less than asked arms a
    // poll on the ring that is cancelled later.
    let res = poll_fn(|cx| conn.poll_read(cx, &mut buf[len..])).await;
    buf.truncate(len + *res.as_ref().unwrap_or(&0));
    res
}

async fn write_all(conn: &Conn, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = poll_fn(|cx| conn.poll_write(cx, bytes)).await?;
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
pub(super) async fn discard_until_eof(shard: &ConnShard, conn: &Conn) {
    loop {
        let res = poll_fn(|cx| {
            let mut sink = shard.local.bytes.borrow_mut();
            let len = sink.len().max(4096);
            sink.resize(len, 0);
            conn.poll_read(cx, &mut sink[..])
        })
        .await;
        if !matches!(res, Ok(n) if n > 0) {
            return;
        }
    }
}
