//! The wire protocol: channels, client messages in, envelopes and frames out.
//!
//! Pure code: no sockets, no executor, no clock. Time comes in as a [`Stamp`].

use std::fmt;
use std::io::Write as _;
use std::sync::Arc;

use serde::Serialize;
use simd_json::prelude::*;
use simd_json::BorrowedValue;

use crate::error::BroadcastError;

/// Close codes of PROTOCOL.md; a contract with every client.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown): reconnect with backoff.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke RFC 6455.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The client broke a policy of the server (for example it never read its replies).
    pub const POLICY: u16 = 1008;
    /// A client message was larger than the limit.
    pub const TOO_BIG: u16 = 1009;
    /// The server failed while serving this connection.
    pub const INTERNAL: u16 = 1011;
}

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 256;

/// The state `group_updated` announces for a group that was removed (Kafka's name for it):
/// the group is no longer part of the current state new clients receive.
pub const DEAD_STATE: &str = "Dead";

/// A channel a client can subscribe to: `metrics`, `events`, `topic:<name>` or `group:<id>`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Channel {
    /// The periodic `MonitoringMetrics` snapshot.
    Metrics,
    /// Every topic and group event.
    Events,
    /// One topic's events and detail frames.
    Topic(Arc<str>),
    /// One consumer group's events and lag detail.
    Group(Arc<str>),
}

/// Why a channel name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// Not `metrics`, `events`, `topic:` or `group:`.
    Unknown,
    /// `topic:` or `group:` with nothing after it, or a name over [`MAX_CHANNEL_LEN`].
    Invalid,
}

impl Channel {
    /// Parses a channel name as a client writes it.
    pub fn parse(name: &str) -> Result<Self, ChannelError> {
        if name.len() > MAX_CHANNEL_LEN {
            return Err(ChannelError::Invalid);
        }
        match name {
            "metrics" => Ok(Self::Metrics),
            "events" => Ok(Self::Events),
            _ => {
                let (kind, rest) = name.split_once(':').ok_or(ChannelError::Unknown)?;
                if rest.is_empty() {
                    return Err(ChannelError::Invalid);
                }
                match kind {
                    "topic" => Ok(Self::Topic(rest.into())),
                    "group" => Ok(Self::Group(rest.into())),
                    _ => Err(ChannelError::Unknown),
                }
            }
        }
    }

    /// The `topic:<name>` channel.
    pub fn topic(name: &str) -> Self {
        Self::Topic(name.into())
    }

    /// The `group:<id>` channel.
    pub fn group(id: &str) -> Self {
        Self::Group(id.into())
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Metrics => f.write_str("metrics"),
            Self::Events => f.write_str("events"),
            Self::Topic(n) => write!(f, "topic:{n}"),
            Self::Group(n) => write!(f, "group:{n}"),
        }
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Channel({self})")
    }
}

/// A client message the server acts on.
#[derive(Debug, PartialEq)]
pub(crate) enum ClientMessage {
    /// Add channels (a name or an array of names, as sent).
    Subscribe(Vec<String>),
    /// Remove channels.
    Unsubscribe(Vec<String>),
    /// Answer with `pong`, echoing the client's timestamp when given.
    Ping(Option<Number>),
    /// A well-formed message the server refuses, with the error code and text to answer.
    Invalid(&'static str, String),
    /// A `type` the server does not know: ignored.
    Unknown,
}

/// A JSON number echoed back to the client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Number {
    /// An integer.
    Int(i64),
    /// Anything else (the seeds send `Date.now()/1000`).
    Float(f64),
}

/// Parses one text message. `buf` is scratch space simd-json parses in place.
///
/// `Err(())` means the text is not a JSON object: the caller logs it (rate-limited) and keeps
/// the connection.
pub(crate) fn parse_client_message(text: &[u8], buf: &mut Vec<u8>) -> Result<ClientMessage, ()> {
    buf.clear();
    buf.extend_from_slice(text);
    let value = simd_json::to_borrowed_value(buf).map_err(|_| ())?;
    let obj = value.as_object().ok_or(())?;
    let Some(kind) = obj.get("type").and_then(|t| t.as_str()) else {
        return Ok(ClientMessage::Unknown);
    };
    Ok(match kind {
        "subscribe" | "unsubscribe" => match channel_names(obj.get("data")) {
            Some(names) if kind == "subscribe" => ClientMessage::Subscribe(names),
            Some(names) => ClientMessage::Unsubscribe(names),
            None => ClientMessage::Invalid(
                "bad_request",
                format!("{kind} needs data: a channel name or an array of them"),
            ),
        },
        "ping" => ClientMessage::Ping(obj.get("timestamp").and_then(number)),
        _ => ClientMessage::Unknown,
    })
}

fn channel_names(data: Option<&BorrowedValue<'_>>) -> Option<Vec<String>> {
    let data = data?;
    if let Some(s) = data.as_str() {
        return Some(vec![s.to_owned()]);
    }
    data.as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn number(v: &BorrowedValue<'_>) -> Option<Number> {
    if let Some(i) = v.as_i64() {
        Some(Number::Int(i))
    } else {
        v.as_f64().filter(|f| f.is_finite()).map(Number::Float)
    }
}

/// Wall-clock facts an envelope carries, read by the caller.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp {
    /// Unix seconds (`timestamp`).
    pub(crate) unix_s: u64,
    /// Unix microseconds (`tsUs`), the send time used for latency measurement.
    pub(crate) unix_us: u64,
    /// The server process's `epoch`.
    pub(crate) epoch: u64,
}

/// Room left in front of every payload for the largest server frame header.
pub(crate) const HEADER_ROOM: usize = 10;

/// Opcode of a text frame.
pub(crate) const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub(crate) const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub(crate) const OP_CLOSE: u8 = 0x8;

/// The header of an unmasked server frame whose first byte is `first` (FIN, RSV1, opcode) and
/// whose payload is `len` bytes: the bytes, of which the first `n` are used.
pub(crate) fn frame_header(first: u8, len: usize) -> ([u8; HEADER_ROOM], usize) {
    let mut head = [0u8; HEADER_ROOM];
    head[0] = first;
    let n = if len < 126 {
        head[1] = len as u8;
        2
    } else if len <= usize::from(u16::MAX) {
        head[1] = 126;
        head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (head, n)
}

/// A server frame being written: the payload goes after [`HEADER_ROOM`] bytes, and
/// [`FrameBuf::finish`] writes the header right in front of it, so the frame is built in one
/// buffer with no copy.
#[derive(Debug)]
pub(crate) struct FrameBuf {
    buf: Vec<u8>,
}

impl FrameBuf {
    pub(crate) fn with_capacity(payload: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_ROOM + payload);
        buf.resize(HEADER_ROOM, 0);
        Self { buf }
    }

    pub(crate) fn payload(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Writes the header (FIN set, unmasked) and returns the buffer and where the frame starts.
    pub(crate) fn finish(mut self, opcode: u8) -> (Vec<u8>, usize) {
        let len = self.buf.len() - HEADER_ROOM;
        let (head, n) = frame_header(0x80 | opcode, len);
        let start = HEADER_ROOM - n;
        self.buf[start..HEADER_ROOM].copy_from_slice(&head[..n]);
        (self.buf, start)
    }

    /// Finishes and moves the frame to the front: for small per-client frames.
    pub(crate) fn finish_compact(self, opcode: u8) -> Box<[u8]> {
        let (mut buf, start) = self.finish(opcode);
        buf.drain(..start);
        buf.into_boxed_slice()
    }
}

/// Writes `{"type":..,"data":..,"timestamp":..,"seq":..,"epoch":..,"tsUs":..}`.
///
/// `data` is left out when `None`; `seq` is present only on broadcasts.
pub(crate) fn write_envelope<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    kind: &str,
    data: Option<&T>,
    timestamp: Number,
    seq: Option<u64>,
    stamp: &Stamp,
) -> Result<(), BroadcastError> {
    let data =
        data.map(|d| move |out: &mut Vec<u8>| simd_json::to_writer(out, d).map_err(encode_error));
    write_envelope_with(out, kind, data, timestamp, seq, stamp)
}

fn encode_error(e: simd_json::Error) -> BroadcastError {
    BroadcastError::Encode(Box::new(e))
}

/// [`write_envelope`] with the `data` written by a function (raw JSON passed through, say).
pub(crate) fn write_envelope_with(
    out: &mut Vec<u8>,
    kind: &str,
    data: Option<impl FnOnce(&mut Vec<u8>) -> Result<(), BroadcastError>>,
    timestamp: Number,
    seq: Option<u64>,
    stamp: &Stamp,
) -> Result<(), BroadcastError> {
    if kind.is_empty() {
        return Err(BroadcastError::EmptyType);
    }
    let enc = encode_error;
    out.extend_from_slice(b"{\"type\":");
    simd_json::to_writer(&mut *out, kind).map_err(enc)?;
    if let Some(write_data) = data {
        out.extend_from_slice(b",\"data\":");
        write_data(out)?;
    }
    out.extend_from_slice(b",\"timestamp\":");
    match timestamp {
        Number::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        Number::Float(f) => simd_json::to_writer(&mut *out, &f).map_err(enc)?,
    }
    let mut num = itoa::Buffer::new();
    if let Some(seq) = seq {
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(num.format(seq).as_bytes());
    }
    out.extend_from_slice(b",\"epoch\":");
    out.extend_from_slice(num.format(stamp.epoch).as_bytes());
    out.extend_from_slice(b",\"tsUs\":");
    out.extend_from_slice(num.format(stamp.unix_us).as_bytes());
    out.push(b'}');
    Ok(())
}

/// A per-client reply (`pong`, `subscribed`, `unsubscribed`, `error`, `lagged`) as a complete
/// text frame.
pub(crate) fn reply_frame<T: Serialize + ?Sized>(
    kind: &str,
    data: Option<&T>,
    timestamp: Option<Number>,
    stamp: &Stamp,
) -> Box<[u8]> {
    let mut fb = FrameBuf::with_capacity(96);
    let ts = timestamp.unwrap_or(Number::Int(stamp.unix_s as i64));
    write_envelope(fb.payload(), kind, data, ts, None, stamp)
        .expect("replies are built from serializable values and a non-empty type");
    fb.finish_compact(OP_TEXT)
}

/// The `error` reply.
pub(crate) fn error_frame(code: &str, message: &str, stamp: &Stamp) -> Box<[u8]> {
    #[derive(Serialize)]
    struct ErrorData<'a> {
        code: &'a str,
        message: &'a str,
    }
    reply_frame("error", Some(&ErrorData { code, message }), None, stamp)
}

/// The `lagged` notice.
pub(crate) fn lagged_frame(dropped: u64, stamp: &Stamp) -> Box<[u8]> {
    #[derive(Serialize)]
    struct Lagged {
        dropped: u64,
    }
    reply_frame("lagged", Some(&Lagged { dropped }), None, stamp)
}

/// The `recovered` notice that ends a resume: whether every missed broadcast was given back,
/// and how many were.
pub(crate) fn recovered_frame(recovered: bool, replayed: u64, stamp: &Stamp) -> Box<[u8]> {
    #[derive(Serialize)]
    struct Recovered {
        recovered: bool,
        replayed: u64,
    }
    let data = Recovered {
        recovered,
        replayed,
    };
    reply_frame("recovered", Some(&data), None, stamp)
}

/// A close frame with a code and a short reason.
pub(crate) fn close_frame(code: u16, reason: &str) -> Box<[u8]> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut fb = FrameBuf::with_capacity(2 + reason.len());
    fb.payload().extend_from_slice(&code.to_be_bytes());
    fb.payload().write_all(reason).expect("Vec write");
    fb.finish_compact(OP_CLOSE)
}

/// A server ping: a control frame with an empty payload.
pub(crate) const PING_FRAME: &[u8] = &[0x89, 0x00];

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::{Frame, FrameHeader};

    fn stamp() -> Stamp {
        Stamp {
            unix_s: 1_704_225_600,
            unix_us: 1_704_225_600_123_456,
            epoch: 42,
        }
    }

    fn parse(s: &str) -> ClientMessage {
        parse_client_message(s.as_bytes(), &mut Vec::new()).unwrap()
    }

    #[test]
    fn channels_parse_and_print_back() {
        for name in [
            "metrics",
            "events",
            "topic:orders",
            "group:billing",
            "topic:a:b",
        ] {
            assert_eq!(Channel::parse(name).unwrap().to_string(), name);
        }
        assert_eq!(Channel::parse("nope"), Err(ChannelError::Unknown));
        assert_eq!(Channel::parse("queue:x"), Err(ChannelError::Unknown));
        assert_eq!(Channel::parse("topic:"), Err(ChannelError::Invalid));
        let long = format!("topic:{}", "x".repeat(MAX_CHANNEL_LEN));
        assert_eq!(Channel::parse(&long), Err(ChannelError::Invalid));
    }

    #[test]
    fn client_messages_of_the_seeds_parse() {
        assert_eq!(
            parse(r#"{"type":"subscribe","data":"topic:my-topic","timestamp":1704225600}"#),
            ClientMessage::Subscribe(vec!["topic:my-topic".into()])
        );
        assert_eq!(
            parse(r#"{"type":"unsubscribe","data":["metrics","events"]}"#),
            ClientMessage::Unsubscribe(vec!["metrics".into(), "events".into()])
        );
        assert_eq!(
            parse(r#"{"type":"ping","timestamp":1704225600.5}"#),
            ClientMessage::Ping(Some(Number::Float(1_704_225_600.5)))
        );
        assert_eq!(parse(r#"{"type":"ping"}"#), ClientMessage::Ping(None));
        assert_eq!(parse(r#"{"type":"dance"}"#), ClientMessage::Unknown);
        assert!(matches!(
            parse(r#"{"type":"subscribe","data":[1]}"#),
            ClientMessage::Invalid("bad_request", _)
        ));
        assert!(parse_client_message(b"{not json", &mut Vec::new()).is_err());
        assert!(parse_client_message(b"[1,2]", &mut Vec::new()).is_err());
    }

    #[test]
    fn envelope_has_every_field() {
        let mut out = Vec::new();
        write_envelope(
            &mut out,
            "topic_created",
            Some(&serde_json::json!({"name": "t", "partitions": 5})),
            Number::Int(1_704_225_600),
            Some(7),
            &stamp(),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "topic_created", "data": {"name": "t", "partitions": 5},
                "timestamp": 1_704_225_600u64, "seq": 7, "epoch": 42, "tsUs": 1_704_225_600_123_456u64})
        );
    }

    #[test]
    fn frame_headers_match_tungstenite_for_every_length_class() {
        for len in [0usize, 125, 126, 65_535, 65_536, 300_000] {
            let mut fb = FrameBuf::with_capacity(len);
            fb.payload().resize(HEADER_ROOM + len, b'a');
            let (buf, start) = fb.finish(OP_TEXT);
            let mut expected = Vec::new();
            Frame::message(
                vec![b'a'; len],
                tungstenite::protocol::frame::coding::OpCode::Data(
                    tungstenite::protocol::frame::coding::Data::Text,
                ),
                true,
            )
            .format(&mut expected)
            .unwrap();
            assert_eq!(&buf[start..], &expected[..], "len {len}");
            let mut cursor = std::io::Cursor::new(&buf[start..]);
            let (header, plen) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final && header.mask.is_none());
            assert_eq!(plen as usize, len);
        }
    }

    #[test]
    fn close_frame_carries_code() {
        let f = close_frame(close_code::GOING_AWAY, "shutdown");
        assert_eq!(&f[..4], &[0x88, 10, 0x03, 0xE9]);
        assert_eq!(&f[4..], b"shutdown");
    }
}
