//! The WebSocket client side, sans-IO: the upgrade request and the check of its answer, the
//! parse of server frames in place, and masked client frames. The event loops own the sockets.
//! permessage-deflate's part (the offer's answer, inflating) is in [`crate::deflate`].
//!
//! Loadgen parses frames itself instead of going through a general client library: a server
//! frame is a 2 to 10 byte header in front of an unmasked payload, and reading it in place from
//! the thread's receive buffer is what keeps loadgen's cost per delivery far below the
//! server's.

use std::fmt;

use crate::deflate;

/// Frame opcodes (RFC 6455 §5.2).
pub mod opcode {
    /// Continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Binary frame.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// A fresh random `Sec-WebSocket-Key`.
pub fn new_key() -> String {
    tungstenite::handshake::client::generate_key()
}

/// The upgrade request for `path` (with its query) on `host` (the `Host` header's value).
pub fn handshake_request(
    host: &str,
    path: &str,
    key: &str,
    headers: &[(String, String)],
) -> Vec<u8> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in headers {
        req.push_str(name);
        req.push_str(": ");
        req.push_str(value);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// `path` (which may hold a query already) with our server's resume query:
/// `since=<last seq received>` and, when one was seen, `epoch=<the stream's epoch>`.
pub fn resume_path(path: &str, since: u64, epoch: Option<u64>) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    match epoch {
        Some(epoch) => format!("{path}{sep}since={since}&epoch={epoch}"),
        None => format!("{path}{sep}since={since}"),
    }
}

/// Why an upgrade failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The server answered with this HTTP status instead of 101.
    Status(u16),
    /// A 101 whose `Sec-WebSocket-Accept` does not match the key.
    BadAccept,
    /// Not an HTTP answer, or a head over 16 KiB.
    Malformed,
    /// The 101 names an extension the request did not offer.
    UnofferedExtension,
    /// The 101 accepts permessage-deflate with parameters that are unknown, repeated or out of
    /// range, or accepts it twice.
    BadDeflate,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(code) => write!(f, "http {code}"),
            Self::BadAccept => f.write_str("bad accept key"),
            Self::Malformed => f.write_str("malformed answer"),
            Self::UnofferedExtension => f.write_str("extension not offered"),
            Self::BadDeflate => f.write_str("bad permessage-deflate answer"),
        }
    }
}

/// Largest answer head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// A valid answer to the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgrade {
    /// Bytes of the answer's head (frames may follow in the same bytes).
    pub head_len: usize,
    /// permessage-deflate, if the server accepted it.
    pub deflate: Option<deflate::Agreed>,
}

/// Checks the answer to the upgrade: `Ok(None)` while the head is incomplete, `Ok(Some(_))`
/// once it is a valid 101. `offered_deflate`: the request offered permessage-deflate
/// ([`deflate::OFFER`]); any other extension in the answer is an error.
pub fn parse_handshake_response(
    buf: &[u8],
    key: &str,
    offered_deflate: bool,
) -> Result<Option<Upgrade>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(None),
        _ => return Err(HandshakeError::Malformed),
    };
    match resp.code {
        Some(101) => {}
        Some(code) => return Err(HandshakeError::Status(code)),
        None => return Err(HandshakeError::Malformed),
    }
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let accept = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"));
    match accept {
        Some(h) if h.value == expected.as_bytes() => {}
        _ => return Err(HandshakeError::BadAccept),
    }
    let extensions = resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
        .map(|h| h.value);
    Ok(Some(Upgrade {
        head_len: len,
        deflate: deflate::accept(extensions, offered_deflate)?,
    }))
}

/// The head of one server frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// Last frame of its message.
    pub fin: bool,
    /// The opcode (see [`opcode`]).
    pub opcode: u8,
    /// RSV1: with permessage-deflate, the first frame of a compressed message.
    pub compressed: bool,
    /// Bytes before the payload.
    pub header_len: usize,
    /// Payload bytes.
    pub payload_len: usize,
}

impl FrameHead {
    /// Header plus payload.
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// A server frame that breaks RFC 6455 or our limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Server frames must not be masked.
    Masked,
    /// Reserved bits set: RSV2 or RSV3, or RSV1 without permessage-deflate or on a control or
    /// continuation frame.
    Reserved,
    /// Payload over the limit.
    TooLarge,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Masked => "masked server frame",
            Self::Reserved => "reserved bits set",
            Self::TooLarge => "frame over the size limit",
        })
    }
}

/// Parses the head of the frame at the start of `buf`: `Ok(None)` until the header is complete
/// (the payload may still be partial; compare [`FrameHead::total_len`] with `buf.len()`).
/// `deflate`: permessage-deflate was negotiated, so RSV1 may mark a message's first frame.
pub fn parse_frame(
    buf: &[u8],
    max_payload: usize,
    deflate: bool,
) -> Result<Option<FrameHead>, FrameError> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Ok(None),
    };
    let compressed = b0 & 0x40 != 0;
    let first_data = matches!(b0 & 0x0f, opcode::TEXT | opcode::BINARY);
    if b0 & 0x30 != 0 || (compressed && !(deflate && first_data)) {
        return Err(FrameError::Reserved);
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let (header_len, payload_len) = match b1 & 0x7f {
        126 if buf.len() < 4 => return Ok(None),
        126 => (4, u16::from_be_bytes([buf[2], buf[3]]) as u64),
        127 if buf.len() < 10 => return Ok(None),
        127 => (
            10,
            u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
        ),
        n => (2, n as u64),
    };
    if payload_len > max_payload as u64 {
        return Err(FrameError::TooLarge);
    }
    Ok(Some(FrameHead {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        compressed,
        header_len,
        payload_len: payload_len as usize,
    }))
}

/// Appends one complete, masked client frame to `out`.
pub fn encode_frame(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// The status code of a close frame's payload (1005 when it carries none).
pub fn close_code(payload: &[u8]) -> u16 {
    match payload {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 1005,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_of_every_length_encoding() {
        for len in [0usize, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let mut frame = vec![0x81];
            if len < 126 {
                frame.push(len as u8);
            } else if len <= 65_535 {
                frame.push(126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                frame.push(127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
            let header = frame.len();
            frame.resize(header + len, b'x');
            let head = parse_frame(&frame, 1 << 20, false).unwrap().unwrap();
            assert_eq!(
                (head.fin, head.opcode, head.compressed),
                (true, opcode::TEXT, false)
            );
            assert_eq!((head.header_len, head.payload_len), (header, len));
            // Every prefix shorter than the header is "incomplete", never an error.
            for cut in 0..header {
                assert_eq!(parse_frame(&frame[..cut], 1 << 20, false), Ok(None));
            }
        }
    }

    #[test]
    fn refuses_what_a_server_must_not_send() {
        assert_eq!(
            parse_frame(&[0x81, 0x85], 100, false),
            Err(FrameError::Masked)
        );
        assert_eq!(
            parse_frame(&[0xC1, 0x05], 100, false),
            Err(FrameError::Reserved)
        );
        assert_eq!(
            parse_frame(&[0x81, 126, 1, 0], 100, false),
            Err(FrameError::TooLarge)
        );
    }

    #[test]
    fn rsv1_marks_a_compressed_message_only_where_negotiated() {
        // A compressed text message's first frame, final or not.
        for b0 in [0xC1, 0x41, 0xC2] {
            let head = parse_frame(&[b0, 0x05], 100, true).unwrap().unwrap();
            assert!(head.compressed);
            // Without permessage-deflate, RSV1 is still a protocol error.
            assert_eq!(
                parse_frame(&[b0, 0x05], 100, false),
                Err(FrameError::Reserved)
            );
        }
        assert!(
            !parse_frame(&[0x81, 0x05], 100, true)
                .unwrap()
                .unwrap()
                .compressed
        );
        // Never on a continuation or a control frame; RSV2 and RSV3 never.
        for b0 in [0xC0, 0xC9, 0xC8, 0xA1, 0x91] {
            assert_eq!(
                parse_frame(&[b0, 0x00], 100, true),
                Err(FrameError::Reserved),
                "{b0:#x}"
            );
        }
    }

    #[test]
    fn masked_frames_decode_with_tungstenite() {
        use tungstenite::protocol::frame::FrameHeader;
        let mut out = Vec::new();
        encode_frame(opcode::TEXT, &[b'a'; 300], [1, 2, 3, 4], &mut out);
        let mut cursor = std::io::Cursor::new(&out[..]);
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert_eq!((header.is_final, len), (true, 300));
        assert_eq!(header.mask, Some([1, 2, 3, 4]));
        let mut payload = out[cursor.position() as usize..].to_vec();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= [1, 2, 3, 4][i & 3];
        }
        assert_eq!(payload, vec![b'a'; 300]);
    }

    #[test]
    fn resume_paths_keep_the_query() {
        assert_eq!(
            resume_path("/api/monitoring/ws", 41, Some(7)),
            "/api/monitoring/ws?since=41&epoch=7"
        );
        assert_eq!(resume_path("/ws?token=t", 0, None), "/ws?token=t&since=0");
    }

    #[test]
    fn checks_the_accept_key() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x00";
        let plain = Upgrade {
            head_len: ok.len() - 2,
            deflate: None,
        };
        assert_eq!(parse_handshake_response(ok, key, false), Ok(Some(plain)));
        // Offering permessage-deflate does not oblige the server to take it.
        assert_eq!(parse_handshake_response(ok, key, true), Ok(Some(plain)));
        assert_eq!(parse_handshake_response(&ok[..20], key, false), Ok(None));
        let wrong = b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert_eq!(
            parse_handshake_response(wrong, key, false),
            Err(HandshakeError::BadAccept)
        );
        let refused = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_handshake_response(refused, key, false),
            Err(HandshakeError::Status(503))
        );
        assert_eq!(
            parse_handshake_response(b"SSH-2.0\r\n\r\n", key, false),
            Err(HandshakeError::Malformed)
        );
    }

    /// A 101 for the sample key of RFC 6455 with `extensions` as its extensions header.
    fn answer(extensions: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
             Sec-WebSocket-Extensions: {extensions}\r\n\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn reads_the_extension_the_server_accepted() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let hub =
            answer("permessage-deflate; server_no_context_takeover; client_no_context_takeover");
        let up = parse_handshake_response(&hub, key, true).unwrap().unwrap();
        assert_eq!(up.head_len, hub.len());
        let agreed = up.deflate.unwrap();
        assert!(agreed.server_no_context_takeover && agreed.client_no_context_takeover);
        let bits =
            answer("permessage-deflate; server_no_context_takeover; server_max_window_bits=12");
        let agreed = parse_handshake_response(&bits, key, true)
            .unwrap()
            .unwrap()
            .deflate;
        assert_eq!(agreed.unwrap().server_max_window_bits, 12);
        // An extension the request did not offer fails the upgrade.
        assert_eq!(
            parse_handshake_response(&hub, key, false),
            Err(HandshakeError::UnofferedExtension)
        );
        assert_eq!(
            parse_handshake_response(&answer("x-webkit-deflate-frame"), key, true),
            Err(HandshakeError::UnofferedExtension)
        );
        assert_eq!(
            parse_handshake_response(
                &answer("permessage-deflate; server_max_window_bits=20"),
                key,
                true
            ),
            Err(HandshakeError::BadDeflate)
        );
        // Checked only once the accept key is.
        let forged = String::from_utf8(answer("x-foo"))
            .unwrap()
            .replace("xOo=", "xOo_");
        assert_eq!(
            parse_handshake_response(forged.as_bytes(), key, true),
            Err(HandshakeError::BadAccept)
        );
    }
}
