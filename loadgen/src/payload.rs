//! The message loadgen publishes and how a subscriber reads it back without parsing JSON.
//!
//! A message is one JSON object of exactly the requested size:
//! `{"lg":SEQ,"t":NANOS,"p":"xxxx…"}`. `SEQ` counts from 0 per run, `NANOS` is the
//! publisher's `CLOCK_MONOTONIC` at the scheduled send time. Both numbers sit in fixed-width
//! fields padded with spaces (legal JSON whitespace), so stamping a message rewrites 40 bytes in
//! place. A subscriber finds `"lg":` with a SIMD substring search and reads two integers; the
//! frame may be the bare message (peers) or our server's envelope around it.
//!
//! A publish request carries one message, or several as one JSON array ([`Batch`], our
//! publish API only), each stamped on its own: the hub broadcasts each as its own frame.

use memchr::memmem::{Finder, FinderRev};

/// Width of each number field: a u64 has at most 20 digits.
const FIELD: usize = 20;
const PREFIX: &[u8] = b"{\"lg\":";
const MIDDLE: &[u8] = b",\"t\":";
const PAD_OPEN: &[u8] = b",\"p\":\"";
const CLOSE: &[u8] = b"\"}";

/// The smallest message: the two stamped fields and an empty pad.
pub const MIN_SIZE: usize =
    PREFIX.len() + FIELD + MIDDLE.len() + FIELD + PAD_OPEN.len() + CLOSE.len();

/// How the publish request carries the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrap {
    /// The body is the message (the peers' `POST /publish`, a publishing WebSocket).
    Raw,
    /// Our server's publish API: `{"type":"loadgen","data":MESSAGE}`, broadcast on `events`.
    Hub,
}

const HUB_OPEN: &[u8] = b"{\"type\":\"loadgen\",\"data\":";
const HUB_CLOSE: &[u8] = b"}";

/// A reusable message of a fixed size, stamped in place for each send.
#[derive(Debug, Clone)]
pub struct Message {
    buf: Vec<u8>,
    seq_at: usize,
    t_at: usize,
}

impl Message {
    /// A message whose JSON object is `size` bytes (at least [`MIN_SIZE`]).
    pub fn new(size: usize, wrap: Wrap) -> Self {
        let size = size.max(MIN_SIZE);
        let mut buf = Vec::with_capacity(size + HUB_OPEN.len() + 1);
        if wrap == Wrap::Hub {
            buf.extend_from_slice(HUB_OPEN);
        }
        buf.extend_from_slice(PREFIX);
        let seq_at = buf.len();
        buf.resize(buf.len() + FIELD, b' ');
        buf.extend_from_slice(MIDDLE);
        let t_at = buf.len();
        buf.resize(buf.len() + FIELD, b' ');
        buf.extend_from_slice(PAD_OPEN);
        buf.resize(buf.len() + size - MIN_SIZE, b'x');
        buf.extend_from_slice(CLOSE);
        if wrap == Wrap::Hub {
            buf.extend_from_slice(HUB_CLOSE);
        }
        let mut msg = Self { buf, seq_at, t_at };
        msg.stamp(0, 0);
        msg
    }

    /// Writes `seq` and `t` into the message and returns its bytes.
    pub fn stamp(&mut self, seq: u64, t: u64) -> &[u8] {
        write_field(&mut self.buf[self.seq_at..self.seq_at + FIELD], seq);
        write_field(&mut self.buf[self.t_at..self.t_at + FIELD], t);
        &self.buf
    }

    /// The bytes as last stamped.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// The body of one publish request: one message, or a JSON array of messages (our publish
/// API's batch, `[{"type":"loadgen","data":MESSAGE},…]`), each with its own stamp fields
/// rewritten in place for every request.
#[derive(Debug, Clone)]
pub struct Batch {
    buf: Vec<u8>,
    /// Where each message's `seq` and `t` fields start.
    fields: Vec<(usize, usize)>,
}

impl Batch {
    /// A body of `count` messages of `size` bytes (at least one): a JSON array when `array`
    /// (our publish API answers an array with its count, even an array of one), else the bare
    /// message (`count` must then be 1).
    pub fn new(size: usize, wrap: Wrap, count: usize, array: bool) -> Self {
        let count = count.max(1);
        debug_assert!(array || count == 1, "several messages need an array");
        let msg = Message::new(size, wrap);
        let mut buf = Vec::with_capacity((msg.buf.len() + 1) * count + 1);
        let mut fields = Vec::with_capacity(count);
        if array {
            buf.push(b'[');
        }
        for i in 0..count {
            if i > 0 {
                buf.push(b',');
            }
            fields.push((buf.len() + msg.seq_at, buf.len() + msg.t_at));
            buf.extend_from_slice(&msg.buf);
        }
        if array {
            buf.push(b']');
        }
        Self { buf, fields }
    }

    /// Messages in the body.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the body holds no message (never: it holds at least one).
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Stamps the messages with consecutive sequence numbers from `first`, each with the time
    /// `t`, and returns the body.
    pub fn stamp(&mut self, first: u64, t: u64) -> &[u8] {
        for (i, &(seq_at, t_at)) in self.fields.iter().enumerate() {
            write_field(&mut self.buf[seq_at..seq_at + FIELD], first + i as u64);
            write_field(&mut self.buf[t_at..t_at + FIELD], t);
        }
        &self.buf
    }
}

fn write_field(field: &mut [u8], v: u64) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(v).as_bytes();
    field[..digits.len()].copy_from_slice(digits);
    field[digits.len()..].fill(b' ');
}

/// Reads loadgen stamps and the server's own fields out of frames, without a JSON parse.
#[derive(Debug)]
pub struct Scanner {
    lg: Finder<'static>,
    t: Finder<'static>,
    lagged: Finder<'static>,
    dropped: Finder<'static>,
    metrics: Finder<'static>,
    ts_us: Finder<'static>,
    seq: Finder<'static>,
    last_seq: FinderRev<'static>,
    last_epoch: FinderRev<'static>,
    replayed: Finder<'static>,
}

impl Default for Scanner {
    fn default() -> Self {
        Self {
            lg: Finder::new(b"\"lg\":"),
            t: Finder::new(b"\"t\":"),
            lagged: Finder::new(b"\"type\":\"lagged\""),
            dropped: Finder::new(b"\"dropped\":"),
            metrics: Finder::new(b"\"type\":\"metrics\""),
            ts_us: Finder::new(b"\"tsUs\":"),
            seq: Finder::new(b"\"seq\":"),
            last_seq: FinderRev::new(b"\"seq\":"),
            last_epoch: FinderRev::new(b"\"epoch\":"),
            replayed: Finder::new(b"\"replayed\":"),
        }
    }
}

impl Scanner {
    /// The `(seq, t)` stamp of a loadgen message, if the frame carries one.
    pub fn stamp(&self, frame: &[u8]) -> Option<(u64, u64)> {
        let at = self.lg.find(frame)? + 5;
        let (seq, used) = number(&frame[at..])?;
        let rest = &frame[at + used..];
        let t_at = self.t.find(rest)? + 4;
        let (t, _) = number(&rest[t_at..])?;
        Some((seq, t))
    }

    /// The `dropped` count of our server's `lagged` notice.
    pub fn lagged(&self, frame: &[u8]) -> Option<u64> {
        self.lagged.find(frame)?;
        let at = self.dropped.find(frame)? + 10;
        number(&frame[at..]).map(|(n, _)| n)
    }

    /// `(seq, tsUs)` of our server's `metrics` broadcast.
    pub fn metrics(&self, frame: &[u8]) -> Option<(u64, u64)> {
        self.metrics.find(frame)?;
        let ts_at = self.ts_us.find(frame)? + 7;
        let seq_at = self.seq.find(frame)? + 6;
        Some((number(&frame[seq_at..])?.0, number(&frame[ts_at..])?.0))
    }

    /// The `seq` of our server's envelope (broadcasts carry one, replies do not). The envelope's
    /// fields follow `data`, so the last `"seq":` is the envelope's whatever `data` holds.
    pub fn envelope_seq(&self, frame: &[u8]) -> Option<u64> {
        let at = self.last_seq.rfind(frame)? + 6;
        number(&frame[at..]).map(|(n, _)| n)
    }

    /// The `epoch` of our server's envelope (every frame carries it).
    pub fn epoch(&self, frame: &[u8]) -> Option<u64> {
        let at = self.last_epoch.rfind(frame)? + 8;
        number(&frame[at..]).map(|(n, _)| n)
    }

    /// Our server's `recovered` notice, which ends a resume: `(recovered, replayed)`.
    pub fn recovered(&self, frame: &[u8]) -> Option<(bool, u64)> {
        if kind(frame)? != b"recovered" {
            return None;
        }
        let at = self.replayed.find(frame)? + 11;
        let replayed = number(&frame[at..])?.0;
        let recovered = memchr::memmem::find(frame, b"\"recovered\":true").is_some();
        Some((recovered, replayed))
    }
}

/// The `type` of our server's envelope, which it always writes first: `{"type":"NAME",…`.
pub fn kind(frame: &[u8]) -> Option<&[u8]> {
    let rest = frame.strip_prefix(b"{\"type\":\"")?;
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// The unsigned integer at the start of `s` (after optional spaces), and the bytes it took.
fn number(s: &[u8]) -> Option<(u64, usize)> {
    let skip = s.iter().take_while(|&&b| b == b' ').count();
    let mut v: u64 = 0;
    let mut n = 0;
    for &b in &s[skip..] {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        n += 1;
    }
    (n > 0).then_some((v, skip + n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_valid_json_of_the_asked_size() {
        for size in [MIN_SIZE, 256, 4096] {
            let mut msg = Message::new(size, Wrap::Raw);
            let bytes = msg.stamp(u64::MAX, 123_456_789).to_vec();
            assert_eq!(bytes.len(), size);
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["lg"], u64::MAX);
            assert_eq!(v["t"], 123_456_789);
            let hub = Message::new(size, Wrap::Hub);
            let v: serde_json::Value = serde_json::from_slice(hub.bytes()).unwrap();
            assert_eq!(v["type"], "loadgen");
            assert_eq!(
                serde_json::to_vec(&v["data"]).unwrap().len(),
                size - 2 * FIELD + 2
            );
        }
        assert_eq!(Message::new(10, Wrap::Raw).bytes().len(), MIN_SIZE);
    }

    #[test]
    fn scanner_reads_stamps_in_bare_messages_and_envelopes() {
        let scanner = Scanner::default();
        let mut msg = Message::new(200, Wrap::Raw);
        assert_eq!(scanner.stamp(msg.stamp(42, 7)), Some((42, 7)));
        let envelope = format!(
            r#"{{"type":"loadgen","data":{},"timestamp":1,"epoch":2,"tsUs":3,"seq":9}}"#,
            std::str::from_utf8(msg.stamp(1_000_000, 99_999_999_999)).unwrap()
        );
        assert_eq!(
            scanner.stamp(envelope.as_bytes()),
            Some((1_000_000, 99_999_999_999))
        );
        assert_eq!(scanner.stamp(br#"{"type":"metrics","data":{}}"#), None);
        let lagged = br#"{"type":"lagged","data":{"dropped":17},"timestamp":1,"epoch":2,"tsUs":3}"#;
        assert_eq!(scanner.lagged(lagged), Some(17));
        assert_eq!(scanner.lagged(envelope.as_bytes()), None);
        let metrics =
            br#"{"type":"metrics","data":{"x":1},"timestamp":1,"epoch":2,"tsUs":1234,"seq":5}"#;
        assert_eq!(scanner.metrics(metrics), Some((5, 1234)));
    }

    #[test]
    fn scanner_reads_the_envelope_and_the_recovered_notice() {
        let scanner = Scanner::default();
        // A `seq` inside `data` does not hide the envelope's.
        let frame =
            br#"{"type":"x","data":{"seq":1,"epoch":2},"timestamp":1,"seq":77,"epoch":9,"tsUs":3}"#;
        assert_eq!(scanner.envelope_seq(frame), Some(77));
        assert_eq!(scanner.epoch(frame), Some(9));
        assert_eq!(kind(frame), Some(&b"x"[..]));
        let reply = br#"{"type":"pong","timestamp":1,"epoch":9,"tsUs":3}"#;
        assert_eq!(scanner.envelope_seq(reply), None);
        assert_eq!(scanner.recovered(reply), None);
        let ok = br#"{"type":"recovered","data":{"recovered":true,"replayed":1000},"timestamp":1,"epoch":9,"tsUs":3}"#;
        assert_eq!(scanner.recovered(ok), Some((true, 1000)));
        let not = br#"{"type":"recovered","data":{"recovered":false,"replayed":0},"timestamp":1,"epoch":9,"tsUs":3}"#;
        assert_eq!(scanner.recovered(not), Some((false, 0)));
        assert_eq!(kind(b"[1]"), None);
    }
}
