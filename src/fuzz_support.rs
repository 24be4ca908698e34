//! Thin wrappers over the crate's pure parsers, so the internals themselves stay `pub(crate)`.
//! The crate's own types are mirrored here as public ones where a target must look at them.

use tungstenite::protocol::{Role, WebSocketContext};

use crate::config::HubConfig;
use crate::connection::handshake::{self, Head};
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
        Head::Upgrade(r, _) => Answer::Upgrade(r),
        Head::Refuse(r) => Answer::Refuse(r),
        Head::Http => Answer::Http,
    }
}

/// The answer to a head over [`HubConfig::max_request_head`].
pub fn too_large() -> String {
    handshake::too_large()
}

/// The server-side tungstenite context a connection reads client frames with, built as the
/// connection builds it: `tail` holds the bytes read past the request head, and the limits are
/// `cfg.websocket`.
pub fn server_context(cfg: &HubConfig, tail: Vec<u8>) -> WebSocketContext {
    WebSocketContext::from_partially_read(tail, Role::Server, Some(cfg.websocket))
}
