//! permessage-deflate (RFC 7692), the receiving side only, sans-IO: the offer, the check of
//! the server's answer, and the inflation of compressed messages.
//!
//! Loadgen never compresses what it sends (the extension allows that): it only inflates. A
//! server that resets its compressor after every message (`server_no_context_takeover`, which
//! our hub always answers) lets one inflater per thread, reset per message, serve every
//! connection; a server that keeps its context needs one inflater per connection.

use std::fmt;

use flate2::{Decompress, FlushDecompress, Status};

use crate::client::HandshakeError;

/// The offer, as Chrome sends it: `Sec-WebSocket-Extensions: permessage-deflate;
/// client_max_window_bits` (the client may be told a window for what it compresses, which
/// loadgen never does).
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// The name of the extension.
const NAME: &str = "permessage-deflate";

/// What a deflate stream's sender strips from the end of each message (RFC 7692 §7.2.1): the
/// empty stored block of a sync flush, appended again before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The parameters a server accepted permessage-deflate with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The server compresses each message from a fresh window: each inflates alone.
    pub server_no_context_takeover: bool,
    /// The client must not keep its context (loadgen sends nothing compressed).
    pub client_no_context_takeover: bool,
    /// The server's LZ77 window, 8 to 15 bits (15 when not said).
    pub server_max_window_bits: u8,
    /// The window the client may use, 8 to 15 bits (15 when not said).
    pub client_max_window_bits: u8,
}

impl Default for Agreed {
    fn default() -> Self {
        Self {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }
    }
}

/// Checks the `Sec-WebSocket-Extensions` values of a 101: `Ok(None)` when the server accepted
/// no extension, `Ok(Some(_))` with what it agreed to. An extension we did not offer (any
/// extension at all when `offered` is false), permessage-deflate twice, or a parameter that is
/// unknown, repeated or out of range is an error (RFC 6455 §9.1, RFC 7692 §7.1).
pub fn accept<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
    offered: bool,
) -> Result<Option<Agreed>, HandshakeError> {
    let mut agreed = None;
    for value in values {
        let value = std::str::from_utf8(value).map_err(|_| HandshakeError::BadDeflate)?;
        for ext in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let mut parts = ext.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            if !offered || !name.eq_ignore_ascii_case(NAME) {
                return Err(HandshakeError::UnofferedExtension);
            }
            if agreed.is_some() {
                return Err(HandshakeError::BadDeflate);
            }
            agreed = Some(params(parts).ok_or(HandshakeError::BadDeflate)?);
        }
    }
    Ok(agreed)
}

/// The parameters of the server's permessage-deflate; `None` if one is unknown, repeated or
/// out of range.
fn params<'a>(parts: impl Iterator<Item = &'a str>) -> Option<Agreed> {
    let mut a = Agreed::default();
    let mut seen = [false; 4];
    for part in parts {
        let (name, value) = match part.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (part, None),
        };
        let i = match name {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return None,
        };
        if std::mem::replace(&mut seen[i], true) {
            return None;
        }
        match (i, value) {
            (0, None) => a.server_no_context_takeover = true,
            (1, None) => a.client_no_context_takeover = true,
            (2, Some(v)) => a.server_max_window_bits = window_bits(v)?,
            // We offered client_max_window_bits, so the server may set it.
            (3, Some(v)) => a.client_max_window_bits = window_bits(v)?,
            _ => return None,
        }
    }
    Some(a)
}

/// A window size parameter: 8 to 15, digits only.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 2 {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// Not a valid deflate stream (or one that needs context this inflater does not have).
    Corrupt,
    /// Inflated, the message would pass the size limit.
    TooLarge,
}

impl fmt::Display for InflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Corrupt => "bad compressed message",
            Self::TooLarge => "inflated message over the size limit",
        })
    }
}

/// Inflates messages into one output buffer that is reused (cleared, never shrunk), so the
/// steady state allocates nothing per message.
#[derive(Debug)]
pub struct Inflater {
    /// The decompressor for servers that reset their context per message; reset before each.
    fresh: Decompress,
    /// The last message inflated.
    out: Vec<u8>,
    /// Largest inflated message accepted.
    limit: usize,
}

impl Inflater {
    /// An inflater whose messages may be at most `limit` bytes once inflated.
    pub fn new(limit: usize) -> Self {
        Self {
            fresh: Decompress::new(false),
            out: Vec::new(),
            limit,
        }
    }

    /// A decompressor for one connection whose server keeps its context across messages (not
    /// reset between them); pass it to [`Self::inflate_with`].
    pub fn context() -> Decompress {
        Decompress::new(false)
    }

    /// Inflates one message compressed from a fresh window (`server_no_context_takeover`):
    /// `payload` is the message's compressed bytes (its frames' payloads put together).
    pub fn inflate(&mut self, payload: &[u8]) -> Result<&[u8], InflateError> {
        self.fresh.reset(false);
        run(&mut self.fresh, &mut self.out, self.limit, payload)?;
        Ok(&self.out)
    }

    /// Inflates the next message of a connection whose server keeps its context, with that
    /// connection's decompressor `d`.
    pub fn inflate_with(
        &mut self,
        d: &mut Decompress,
        payload: &[u8],
    ) -> Result<&[u8], InflateError> {
        run(d, &mut self.out, self.limit, payload)?;
        Ok(&self.out)
    }
}

/// Inflates `payload` and the tail into `out` (cleared first), up to `limit` bytes.
fn run(
    d: &mut Decompress,
    out: &mut Vec<u8>,
    limit: usize,
    payload: &[u8],
) -> Result<(), InflateError> {
    out.clear();
    for input in [payload, &TAIL[..]] {
        if feed(d, out, limit, input)? {
            // A final block (BFINAL) ended the stream: what follows it is not inflated, and the
            // next message starts a new stream.
            d.reset(false);
            break;
        }
    }
    Ok(())
}

/// Inflates all of `input` into `out`, growing it up to `limit` (plus one byte, to tell a
/// message of exactly `limit` bytes from a larger one). Returns whether the stream ended.
fn feed(
    d: &mut Decompress,
    out: &mut Vec<u8>,
    limit: usize,
    mut input: &[u8],
) -> Result<bool, InflateError> {
    loop {
        if out.len() == out.capacity() {
            if out.len() > limit {
                return Err(InflateError::TooLarge);
            }
            let grow = out.capacity().max(4096).min(limit + 1 - out.len());
            out.reserve_exact(grow);
        }
        let (in_before, out_before) = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(input, out, FlushDecompress::Sync)
            .map_err(|_| InflateError::Corrupt)?;
        if out.len() > limit {
            return Err(InflateError::TooLarge);
        }
        let used = (d.total_in() - in_before) as usize;
        let produced = d.total_out() - out_before;
        input = &input[used..];
        match status {
            Status::StreamEnd => return Ok(true),
            // Output room is left, so what is missing is input: all of it has been used.
            _ if out.len() < out.capacity() && input.is_empty() => return Ok(false),
            _ if out.len() < out.capacity() && used == 0 && produced == 0 => {
                return Err(InflateError::Corrupt)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use flate2::{Compress, Compression, FlushCompress};

    use super::*;

    /// What a permessage-deflate sender puts on the wire for `msg`: raw deflate, sync-flushed,
    /// the `00 00 ff ff` tail stripped. `c` is reset first unless the sender keeps its context.
    pub(crate) fn compress(c: &mut Compress, msg: &[u8], keep_context: bool) -> Vec<u8> {
        if !keep_context {
            c.reset();
        }
        let mut out = Vec::with_capacity(msg.len() + 64);
        let start = c.total_in();
        loop {
            let used = (c.total_in() - start) as usize;
            if out.len() == out.capacity() {
                out.reserve(4096);
            }
            c.compress_vec(&msg[used..], &mut out, FlushCompress::Sync)
                .unwrap();
            if (c.total_in() - start) as usize == msg.len() && out.len() < out.capacity() {
                break;
            }
        }
        assert!(
            out.ends_with(&TAIL),
            "a sync flush ends with the empty stored block"
        );
        out.truncate(out.len() - 4);
        out
    }

    pub(crate) fn compressor() -> Compress {
        Compress::new(Compression::default(), false)
    }

    fn sample(n: usize, salt: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        let mut x = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        while v.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Text-like: repetitive, with some noise, like a metrics snapshot.
            v.extend_from_slice(b"{\"topic\":\"orders-");
            v.extend_from_slice(itoa::Buffer::new().format(x % 1000).as_bytes());
            v.extend_from_slice(b"\",\"bytesIn\":");
            v.extend_from_slice(itoa::Buffer::new().format(x >> 40).as_bytes());
            v.push(b'}');
        }
        v.truncate(n);
        v
    }

    #[test]
    fn inflates_messages_each_from_a_fresh_window() {
        let mut c = compressor();
        let mut inf = Inflater::new(1 << 20);
        for (i, n) in [0usize, 1, 100, 5000, 185_000].into_iter().enumerate() {
            let msg = sample(n, i as u64);
            let wire = compress(&mut c, &msg, false);
            assert_eq!(inf.inflate(&wire).unwrap(), &msg[..], "{n} bytes");
        }
        // The buffer is kept: inflating again does not grow it.
        let cap = inf.out.capacity();
        let wire = compress(&mut c, &sample(185_000, 9), false);
        inf.inflate(&wire).unwrap();
        assert_eq!(inf.out.capacity(), cap);
    }

    #[test]
    fn inflates_a_stream_that_keeps_its_context() {
        let mut c = compressor();
        let mut inf = Inflater::new(1 << 20);
        let mut d = Inflater::context();
        let msg = sample(20_000, 3);
        let first = compress(&mut c, &msg, true);
        let second = compress(&mut c, &msg, true);
        // The second refers back into the first: far smaller, and only inflates in context.
        assert!(second.len() * 10 < first.len());
        assert_eq!(inf.inflate_with(&mut d, &first).unwrap(), &msg[..]);
        assert_eq!(inf.inflate_with(&mut d, &second).unwrap(), &msg[..]);
        assert_eq!(inf.inflate(&second), Err(InflateError::Corrupt));
    }

    #[test]
    fn refuses_what_would_pass_the_limit_and_garbage() {
        let mut c = compressor();
        let msg = vec![b'x'; 10_000];
        let wire = compress(&mut c, &msg, false);
        assert_eq!(Inflater::new(10_000).inflate(&wire).unwrap(), &msg[..]);
        assert_eq!(
            Inflater::new(9_999).inflate(&wire),
            Err(InflateError::TooLarge)
        );
        let mut inf = Inflater::new(1 << 20);
        assert_eq!(inf.inflate(&[0xff; 64]), Err(InflateError::Corrupt));
        // After an error the next message inflates (the inflater is reset).
        assert_eq!(inf.inflate(&wire).unwrap(), &msg[..]);
    }

    #[test]
    fn accepts_what_was_offered_only() {
        let ok = |v: &str| accept([v.as_bytes()], true);
        assert_eq!(accept([], true), Ok(None));
        assert_eq!(accept([], false), Ok(None));
        let hub = ok("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
            .unwrap()
            .unwrap();
        assert!(hub.server_no_context_takeover && hub.client_no_context_takeover);
        assert_eq!(hub.server_max_window_bits, 15);
        let bits = ok("permessage-deflate;server_max_window_bits=10; client_max_window_bits=\"9\"")
            .unwrap()
            .unwrap();
        assert_eq!(
            (bits.server_max_window_bits, bits.client_max_window_bits),
            (10, 9)
        );
        assert!(!bits.server_no_context_takeover);
        assert_eq!(ok("permessage-deflate"), Ok(Some(Agreed::default())));
        // Not offered, or not what was offered.
        assert_eq!(
            accept([&b"permessage-deflate"[..]], false),
            Err(HandshakeError::UnofferedExtension)
        );
        assert_eq!(
            ok("x-webkit-deflate-frame"),
            Err(HandshakeError::UnofferedExtension)
        );
        assert_eq!(
            ok("permessage-deflate, x-foo"),
            Err(HandshakeError::UnofferedExtension)
        );
        // Malformed answers.
        for bad in [
            "permessage-deflate, permessage-deflate",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
        ] {
            assert_eq!(ok(bad), Err(HandshakeError::BadDeflate), "{bad}");
        }
        // Two header lines count together.
        assert_eq!(
            accept([&b"permessage-deflate"[..], b"permessage-deflate"], true),
            Err(HandshakeError::BadDeflate)
        );
    }
}
