//! The reader: tungstenite parses the client's frames from the socket; each message is acted
//! on here (subscribe, unsubscribe, ping), and a bad one fails the connection with its close
//! code.

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::AsyncRead;
use tracing::debug;
use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tungstenite::protocol::{Message, Role, WebSocketContext};

use super::{Conn, ConnShard};
use crate::hub::fanout::Subscribed;
use crate::hub::shard::Phase;
use crate::protocol::{
    close_code, error_frame, parse_client_message, reply_frame, Channel, ChannelError,
    ClientMessage, FrameBuf, Number, OP_BINARY, OP_TEXT,
};

#[derive(Debug)]
pub(super) enum End {
    /// The close handshake completed (or was started by the peer).
    PeerClosed,
    /// We are failing the connection with a close code already queued.
    Failed,
    /// The socket ended without a close handshake.
    Gone,
}

/// The adapter tungstenite reads from and writes to: reads go to the socket (WouldBlock when
/// it has nothing), writes (its automatic pong and close replies) go to the client's queue.
struct Io<'a, 'b> {
    conn: &'a Conn,
    cx: &'a mut Context<'b>,
}

impl Read for Io<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut stream = self.conn.stream.borrow_mut();
        match Pin::new(&mut *stream).poll_read(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Io<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.conn.link.out.borrow_mut().push_control(buf);
        self.conn.link.wake_writer();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads client messages until the connection ends. The tungstenite context is built here, not
/// passed in, so the connection's task holds one copy of it.
pub(super) async fn read_messages(
    shard: &ConnShard,
    conn: &Conn,
    key: usize,
    tail: Vec<u8>,
) -> End {
    let config = Some(shard.config.websocket);
    let mut ctx = WebSocketContext::from_partially_read(tail, Role::Server, config);
    loop {
        let msg = poll_fn(|cx| match ctx.read(&mut Io { conn, cx }) {
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            other => Poll::Ready(other),
        })
        .await;
        if msg.is_ok() {
            conn.last_seen.set(Instant::now());
        }
        let failure = match msg {
            Ok(Message::Text(text)) if shard.config.echo => {
                echo(shard, conn, OP_TEXT, text.as_bytes())
            }
            Ok(Message::Binary(data)) if shard.config.echo => echo(shard, conn, OP_BINARY, &data),
            Ok(Message::Text(text)) => on_text(shard, conn, key, text.as_bytes()),
            Ok(Message::Binary(_)) => {
                let stamp = shard.shared.stamp();
                let reply = error_frame(
                    "unsupported_message",
                    "binary messages are not part of the protocol",
                    &stamp,
                );
                queue_reply(shard, conn, reply)
            }
            Ok(Message::Close(_)) => {
                // tungstenite queued its close reply as control bytes: make it our close frame.
                conn.link.out.borrow_mut().close_with_control();
                conn.set_phase(Phase::Closing);
                conn.link.wake_writer();
                None
            }
            Ok(Message::Ping(_)) => {
                // tungstenite queued the pong as control bytes; a client that sends pings and
                // reads nothing must not grow them without bound.
                let waiting = conn.link.out.borrow().reply_backlog();
                (waiting > shard.config.max_reply_backlog)
                    .then_some((close_code::POLICY, "replies not read"))
            }
            Ok(Message::Pong(_) | Message::Frame(_)) => None,
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => return End::PeerClosed,
            Err(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
                Some((close_code::TOO_BIG, "message too big"))
            }
            Err(WsError::Capacity(CapacityError::TooManyHeaders)) => {
                Some((close_code::PROTOCOL_ERROR, "protocol error"))
            }
            Err(WsError::Utf8(_)) => Some((close_code::INVALID_PAYLOAD, "invalid UTF-8")),
            Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                return End::Gone
            }
            Err(WsError::Protocol(p)) => {
                debug!(shard = shard.id, error = %p, "protocol error");
                Some((close_code::PROTOCOL_ERROR, "protocol error"))
            }
            Err(WsError::Io(_)) => return End::Gone,
            Err(other) => {
                debug!(shard = shard.id, error = %other, "websocket error");
                Some((close_code::PROTOCOL_ERROR, "protocol error"))
            }
        };
        if let Some((code, reason)) = failure {
            shard.stats().protocol_errors_total.fetch_add(1, Relaxed);
            if code == close_code::POLICY {
                // Its replies are what it does not read: they go.
                conn.close(code, reason);
            } else {
                // Answers to the valid messages before the bad one still go out first.
                conn.fail(code, reason);
            }
            return End::Failed;
        }
    }
}

/// Conformance mode ([`crate::HubConfig::echo`]): sends the message back as it came.
fn echo(shard: &ConnShard, conn: &Conn, opcode: u8, payload: &[u8]) -> Option<(u16, &'static str)> {
    let mut frame = FrameBuf::with_capacity(payload.len());
    frame.payload().extend_from_slice(payload);
    queue_reply(shard, conn, frame.finish_compact(opcode))
}

/// Acts on one text message. Returns a close code when the client must be failed.
fn on_text(shard: &ConnShard, conn: &Conn, key: usize, text: &[u8]) -> Option<(u16, &'static str)> {
    if shard.config.fault_injection && text == b"__panic__" {
        panic!("injected fault");
    }
    let parsed = parse_client_message(text, &mut shard.local.bytes.borrow_mut());
    let stamp = shard.shared.stamp();
    let msg = match parsed {
        Ok(msg) => msg,
        Err(()) => {
            shard.stats().invalid_messages_total.fetch_add(1, Relaxed);
            shard.warn_limited("invalid JSON from a client (ignored)");
            return None;
        }
    };
    match msg {
        ClientMessage::Ping(ts) => {
            let reply = reply_frame::<()>(
                "pong",
                None,
                ts.or(Some(Number::Int(stamp.unix_s as i64))),
                &stamp,
            );
            queue_reply(shard, conn, reply)
        }
        ClientMessage::Subscribe(names) => {
            let failure = change(shard, conn, key, names, true);
            shard.publish_interest();
            failure
        }
        ClientMessage::Unsubscribe(names) => {
            let failure = change(shard, conn, key, names, false);
            shard.publish_interest();
            failure
        }
        ClientMessage::Invalid(code, message) => {
            queue_reply(shard, conn, error_frame(code, &message, &stamp))
        }
        ClientMessage::Unknown => None,
    }
}

/// Subscribes or unsubscribes, answers `subscribed`/`unsubscribed` with the names now in
/// effect, an `error` per refused name, then the last values of newly subscribed channels.
fn change(
    shard: &ConnShard,
    conn: &Conn,
    key: usize,
    names: Vec<String>,
    subscribe: bool,
) -> Option<(u16, &'static str)> {
    let stamp = shard.shared.stamp();
    let limit = shard.config.max_subscriptions;
    if names.len() > limit {
        let msg = format!("at most {limit} channels per connection");
        return queue_reply(
            shard,
            conn,
            error_frame("too_many_subscriptions", &msg, &stamp),
        );
    }
    let mut in_effect = Vec::with_capacity(names.len());
    let mut added = Vec::new();
    let mut errors = Vec::new();
    {
        let mut fanout = shard.fanout.borrow_mut();
        for name in names {
            let channel = match Channel::parse(&name) {
                Ok(c) => c,
                Err(e) => {
                    let code = match e {
                        ChannelError::Unknown => "unknown_channel",
                        ChannelError::Invalid => "invalid_channel",
                    };
                    let shown: String = name.chars().take(64).collect();
                    errors.push(error_frame(
                        code,
                        &format!("no such channel: {shown}"),
                        &stamp,
                    ));
                    continue;
                }
            };
            if !subscribe {
                fanout.unsubscribe(key, &channel);
                in_effect.push(name);
                continue;
            }
            match fanout.subscribe(key, channel.clone()) {
                Subscribed::Added => {
                    added.push(channel);
                    in_effect.push(name);
                }
                Subscribed::Already => in_effect.push(name),
                Subscribed::Limit => {
                    let msg = format!("at most {limit} channels per connection");
                    errors.push(error_frame("too_many_subscriptions", &msg, &stamp));
                }
            }
        }
    }
    let kind = if subscribe {
        "subscribed"
    } else {
        "unsubscribed"
    };
    // Always answered, with `[]` when every name was refused.
    let reply = reply_frame(kind, Some(&in_effect), None, &stamp);
    let mut failure = queue_reply(shard, conn, reply);
    for e in errors {
        failure = failure.or(queue_reply(shard, conn, e));
    }
    let fanout = shard.fanout.borrow();
    // During a replay the channels' state comes with it, in order.
    let replaying = conn.link.replaying();
    for channel in &added {
        fanout.greet(key, channel);
        if !replaying {
            fanout.greet_state(key, channel);
        }
    }
    failure
}

fn queue_reply(shard: &ConnShard, conn: &Conn, reply: Box<[u8]>) -> Option<(u16, &'static str)> {
    let waiting = conn.link.out.borrow_mut().push_reply(reply);
    conn.link.wake_writer();
    (waiting > shard.config.max_reply_backlog).then_some((close_code::POLICY, "replies not read"))
}
