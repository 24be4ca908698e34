//! Client frames read by the server's tungstenite context as a connection builds it (the
//! hub's `websocket` limits, the bytes after the head as the partially read tail), from a
//! socket that hands out arbitrary chunks with `WouldBlock` between them: no panic, a read loop
//! that ends, and no message over the configured maximum.
//!
//! Input: byte 0 picks the limit (even: the default 512 KiB; odd: a small
//! `max_message_size`), byte 1 the tail length and the chunk sizes; the rest is the stream.
#![no_main]

use std::io::{self, Read, Write};

use libfuzzer_sys::fuzz_target;
use takhin_monitor::fuzz_support::server_context;
use takhin_monitor::HubConfig;
use tungstenite::error::Error as WsError;
use tungstenite::Message;

/// The socket: every other read is `WouldBlock`, as the hub's adapter returns when the socket
/// has nothing; writes (tungstenite's own pong and close replies) are kept.
struct Socket<'a> {
    data: &'a [u8],
    max_chunk: usize,
    ready: bool,
    written: Vec<u8>,
}

impl Read for Socket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.ready = !self.ready;
        if !self.ready {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.data.len().min(buf.len()).min(self.max_chunk);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

impl Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let [limit, split, stream @ ..] = data else {
        return;
    };
    let cfg = if limit & 1 == 0 {
        HubConfig::default()
    } else {
        HubConfig::default().max_message_size(1 + usize::from(limit >> 1) * 8)
    };
    let max = cfg.max_message();
    let tail_len = usize::from(split & 0x3f).min(stream.len());
    let (tail, rest) = stream.split_at(tail_len);
    let mut ctx = server_context(&cfg, tail.to_vec());
    let mut socket = Socket {
        data: rest,
        max_chunk: [1, 2, 7, 4096][usize::from(split >> 6)],
        ready: false,
        written: Vec::new(),
    };
    // Every read either consumes input, blocks or ends: a bound on the calls proves no spin.
    let bound = 2 * stream.len() + 64;
    for _ in 0..bound {
        match ctx.read(&mut socket) {
            Ok(Message::Text(t)) => assert!(t.len() <= max, "text of {} > {max}", t.len()),
            Ok(Message::Binary(b)) => assert!(b.len() <= max, "binary of {} > {max}", b.len()),
            Ok(Message::Ping(p) | Message::Pong(p)) => assert!(p.len() <= 125),
            Ok(Message::Close(c)) => {
                if let Some(c) = c {
                    assert!(c.reason.len() <= 123);
                }
            }
            Ok(Message::Frame(_)) => panic!("a raw frame from read"),
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
    panic!("the read loop did not end within {bound} calls");
});
