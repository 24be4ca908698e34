//! Thin wrappers over the crate's pure parsers, so the internals themselves stay `pub(crate)`.
//! The crate's own types are mirrored here as public ones where a target must look at them.

use std::ops::ControlFlow;

use crate::config::HubConfig;
use crate::connection::decoder::{Decoder, Msg};
use crate::connection::handshake::{self, Head};
use crate::connection::inflate::{Inflater, INFLATE_SLICE};
use crate::protocol::{self, Number};

/// A client message as the hub parses it (a public mirror of the crate's own type).
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// `subscribe` with these channel names.
    Subscribe(Vec<String>),
    /// `unsubscribe` with these channel names.
    Unsubscribe(Vec<String>),
    /// `ping`, with the timestamp to echo: an integer or a finite float.
    Ping(Option<Stamp>),
    /// A well-formed message refused with this error code and text.
    Invalid(&'static str, String),
    /// A `type` the hub ignores.
    Unknown,
}

/// The timestamp a `ping` carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stamp {
    /// An integer.
    Int(i64),
    /// A finite float.
    Float(f64),
}

/// Parses one client text message as a connection does; `buf` is the shard's scratch space.
/// `None`: not a JSON object (the crate's `Err(())`).
pub fn parse_client_message(text: &[u8], buf: &mut Vec<u8>) -> Option<ClientMessage> {
    Some(match protocol::parse_client_message(text, buf).ok()? {
        protocol::ClientMessage::Subscribe(names) => ClientMessage::Subscribe(names),
        protocol::ClientMessage::Unsubscribe(names) => ClientMessage::Unsubscribe(names),
        protocol::ClientMessage::Ping(ts) => ClientMessage::Ping(ts.map(|n| match n {
            Number::Int(i) => Stamp::Int(i),
            Number::Float(f) => Stamp::Float(f),
        })),
        protocol::ClientMessage::Invalid(code, text) => ClientMessage::Invalid(code, text),
        protocol::ClientMessage::Unknown => ClientMessage::Unknown,
    })
}

/// What the hub answers to a complete request head (a public mirror of the crate's own type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The `101 Switching Protocols` answer.
    Upgrade(String),
    /// A complete HTTP refusal.
    Refuse(String),
    /// Not for the WebSocket endpoint: the HTTP server takes the connection.
    Http,
}

/// The length of the request head through its blank line, once complete; only bytes from
/// `from` on are new (the incremental search the connection does as bytes arrive).
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    handshake::head_end(buf, from)
}

/// Decides what to answer to a complete request head; `admit` stands in for the connection
/// limit and is called only when everything else passed.
pub fn answer(head: &[u8], cfg: &HubConfig, admit: impl FnOnce() -> bool) -> Answer {
    match handshake::answer(head, cfg, admit) {
        Head::Upgrade(r, ..) => Answer::Upgrade(r),
        Head::Refuse(r) => Answer::Refuse(r),
        Head::Http => Answer::Http,
    }
}

/// The answer to a head over [`HubConfig::max_request_head`].
pub fn too_large() -> String {
    handshake::too_large()
}

/// A client frame or message as a connection decodes it: its payload's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// A text message (valid UTF-8) of this many bytes.
    Text(usize),
    /// A binary message.
    Binary(usize),
    /// A ping's payload.
    Ping(usize),
    /// A pong.
    Pong,
    /// A close frame's payload (code and reason).
    Close(usize),
}

/// Client frames decoded as a connection decodes them: `tail` holds the bytes read past the
/// request head, and the limit is `cfg`'s largest message.
#[derive(Debug)]
pub struct ClientFrames {
    decoder: Decoder,
    max: usize,
    /// Stands in for the shard's: one inflater for every message, as on a shard.
    inflater: Inflater,
}

impl ClientFrames {
    /// A decoder as a connection starts one; `deflate`: permessage-deflate was negotiated, so
    /// messages may come compressed.
    pub fn new(cfg: &HubConfig, tail: Vec<u8>, deflate: bool) -> Self {
        let mut decoder = Decoder::with_pending(tail);
        if deflate {
            decoder.set_deflate();
        }
        Self {
            decoder,
            max: cfg.max_message(),
            inflater: Inflater::default(),
        }
    }

    /// Decodes `bytes` (just read; unmasked in place), calling `on` for each message. `Ok(true)`:
    /// a close frame ended the stream; `Err(())`: the client is failed (1002, 1007 or 1009).
    /// Compressed messages come inflated, so their lengths are the inflated ones.
    #[allow(clippy::result_unit_err)]
    pub fn feed(&mut self, bytes: &mut [u8], mut on: impl FnMut(Decoded)) -> Result<bool, ()> {
        let Self {
            decoder,
            max,
            inflater,
        } = self;
        let mut input = bytes;
        let flow = loop {
            let flow = decoder.feed(input, *max, inflater, |msg| {
                let (decoded, stop) = match msg {
                    Msg::Text(t) => (Decoded::Text(t.len()), false),
                    Msg::Binary(b) => (Decoded::Binary(b.len()), false),
                    Msg::Ping(p) => (Decoded::Ping(p.len()), false),
                    Msg::Pong => (Decoded::Pong, false),
                    Msg::Close(c) => (Decoded::Close(c.len()), true),
                };
                on(decoded);
                if stop {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            // As the reader does: a slice of inflating stops the decoding, which goes on
            // with the bytes kept (there, at the connection's next turn).
            let (_, inflated) = inflater.take_count();
            match flow {
                Ok(ControlFlow::Continue(())) if inflated >= INFLATE_SLICE => input = &mut [],
                flow => break flow,
            }
        };
        match flow {
            Ok(flow) => Ok(flow.is_break()),
            Err(_) => Err(()),
        }
    }
}
