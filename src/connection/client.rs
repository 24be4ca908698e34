//! [`Conn`] as its shard sees it ([`Client`]): serving an accepted socket, the distributor's
//! writes, and the sweep's looks, pings, closes, kills and resets.

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Instant;

use glommio::net::TcpStream;
use tracing::error;

use super::secure::Secure;
use super::tls::TlsSession;
use super::{clock::Millis, serve_conn, writer, Conn, ConnShard, Requests, Scratch};
use crate::hub::shard::{Client, Timing};
use crate::protocol::PING_FRAME;

impl Client for Conn {
    type Context = dyn Requests;
    type Local = Scratch;

    /// Serves one accepted socket to its end. A panic inside closes this connection only.
    ///
    /// The socket is wrapped before the task starts, so the task's future holds a pointer to
    /// it, not the stream itself.
    fn serve(shard: Rc<ConnShard>, stream: TcpStream) -> impl Future<Output = ()> + 'static {
        // TCP_NODELAY comes from the listener (set in `bind_all`): no call per connection.
        if let Some(bytes) = shard.config.send_buffer {
            set_send_buffer(stream.as_raw_fd(), bytes);
        }
        let (tls, refused) = match shard.shared.tls.get().map(|t| TlsSession::new(t.current())) {
            None => (None, false),
            Some(Ok(session)) => (Some(Box::new(RefCell::new(Secure::new(session)))), false),
            Some(Err(e)) => {
                // rustls refuses a configuration only when it cannot work at all (the hub
                // checked it when it loaded it): this connection ends at once.
                error!(shard = shard.id, error = %e, "TLS session refused");
                (None, true)
            }
        };
        let conn = Rc::new(Self::new(stream, tls));
        if refused {
            conn.kill();
        }
        serve_conn(shard, conn)
    }

    fn write_now(&self, shard: &ConnShard) {
        writer::write_now(shard, self);
    }

    fn timing(&self, now: Instant) -> Timing {
        Self::timing(self, now)
    }

    fn note_acknowledged(&self, now: Instant, quiet: bool) {
        Self::note_acknowledged(self, now, quiet);
    }

    fn ping(&self, now: Instant) {
        self.last_ping.set(Millis::at(now));
        self.link.out.borrow_mut().push_control(PING_FRAME);
        self.link.wake_writer();
    }

    fn is_websocket(&self) -> bool {
        Self::is_websocket(self)
    }

    fn close(&self, code: u16, reason: &str) {
        Self::close(self, code, reason);
    }

    fn kill(&self) {
        Self::kill(self);
    }

    fn abort(&self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: `fd` is this connection's open socket; the option value is a `linger` that
        // lives across the call, and its size is passed with it. A failure leaves a plain close.
        unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                std::ptr::addr_of!(linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        Self::kill(self);
    }
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
