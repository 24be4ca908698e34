//! Client frames decoded as they arrive (RFC 6455 section 5, the server's side): masked
//! frames, fragmentation, control frames between fragments, UTF-8 checked as the fragments of a
//! text message come (a bad sequence fails at the fragment that holds it), close codes and
//! reasons checked, and the size limit applied to every frame and whole message from its header,
//! before its payload is read.
//!
//! With permessage-deflate negotiated (RFC 7692, [`Decoder::set_deflate`]), RSV1 on the first
//! frame of a text or binary message marks it compressed. Its fragments are kept compressed
//! (the limit applies to their size from the header, as for any message), and the message is
//! inflated once, when its last fragment is in, by the shard's [`Inflater`], with the limit
//! applied again to the inflated size; a compressed text is checked for UTF-8 then, whole. The
//! hub always negotiates `client_no_context_takeover`, so no inflate state outlives a message.
//!
//! The decoder holds nothing between frames: bytes are read into the shard's scratch buffer,
//! and only the bytes of an unfinished frame (or the fragments of an unfinished message) are kept
//! here, in buffers that are freed as soon as the frame (or the message) completes. An idle
//! connection carries two empty vectors.

use std::ops::ControlFlow;

use super::inflate::Inflater;

/// A complete client message or control frame. The slices are unmasked payloads.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Msg<'a> {
    /// A text message, valid UTF-8.
    Text(&'a [u8]),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping with its payload (at most 125 bytes): answered with a pong carrying it.
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame's payload: empty, or a status code followed by a UTF-8 reason. The code
    /// may still be one an endpoint must not send (see [`close_reply`]).
    Close(&'a [u8]),
}

/// Why the client is failed, and so the close code it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// 1002: a frame the protocol forbids.
    Protocol,
    /// 1009: a frame or message over the limit.
    TooBig,
    /// 1007: a text message or close reason that is not UTF-8.
    Utf8,
    /// 1007: a compressed message that does not inflate.
    Deflate,
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xa;

/// The first header byte's RSV1 bit: a compressed message, once permessage-deflate is on.
const RSV1: u8 = 0x40;
/// RSV2 and RSV3: no extension gives them a meaning.
const RSV23: u8 = 0x30;

/// The state of one connection's incoming stream.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    /// Bytes of a frame not complete yet; unallocated between frames.
    partial: Vec<u8>,
    /// The payload of a fragmented message so far; unallocated between messages.
    message: Vec<u8>,
    /// The opcode of the fragmented message being assembled (text or binary); 0 when none.
    opcode: u8,
    /// How much of a fragmented text message is known to be valid UTF-8.
    checked: usize,
    /// permessage-deflate was negotiated: RSV1 may mark a message compressed.
    deflate: bool,
    /// The fragmented message being assembled is compressed (its fragments are kept as they
    /// came and inflated at the end).
    compressed: bool,
}

impl Decoder {
    /// A decoder that starts with bytes already read (the frames a client sent right behind its
    /// request head).
    pub(crate) fn with_pending(bytes: Vec<u8>) -> Self {
        Self {
            partial: bytes,
            ..Self::default()
        }
    }

    /// Lets messages come compressed: permessage-deflate was negotiated (with
    /// `client_no_context_takeover`, so each message inflates on its own).
    pub(crate) fn set_deflate(&mut self) {
        self.deflate = true;
    }

    /// Whether bytes are waiting that [`Self::feed`] with nothing new would decode.
    pub(crate) fn has_pending(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Decodes `fresh` (bytes just read; unmasked in place) after any bytes kept from before,
    /// handing every complete message to `on`, until `on` breaks, the input runs out, or a
    /// frame breaks the protocol. What is left of an unfinished frame is kept for the next call.
    /// After a `Break` or an error the decoder must not be fed again. `max` limits every
    /// message, compressed or inflated; `inflater` (the shard's) inflates compressed ones, and
    /// once the messages inflated since its last [`Inflater::take_count`] come to
    /// [`INFLATE_SLICE`](super::inflate::INFLATE_SLICE) the decoding stops after the current
    /// frame, the rest kept for a later call (with nothing new, see [`Self::has_pending`]).
    pub(crate) fn feed<R>(
        &mut self,
        fresh: &mut [u8],
        max: usize,
        inflater: &mut Inflater,
        mut on: impl FnMut(Msg<'_>) -> ControlFlow<R>,
    ) -> Result<ControlFlow<R>, Fault> {
        let mut input = Input {
            message: &mut self.message,
            opcode: &mut self.opcode,
            checked: &mut self.checked,
            compressed: &mut self.compressed,
            deflate: self.deflate,
            inflater,
            max,
        };
        if self.partial.is_empty() {
            let (used, flow) = input.frames(fresh, &mut on)?;
            if flow.is_continue() && used < fresh.len() {
                self.partial.extend_from_slice(&fresh[used..]);
            }
            return Ok(flow);
        }
        let mut partial = std::mem::take(&mut self.partial);
        partial.extend_from_slice(fresh);
        let (used, flow) = input.frames(&mut partial, &mut on)?;
        if used < partial.len() {
            partial.drain(..used);
            // Kept: the rest of a frame (the allocation goes with the frame once complete).
            self.partial = partial;
        }
        Ok(flow)
    }
}

/// The parts of a [`Decoder`] that frames update, borrowed apart from the bytes they come in.
struct Input<'d> {
    message: &'d mut Vec<u8>,
    opcode: &'d mut u8,
    checked: &'d mut usize,
    compressed: &'d mut bool,
    deflate: bool,
    inflater: &'d mut Inflater,
    max: usize,
}

impl Input<'_> {
    /// Decodes complete frames from the start of `buf`. Returns the bytes consumed.
    fn frames<R>(
        &mut self,
        buf: &mut [u8],
        on: &mut impl FnMut(Msg<'_>) -> ControlFlow<R>,
    ) -> Result<(usize, ControlFlow<R>), Fault> {
        let mut at = 0;
        while let Some((header, len)) = self.header(&buf[at..])? {
            // `len` is at most the limit; the sum is checked all the same (no limit is too big).
            let end = at.saturating_add(header).saturating_add(len);
            if end > buf.len() {
                break;
            }
            let (head, payload) = buf[at..end].split_at_mut(header);
            let key = [
                head[header - 4],
                head[header - 3],
                head[header - 2],
                head[header - 1],
            ];
            unmask(payload, key);
            let first = head[0];
            at = end;
            let flow = self.frame(first, payload, on)?;
            if flow.is_break() {
                return Ok((at, flow));
            }
            if self.inflater.slice_spent() {
                // The rest waits for the reader's next turn (kept as it came, still masked).
                break;
            }
        }
        Ok((at, ControlFlow::Continue(())))
    }

    /// Checks a frame's header as soon as it is complete. Returns the header's length (mask
    /// key included) and the payload's, or `None` until the header is all there.
    fn header(&self, buf: &[u8]) -> Result<Option<(usize, usize)>, Fault> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        if b0 & RSV23 != 0 {
            return Err(Fault::Protocol);
        }
        if b0 & RSV1 != 0 && !(self.deflate && matches!(opcode, OP_TEXT | OP_BINARY)) {
            // Only a message's first frame says it is compressed, and only once negotiated
            // (a text or binary frame inside an open message fails below).
            return Err(Fault::Protocol);
        }
        let control = match opcode {
            OP_CONTINUATION if *self.opcode == 0 => return Err(Fault::Protocol),
            OP_TEXT | OP_BINARY if *self.opcode != 0 => return Err(Fault::Protocol),
            OP_CONTINUATION | OP_TEXT | OP_BINARY => false,
            OP_CLOSE | OP_PING | OP_PONG => true,
            _ => return Err(Fault::Protocol),
        };
        if b1 & 0x80 == 0 {
            // A client's frames are masked.
            return Err(Fault::Protocol);
        }
        let (size, len) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(b) => (4, u64::from(u16::from_be_bytes([b[0], b[1]]))),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => (10, u64::from_be_bytes(b.try_into().expect("8 bytes"))),
                None => return Ok(None),
            },
            n => (2, u64::from(n)),
        };
        if control && (!fin || len > 125) || len >> 63 != 0 {
            // (A 64-bit length has its top bit clear.)
            return Err(Fault::Protocol);
        }
        let so_far = if opcode == OP_CONTINUATION {
            self.message.len() as u64
        } else {
            0
        };
        if so_far.saturating_add(len) > self.max as u64 {
            return Err(Fault::TooBig);
        }
        let header = size + 4;
        if buf.len() < header {
            return Ok(None);
        }
        Ok(Some((header, len as usize)))
    }

    /// Acts on one complete, unmasked frame.
    fn frame<R>(
        &mut self,
        first: u8,
        payload: &[u8],
        on: &mut impl FnMut(Msg<'_>) -> ControlFlow<R>,
    ) -> Result<ControlFlow<R>, Fault> {
        let fin = first & 0x80 != 0;
        let rsv1 = first & RSV1 != 0;
        match first & 0x0f {
            OP_PING => Ok(on(Msg::Ping(payload))),
            OP_PONG => Ok(on(Msg::Pong)),
            OP_CLOSE => {
                match payload.len() {
                    0 => {}
                    1 => return Err(Fault::Protocol),
                    _ => {
                        std::str::from_utf8(&payload[2..]).map_err(|_| Fault::Utf8)?;
                    }
                }
                Ok(on(Msg::Close(payload)))
            }
            opcode @ (OP_TEXT | OP_BINARY) if fin && rsv1 => {
                self.deliver_inflated(opcode, payload, on)
            }
            opcode @ (OP_TEXT | OP_BINARY) if fin => {
                if opcode == OP_TEXT {
                    std::str::from_utf8(payload).map_err(|_| Fault::Utf8)?;
                    Ok(on(Msg::Text(payload)))
                } else {
                    Ok(on(Msg::Binary(payload)))
                }
            }
            opcode @ (OP_TEXT | OP_BINARY) => {
                *self.opcode = opcode;
                *self.compressed = rsv1;
                self.append(payload)?;
                Ok(ControlFlow::Continue(()))
            }
            _ => {
                // A continuation (the header allowed it: a message is open).
                self.append(payload)?;
                if !fin {
                    return Ok(ControlFlow::Continue(()));
                }
                if std::mem::take(self.compressed) {
                    let message = std::mem::take(self.message);
                    let opcode = std::mem::take(self.opcode);
                    return self.deliver_inflated(opcode, &message, on);
                }
                let text = *self.opcode == OP_TEXT;
                if text && *self.checked != self.message.len() {
                    // The message ends inside a UTF-8 sequence.
                    return Err(Fault::Utf8);
                }
                let message = std::mem::take(self.message);
                *self.opcode = 0;
                *self.checked = 0;
                Ok(on(if text {
                    Msg::Text(&message)
                } else {
                    Msg::Binary(&message)
                }))
            }
        }
    }

    /// Inflates a whole compressed message, checks it and hands it to `on`.
    fn deliver_inflated<R>(
        &mut self,
        opcode: u8,
        compressed: &[u8],
        on: &mut impl FnMut(Msg<'_>) -> ControlFlow<R>,
    ) -> Result<ControlFlow<R>, Fault> {
        let message = self.inflater.inflate(compressed, self.max)?;
        let flow = if opcode == OP_TEXT {
            match std::str::from_utf8(message) {
                Ok(_) => Ok(on(Msg::Text(message))),
                Err(_) => Err(Fault::Utf8),
            }
        } else {
            Ok(on(Msg::Binary(message)))
        };
        self.inflater.trim();
        flow
    }

    /// Adds a fragment to the open message; a text message's new bytes are checked at once,
    /// up to a sequence the next fragment may complete (a compressed one's only once inflated).
    fn append(&mut self, payload: &[u8]) -> Result<(), Fault> {
        self.message.extend_from_slice(payload);
        if *self.opcode == OP_TEXT && !*self.compressed {
            match std::str::from_utf8(&self.message[*self.checked..]) {
                Ok(_) => *self.checked = self.message.len(),
                Err(e) if e.error_len().is_none() => *self.checked += e.valid_up_to(),
                Err(_) => return Err(Fault::Utf8),
            }
        }
        Ok(())
    }
}

/// XORs `payload` with the client's masking key, eight bytes at a time.
fn unmask(payload: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// The close frame that answers a client's close (its payload as [`Msg::Close`] gave it): the
/// same code and reason, nothing for an empty one, and 1002 for a code no endpoint may send.
pub(crate) fn close_reply(payload: &[u8]) -> Vec<u8> {
    if payload.len() < 2 {
        return vec![0x80 | OP_CLOSE, 0];
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let allowed = matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999);
    let payload = if allowed {
        payload
    } else {
        b"\x03\xeaProtocol violation".as_slice()
    };
    let mut frame = Vec::with_capacity(2 + payload.len());
    frame.extend_from_slice(&[0x80 | OP_CLOSE, payload.len() as u8]);
    frame.extend_from_slice(payload);
    frame
}

/// The pong that answers a ping with `payload` (at most 125 bytes).
pub(crate) fn pong(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(2 + payload.len());
    frame.extend_from_slice(&[0x80 | OP_PONG, payload.len() as u8]);
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::super::inflate::{bomb, compress};
    use super::*;

    /// A client frame: masked with a fixed key.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![first];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong,
        Close(Vec<u8>),
    }

    /// Feeds `bytes` in chunks of `chunk`; returns the messages and how it ended.
    fn decode(bytes: &[u8], chunk: usize, max: usize) -> (Vec<Got>, Result<(), Fault>) {
        decode_as(false, bytes, chunk, max)
    }

    /// [`decode`], with permessage-deflate negotiated or not.
    fn decode_as(
        deflate: bool,
        bytes: &[u8],
        chunk: usize,
        max: usize,
    ) -> (Vec<Got>, Result<(), Fault>) {
        let mut d = Decoder::default();
        if deflate {
            d.set_deflate();
        }
        let mut inflater = Inflater::default();
        let mut got = Vec::new();
        for piece in bytes.chunks(chunk) {
            let mut piece = piece.to_vec();
            let r = d.feed(&mut piece, max, &mut inflater, |m| {
                got.push(match m {
                    Msg::Text(t) => Got::Text(String::from_utf8(t.to_vec()).unwrap()),
                    Msg::Binary(b) => Got::Binary(b.to_vec()),
                    Msg::Ping(p) => Got::Ping(p.to_vec()),
                    Msg::Pong => Got::Pong,
                    Msg::Close(c) => return ControlFlow::Break(Got::Close(c.to_vec())),
                });
                ControlFlow::Continue(())
            });
            match r {
                Err(f) => return (got, Err(f)),
                Ok(ControlFlow::Break(close)) => {
                    got.push(close);
                    return (got, Ok(()));
                }
                Ok(ControlFlow::Continue(())) => {}
            }
        }
        (got, Ok(()))
    }

    #[test]
    fn messages_decode_whole_or_byte_by_byte() {
        let mut stream = frame(0x81, b"hello");
        stream.extend(frame(0x82, &[0, 1, 2]));
        stream.extend(frame(0x89, b"p"));
        stream.extend(frame(0x8a, b""));
        let big = "x".repeat(70_000);
        stream.extend(frame(0x81, big.as_bytes()));
        stream.extend(frame(0x81, &"y".repeat(300).into_bytes()));
        stream.extend(frame(0x88, b"\x03\xe8bye"));
        for chunk in [1, 3, 7, 4096, usize::MAX] {
            let (got, end) = decode(&stream, chunk, 1 << 20);
            assert_eq!(end, Ok(()));
            assert_eq!(
                got,
                [
                    Got::Text("hello".into()),
                    Got::Binary(vec![0, 1, 2]),
                    Got::Ping(b"p".to_vec()),
                    Got::Pong,
                    Got::Text(big.clone()),
                    Got::Text("y".repeat(300)),
                    Got::Close(b"\x03\xe8bye".to_vec()),
                ],
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn fragments_join_with_control_frames_between_them() {
        let mut stream = frame(0x01, b"hel");
        stream.extend(frame(0x89, b"mid"));
        stream.extend(frame(0x00, b"l"));
        stream.extend(frame(0x80, b"o"));
        stream.extend(frame(0x02, b"\x01"));
        stream.extend(frame(0x80, b"\x02"));
        for chunk in [1, 5, usize::MAX] {
            let (got, end) = decode(&stream, chunk, 100);
            assert_eq!(end, Ok(()));
            assert_eq!(
                got,
                [
                    Got::Ping(b"mid".to_vec()),
                    Got::Text("hello".into()),
                    Got::Binary(vec![1, 2]),
                ]
            );
        }
    }

    #[test]
    fn utf8_is_checked_per_fragment_and_across_them() {
        // "€" is e2 82 ac: split across fragments it is fine.
        let mut split = frame(0x01, b"a\xe2");
        split.extend(frame(0x00, b"\x82"));
        split.extend(frame(0x80, b"\xacb"));
        assert_eq!(decode(&split, 1, 100).0, [Got::Text("a€b".into())]);
        // A bad byte fails at its own fragment, before the message ends.
        let mut bad = frame(0x01, b"ok");
        bad.extend(frame(0x00, b"\xff"));
        let (got, end) = decode(&bad, usize::MAX, 100);
        assert_eq!((got, end), (vec![], Err(Fault::Utf8)));
        // A message that ends inside a sequence.
        let mut cut = frame(0x01, b"a");
        cut.extend(frame(0x80, b"\xe2\x82"));
        assert_eq!(decode(&cut, usize::MAX, 100).1, Err(Fault::Utf8));
        assert_eq!(decode(&frame(0x81, b"\xc3"), 1, 100).1, Err(Fault::Utf8));
        // A close reason is UTF-8 too.
        assert_eq!(
            decode(&frame(0x88, b"\x03\xe8\xff"), 9, 100).1,
            Err(Fault::Utf8)
        );
    }

    #[test]
    fn protocol_violations_fail() {
        let unmasked = vec![0x81, 0x02, b'h', b'i'];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unmasked", unmasked),
            ("rsv1", frame(0xc1, b"x")),
            ("rsv3", frame(0x91, b"x")),
            ("reserved opcode 3", frame(0x83, b"")),
            ("reserved control opcode", frame(0x8b, b"")),
            ("continuation first", frame(0x80, b"x")),
            (
                "text inside a message",
                [frame(0x01, b"a"), frame(0x81, b"b")].concat(),
            ),
            ("fragmented ping", frame(0x09, b"")),
            ("long ping", frame(0x89, &[0; 126])),
            ("one-byte close", frame(0x88, b"\x03")),
        ];
        for (name, bytes) in cases {
            assert_eq!(decode(&bytes, 1, 1000).1, Err(Fault::Protocol), "{name}");
        }
    }

    #[test]
    fn the_limit_applies_from_the_header() {
        // Only the header of a frame over the limit is needed to refuse it.
        let big = frame(0x81, &[b'a'; 200]);
        let (got, end) = decode(&big[..8], usize::MAX, 100);
        assert_eq!((got, end), (vec![], Err(Fault::TooBig)));
        let huge = [0x81, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(decode(&huge, usize::MAX, 100).1, Err(Fault::TooBig));
        // The top bit of a 64-bit length must be clear, whatever the limit.
        let top = [0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(decode(&top, usize::MAX, usize::MAX).1, Err(Fault::Protocol));
        let near = [
            0x81, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4,
        ];
        assert_eq!(
            decode(&near, usize::MAX, usize::MAX),
            (vec![], Ok(())),
            "waits, no overflow"
        );
        // Fragments count together.
        let mut parts = frame(0x01, &[b'a'; 60]);
        parts.extend(frame(0x80, &[b'a'; 41]));
        assert_eq!(decode(&parts, usize::MAX, 100).1, Err(Fault::TooBig));
        let at_limit = frame(0x81, &[b'a'; 100]);
        assert_eq!(decode(&at_limit, 7, 100).0.len(), 1);
    }

    #[test]
    fn inflating_stops_after_a_slice_and_the_rest_waits() {
        // Each message inflates to 400 KB: three of them pass the slice (1 MiB).
        let big = vec![b'a'; 400_000];
        let mut stream = Vec::new();
        for _ in 0..5 {
            stream.extend(frame(0xc1, &compress(&big, false)));
        }
        assert!(stream.len() < 5_000, "{} B read", stream.len());
        let mut d = Decoder::default();
        d.set_deflate();
        let mut inflater = Inflater::default();
        let mut seen = 0;
        let mut count = |_: Msg<'_>| {
            seen += 1;
            ControlFlow::<()>::Continue(())
        };
        let r = d.feed(&mut stream, 512 * 1024, &mut inflater, &mut count);
        assert_eq!(r, Ok(ControlFlow::Continue(())));
        assert_eq!(inflater.take_count(), (3, 1_200_000));
        assert!(d.has_pending(), "two messages wait, still compressed");
        let r = d.feed(&mut [], 512 * 1024, &mut inflater, &mut count);
        assert_eq!(r, Ok(ControlFlow::Continue(())));
        assert_eq!(inflater.take_count(), (2, 800_000));
        assert!(!d.has_pending());
        assert_eq!(seen, 5);
    }

    #[test]
    fn nothing_is_held_between_frames() {
        let mut d = Decoder::default();
        let mut stream = frame(0x81, &[b'a'; 1000]);
        stream.extend(frame(0x01, b"frag"));
        stream.extend(frame(0x80, b"ment"));
        let (first, rest) = stream.split_at_mut(500);
        let mut seen = 0;
        let r = d.feed(first, 10_000, &mut Inflater::default(), |_| {
            seen += 1;
            ControlFlow::<()>::Continue(())
        });
        assert_eq!((r, seen), (Ok(ControlFlow::Continue(())), 0));
        assert!(d.has_pending());
        let r = d.feed(rest, 10_000, &mut Inflater::default(), |_| {
            seen += 1;
            ControlFlow::<()>::Continue(())
        });
        assert_eq!((r, seen), (Ok(ControlFlow::Continue(())), 2));
        assert_eq!(d.partial.capacity(), 0, "the frame's buffer went with it");
        assert_eq!(d.message.capacity(), 0, "the message's buffer went with it");
        assert!(!d.has_pending());
    }

    #[test]
    fn compressed_messages_decode_whole_or_byte_by_byte() {
        let text = "compressed text ".repeat(100);
        let mut stream = frame(0xc1, &compress(text.as_bytes(), false));
        stream.extend(frame(0xc2, &compress(&[0, 1, 2, 0, 1, 2], false)));
        // A final block (BFINAL) instead of a sync flush is fine too.
        stream.extend(frame(0xc1, &compress(b"final", true)));
        // Empty: nothing but an empty block, or nothing at all before the tail.
        stream.extend(frame(0xc1, b"\x00"));
        stream.extend(frame(0xc2, b"\x02\x00"));
        stream.extend(frame(0xc1, b""));
        // Plain messages still come as they are.
        stream.extend(frame(0x81, b"plain"));
        stream.extend(frame(0x88, b""));
        for chunk in [1, 3, 7, 4096, usize::MAX] {
            let (got, end) = decode_as(true, &stream, chunk, 1600);
            assert_eq!(end, Ok(()));
            assert_eq!(
                got,
                [
                    Got::Text(text.clone()),
                    Got::Binary(vec![0, 1, 2, 0, 1, 2]),
                    Got::Text("final".into()),
                    Got::Text(String::new()),
                    Got::Binary(vec![]),
                    Got::Text(String::new()),
                    Got::Text("plain".into()),
                    Got::Close(vec![]),
                ],
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn compressed_fragments_join_and_inflate_at_the_end() {
        let text = "fragmented, compressed: €".repeat(50);
        let c = compress(text.as_bytes(), false);
        // Cut anywhere, a UTF-8 sequence's bytes included: fragments are not checked alone.
        let (a, rest) = c.split_at(c.len() / 3);
        let (b, z) = rest.split_at(1);
        let mut stream = frame(0x41, a);
        stream.extend(frame(0x89, b"mid"));
        stream.extend(frame(0x00, b));
        stream.extend(frame(0x00, b""));
        stream.extend(frame(0x80, z));
        stream.extend(frame(0x42, &compress(b"\xff\xfe", false)));
        stream.extend(frame(0x80, b""));
        // The next message is plain again.
        stream.extend(frame(0x01, b"pl"));
        stream.extend(frame(0x80, b"ain"));
        for chunk in [1, 5, usize::MAX] {
            let (got, end) = decode_as(true, &stream, chunk, 2000);
            assert_eq!(end, Ok(()));
            assert_eq!(
                got,
                [
                    Got::Ping(b"mid".to_vec()),
                    Got::Text(text.clone()),
                    Got::Binary(vec![0xff, 0xfe]),
                    Got::Text("plain".into()),
                ],
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn compressed_messages_are_checked_once_inflated() {
        let cases: Vec<(&str, Vec<u8>, Fault)> = vec![
            // Block type 3 is reserved.
            ("bad deflate", frame(0xc1, b"\x07\x00"), Fault::Deflate),
            (
                "bad deflate, fragmented",
                [frame(0x42, b"\x07"), frame(0x80, b"\x00")].concat(),
                Fault::Deflate,
            ),
            (
                "bytes after the final block",
                frame(0xc1, &[compress(b"a", true), vec![0]].concat()),
                Fault::Deflate,
            ),
            (
                "not UTF-8",
                frame(0xc1, &compress(b"a\xff", false)),
                Fault::Utf8,
            ),
            (
                "ends inside a sequence",
                [frame(0x41, &compress(b"\xe2\x82", false)), frame(0x80, b"")].concat(),
                Fault::Utf8,
            ),
        ];
        for (name, bytes, fault) in cases {
            for chunk in [1, usize::MAX] {
                assert_eq!(
                    decode_as(true, &bytes, chunk, 100),
                    (vec![], Err(fault)),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn rsv_bits_need_permessage_deflate_and_a_first_frame() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("rsv2", frame(0xa1, b"x")),
            ("rsv3", frame(0x91, b"x")),
            ("rsv1 and rsv2", frame(0xe1, b"x")),
            ("rsv1 on a ping", frame(0xc9, b"")),
            ("rsv1 on a pong", frame(0xca, b"")),
            ("rsv1 on a close", frame(0xc8, b"")),
            ("rsv1 on a reserved opcode", frame(0xc3, b"")),
            (
                "rsv1 on a continuation",
                [frame(0x01, b"a"), frame(0xc0, b"\x00")].concat(),
            ),
            (
                "rsv1 on a compressed message's continuation",
                [frame(0x41, b"\x00"), frame(0xc0, b"")].concat(),
            ),
            (
                "a compressed message inside one",
                [frame(0x41, b"\x00"), frame(0xc1, b"")].concat(),
            ),
        ];
        for (name, bytes) in cases {
            assert_eq!(
                decode_as(true, &bytes, 1, 1000).1,
                Err(Fault::Protocol),
                "{name}"
            );
        }
        // Not negotiated: RSV1 is as wrong as the others.
        let c = frame(0xc1, &compress(b"x", false));
        assert_eq!(decode_as(false, &c, 1, 1000).1, Err(Fault::Protocol));
        assert_eq!(decode_as(true, &c, 1, 1000).0, [Got::Text("x".into())]);
    }

    #[test]
    fn the_limit_applies_compressed_and_inflated() {
        let data = vec![b'a'; 5000];
        let c = compress(&data, false);
        assert!(c.len() < 100);
        let whole = frame(0xc2, &c);
        let mut parts = frame(0x42, &c[..10]);
        parts.extend(frame(0x80, &c[10..]));
        for bytes in [&whole, &parts] {
            assert_eq!(
                decode_as(true, bytes, 7, 5000).0,
                [Got::Binary(data.clone())]
            );
            let mut d = Decoder::default();
            d.set_deflate();
            let mut inflater = Inflater::default();
            let r = d.feed(&mut bytes.clone(), 4999, &mut inflater, |_| {
                ControlFlow::<()>::Continue(())
            });
            assert_eq!(r, Err(Fault::TooBig));
            assert_eq!(
                inflater.produced(),
                5000,
                "inflating stopped past the limit"
            );
        }
        // The compressed bytes count from the header, as for a plain message.
        let big = frame(0xc1, &[0; 200]);
        assert_eq!(decode_as(true, &big[..8], 1, 100).1, Err(Fault::TooBig));
        let mut parts = frame(0x41, &[0; 60]);
        parts.extend(frame(0x80, &[0; 41]));
        assert_eq!(
            decode_as(true, &parts, usize::MAX, 100).1,
            Err(Fault::TooBig)
        );
    }

    #[test]
    fn a_zip_bomb_fails_quickly() {
        // 50 MiB of zeros in about 50 KB.
        let bomb = bomb(50);
        let max = 512 * 1024;
        assert!(bomb.len() < max);
        let mut d = Decoder::default();
        d.set_deflate();
        let mut inflater = Inflater::default();
        let start = std::time::Instant::now();
        let r = d.feed(&mut frame(0xc2, &bomb), max, &mut inflater, |_| {
            ControlFlow::<()>::Continue(())
        });
        let took = start.elapsed();
        assert_eq!(r, Err(Fault::TooBig));
        assert_eq!(inflater.produced(), max as u64 + 1);
        assert!(took < std::time::Duration::from_secs(1), "{took:?}");
    }

    #[test]
    fn replies_echo_or_correct_the_close() {
        assert_eq!(close_reply(b""), [0x88, 0]);
        assert_eq!(
            close_reply(b"\x03\xe8ok"),
            [0x88, 4, 0x03, 0xe8, b'o', b'k']
        );
        for bad in [999u16, 1004, 1005, 1006, 1014, 1015, 2999, 5000] {
            let reply = close_reply(&bad.to_be_bytes());
            assert_eq!(&reply[2..4], &1002u16.to_be_bytes(), "{bad}");
        }
        assert_eq!(pong(b"hi"), [0x8a, 2, b'h', b'i']);
    }

    #[test]
    fn unmask_matches_the_byte_rule() {
        let key = [1, 2, 3, 4];
        for n in 0..40 {
            let mut data: Vec<u8> = (0..n as u8).collect();
            unmask(&mut data, key);
            let want: Vec<u8> = (0..n as u8).map(|b| b ^ key[usize::from(b) % 4]).collect();
            assert_eq!(data, want);
        }
    }
}
